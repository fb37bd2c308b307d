"""Accept-path benchmark: ``POST /api/notify`` against a bare authenticated INSERT.

    .venv/bin/python bench/accept.py [--requests N] [--concurrency C] [--runs R] [--port P]
                                     [--out bench/results/accept.json]

Needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 (``make services``). It uses
only the database ``notifications_bench`` and Redis db 13, starts one gunicorn on 127.0.0.1
and stops it (and flushes db 13) at the end, on error and on Ctrl-C. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import importlib.metadata
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import redis

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's bin/, not resolved through its symlink
HOST = "127.0.0.1"  # the only host this script talks to
DB_NAME = "notifications_bench"
DATABASE_URL = f"postgres://postgres@{HOST}:5432/{DB_NAME}"
BROKER_URL = f"redis://{HOST}:6379/13"
NOTIFY_PATH = "/api/notify"
BARE_PATH = "/bench/bare-insert"
ENDPOINTS = {"notify": NOTIFY_PATH, "bare": BARE_PATH}
REQUEST_TIMEOUT_S = 30.0
SERVER_START_TIMEOUT_S = 30.0
CLK_TCK = os.sysconf("SC_CLK_TCK")

BARE_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS bench_bare_insert (
    id bigserial PRIMARY KEY,
    body jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""


class BenchError(Exception):
    pass


class Deadline:
    """One wall-clock budget for the whole script: every wait and every loop checks it."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        return self.at - time.monotonic()

    def check(self, what: str) -> None:
        if self.left() <= 0:
            raise BenchError(f"global deadline passed during {what}")


# --- setup -----------------------------------------------------------------------------------


def bench_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="bench.settings",
        DATABASE_URL=DATABASE_URL,
        CELERY_BROKER_URL=BROKER_URL,
        DEBUG="false",  # DEBUG keeps every query in memory: never measure with it
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    return env


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


def bench_db_query(sql: str, params: list[Any] | None = None) -> Any:
    conn = psycopg2.connect(host=HOST, port=5432, user="postgres", dbname=DB_NAME)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchone() if cur.description else None
    finally:
        conn.close()


