"""Deliveries outside the engine's send: one delivery's send as a call (tests, the shell),
dead letters, their replay, and the sweep of deliveries whose lease ran out."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from channels.base import TransientDeliveryError
from notifications.models import Delivery, DeliveryStatus, FailedDelivery
from notifications.services import engine, transitions
from notifications.services.enqueue import enqueue_on_commit, with_lanes
from notifications.services.outcomes import Outcome, dead_letter

logger = logging.getLogger(__name__)

__all__ = ["Outcome", "delivery_dead_letter", "delivery_send"]


def delivery_send(*, delivery_id: int, task_name: str = "") -> Outcome:
    """Send one delivery through the engine (a batch of one) and return its outcome; a
    transient failure or a deferral is raised as the provider's error, after it was recorded,
    for a caller that handles one delivery at a time. Tasks use ``engine.deliver`` and
    publish the retries it returns instead."""
    channel = Delivery.objects.filter(pk=delivery_id).values_list("channel", flat=True).first()
    if channel is None:
        return Outcome.NOT_CLAIMED
    result = engine.deliver([delivery_id], channel=channel, task_name=task_name)
    error = result.errors.get(delivery_id)
    if isinstance(error, TransientDeliveryError) and result.outcomes[delivery_id] in (
        Outcome.RETRY,
        Outcome.DEFERRED,
    ):
        raise error
    return result.outcomes[delivery_id]


def delivery_dead_letter(
    *,
    delivery_id: int,
    error: BaseException,
    traceback: str,
    task_name: str,
    results: dict[str, Any] | None = None,
) -> bool:
    """Fail a pending delivery and record it in the dead-letter table; False if not pending."""
    return dead_letter(
        delivery_id, error=error, traceback=traceback, task_name=task_name, results=results
    )


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
