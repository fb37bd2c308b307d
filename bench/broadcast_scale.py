"""Broadcast progress and cancel at scale: one broadcast of N recipients x 2 channels.

    nice -n 5 .venv/bin/python bench/broadcast_scale.py [--recipients 1000000] [--runs 3]
        [--out bench/results/broadcast_scale.json] [--deadline 1800] [--keep]
        [--reset reinsert|update]

Needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379. Uses only the database
``notifications_bench_scale`` (dropped and re-created at the start, migrated, seeded
server-side with ``INSERT … SELECT``; dropped at the end unless ``--keep``) and Redis db 12 as
the Celery broker (flushed at the start and the end; no worker consumes it, so the task the
cancel enqueues just waits there). Django runs in this process. Measures, on N x 2 queued
deliveries: the full progress count, a progress poll that counts and one that shares the
stored count, and cancelling the old way (one UPDATE of every queued delivery) against the
new way (the request's first chunk, then the rest a chunk per transaction). See
bench/README.md ("Broadcast progress and cancel at scale").
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import redis

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, only bench/ is on the path; its sibling modules import as bench.*.
sys.path.insert(0, str(ROOT))
from bench import broadcast_data as data  # noqa: E402

HOST = "127.0.0.1"  # the only host this script talks to
DB_NAME = "notifications_bench_scale"
DATABASE_URL = f"postgres://postgres@{HOST}:5432/{DB_NAME}"
BROKER_URL = f"redis://{HOST}:6379/12"
CHANNELS = ("email", "inapp")
USER_PREFIX = "bs-"
LOCK_FILE = Path(tempfile.gettempdir()) / f"{DB_NAME}.lock"
CHUNK_SQL_PREFIX = "WITH page AS MATERIALIZED"  # transitions.transition_broadcast_page
# How cancelling was done before pages (one statement for the whole broadcast), for comparison.
OLD_CANCEL_SQL = """
UPDATE notifications_delivery SET status = 'skipped', skipped_at = now(), lease_until = NULL,
    reason = 'cancelled', history = history || jsonb_build_array(jsonb_build_object(
        'status', 'skipped', 'at', now(), 'attempt', attempts, 'reason', 'cancelled'))
WHERE notification_id IN (SELECT id FROM notifications_notification WHERE broadcast_id = %s)
  AND status = 'queued'
"""

os.environ.update(
    DJANGO_SETTINGS_MODULE="config.settings",
    DATABASE_URL=DATABASE_URL,
    CELERY_BROKER_URL=BROKER_URL,
    DEBUG="false",  # DEBUG keeps every query in memory: never measure with it
    LOG_LEVEL="WARNING",
)


T = TypeVar("T")


class DeadlineReached(Exception):
    pass


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def check(self, what: str) -> None:
        if self.left() <= 0:
            raise DeadlineReached(f"deadline reached before {what}")


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# --- Django, the broker ----------------------------------------------------------------------


def django_setup() -> None:
    import django

    django.setup()


SET_TIMEOUT_SQL = "SELECT set_config('statement_timeout', %s, false)"


def timeout_value(deadline: Deadline) -> str:
    return f"{max(1000, int(deadline.left() * 1000))}ms"


def statement_timeout(deadline: Deadline) -> None:
    """Whatever is left of the deadline bounds every statement of our Django connection."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(SET_TIMEOUT_SQL, [timeout_value(deadline)])


def broker() -> redis.Redis:
    return redis.Redis.from_url(BROKER_URL, socket_timeout=5)


def broker_clients() -> int:
    """Other clients connected to our Redis db (a worker would consume what we enqueue)."""
    clients = broker().client_list()
    return sum(1 for c in clients if str(c.get("db")) == "12" and c.get("cmd") != "client|list")


def broker_queued() -> dict[str, int]:
    client = broker()
    found = {}
    for key in client.scan_iter(count=1000):
        if client.type(key) == b"list":
            found[key.decode()] = int(client.llen(key))
    return found


# --- seeding ---------------------------------------------------------------------------------


