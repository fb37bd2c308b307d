"""The broadcast benchmark's database side: seeding the audience, and what the run wrote.

Seeding bypasses the API on purpose (100,000 ``PUT /api/recipients`` would take minutes and
measure something else): recipients are COPYed, their devices and topic subscriptions are
written by one ``INSERT … SELECT`` each, server-side. The reads after the run turn the rows
the pipeline wrote into the fan-out series and the drain figures.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import psycopg2

HOST = "127.0.0.1"
TOPIC = "bench-broadcast"
TX_USER = "bench-tx"  # the transactional traffic's recipient: not in the topic
USER_PREFIX = "bb-"
COPY_CHUNK = 100_000  # rows per COPY: bounded memory whatever --recipients is


# The PostgreSQL backends serving the benchmark's own queries (progress polls, the report):
# their CPU is the benchmark's, not the service's.
BENCH_BACKENDS: set[int] = set()


def connect(db_name: str) -> Any:
    conn = psycopg2.connect(host=HOST, port=5432, user="postgres", dbname=db_name)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        BENCH_BACKENDS.add(int(cur.fetchone()[0]))
    return conn


def recreate_database(db_name: str) -> None:
    """Drop (with whatever connections a previous run left) and create it empty."""
    conn = connect("postgres")
    try:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
            cur.execute(f'CREATE DATABASE "{db_name}"')
    finally:
        conn.close()


def drop_database(db_name: str) -> None:
    conn = connect("postgres")
    try:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
    finally:
        conn.close()


def _recipient_rows(start: int, stop: int, stamp: str) -> Iterator[str]:
    for i in range(start, stop):
        # 415-2xx-xxxx: a plain US mobile-looking number, none of the Twilio fake's magic ones
        # (+1555010xxxx). Locale "" uses the default templates.
        yield (
            f"{USER_PREFIX}{i:07d}\tbb{i}@bench.example.com\t+1415{2_000_000 + i:07d}"
            f"\t\t\t{stamp}\t{stamp}\n"
        )


def seed(db_name: str, recipients: int) -> dict[str, Any]:
    """N recipients with an email, a phone and one device each (even ids APNs, odd ids FCM),
    all subscribed to TOPIC, plus the transactional recipient; returns counts and timings."""
    conn = connect(db_name)
    timings: dict[str, float] = {}
    try:
        with conn.cursor() as cur:
            started = time.perf_counter()
            cur.execute("SELECT now()::text")
            stamp = cur.fetchone()[0]
            columns = "(external_id, email, phone, locale, timezone, created_at, updated_at)"
            for start in range(0, recipients, COPY_CHUNK):
                stop = min(recipients, start + COPY_CHUNK)
                buffer = io.StringIO("".join(_recipient_rows(start, stop, stamp)))
                cur.copy_expert(f"COPY preferences_recipient {columns} FROM STDIN", buffer)
            cur.execute(
                f"INSERT INTO preferences_recipient {columns}"
                " VALUES (%s, 'tx@bench.example.com', '+14155550000', '', '', now(), now())",
                [TX_USER],
            )
            timings["recipients_s"] = time.perf_counter() - started

            started = time.perf_counter()
            # Tokens the fakes answer 200 to: APNs 64 hex digits after the APNs fake's "good"
            # prefix 600d (a random start could be one of its magic prefixes, dead… say), FCM
            # a long opaque string that starts with none of the FCM fake's (unregistered…).
            cur.execute(
                """
                INSERT INTO preferences_device
                    (recipient_id, platform, token, active, deactivated_at, deactivation_reason,
                     created_at, updated_at)
                SELECT id,
                       CASE WHEN id %% 2 = 0 THEN 'apns' ELSE 'fcm' END,
                       CASE WHEN id %% 2 = 0
                            THEN '600d' || left(md5(id::text) || md5('apns' || id::text), 60)
                            ELSE 'c' || md5(id::text) || ':APA91b' || md5('fcm' || id::text)
                       END,
                       true, NULL, '', now(), now()
                FROM preferences_recipient WHERE external_id LIKE %s
                """,
                [USER_PREFIX + "%"],
            )
            timings["devices_s"] = time.perf_counter() - started

            started = time.perf_counter()
            cur.execute(
                "INSERT INTO preferences_topic (key, name, created_at)"
                " VALUES (%s, 'Broadcast benchmark', now()) RETURNING id",
                [TOPIC],
            )
            topic_id = cur.fetchone()[0]
            cur.execute(
                "INSERT INTO preferences_topicsubscription (topic_id, recipient_id, created_at)"
                " SELECT %s, id, now() FROM preferences_recipient WHERE external_id LIKE %s",
                [topic_id, USER_PREFIX + "%"],
            )
            subscribed = cur.rowcount
            timings["subscriptions_s"] = time.perf_counter() - started

            started = time.perf_counter()
            cur.execute("VACUUM ANALYZE")  # fresh statistics, as a long-lived database has
            timings["analyze_s"] = time.perf_counter() - started
    finally:
        conn.close()
    total = sum(timings.values())
    return {
        "recipients": recipients,
        "subscribed": subscribed,
        "seconds": round(total, 2),
        "recipients_per_s": round(recipients / total) if total else 0,
        **{k: round(v, 2) for k, v in timings.items()},
    }


# --- during the run --------------------------------------------------------------------------


def progress(conn: Any, broadcast_id: str, *, count: bool) -> dict[str, Any]:
    """Cheap enough to poll every second: whether any delivery is still queued or sending
    (the first entry of the partial index on (lease_until) WHERE status IN (queued, sending)),
    and the broadcast's row. ``count``: also how many (a walk of that index, which costs
    PostgreSQL tens of milliseconds at 100,000 rows: for the progress line only)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT status, recipients_total FROM notifications_broadcast WHERE id = %s",
            [broadcast_id],
        )
        status, recipients_total = cur.fetchone()
        pending_sql = (
            "SELECT count(*) FROM notifications_delivery WHERE status IN ('queued', 'sending')"
            if count
            else "SELECT count(*) FROM (SELECT 1 FROM notifications_delivery"
            " WHERE status IN ('queued', 'sending') LIMIT 1) AS any_pending"
        )
        cur.execute(pending_sql)
        pending = cur.fetchone()[0]
    return {"status": status, "notifications": recipients_total, "pending": pending}


