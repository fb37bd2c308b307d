"""Priority-lane benchmark: transactional latency while a bulk backlog drains.

    .venv/bin/python bench/lanes.py [--backlog 5000] [--batch 0,100] [--batch-backlog 20000]
                                    [--rate 5] [--window 45] [--burst 100]
                                    [--variants a,b,c,d,e,f]
                                    [--out bench/results/lanes.json]

For each variant: put ``--backlog`` bulk in-app deliveries on ``inapp.bulk`` (rows written with
bulk_create; published with ``enqueue_deliveries``, one delivery per message, or with
``--batch N`` as ``deliver_inapp_batch`` tasks of N, as a broadcast's fan-out does; then the
backlog is ``--batch-backlog``, since batches drain several times faster), start the
variant's real Celery worker(s), and while the backlog drains publish transactional in-app
deliveries on ``inapp`` at ``--rate`` per second; each one's latency is ``Delivery.sent_at``
(PostgreSQL's clock) minus the moment it was published. Then a burst: ``--burst`` transactional
deliveries published at once on top of a fresh bulk backlog. The variants differ only in the
worker command lines and in environment variables read by config/settings.py:

  a  one worker -Q inapp,inapp.bulk -c 2, queue_order_strategy priority, prefetch multiplier 1
  b  the same, prefetch 4
  c  the same, round_robin, prefetch 4
  d  dedicated workers: -Q inapp -c 1 and -Q inapp.bulk -c 1 (priority, prefetch 1)
  e  dedicated workers: -Q inapp -c 1 and -Q inapp.bulk -c 2 (priority, prefetch 1)
  f  -Q inapp -c 1 and the shared -Q inapp,inapp.bulk -c 2 (priority, prefetch 1)

Every variant runs once per ``--batch`` value (default 0,100: single tasks, then batches).
Needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 (``make services``). It uses only
the database ``notifications_lanes`` (created and migrated if needed; its notification tables are
truncated before each variant) and Redis db 3 (flushed at start, before each variant and at the
end). Every worker it starts runs in its own process group and is stopped (SIGTERM, then
SIGKILL) when its variant ends, on error and on Ctrl-C. See docs/lanes.md.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg2
import redis

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # the only host this script talks to
DB_NAME = "notifications_lanes"
DATABASE_URL = f"postgres://postgres@{HOST}:5432/{DB_NAME}"
BROKER_URL = f"redis://{HOST}:6379/3"
WORKER_START_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 30.0  # after the window: the last transactional ones and the bulk tail
STOP_GRACE_S = 10.0

# The bench process and the workers read the same settings; force them, whatever the shell has.
ENV = {
    "DJANGO_SETTINGS_MODULE": "config.settings",
    "DATABASE_URL": DATABASE_URL,
    "CELERY_BROKER_URL": BROKER_URL,
    "DEBUG": "false",
    "LOG_LEVEL": "WARNING",
    "PYTHONUNBUFFERED": "1",
}
os.environ.update(ENV)
sys.path.insert(0, str(ROOT))

from channels.lanes import INAPP  # noqa: E402

TRANSACTIONAL_QUEUE, BULK_QUEUE = INAPP.queue, INAPP.bulk_queue
BATCH_TASK = INAPP.batch_task


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    strategy: str
    prefetch: int
    workers: tuple[tuple[str, int], ...]  # (queues, concurrency) per worker process


SHARED = INAPP.worker_queues
VARIANTS = {
    v.key: v
    for v in (
        Variant("a", "one worker, priority, prefetch 1", "priority", 1, ((SHARED, 2),)),
        Variant("b", "one worker, priority, prefetch 4", "priority", 4, ((SHARED, 2),)),
        Variant("c", "one worker, round_robin, prefetch 4", "round_robin", 4, ((SHARED, 2),)),
        Variant(
            "d",
            "dedicated workers -c 1 + -c 1, prefetch 1",
            "priority",
            1,
            ((TRANSACTIONAL_QUEUE, 1), (BULK_QUEUE, 1)),
        ),
        Variant(
            "e",
            "dedicated workers -c 1 + -c 2, prefetch 1",
            "priority",
            1,
            ((TRANSACTIONAL_QUEUE, 1), (BULK_QUEUE, 2)),
        ),
        Variant(
            "f",
            "-Q inapp -c 1 + shared -c 2, prefetch 1",
            "priority",
            1,
            ((TRANSACTIONAL_QUEUE, 1), (SHARED, 2)),
        ),
    )
}


class BenchError(Exception):
    pass


class Deadline:
    """One wall-clock budget for the whole script: every wait checks it."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        return self.at - time.monotonic()

    def check(self, what: str) -> None:
        if self.left() <= 0:
            raise BenchError(f"global deadline passed during {what}")


