"""Retention of the notification log: delete what is older than the retention period.

Rows go in small batches, one short transaction each, oldest first, until nothing expired is
left or the run's time budget is spent, so no lock is held for long and a run ends by itself.
A batch takes notifications with ``created_at`` older than the cutoff and none of their
deliveries still pending (queued or sending), and deletes, in one transaction: their dead
letters (FailedDelivery), their deliveries and the notifications; inbox messages are kept
(they belong to the recipient's inbox) and only lose their link to the delivery, as
``InboxMessage.delivery`` (SET_NULL) says. Why batched DELETE rather than partitions, and what
it costs: docs/sizing.md.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.utils import timezone

from notifications.models import PENDING_STATUSES

logger = logging.getLogger(__name__)

# Every table that points at a notification or a delivery, and what a purge does to it; a
# test fails when a new foreign key appears that this module does not handle.
HANDLED_RELATIONS = {
    ("notifications.Delivery", "notification"): "deleted",
    ("notifications.FailedDelivery", "delivery"): "deleted",
    ("notifications.InboxMessage", "delivery"): "detached (delivery set to NULL)",
}

_PENDING = [str(status) for status in PENDING_STATUSES]

# Oldest first through the notification_recent index (created_at DESC, id DESC, read
# backwards). SKIP LOCKED: two purges running at once share the work instead of queueing.
CANDIDATES_SQL = """
SELECT n.id FROM notifications_notification n
WHERE n.created_at < %s
  AND NOT EXISTS (
    SELECT 1 FROM notifications_delivery d
    WHERE d.notification_id = n.id AND d.status = ANY(%s)
  )
