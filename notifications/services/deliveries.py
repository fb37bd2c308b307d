"""The delivery path: claim a delivery, re-check it, hand it to its provider, record the outcome."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from channels import registry
from channels.base import (
    Destination,
    OutboundMessage,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from notifications.models import Delivery, DeliveryStatus, FailedDelivery
from notifications.services import transitions
from notifications.services.enqueue import enqueue_on_commit
from preferences import selectors as recipients
from preferences.models import Device, Recipient

logger = logging.getLogger(__name__)


class Outcome(StrEnum):
    SENT = "sent"
    SKIPPED = "skipped"
    FAILED = "failed"
    NOT_CLAIMED = "not_claimed"


def delivery_send(*, delivery_id: int, task_name: str = "") -> Outcome:
    """Send one delivery at most once per claim.

    A redelivered message for a delivery that is already sending, sent or skipped does nothing.
    A transient error puts the delivery back to ``queued`` and is re-raised for the task to
    retry; a permanent one fails it, dead-letters it and retires the dead destination.
    """
    if not transitions.claim(delivery_id):
        return Outcome.NOT_CLAIMED
    delivery = Delivery.objects.select_related(
        "notification__event__category", "notification__recipient"
    ).get(pk=delivery_id)
    notification = delivery.notification
    recipient = notification.recipient
    skip_reason = _skip_reason(delivery, recipient)
    if skip_reason is not None:
        _finish(delivery, DeliveryStatus.SKIPPED, reason=skip_reason)
        return Outcome.SKIPPED
    assert recipient is not None
    provider = registry.provider_for(delivery.channel)
    assert provider is not None
    device_tokens = (
        recipients.active_device_tokens(recipient_id=recipient.pk)
        if delivery.channel == "push"
        else []
    )
    reason = recipients.unreachable_reason(
        channel=delivery.channel, recipient=recipient, device_tokens=device_tokens
    )
    if reason is not None:
        _finish(delivery, DeliveryStatus.SKIPPED, reason=reason)
        return Outcome.SKIPPED
    message = OutboundMessage(
        delivery_id=delivery.pk,
        notification_id=str(notification.pk),
        channel=delivery.channel,
        event=notification.event.key,
        destination=Destination(
            recipient_id=recipient.pk,
            external_id=recipient.external_id,
            email=recipient.email,
            phone=str(recipient.phone) if recipient.phone else None,
            locale=recipient.locale,
            device_tokens=tuple(device_tokens),
        ),
        content=delivery.content,
        data=notification.data,
    )
    try:
        result = provider.send(message)
    except TransientDeliveryError as exc:
        wait = max(float(settings.NOTIFY_RETRY_BACKOFF_MAX), exc.retry_after or 0.0)
        transitions.transition(
            [delivery.pk],
            to=DeliveryStatus.QUEUED,
            allowed_from=(DeliveryStatus.SENDING,),
            lease_seconds=wait + settings.NOTIFY_LEASE_SECONDS,
            note={"error": str(exc), "transient": True},
            last_error=str(exc),
        )
        raise
    except PermanentDeliveryError as exc:
        with transaction.atomic():
            _retire_dead_destination(recipient, exc)
            delivery_dead_letter(
                delivery_id=delivery.pk, error=exc, traceback="", task_name=task_name
            )
        return Outcome.FAILED
    moved = transitions.transition(
        [delivery.pk],
        to=DeliveryStatus.SENT,
        # A sweep may have requeued us while the provider was slow; a late success still wins.
        allowed_from=(DeliveryStatus.SENDING, DeliveryStatus.QUEUED),
        note={"provider": result.provider, "messageId": result.message_id},
        provider=result.provider,
        provider_message_id=result.message_id,
        last_error="",
    )
    if not moved:
        logger.warning("delivery %s was sent but had left the sending state", delivery.pk)
    return Outcome.SENT


def _skip_reason(delivery: Delivery, recipient: Recipient | None) -> str | None:
    if recipient is None:
        return "recipient_erased"
    if not registry.is_configured(delivery.channel):
        return "channel_not_configured"
    notification = delivery.notification
    allowed = recipients.channel_permissions(
        recipient_id=recipient.pk,
        category=notification.event.category,
        channels=[delivery.channel],
    )
    if not allowed[delivery.channel]:
        return "opted_out"
    return None


def _finish(delivery: Delivery, status: DeliveryStatus, *, reason: str) -> None:
    transitions.transition(
        [delivery.pk],
        to=status,
        allowed_from=(DeliveryStatus.SENDING,),
        note={"reason": reason},
        reason=reason,
    )


def _retire_dead_destination(recipient: Recipient, error: PermanentDeliveryError) -> None:
    """The one place where a provider's "this destination is dead" has its side effect."""
    if error.dead_device_token:
        Device.objects.filter(
            recipient=recipient, token=error.dead_device_token, active=True
        ).update(
            active=False,
            deactivated_at=timezone.now(),
            deactivation_reason=str(error)[:255],
        )


