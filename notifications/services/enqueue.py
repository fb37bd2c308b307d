"""Publishing delivery tasks. Only ever called after the rows they name are committed."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from celery import current_app
from django.db import transaction

logger = logging.getLogger(__name__)

TASK_BY_CHANNEL = {
    "push": "notifications.tasks.deliver_push",
    "email": "notifications.tasks.deliver_email",
    "sms": "notifications.tasks.deliver_sms",
    "inapp": "notifications.tasks.deliver_inapp",
}


def enqueue_deliveries(deliveries: Iterable[tuple[int, str]]) -> int:
    """Publish one task per (delivery id, channel); returns how many were published.

    A broker outage is logged, not raised: the rows are committed as ``queued`` with a lease,
    and the sweep re-enqueues them once the lease runs out, so nothing is lost.
    """
    items = list(deliveries)
    if not items:
        return 0
    published = 0
    try:
        with current_app.producer_or_acquire() as producer:
            for delivery_id, channel in items:
                current_app.send_task(
                    TASK_BY_CHANNEL[channel], args=(delivery_id,), producer=producer
                )
                published += 1
    except Exception:
        logger.warning(
            "could not publish %d of %d delivery tasks; the sweep will re-enqueue them",
            len(items) - published,
            len(items),
            exc_info=True,
        )
    return published


def enqueue_on_commit(deliveries: Iterable[tuple[int, str]]) -> None:
    items = list(deliveries)
    if items:
        transaction.on_commit(lambda: enqueue_deliveries(items))
