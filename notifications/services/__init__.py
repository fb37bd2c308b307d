"""Writes. Views, tasks and admin actions call these; they hold the business rules."""

from notifications.services.accept import AcceptResult, notification_accept
from notifications.services.deliveries import (
    Outcome,
    delivery_dead_letter,
    delivery_send,
    failed_deliveries_matching,
    failed_deliveries_replay,
    sweep_stuck_deliveries,
)
from notifications.services.receipts import Receipt, delivery_receipt_apply

__all__ = [
    "AcceptResult",
    "Outcome",
    "Receipt",
    "delivery_dead_letter",
    "delivery_receipt_apply",
    "delivery_send",
    "failed_deliveries_matching",
    "failed_deliveries_replay",
    "notification_accept",
    "sweep_stuck_deliveries",
]