# --- after the run ---------------------------------------------------------------------------


def fanout_figures(conn: Any, broadcast_id: str) -> dict[str, Any]:
    """Rows the fan-out wrote, per second (PostgreSQL's clock; a page's rows share its
    transaction's now()), and its duration from accept to the last page."""
    with conn.cursor() as cur:
        cur.execute(
            """
            SELECT extract(epoch FROM created_at), extract(epoch FROM fanned_out_at),
                   recipients_total, status
            FROM notifications_broadcast WHERE id = %s
            """,
            [broadcast_id],
        )
        created, fanned_out, recipients_total, status = cur.fetchone()
        cur.execute(
            """
            SELECT floor(extract(epoch FROM n.created_at))::bigint, count(DISTINCT n.id),
                   count(d.id)
            FROM notifications_notification n
            JOIN notifications_delivery d ON d.notification_id = n.id
            WHERE n.broadcast_id = %s
            GROUP BY 1 ORDER BY 1
            """,
            [broadcast_id],
        )
        per_second = [(int(s), int(n), int(d)) for s, n, d in cur.fetchall()]
        cur.execute(
            "SELECT extract(epoch FROM min(created_at)), extract(epoch FROM max(created_at))"
            " FROM notifications_notification WHERE broadcast_id = %s",
            [broadcast_id],
        )
        first_page, last_page = cur.fetchone()
    notifications = sum(n for _, n, _ in per_second)
    deliveries = sum(d for _, _, d in per_second)
    duration = (float(fanned_out) - float(created)) if fanned_out else None
    return {
        "status": status,
        "recipients_total": recipients_total,
        "notifications": notifications,
        "deliveries": deliveries,
        "created_at": float(created),
        "first_page_at": float(first_page) if first_page else None,
        "last_page_at": float(last_page) if last_page else None,
        "fanned_out_at": float(fanned_out) if fanned_out else None,
        "duration_s": round(duration, 2) if duration else None,
        "notifications_per_s": round(notifications / duration) if duration else None,
        "deliveries_per_s": round(deliveries / duration) if duration else None,
        "rows_per_s": round((notifications + deliveries) / duration) if duration else None,
        "per_second": per_second,
    }


