"""Fan-out of a broadcast: one keyset page of recipients per task run, in parallel chains.

The audience's recipient id range is cut into segments when the broadcast is accepted
(``fanout_segments``); each segment is a chain of pages, so up to NOTIFY_FANOUT_CHAINS
maintenance processes write one broadcast at once. Each page costs a constant number of
queries whatever its size: the broadcast, the event's catalog (cached), one statement for the
recipients with all their sending context, one multi-row INSERT of notifications, one of
deliveries, one UPDATE of the segment's cursor. The three writes share a transaction, and the
cursor only moves if it is still where this run found it, so a page that runs twice
(redelivered task, resumed chain) commits once; the notification INSERT is also
``ON CONFLICT (broadcast_id, recipient_id) DO NOTHING``. After commit, the segment's next
page is chained (first, so that another process writes it meanwhile), then the page's queued
deliveries are published in batches on the bulk lanes.
"""

from __future__ import annotations

import functools
import json
import logging
import uuid
from collections import defaultdict
from enum import StrEnum
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import connection, transaction

from channels.base import Channel
from channels.lanes import FANOUT_TASK, LANES, MAINTENANCE_QUEUE
from channels.providers import push
from notifications.models import Broadcast, DeliveryStatus
from notifications.selectors import event_catalog
from notifications.services.fanout_plan import Planned, Planner
from preferences import selectors as recipients
from preferences.models import Priority
from preferences.selectors import AudienceMember

logger = logging.getLogger(__name__)

_ACTIVE = (Broadcast.Status.PENDING, Broadcast.Status.FANNING_OUT)


class PageOutcome(StrEnum):
    MORE = "more"  # a page was written and the next one chained
    DONE = "done"  # the audience is exhausted: the broadcast is fanned out
    STOPPED = "stopped"  # cancelled, finished, unknown, or another run took this page


BIGINT_MAX = 2**63 - 1  # the last segment's bound: recipients created meanwhile are in it


