"""The README's first command works: `devtools/run.py` (what `make run` runs) brings the whole
service up with the four provider fakes, gets the demo notification through every channel with
the real client libraries (receipts included), and leaves nothing running when it stops."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from django.conf import settings
from psycopg2 import sql

from preferences.management.commands.seed_demo import DEMO_APNS_DEVICE, DEMO_FCM_DEVICE
from tests.workers import purge_broker

ROOT = Path(__file__).resolve().parent.parent
# Not the pytest test database: run.py migrates and serves a database of its own.
SMOKE_DB = "notifications_smoke"
DATABASE_URL = f"postgres://postgres@127.0.0.1:5432/{SMOKE_DB}"
# Redis: a database of its own. RabbitMQ (make test-rabbitmq): the suite's vhost, emptied
# first (no test's workers run while this test does), with the suite's queue type.
REDIS_BROKER_URL = "redis://127.0.0.1:6379/14"
TIMEOUT = 180
FAKES = ("apns", "fcm", "twilio", "postmark")


def _create_database() -> None:
    # psycopg2 directly: pytest-django only lets Django's connection reach the test database.
    conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [SMOKE_DB])
            if cursor.fetchone() is None:
                cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(SMOKE_DB)))
    finally:
        conn.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _broker_url() -> str:
    if settings.BROKER_IS_AMQP:
        purge_broker()
        return str(settings.CELERY_BROKER_URL)
    return REDIS_BROKER_URL


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            command = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # the process ended while we looked
        if text in command:
            found.append(f"{cmdline.parent.name}: {command}")
    return found


def _shown_notification(output: str) -> dict[str, Any]:
    """The JSON run.py prints after ``GET /api/notifications/<id>``."""
    _, _, rest = output.partition("\nGET /api/notifications/")
    start = rest.index("\n{")
    end = rest.index("\n}\n", start)
    return dict(json.loads(rest[start : end + 2]))


@pytest.mark.integration
def test_make_run_smoke_sends_the_demo_to_every_channel_and_stops_everything(
    tmp_path: Path,
) -> None:
    _create_database()
    ports = {name: _free_port() for name in ("api", *FAKES)}
    env = {**os.environ, "DATABASE_URL": DATABASE_URL, "CELERY_BROKER_URL": _broker_url()}
    # pytest-django points this at the test settings; `make run` uses config.settings.
    env.pop("DJANGO_SETTINGS_MODULE", None)
    argv = [sys.executable, "devtools/run.py", "--smoke", "--run-dir", str(tmp_path / "run")]
    for name, port in ports.items():
        argv += [f"--{name}-port", str(port)]
    run = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        output, _ = run.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        # SIGTERM, not SIGKILL: run.py must get the chance to stop its own children.
        run.send_signal(signal.SIGTERM)
        output, _ = run.communicate(timeout=60)
        pytest.fail(f"run.py --smoke took over {TIMEOUT}s:\n{output[-6000:]}")

    assert run.returncode == 0, output[-6000:]
    assert "System check identified no issues" in output
    assert "HTTP 202" in output
    deliveries = {d["channel"]: d for d in _shown_notification(output)["deliveries"]}
    statuses = {channel: d["status"] for channel, d in deliveries.items()}
    assert statuses == {"push": "sent", "email": "delivered", "sms": "delivered", "inapp": "sent"}
    push = deliveries["push"]
    assert set(push["provider"].split("+")) == {"apns", "fcm"}
    assert {token: r["status"] for token, r in push["devices"].items()} == {
        DEMO_APNS_DEVICE: "sent",
        DEMO_FCM_DEVICE: "sent",
    }
    assert push["providerMessageId"] in {r["messageId"] for r in push["devices"].values()}
    assert deliveries["email"]["provider"] == "postmark"
    assert deliveries["sms"]["provider"] == "twilio"
    assert deliveries["sms"]["providerMessageId"].startswith("SM")
    for delivery in deliveries.values():
        assert delivery["providerMessageId"], delivery
    assert f"{DEMO_APNS_DEVICE} → 200 apns-id" in output
    assert f"{DEMO_FCM_DEVICE} → 200 projects/demo-project/messages/" in output
    assert f"→ 201 {deliveries['sms']['providerMessageId']}" in output
    assert f"'Your order 9912 has shipped' → 200 {deliveries['email']['providerMessageId']}" in (
        output
    )
    assert "smoke run passed" in output
    for name, port in ports.items():
        assert not _listening(port), f"something still listens on the {name} port {port}"
    assert _processes_mentioning(f"127.0.0.1:{ports['api']}") == []
    for name in FAKES:
        assert _processes_mentioning(f"--port {ports[name]}") == [], name
