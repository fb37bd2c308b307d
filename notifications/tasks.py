"""One thin task per channel; each routes to its own queue (config.settings.CELERY_TASK_ROUTES)."""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

from channels.base import TransientDeliveryError
from notifications import services


class DeliveryTask(Task):  # type: ignore[misc]
    # Retried: provider hiccups and a database that blinked. Anything else is a bug or a
    # misconfiguration and goes straight to the dead-letter table via on_failure.
    autoretry_for = (TransientDeliveryError, OperationalError, InterfaceError)
    retry_backoff = settings.NOTIFY_RETRY_BACKOFF
    retry_backoff_max = settings.NOTIFY_RETRY_BACKOFF_MAX
    retry_jitter = True
    max_retries = settings.NOTIFY_MAX_RETRIES
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        delivery_id = kwargs.get("delivery_id") if kwargs else None
        if delivery_id is None and args:
            delivery_id = args[0]
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
    except TransientDeliveryError as exc:
        if exc.retry_after is not None:
            # The provider said when to come back; that beats our own backoff.
            raise task.retry(exc=exc, countdown=exc.retry_after) from exc
        raise


@shared_task(base=DeliveryTask, bind=True)
def deliver_push(self: Task, delivery_id: int) -> str:
    return _deliver(self, delivery_id)


@shared_task(base=DeliveryTask, bind=True)
def deliver_email(self: Task, delivery_id: int) -> str:
    return _deliver(self, delivery_id)


@shared_task(base=DeliveryTask, bind=True)
def deliver_sms(self: Task, delivery_id: int) -> str:
    return _deliver(self, delivery_id)


@shared_task(base=DeliveryTask, bind=True)
def deliver_inapp(self: Task, delivery_id: int) -> str:
    return _deliver(self, delivery_id)


@shared_task(ignore_result=True)
def sweep_stuck_deliveries() -> int:
    return services.sweep_stuck_deliveries()


@shared_task(ignore_result=True)
def purge_expired_notifications() -> int:
    """Retention (docs/sizing.md): one time-boxed run of batched deletes; beat repeats it."""
    from notifications.services import retention

    older_than = retention.retention_period()
    if older_than is None:  # NOTIFY_RETENTION_DAYS=0: keep the log forever
        return 0
    return retention.purge_expired_notifications(older_than=older_than).notifications