# As fanout's _INSERT_DELIVERIES_SQL writes a queued delivery (content '{}'), in recipient
# order, a notification's two deliveries side by side as a fan-out page writes them.
INSERT_DELIVERIES_SQL = """
INSERT INTO notifications_delivery
    (notification_id, channel, status, reason, content, provider, provider_message_id,
     attempts, last_error, history, results, lease_until, queued_at, skipped_at)
SELECT n.id, c.channel, 'queued', '', '{}'::jsonb, '', '', 0, '',
       jsonb_build_array(jsonb_build_object('status', 'queued', 'at', now(), 'attempt', 0)),
       '{}'::jsonb, now() + make_interval(secs => %s), now(), NULL
FROM notifications_notification n
CROSS JOIN (VALUES (1, 'email'), (2, 'inapp')) AS c(position, channel)
WHERE n.broadcast_id = %s
ORDER BY n.recipient_id, c.position
"""
LEASE_SECONDS = 3600  # NOTIFY_FANOUT_LEASE_SECONDS' default


def bulk_load_session(cur: Any) -> None:
    """FK triggers off for this session (the rows are consistent by construction), no WAL
    flush per statement, room to sort in memory."""
    cur.execute("SET session_replication_role = replica")
    cur.execute("SET synchronous_commit = off")
    cur.execute("SET work_mem = '256MB'")
    cur.execute("SET maintenance_work_mem = '256MB'")


def insert_deliveries(cur: Any, broadcast_id: uuid.UUID) -> int:
    cur.execute(INSERT_DELIVERIES_SQL, [LEASE_SECONDS, broadcast_id])
    return int(cur.rowcount)


def seed(recipients: int, deadline: Deadline) -> tuple[uuid.UUID, dict[str, Any]]:
    """Migrate, then one API key, a category and an event (channels email and in-app), one
    broadcast already fanned out, and its N recipients, N notifications and 2N queued
    deliveries, each table filled by one INSERT … SELECT; returns the broadcast id."""
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from notifications.models import Broadcast
    from notifications.services.api_keys import api_key_create
    from preferences.models import Category, Event, Priority

    timings: dict[str, float] = {}
    started = time.perf_counter()
    call_command("migrate", verbosity=0, interactive=False)
    timings["migrate_s"] = time.perf_counter() - started

    api_key, _ = api_key_create(name="bench-broadcast-scale")
    category = Category.objects.create(key="bench-scale", name="Broadcast scale benchmark")
    event = Event.objects.create(
        key="bench_scale",
        category=category,
        default_channels=list(CHANNELS),
        priority=Priority.BULK,
    )
    broadcast = Broadcast.objects.create(
        api_key=api_key,
        event=event,
        audience={"all": True},
        channels=list(CHANNELS),
        data={},
        request_fingerprint="0" * 64,
        accept_response={},
        status=Broadcast.Status.FANNED_OUT,
        recipients_total=recipients,
        fanned_out_at=timezone.now(),
    )

    conn = data.connect(DB_NAME)
    try:
        with conn.cursor() as cur:
            cur.execute(SET_TIMEOUT_SQL, [timeout_value(deadline)])
            bulk_load_session(cur)

            started = time.perf_counter()
            cur.execute(
                """
                INSERT INTO preferences_recipient
                    (external_id, email, phone, locale, timezone, created_at, updated_at)
                SELECT %s || lpad(i::text, 7, '0'), 'bs' || i || '@bench.example.com',
                       NULL, '', '', now(), now()
                FROM generate_series(0, %s - 1) AS i
                """,
                [USER_PREFIX, recipients],
            )
            timings["recipients_s"] = time.perf_counter() - started

            # As notifications.services.fanout writes them (its _INSERT_NOTIFICATIONS_SQL).
            started = time.perf_counter()
            cur.execute(
                """
                INSERT INTO notifications_notification
                    (id, api_key_id, recipient_id, external_user_id, event_id, data, priority,
                     broadcast_id, idempotency_key, request_fingerprint, accept_response,
                     created_at)
                SELECT gen_random_uuid(), %s, r.id, r.external_id, %s, '{}'::jsonb, 'bulk',
                       %s, NULL, '', '{}'::jsonb, now()
                FROM preferences_recipient r
                WHERE r.external_id LIKE %s
                ORDER BY r.id
                """,
                [api_key.pk, event.pk, broadcast.pk, USER_PREFIX + "%"],
            )
            notifications = cur.rowcount
            timings["notifications_s"] = time.perf_counter() - started

            started = time.perf_counter()
            deliveries = insert_deliveries(cur, broadcast.pk)
            timings["deliveries_s"] = time.perf_counter() - started

            started = time.perf_counter()
            cur.execute("VACUUM ANALYZE")
            cur.execute("CHECKPOINT")
            timings["vacuum_analyze_checkpoint_s"] = time.perf_counter() - started
            sizes = data.table_sizes(conn)
    finally:
        conn.close()
    connection.close()  # the next statement opens a fresh connection (statistics, settings)
    return broadcast.pk, {
        "recipients": recipients,
        "notifications": notifications,
        "deliveries": deliveries,
        "table_bytes": sizes,
        **{k: round(v, 2) for k, v in timings.items()},
        "rows_seconds": round(
            timings["recipients_s"] + timings["notifications_s"] + timings["deliveries_s"], 2
        ),
    }


