"""Sizing of the notification log and the cost of the retention purge, on real PostgreSQL.

    .venv/bin/python bench/sizing.py [--notifications 200000] [--out bench/results/sizing.json]
                                     [--keep-db]

Creates the database ``notifications_sizing`` (dropped at the end, also on error and Ctrl-C,
unless ``--keep-db``), migrates it with ``manage.py migrate``, loads the shipped catalog, and:

1. **packed**: COPYs N notifications of ``order_shipped`` (email + in-app, content rendered from
   the shipped templates, final history, provider message ids, an inbox row per in-app
   delivery, 0.5% of emails dead-lettered), VACUUM ANALYZE, reads every table's and index's
   size: the floor, every row written once and packed tight.
2. **as written**: empties the tables and writes the same rows the way the pipeline does, in
   chunks: inserted ``queued``, then moved to ``sending``, ``sent`` and (email) ``delivered``
   with the UPDATEs of ``notifications.services.transitions``, a VACUUM after each chunk (an
   autovacuum that keeps up), VACUUM ANALYZE, sizes again. The last chunk stays ``queued`` (a
   backlog) and a few old deliveries are left ``sending`` (stuck): the purge must keep both.
3. **purge**: EXPLAIN ANALYZE of one batch's statements (rolled back), then deletes the oldest
   half (rows are spread over 60 days; retention 30 days) with ``purge_expired_notifications``
   at the default batch size, timing it (rows/s, longest batch transaction, WAL written); then
   batch sizes 500 / 1,000 / 5,000 / 10,000 on eight younger slices, over two rounds.

The rows come from bench/log_rows.py, the purge measurements from bench/retention.py.
Writes bench/results/sizing.json and prints a summary; docs/sizing.md explains the figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg2

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's bin/, not resolved through its symlink
HOST = "127.0.0.1"
DB_NAME = "notifications_sizing"
DATABASE_URL = f"postgres://postgres@{HOST}:5432/{DB_NAME}"
TABLES = (
    "notifications_notification",
    "notifications_delivery",
    "notifications_faileddelivery",
    "notifications_inboxmessage",
)
RATE_PER_HOUR = 10_000_000

# Run as a script, only bench/ is on the path; its sibling modules import as bench.*.
sys.path.insert(0, str(ROOT))
from bench import log_rows, retention  # noqa: E402
from bench.log_rows import sql  # noqa: E402


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- database lifecycle ----------------------------------------------------------------------


def admin_execute(sql: str) -> None:
    conn = psycopg2.connect(host=HOST, port=5432, user="postgres", dbname="postgres")
    try:
        conn.autocommit = True  # CREATE/DROP DATABASE refuse to run inside a transaction
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def create_database() -> None:
    admin_execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
    admin_execute(f'CREATE DATABASE "{DB_NAME}"')


def drop_database() -> None:
    from django.conf import settings

    if settings.configured:
        from django.db import connections

        connections.close_all()
    admin_execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')


def manage(*args: str) -> None:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": DATABASE_URL,
        "DEBUG": "false",
    }
    done = subprocess.run(
        [str(BIN / "python"), "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"manage.py {' '.join(args)} failed:\n{done.stderr[-3000:]}")


def setup_django() -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    os.environ["DATABASE_URL"] = DATABASE_URL
    os.environ["DEBUG"] = "false"  # DEBUG keeps every query in memory
    import django

    django.setup()


# --- measuring -------------------------------------------------------------------------------


def measure() -> dict[str, Any]:
    """Per table: rows, heap, TOAST, indexes, total; per index: bytes; bytes per row."""
    tables: dict[str, Any] = {}
    for table in TABLES:
        [(rows,)] = sql(f"SELECT count(*) FROM {table}")
        [(heap, toast, indexes, total)] = sql(
            """
            SELECT pg_relation_size(c.oid),
                   coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0),
                   pg_indexes_size(c.oid),
                   pg_total_relation_size(c.oid)
            FROM pg_class c WHERE c.oid = %s::regclass
            """,
            [table],
        )
        index_sizes = dict(
            sql(
                """
                SELECT i.indexrelid::regclass::text, pg_relation_size(i.indexrelid)
                FROM pg_index i WHERE i.indrelid = %s::regclass ORDER BY 2 DESC
                """,
                [table],
            )
        )

        def per_row(value: int, rows: int = rows) -> float | None:
            return round(value / rows, 1) if rows else None

        tables[table] = {
            "rows": rows,
            "heap_bytes": heap,
            "toast_bytes": toast,
            "indexes_bytes": indexes,
            "total_bytes": total,
            "per_row": {
                "heap": per_row(heap),
                "toast": per_row(toast),
                "indexes": per_row(indexes),
                "total": per_row(total),
            },
            "indexes": {
                name: {"bytes": b, "per_row": per_row(b)} for name, b in index_sizes.items()
            },
        }
    return tables


def column_breakdown() -> dict[str, Any]:
    """Average stored size of the big columns (pg_column_size: after any compression)."""
    notification = sql(
        """
        SELECT avg(pg_column_size(n.*)), avg(pg_column_size(api_key_id)),
               avg(pg_column_size(accept_response)), avg(pg_column_size(data)),
               avg(pg_column_size(request_fingerprint)), avg(pg_column_size(idempotency_key))
        FROM notifications_notification n
        """
    )[0]
    deliveries = sql(
        """
        SELECT channel, avg(pg_column_size(d.*)), avg(pg_column_size(content)),
               avg(pg_column_size(history)), avg(pg_column_size(provider_message_id))
        FROM notifications_delivery d WHERE status <> 'queued' GROUP BY channel ORDER BY channel
        """
    )

    def r(value: Any) -> float | None:
        return round(float(value), 1) if value is not None else None

    return {
        "notification_tuple": r(notification[0]),
        "notification_columns": {
            "api_key_id": r(notification[1]),
            "accept_response": r(notification[2]),
            "data": r(notification[3]),
            "request_fingerprint": r(notification[4]),
            "idempotency_key": r(notification[5]),
        },
        "delivery_tuple_by_channel": {
            channel: {
                "tuple": r(t),
                "content": r(c),
                "history": r(h),
                "provider_message_id": r(m),
            }
            for channel, t, c, h, m in deliveries
        },
    }


def sizing_table(tables: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows and GB per day and per 30 days at RATE_PER_HOUR with 1, 2 and 4 channels."""
    per_notification = tables["notifications_notification"]["per_row"]["total"]
    per_delivery = tables["notifications_delivery"]["per_row"]["total"]
    per_inbox = tables["notifications_inboxmessage"]["per_row"]["total"]
    per_day = RATE_PER_HOUR * 24
    rows = []
    for channels in (1, 2, 4):
        log_bytes = per_day * (per_notification + channels * per_delivery)
        rows.append(
            {
                "channels": channels,
                "notifications_per_day": per_day,
                "deliveries_per_day": per_day * channels,
                "rows_per_day": per_day * (1 + channels),
                "gb_per_day": round(log_bytes / 1e9, 1),
                "rows_per_30_days": per_day * (1 + channels) * 30,
                "gb_per_30_days": round(30 * log_bytes / 1e9, 1),
                # When one of the channels is in-app: one inbox row per notification, which
                # retention keeps (docs/sizing.md).
                "inbox_gb_per_day_if_inapp": round(per_day * per_inbox / 1e9, 1),
            }
        )
    return rows


