"""How many inbox streams one ASGI process holds, and how fast a notification reaches one.

    python bench/inbox_stream.py [--streams 5000] [--rate 50] [--seconds 20] [--runs 1]

Starts, on its own database and Redis db: gunicorn (the API), one in-app worker (both lanes,
as `make run`), and one uvicorn process serving GET /api/inbox/stream. Seeds --streams
recipients, opens one stream per recipient (a recipient token each, asyncio clients in this
process), measures the uvicorn process's memory, then posts in-app notifications through
POST /api/notify at --rate per second to random recipients with an open stream and times
each from just before its POST to the event's arrival on that recipient's stream (accept →
worker → inbox row → Redis → uvicorn → client). Prints the figures and writes them to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import accept  # noqa: E402
from bench import broadcast_data as data  # noqa: E402
from devtools import run as stack  # noqa: E402

HOST = "127.0.0.1"
DB_NAME = "notifications_stream_bench"
BROKER_URL = f"redis://{HOST}:6379/2"
accept.DB_NAME = DB_NAME
accept.BROKER_URL = BROKER_URL
SECRET_KEY = "bench-inbox-stream-" + os.urandom(8).hex()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=50.0, help="notifications per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="of notifications")
    parser.add_argument("--runs", type=int, default=1, help="load phases on the same streams")
    parser.add_argument("--port", type=int, default=18300, help="API; the stream the next one")
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds, whole script")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/inbox_stream.json")
    args = parser.parse_args(argv)
    if args.streams < 1 or args.rate <= 0 or args.seconds <= 0 or args.runs < 1:
        parser.error("--streams, --rate, --seconds and --runs must be positive")
    return args


def stack_env() -> dict[str, str]:
    env = accept.bench_env()
    env.update(SECRET_KEY=SECRET_KEY, DATABASE_URL=f"postgres://postgres@{HOST}:5432/{DB_NAME}")
    env["CELERY_BROKER_URL"] = BROKER_URL
    return env


def tokens(count: int) -> list[tuple[str, str]]:
    """(userId, token) of the seeded recipients, minted as POST .../tokens does."""
    os.environ.update(stack_env())
    import django

    django.setup()
    from preferences import access
    from preferences.models import Recipient

    rows = Recipient.objects.filter(external_id__startswith=data.USER_PREFIX).order_by("pk")
    return [
        (external_id, access.token_mint(recipient_id=pk, generation=g, ttl_seconds=3600)[0])
        for pk, external_id, g in rows.values_list("pk", "external_id", "token_generation")[:count]
    ]


class Client:
    """One open stream: reads events, and notes when each order's message arrived."""

    def __init__(self, user_id: str, token: str) -> None:
        self.user_id, self.token = user_id, token
        self.arrived: dict[str, float] = {}
        self.opened = asyncio.Event()
        self.failed = ""

    async def run(self, port: int) -> None:
        try:
            reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
            writer.write(
                f"GET /api/inbox/stream HTTP/1.1\r\nHost: {HOST}\r\n"
                f"Authorization: Bearer {self.token}\r\nAccept: text/event-stream\r\n\r\n".encode()
            )
            status = await reader.readline()
            if b" 200 " not in status:
                self.failed = status.decode().strip()
                self.opened.set()
                return
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            self.opened.set()
            while line := await reader.readline():
                if line.startswith(b"data: "):
                    event = json.loads(line[6:])
                    if event.get("type") == "message":
                        order = str(event["message"]["data"].get("orderId", ""))
                        self.arrived[order] = time.time()
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            self.failed = self.failed or repr(exc)
            self.opened.set()