RESETS = ("reinsert", "update")


def reset_to_queued(broadcast_id: uuid.UUID, deadline: Deadline, how: str) -> float:
    """Every delivery of the broadcast queued again, the broadcast fanned out with no stored
    count; then VACUUM ANALYZE and a CHECKPOINT, so the next measurement owes no earlier
    write. ``reinsert`` (the default): TRUNCATE the deliveries and write them again as the
    seed did, so every measurement starts from the table a fan-out just wrote. ``update``:
    one UPDATE back to queued; the table keeps the dead versions' space (about twice the
    size after the first reset), which changes the chunk query's plan (see the README)."""
    started = time.perf_counter()
    conn = data.connect(DB_NAME)
    try:
        with conn.cursor() as cur:
            cur.execute(SET_TIMEOUT_SQL, [timeout_value(deadline)])
            if how == "reinsert":
                bulk_load_session(cur)
                # CASCADE: the tables pointing at deliveries (dead letters, in-app messages)
                # are empty in this database.
                cur.execute("TRUNCATE notifications_delivery CASCADE")
                insert_deliveries(cur, broadcast_id)
            else:
                cur.execute(
                    """
                    UPDATE notifications_delivery d
                    SET status = 'queued', reason = '', skipped_at = NULL,
                        history = jsonb_build_array(d.history -> 0)
                    FROM notifications_notification n
                    WHERE n.id = d.notification_id AND n.broadcast_id = %s
                      AND (d.status <> 'queued' OR jsonb_array_length(d.history) <> 1)
                    """,
                    [broadcast_id],
                )
            cur.execute(
                "UPDATE notifications_broadcast SET status = 'fanned_out', cancelled_at = NULL,"
                " progress = NULL, progress_counted_at = NULL, progress_count_seconds = 0"
                " WHERE id = %s",
                [broadcast_id],
            )
            cur.execute("VACUUM ANALYZE notifications_delivery")
            cur.execute("VACUUM ANALYZE notifications_broadcast")
            cur.execute("CHECKPOINT")
    finally:
        conn.close()
    return time.perf_counter() - started


# --- statement capture -----------------------------------------------------------------------


class ChunkLog:
    """Django execute wrapper: times each transition_broadcast UPDATE (statement start,
    seconds, rows moved); optionally runs EXPLAIN (ANALYZE, BUFFERS) of chosen ones first,
    inside a savepoint that is rolled back, so the real statement still does the work."""

    def __init__(self, explain_at: set[int] | None = None) -> None:
        self.starts: list[float] = []
        self.seconds: list[float] = []
        self.explain_at = explain_at or set()
        self.plans: dict[int, list[str]] = {}

    def __call__(
        self,
        execute: Callable[..., Any],
        sql: str,
        params: Any,
        many: bool,
        context: dict[str, Any],
    ) -> Any:
        if not sql.startswith(CHUNK_SQL_PREFIX):
            return execute(sql, params, many, context)
        index = len(self.seconds)
        cursor = context["cursor"]
        if index in self.explain_at:
            cursor.execute("SAVEPOINT bench_explain")
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
            self.plans[index] = [row[0] for row in cursor.fetchall()]
            cursor.execute("ROLLBACK TO SAVEPOINT bench_explain")
        self.starts.append(time.perf_counter())
        result = execute(sql, params, many, context)
        self.seconds.append(time.perf_counter() - self.starts[-1])
        return result

    def transaction_seconds(self, end: float) -> list[float]:
        """Start of one chunk's UPDATE to the start of the next (the UPDATE, its COMMIT and
        the loop): each chunk's transaction, give or take a round trip; the last one ends at
        ``end``. Chunks that ran an EXPLAIN first count their UPDATE alone."""
        spans = []
        for i, start in enumerate(self.starts):
            stop = self.starts[i + 1] if i + 1 < len(self.starts) else end
            spans.append(self.seconds[i] if (i + 1) in self.explain_at else stop - start)
        return spans


