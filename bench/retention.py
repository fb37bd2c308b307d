"""The retention purge measured, for bench/sizing.py: EXPLAIN ANALYZE of one batch, then timed
runs of ``notifications.services.retention.purge_expired_notifications`` (rows/s, the longest
batch transaction, WAL written, how busy the shared machine was)."""

from __future__ import annotations

import datetime as dt
import os
import re
import statistics
from typing import Any

from bench.log_rows import sql

RETENTION_DAYS = 30


def explain_batch(batch: int) -> dict[str, str]:
    """EXPLAIN ANALYZE of one purge batch's statements, rolled back."""
    from django.db import connection, transaction

    from notifications.services import retention as service

    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=RETENTION_DAYS)
    plans: dict[str, str] = {}

    def explain(name: str, statement: str, params: list[Any]) -> None:
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, params)
            text = "\n".join(row[0] for row in cursor.fetchall())
        # The plans name every id of the batch; keep how many, not which.
        plans[name] = re.sub(
            r"'\{([^}]*)\}'::(\w+)\[\]",
            lambda m: f"'{{<{m[1].count(',') + 1} ids>}}'::{m[2]}[]",
            text,
        )

    class Rollback(Exception):
        pass

    try:
        with transaction.atomic():
            # Django's foreign keys are DEFERRABLE INITIALLY DEFERRED: their checks run at
            # COMMIT, invisible to EXPLAIN. Immediate, each plan shows its trigger time.
            sql("SET CONSTRAINTS ALL IMMEDIATE")
            explain("candidates", service.CANDIDATES_SQL, [cutoff, ["queued", "sending"], batch])
            ids = [
                r[0] for r in sql(service.CANDIDATES_SQL, [cutoff, ["queued", "sending"], batch])
            ]
            explain(
                "lock_deliveries",
                "SELECT id, notification_id, status FROM notifications_delivery"
                " WHERE notification_id = ANY(%s) FOR UPDATE SKIP LOCKED",
                [ids],
            )
            delivery_ids = [
                r[0]
                for r in sql(
                    "SELECT id FROM notifications_delivery WHERE notification_id = ANY(%s)", [ids]
                )
            ]
            explain(
                "lock_failed_deliveries",
                "SELECT id, delivery_id FROM notifications_faileddelivery"
                " WHERE delivery_id = ANY(%s) FOR UPDATE SKIP LOCKED",
                [delivery_ids],
            )
            letter_ids = [
                r[0]
                for r in sql(
                    "SELECT id FROM notifications_faileddelivery WHERE delivery_id = ANY(%s)",
                    [delivery_ids],
                )
            ]
            explain(
                "delete_failed_deliveries",
                "DELETE FROM notifications_faileddelivery WHERE id = ANY(%s)",
                [letter_ids],
            )
            explain(
                "detach_inbox",
                "UPDATE notifications_inboxmessage SET delivery_id = NULL"
                " WHERE delivery_id = ANY(%s)",
                [delivery_ids],
            )
            explain(
                "delete_deliveries",
                "DELETE FROM notifications_delivery WHERE id = ANY(%s)",
                [delivery_ids],
            )
            explain(
                "delete_notifications",
                "DELETE FROM notifications_notification WHERE id = ANY(%s)",
                [ids],
            )
            raise Rollback
    except Rollback:
        pass
    return plans


def wal_lsn() -> str:
    return str(sql("SELECT pg_current_wal_lsn()")[0][0])


def wal_bytes(since: str) -> int:
    return int(sql("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", [since])[0][0])


def timed_purge(days: int, batch: int) -> dict[str, Any]:
    from notifications.services import retention as service

    lsn = wal_lsn()
    cpu = machine_cpu()
    result = service.purge_expired_notifications(
        older_than=dt.timedelta(days=days), batch=batch, time_budget=3600
    )
    busy = machine_busy_pct(cpu, machine_cpu())
    written = wal_bytes(lsn)
    rows = result.notifications + result.deliveries + result.failed_deliveries
    seconds = max(result.seconds, 1e-9)
    return {
        "older_than_days": days,
        "batch": batch,
        **result.as_json(),
        "notifications_per_second": round(result.notifications / seconds),
        "deliveries_per_second": round(result.deliveries / seconds),
        "rows_per_second": round(rows / seconds),
        "mean_batch_ms": round(1000 * result.seconds / max(result.batches, 1), 1),
        "longest_batch_ms": round(1000 * result.longest_batch_seconds, 1),
        "wal_bytes": written,
        "wal_bytes_per_notification": round(written / max(result.notifications, 1)),
        # The machine is shared (other test suites may run): how busy it was, all processes.
        "machine_busy_pct": busy,
        "loadavg_1min_after": round(os.getloadavg()[0], 2),
    }


def machine_cpu() -> list[int]:
    with open("/proc/stat") as fh:
        return [int(x) for x in fh.readline().split()[1:]]


def machine_busy_pct(before: list[int], after: list[int]) -> float:
    delta = [b - a for a, b in zip(before, after, strict=True)]
    idle = delta[3] + delta[4]  # idle + iowait
    return round(100 * (1 - idle / max(sum(delta), 1)), 1)


def batch_comparison(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per batch size, the median over its rounds (the rounds alternate sizes, so drift in
    the machine's load hurts every size alike)."""
    by_size: dict[int, list[dict[str, Any]]] = {}
    for run in runs:
        by_size.setdefault(run["batch"], []).append(run)
    return {
        str(size): {
            "rounds": len(group),
            "notifications_per_second": statistics.median(
                r["notifications_per_second"] for r in group
            ),
            "longest_batch_ms": max(r["longest_batch_ms"] for r in group),
            "mean_batch_ms": statistics.median(r["mean_batch_ms"] for r in group),
        }
        for size, group in sorted(by_size.items())
    }
