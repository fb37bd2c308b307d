"""Broadcasts: accept one event for an audience, show how far it got, cancel it.

Accepting only records the broadcast (idempotently, like ``POST /api/notify``) and starts
the fan-out task after commit; the Notification and Delivery rows are written by
``notifications.services.fanout``, a page of recipients at a time.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections import defaultdict
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from rest_framework_api_key.models import APIKey

from notifications.exceptions import (
    IdempotencyConflict,
    NoChannels,
    TemplateError,
    UnknownEvent,
    Unprocessable,
)
from notifications.models import Broadcast, DeliveryStatus
from notifications.rendering import TemplateRenderError, render_template
from notifications.selectors import EventCatalog, event_catalog
from notifications.services import transitions
from notifications.services.fanout import enqueue_fanout, fanout_segments
from notifications.services.idempotency import AcceptResult, replay_if_known
from preferences.models import Topic


class UnknownTopic(Unprocessable):
    code = "unknown_topic"


def broadcast_fingerprint(
    *, event: str, audience: dict[str, Any], channels: list[str] | None, data: dict[str, Any]
) -> str:
    body = {"event": event, "audience": audience, "channels": channels, "data": data}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def broadcast_accept(
    *,
    api_key: APIKey,
    event_key: str,
    audience: dict[str, Any],
    channels: list[str] | None,
    data: dict[str, Any],
    idempotency_key: str | None,
) -> AcceptResult:
    """Record a broadcast and start its fan-out after commit.

    Same idempotency key and body again: the first answer, replayed; same key, another body:
    409. The unique (api key, idempotency key) index decides, as for single notifications.
    """
    fingerprint = broadcast_fingerprint(
        event=event_key, audience=audience, channels=channels, data=data
    )
    catalog = event_catalog(key=event_key)
    if catalog is None:
        raise UnknownEvent(f"Unknown event {event_key!r}.", fields={"event": ["Unknown event."]})
    wanted = list(
        dict.fromkeys(channels if channels is not None else catalog.event.default_channels)
    )
    if not wanted:
        raise NoChannels(
            f"Event {event_key!r} has no default channels and the request named none.",
            fields={"channels": ["Name at least one channel."]},
        )
    if "topic" in audience and not Topic.objects.filter(key=audience["topic"]).exists():
        replay = replay_if_known(
            Broadcast, api_key=api_key, idempotency_key=idempotency_key, fingerprint=fingerprint
        )
        if replay is not None:  # the topic was deleted since: answer as we did
            return replay
        raise UnknownTopic(
            f"Unknown topic {audience['topic']!r}.",
            fields={"audience": {"topic": ["Unknown topic."]}},
        )
    _check_templates(catalog, wanted, data)
    broadcast_id = uuid.uuid4()
    body = {"id": str(broadcast_id), "status": Broadcast.Status.PENDING.value}
    with transaction.atomic():
        inserted = _insert_broadcast(
            broadcast_id=broadcast_id,
            api_key=api_key,
            catalog=catalog,
            audience=audience,
            channels=wanted,
            data=data,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
            body=body,
        )
        if not inserted:
            replay = replay_if_known(
                Broadcast, api_key=api_key, idempotency_key=idempotency_key, fingerprint=fingerprint
            )
            if replay is None:
                raise IdempotencyConflict("Concurrent request with this idempotency key.")
            return replay
        transaction.on_commit(lambda: enqueue_fanout(broadcast_id))
    return AcceptResult(body=body, replayed=False)


def _check_templates(catalog: EventCatalog, channels: list[str], data: dict[str, Any]) -> None:
    """Render every template of the wanted channels once, so a template that cannot render
    (syntax, a missing include) is a 422 now rather than a million skipped deliveries."""
    context = {
        **data,
        "data": data,
        "recipient": {"id": "", "email": "", "locale": ""},
        "event": catalog.event.key,
        "notification_id": "",
    }
    for template in catalog.templates:
        if template.channel in channels:
            try:
                render_template(template, context)
            except TemplateRenderError as exc:
                raise TemplateError(str(exc)) from exc


_INSERT_SQL = """
INSERT INTO notifications_broadcast
    (id, api_key_id, event_id, audience, channels, data, idempotency_key, request_fingerprint,
     accept_response, status, fanout_cursors, fanout_bounds, recipients_total, created_at)
