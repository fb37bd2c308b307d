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
    # Our own delivery id when the provider echoes it back (callback URL, message metadata):
    # it finds the delivery even before the provider's message id was recorded.
    delivery_id: int | None = None


def delivery_receipt_apply(receipt: Receipt) -> int | None:
    """Apply a receipt to its delivery (by our id when the provider echoed it, else by the
    provider's message id); returns the delivery id, or None if unknown.

    Statuses only move forward: a duplicate or late status receipt changes nothing and is not
    recorded twice. Other events (opens, clicks, a provider's intermediate statuses) are
    appended to the history each time they arrive.
    """
    delivery_id = _find_delivery(receipt)
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
        if receipt.message_id:
            # Fills them in when the receipt beat the worker's own "sent" bookkeeping.
            fields.update(provider=receipt.provider, provider_message_id=receipt.message_id)
        transitions.transition(
            [delivery_id], to=receipt.status, allowed_from=_FROM, note=entry, **fields
        )
    return delivery_id


def _find_delivery(receipt: Receipt) -> int | None:
    if receipt.delivery_id is not None:
        found = (
            Delivery.objects.filter(pk=receipt.delivery_id)
            .values_list("pk", "provider_message_id")
            .first()
        )
        # A recorded message id must agree: a stale id in a callback URL matches nothing.
        if found is not None and found[1] in ("", receipt.message_id):
            return int(found[0])
        return None
    return (
        Delivery.objects.filter(provider=receipt.provider, provider_message_id=receipt.message_id)
        .values_list("pk", flat=True)
        .first()
    )