def post_notify(port: int, api_key: str, user_id: str, order: str) -> int:
    body = json.dumps(
        {"userId": user_id, "event": "order_shipped", "channels": ["inapp"],
         "data": {"orderId": order}}
    ).encode()  # fmt: skip
    request = urllib.request.Request(
        f"http://{HOST}:{port}/api/notify", data=body, method="POST",
        headers={"Authorization": f"Api-Key {api_key}", "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        return int(response.status)


async def load_phase(
    clients: list[Client], args: argparse.Namespace, api_key: str, phase: int
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    count = int(args.rate * args.seconds)
    sent: dict[str, tuple[Client, float]] = {}
    started = time.monotonic()
    posts = []
    for i in range(count):
        client = random.choice(clients)
        order = f"p{phase}-{i}"
        await asyncio.sleep(max(0.0, started + i / args.rate - time.monotonic()))
        sent[order] = (client, time.time())
        posts.append(loop.run_in_executor(None, post_notify, args.port, api_key,
                                          client.user_id, order))  # fmt: skip
    statuses = await asyncio.gather(*posts, return_exceptions=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(o not in c.arrived for o, (c, _) in sent.items()):
        await asyncio.sleep(0.1)
    latencies = sorted(
        (client.arrived[order] - posted) * 1000
        for order, (client, posted) in sent.items()
        if order in client.arrived
    )
    return {
        "notifications": count,
        "accepted": sum(1 for s in statuses if s == 202),
        "received": len(latencies),
        "missing": count - len(latencies),
        "p50_ms": round(accept.percentile(latencies, 50), 1) if latencies else None,
        "p99_ms": round(accept.percentile(latencies, 99), 1) if latencies else None,
        "max_ms": round(latencies[-1], 1) if latencies else None,
    }


def rss_mb(pid: int) -> float:
    total = 0
    for child in [pid, *_children(pid)]:
        try:
            total += accept_kib(child)
        except OSError:
            pass
    return round(total / 1024, 1)


def accept_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / accept.CLK_TCK


async def measure(args: argparse.Namespace, api_key: str, stream_pid: int) -> dict[str, Any]:
    users = await asyncio.to_thread(tokens, args.streams)
    clients = [Client(user_id, token) for user_id, token in users]
    idle_rss = rss_mb(stream_pid)
    opened_at = time.monotonic()
    tasks = []
    for i, client in enumerate(clients):
        tasks.append(asyncio.create_task(client.run(args.port + 1)))
        if i % 200 == 199:
            await asyncio.sleep(0.05)  # a burst of 200 connects at a time
    await asyncio.wait_for(asyncio.gather(*(c.opened.wait() for c in clients)), timeout=300)
    open_seconds = time.monotonic() - opened_at
    failed = [c.failed for c in clients if c.failed]
    held = len(clients) - len(failed)
    await asyncio.sleep(2)
    loaded_rss = rss_mb(stream_pid)
    cpu_before, wall_before = cpu_seconds(stream_pid), time.monotonic()
    phases = [await load_phase([c for c in clients if not c.failed], args, api_key, p)
              for p in range(args.runs)]  # fmt: skip
    stream_cpu = cpu_seconds(stream_pid) - cpu_before
    load_seconds = time.monotonic() - wall_before
    still = sum(1 for t in tasks if not t.done())
    for task in tasks:
        task.cancel()
    return {
        "streams_requested": args.streams,
        "streams_held": held,
        "streams_open_after_load": still,
        "failed_examples": failed[:3],
        "open_seconds": round(open_seconds, 1),
        "stream_process_rss_mb": {"before": idle_rss, "with_streams": loaded_rss},
        "rss_kb_per_stream": round((loaded_rss - idle_rss) * 1024 / held, 1) if held else None,
        "stream_process_cpu_share_during_load": round(stream_cpu / load_seconds, 3),
        "phases": phases,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    deadline = accept.Deadline(args.deadline)
    env = stack_env()
    sup = stack.Supervisor(env)
    server = accept.Server(
        argparse.Namespace(port=args.port, workers=2, worker_class="sync", threads=1), env
    )
    try:
        accept.flush_broker()
        data.drop_database(DB_NAME)
        accept.ensure_database()
        accept.manage(env, deadline, "migrate", "--noinput", "-v", "0")
        accept.manage(env, deadline, "load_catalog")
        api_key = accept.manage(env, deadline, "create_api_key", "bench").strip().splitlines()[-1]
        data.seed(DB_NAME, args.streams)
        server.start(deadline)
        sup.start("worker-inapp", stack.worker_argv("inapp", concurrency=2))
        sup.start("stream", [sys.executable, "-m", "uvicorn", "config.asgi:application",
                             "--host", HOST, "--port", str(args.port + 1), "--no-access-log",
                             "--backlog", "4096"])  # fmt: skip
        stack.wait_until("the stream process", lambda: stack.port_answers(args.port + 1), sup, 30.0)
        figures = asyncio.run(measure(args, api_key, sup.pids()["stream"]))
        figures["machine"] = accept.machine_facts()
    except accept.BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        sup.stop()
        server.stop()
        data.drop_database(DB_NAME)
    figures["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps({k: v for k, v in figures.items() if k != "machine"}, indent=2))
    latency = [p["p99_ms"] for p in figures["phases"] if p["p99_ms"] is not None]
    p50 = [p["p50_ms"] for p in figures["phases"] if p["p50_ms"] is not None]
    if latency:
        print(
            f"{figures['streams_held']:,} streams held, "
            f"{figures['stream_process_rss_mb']['with_streams']} MB; accept -> event p50 "
            f"{statistics.median(p50)} ms, p99 {statistics.median(latency)} ms (median of "
            f"{len(latency)} phase(s)); wrote {args.out}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