# --- setup -----------------------------------------------------------------------------------


def ensure_database() -> None:
    conn = psycopg2.connect(host=HOST, port=5432, user="postgres", dbname="postgres")
    try:
        conn.autocommit = True  # CREATE DATABASE refuses to run inside a transaction
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB_NAME])
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{DB_NAME}"')
                print(f"created database {DB_NAME}")
    finally:
        conn.close()


def migrate(deadline: Deadline) -> None:
    done = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT,
        env={**os.environ, **ENV},
        capture_output=True,
        text=True,
        timeout=max(1.0, min(300.0, deadline.left())),
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"manage.py migrate failed:\n{done.stderr[-3000:]}")


def broker() -> redis.Redis:
    return redis.Redis.from_url(BROKER_URL, socket_timeout=5)


@dataclass(frozen=True)
class Fixture:
    api_key_id: str
    event_id: int
    recipient_id: int


def seed() -> Fixture:
    from rest_framework_api_key.models import APIKey

    from preferences.models import Category, Event, Priority, Recipient

    category, _ = Category.objects.get_or_create(key="bench-lanes")
    event, _ = Event.objects.get_or_create(
        key="bench_lanes",
        defaults={"category": category, "default_channels": [INAPP.channel]},
    )
    Event.objects.filter(pk=event.pk).update(priority=Priority.BULK)
    recipient, _ = Recipient.objects.get_or_create(external_id="bench-lanes-user")
    api_key = APIKey.objects.filter(name="bench-lanes").first()
    if api_key is None:
        api_key, _ = APIKey.objects.create_key(name="bench-lanes")
    return Fixture(api_key_id=api_key.pk, event_id=event.pk, recipient_id=recipient.pk)


