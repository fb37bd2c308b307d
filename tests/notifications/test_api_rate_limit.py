"""Per-API-key rate limit: 429 with Retry-After, counted in Redis across processes."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest

from notifications.api.throttling import fail_open
from tests.conftest import client_for
from tests.factories import create_api_key
from tests.workers import ROOT, worker_env

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def limiter_reachable() -> Iterator[None]:
    fail_open.reset()
    yield
    fail_open.reset()


def test_a_key_over_its_limit_gets_429_with_retry_after_and_another_key_does_not(db):
    _, limited = create_api_key("chatty", rate_limit="3/minute")
    _, other = create_api_key("quiet")
    chatty, quiet = client_for(limited), client_for(other)

    assert [chatty.get("/api/notifications").status_code for _ in range(3)] == [200] * 3
    refused = chatty.get("/api/notifications")

    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert quiet.get("/api/notifications").status_code == 200


def test_the_default_limit_comes_from_the_setting(db, settings):
    settings.NOTIFY_API_RATE_LIMIT = "2/minute"
    client = client_for(create_api_key()[1])

    statuses = [client.post("/api/notify", {}, format="json").status_code for _ in range(3)]

    # Refused requests count too: a caller looping on 400s is throttled like any other.
    assert statuses == [400, 400, 429]


def test_an_empty_setting_means_no_limit(db, settings):
    settings.NOTIFY_API_RATE_LIMIT = ""
    client = client_for(create_api_key()[1])

    assert {client.get("/api/notifications").status_code for _ in range(5)} == {200}


_GET_TWICE = """
import django, sys
django.setup()
from django.test import Client
client = Client(HTTP_AUTHORIZATION="Api-Key " + sys.argv[1])
print([client.get("/api/notifications").status_code for _ in range(2)])
"""


@pytest.mark.django_db(transaction=True)
def test_the_limit_is_shared_by_every_api_process():
    _, key = create_api_key(rate_limit="4/minute")
    here = client_for(key)
    assert [here.get("/api/notifications").status_code for _ in range(2)] == [200, 200]

    elsewhere = subprocess.run(
        [sys.executable, "-c", _GET_TWICE, key],
        cwd=ROOT,
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert elsewhere.returncode == 0, elsewhere.stderr
    assert json.loads(elsewhere.stdout.strip().splitlines()[-1]) == [200, 200]
    assert here.get("/api/notifications").status_code == 429


def test_an_unreachable_redis_lets_requests_through(db, settings, caplog):
    settings.NOTIFY_API_RATE_LIMIT = "1/minute"
    # A Redis nothing listens on; not the broker's URL with another port: with RabbitMQ that
    # is an amqp:// URL, a configuration error rather than an unreachable Redis.
    settings.NOTIFY_API_RATE_LIMIT_STORAGE_URL = "redis://127.0.0.1:9/0"
    client = client_for(create_api_key()[1])

    with caplog.at_level(logging.WARNING, logger="notifications.api.throttling"):
        statuses = [client.get("/api/notifications").status_code for _ in range(3)]

    assert statuses == [200, 200, 200]
    assert [r.getMessage() for r in caplog.records if "not enforced" in r.getMessage()] != []


def test_the_schema_documents_429_with_retry_after(client, db):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()

    operations = [
        (path, method, operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
    ]
    assert operations
    for path, method, operation in operations:
        too_many = operation["responses"].get("429")
        assert too_many is not None, f"{method} {path}"
        assert "Retry-After" in too_many["headers"], f"{method} {path}"
