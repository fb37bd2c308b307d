"""Slow-client benchmark: /healthz and ``POST /api/notify`` latency with 0 and with 50 uploads
stalled mid-body, through nginx in front of gunicorn (2 sync workers), as `make run` serves.

    .venv/bin/python bench/slow_clients.py [--requests N] [--stalled S] [--runs R] [--port P]
                                           [--out bench/results/slow_clients.json]

Uses accept.py's database (``notifications_bench``) and Redis db 13 (flushed at the end).
Each stalled connection sends the headers of ``POST /api/notify`` with Content-Length: 1000
and 10 bytes of body, then nothing (issue 11, defect 2: without the proxy two of them made
every other request wait 30 s). Per run and condition: N requests to each endpoint, one at a
time, each on a new connection; p50/p99 per endpoint (nearest rank), and the median over runs.
The stalled connections are opened fresh for each phase (nginx cuts them after its 10 s body
timeout) and checked to be still unanswered at its end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import accept  # noqa: E402
from devtools import proxy  # noqa: E402
from devtools.supervisor import RunError  # noqa: E402

HOST = accept.HOST
# Per request: a request stuck this long (the defect's hang) counts as an error, not a latency.
TIMEOUT_S = 30.0


def _stall(port: int, key: str) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=5)
    sock.sendall(
        b"POST /api/notify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Authorization: Api-Key {key}\r\nContent-Length: 1000\r\n\r\n".encode()
        + b'{"userId":'
    )
    return sock


def _still_stalled(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return not sock.recv(1)
    except BlockingIOError:
        return True
    except OSError:
        return False


def _timed(port: int, method: str, path: str, key: str, body: bytes | None) -> tuple[int, float]:
    started = time.perf_counter()
    conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT_S)
    headers = {"Authorization": f"Api-Key {key}", "Content-Type": "application/json"}
    try:
        conn.request(method, path, body, headers)
        response = conn.getresponse()
        response.read()
        status = response.status
    except OSError:
        status = 0
    finally:
        conn.close()
    return status, (time.perf_counter() - started) * 1000


def run_phase(port: int, key: str, stalled: int, requests: int, tag: str) -> dict[str, Any]:
    socks = [_stall(port, key) for _ in range(stalled)]
    try:
        latencies: dict[str, list[float]] = {"healthz": [], "notify": []}
        errors: dict[str, int] = {"healthz": 0, "notify": 0}
        for i in range(requests):
            status, ms = _timed(port, "GET", "/healthz", key, None)
            latencies["healthz"].append(ms)
            errors["healthz"] += status != 200
            status, ms = _timed(port, "POST", "/api/notify", key, accept.request_body(tag, i))
            latencies["notify"].append(ms)
            errors["notify"] += status != 202
        still = sum(_still_stalled(sock) for sock in socks)
    finally:
        for sock in socks:
            sock.close()
    result: dict[str, Any] = {"stalled": stalled, "still_stalled_at_end": still}
    for name, values in latencies.items():
        ordered = sorted(values)
        result[name] = {
            "requests": requests,
            "errors": errors[name],
            "p50_ms": round(accept.percentile(ordered, 50), 2),
            "p99_ms": round(accept.percentile(ordered, 99), 2),
            "max_ms": round(ordered[-1], 2),
        }
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100, help="per endpoint and phase")
    parser.add_argument("--stalled", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--port", type=int, default=18110)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/slow_clients.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = accept.bench_env()
    os.environ.update(env)
    import django

    django.setup()  # proxy.max_body_size() reads the settings
    deadline = accept.Deadline(1200)
    with socket.socket() as probe:
        taken = probe.connect_ex((HOST, args.port)) == 0
    if taken:
        print(f"bench failed: port {args.port} is in use", file=sys.stderr)
        return 2
    try:
        accept.ensure_database()
        accept.manage(env, deadline, "migrate", "--noinput", "-v", "0")
        accept.manage(env, deadline, "seed_demo")
        key = accept.manage(env, deadline, "create_api_key", "bench").strip().splitlines()[-1]
        runs = []
        with proxy.served(env, Path(tempfile.mkdtemp(prefix="bench-slow-")), args.port):
            for run in range(args.runs):
                for stalled in (0, args.stalled):
                    deadline.check(f"run {run + 1}")
                    phase = run_phase(args.port, key, stalled, args.requests, f"slow{time.time()}")
                    phase["run"] = run + 1
                    runs.append(phase)
                    print(
                        f"run {run + 1} stalled {stalled:>3}: "
                        + "  ".join(
                            f"{name} p50 {phase[name]['p50_ms']:6.1f} ms p99 "
                            f"{phase[name]['p99_ms']:6.1f} ms errors {phase[name]['errors']}"
                            for name in ("healthz", "notify")
                        )
                        + f"  still stalled {phase['still_stalled_at_end']}/{stalled}"
                    )
    except (accept.BenchError, RunError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 2
    finally:
        accept.flush_broker()
    median: dict[str, Any] = {}
    for stalled in (0, args.stalled):
        phases = [p for p in runs if p["stalled"] == stalled]
        median[str(stalled)] = {
            name: {
                stat: round(statistics.median(p[name][stat] for p in phases), 2)
                for stat in ("p50_ms", "p99_ms")
            }
            for name in ("healthz", "notify")
        }
    valid = all(p[n]["errors"] == 0 for p in runs for n in ("healthz", "notify")) and all(
        p["still_stalled_at_end"] == p["stalled"] for p in runs
    )
    result = {
        "valid": valid,
        "target": "p99 under 200 ms with 50 stalled connections (issue 11)",
        "parameters": vars(args) | {"out": str(args.out), "workers": 2, "worker_class": "sync"},
        "median_over_runs": median,
        "runs": runs,
        "machine": accept.machine_facts(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for stalled, figures in median.items():
        print(
            f"median of {args.runs} runs, {stalled:>3} stalled: "
            + "  ".join(
                f"{n} p50 {f['p50_ms']} ms p99 {f['p99_ms']} ms" for n, f in figures.items()
            )
        )
    print(f"wrote {args.out}")
    return 0 if valid else 1


if __name__ == "__main__":
    sys.exit(main())
