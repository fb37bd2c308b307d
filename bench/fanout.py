"""The fan-out alone: how many deliveries one chain of pages writes per second when nothing
else runs (no delivery workers), i.e. the fan-out's own cost.

    python bench/fanout.py [--recipients 30000] [--runs 3]

On a database and a Redis db of its own: migrate, the catalog, --recipients recipients with an
e-mail, a phone and a device each, all subscribed to one topic (as bench/broadcast.py seeds
them); then per run a broadcast of order_shipped to push, e-mail and SMS is accepted through
the service and its pages are run here, one after the other, as the maintenance worker's
chained tasks would (the tasks they publish go to this benchmark's Redis db and are dropped).
Prints the median of the runs and writes them to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import accept  # noqa: E402
from bench import broadcast_data as data  # noqa: E402

HOST = "127.0.0.1"
DB_NAME = "notifications_fanout_bench"
BROKER_URL = f"redis://{HOST}:6379/3"
accept.DB_NAME = DB_NAME
accept.BROKER_URL = BROKER_URL


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=30_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds, whole script")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/fanout.json")
    args = parser.parse_args(argv)
    if args.recipients < 1000 or args.runs < 1:
        parser.error("--recipients must be >= 1000 and --runs >= 1")
    return args


def one_run() -> dict[str, Any]:
    from rest_framework_api_key.models import APIKey

    from notifications.models import Delivery
    from notifications.services import broadcasts, fanout

    accepted = broadcasts.broadcast_accept(
        api_key=APIKey.objects.get(name="bench"),
        event_key="order_shipped",
        audience={"topic": data.TOPIC},
        channels=["push", "email", "sms"],
        data={"orderId": "FANOUT-1", "eta": "tomorrow"},
        idempotency_key=None,
    )
    broadcast_id = accepted.body["id"]
    pages: list[float] = []
    cpu, started = time.process_time(), time.perf_counter()
    segments = len(fanout.Broadcast.objects.get(pk=broadcast_id).fanout_cursors)
    for segment in range(segments):
        outcome = fanout.PageOutcome.MORE
        while outcome == fanout.PageOutcome.MORE:
            page_started = time.perf_counter()
            outcome = fanout.broadcast_fanout_page(broadcast_id=broadcast_id, segment=segment)
            pages.append(time.perf_counter() - page_started)
    seconds = time.perf_counter() - started
    written = Delivery.objects.filter(notification__broadcast_id=broadcast_id).count()
    return {
        "deliveries": written,
        "seconds": round(seconds, 2),
        "deliveries_per_s": round(written / seconds),
        "page_ms_median": round(statistics.median(pages) * 1000, 1),
        "worker_cpu_ms_per_page": round((time.process_time() - cpu) * 1000 / len(pages), 1),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    deadline = accept.Deadline(args.deadline)
    env = {**accept.bench_env(), "DATABASE_URL": f"postgres://postgres@{HOST}:5432/{DB_NAME}"}
    try:
        accept.flush_broker()
        data.drop_database(DB_NAME)
        accept.ensure_database()
        accept.manage(env, deadline, "migrate", "--noinput", "-v", "0")
        accept.manage(env, deadline, "load_catalog")
        accept.manage(env, deadline, "create_api_key", "bench")
        data.seed(DB_NAME, args.recipients)
        os.environ.update(env)
        import django

        django.setup()
        runs = []
        for _ in range(args.runs):
            deadline.check("a fan-out run")
            runs.append(one_run())
            accept.flush_broker()
        facts = accept.machine_facts()
    except accept.BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        from django.conf import settings

        if settings.configured:
            from django.db import connections

            connections.close_all()
        data.drop_database(DB_NAME)
        accept.flush_broker()
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    report = {
        "recipients": args.recipients,
        "runs": runs,
        "median": median,
        "machine": facts,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(runs, indent=2))
    print(
        f"fan-out alone, one chain: {median['deliveries_per_s']:,.0f} deliveries written/s "
        f"(median of {len(runs)}), {median['page_ms_median']} ms per 1,000-recipient page, "
        f"{median['worker_cpu_ms_per_page']} ms of it in Python; wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