def fanout_segments(*, audience: dict[str, Any]) -> tuple[list[int], list[int]]:
    """The starting cursors and the bounds of a new broadcast's segments: its audience's id
    range now, cut into up to NOTIFY_FANOUT_CHAINS equal parts of at least a page each."""
    span = recipients.audience_id_range(audience=audience)
    if span is None:
        return [0], [BIGINT_MAX]
    low, high = span
    size = high - low + 1
    count = max(
        1, min(int(settings.NOTIFY_FANOUT_CHAINS), size // int(settings.NOTIFY_FANOUT_PAGE))
    )
    bounds = [low - 1 + size * (i + 1) // count for i in range(count - 1)] + [BIGINT_MAX]
    return [0, *bounds[:-1]], bounds


def broadcast_fanout_page(*, broadcast_id: uuid.UUID, segment: int = 0) -> PageOutcome:
    """Write the next page of one segment of a broadcast's notifications and deliveries."""
    row = (
        Broadcast.objects.filter(pk=broadcast_id)
        .values(
            "status",
            "fanout_cursors",
            "fanout_bounds",
            "audience",
            "channels",
            "data",
            "api_key_id",
            "event__key",
        )
        .first()
    )
    if row is None or row["status"] not in _ACTIVE or segment >= len(row["fanout_cursors"]):
        return PageOutcome.STOPPED
    cursor, bound = int(row["fanout_cursors"][segment]), int(row["fanout_bounds"][segment])
    if cursor >= bound:  # this segment is done (a redelivered or resumed task)
        return PageOutcome.STOPPED
    catalog = event_catalog(key=row["event__key"])
    if catalog is None:  # events are PROTECTed while broadcasts use them; kept as a guard
        return PageOutcome.STOPPED
    channels: list[str] = row["channels"] or list(catalog.event.default_channels)
    page_size = int(settings.NOTIFY_FANOUT_PAGE)
    page = recipients.audience_page(
        audience=row["audience"],
        after=cursor,
        until=bound,
        limit=page_size,
        category_id=catalog.event.category_id,
        platforms=push.configured_platforms() if Channel.PUSH in channels else (),
    )
    last = len(page) < page_size
    # Decided and rendered before the transaction, so its locks are held for the writes only.
    planner = Planner(catalog, channels, row["data"])
    ids = {recipient.id: uuid.uuid4() for recipient in page}
    plans = {recipient.id: planner.plan(recipient, ids[recipient.id]) for recipient in page}
    id_texts = {recipient_id: str(notification_id) for recipient_id, notification_id in ids.items()}
    with transaction.atomic():
        inserted = _insert_notifications(
            broadcast_id=broadcast_id,
            api_key_id=row["api_key_id"],
            event_id=catalog.event.pk,
            data=row["data"],
            page=[(id_texts[recipient.id], recipient) for recipient in page],
        )
        queued = _insert_deliveries(
            [
                (id_texts[recipient_id], plan)
                for recipient_id in inserted
                for plan in plans[recipient_id]
            ]
        )
        moved = _advance(
            broadcast_id,
            segment=segment,
            from_cursor=cursor,
            to_cursor=bound if last else page[-1].id,
            added=len(inserted),
        )
        if not moved:
            # Cancelled meanwhile, or another run wrote this page first: undo ours.
            transaction.set_rollback(True)
            return PageOutcome.STOPPED
        transaction.on_commit(
            functools.partial(_publish, broadcast_id, segment, queued, chain_next=not last)
        )
    return PageOutcome.DONE if last else PageOutcome.MORE


_INSERT_NOTIFICATIONS_SQL = """
INSERT INTO notifications_notification
    (id, api_key_id, recipient_id, external_user_id, event_id, data, priority, broadcast_id,
     idempotency_key, request_fingerprint, accept_response, created_at)
SELECT page.id, %(api_key)s, page.recipient_id, page.external_id, %(event)s, %(data)s::jsonb,
       %(priority)s, %(broadcast)s, NULL, '', '{}'::jsonb, now()
FROM unnest(%(ids)s::uuid[], %(recipient_ids)s::bigint[], %(external_ids)s::text[])
     AS page(id, recipient_id, external_id)
ON CONFLICT (broadcast_id, recipient_id) WHERE broadcast_id IS NOT NULL DO NOTHING
RETURNING recipient_id
"""


def _insert_notifications(
    *,
    broadcast_id: uuid.UUID,
    api_key_id: str,
    event_id: int,
    data: dict[str, Any],
    page: list[tuple[str, AudienceMember]],
) -> list[int]:
    """One multi-row INSERT (arrays unnested server-side: one statement, one round trip,
    whatever the page size); returns the recipient ids of the rows created."""
    if not page:
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            _INSERT_NOTIFICATIONS_SQL,
            {
                "api_key": api_key_id,
                "event": event_id,
                "data": json.dumps(data),
                "priority": Priority.BULK.value,
                "broadcast": broadcast_id,
                "ids": [notification_id for notification_id, _ in page],
                "recipient_ids": [recipient.id for _, recipient in page],
                "external_ids": [recipient.external_id for _, recipient in page],
            },
        )
        return [row[0] for row in cursor.fetchall()]


_INSERT_DELIVERIES_SQL = """
INSERT INTO notifications_delivery
    (notification_id, channel, status, reason, content, provider, provider_message_id,
     attempts, last_error, history, results, lease_until, queued_at, skipped_at)
SELECT d.notification_id, d.channel, d.status, d.reason, (%(contents)s::jsonb[])[d.content],
       '', '', 0, '',
       jsonb_build_array(jsonb_build_object('status', d.status, 'at', now(), 'attempt', 0)
           || CASE WHEN d.reason = '' THEN '{}'::jsonb
                   ELSE jsonb_build_object('reason', d.reason) END),
       '{}'::jsonb,
       CASE WHEN d.status = 'queued' THEN now() + make_interval(secs => %(lease)s) END,
       CASE WHEN d.status = 'queued' THEN now() END,
       CASE WHEN d.status = 'skipped' THEN now() END
FROM unnest(%(notifications)s::uuid[], %(channels)s::text[], %(statuses)s::text[],
            %(reasons)s::text[], %(content)s::int[])
     AS d(notification_id, channel, status, reason, content)
RETURNING id, channel, status
"""


def _insert_deliveries(rows: list[tuple[str, Planned]]) -> list[tuple[int, str]]:
    """One multi-row INSERT of every delivery of the page; returns (id, channel) of those
    queued. Content rendered once is sent once (an index into a small array per row)."""
    if not rows:
        return []
    contents: dict[str, int] = {}
    encoded: dict[int, int] = {}  # id(content) -> index: a page's shared renders encoded once
    indexes = []
    for _, plan in rows:
        index = encoded.get(id(plan.content))
        if index is None:
            text = json.dumps(plan.content or {}, sort_keys=True)
            index = encoded[id(plan.content)] = contents.setdefault(text, len(contents) + 1)
        indexes.append(index)  # SQL arrays start at 1
    with connection.cursor() as cursor:
        cursor.execute(
            _INSERT_DELIVERIES_SQL,
            {
                "contents": list(contents),
                "lease": settings.NOTIFY_FANOUT_LEASE_SECONDS,
                "notifications": [notification_id for notification_id, _ in rows],
                "channels": [plan.channel for _, plan in rows],
                "statuses": [plan.status for _, plan in rows],
                "reasons": [plan.reason for _, plan in rows],
                "content": indexes,
            },
        )
        return sorted(
            (row[0], row[1]) for row in cursor.fetchall() if row[2] == DeliveryStatus.QUEUED
        )


# The broadcast is fanned out when this page ends its segment and every other one has ended
# (the same condition twice: SET expressions all read the row as it was).
_ADVANCE_SQL = """
UPDATE notifications_broadcast
SET fanout_cursors[%(at)s] = %(to)s,
    recipients_total = recipients_total + %(added)s,
    status = CASE WHEN (%(to)s >= fanout_bounds[%(at)s] AND NOT EXISTS (
        SELECT 1 FROM unnest(fanout_cursors, fanout_bounds) WITH ORDINALITY AS s(cursor, bound, at)
        WHERE s.at <> %(at)s AND s.cursor < s.bound))
        THEN 'fanned_out' ELSE 'fanning_out' END,
    fanned_out_at = CASE WHEN (%(to)s >= fanout_bounds[%(at)s] AND NOT EXISTS (
        SELECT 1 FROM unnest(fanout_cursors, fanout_bounds) WITH ORDINALITY AS s(cursor, bound, at)
        WHERE s.at <> %(at)s AND s.cursor < s.bound))
        THEN now() END
WHERE id = %(id)s AND fanout_cursors[%(at)s] = %(from)s AND status IN ('pending', 'fanning_out')
"""


def _advance(
    broadcast_id: uuid.UUID, *, segment: int, from_cursor: int, to_cursor: int, added: int
) -> bool:
    """Move a segment's cursor past this page, if nobody moved it (and nobody cancelled); the
    broadcast is fanned out when this page ends the last segment still open. Chains update
    the one row in turn (its lock is held to commit), and a waiting UPDATE re-reads the row
    as the other left it, so exactly one of two segments ending together sees all done."""
    with connection.cursor() as cursor:
        cursor.execute(
            _ADVANCE_SQL,
            {
                "at": segment + 1,  # SQL arrays start at 1
                "to": to_cursor,
                "added": added,
                "id": broadcast_id,
                "from": from_cursor,
            },
        )
        return cursor.rowcount == 1


def _publish(
    broadcast_id: uuid.UUID, segment: int, queued: list[tuple[int, str]], *, chain_next: bool
) -> None:
    """After commit: the segment's next page, then the page's deliveries in batches on their
    bulk lanes.

    A broker outage is logged, not raised: the deliveries carry a lease, so the sweep
    re-enqueues them, and ``broadcasts_resume`` restarts a fan-out whose chain broke.
    """
    size = max(1, int(settings.NOTIFY_DELIVERY_BATCH))
    by_channel: dict[str, list[int]] = defaultdict(list)
    for delivery_id, channel in queued:
        by_channel[channel].append(delivery_id)
    try:
        with current_app.producer_or_acquire() as producer:
            if chain_next:  # first, so that another process writes it while this one publishes
                current_app.send_task(
                    FANOUT_TASK,
                    args=(str(broadcast_id), segment),
                    queue=MAINTENANCE_QUEUE,
                    producer=producer,
                )
            for channel, ids in sorted(by_channel.items()):
                for start in range(0, len(ids), size):
                    batch = ids[start : start + size]
                    current_app.send_task(
                        LANES[channel].batch_task,
                        args=(batch,),
                        # Celery would repr() every id of every batch for the message header.
                        argsrepr=f"([{batch[0]}..{batch[-1]}] {len(batch)} deliveries)",
                        queue=LANES[channel].bulk_queue,
                        producer=producer,
                    )
    except Exception:
        logger.warning(
            "broadcast %s: could not publish a fan-out page's tasks; the sweep re-enqueues the"
            " deliveries and the resume task the fan-out",
            broadcast_id,
            exc_info=True,
        )


def enqueue_fanout(broadcast_id: uuid.UUID) -> bool:
    """Publish a fan-out task for each of the broadcast's unfinished segments (called after
    commit, and by the resume task)."""
    row = Broadcast.objects.filter(pk=broadcast_id).values("fanout_cursors", "fanout_bounds")
    segments = row.first() or {"fanout_cursors": [], "fanout_bounds": []}
    try:
        with current_app.producer_or_acquire() as producer:
            for segment, (cursor, bound) in enumerate(
                zip(segments["fanout_cursors"], segments["fanout_bounds"], strict=True)
            ):
                if cursor < bound:
                    current_app.send_task(
                        FANOUT_TASK,
                        args=(str(broadcast_id), segment),
                        queue=MAINTENANCE_QUEUE,
                        producer=producer,
                    )
    except Exception:
        logger.warning(
            "broadcast %s: could not publish its fan-out; the resume task will",
            broadcast_id,
            exc_info=True,
        )
        return False
    return True


def broadcasts_resume() -> int:
    """Restart the fan-out of every broadcast not yet fanned out (periodic).

    A chain breaks only if publishing the next page failed; restarting one that is still
    running is harmless: both runs compute the same page and only one commits it.
    """
    pending = list(Broadcast.objects.filter(status__in=_ACTIVE).values_list("pk", flat=True))
    return sum(enqueue_fanout(broadcast_id) for broadcast_id in pending)