ORDER BY n.created_at, n.id
LIMIT %s
FOR UPDATE OF n SKIP LOCKED
"""

# A lock that is not skipped (an inbox row being marked read) is waited for this long at most;
# then the batch is rolled back and the run ends, to be tried again by the next one.
_LOCK_TIMEOUT = "2s"


@dataclass(frozen=True)
class PurgeResult:
    notifications: int = 0
    deliveries: int = 0
    failed_deliveries: int = 0
    inbox_detached: int = 0
    batches: int = 0
    seconds: float = 0.0
    # The longest single batch transaction: how long the purge held its row locks at most.
    longest_batch_seconds: float = 0.0
    # True when the last batch found fewer expired rows than it could take: nothing is left
    # but notifications that are pending or busy right now. False: budget spent, more remain.
    finished: bool = False
    # Why the run ended early, if it did: "lock_timeout".
    stopped_by: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "notifications": self.notifications,
            "deliveries": self.deliveries,
            "failedDeliveries": self.failed_deliveries,
            "inboxDetached": self.inbox_detached,
            "batches": self.batches,
            "seconds": round(self.seconds, 3),
            "longestBatchSeconds": round(self.longest_batch_seconds, 4),
            "finished": self.finished,
            "stoppedBy": self.stopped_by,
        }


@dataclass(frozen=True)
class _Batch:
    candidates: int
    notifications: int
    deliveries: int
    failed_deliveries: int
    inbox_detached: int


def retention_period() -> timedelta | None:
    """The configured retention (NOTIFY_RETENTION_DAYS); None when the log is kept forever."""
    days = int(settings.NOTIFY_RETENTION_DAYS)
    return timedelta(days=days) if days > 0 else None


def purge_expired_notifications(
    *,
    older_than: timedelta,
    batch: int | None = None,
    time_budget: float | None = None,
) -> PurgeResult:
    """Delete notifications older than ``older_than`` in batches of ``batch`` notifications.

    Runs batches until nothing expired is left or ``time_budget`` seconds have passed (checked
    after each batch, so a budget of 0 runs exactly one). Call it outside a transaction: each
    batch commits on its own; inside one, every lock would be held until the caller commits.
    """
    if older_than <= timedelta(0):
        raise ValueError("older_than must be positive; 0 days means keep forever")
    size = int(batch if batch is not None else settings.NOTIFY_RETENTION_BATCH)
    if size < 1:
        raise ValueError("batch must be at least 1")
    budget = float(
        time_budget if time_budget is not None else settings.NOTIFY_RETENTION_TIME_BUDGET_SECONDS
    )
    cutoff = timezone.now() - older_than
    started = time.monotonic()
    totals: Counter[str] = Counter()
    batches = 0
    longest = 0.0
    finished = False
    stopped_by = ""
    while True:
        batch_started = time.monotonic()
        try:
            with transaction.atomic():
                done = _purge_batch(cutoff=cutoff, size=size)
        except OperationalError as exc:
            if getattr(exc.__cause__, "pgcode", None) != "55P03":  # lock_not_available
                raise
            logger.warning("retention purge stopped: a row stayed locked for %s", _LOCK_TIMEOUT)
            stopped_by = "lock_timeout"
            break
        longest = max(longest, time.monotonic() - batch_started)
        batches += 1
        totals.update(
            notifications=done.notifications,
            deliveries=done.deliveries,
            failed_deliveries=done.failed_deliveries,
            inbox_detached=done.inbox_detached,
        )
        if done.candidates < size:
            finished = True
            break
        # A full batch of which nothing could go (all busy right now): the next batch would
        # pick the same rows again, so leave them to the next run.
        if done.notifications == 0 or time.monotonic() - started >= budget:
            break
    result = PurgeResult(
        notifications=totals["notifications"],
        deliveries=totals["deliveries"],
        failed_deliveries=totals["failed_deliveries"],
        inbox_detached=totals["inbox_detached"],
        batches=batches,
        seconds=time.monotonic() - started,
        longest_batch_seconds=longest,
        finished=finished,
        stopped_by=stopped_by,
    )
    if result.notifications:
        logger.info("retention purge: %s", result.as_json())
    return result


def _purge_batch(*, cutoff: datetime, size: int) -> _Batch:
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL lock_timeout = %s", [_LOCK_TIMEOUT])
        cursor.execute(CANDIDATES_SQL, [cutoff, _PENDING, size])
        candidates = [row[0] for row in cursor.fetchall()]
        if not candidates:
            return _Batch(0, 0, 0, 0, 0)
        # Their deliveries and dead letters are locked without waiting too: a row that a
        # worker, a receipt or a replay holds right now leaves its notification for a later
        # run, so the purge never waits on the delivery path nor deadlocks with a replay (which
        # locks a dead letter, then its delivery). The status is re-read under the lock: a
        # delivery replayed (failed -> queued) since the candidate query is pending and stays.
        deliveries, busy = _lock_children(
            cursor, "notifications_delivery", "notification_id", candidates, extra="status"
        )
        busy.update(notification for _, notification, status in deliveries if status in _PENDING)
        owner = {delivery: notification for delivery, notification, _ in deliveries}
        letters, busy_deliveries = _lock_children(
            cursor,
            "notifications_faileddelivery",
            "delivery_id",
            [delivery for delivery, notification in owner.items() if notification not in busy],
        )
        busy.update(owner[delivery] for delivery in busy_deliveries)
        delivery_ids = [delivery for delivery, n in owner.items() if n not in busy]
        letter_ids = [letter for letter, delivery in letters if owner[delivery] not in busy]
        failed = _execute(
            cursor, "DELETE FROM notifications_faileddelivery WHERE id = ANY(%s)", letter_ids
        )
        detached = _execute(
            cursor,
            "UPDATE notifications_inboxmessage SET delivery_id = NULL WHERE delivery_id = ANY(%s)",
            delivery_ids,
        )
        removed_deliveries = _execute(
            cursor, "DELETE FROM notifications_delivery WHERE id = ANY(%s)", delivery_ids
        )
        removed = _execute(
            cursor,
            "DELETE FROM notifications_notification WHERE id = ANY(%s)",
            [n for n in candidates if n not in busy],
        )
    return _Batch(len(candidates), removed, removed_deliveries, failed, detached)


def _lock_children(
    cursor: Any, table: str, parent: str, parents: Sequence[Any], extra: str = ""
) -> tuple[list[tuple[Any, ...]], set[Any]]:
    """Lock, without waiting, the rows of ``table`` whose ``parent`` column is in ``parents``.

    Returns the rows locked, as (id, parent[, extra]), and the parents of which some row was
    not locked because another transaction holds it.
    """
    if not parents:
        return [], set()
    columns = ", ".join(filter(None, ["id", parent, extra]))
    # Table and column names are this module's constants; the ids are a parameter.
    cursor.execute(
        f"SELECT {columns} FROM {table} WHERE {parent} = ANY(%s) FOR UPDATE SKIP LOCKED",  # noqa: S608
        [list(parents)],
    )
    rows = [tuple(row) for row in cursor.fetchall()]
    cursor.execute(
        f"SELECT {parent}, count(*) FROM {table} WHERE {parent} = ANY(%s) GROUP BY {parent}",  # noqa: S608
        [list(parents)],
    )
    locked = Counter(row[1] for row in rows)
    return rows, {key for key, total in cursor.fetchall() if locked[key] < total}


def _execute(cursor: Any, sql: str, ids: Sequence[Any]) -> int:
    if not ids:
        return 0
    cursor.execute(sql, [list(ids)])
    return int(cursor.rowcount)


def count_expired_notifications(*, older_than: timedelta) -> tuple[int, int]:
    """(would be purged, kept because a delivery is still pending) for a dry run."""
    cutoff = timezone.now() - older_than
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT count(*) FILTER (WHERE NOT pending), count(*) FILTER (WHERE pending)
            FROM (
              SELECT EXISTS (
                SELECT 1 FROM notifications_delivery d
                WHERE d.notification_id = n.id AND d.status = ANY(%s)
              ) AS pending
              FROM notifications_notification n WHERE n.created_at < %s
            ) expired
            """,
            [_PENDING, cutoff],
        )
        expired, pending = cursor.fetchone()
    return int(expired), int(pending)