def manage(env: dict[str, str], deadline: Deadline, *args: str) -> str:
    deadline.check(f"manage.py {args[0]}")
    done = subprocess.run(
        [str(BIN / "python"), "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=max(1.0, min(300.0, deadline.left())),
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"manage.py {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def flush_broker() -> None:
    redis.Redis.from_url(BROKER_URL, socket_timeout=5).flushdb()


def queued_tasks() -> dict[str, int]:
    client = redis.Redis.from_url(BROKER_URL, socket_timeout=5)
    # kombu's Redis transport keeps each queue as a list named after the queue.
    return {queue: int(client.llen(queue)) for queue in ("email", "inapp", "push", "sms")}


# --- the server ------------------------------------------------------------------------------


class Server:
    """One gunicorn in its own process group, so stopping it stops its workers too."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str]) -> None:
        self.port: int = args.port
        self.cmd = [
            str(BIN / "gunicorn"),
            "config.wsgi:application",  # DJANGO_SETTINGS_MODULE=bench.settings wins
            f"--bind={HOST}:{args.port}",
            f"--workers={args.workers}",
            f"--worker-class={args.worker_class}",
            f"--threads={args.threads}",
            "--timeout=60",
            "--graceful-timeout=5",
            "--log-level=warning",
            # gunicorn >= 24 otherwise opens ~/.gunicorn/gunicorn.ctl, one path shared by every
            # gunicorn of the user: it would clash with another server on the same machine.
            "--no-control-socket",
        ]
        self.env = env
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, deadline: Deadline) -> None:
        with socket.socket() as probe:
            if probe.connect_ex((HOST, self.port)) == 0:
                raise BenchError(f"something already listens on {HOST}:{self.port}")
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        ready_by = time.monotonic() + min(SERVER_START_TIMEOUT_S, max(1.0, deadline.left()))
        while time.monotonic() < ready_by:
            if self.proc.poll() is not None:
                raise BenchError(f"gunicorn exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=5)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
                conn.close()
            except OSError:
                pass
            time.sleep(0.2)
        raise BenchError(
            f"gunicorn not healthy after {SERVER_START_TIMEOUT_S}s:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=wait_s)
                return
            except subprocess.TimeoutExpired:
                continue

    def cpu_ticks(self) -> dict[int, int]:
        """utime+stime per process of gunicorn's process group (master and workers)."""
        return {} if self.proc is None else _cpu_ticks(lambda st, _cmd: st[2] == self.proc.pid)

    def log_tail(self, chars: int = 3000) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-chars:]


def _cpu_ticks(match: Any) -> dict[int, int]:
    ticks: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                # Fields after "(comm)": state ppid pgrp ... utime(12th) stime(13th).
                stat = fh.read().rpartition(")")[2].split()
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if match([int(x) if x.lstrip("-").isdigit() else x for x in stat], cmdline):
            ticks[int(entry.name)] = int(stat[11]) + int(stat[12])
    return ticks


def pg_backend_ticks() -> dict[int, int]:
    """CPU of the PostgreSQL backends serving our database (their title names it)."""
    # e.g. "postgres: 15/main: postgres notifications_bench 127.0.0.1(51234) idle"
    return _cpu_ticks(lambda _st, cmd: cmd.startswith("postgres:") and f" {DB_NAME} " in cmd)


def system_cpu() -> list[int]:
    """The aggregate line of /proc/stat: user nice system idle iowait irq softirq steal ..."""
    with open("/proc/stat") as fh:
        return [int(x) for x in fh.readline().split()[1:]]


def system_share(before: list[int], after: list[int]) -> dict[str, float]:
    """Of all cores' time during the phase: busy and waiting-on-disk, in percent."""
    d = [a - b for a, b in zip(after, before, strict=False)]
    total = sum(d[:8]) or 1
    busy = total - d[3] - d[4]
    return {"busy_pct": round(100 * busy / total, 1), "iowait_pct": round(100 * d[4] / total, 1)}


def ticks_delta(before: dict[int, int], after: dict[int, int]) -> float:
    """CPU seconds used between two snapshots (a process that exited in between is lost)."""
    return sum(t - before.get(pid, 0) for pid, t in after.items()) / CLK_TCK


# --- the load --------------------------------------------------------------------------------


def request_body(tag: str, i: int) -> bytes:
    # Unique data and idempotency key: every request is a fresh accept, never a replay.
    return json.dumps(
        {
            "userId": "demo-user",
            "event": "order_shipped",
            "channels": ["email", "inapp"],
            "data": {"orderId": f"{tag}-{i}", "eta": "tomorrow"},
            "idempotencyKey": f"bench:{tag}:{i}",
        }
    ).encode()


@dataclass
class Phase:
    endpoint: str
    requests: int
    ok: int = 0
    errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    accepted_per_s: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    mean_ms: float = 0.0
    max_ms: float = 0.0
    connections_opened: int = 0
    cpu_s: dict[str, float] = field(default_factory=dict)
    # gunicorn + our PostgreSQL backends, per accepted request: unlike throughput, it barely
    # moves when other work shares the machine.
    server_cpu_ms: float = 0.0
    machine_cpu: dict[str, float] = field(default_factory=dict)
    loadavg_after: list[float] = field(default_factory=list)


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def run_phase(
    *,
    endpoint: str,
    port: int,
    api_key: str,
    requests: int,
    concurrency: int,
    deadline: Deadline,
    server: Server,
) -> Phase:
    path = ENDPOINTS[endpoint]
    expected = 202  # a replay (200) would mean the request was not a real accept
    tag = uuid.uuid4().hex[:12]
    headers = {"Content-Type": "application/json", "Authorization": f"Api-Key {api_key}"}
    todo = iter(range(requests))
    todo_lock = threading.Lock()
    stop = threading.Event()
    per_thread: list[tuple[list[float], Counter[str], list[str], int]] = []
    out_lock = threading.Lock()

    def worker() -> None:
        latencies: list[float] = []
        statuses: Counter[str] = Counter()
        samples: list[str] = []
        opened = 0
        conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT_S)
        try:
            while not stop.is_set() and deadline.left() > 0:
                with todo_lock:
                    i = next(todo, None)
                if i is None:
                    break
                body = request_body(tag, i)
                if conn.sock is None:
                    opened += 1  # sync workers answer "Connection: close": one per request
                t0 = time.perf_counter()
                try:
                    conn.request("POST", path, body=body, headers=headers)
                    resp = conn.getresponse()
                    payload = resp.read()
                    status = str(resp.status)
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()
                    status, payload = type(exc).__name__, str(exc).encode()
                elapsed = time.perf_counter() - t0
                statuses[status] += 1
                if status == str(expected):
                    latencies.append(elapsed)
                elif len(samples) < 5:
                    samples.append(f"{status}: {payload[:300]!r}")
        finally:
            conn.close()
            with out_lock:
                per_thread.append((latencies, statuses, samples, opened))

    cpu_client0 = time.process_time()
    cpu_server0, cpu_pg0, system0 = server.cpu_ticks(), pg_backend_ticks(), system_cpu()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():  # short joins so Ctrl-C reaches the main thread
                thread.join(0.2)
    except BaseException:
        stop.set()
        raise
    elapsed = time.perf_counter() - started
    cpu_client = time.process_time() - cpu_client0
    cpu_server = ticks_delta(cpu_server0, server.cpu_ticks())
    cpu_pg = ticks_delta(cpu_pg0, pg_backend_ticks())
    system = system_share(system0, system_cpu())

    latencies = sorted(x for lat, _, _, _ in per_thread for x in lat)
    statuses: Counter[str] = Counter()
    for _, st, _, _ in per_thread:
        statuses.update(st)
    done = sum(statuses.values())
    ok = statuses.get(str(expected), 0)
    return Phase(
        endpoint=endpoint,
        requests=requests,
        ok=ok,
        # Requests never sent (deadline) count as errors too: the run is then invalid.
        errors=requests - ok,
        statuses=dict(statuses) | ({"not_sent": requests - done} if done < requests else {}),
        error_samples=[s for _, _, samples, _ in per_thread for s in samples][:10],
        elapsed_s=round(elapsed, 3),
        accepted_per_s=round(ok / elapsed, 1) if elapsed > 0 else 0.0,
        p50_ms=round(percentile(latencies, 50) * 1000, 2),
        p95_ms=round(percentile(latencies, 95) * 1000, 2),
        p99_ms=round(percentile(latencies, 99) * 1000, 2),
        mean_ms=round(statistics.fmean(latencies) * 1000, 2) if latencies else math.nan,
        max_ms=round(latencies[-1] * 1000, 2) if latencies else math.nan,
        connections_opened=sum(o for _, _, _, o in per_thread),
        cpu_s={
            "client": round(cpu_client, 2),
            "gunicorn": round(cpu_server, 2),
            "postgres_backends": round(cpu_pg, 2),
        },
        server_cpu_ms=round((cpu_server + cpu_pg) / ok * 1000, 2) if ok else math.nan,
        machine_cpu=system,
        loadavg_after=[round(x, 2) for x in os.getloadavg()],
    )