def reset_tables() -> None:
    """Each variant starts from empty tables, so none pays for the rows of the one before."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(
            "TRUNCATE notifications_inboxmessage, notifications_faileddelivery,"
            " notifications_delivery, notifications_notification CASCADE"
        )


def create_deliveries(fixture: Fixture, count: int, priority: str) -> list[int]:
    """``count`` in-app deliveries, queued with a lease as the accept path leaves them."""
    from django.conf import settings
    from django.utils import timezone

    from notifications.models import Delivery, DeliveryStatus, Notification

    now = timezone.now()
    notifications = [
        Notification(
            id=uuid.uuid4(),
            api_key_id=fixture.api_key_id,
            recipient_id=fixture.recipient_id,
            external_user_id="bench-lanes-user",
            event_id=fixture.event_id,
            data={"n": i},
            priority=priority,
            request_fingerprint="bench-lanes",
        )
        for i in range(count)
    ]
    Notification.objects.bulk_create(notifications, batch_size=1000)
    entry = {"status": DeliveryStatus.QUEUED, "at": now.isoformat(), "attempt": 0}
    lease = now + datetime.timedelta(seconds=settings.NOTIFY_LEASE_SECONDS)
    rows = Delivery.objects.bulk_create(
        [
            Delivery(
                notification_id=n.id,
                channel=INAPP.channel,
                status=DeliveryStatus.QUEUED,
                content={"subject": f"{priority} {i}", "body": "bench"},
                history=[entry],
                queued_at=now,
                lease_until=lease,
            )
            for i, n in enumerate(notifications)
        ],
        batch_size=1000,
    )
    return [row.pk for row in rows]


def publish(delivery_ids: list[int], priority: str) -> int:
    from notifications.services.enqueue import enqueue_deliveries

    return enqueue_deliveries((pk, INAPP.channel, priority) for pk in delivery_ids)


def publish_bulk(delivery_ids: list[int], batch: int) -> int:
    """The backlog as single delivery tasks (``batch`` 0: what ``enqueue_deliveries`` publishes)
    or as batch tasks of ``batch`` deliveries each (what a broadcast's fan-out publishes)."""
    if not batch:
        return publish(delivery_ids, "bulk")
    from config.celery import app

    published = 0
    with app.producer_or_acquire() as producer:
        for start in range(0, len(delivery_ids), batch):
            chunk = delivery_ids[start : start + batch]
            app.send_task(BATCH_TASK, args=(chunk,), queue=BULK_QUEUE, producer=producer)
            published += len(chunk)
    return published


def check_batch_task() -> None:
    tasks = importlib.import_module("notifications.tasks")
    if not hasattr(tasks, BATCH_TASK.rpartition(".")[2]):
        raise BenchError(f"{BATCH_TASK} does not exist: run with --batch 0")


# --- workers ---------------------------------------------------------------------------------


class Worker:
    """``celery -A config worker`` in its own process group, so stopping it stops its pool."""

    def __init__(self, queues: str, concurrency: int, env: dict[str, str]) -> None:
        self.name = f"lanes-{queues.replace(',', '+')}-{uuid.uuid4().hex[:6]}@{HOST}"
        self.argv = [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queues,
                     "-n", self.name, "--concurrency", str(concurrency), "--loglevel", "WARNING",
                     "--without-gossip", "--without-mingle", "--without-heartbeat"]  # fmt: skip
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            self.argv, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(
                f"worker {self.name} exited with {self.proc.returncode}:\n{self.tail()}"
            )

    def tail(self, chars: int = 3000) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-chars:]

    def stop(self) -> None:
        for sig, wait_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
        try:  # pool children the main process left behind
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_ready(workers: list[Worker], deadline: Deadline) -> None:
    from config.celery import app

    pending = {w.name for w in workers}
    until = time.monotonic() + min(WORKER_START_TIMEOUT_S, max(1.0, deadline.left()))
    while pending:
        for worker in workers:
            worker.check_alive()
        if time.monotonic() > until:
            raise BenchError(f"workers {sorted(pending)} did not answer a ping")
        replies = app.control.ping(destination=sorted(pending), timeout=0.5)
        pending -= {name for reply in replies for name in reply}


# --- CPU accounting: how much of the machine was ours ------------------------------------------


CLK_TCK = os.sysconf("SC_CLK_TCK")


def system_ticks() -> list[int]:
    """The aggregate line of /proc/stat: user nice system idle iowait irq softirq steal ..."""
    with open("/proc/stat") as fh:
        return [int(x) for x in fh.readline().split()[1:]]


def our_ticks(workers: list[Worker]) -> int:
    """utime+stime of the workers' process groups, our PostgreSQL backends and this process."""
    groups = {w.proc.pid for w in workers}
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                # Fields after "(comm)": state ppid pgrp ... utime(12th) stime(13th).
                stat = fh.read().rpartition(")")[2].split()
            ours = int(stat[2]) in groups or int(entry.name) == os.getpid()
            if not ours:
                with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                    ours = f" {DB_NAME} ".encode() in fh.read().replace(b"\0", b" ")
        except (OSError, ValueError, IndexError):
            continue
        if ours:
            total += int(stat[11]) + int(stat[12])
    return total


