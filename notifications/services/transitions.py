"""Every Delivery status change goes through here, as one conditional UPDATE.

Each transition is guarded by the statuses it may start from, stamps its ``<status>_at``
column and appends an entry to ``history``, so concurrent workers, redelivered messages and
the sweep can never move a delivery backwards or send it twice.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.conf import settings
from django.db import connection
from psycopg2.extras import execute_values

from notifications.models import DeliveryStatus

_TIMESTAMP_COLUMN = {
    DeliveryStatus.QUEUED: "queued_at",
    DeliveryStatus.SENDING: "sending_at",
    DeliveryStatus.SENT: "sent_at",
    DeliveryStatus.DELIVERED: "delivered_at",
    DeliveryStatus.FAILED: "failed_at",
    DeliveryStatus.SKIPPED: "skipped_at",
}
# Columns a transition may set besides status; whitelisted because names go into SQL.
_SETTABLE = {"reason", "provider", "provider_message_id", "last_error", "content"}


def transition(
    delivery_ids: list[int],
    *,
    to: DeliveryStatus,
    allowed_from: tuple[DeliveryStatus, ...],
    note: dict[str, Any] | None = None,
    lease_seconds: float | None = None,
    count_attempt: bool = False,
    uncount_attempt: bool = False,
    merge_results: dict[str, Any] | None = None,
    **fields: Any,
) -> list[tuple[int, str, int]]:
    """Move the given deliveries to ``to`` if they are in ``allowed_from``.

    Returns (id, channel, attempts) of each row that moved; rows in any other status are left
    alone. ``lease_seconds`` sets ``lease_until`` (None clears it), ``count_attempt`` bumps
    ``attempts`` (``uncount_attempt`` takes back the one a claim counted); ``note`` is
    merged into the history entry; ``merge_results`` is merged into ``results``
    (per-destination outcomes).
    """
    if not delivery_ids:
        return []
    assignments, params = _set_clause(
        to,
        note=note,
        lease_seconds=lease_seconds,
        count_attempt=count_attempt,
        uncount_attempt=uncount_attempt,
        merge_results=merge_results,
        fields=fields,
    )
    # Column names come from _TIMESTAMP_COLUMN and _SETTABLE only; values are parameters.
    sql = (
        f"UPDATE notifications_delivery SET {assignments} "  # noqa: S608
        "WHERE id = ANY(%s) AND status = ANY(%s) RETURNING id, channel, attempts"
    )
    params += [list(delivery_ids), [status.value for status in allowed_from]]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [(row[0], row[1], row[2]) for row in cursor.fetchall()]


def mark_sent_many(rows: list[tuple[int, str, str, dict[str, Any]]]) -> list[int]:
    """sending (or queued) → sent for many deliveries in one UPDATE, each with its own
    provider, provider message id and per-destination results; returns the ids that moved.

    The same change ``transition(to=SENT)`` makes one row at a time (a batch records its
    sent outcomes together). ``rows``: (delivery id, provider, message id, results).
    """
    if not rows:
        return []
    # A sweep may have requeued a delivery while its provider was slow: a late success wins.
    sql = """
        UPDATE notifications_delivery AS d SET
            status = 'sent',
            sent_at = now(),
            lease_until = NULL,
            history = d.history || jsonb_build_array(jsonb_build_object(
                'status', 'sent', 'at', now(), 'attempt', d.attempts,
                'provider', v.provider, 'messageId', v.message_id)),
            results = d.results || v.results,
            provider = v.provider,
            provider_message_id = v.message_id,
            last_error = ''
        FROM (VALUES %s) AS v(id, provider, message_id, results)
        WHERE d.id = v.id AND d.status IN ('sending', 'queued')
        RETURNING d.id
    """
    values = [
        (pk, provider, message_id, json.dumps(results))
        for pk, provider, message_id, results in rows
    ]
    with connection.cursor() as cursor:
        moved = execute_values(
            cursor, sql, values, template="(%s::bigint, %s, %s, %s::jsonb)", fetch=True
        )
    return sorted(row[0] for row in moved)


def transition_broadcast_page(
    broadcast_id: uuid.UUID,
    *,
    after_recipient: int | None,
    page: int,
    to: DeliveryStatus,
    allowed_from: tuple[DeliveryStatus, ...],
    note: dict[str, Any] | None = None,
    **fields: Any,
) -> tuple[int, int | None]:
    """Move the deliveries in ``allowed_from`` of the next ``page`` notifications of a
    broadcast to ``to``, in one statement; returns (how many moved, the cursor of the next
    page, None after the last).

    A broadcast may hold millions of rows, so they are taken a page at a time in recipient
    order after ``after_recipient`` (the notifications' unique index on (broadcast_id,
    recipient_id)): each page costs the same, where a LIMIT over "still queued" rows would
    walk past every row moved before it. ``after_recipient=None`` takes the notifications of
    erased recipients (recipient_id NULL, out of that order), all at once: there are few.
    Rows another transaction holds are left alone (SKIP LOCKED).
    """
    assignments, params = _set_clause(
        to, note=note, lease_seconds=None, count_attempt=False, merge_results=None, fields=fields
    )
    statuses = [status.value for status in allowed_from]
    if after_recipient is None:
        which, page_params = "recipient_id IS NULL", []
    else:
        which = "recipient_id > %s ORDER BY recipient_id LIMIT %s"
        page_params = [after_recipient, page]
    sql = (
        "WITH page AS MATERIALIZED (SELECT id, recipient_id FROM notifications_notification"  # noqa: S608
        f" WHERE broadcast_id = %s AND {which}),"
        " picked AS MATERIALIZED (SELECT d.id FROM notifications_delivery d"
        " WHERE d.notification_id IN (SELECT id FROM page) AND d.status = ANY(%s)"
        " FOR UPDATE OF d SKIP LOCKED),"
        f" moved AS (UPDATE notifications_delivery SET {assignments}"
        " WHERE id IN (SELECT id FROM picked) AND status = ANY(%s) RETURNING 1)"
        " SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM page),"
        " (SELECT max(recipient_id) FROM page)"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [broadcast_id, *page_params, statuses, *params, statuses])
        moved, taken, last = cursor.fetchone() or (0, 0, None)
    more = after_recipient is not None and taken >= page
    return int(moved), int(last) if more and last is not None else None


def _set_clause(
    to: DeliveryStatus,
    *,
    note: dict[str, Any] | None,
    lease_seconds: float | None,
    count_attempt: bool,
    merge_results: dict[str, Any] | None,
    fields: dict[str, Any],
    uncount_attempt: bool = False,
) -> tuple[str, list[Any]]:
    """The SET list of a transition and its parameters (shared by every kind of WHERE)."""
    unknown = set(fields) - _SETTABLE
    if unknown:
        raise ValueError(f"cannot set {sorted(unknown)} in a transition")
    attempts_expr = "attempts + 1" if count_attempt else "attempts"
    if uncount_attempt:
        attempts_expr = "GREATEST(attempts - 1, 0)"
    assignments = [
        "status = %s",
        f"{_TIMESTAMP_COLUMN[to]} = now()",
        f"attempts = {attempts_expr}",
        "lease_until = " + ("now() + make_interval(secs => %s)" if lease_seconds else "NULL"),
        "history = history || jsonb_build_array("
        f"jsonb_build_object('status', %s, 'at', now(), 'attempt', {attempts_expr}) || %s::jsonb)",
    ]
    params: list[Any] = [to.value]
    if lease_seconds:
        params.append(lease_seconds)
    params += [to.value, json.dumps(note or {})]
    if merge_results:
        assignments.append("results = results || %s::jsonb")
        params.append(json.dumps(merge_results))
    for column, value in fields.items():
        assignments.append(f"{column} = %s" + ("::jsonb" if column == "content" else ""))
        params.append(json.dumps(value) if column == "content" else value)
    return ", ".join(assignments), params


def claim(delivery_id: int) -> bool:
    """queued → sending, counting the attempt; False if another worker has it or it is done."""
    return bool(claim_many([delivery_id]))


def claim_many(delivery_ids: list[int], *, lease_seconds: float | None = None) -> list[int]:
    """queued → sending for each delivery still queued, in one UPDATE … RETURNING; returns
    the ids claimed (rows already sending, sent or skipped are left to whoever has them)."""
    moved = transition(
        delivery_ids,
        to=DeliveryStatus.SENDING,
        allowed_from=(DeliveryStatus.QUEUED,),
        lease_seconds=lease_seconds or settings.NOTIFY_LEASE_SECONDS,
        count_attempt=True,
    )
    return sorted(delivery_id for delivery_id, _, _ in moved)


def release(
    delivery_ids: list[int],
    *,
    lease_seconds: float,
    note: dict[str, Any],
    merge_results: dict[str, Any] | None = None,
) -> list[tuple[int, str, int]]:
    """sending → queued, taking back the attempt the claim counted: the provider was not
    called (its circuit is open or its rate limit full), so the retry budget is untouched.

    The lease covers the wait, so the sweep re-enqueues the delivery if the deferred message
    is lost, but not before it is due.
    """
    return transition(
        delivery_ids,
        to=DeliveryStatus.QUEUED,
        allowed_from=(DeliveryStatus.SENDING,),
        lease_seconds=lease_seconds,
        uncount_attempt=True,
        note=note,
        merge_results=merge_results,
    )


def requeue_expired(limit: int) -> list[tuple[int, str]]:
    """Queued/sending deliveries whose lease ran out go back to queued with a fresh lease.

    SKIP LOCKED lets several sweeps run at once without waiting on each other.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT id FROM notifications_delivery
            WHERE status IN ('queued', 'sending') AND lease_until < now()
            ORDER BY lease_until
            LIMIT %s
            FOR UPDATE SKIP LOCKED
            """,
            [limit],
        )
        ids = [row[0] for row in cursor.fetchall()]
    moved = transition(
        ids,
        to=DeliveryStatus.QUEUED,
        allowed_from=(DeliveryStatus.QUEUED, DeliveryStatus.SENDING),
        lease_seconds=settings.NOTIFY_LEASE_SECONDS,
        note={"reason": "lease_expired"},
    )
    return [(delivery_id, channel) for delivery_id, channel, _ in moved]


def note(delivery_id: int, entry: dict[str, Any]) -> bool:
    """Append to a delivery's history without changing its status (opens, clicks...)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE notifications_delivery SET history = history"
            " || jsonb_build_array(jsonb_build_object('at', now()) || %s::jsonb)"
            " WHERE id = %s",
            [json.dumps(entry), delivery_id],
        )
        return bool(cursor.rowcount)