# --- reporting -------------------------------------------------------------------------------

METRICS = ("accepted_per_s", "p50_ms", "p95_ms", "p99_ms", "server_cpu_ms")


def run_summary(phases: dict[str, Phase]) -> dict[str, float]:
    notify, bare = phases["notify"], phases["bare"]
    return {
        "throughput_ratio": round(notify.accepted_per_s / bare.accepted_per_s, 3)
        if bare.accepted_per_s
        else math.nan,
        "p50_ratio": round(notify.p50_ms / bare.p50_ms, 3) if bare.p50_ms else math.nan,
        "server_cpu_ratio": round(notify.server_cpu_ms / bare.server_cpu_ms, 3)
        if bare.server_cpu_ms
        else math.nan,
    }


def median_of(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def phase_line(phase: Phase) -> str:
    cpu = phase.cpu_s
    return (
        f"  {phase.endpoint:<7}{phase.ok:>6}{phase.errors:>5}{phase.accepted_per_s:>9.1f}"
        f"{phase.p50_ms:>8.1f}{phase.p95_ms:>8.1f}{phase.p99_ms:>8.1f}{phase.server_cpu_ms:>8.2f}"
        f"{phase.elapsed_s:>8.1f}"
        f"   cpu s: client {cpu['client']:.1f} gunicorn {cpu['gunicorn']:.1f}"
        f" pg {cpu['postgres_backends']:.1f}; machine busy {phase.machine_cpu['busy_pct']:.0f}%"
        f" iowait {phase.machine_cpu['iowait_pct']:.0f}%"
    )


HEADER = "  endpoint    ok  err    acc/s  p50 ms  p95 ms  p99 ms  cpu ms  wall s"


def median_table(median: dict[str, Any]) -> str:
    rows = [
        "| endpoint | accepted/s | p50 ms | p95 ms | p99 ms | server CPU ms/req |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for endpoint in ENDPOINTS:
        m = median[endpoint]
        rows.append(
            f"| {NOTIFY_PATH if endpoint == 'notify' else BARE_PATH} | {m['accepted_per_s']:.1f}"
            f" | {m['p50_ms']:.1f} | {m['p95_ms']:.1f} | {m['p99_ms']:.1f}"
            f" | {m['server_cpu_ms']:.2f} |"
        )
    rows.append(
        f"| notify / bare | {median['throughput_ratio']:.2f} x | {median['p50_ratio']:.2f} x"
        f" | | | {median['server_cpu_ratio']:.2f} x |"
    )
    return "\n".join(rows)


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
    pg_version = bench_db_query("SHOW server_version")[0]
    # What a run's PostgreSQL figures depend on most; a deployment's would be tuned.
    pg_settings = {
        name: bench_db_query(f"SHOW {name}")[0]
        for name in ("autovacuum", "shared_buffers", "max_wal_size", "checkpoint_timeout")
    }
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "django": importlib.metadata.version("django"),
        "djangorestframework": importlib.metadata.version("djangorestframework"),
        "gunicorn": importlib.metadata.version("gunicorn"),
        "postgresql": pg_version,
        "postgresql_settings": pg_settings,
        "redis": redis.Redis.from_url(BROKER_URL, socket_timeout=5).info("server")["redis_version"],
        "git_commit": commit,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="per endpoint per run")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--port", type=int, default=18100)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "accept.json")
    parser.add_argument("--warmup", type=int, default=100, help="per endpoint, not measured")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--worker-class", default="sync")
    parser.add_argument("--threads", type=int, default=1, help="threads per gunicorn worker")
    parser.add_argument("--deadline", type=float, default=1200.0, help="whole script, seconds")
    args = parser.parse_args(argv)
    for name in ("requests", "concurrency", "runs", "workers", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup < 0 or args.deadline <= 0:
        parser.error("--warmup must be >= 0 and --deadline > 0")
    return args


def _raise_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    deadline = Deadline(args.deadline)
    # Both stop the run the same way: the finally below stops gunicorn and flushes db 13.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    env = bench_env()
    server = Server(args, env)
    try:
        ensure_database()
        flush_broker()
        print("migrate, seed_demo, create_api_key ...", flush=True)
        manage(env, deadline, "migrate", "--noinput", "-v", "0")
        manage(env, deadline, "seed_demo")
        api_key = manage(env, deadline, "create_api_key", "bench").strip().splitlines()[-1]
        bench_db_query(BARE_TABLE_SQL)
        facts = machine_facts()
        server.start(deadline)
        print(f"gunicorn: {' '.join(server.cmd[1:])}", flush=True)

        load = {
            "port": args.port,
            "api_key": api_key,
            "concurrency": args.concurrency,
            "deadline": deadline,
            "server": server,
        }
        warmup: dict[str, Any] = {}
        if args.warmup:
            for endpoint in ENDPOINTS:
                phase = run_phase(endpoint=endpoint, requests=args.warmup, **load)
                if phase.errors:
                    raise BenchError(f"warm-up of {endpoint} failed: {phase.error_samples}")
            warmup["tasks_in_broker_after_warmup"] = queued_tasks()
            flush_broker()
        warmup["sample_notify_response"] = _sample_notify(args.port, api_key)

        runs: list[dict[str, Any]] = []
        for r in range(args.runs):
            # ABAB...: on a shared machine, drift then hurts both endpoints alike.
            order = list(ENDPOINTS) if r % 2 == 0 else list(reversed(ENDPOINTS))
            phases: dict[str, Phase] = {}
            print(f"run {r + 1}/{args.runs} ({' then '.join(order)})", flush=True)
            print(HEADER)
            for endpoint in order:
                deadline.check(f"run {r + 1}")
                phases[endpoint] = run_phase(endpoint=endpoint, requests=args.requests, **load)
                print(phase_line(phases[endpoint]), flush=True)
                flush_broker()  # between phases, outside the timing: keeps Redis memory flat
            summary = run_summary(phases)
            print(
                f"  notify/bare: throughput {summary['throughput_ratio']:.2f}"
                f"  p50 {summary['p50_ratio']:.2f}  server CPU {summary['server_cpu_ratio']:.2f}",
                flush=True,
            )
            runs.append({"order": order, **summary, **{e: asdict(p) for e, p in phases.items()}})

        median: dict[str, Any] = {
            endpoint: {m: median_of([run[endpoint][m] for run in runs]) for m in METRICS}
            for endpoint in ENDPOINTS
        }
        median["throughput_ratio"] = median_of([run["throughput_ratio"] for run in runs])
        median["p50_ratio"] = median_of([run["p50_ratio"] for run in runs])
        median["server_cpu_ratio"] = median_of([run["server_cpu_ratio"] for run in runs])
        errors = sum(run[e]["errors"] for run in runs for e in ENDPOINTS)
        server_log = server.log_tail(20000)
        report = {
            "valid": errors == 0,
            "errors": errors,
            "parameters": {
                "requests": args.requests,
                "concurrency": args.concurrency,
                "runs": args.runs,
                "warmup": args.warmup,
                "port": args.port,
                "gunicorn": server.cmd[1:],
                "client": "python threads, one http.client.HTTPConnection each",
                "channels": ["email", "inapp"],
            },
            "machine": facts | {"loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
            "warmup": warmup,
            "median": median,
            "runs": runs,
            "server_log_lines": len(server_log.splitlines()),
            "server_log_tail": server_log[-2000:],
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nmedian of {args.runs} run(s), {args.requests} requests, c={args.concurrency}:")
        print(median_table(median))
        print(f"\n{'VALID' if errors == 0 else f'INVALID: {errors} errors'}; wrote {args.out}")
        return 0 if errors == 0 else 1
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        server.stop()
        try:
            flush_broker()
        except redis.RedisError as exc:
            print(f"could not flush Redis db 13: {exc}", file=sys.stderr)


def _sample_notify(port: int, api_key: str) -> Any:
    """One accept, to show (and record) that both channels really are queued."""
    conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT_S)
    try:
        conn.request(
            "POST",
            NOTIFY_PATH,
            body=request_body(uuid.uuid4().hex[:12], 0),
            headers={"Content-Type": "application/json", "Authorization": f"Api-Key {api_key}"},
        )
        resp = conn.getresponse()
        body = json.loads(resp.read())
    finally:
        conn.close()
    statuses = {d["channel"]: d["status"] for d in body.get("deliveries", [])}
    if resp.status != 202 or statuses != {"email": "queued", "inapp": "queued"}:
        raise BenchError(f"notify does not queue both channels: {resp.status} {body}")
    return body


if __name__ == "__main__":
    sys.exit(main())