def cpu_share(
    before: tuple[list[int], int], after: tuple[list[int], int], seconds: float
) -> dict[str, float]:
    """Of the machine's capacity during a phase: busy in all, and busy with something else
    than this benchmark (other work on the machine slows every variant it overlaps)."""
    d = [a - b for a, b in zip(after[0], before[0], strict=False)]
    total = sum(d[:8]) or 1
    busy = total - d[3] - d[4]
    capacity = seconds * CLK_TCK * len(os.sched_getaffinity(0)) or 1
    ours = 100 * (after[1] - before[1]) / capacity
    busy_pct = 100 * busy / total
    return {
        "machine_busy_pct": round(busy_pct, 1),
        "ours_pct": round(ours, 1),
        "others_pct": round(max(0.0, busy_pct - ours), 1),
    }


# --- one variant -----------------------------------------------------------------------------


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * pct // 100))
    return sorted_values[int(rank) - 1]


def sent_count(priority: str) -> int:
    from notifications.models import Delivery

    return Delivery.objects.filter(notification__priority=priority, sent_at__isnull=False).count()


def run_variant(
    variant: Variant, fixture: Fixture, args: argparse.Namespace, deadline: Deadline, batch: int
) -> dict[str, Any]:
    client = broker()
    client.flushdb()
    reset_tables()
    started = time.monotonic()
    # Batches drain several times faster: a bigger backlog keeps the window as long.
    backlog = args.batch_backlog if batch else args.backlog
    backlog_ids = create_deliveries(fixture, backlog, "bulk")
    analyze()
    if publish_bulk(backlog_ids, batch) != len(backlog_ids):
        raise BenchError("could not publish the backlog")
    backlog_s = time.monotonic() - started
    env = {
        **os.environ,
        **ENV,
        "CELERY_QUEUE_ORDER_STRATEGY": variant.strategy,
        "CELERY_WORKER_PREFETCH_MULTIPLIER": str(variant.prefetch),
    }
    workers = [Worker(queues, concurrency, env) for queues, concurrency in variant.workers]
    try:
        wait_ready(workers, deadline)
        steady = steady_phase(workers, fixture, args, deadline, backlog)
        burst = burst_phase(workers, fixture, args, deadline, batch) if args.burst else None
    finally:
        for worker in workers:
            worker.stop()
    return {
        "variant": variant.key,
        "label": variant.label,
        "bulk_per_message": batch or 1,
        "queue_order_strategy": variant.strategy,
        "prefetch_multiplier": variant.prefetch,
        "workers": [{"queues": q, "concurrency": c} for q, c in variant.workers],
        "backlog": backlog,
        "backlog_setup_s": round(backlog_s, 2),
        "steady": steady,
        "burst": burst,
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "worker_log_tails": [w.tail(1500) for w in workers],
    }


def steady_phase(
    workers: list[Worker],
    fixture: Fixture,
    args: argparse.Namespace,
    deadline: Deadline,
    backlog: int,
) -> dict[str, Any]:
    """Transactional deliveries at ``args.rate`` per second while the backlog drains."""
    client = broker()
    published: dict[int, float] = {}
    window_start = time.time()
    cpu_before = (system_ticks(), our_ticks(workers))
    bulk_sent_at_start = sent_count("bulk")
    next_at = time.monotonic()
    window_end = next_at + args.window
    # Publish on a fixed schedule until the bulk queue is empty (the backlog no longer waits)
    # or the window closes; a slow iteration does not shift the later ones.
    while time.monotonic() < window_end and client.llen(BULK_QUEUE) > 0:
        deadline.check("the steady phase")
        for worker in workers:
            worker.check_alive()
        (pk,) = create_deliveries(fixture, 1, "transactional")
        published_at = time.time()
        if publish([pk], "transactional") == 1:
            published[pk] = published_at
        next_at += 1.0 / args.rate
        time.sleep(max(0.0, next_at - time.monotonic()))
    window_s = time.time() - window_start
    cpu = cpu_share(cpu_before, (system_ticks(), our_ticks(workers)), window_s)
    backlog_left = int(client.llen(BULK_QUEUE))
    bulk_sent_in_window = sent_count("bulk") - bulk_sent_at_start
    settle(workers, deadline, published, bulk_total=None if backlog_left else backlog)
    bulk_times = bulk_sent_times()
    drained = len(bulk_times) >= backlog
    return {
        "rate_per_s": args.rate,
        "window_s": round(window_s, 2),
        "backlog_left_at_window_end": backlog_left,
        **latency_summary(published, bulk_times),
        "bulk_per_s_in_window": round(bulk_sent_in_window / window_s, 1) if window_s else None,
        "bulk_drained": drained,
        "bulk_drain_s": round(bulk_times[-1] - bulk_times[0], 2) if drained else None,
        "cpu": cpu,
    }


