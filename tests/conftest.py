from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
from django.conf import settings
from rest_framework.test import APIClient
from rest_framework_api_key.models import APIKey

from channels.base import Channel
from devtools.fakes.smtp import FakeSMTPServer
from preferences.models import Event
from tests.factories import CategoryFactory, EventFactory, TemplateFactory, create_api_key
from tests.workers import WorkerProcess, running_workers

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
    smtp_relay: FakeSMTPServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, WorkerProcess]]:
    """One real `celery worker -Q <queue>` process per queue, on the test database and broker."""
    with running_workers(
        ("email", "inapp", "maintenance"),
        tmp_path_factory.mktemp("workers"),
        EMAIL_URL=f"smtp://127.0.0.1:{smtp_relay.port}",
    ) as started:
        yield started
