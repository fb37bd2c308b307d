"""Provider receipts (webhooks): delivered / failed / engagement, applied forward-only."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from notifications.models import Delivery, DeliveryStatus
from notifications.services import transitions
from preferences.services import suppression_add

logger = logging.getLogger(__name__)

# A receipt may arrive before our worker recorded "sent" (the provider answered and called
# back at once), so "sending" is a valid starting point; anything final is not.
_FROM = (DeliveryStatus.SENDING, DeliveryStatus.SENT)


@dataclass(frozen=True)
class Receipt:
    provider: str
    message_id: str
    event: str  # the provider's own word: "delivered", "bounced", "opened", "undelivered"...
    status: DeliveryStatus | None = None  # DELIVERED or FAILED when the event settles it
    detail: str = ""
    # (channel, address, reason): stop using this destination (hard bounce, complaint, STOP).
    suppress: tuple[str, str, str] | None = None


def delivery_receipt_apply(receipt: Receipt) -> int | None:
    """Apply a receipt to the delivery with that provider message id; its id, or None if unknown.

    Statuses only move forward: a duplicate or late receipt changes nothing and is not
    recorded twice. Engagement events (opens, clicks) are appended to the history only.
    """
    delivery_id = (
        Delivery.objects.filter(provider=receipt.provider, provider_message_id=receipt.message_id)
        .values_list("pk", flat=True)
        .first()
    )
    with transaction.atomic():
        if receipt.suppress is not None:
            channel, address, reason = receipt.suppress
            suppression_add(
                channel=channel,
                address=address,
                reason=reason,
                provider=receipt.provider,
                detail=receipt.detail or receipt.event,
            )
        if delivery_id is None:
            logger.info("receipt for unknown %s message %s", receipt.provider, receipt.message_id)
            return None
        entry = {"receipt": receipt.event, **({"detail": receipt.detail} if receipt.detail else {})}
        if receipt.status is None:
            transitions.note(delivery_id, entry)
            return delivery_id
        fields: dict[str, Any] = {}
        if receipt.status == DeliveryStatus.FAILED:
            why = receipt.detail or receipt.event
            fields = {"reason": why[:64], "last_error": why}
        transitions.transition(
            [delivery_id], to=receipt.status, allowed_from=_FROM, note=entry, **fields
        )
    return delivery_id