def burst_phase(
    workers: list[Worker],
    fixture: Fixture,
    args: argparse.Namespace,
    deadline: Deadline,
    batch: int,
) -> dict[str, Any]:
    """``args.burst`` transactional deliveries published at once on top of a fresh backlog.

    A steady trickle rarely finds two transactional messages waiting, so it cannot tell the
    queue order strategies apart; a burst (a wave of OTPs) can: round_robin alternates lanes.
    """
    burst_ids = create_deliveries(fixture, args.burst, "transactional")
    # At least one bulk message per burst message, so round_robin can interleave all of them.
    backlog = max(args.burst_backlog, args.burst * batch)
    backlog_ids = create_deliveries(fixture, backlog, "bulk")
    if publish_bulk(backlog_ids, batch) != len(backlog_ids):
        raise BenchError("could not publish the burst's backlog")
    queued_before = int(broker().llen(BULK_QUEUE))
    published_at = time.time()
    published = dict.fromkeys(burst_ids[: publish(burst_ids, "transactional")], published_at)
    settle(workers, deadline, published, bulk_total=None)
    summary = latency_summary(published, bulk_sent_times())
    return {
        "size": args.burst,
        "bulk_backlog": backlog,
        "bulk_messages_queued_at_burst": queued_before,
        **summary,
    }


def settle(
    workers: list[Worker],
    deadline: Deadline,
    published: dict[int, float],
    bulk_total: int | None,
) -> None:
    """Until every published transactional delivery (and ``bulk_total`` bulk ones) is sent."""
    settle_by = time.monotonic() + min(SETTLE_TIMEOUT_S, max(1.0, deadline.left()))
    while time.monotonic() < settle_by:
        for worker in workers:
            worker.check_alive()
        done = sent_ids(list(published))
        if len(done) >= len(published) and (bulk_total is None or sent_count("bulk") >= bulk_total):
            return
        time.sleep(0.1)


def sent_ids(delivery_ids: list[int]) -> dict[int, float]:
    from notifications.models import Delivery

    rows = Delivery.objects.filter(pk__in=delivery_ids, sent_at__isnull=False)
    return {pk: at.timestamp() for pk, at in rows.values_list("pk", "sent_at")}


def bulk_sent_times() -> list[float]:
    from notifications.models import Delivery

    rows = Delivery.objects.filter(notification__priority="bulk", sent_at__isnull=False)
    return sorted(at.timestamp() for at in rows.values_list("sent_at", flat=True))


