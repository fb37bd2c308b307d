"""Thin tasks: per channel a task for one delivery and one for a batch, both the delivery engine
(notifications/services/engine.py), named and routed by the table in channels/lanes.py
(config.settings.CELERY_TASK_ROUTES is built from it)."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections import Counter
from typing import Any

from celery import Task, shared_task
from celery.signals import task_postrun, worker_process_shutdown, worker_shutdown
from django.conf import settings
from django.db import InterfaceError, OperationalError, connections

from channels import aio, lanes, registry
from channels.providers import push
from notifications import services
from notifications.services import broadcasts, broker_watch, engine, fanout
from notifications.services.enqueue import publish_retries

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


@worker_process_shutdown.connect
@worker_shutdown.connect
def _close_provider_connections(**_: Any) -> None:
    """Close the providers' kept connections on the I/O loop before the process exits, so
    their servers see a clean close (and the interpreter does not collect them half-torn)."""
    kept: list[object] = [registry.provider_for(c) for c in registry.configured_channels()]
    kept += [push.sender_for(platform) for platform in push.configured_platforms()]

    async def close_all() -> None:
        for provider in kept:
            close = getattr(provider, "aclose", None)
            if close is not None:
                await close()

    try:
        aio.run(asyncio.wait_for(close_all(), timeout=5.0))
    except Exception:
        logger.warning("could not close the providers' connections", exc_info=True)


# The routing key of a message RabbitMQ's native delayed delivery held (a countdown on quorum
# queues): 28 binary digits of the delay, then the queue's own key.
_DELAY_PREFIX = re.compile(r"^(?:[01]\.){28}")


class DeliveryTask(Task):  # type: ignore[misc]
    """A delivery task: the engine answers for every provider outcome (retries come back as
    data and are published by ``publish_retries``), so the task itself only retries a
    database that blinked. Anything else escaping the engine is a bug: dead letter."""

    autoretry_for = (OperationalError, InterfaceError)
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
        given = (kwargs or {}).get("delivery_id", (kwargs or {}).get("delivery_ids"))
        if given is None and args:
            given = args[0]
        if isinstance(exc, (OperationalError, InterfaceError)):
            # The database was away for longer than this task's retries, which says nothing
            # about the deliveries: they keep their lease, and the sweep re-enqueues them once
            # it runs out, with their retry budget intact.
            logger.warning(
                "deliveries %s: database unavailable (%s); left to the sweep", given, exc
            )
            return
        for delivery_id in given if isinstance(given, list) else [given] if given else []:
            services.delivery_dead_letter(
                delivery_id=int(delivery_id), error=exc, traceback=str(einfo), task_name=self.name
            )


def _deliver(task: Task, channel: str, delivery_ids: list[int]) -> engine.BatchResult:
    result = engine.deliver([int(pk) for pk in delivery_ids], channel=channel, task_name=task.name)
    publish_retries(result.retries)
    return result


def _deliver_one(task: Task, channel: str, delivery_id: int) -> str:
    return _deliver(task, channel, [delivery_id]).outcomes[int(delivery_id)].value


def _deliver_many(task: Task, channel: str, delivery_ids: list[int]) -> dict[str, int]:
    result = _deliver(task, channel, delivery_ids)
    return dict(Counter(outcome.value for outcome in result.outcomes.values()))


@shared_task(base=DeliveryTask, bind=True, name=lanes.PUSH.task)
def deliver_push(self: Task, delivery_id: int) -> str:
    return _deliver_one(self, lanes.PUSH.channel, delivery_id)


@shared_task(base=DeliveryTask, bind=True, name=lanes.EMAIL.task)
def deliver_email(self: Task, delivery_id: int) -> str:
    return _deliver_one(self, lanes.EMAIL.channel, delivery_id)


@shared_task(base=DeliveryTask, bind=True, name=lanes.SMS.task)
def deliver_sms(self: Task, delivery_id: int) -> str:
    return _deliver_one(self, lanes.SMS.channel, delivery_id)


@shared_task(base=DeliveryTask, bind=True, name=lanes.INAPP.task)
def deliver_inapp(self: Task, delivery_id: int) -> str:
    return _deliver_one(self, lanes.INAPP.channel, delivery_id)


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
def broadcast_fanout(broadcast_id: str, segment: int = 0) -> str:
    """One page of a segment of a broadcast's fan-out; the service chains the segment's next
    page after commit."""
    return fanout.broadcast_fanout_page(broadcast_id=uuid.UUID(broadcast_id), segment=segment).value


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


@shared_task(base=DeliveryTask, bind=True, name=lanes.PUSH.batch_task)
def deliver_push_batch(self: Task, delivery_ids: list[int]) -> dict[str, int]:
    return _deliver_many(self, lanes.PUSH.channel, delivery_ids)


@shared_task(base=DeliveryTask, bind=True, name=lanes.EMAIL.batch_task)
def deliver_email_batch(self: Task, delivery_ids: list[int]) -> dict[str, int]:
    return _deliver_many(self, lanes.EMAIL.channel, delivery_ids)


@shared_task(base=DeliveryTask, bind=True, name=lanes.SMS.batch_task)
def deliver_sms_batch(self: Task, delivery_ids: list[int]) -> dict[str, int]:
    return _deliver_many(self, lanes.SMS.channel, delivery_ids)


@shared_task(base=DeliveryTask, bind=True, name=lanes.INAPP.batch_task)
def deliver_inapp_batch(self: Task, delivery_ids: list[int]) -> dict[str, int]:
    return _deliver_many(self, lanes.INAPP.channel, delivery_ids)