def delivery_figures(conn: Any, broadcast_id: str) -> dict[str, Any]:
    """Final statuses per channel and when the last delivery of the broadcast settled."""
    with conn.cursor() as cur:
        cur.execute(
            """
            SELECT d.channel, d.status, count(*),
                   extract(epoch FROM max(GREATEST(d.sent_at, d.failed_at, d.skipped_at)))
            FROM notifications_delivery d
            JOIN notifications_notification n ON n.id = d.notification_id
            WHERE n.broadcast_id = %s
            GROUP BY 1, 2 ORDER BY 1, 2
            """,
            [broadcast_id],
        )
        rows = cur.fetchall()
        cur.execute(
            """
            SELECT d.reason, count(*) FROM notifications_delivery d
            JOIN notifications_notification n ON n.id = d.notification_id
            WHERE n.broadcast_id = %s AND d.status IN ('failed', 'skipped')
            GROUP BY 1 ORDER BY 2 DESC LIMIT 10
            """,
            [broadcast_id],
        )
        reasons = dict(cur.fetchall())
        cur.execute("SELECT count(*) FROM notifications_faileddelivery")
        dead_letters = cur.fetchone()[0]
    by_channel: dict[str, dict[str, int]] = {}
    last = 0.0
    for channel, status, count, settled in rows:
        by_channel.setdefault(channel, {})[status] = int(count)
        if settled is not None and status not in ("queued", "sending"):
            last = max(last, float(settled))
    return {
        "by_channel": by_channel,
        "not_sent_reasons": reasons,
        "dead_letters": dead_letters,
        "last_settled_at": last or None,
    }


def table_activity(conn: Any) -> dict[str, Any]:
    """PostgreSQL's own counters for this database (fresh each run): rows written and updated
    (and how many updates were HOT), index scans, transactions. pg_stat_statements would say
    more, but needs a server restart."""
    with conn.cursor() as cur:
        cur.execute(
            """
            SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, idx_scan, seq_scan
            FROM pg_stat_user_tables
            WHERE relname IN ('notifications_notification', 'notifications_delivery',
                              'preferences_device', 'preferences_recipient')
            ORDER BY relname
            """
        )
        tables = {
            name: {"inserted": ins, "updated": upd, "hot_updated": hot, "idx_scans": idx,
                   "seq_scans": seq}
            for name, ins, upd, hot, idx, seq in cur.fetchall()
        }  # fmt: skip
        cur.execute(
            "SELECT xact_commit, xact_rollback, tup_returned, tup_fetched FROM pg_stat_database"
            " WHERE datname = current_database()"
        )
        commits, rollbacks, returned, fetched = cur.fetchone()
    return {
        "tables": tables,
        "commits": commits,
        "rollbacks": rollbacks,
        "tuples_returned": returned,
        "tuples_fetched": fetched,
    }


def writes_per_delivery_row(activity: dict[str, Any]) -> dict[str, Any]:
    """Rows PostgreSQL wrote (inserted or updated, in the tables table_activity reads) per
    delivery row inserted, the delivery rows' own UPDATEs and how many were HOT, and commits
    (each a WAL flush) per delivery row."""
    tables = activity.get("tables", {})
    rows = tables.get("notifications_delivery", {}).get("inserted", 0)
    if not rows:
        return {}
    delivery = tables["notifications_delivery"]
    written = sum(t["inserted"] + t["updated"] for t in tables.values())
    return {
        "delivery_rows": rows,
        "writes_per_delivery_row": round(written / rows, 2),
        "delivery_updates_per_row": round(delivery["updated"] / rows, 2),
        "delivery_hot_update_pct": round(
            100 * delivery["hot_updated"] / max(1, delivery["updated"]), 1
        ),
        "commits_per_delivery_row": round(activity.get("commits", 0) / rows, 2),
    }


def table_sizes(conn: Any) -> dict[str, int]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT relname, pg_total_relation_size(oid) FROM pg_class"
            " WHERE relname IN ('notifications_notification', 'notifications_delivery')"
        )
        return {name: int(size) for name, size in cur.fetchall()}
