"""Thin tasks: per channel a transactional and a batch task, named and routed by the table in
channels/lanes.py (config.settings.CELERY_TASK_ROUTES is built from it)."""

from __future__ import annotations

import logging
import math
import re
import uuid
from collections import Counter
from typing import Any

from celery import Task, current_app, shared_task
from celery.signals import task_postrun
from celery.utils.time import get_exponential_backoff_interval
from django.conf import settings
from django.db import InterfaceError, OperationalError, connections

from channels import lanes
from channels.base import ProviderPaused, TransientDeliveryError
from notifications import services
from notifications.services import batches, broadcasts, broker_watch, fanout
from notifications.services.enqueue import queue_for

logger = logging.getLogger(__name__)


@task_postrun.connect
def _drop_broken_database_connections(**_: Any) -> None:
    """Close a connection that failed during the task, so the next task opens a new one.

    CELERY_DB_REUSE_MAX keeps connections across tasks, and Celery only recycles them every
    so many tasks, never because they broke: after a PostgreSQL restart every task of a worker
    process failed with "connection already closed" for minutes (the chaos suite,
    bench/chaos.py). Only a connection that raised is checked, so healthy ones cost nothing.
    """
    for connection in connections.all(initialized_only=True):
        if connection.connection is not None and connection.errors_occurred:
            if connection.is_usable():
                connection.errors_occurred = False
            else:
                connection.close()


# The routing key of a message RabbitMQ's native delayed delivery held (a countdown on quorum
# queues): 28 binary digits of the delay, then the queue's own key.
_DELAY_PREFIX = re.compile(r"^(?:[01]\.){28}")


def _countdown(seconds: float) -> int:
    """Whole seconds, rounded up: on quorum queues Celery schedules a countdown in whole
    seconds and refuses one under a second (ValueError), which would dead-letter a delivery a
    provider asked us to retry in 0.5 s."""
    return math.ceil(seconds)


class DeliveryTask(Task):  # type: ignore[misc]
    # Retried: provider hiccups and a database that blinked. A provider that refused our
    # configuration never gets here as such: the guard paused it (ProviderPaused, deferred).
    # Anything else is a bug and goes straight to the dead-letter table via on_failure.
    autoretry_for = (TransientDeliveryError, OperationalError, InterfaceError)
    retry_backoff = settings.NOTIFY_RETRY_BACKOFF
    retry_backoff_max = settings.NOTIFY_RETRY_BACKOFF_MAX
    retry_jitter = True
    max_retries = settings.NOTIFY_MAX_RETRIES
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True

    def signature_from_request(
        self,
        request: Any = None,
        args: Any = None,
        kwargs: Any = None,
        queue: str | None = None,
        **extra_options: Any,
    ) -> Any:
        """A retry stays in the lane it came from (``email.bulk`` stays bulk). Celery rebuilds
        it from the task's route (the transactional lane) when RabbitMQ's native delayed
        delivery schedules its countdown, which quorum queues use."""
        if queue is None:
            info = (self.request if request is None else request).delivery_info or {}
            lane = _DELAY_PREFIX.sub("", info.get("routing_key") or "")
            queue = lane if lane in settings.NOTIFY_QUEUES else None
        return super().signature_from_request(request, args, kwargs, queue=queue, **extra_options)

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        delivery_id = kwargs.get("delivery_id") if kwargs else None
        if delivery_id is None and args:
            delivery_id = args[0]
        if isinstance(exc, (OperationalError, InterfaceError)):
            # The database was away for longer than this task's retries, which says nothing
            # about the delivery: it keeps its lease, and the sweep re-enqueues it once that
            # runs out, with its provider retry budget intact (the chaos suite's PostgreSQL
            # restart dead-lettered deliveries before this).
            logger.warning(
                "delivery %s: database unavailable (%s); left to the sweep", delivery_id, exc
            )
            return
        if delivery_id is not None:
            # Devices a push fan-out reached before the failure are kept, so a replay
            # does not send to them again.
            partial = getattr(exc, "partial", None) or {}
            services.delivery_dead_letter(
                delivery_id=int(delivery_id),
                error=exc,
                traceback=str(einfo),
                task_name=self.name,
                results={token: outcome.as_json() for token, outcome in partial.items()},
            )


