"""Publishing delivery tasks. Only ever called after the rows they name are committed."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from celery import current_app
from django.db import transaction

from channels.lanes import LANES
from notifications.models import Delivery
from preferences.models import Priority

if TYPE_CHECKING:
    from notifications.services.outcomes import Retry

logger = logging.getLogger(__name__)

# (delivery id, channel, priority): what one delivery task message needs.
QueuedDelivery = tuple[int, str, str]


def queue_for(channel: str, priority: str) -> str:
    """Transactional deliveries use the channel's transactional lane, bulk ones its bulk lane,
    so an OTP never waits behind a broadcast's backlog."""
    lanes = LANES[channel]
    return lanes.queue if priority == Priority.TRANSACTIONAL else lanes.bulk_queue


def with_lanes(delivery_ids: Iterable[int]) -> list[QueuedDelivery]:
    """The channel and priority of each delivery (one query), for re-enqueueing."""
    return [
        (pk, channel, priority)
        for pk, channel, priority in Delivery.objects.filter(pk__in=list(delivery_ids))
        .order_by("pk")
        .values_list("pk", "channel", "notification__priority")
    ]


# A task message: (task name, its one argument, queue, countdown in seconds or None).
_Message = tuple[str, "list[int] | int", str, "int | None"]


def enqueue_deliveries(deliveries: Iterable[QueuedDelivery]) -> int:
    """Publish one task per delivery on its channel's lane; returns how many were published.

    A broker outage is logged, not raised: the rows are committed as ``queued`` with a lease,
    and the sweep re-enqueues them once the lease runs out, so nothing is lost.
    """
    messages: list[_Message] = [
        (LANES[channel].task, delivery_id, queue_for(channel, priority), None)
        for delivery_id, channel, priority in deliveries
    ]
    return _publish(messages, "delivery tasks")


def _publish(messages: list[_Message], what: str) -> int:
    """Send ``messages`` on one producer; returns how many went. A broker outage is logged,
    not raised: the rows they name are ``queued`` with a lease, and the sweep re-enqueues
    them once it runs out, so nothing is lost."""
    published = 0
    try:
        with current_app.producer_or_acquire() as producer:
            for task, arg, queue, countdown in messages:
                current_app.send_task(
                    task, args=(arg,), queue=queue, countdown=countdown, producer=producer
                )
                published += 1
    except Exception:
        logger.warning(
            "could not publish %d of %d %s; the sweep will re-enqueue them",
            len(messages) - published,
            len(messages),
            what,
            exc_info=True,
        )
    return published


def enqueue_on_commit(deliveries: Iterable[QueuedDelivery]) -> None:
    items = list(deliveries)
    if items:
        transaction.on_commit(lambda: enqueue_deliveries(items))


def publish_retries(retries: Iterable[Retry]) -> int:
    """The one place retries are published; returns how many messages went out.

    A transient failure goes back alone (a batch of one) on its own lane after its countdown.
    Deliveries whose provider was not called (paused, rate-limited) were not attempted: they
    go back together, one batch per lane, due when the longest pause ends. A failure to
    publish is logged: the deliveries are ``queued`` with a lease covering the wait, so the
    sweep re-enqueues them once it runs out.
    """
    items = list(retries)
    messages: list[_Message] = []
    deferred: dict[tuple[str, str], list[Retry]] = {}
    for retry in items:
        lane = queue_for(retry.channel, retry.priority)
        if retry.deferred:
            deferred.setdefault((retry.channel, lane), []).append(retry)
        else:
            messages.append((LANES[retry.channel].task, retry.delivery_id, lane, retry.countdown))
    for (channel, lane), group in deferred.items():
        ids = [retry.delivery_id for retry in group]
        countdown = max(retry.countdown for retry in group)
        if len(ids) == 1:
            messages.append((LANES[channel].task, ids[0], lane, countdown))
        else:
            messages.append((LANES[channel].batch_task, ids, lane, countdown))
    return _publish(messages, "retries")