VALUES (%s, %s, %s, %s::jsonb, %s::jsonb, %s::jsonb, %s, %s, %s::jsonb, 'pending',
        %s::bigint[], %s::bigint[], 0, now())
ON CONFLICT (api_key_id, idempotency_key) DO NOTHING
RETURNING id
"""


def _insert_broadcast(
    *,
    broadcast_id: uuid.UUID,
    api_key: APIKey,
    catalog: EventCatalog,
    audience: dict[str, Any],
    channels: list[str],
    data: dict[str, Any],
    idempotency_key: str | None,
    fingerprint: str,
    body: dict[str, Any],
) -> bool:
    """Insert unless the idempotency key is taken (the unique index decides, not a read)."""
    cursors, bounds = fanout_segments(audience=audience)
    with connection.cursor() as cursor:
        cursor.execute(
            _INSERT_SQL,
            [
                broadcast_id,
                api_key.pk,
                catalog.event.pk,
                json.dumps(audience),
                # Resolved now, so every page of the fan-out uses the same channels even if
                # the event's defaults are edited meanwhile.
                json.dumps(channels),
                json.dumps(data),
                idempotency_key,
                fingerprint,
                json.dumps(body),
                cursors,
                bounds,
            ],
        )
        return cursor.fetchone() is not None


def broadcast_cancel(*, broadcast_id: uuid.UUID) -> bool:
    """Stop a broadcast: the fan-out stops at its next page, and every delivery still queued
    is skipped with reason ``cancelled``. Deliveries already sending finish.

    The first page of NOTIFY_BROADCAST_CANCEL_CHUNK deliveries is skipped here; a larger
    broadcast's rest is skipped by a maintenance task, a page per transaction, so the
    request and its row locks stay short whatever the size. Until then, a queued delivery its
    batch reaches first is skipped at send time (the engine's claim reads the broadcast's
    status): nothing of a cancelled broadcast is sent either way.

    False if there is no such broadcast; cancelling twice changes nothing the second time.
    """
    with transaction.atomic():
        # Taking the broadcast row first serialises with a fan-out page in flight: either the
        # page commits first and its deliveries are skipped below, or it sees `cancelled`.
        moved = (
            Broadcast.objects.filter(pk=broadcast_id)
            .exclude(status=Broadcast.Status.CANCELLED)
            .update(
                status=Broadcast.Status.CANCELLED,
                cancelled_at=timezone.now(),
                progress_counted_at=None,  # the next poll counts the skipped ones
            )
        )
        if moved:
            _, cursor = skip_cancelled_page(broadcast_id=broadcast_id, after_recipient=0)
            if cursor is None:
                skip_cancelled_page(broadcast_id=broadcast_id, after_recipient=None)
            else:
                transaction.on_commit(lambda: enqueue_skip_cancelled(broadcast_id, cursor))
    return bool(moved) or Broadcast.objects.filter(pk=broadcast_id).exists()


def skip_cancelled_page(
    *, broadcast_id: uuid.UUID, after_recipient: int | None
) -> tuple[int, int | None]:
    """Skip the still-queued deliveries of the next page of a cancelled broadcast's
    notifications (``transitions.transition_broadcast_page``); (how many, the next cursor)."""
    per_notification = max(1, len(_broadcast_channels(broadcast_id)))
    return transitions.transition_broadcast_page(
        broadcast_id,
        after_recipient=after_recipient,
        page=max(1, settings.NOTIFY_BROADCAST_CANCEL_CHUNK // per_notification),
        to=DeliveryStatus.SKIPPED,
        allowed_from=(DeliveryStatus.QUEUED,),
        note={"reason": "cancelled"},
        reason="cancelled",
    )


def _broadcast_channels(broadcast_id: uuid.UUID) -> list[str]:
    channels = Broadcast.objects.filter(pk=broadcast_id).values_list("channels", flat=True)
    return list(channels.first() or [])


def skip_cancelled_rest(
    *, broadcast_id: uuid.UUID, after_recipient: int, time_budget: float
) -> tuple[int, int | None]:
    """Skip a cancelled broadcast's queued deliveries a page per transaction from the cursor
    on, until the last page or the time budget; (how many moved, the cursor to go on from,
    None when done). The erased recipients' notifications go last, in one statement."""
    deadline = time.monotonic() + time_budget
    total = 0
    cursor: int | None = after_recipient
    while cursor is not None:
        with transaction.atomic():
            moved, cursor = skip_cancelled_page(broadcast_id=broadcast_id, after_recipient=cursor)
        total += moved
        if cursor is not None and time.monotonic() >= deadline:
            return total, cursor
    with transaction.atomic():
        moved, _ = skip_cancelled_page(broadcast_id=broadcast_id, after_recipient=None)
    return total + moved, None