def _deliver(task: Task, delivery_id: int) -> str:
    try:
        return services.delivery_send(delivery_id=delivery_id, task_name=task.name).value
    except ProviderPaused as exc:
        _defer(task, delivery_id, exc)
        return services.Outcome.DEFERRED.value
    except TransientDeliveryError as exc:
        if exc.retry_after is not None:
            # The provider said when to come back; that beats our own backoff.
            raise task.retry(exc=exc, countdown=_countdown(exc.retry_after)) from exc
        raise


def _defer(task: Task, delivery_id: int, paused: ProviderPaused) -> None:
    """Publish the delivery again, due after the pause, with the retry count it came with: the
    provider was not called, so neither an attempt nor a Celery retry is spent. The message
    this task runs for is then acknowledged as done. If the publish fails, the delivery is
    `queued` with a lease covering the pause, and the sweep takes it back."""
    countdown = _countdown(paused.retry_after or 1.0)
    try:
        if task.request.called_directly:
            task.apply_async((delivery_id,), countdown=countdown)
        else:
            # Same lane, same task id and retries, as task.retry would publish it.
            task.signature_from_request(countdown=countdown).apply_async()
    except Exception:
        logger.warning("could not defer delivery %s", delivery_id, exc_info=True)


@shared_task(base=DeliveryTask, bind=True, name=lanes.PUSH.task)
def deliver_push(self: Task, delivery_id: int) -> str:
    return _deliver(self, delivery_id)


@shared_task(base=DeliveryTask, bind=True, name=lanes.EMAIL.task)
def deliver_email(self: Task, delivery_id: int) -> str:
    return _deliver(self, delivery_id)


@shared_task(base=DeliveryTask, bind=True, name=lanes.SMS.task)
def deliver_sms(self: Task, delivery_id: int) -> str:
    return _deliver(self, delivery_id)


@shared_task(base=DeliveryTask, bind=True, name=lanes.INAPP.task)
def deliver_inapp(self: Task, delivery_id: int) -> str:
    return _deliver(self, delivery_id)


@shared_task(ignore_result=True, name=lanes.SWEEP_TASK)
def sweep_stuck_deliveries() -> int:
    return services.sweep_stuck_deliveries()


@shared_task(ignore_result=True, name=lanes.WATCH_BROKER_TASK)
def watch_broker() -> int:
    """Beat, every NOTIFY_BROKER_WATCH_SECONDS: has the broker lost its messages? A run that
    spends its time budget re-enqueueing hands the rest to the next one at once."""
    result = broker_watch.broker_watch()
    if result.more:
        watch_broker.delay()
    return result.requeued


@shared_task(ignore_result=True, name=lanes.PURGE_TASK)
def purge_expired_notifications() -> int:
    """Retention (docs/sizing.md): one time-boxed run of batched deletes; beat repeats it."""
    from notifications.services import retention

    older_than = retention.retention_period()
    if older_than is None:  # NOTIFY_RETENTION_DAYS=0: keep the log forever
        return 0
    return retention.purge_expired_notifications(older_than=older_than).notifications


# --- broadcasts: fan-out pages and batch delivery (docs/broadcasts.md) ----------------------


# Broadcast maintenance tasks: each page runs in one transaction, so running it again after a
# database blink is safe; acknowledged only when done, so a killed worker's page runs again.
_PAGE_TASK_OPTIONS: dict[str, Any] = {
    "ignore_result": True,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "autoretry_for": (OperationalError, InterfaceError),
    "retry_backoff": settings.NOTIFY_RETRY_BACKOFF,
    "retry_backoff_max": settings.NOTIFY_RETRY_BACKOFF_MAX,
    "retry_jitter": True,
    "max_retries": settings.NOTIFY_MAX_RETRIES,
}


@shared_task(**_PAGE_TASK_OPTIONS, name=lanes.FANOUT_TASK)
def broadcast_fanout(broadcast_id: str) -> str:
    """One page of a broadcast's fan-out; the service chains the next page after commit."""
    return fanout.broadcast_fanout_page(broadcast_id=uuid.UUID(broadcast_id)).value


@shared_task(ignore_result=True, name=lanes.RESUME_FANOUTS_TASK)
def resume_broadcast_fanouts() -> int:
    return fanout.broadcasts_resume()


@shared_task(**_PAGE_TASK_OPTIONS, name=lanes.SKIP_CANCELLED_TASK)
def skip_cancelled_deliveries(broadcast_id: str, after_recipient: int = 0) -> int:
    """Skip what a cancelled broadcast still has queued, a page per transaction from the
    cursor on; a run that spends its time budget hands the rest to the next one."""
    moved, cursor = broadcasts.skip_cancelled_rest(
        broadcast_id=uuid.UUID(broadcast_id),
        after_recipient=after_recipient,
        time_budget=settings.NOTIFY_BROADCAST_CANCEL_TIME_BUDGET_SECONDS,
    )
    if cursor is not None:
        skip_cancelled_deliveries.delay(broadcast_id, cursor)
    return moved