def latency_summary(published: dict[int, float], bulk_times: list[float]) -> dict[str, Any]:
    sent = sent_ids(list(published))
    latencies = sorted(sent[pk] - at for pk, at in published.items() if pk in sent)
    # How many bulk deliveries were sent between a transactional one's publish and its send:
    # what it waited behind (the prefetched window, the tasks already running, and with
    # round_robin the bulk messages interleaved with a burst).
    ahead = sorted(
        float(_count_between(bulk_times, published[pk], sent[pk])) for pk in published if pk in sent
    )
    return {
        "transactional_published": len(published),
        "transactional_sent": len(latencies),
        "latency_ms": {
            "p50": _ms(percentile(latencies, 50)),
            "p95": _ms(percentile(latencies, 95)),
            "p99": _ms(percentile(latencies, 99)),
            "max": _ms(latencies[-1]) if latencies else None,
            "min": _ms(latencies[0]) if latencies else None,
        },
        "bulk_sent_ahead": {
            "p50": percentile(ahead, 50) if ahead else None,
            "max": ahead[-1] if ahead else None,
        },
    }


def analyze() -> None:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("ANALYZE notifications_notification, notifications_delivery")


def _count_between(sorted_times: list[float], start: float, end: float) -> int:
    import bisect

    return bisect.bisect_left(sorted_times, end) - bisect.bisect_right(sorted_times, start)


def _ms(seconds: float) -> float | None:
    return None if seconds != seconds else round(seconds * 1000, 1)  # NaN: no samples


# --- reporting -------------------------------------------------------------------------------


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| bulk per message | variant | steady: sent | p50 ms | p95 ms | p99 ms | max ms"
        " | bulk ahead p50/max | bulk/s | burst: last sent ms | bulk ahead max | other load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        steady, burst = r["steady"], r["burst"] or {}
        lat, ahead = steady["latency_ms"], steady["bulk_sent_ahead"]
        burst_lat = burst.get("latency_ms", {})
        burst_ahead = burst.get("bulk_sent_ahead", {})
        rows.append(
            f"| {r['bulk_per_message']} | ({r['variant']}) {r['label']}"
            f" | {steady['transactional_sent']}/{steady['transactional_published']}"
            f" | {_fmt(lat['p50'])} | {_fmt(lat['p95'])} | {_fmt(lat['p99'])}"
            f" | {_fmt(lat['max'])} | {_fmt(ahead['p50'], 0)}/{_fmt(ahead['max'], 0)}"
            f" | {_fmt(steady['bulk_per_s_in_window'], 0)}"
            f" | {_fmt(burst_lat.get('max'))} | {_fmt(burst_ahead.get('max'), 0)}"
            f" | {steady['cpu']['others_pct']:.0f} % |"
        )
    return "\n".join(rows)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def machine_facts() -> dict[str, Any]:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SHOW server_version")
        pg_version = cur.fetchone()[0]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],  # read-only
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "celery": importlib.metadata.version("celery"),
        "kombu": importlib.metadata.version("kombu"),
        "postgresql": pg_version,
        "redis": broker().info("server")["redis_version"],
        "git_commit": commit,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backlog", type=int, default=5000, help="bulk deliveries per variant")
    parser.add_argument(
        "--batch-backlog", type=int, default=20000, help="bulk deliveries when --batch > 0"
    )
    parser.add_argument("--rate", type=float, default=5.0, help="transactional per second")
    parser.add_argument(
        "--window", type=float, default=45.0, help="max seconds of transactional traffic"
    )
    parser.add_argument(
        "--burst", type=int, default=100, help="transactional published at once (0: no burst)"
    )
    parser.add_argument(
        "--burst-backlog",
        type=int,
        default=1000,
        help="bulk queued just before the burst (with --batch N: at least burst x N)",
    )
    parser.add_argument(
        "--batch",
        default="0,100",
        help="bulk deliveries per message, one run of every variant per value (0: single tasks)",
    )
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"any of {','.join(VARIANTS)}"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "lanes.json")
    parser.add_argument("--deadline", type=float, default=1200.0, help="whole script, seconds")
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    try:
        args.batch = [int(b) for b in args.batch.split(",") if b.strip()]
    except ValueError:
        parser.error("--batch: a comma-separated list of integers")
    if not args.batch or min(args.batch) < 0:
        parser.error("--batch: at least one value, none negative")
    unknown = set(args.variants) - set(VARIANTS)
    if unknown or not args.variants:
        parser.error(f"--variants: unknown {sorted(unknown)}; choose from {','.join(VARIANTS)}")
    if args.burst < 0 or args.burst_backlog < 0:
        parser.error("--burst and --burst-backlog must be >= 0")
    if (
        args.backlog < 1
        or args.batch_backlog < 1
        or args.rate <= 0
        or args.window <= 0
        or args.deadline <= 0
    ):
        parser.error("--backlog, --rate, --window and --deadline must be positive")
    return args


