"""Email keeps its provider connection open across messages (channels/providers/pool.py): an ESP's
keep-alive HTTP session or an SMTP session, each lent to one sending thread at a time."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from channels import aio
from channels.providers import email as email_channel
from devtools.fakes.postmark import DEFAULT_TOKEN, FakePostmark
from devtools.fakes.smtp import FakeSMTPServer
from notifications import services
from notifications.models import Delivery
from notifications.services import Outcome, engine
from tests.factories import DeliveryFactory, RecipientFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def relay(settings: Any) -> Iterator[FakeSMTPServer]:
    server = FakeSMTPServer().start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", server.port
    yield server
    server.stop()
    email_channel.close_kept_connections()


def _queued(event: Any, address: str) -> Delivery:
    return DeliveryFactory(
        notification__recipient=RecipientFactory(email=address),
        notification__event=event,
        channel="email",
        content={"subject": "Order 7 shipped", "body": "On its way."},
    )


def test_sequential_messages_share_one_smtp_session(order_shipped, relay):
    deliveries = [_queued(order_shipped, f"buyer{i}@example.com") for i in range(5)]

    outcomes = [services.delivery_send(delivery_id=d.pk) for d in deliveries]

    assert outcomes == [Outcome.SENT] * 5
    assert len(relay.messages) == 5
    assert len({message["session"] for message in relay.messages}) == 1


def test_a_session_the_server_dropped_is_reopened_and_the_message_sent_once(
    order_shipped, settings
):
    first = FakeSMTPServer().start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", first.port
    try:
        sent = services.delivery_send(delivery_id=_queued(order_shipped, "a@example.com").pk)
        assert sent == Outcome.SENT
        # The kept session dies with the server, as a server's idle timeout would end it.
        first.stop()
        second = FakeSMTPServer(port=first.port).start()
        try:
            sent = services.delivery_send(delivery_id=_queued(order_shipped, "b@example.com").pk)
            assert sent == Outcome.SENT
            assert [m["to"] for m in first.messages] == [["a@example.com"]]
            assert [m["to"] for m in second.messages] == [["b@example.com"]]
        finally:
            second.stop()
    finally:
        email_channel.close_kept_connections()


def test_concurrent_senders_each_borrow_their_own_session(order_shipped, relay):
    deliveries = [_queued(order_shipped, f"buyer{i}@example.com") for i in range(24)]
    provider = email_channel.EmailProvider()
    claimed = engine.claim_and_load([d.pk for d in deliveries], lease_seconds=60)
    messages = [engine.decide(delivery) for delivery in claimed]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda message: aio.run(provider.send(message)), messages))

    assert len({result.message_id for result in results}) == 24
    assert sorted(m["to"][0] for m in relay.messages) == sorted(
        f"buyer{i}@example.com" for i in range(24)
    )
    assert 1 <= len({message["session"] for message in relay.messages}) <= 4


def test_postmark_messages_share_one_keep_alive_connection(order_shipped, settings):
    fake = FakePostmark().start()
    settings.EMAIL_BACKEND = "anymail.backends.postmark.EmailBackend"
    settings.ANYMAIL = {"POSTMARK_SERVER_TOKEN": DEFAULT_TOKEN, "POSTMARK_API_URL": fake.url}
    try:
        deliveries = [_queued(order_shipped, f"buyer{i}@example.com") for i in range(4)]
        outcomes = [services.delivery_send(delivery_id=d.pk) for d in deliveries]
        assert outcomes == [Outcome.SENT] * 4
        assert len(fake.requests) == 4
        assert email_channel.kept_connections() == 1
    finally:
        fake.stop()
        email_channel.close_kept_connections()
