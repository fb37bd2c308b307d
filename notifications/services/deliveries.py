"""The delivery path: claim a delivery, re-check it, hand it to its provider, record the outcome."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import BooleanField, F, JSONField
from django.db.models.expressions import RawSQL
from django.utils import timezone

from channels import guard, push, registry
from channels.base import (
    Channel,
    Destination,
    DestinationOutcome,
    OutboundMessage,
    PermanentDeliveryError,
    Provider,
    ProviderPaused,
    ProviderResult,
    TransientDeliveryError,
)
from notifications.models import Broadcast, Delivery, DeliveryStatus, FailedDelivery
from notifications.services import transitions
from notifications.services.enqueue import enqueue_on_commit, with_lanes
from preferences import selectors as recipients
from preferences.models import Device, Recipient, normalize_address
from preferences.services import suppression_add

logger = logging.getLogger(__name__)


class Outcome(StrEnum):
    SENT = "sent"
    SKIPPED = "skipped"
    FAILED = "failed"
    NOT_CLAIMED = "not_claimed"
    RETRY = "retry"  # back to queued after a transient error; a retry is scheduled
    DEFERRED = "deferred"  # provider paused or rate-limited: back to queued, not an attempt


def delivery_send(*, delivery_id: int, task_name: str = "") -> Outcome:
    """Send one delivery at most once per claim.

    A redelivered message for a delivery that is already sending, sent or skipped does nothing.
    A transient error puts the delivery back to ``queued`` and is re-raised for the task to
    retry; a permanent one fails it, dead-letters it and retires the dead destination.
    """
    if not transitions.claim(delivery_id):
        return Outcome.NOT_CLAIMED
    (delivery,) = claimed_deliveries([delivery_id])
    return delivery_send_claimed(delivery, task_name=task_name)


# The send-time re-checks read the recipient's rules for the event's category (and for all)
# and whether its address is suppressed: loaded with the claimed rows, as the accept path
# loads them with the recipient, instead of two queries per delivery. Raw SQL refers to the
# tables select_related joins (Django aliases a table's first join by its name).
_SEND_CONTEXT = {
    "preference_rules": RawSQL(
        "COALESCE((SELECT jsonb_agg(jsonb_build_object("
        "'category_id', p.category_id, 'channel', p.channel, 'enabled', p.enabled))"
        " FROM preferences_preference p"
        " WHERE p.recipient_id = notifications_notification.recipient_id"
        " AND (p.category_id = preferences_event.category_id OR p.category_id IS NULL)),"
        " '[]'::jsonb)",
        (),
        output_field=JSONField(),
    ),
    "email_suppressed": RawSQL(
        "EXISTS (SELECT 1 FROM preferences_suppression s"
        " WHERE s.channel = 'email' AND s.address = lower(preferences_recipient.email))",
        (),
        output_field=BooleanField(),
    ),
    "phone_suppressed": RawSQL(
        "EXISTS (SELECT 1 FROM preferences_suppression s"
        " WHERE s.channel = 'sms' AND s.address = preferences_recipient.phone)",
        (),
        output_field=BooleanField(),
    ),
}


def claimed_deliveries(delivery_ids: list[int]) -> list[Delivery]:
    """Deliveries this worker has claimed, with all that sending them reads, in one query."""
    return list(
        Delivery.objects.select_related("notification__event__category", "notification__recipient")
        # Only the broadcast's status: its row may carry a list of 10,000 userIds.
        .annotate(broadcast_status=F("notification__broadcast__status"), **_SEND_CONTEXT)
        .filter(pk__in=delivery_ids)
        .order_by("pk")
    )


@dataclass(frozen=True)
class ReadyToSend:
    """A claimed delivery that passed every check, and what its provider is handed."""

    delivery: Delivery
    recipient: Recipient
    provider: Provider
    message: OutboundMessage


def delivery_send_claimed(delivery: Delivery, *, task_name: str = "") -> Outcome:
    """Everything after the claim: the checks, the provider call, the outcome. Single and
    batch deliveries both go through here (see ``notifications.services.batches``)."""
    ready = delivery_prepare(delivery)
    if isinstance(ready, Outcome):
        return ready
    try:
        result = ready.provider.send(ready.message)
    except (TransientDeliveryError, PermanentDeliveryError) as exc:
        return delivery_record(ready, error=exc, task_name=task_name)
    return delivery_record(ready, result=result, task_name=task_name)


def delivery_prepare(delivery: Delivery) -> ReadyToSend | Outcome:
    """Re-check a claimed delivery at send time; skips it (and says so) when it must not go."""
    if getattr(delivery, "broadcast_status", None) == Broadcast.Status.CANCELLED:
        # Back in `queued` after a transient error when its broadcast was cancelled.
        return _skip(delivery, "cancelled")
    recipient = delivery.notification.recipient
    if recipient is None:
        return _skip(delivery, "recipient_erased")
    provider = registry.provider_for(delivery.channel)
    if provider is None:
        return _skip(delivery, "channel_not_configured")
    if not _allowed(delivery, recipient):
        return _skip(delivery, "opted_out")
    device_tokens = _devices_still_to_reach(delivery, recipient)
    if delivery.channel == Channel.PUSH and not device_tokens and _reached_any(delivery):
        # Every device was settled by earlier attempts; only the bookkeeping is left.
        return _mark_sent(delivery, ProviderResult(provider=delivery.provider or provider.name))
    address = recipients.address_for(delivery.channel, recipient)
    reason = recipients.unreachable_reason(
        channel=delivery.channel,
        recipient=recipient,
        device_tokens=device_tokens,
        suppressed=bool(address) and _suppressed(delivery, address or ""),
    )
    if reason is not None:
        return _skip(delivery, reason)
    return ReadyToSend(delivery, recipient, provider, _outbound(delivery, recipient, device_tokens))


def delivery_record(
    ready: ReadyToSend,
    *,
    result: ProviderResult | None = None,
    error: TransientDeliveryError | PermanentDeliveryError | None = None,
    task_name: str = "",
) -> Outcome:
    """Record what the provider answered. A transient error is recorded, then re-raised;
    so is ProviderPaused (the provider was not called, or refused our configuration: the
    guard paused it), without spending an attempt."""
    delivery, recipient = ready.delivery, ready.recipient
    if isinstance(error, ProviderPaused):
        _record_deferral(delivery, recipient, error)
        raise error
    if isinstance(error, TransientDeliveryError):
        _record_transient(delivery, recipient, error)
        raise error
    if error is not None:
        with transaction.atomic():
            _retire_dead_destinations(delivery.channel, recipient, error, error.destinations)
            delivery_dead_letter(
                delivery_id=delivery.pk,
                error=error,
                traceback="",
                task_name=task_name,
                results=_as_json(error.destinations),
            )
        return Outcome.FAILED
    assert result is not None
    _retire_dead_destinations(delivery.channel, recipient, None, result.destinations)
    return _mark_sent(delivery, result)


def has_dead_destinations(result: ProviderResult) -> bool:
    """Whether recording ``result`` retires a device (the batch records such rows alone)."""
    return any(outcome.status == "dead" for outcome in result.destinations.values())


def _skip(delivery: Delivery, reason: str) -> Outcome:
    transitions.transition(
        [delivery.pk],
        to=DeliveryStatus.SKIPPED,
        allowed_from=(DeliveryStatus.SENDING,),
        note={"reason": reason},
        reason=reason,
    )
    return Outcome.SKIPPED


def _allowed(delivery: Delivery, recipient: Recipient) -> bool:
    return recipients.channel_permissions(
        recipient_id=recipient.pk,
        category=delivery.notification.event.category,
        channels=[delivery.channel],
        rules=getattr(delivery, "preference_rules", None),
    )[delivery.channel]


_SUPPRESSED_FLAG = {Channel.EMAIL: "email_suppressed", Channel.SMS: "phone_suppressed"}


def _suppressed(delivery: Delivery, address: str) -> bool:
    """The flag loaded with the claimed row; a query for a delivery loaded some other way."""
    flag = getattr(delivery, _SUPPRESSED_FLAG.get(Channel(delivery.channel), "-"), None)
    # The SQL compares the address as stored; one not in canonical form (a row written
    # outside the API, e.g. "e6@exämple.com" by the admin) is looked up again as canonical.
    canonical = normalize_address(delivery.channel, address) == address.strip().lower()
    if flag is not None and (flag or canonical):
        return bool(flag)
    return recipients.is_suppressed(channel=delivery.channel, address=address)


def _reached_any(delivery: Delivery) -> bool:
    return any(outcome.get("status") == "sent" for outcome in delivery.results.values())


def _devices_still_to_reach(delivery: Delivery, recipient: Recipient) -> list[tuple[str, str]]:
    if delivery.channel != Channel.PUSH:
        return []
    settled = set(delivery.results)
    return [
        (platform, token)
        for platform, token in recipients.active_device_tokens(
            recipient_id=recipient.pk, platforms=push.configured_platforms()
        )
        if token not in settled
    ]


def _outbound(
    delivery: Delivery, recipient: Recipient, device_tokens: list[tuple[str, str]]
) -> OutboundMessage:
    notification = delivery.notification
    return OutboundMessage(
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
        priority=notification.priority,
    )


def _record_transient(
    delivery: Delivery, recipient: Recipient, error: TransientDeliveryError
) -> None:
    wait = max(float(settings.NOTIFY_RETRY_BACKOFF_MAX), error.retry_after or 0.0)
    with transaction.atomic():
        _retire_dead_destinations(delivery.channel, recipient, None, error.partial)
        transitions.transition(
            [delivery.pk],
            to=DeliveryStatus.QUEUED,
            allowed_from=(DeliveryStatus.SENDING,),
            lease_seconds=wait + settings.NOTIFY_LEASE_SECONDS,
            note={"error": str(error), "transient": True},
            merge_results=_as_json(error.partial),
            last_error=str(error),
        )


def _record_deferral(delivery: Delivery, recipient: Recipient, paused: ProviderPaused) -> None:
    with transaction.atomic():
        _retire_dead_destinations(delivery.channel, recipient, None, paused.partial)
        note: dict[str, Any] = {"deferred": paused.reason, "retryAfter": paused.retry_after}
        if paused.reason == guard.MISCONFIGURED:
            note["error"] = str(paused)  # which setting the provider refused: why it waits
        transitions.release(
            [delivery.pk],
            lease_seconds=(paused.retry_after or 0.0) + settings.NOTIFY_LEASE_SECONDS,
            note=note,
            merge_results=_as_json(paused.partial),
        )


def _mark_sent(delivery: Delivery, result: ProviderResult) -> Outcome:
    deliveries_mark_sent([(delivery, result)])
    return Outcome.SENT


def deliveries_mark_sent(sent: list[tuple[Delivery, ProviderResult]]) -> None:
    """Record provider acceptances, many in one UPDATE (a batch's) or one (a single send)."""
    moved = transitions.mark_sent_many(
        [
            (d.pk, result.provider, result.message_id, _as_json(result.destinations))
            for d, result in sent
        ]
    )
    for delivery, _ in sent:
        if delivery.pk not in moved:
            logger.warning("delivery %s was sent but had left the sending state", delivery.pk)


def _as_json(outcomes: dict[str, DestinationOutcome]) -> dict[str, Any]:
    return {destination: outcome.as_json() for destination, outcome in outcomes.items()}


def _retire_dead_destinations(
    channel: str,
    recipient: Recipient,
    error: PermanentDeliveryError | None,
    outcomes: dict[str, DestinationOutcome],
) -> None:
    """The one place where a provider's "this destination is dead" has its side effect:
    dead device tokens are deactivated (never deleted), dead addresses suppressed."""
    now = timezone.now()
    dead_tokens = {token for token, o in outcomes.items() if o.status == "dead"}
    if error is not None:
        dead_tokens.update(error.dead_device_tokens)
    for token in dead_tokens:
        reason = outcomes[token].error if token in outcomes else str(error)
        Device.objects.filter(recipient=recipient, token=token, active=True).update(
            active=False, deactivated_at=now, deactivation_reason=reason[:255]
        )
    if error is not None and error.dead_address:
        suppression_add(
            channel=channel,
            address=error.dead_address,
            reason=error.suppress_reason,
            provider=error.provider,
            detail=str(error),
        )


def delivery_dead_letter(
    *,
    delivery_id: int,
    error: BaseException,
    traceback: str,
    task_name: str,
    results: dict[str, Any] | None = None,
) -> bool:
    """Fail a pending delivery and record it in the dead-letter table; False if not pending."""
    with transaction.atomic():
        moved = transitions.transition(
            [delivery_id],
            to=DeliveryStatus.FAILED,
            allowed_from=(DeliveryStatus.QUEUED, DeliveryStatus.SENDING),
            note={"error": str(error), "errorClass": type(error).__name__},
            merge_results=results,
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
        enqueue_on_commit(with_lanes(delivery_id for delivery_id, _, _ in moved))
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
        enqueue_on_commit(with_lanes(delivery_id for delivery_id, _ in requeued))
    if requeued:
        logger.warning("sweep re-enqueued %d stuck deliveries", len(requeued))
    return len(requeued)
