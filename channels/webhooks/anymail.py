"""anymail's tracking signal → delivery receipts and suppressions, for whichever ESP sends email.

anymail's own views (mounted at /webhooks/anymail/<esp>/tracking/) check basic auth against
ANYMAIL_WEBHOOK_SECRET and normalise each ESP's payload; this receiver only decides what an
event means for the delivery it names. Unknown message ids are fine: anymail still answers 200,
so the ESP stops retrying.
"""

from __future__ import annotations

import logging
from typing import Any

from anymail.signals import AnymailTrackingEvent, EventType, RejectReason, tracking
from django.dispatch import receiver

from channels.base import Channel
from channels.email import esp_provider_name
from notifications.models import DeliveryStatus
from notifications.services import Receipt, delivery_receipt_apply

logger = logging.getLogger(__name__)

# Events that settle a delivery; everything else (opened, clicked, deferred, queued, sent,
# unknown...) is only appended to its history.
_STATUS = {
    EventType.DELIVERED: DeliveryStatus.DELIVERED,
    EventType.BOUNCED: DeliveryStatus.FAILED,
    EventType.REJECTED: DeliveryStatus.FAILED,
    EventType.FAILED: DeliveryStatus.FAILED,
}
# Why the ESP refused to send, when the reason is the address itself.
_DEAD_ADDRESS_REASONS = {
    RejectReason.BOUNCED: "hard_bounce",
    RejectReason.INVALID: "invalid",
    RejectReason.SPAM: "complaint",
    RejectReason.UNSUBSCRIBED: "unsubscribed",
}


@receiver(tracking, dispatch_uid="channels.webhooks.anymail.tracking")
def on_tracking_event(
    sender: Any, event: AnymailTrackingEvent, esp_name: str, **kwargs: Any
) -> None:
    if not event.message_id:
        logger.info("%s %s event without a message id ignored", esp_name, event.event_type)
        return
    reason = _suppression_reason(event)
    delivery_receipt_apply(
        Receipt(
            provider=esp_provider_name(esp_name),
            message_id=str(event.message_id),
            delivery_id=_delivery_id((event.metadata or {}).get("deliveryId")),
            event=str(event.event_type),
            status=_STATUS.get(event.event_type),
            detail=" / ".join(filter(None, (event.mta_response, event.description))),
            suppress=(Channel.EMAIL.value, event.recipient, reason)
            if reason and event.recipient
            else None,
        )
    )


def _suppression_reason(event: AnymailTrackingEvent) -> str | None:
    if event.event_type == EventType.COMPLAINED:
        return "complaint"
    if event.event_type == EventType.UNSUBSCRIBED:
        return "unsubscribed"
    if event.event_type == EventType.BOUNCED:
        # anymail calls Postmark's SoftBounce "bounced" too; Postmark's Inactive=false says the
        # address still works (a full mailbox), so the message failed but the address lives.
        esp_event = event.esp_event
        soft = isinstance(esp_event, dict) and esp_event.get("Inactive") is False
        return None if soft else "hard_bounce"
    if event.event_type == EventType.REJECTED:
        return _DEAD_ADDRESS_REASONS.get(event.reject_reason)
    return None


def _delivery_id(value: Any) -> int | None:
    return int(value) if isinstance(value, str) and value.isdigit() else None