def enqueue_skip_cancelled(broadcast_id: uuid.UUID, after_recipient: int) -> None:
    from notifications.tasks import skip_cancelled_deliveries

    skip_cancelled_deliveries.delay(str(broadcast_id), after_recipient)


# --- reads ---------------------------------------------------------------------------------


def broadcast_get(*, broadcast_id: uuid.UUID) -> Broadcast | None:
    return Broadcast.objects.select_related("event").filter(pk=broadcast_id).first()


_COUNTS_SQL = """
SELECT d.channel, d.status, CASE WHEN d.status = 'skipped' THEN d.reason ELSE '' END, count(*)
FROM notifications_notification n
JOIN notifications_delivery d ON d.notification_id = n.id
WHERE n.broadcast_id = %s
GROUP BY 1, 2, 3
"""
_STATUSES = [status.value for status in DeliveryStatus]


def broadcast_progress(*, broadcast: Broadcast) -> tuple[dict[str, Any], datetime]:
    """The broadcast's delivery counts and when they were counted.

    A count reads every delivery of the broadcast (seconds at millions), so polls share the
    last one while it is younger than NOTIFY_BROADCAST_PROGRESS_MIN_AGE_SECONDS or
    NOTIFY_BROADCAST_PROGRESS_RECOUNT_FACTOR (20) times what it took to count: however many
    clients poll, counting costs at most about 5 % of a database core. One poll counts at a
    time (an advisory lock); the others get the last count meanwhile.
    """
    now = timezone.now()
    if broadcast.progress is not None and broadcast.progress_counted_at is not None:
        age = (now - broadcast.progress_counted_at).total_seconds()
        fresh_for = max(
            settings.NOTIFY_BROADCAST_PROGRESS_MIN_AGE_SECONDS,
            settings.NOTIFY_BROADCAST_PROGRESS_RECOUNT_FACTOR * broadcast.progress_count_seconds,
        )
        if age < fresh_for:
            return broadcast.progress, broadcast.progress_counted_at
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_try_advisory_xact_lock(%s, hashtext(%s))", [_LOCK_SPACE, str(broadcast.pk)]
        )
        (counting,) = cursor.fetchone() or (False,)
        if not counting and broadcast.progress is not None and broadcast.progress_counted_at:
            return broadcast.progress, broadcast.progress_counted_at
        started = time.monotonic()
        counts = broadcast_delivery_counts(broadcast_id=broadcast.pk)
        took = time.monotonic() - started
        Broadcast.objects.filter(pk=broadcast.pk).update(
            progress=counts, progress_counted_at=now, progress_count_seconds=took
        )
    return counts, now


_LOCK_SPACE = 7_100  # advisory lock namespace of broadcast progress counts


def broadcast_delivery_counts(*, broadcast_id: uuid.UUID) -> dict[str, Any]:
    """Deliveries by status (skipped ones also by reason), overall and per channel.

    One GROUP BY, whatever the size of the broadcast; the notifications are found through
    the partial unique index that starts with broadcast_id.
    """
    with connection.cursor() as cursor:
        cursor.execute(_COUNTS_SQL, [broadcast_id])
        rows = cursor.fetchall()
    overall = _empty_counts()
    by_channel: dict[str, dict[str, Any]] = defaultdict(_empty_counts)
    for channel, status, reason, count in rows:
        for counts in (overall, by_channel[channel]):
            counts["total"] += count
            counts[status] += count
            if status == DeliveryStatus.SKIPPED:
                counts["skippedByReason"][reason] = counts["skippedByReason"].get(reason, 0) + count
    return {**overall, "byChannel": dict(sorted(by_channel.items()))}


def _empty_counts() -> dict[str, Any]:
    return {"total": 0, **dict.fromkeys(_STATUSES, 0), "skippedByReason": {}}