def _raise_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    deadline = Deadline(args.deadline)
    # Both stop the run the same way: run_variant's finally stops its workers, ours flushes.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        ensure_database()
        broker().flushdb()
        print(f"migrate {DB_NAME} ...", flush=True)
        migrate(deadline)
        import django

        django.setup()
        fixture = seed()
        facts = machine_facts()
        results = []
        if any(args.batch):
            check_batch_task()
        for batch, key in [(b, k) for b in args.batch for k in args.variants]:
            variant = VARIANTS[key]
            shape = ", ".join(f"-Q {q} -c {c}" for q, c in variant.workers)
            messages = f"in batches of {batch}" if batch else "one per message"
            backlog = args.batch_backlog if batch else args.backlog
            print(f"({key}) {variant.label}: {backlog} bulk queued {messages}, {shape}",
                  flush=True)  # fmt: skip
            result = run_variant(variant, fixture, args, deadline, batch)
            steady, burst = result["steady"], result["burst"]
            lat, cpu = steady["latency_ms"], steady["cpu"]
            print(
                f"    steady: {steady['transactional_sent']}/{steady['transactional_published']}"
                f" sent in {steady['window_s']:.0f}s: p50 {_fmt(lat['p50'])}"
                f" p95 {_fmt(lat['p95'])} p99 {_fmt(lat['p99'])} max {_fmt(lat['max'])} ms;"
                f" bulk {_fmt(steady['bulk_per_s_in_window'], 0)}/s; machine busy"
                f" {cpu['machine_busy_pct']:.0f} %, others {cpu['others_pct']:.0f} %",
                flush=True,
            )
            if burst:
                blat = burst["latency_ms"]
                print(
                    f"    burst of {burst['size']}: p50 {_fmt(blat['p50'])} ms, last sent after"
                    f" {_fmt(blat['max'])} ms; {_fmt(burst['bulk_sent_ahead']['max'], 0)} bulk"
                    " sent meanwhile",
                    flush=True,
                )
            results.append(result)
        complete = all(
            phase["transactional_sent"] == phase["transactional_published"]
            for r in results
            for phase in (r["steady"], r["burst"])
            if phase
        )
        report = {
            "valid": complete,
            "parameters": {
                "backlog": args.backlog,
                "batch_backlog": args.batch_backlog,
                "rate_per_s": args.rate,
                "window_s": args.window,
                "burst": args.burst,
                "burst_backlog": args.burst_backlog,
                "bulk_per_message": args.batch,
                "channel": INAPP.channel,
                "latency": "Delivery.sent_at (PostgreSQL now()) - time.time() at publish",
                "worker": "celery -A config worker --loglevel WARNING --without-gossip "
                "--without-mingle --without-heartbeat (prefork)",
                "acks_late": True,
            },
            "machine": facts | {"loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
            "variants": results,
            "variant_definitions": {k: asdict(v) for k, v in VARIANTS.items()},
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print()
        print(table(results))
        print(f"\n{'VALID' if complete else 'INVALID: some transactional not sent'};"
              f" wrote {args.out}")  # fmt: skip
        return 0 if complete else 1
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        try:
            broker().flushdb()
        except redis.RedisError as exc:
            print(f"could not flush Redis db 3: {exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
