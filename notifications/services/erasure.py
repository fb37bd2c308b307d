"""Erasure of a recipient's personal data, across both apps, in one transaction.

The profile, devices, preference rules and inbox messages go (``preferences.services``); the
notification log stays for statistics and audits but anonymous (here). The stored accept
answer (the notification id and each channel's status) holds nothing personal and stays, so
a caller retrying an old request with its idempotency key still gets the same answer.
Suppressions are kept: they exist so that an address is never written to again.
"""

from __future__ import annotations

from django.db import transaction
from django.db.models.expressions import RawSQL

from notifications.models import Delivery, FailedDelivery, Notification
from preferences import services as recipients
from preferences.models import Recipient


@transaction.atomic
def recipient_erase(*, recipient: Recipient) -> None:
    """Anonymize the recipient's notifications, then delete the recipient. Deliveries still
    pending are skipped with ``recipient_erased`` when a worker reaches them."""
    notifications = Notification.objects.filter(recipient=recipient)
    deliveries = Delivery.objects.filter(notification__in=notifications)
    FailedDelivery.objects.filter(delivery__in=deliveries).update(error_message="", traceback="")
    deliveries.update(
        content={},
        results={},  # per-device results carry tokens
        last_error="",  # provider error texts quote addresses
        # Statuses and times stay; what a provider said (errors, ids, receipts' details) goes.
        history=RawSQL(
            "(SELECT COALESCE(jsonb_agg(entry - 'error' - 'detail' - 'messageId'), '[]')"
            " FROM jsonb_array_elements(history) AS entry)",
            (),
        ),
    )
    notifications.update(data={}, external_user_id="")
    recipients.recipient_delete(recipient=recipient)
