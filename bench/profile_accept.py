"""Where one accept spends its time: cProfile and SQL count over a few in-process requests.

    .venv/bin/python bench/profile_accept.py [--requests 200] [--top 25]

In-process (django.test.Client, no gunicorn, no HTTP), against the benchmark's database
``notifications_bench`` and Redis db 13 (flushed afterwards). Run bench/accept.py once first:
it creates the database and the bench table. Prints the SQL statements of one request and the
functions with the most cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.update(
    DJANGO_SETTINGS_MODULE="bench.settings",
    DATABASE_URL="postgres://postgres@127.0.0.1:5432/notifications_bench",
    CELERY_BROKER_URL="redis://127.0.0.1:6379/13",
    DEBUG="false",
)

import django  # noqa: E402

django.setup()

import redis  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from bench.accept import request_body  # noqa: E402
from notifications.services.api_keys import api_key_create  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--path", default="/api/notify", choices=["/api/notify", "/bench/bare-insert"]
    )
    args = parser.parse_args()
    args.requests = max(1, min(args.requests, 10_000))

    _, key = api_key_create(name="bench-profile", scopes=["notify"])
    client = Client(HTTP_HOST="127.0.0.1", HTTP_AUTHORIZATION=f"Api-Key {key}")
    tag = uuid.uuid4().hex[:12]

    def post(i: int) -> None:
        resp = client.post(args.path, request_body(tag, i), content_type="application/json")
        if resp.status_code != 202:
            raise SystemExit(f"{args.path} answered {resp.status_code}: {resp.content[:300]!r}")

    try:
        for i in range(20):  # warm caches: templates, connections, celery app
            post(i)
        with CaptureQueriesContext(connection) as queries:
            post(20)
        print(f"SQL statements in one request to {args.path}: {len(queries.captured_queries)}")
        for q in queries.captured_queries:
            print(f"  {q['time']:>6}s  {' '.join(q['sql'].split())[:150]}")

        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        for i in range(21, 21 + args.requests):
            post(i)
        profiler.disable()
        per_request = (time.perf_counter() - started) / args.requests * 1000
        print(f"\n{args.requests} requests, {per_request:.2f} ms each under cProfile")
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("cumulative").print_stats(args.top)
        print(out.getvalue())
    finally:
        redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=5).flushdb()
    print(json.dumps({"requests": args.requests, "ms_per_request_profiled": round(per_request, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