def machine_facts() -> dict[str, Any]:
    cpu_model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu_model = next(
                (ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), ""
            )
    except OSError:
        pass
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],  # read-only
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    settings = dict(
        sql(
            "SELECT name, setting FROM pg_settings WHERE name IN ('shared_buffers', 'autovacuum',"
            " 'synchronous_commit', 'max_wal_size', 'block_size', 'toast_tuple_target')"
        )
    )
    return {
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "django": importlib.metadata.version("django"),
        "postgresql": sql("SHOW server_version")[0][0],
        "postgresql_settings": settings,
        "git_commit": commit,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def gb(value: float) -> str:
    return f"{value / 1e9:.2f} GB"


def summary_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for name in ("packed", "as_written"):
        tables = report[name]["tables"]
        lines.append(f"{name}:")
        for table, facts in tables.items():
            p = facts["per_row"]
            lines.append(
                f"  {table:32} {facts['rows']:>9} rows  {gb(facts['total_bytes']):>9}"
                f"  per row: heap {p['heap']} toast {p['toast']} indexes {p['indexes']}"
                f" = {p['total']} B"
            )
        for row in report[name]["sizing"]:
            lines.append(
                f"  {row['channels']} channel(s): {row['rows_per_day'] / 1e6:.0f}M rows/day,"
                f" {row['gb_per_day']} GB/day, {row['gb_per_30_days']} GB per 30 days"
            )
    for run in [report["purge"]["oldest_half"], *report["purge"]["comparison_runs"]]:
        lines.append(
            f"purge >{run['older_than_days']}d batch {run['batch']}: {run['notifications']}"
            f" notifications + {run['deliveries']} deliveries in {run['seconds']} s"
            f" = {run['notifications_per_second']} notifications/s ({run['rows_per_second']}"
            f" rows/s), longest batch {run['longest_batch_ms']} ms, mean {run['mean_batch_ms']}"
            f" ms, WAL {run['wal_bytes_per_notification']} B/notification"
        )
    for size, facts in report["purge"]["batch_sizes"].items():
        lines.append(
            f"batch {size}: median {facts['notifications_per_second']} notifications/s,"
            f" longest batch {facts['longest_batch_ms']} ms over {facts['rounds']} rounds"
        )
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--notifications", type=int, default=200_000)
    parser.add_argument("--chunk", type=int, default=5_000, help="notifications per chunk")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/sizing.json")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the database")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    total = args.notifications
    log(f"creating {DB_NAME}, migrating, loading the catalog")
    create_database()
    try:
        manage("migrate", "--no-input")
        manage("load_catalog")
        setup_django()
        from django.conf import settings

        facts = machine_facts()
        world = log_rows.build_world()
        report: dict[str, Any] = {
            "parameters": {
                "notifications": total,
                "channels": ["email", "inapp"],
                "event": "order_shipped",
                "recipients": log_rows.RECIPIENTS,
                "failed_share": log_rows.FAILED_SHARE,
                "spread_days": log_rows.SPREAD_DAYS,
                "retention_days": retention.RETENTION_DAYS,
                "chunk": args.chunk,
                "rate_per_hour": RATE_PER_HOUR,
                "retention_batch_default": settings.NOTIFY_RETENTION_BATCH,
            },
            "machine": facts,
        }

        log(f"packed: COPY {total} notifications, {2 * total} deliveries, {total} inbox rows")
        lsn = retention.wal_lsn()
        seconds = log_rows.load_packed(log_rows.Generator(world, total), total, args.chunk * 4)
        load_wal = retention.wal_bytes(lsn)
        sql("VACUUM ANALYZE")
        tables = measure()
        report["packed"] = {
            "load_seconds": round(seconds, 1),
            "wal_bytes_per_notification": round(load_wal / total),
            "tables": tables,
            "columns": column_breakdown(),
            "sizing": sizing_table(tables),
        }
        log(f"packed load took {seconds:.1f} s")

        sql("TRUNCATE " + ", ".join(TABLES) + " RESTART IDENTITY")
        log("as written: insert queued, then sending/sent/delivered UPDATEs, chunk by chunk")
        lsn = retention.wal_lsn()
        seconds = log_rows.load_as_written(log_rows.Generator(world, total), total, args.chunk)
        load_wal = retention.wal_bytes(lsn)
        sql("VACUUM ANALYZE")
        tables = measure()
        report["as_written"] = {
            "load_seconds": round(seconds, 1),
            "wal_bytes_per_notification": round(load_wal / total),
            "tables": tables,
            "columns": column_breakdown(),
            "sizing": sizing_table(tables),
        }
        log(f"as-written load took {seconds:.1f} s")

        pending_before = sql(
            "SELECT count(DISTINCT notification_id) FROM notifications_delivery"
            " WHERE status IN ('queued', 'sending')"
        )[0][0]
        report["explain"] = retention.explain_batch(settings.NOTIFY_RETENTION_BATCH)
        log(f"purging the oldest half (> {retention.RETENTION_DAYS} days)")
        runs = [retention.timed_purge(retention.RETENTION_DAYS, settings.NOTIFY_RETENTION_BATCH)]
        stuck_kept = sql(
            "SELECT count(*) FROM notifications_notification n WHERE n.created_at < now() - %s"
            " * interval '1 day'",
            [retention.RETENTION_DAYS],
        )[0][0]
        sql("VACUUM ANALYZE")
        after = measure()
        # Batch sizes compared on the younger half: eight slices of 3 days (about 10,000
        # notifications each), the sizes alternating over two rounds so that drift in the
        # shared machine's load hurts each alike.
        comparison = []
        slices = zip(range(27, 5, -3), (500, 1000, 5000, 10_000) * 2, strict=True)
        for days, batch in slices:
            log(f"purging > {days} days in batches of {batch}")
            comparison.append(retention.timed_purge(days, batch))
        report["purge"] = {
            "oldest_half": runs[0],
            "batch_sizes": retention.batch_comparison(comparison),
            "comparison_runs": comparison,
            "pending_notifications_before": pending_before,
            "old_pending_kept": stuck_kept,
            "after_purge_and_vacuum": {
                t: {k: v for k, v in facts.items() if k != "indexes"} for t, facts in after.items()
            },
        }
        report["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print("\n".join(summary_lines(report)))
        log(f"wrote {args.out}")
    finally:
        if args.keep_db:
            log(f"kept database {DB_NAME}")
        else:
            drop_database()
            log(f"dropped {DB_NAME}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