class DeliveryBatchTask(Task):  # type: ignore[misc]
    # Provider errors never get here: each delivery's is handled as if it were single. A
    # database that blinked is retried; rows claimed before it stay `sending` until the
    # sweep takes them back after their lease, as for single deliveries.
    autoretry_for = (OperationalError, InterfaceError)
    retry_backoff = settings.NOTIFY_RETRY_BACKOFF
    retry_backoff_max = settings.NOTIFY_RETRY_BACKOFF_MAX
    retry_jitter = True
    max_retries = settings.NOTIFY_MAX_RETRIES
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True


def _deliver_batch(task: Task, channel: str, delivery_ids: list[int]) -> dict[str, int]:
    result = batches.deliveries_send_batch(
        delivery_ids=[int(pk) for pk in delivery_ids], channel=channel, task_name=task.name
    )
    _retry_alone(result.retries)
    return dict(Counter(outcome.value for outcome in result.outcomes.values()))


def _defer_batch(deferred: list[batches.Retry]) -> None:
    """Deliveries of a batch whose provider was paused or rate-limited go back into one batch
    per lane, due when the longest pause ends: they were not attempted, so they keep their
    full retry budget and stay batched. A failed publish is left to the sweep (their lease
    covers the pause)."""
    groups: dict[tuple[str, str], list[batches.Retry]] = {}
    for item in deferred:
        groups.setdefault((item.channel, queue_for(item.channel, item.priority)), []).append(item)
    for (channel, queue), items in groups.items():
        try:
            current_app.send_task(
                lanes.LANES[channel].batch_task,
                args=([item.delivery_id for item in items],),
                queue=queue,
                countdown=_countdown(max(item.retry_after or 1.0 for item in items)),
            )
        except Exception:
            logger.warning("could not defer %d batch deliveries", len(items), exc_info=True)


def _retry_alone(retries: list[batches.Retry]) -> None:
    """Retry each transient failure of a batch as its own single delivery task would retry
    itself: the batch was its first attempt (retries=0), so the single task starts at
    retries=1, with the same backoff, the same budget and, once that is spent, the same
    dead letter (its on_failure). The batch task itself completes."""
    _defer_batch([retry for retry in retries if retry.deferred])
    try:
        for retry in (retry for retry in retries if not retry.deferred):
            countdown = None if retry.retry_after is None else _countdown(retry.retry_after)
            if countdown is None:
                countdown = get_exponential_backoff_interval(
                    factor=int(max(1.0, DeliveryTask.retry_backoff)),
                    retries=0,
                    maximum=DeliveryTask.retry_backoff_max,
                    full_jitter=DeliveryTask.retry_jitter,
                )
            current_app.tasks[lanes.LANES[retry.channel].task].apply_async(
                (retry.delivery_id,),
                countdown=countdown,
                queue=queue_for(retry.channel, retry.priority),
                retries=1,
            )
    except Exception:
        # Broker down: the deliveries are `queued` with a lease covering the retry wait, so
        # the sweep re-enqueues them once it runs out.
        logger.warning("could not schedule %d batch retries", len(retries), exc_info=True)


@shared_task(base=DeliveryBatchTask, bind=True, name=lanes.PUSH.batch_task)
def deliver_push_batch(self: Task, delivery_ids: list[int]) -> dict[str, int]:
    return _deliver_batch(self, lanes.PUSH.channel, delivery_ids)


@shared_task(base=DeliveryBatchTask, bind=True, name=lanes.EMAIL.batch_task)
def deliver_email_batch(self: Task, delivery_ids: list[int]) -> dict[str, int]:
    return _deliver_batch(self, lanes.EMAIL.channel, delivery_ids)


@shared_task(base=DeliveryBatchTask, bind=True, name=lanes.SMS.batch_task)
def deliver_sms_batch(self: Task, delivery_ids: list[int]) -> dict[str, int]:
    return _deliver_batch(self, lanes.SMS.channel, delivery_ids)


@shared_task(base=DeliveryBatchTask, bind=True, name=lanes.INAPP.batch_task)
def deliver_inapp_batch(self: Task, delivery_ids: list[int]) -> dict[str, int]:
    return _deliver_batch(self, lanes.INAPP.channel, delivery_ids)