@contextmanager
def chunk_log(explain_at: set[int] | None = None) -> Iterator[ChunkLog]:
    from django.db import connection

    log = ChunkLog(explain_at)
    with connection.execute_wrapper(log):
        yield log


# --- measurements ----------------------------------------------------------------------------


def measure_count(broadcast_id: uuid.UUID) -> tuple[float, dict[str, Any]]:
    from notifications.services import broadcasts

    started = time.perf_counter()
    counts = broadcasts.broadcast_delivery_counts(broadcast_id=broadcast_id)
    return time.perf_counter() - started, counts


def measure_progress(broadcast_id: uuid.UUID) -> dict[str, Any]:
    """A poll with no stored count (counts and stores), then one as the view makes it right
    after (load the broadcast, poll): it must return the stored count and its instant."""
    from django.conf import settings

    from notifications.models import Broadcast
    from notifications.services import broadcasts

    Broadcast.objects.filter(pk=broadcast_id).update(
        progress=None, progress_counted_at=None, progress_count_seconds=0.0
    )
    broadcast = broadcasts.broadcast_get(broadcast_id=broadcast_id)
    assert broadcast is not None
    started = time.perf_counter()
    counts, counted_at = broadcasts.broadcast_progress(broadcast=broadcast)
    first_s = time.perf_counter() - started

    started = time.perf_counter()
    again = broadcasts.broadcast_get(broadcast_id=broadcast_id)
    assert again is not None
    loaded_s = time.perf_counter() - started
    started = time.perf_counter()
    cached, cached_at = broadcasts.broadcast_progress(broadcast=again)
    cached_s = time.perf_counter() - started
    window = max(
        settings.NOTIFY_BROADCAST_PROGRESS_MIN_AGE_SECONDS,
        settings.NOTIFY_BROADCAST_PROGRESS_RECOUNT_FACTOR * again.progress_count_seconds,
    )
    return {
        "first_poll_ms": first_s * 1000,
        "stored_count_seconds": again.progress_count_seconds,
        "cached_poll_ms": cached_s * 1000,
        "cached_poll_with_load_ms": (loaded_s + cached_s) * 1000,
        "cached_returned_stored": cached == counts and cached_at == counted_at,
        "window_s": window,
        "total": counts["total"],
    }


def measure_old_cancel(broadcast_id: uuid.UUID) -> dict[str, Any]:
    """The old cancel: the broadcast row, then one UPDATE of every queued delivery, in one
    transaction (the request held every row lock until it committed)."""
    from django.db import connection, transaction
    from django.utils import timezone

    from notifications.models import Broadcast

    started = time.perf_counter()
    with transaction.atomic():
        Broadcast.objects.filter(pk=broadcast_id).update(
            status=Broadcast.Status.CANCELLED, cancelled_at=timezone.now()
        )
        update_started = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute(OLD_CANCEL_SQL, [broadcast_id])
            moved = cursor.rowcount
        update_s = time.perf_counter() - update_started
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "update_s": update_s, "moved": moved}


def _page_cursor(broadcast_id: uuid.UUID, pages: int) -> int:
    """The recipient id the first ``pages`` cancel pages end at (where the request stopped)."""
    from django.db import connection

    page = max(1, settings_chunk() // len(CHANNELS))
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT recipient_id FROM notifications_notification WHERE broadcast_id = %s"
            " ORDER BY recipient_id OFFSET %s LIMIT 1",
            [broadcast_id, pages * page - 1],
        )
        row = cursor.fetchone()
    assert row is not None, "the broadcast is no larger than the request's page"
    return int(row[0])