def delivery_dead_letter(
    *, delivery_id: int, error: BaseException, traceback: str, task_name: str
) -> bool:
    """Fail a pending delivery and record it in the dead-letter table; False if not pending."""
    with transaction.atomic():
        moved = transitions.transition(
            [delivery_id],
            to=DeliveryStatus.FAILED,
            allowed_from=(DeliveryStatus.QUEUED, DeliveryStatus.SENDING),
            note={"error": str(error), "errorClass": type(error).__name__},
            reason=getattr(error, "provider_code", None) or type(error).__name__,
            last_error=str(error),
        )
        if not moved:
            return False
        FailedDelivery.objects.create(
            delivery_id=delivery_id,
            task_name=task_name,
            error_class=f"{type(error).__module__}.{type(error).__qualname__}",
            error_message=str(error),
            traceback=traceback,
            attempts=moved[0][2],
        )
    return True


def failed_deliveries_replay(*, failed_ids: Iterable[int], replayed_by: str) -> int:
    """Put dead-lettered deliveries back in their queues; returns how many were replayed.

    Each dead letter is replayed at most once and only a ``failed`` delivery moves, so
    replaying the same selection twice (or from two admins at once) sends nothing twice.
    """
    ids = list(failed_ids)
    with transaction.atomic():
        letters = list(
            FailedDelivery.objects.select_for_update(skip_locked=True)
            .filter(pk__in=ids, replayed_at__isnull=True)
            .values_list("pk", "delivery_id")
        )
        if not letters:
            return 0
        FailedDelivery.objects.filter(pk__in=[pk for pk, _ in letters]).update(
            replayed_at=timezone.now(), replayed_by=replayed_by[:255]
        )
        moved = transitions.transition(
            sorted({delivery_id for _, delivery_id in letters}),
            to=DeliveryStatus.QUEUED,
            allowed_from=(DeliveryStatus.FAILED,),
            lease_seconds=settings.NOTIFY_LEASE_SECONDS,
            note={"replayedBy": replayed_by},
            reason="",
        )
        enqueue_on_commit((delivery_id, channel) for delivery_id, channel, _ in moved)
    return len(moved)


def failed_deliveries_matching(
    *, channel: str | None = None, since: datetime | None = None
) -> list[int]:
    """Ids of dead letters not yet replayed, optionally for one channel and since a time."""
    letters = FailedDelivery.objects.filter(replayed_at__isnull=True)
    if channel:
        letters = letters.filter(delivery__channel=channel)
    if since is not None:
        letters = letters.filter(failed_at__gte=since)
    return list(letters.order_by("failed_at").values_list("pk", flat=True))


def sweep_stuck_deliveries(*, limit: int | None = None) -> int:
    """Re-enqueue deliveries whose lease ran out (lost message, broker down, dead worker)."""
    with transaction.atomic():
        requeued = transitions.requeue_expired(limit or settings.NOTIFY_SWEEP_BATCH)
        enqueue_on_commit(requeued)
    if requeued:
        logger.warning("sweep re-enqueued %d stuck deliveries", len(requeued))
    return len(requeued)
