from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from django.conf import settings
from django.dispatch import receiver
from django.test.signals import setting_changed
from django.urls import clear_url_caches
from kombu import Connection, Queue
from kombu.message import Message
from rest_framework.test import APIClient
from rest_framework_api_key.models import APIKey

from channels.base import Channel
from channels.lanes import EMAIL, INAPP, LANES, MAINTENANCE_QUEUE
from config.celery import app
from devtools.fakes.smtp import FakeSMTPServer
from preferences.models import Event
from tests.channels.push import push_sender  # noqa: F401  (a fixture for every module)
from tests.factories import CategoryFactory, EventFactory, TemplateFactory, create_api_key
from tests.proxied import proxied_api  # noqa: F401  (a fixture: the API behind nginx)
from tests.workers import WorkerProcess, broker_queues, purge_broker, running_workers

# The transactional lanes and maintenance: where a request or a test publishes a task.
QUEUES = (*(row.queue for row in LANES.values()), MAINTENANCE_QUEUE)


@receiver(setting_changed, dispatch_uid="tests.webhook_routes_follow_email_backend")
def _webhook_routes_follow_email_backend(*, setting: str, **kwargs: Any) -> None:
    """The webhook routes are built from EMAIL_BACKEND when the URLconf loads (channels/urls.py):
    a test that sets it, and the restore after it, get the routes a deployment would have."""
    if setting == "EMAIL_BACKEND":
        reload_urlconf()


def reload_urlconf() -> None:
    importlib.reload(importlib.import_module("channels.urls"))
    importlib.reload(importlib.import_module(settings.ROOT_URLCONF))
    clear_url_caches()


@pytest.fixture(autouse=True)
def no_provider_paused() -> None:
    """Circuits live in Redis and a configuration error pauses its provider even with the
    breaker off (the test settings' default): a pause one test caused must not hold the
    next test's deliveries."""
    client = redis.Redis.from_url(settings.NOTIFY_GUARD_REDIS_URL)
    keys = list(client.scan_iter("notify:circuit:*", count=1000))
    if keys:
        client.delete(*keys)


class Broker:
    """The real broker the tests publish to, Redis or RabbitMQ (its own database or vhost, see
    settings_test), read through kombu.

    A queue's messages are those waiting in it, plus, with RabbitMQ quorum queues, those whose
    countdown is still running in the native delayed delivery queues (Redis and classic queues
    keep such messages in the queue itself, the worker waits for the countdown).
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._delayed = [q for q in broker_queues() if q not in settings.NOTIFY_QUEUES]

    def queued(self, queue: str) -> int:
        delayed = len(self._delayed_for(queue)) if self._delayed else 0
        return self._ready(queue) + delayed

    def messages(self, queue: str) -> list[dict[str, Any]]:
        """The queue's messages, oldest first, left in place: ``{"headers", "body"}`` each, the
        Celery protocol's headers (task, argsrepr, retries, eta…) and the decoded body."""
        found = self._peek(queue)
        if self._delayed:
            found += self._delayed_for(queue)
        return [{"headers": dict(m.headers), "body": m.decode()} for m in found]

    def purge(self) -> None:
        purge_broker()

    def _ready(self, queue: str) -> int:
        with self.connection.channel() as channel:
            try:
                return int(channel.queue_declare(queue=queue, passive=True).message_count)
            except self.connection.channel_errors:  # never declared: RabbitMQ answers 404
                return 0

    def _peek(self, queue: str) -> list[Message]:
        """Takes every message without acknowledging it, then rejects them in the order taken,
        which puts them back in that order (RabbitMQ: their old place; Redis: re-pushed)."""
        with self.connection.channel() as channel:
            try:
                channel.queue_declare(queue=queue, passive=True)
            except self.connection.channel_errors:
                return []
        taken: list[Message] = []
        with self.connection.channel() as channel:
            bound = Queue(queue, no_declare=True).bind(channel)
            while (message := bound.get(no_ack=False, accept=["json"])) is not None:
                taken.append(message)
            for message in taken:
                message.requeue()
        return taken

    def _delayed_for(self, queue: str) -> list[Message]:
        """Messages waiting out a countdown for ``queue`` (routing key "<28 bits>.<queue>")."""
        return [
            message
            for delayed in self._delayed
            for message in self._peek(delayed)
            if DELAY_PREFIX.sub("", message.delivery_info["routing_key"]) == queue
        ]


DELAY_PREFIX = re.compile(r"^(?:[01]\.){28}")


@pytest.fixture
def broker() -> Iterator[Broker]:
    with app.connection_for_write() as connection:
        b = Broker(connection)
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


def client_for(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    return client


@pytest.fixture
def limited_api_client(db: None) -> Callable[..., APIClient]:
    """``limited_api_client("notify")``: a client whose key has only the scopes named."""

    def make(*scopes: str, rate_limit: str = "") -> APIClient:
        _, key = create_api_key(name="limited", scopes=scopes, rate_limit=rate_limit)
        return client_for(key)

    return make


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
        (EMAIL.queue, INAPP.queue, MAINTENANCE_QUEUE),
        tmp_path_factory.mktemp("workers"),
        EMAIL_URL=f"smtp://127.0.0.1:{smtp_relay.port}",
    ) as started:
        yield started