def settings_chunk() -> int:
    from django.conf import settings

    return int(settings.NOTIFY_BROADCAST_CANCEL_CHUNK)


def measure_new_cancel(broadcast_id: uuid.UUID, chunk: int) -> dict[str, Any]:
    """The request's part (broadcast_cancel: the broadcast row and the first page, and the
    task enqueued after commit), one more page alone in its transaction (the longest single
    transaction the task runs), then skip_cancelled_rest from there with no time budget."""
    from django.db import transaction

    from notifications.services import broadcasts

    before = sum(broker_queued().values())
    started = time.perf_counter()
    found = broadcasts.broadcast_cancel(broadcast_id=broadcast_id)
    request_s = time.perf_counter() - started
    assert found
    enqueued = sum(broker_queued().values()) - before

    started = time.perf_counter()
    with transaction.atomic():
        one_moved, cursor = broadcasts.skip_cancelled_page(
            broadcast_id=broadcast_id, after_recipient=_page_cursor(broadcast_id, 1)
        )
    one_s = time.perf_counter() - started
    assert cursor is not None

    # EXPLAIN the first page of the rest, the middle one and one near the end.
    expected = max(1, (len(CHANNELS) * _recipients_total(broadcast_id)) // chunk)
    explain_at = {0, expected // 2, max(0, expected - 5)}
    with chunk_log(explain_at) as rest_log:
        started = time.perf_counter()
        rest_moved, left = broadcasts.skip_cancelled_rest(
            broadcast_id=broadcast_id, after_recipient=cursor, time_budget=10**6
        )
        end = time.perf_counter()
        rest_s = end - started
    spans = rest_log.transaction_seconds(end)
    return {
        "request_s": request_s,
        "tasks_enqueued": enqueued,
        "one_chunk_transaction_s": one_s,
        "one_chunk_moved": one_moved,
        "rest_s": rest_s,
        "rest_moved": rest_moved,
        "rest_left_some": left is not None,
        "rest_chunks": len(rest_log.seconds),
        "total_s": request_s + one_s + rest_s,
        "rest_chunk_update_s": {
            "first": rest_log.seconds[0],
            "median": statistics.median(rest_log.seconds),
            "max": max(rest_log.seconds),
            "last_full": rest_log.seconds[-2] if len(rest_log.seconds) > 1 else None,
            "every": [round(s, 4) for s in rest_log.seconds],
        },
        "rest_chunk_transaction_s": {"median": statistics.median(spans), "max": max(spans)},
        "longest_transaction_s": max([request_s, one_s, *spans]),
        "plans": {f"rest_chunk_{i}": plan for i, plan in sorted(rest_log.plans.items())},
    }


def _recipients_total(broadcast_id: uuid.UUID) -> int:
    from notifications.models import Broadcast

    return int(Broadcast.objects.values_list("recipients_total", flat=True).get(pk=broadcast_id))


def verify_all_skipped(broadcast_id: uuid.UUID, expected: int) -> dict[str, Any]:
    _, counts = measure_count(broadcast_id)
    cancelled = counts["skippedByReason"].get("cancelled", 0)
    return {"ok": counts["queued"] == 0 and cancelled == expected, "counts": counts}


def explain_count(broadcast_id: uuid.UUID) -> list[str]:
    from django.db import connection

    from notifications.services import broadcasts

    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + broadcasts._COUNTS_SQL, [broadcast_id])
        return [row[0] for row in cursor.fetchall()]


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/broadcast_scale.json")
    parser.add_argument("--deadline", type=float, default=1800.0, help="seconds, whole script")
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    parser.add_argument(
        "--reset",
        choices=RESETS,
        default="reinsert",
        help="how deliveries go back to queued between measurements (see reset_to_queued)",
    )
    return parser.parse_args(argv)


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    runs = result["runs"]

    def pick(path: tuple[str, ...]) -> list[float]:
        values = []
        for run in runs:
            value: Any = run
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            if isinstance(value, int | float) and not isinstance(value, bool):
                values.append(float(value))
        return values

    figures = {
        "full_count_s": ("count_s",),
        "first_poll_ms": ("progress", "first_poll_ms"),
        "cached_poll_ms": ("progress", "cached_poll_ms"),
        "cached_poll_with_load_ms": ("progress", "cached_poll_with_load_ms"),
        "sharing_window_s": ("progress", "window_s"),
        "old_cancel_s": ("old", "seconds"),
        "new_request_s": ("new", "request_s"),
        "new_total_s": ("new", "total_s"),
        "new_one_chunk_transaction_s": ("new", "one_chunk_transaction_s"),
        "new_longest_transaction_s": ("new", "longest_transaction_s"),
        "new_rest_chunk_update_max_s": ("new", "rest_chunk_update_s", "max"),
        "new_rest_chunk_update_median_s": ("new", "rest_chunk_update_s", "median"),
        "reset_s": ("reset_s",),
    }
    out: dict[str, Any] = {}
    for name, path in figures.items():
        values = pick(path)
        out[name] = {"median": median(values), "runs": values}
    return out


def print_summary(result: dict[str, Any]) -> None:
    m = result.get("medians", {})

    def get(name: str, unit: str, scale: str = "{:.3f}") -> str:
        figure = m.get(name, {})
        if figure.get("median") is None:
            return "-"
        return f"{scale.format(figure['median'])} {unit} [n={len(figure['runs'])}]"

    deliveries = result.get("seed", {}).get("deliveries", 0)
    print(f"\nBroadcast of {deliveries:,} deliveries; median of the runs [n = how many]:")
    print(f"  full progress count (GROUP BY)        {get('full_count_s', 's')}")
    print(f"  progress poll, counting               {get('first_poll_ms', 'ms', '{:.1f}')}")
    print(f"  progress poll, shared count           {get('cached_poll_ms', 'ms', '{:.2f}')}")
    print(
        f"  ... with the broadcast's load         {get('cached_poll_with_load_ms', 'ms', '{:.2f}')}"
    )
    print(f"  sharing window                        {get('sharing_window_s', 's', '{:.1f}')}")
    print(f"  cancel, old (one UPDATE)              {get('old_cancel_s', 's')}")
    print(f"  cancel, new: request                  {get('new_request_s', 's')}")
    print(f"  cancel, new: total                    {get('new_total_s', 's')}")
    print(f"  cancel, new: one chunk's transaction  {get('new_one_chunk_transaction_s', 's')}")
    print(f"  cancel, new: longest transaction      {get('new_longest_transaction_s', 's')}")
    print(f"  valid: {result.get('valid')}  ({result.get('stopped') or 'complete'})")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def brief_new(new: dict[str, Any]) -> dict[str, Any]:
    """The new way's figures without the plans and the per-chunk series (for the log)."""
    brief = {k: v for k, v in new.items() if k != "plans"}
    brief["rest_chunk_update_s"] = {
        k: v for k, v in new["rest_chunk_update_s"].items() if k != "every"
    }
    return brief


class Steps:
    """Runs the long steps, refusing one that the deadline leaves no room for (judged by its
    last duration), so the script stops between measurements, not inside one."""

    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline
        self.took: dict[str, float] = {}
        self.last = 0.0

    def run(self, name: str, step: Callable[[], T]) -> T:
        needed = self.took.get(name, 0.0) * 1.2 + 10.0
        if self.deadline.left() < needed:
            raise DeadlineReached(
                f"deadline: {self.deadline.left():.0f} s left, {name} needs about {needed:.0f}"
            )
        started = time.perf_counter()
        value = step()
        self.last = self.took[name] = time.perf_counter() - started
        statement_timeout(self.deadline)
        return value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    deadline = Deadline(args.deadline)
    lock = open(LOCK_FILE, "w")  # held until exit: a second invocation refuses to start
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"another invocation holds {LOCK_FILE}", file=sys.stderr)
        return 2
    if broker_clients():
        print("a client is connected to Redis db 12: it could consume our task", file=sys.stderr)
        return 2

    result: dict[str, Any] = {"parameters": vars(args) | {"out": str(args.out)}, "runs": []}
    result["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    result["valid"] = False
    result["stopped"] = None
    status = 0
    # Started in the background, a script ignores SIGINT: take it back; SIGTERM likewise
    # ends the run through the clean-up below.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    broker().flushdb()
    try:
        say(f"re-creating {DB_NAME}")
        data.recreate_database(DB_NAME)
        django_setup()
        from django.conf import settings

        chunk = int(settings.NOTIFY_BROADCAST_CANCEL_CHUNK)
        result["settings"] = {
            "NOTIFY_BROADCAST_CANCEL_CHUNK": chunk,
            "NOTIFY_BROADCAST_PROGRESS_MIN_AGE_SECONDS": (
                settings.NOTIFY_BROADCAST_PROGRESS_MIN_AGE_SECONDS
            ),
            "NOTIFY_BROADCAST_PROGRESS_RECOUNT_FACTOR": (
                settings.NOTIFY_BROADCAST_PROGRESS_RECOUNT_FACTOR
            ),
        }
        say(f"seeding {args.recipients:,} recipients x {len(CHANNELS)} channels")
        broadcast_id, result["seed"] = seed(args.recipients, deadline)
        say(f"seeded: {json.dumps(result['seed'])}")
        expected = result["seed"]["deliveries"]
        statement_timeout(deadline)
        steps = Steps(deadline)
        for run in range(args.runs):
            record: dict[str, Any] = {"run": run + 1, "resets_s": []}
            if run:  # the runs before left every delivery skipped
                steps.run("reset", lambda: reset_to_queued(broadcast_id, deadline, args.reset))
                record["resets_s"].append(steps.last)
                say(f"run {run + 1}: reset ({args.reset}) in {steps.last:.1f} s")
            result["runs"].append(record)
            record["count_s"], _ = measure_count(broadcast_id)
            say(f"run {run + 1}: full count {record['count_s']:.3f} s")
            record["progress"] = measure_progress(broadcast_id)
            say(f"run {run + 1}: progress {json.dumps(record['progress'])}")
            if run == 0:
                result["count_plan"] = explain_count(broadcast_id)
            order = ["old", "new"] if run % 2 == 0 else ["new", "old"]
            record["order"] = order
            for i, way in enumerate(order):
                if i:  # the first way left every delivery skipped
                    steps.run("reset", lambda: reset_to_queued(broadcast_id, deadline, args.reset))
                    record["resets_s"].append(steps.last)
                    say(f"run {run + 1}: reset ({args.reset}) in {steps.last:.1f} s")
                if way == "old":
                    record["old"] = steps.run("old", lambda: measure_old_cancel(broadcast_id))
                    say(f"run {run + 1}: old cancel {json.dumps(record['old'])}")
                else:
                    new = steps.run("new", lambda: measure_new_cancel(broadcast_id, chunk))
                    record["new"] = new
                    say(f"run {run + 1}: new cancel {json.dumps(brief_new(new))}")
                record[f"{way}_check"] = verify_all_skipped(broadcast_id, expected)
                if not record[f"{way}_check"]["ok"]:
                    say(f"run {run + 1}: {way} cancel left rows: {record[f'{way}_check']}")
            record["reset_s"] = median(record["resets_s"])
        result["valid"] = (
            all(
                r.get("old_check", {}).get("ok") and r.get("new_check", {}).get("ok")
                for r in result["runs"]
            )
            and len(result["runs"]) == args.runs
        )
    except DeadlineReached as exc:
        result["stopped"] = str(exc)
        say(str(exc))
    except KeyboardInterrupt:
        result["stopped"] = "interrupted"
        say("interrupted")
        status = 130
    except Exception as exc:
        from django.db.utils import OperationalError

        if isinstance(exc, OperationalError) and "statement timeout" in str(exc):
            result["stopped"] = f"deadline reached inside a statement: {exc}"
            say(result["stopped"])
        else:
            result["stopped"] = f"error: {exc!r}"
            raise
    finally:
        result["medians"] = summarise(result)
        result["broker_queues_at_end"] = broker_queued()
        result["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        result["date_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print_summary(result)
        say(f"wrote {args.out}")
        try:
            from django.db import connection

            connection.close()
        except Exception:  # django never set up
            pass
        broker().flushdb()
        if not args.keep:
            data.drop_database(DB_NAME)
            say(f"dropped {DB_NAME}")
        lock.close()
    return status or (0 if result["valid"] else 1)


if __name__ == "__main__":
    sys.exit(main())
