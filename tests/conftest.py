from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from django.conf import settings
from django.db import connection
from rest_framework.test import APIClient
from rest_framework_api_key.models import APIKey

from channels.base import Channel
from devtools.fakes.smtp import FakeSMTPServer
from preferences.models import Event
from tests.factories import CategoryFactory, EventFactory, TemplateFactory, create_api_key
from tests.workers import WorkerProcess

QUEUES = ("push", "email", "sms", "inapp", "maintenance")


@dataclass
class Broker:
    """The real Redis broker the tests publish to (its own database, see settings_test)."""

    client: redis.Redis

    def queued(self, queue: str) -> int:
        return int(self.client.llen(queue))

    def purge(self) -> None:
        self.client.flushdb()


@pytest.fixture
def broker() -> Iterator[Broker]:
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    b = Broker(client)
    b.purge()
    yield b
    b.purge()


@pytest.fixture
def api_key(db: None) -> tuple[APIKey, str]:
    return create_api_key()


@pytest.fixture
def api_client(api_key: tuple[APIKey, str]) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {api_key[1]}")
    return client


@pytest.fixture
def order_shipped(db: None) -> Event:
    """An `orders` event with a template for every channel."""
    event = EventFactory(
        key="order_shipped",
        category=CategoryFactory(key="orders"),
        default_channels=[Channel.EMAIL, Channel.INAPP],
    )
    for channel in Channel.values:
        TemplateFactory(
            event=event,
            channel=channel,
            subject="Order {{ orderId }} shipped",
            body="Your order {{ orderId }} is on its way.",
        )
    return event


@pytest.fixture
def security_code(db: None) -> Event:
    """A critical-category event: opt-outs do not apply."""
    event = EventFactory(
        key="login_code",
        category=CategoryFactory(key="security", critical=True),
        default_channels=[Channel.EMAIL],
    )
    for channel in Channel.values:
        TemplateFactory(event=event, channel=channel, subject="Code", body="Code {{ code }}")
    return event


@pytest.fixture(scope="session")
def smtp_relay() -> Iterator[FakeSMTPServer]:
    """The local fake SMTP relay (real SMTP over TCP), shared by the whole session."""
    server = FakeSMTPServer().start()
    yield server
    server.stop()


# Module scope: while workers run they consume the test broker's queues, which tests that
# count published messages must not see.
@pytest.fixture(scope="module")
def workers(
    django_db_setup: None,
    django_db_blocker: Any,
    smtp_relay: FakeSMTPServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, WorkerProcess]]:
    """One real `celery worker -Q <queue>` process per queue, on the test database and broker."""
    with django_db_blocker.unblock():
        database_name = connection.settings_dict["NAME"]
    db = settings.DATABASES["default"]
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings_test",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{database_name}",
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "EMAIL_URL": f"smtp://127.0.0.1:{smtp_relay.port}",
    }
    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()
    log_dir = tmp_path_factory.mktemp("workers")
    started = {
        queue: WorkerProcess(queue, env, log_dir) for queue in ("email", "inapp", "maintenance")
    }
    try:
        for worker in started.values():
            worker.wait_ready()
        yield started
    finally:
        for worker in started.values():
            worker.stop()
