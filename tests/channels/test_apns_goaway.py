"""APNs connections the server retires (HTTP/2 GOAWAY), against the local fake (hypercorn).

The chaos suite's push duplicates with no process killed: hypercorn retired each HTTP/2
connection after 1,000 requests. It sent a GOAWAY naming the request that crossed the limit
as taken, handed that request to the fake (which accepted it: 200 in its log) and could not
send the answer (h2 refuses frames after its own GOAWAY). httpcore raised RemoteProtocolError
(ConnectionTerminated, last_stream_id = that request's stream), the delivery was retried and
the device got the push twice: once per 1,000 APNs requests of a worker process. The fake no
longer retires a busy connection; the client says when a GOAWAY leaves a request's fate unknown.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from channels import aio
from channels.base import Destination, OutboundMessage, TransientDeliveryError
from channels.providers import apns
from devtools.fakes.apns import FakeAPNs, device_token, new_signing_key
from notifications.models import DeliveryStatus
from notifications.services import Outcome
from preferences.models import Device
from tests.channels.push import send_push
from tests.factories import DeviceFactory

KEY_ID, TEAM_ID, TOPIC = "GOAWAY1234", "TEAMGOAWAY", "com.example.notify"
# hypercorn's own default (keep_alive_max_requests): the request after it got no answer.
HYPERCORN_DEFAULT_MAX_REQUESTS = 1000


@pytest.fixture(scope="module")
def signing_key() -> str:
    return new_signing_key()


def _start(key: str, **options: Any) -> FakeAPNs:
    return FakeAPNs(
        key_id=KEY_ID, team_id=TEAM_ID, topic=TOPIC, public_key_pem=key, **options
    ).start()


@pytest.fixture
def default_fake(settings: Any, signing_key: str) -> Iterator[FakeAPNs]:
    server = _start(signing_key)
    _point_at(settings, server, signing_key)
    yield server
    server.stop()


@pytest.fixture
def retiring_fake(settings: Any, signing_key: str) -> Iterator[FakeAPNs]:
    """A fake that retires each connection after 3 requests, as hypercorn does by default
    after 1,000: the 4th request is taken, then left unanswered."""
    server = _start(signing_key, max_requests_per_connection=3)
    _point_at(settings, server, signing_key)
    yield server
    server.stop()


def _point_at(settings: Any, server: FakeAPNs, key: str) -> None:
    settings.NOTIFY_PROVIDERS = {
        **settings.NOTIFY_PROVIDERS,
        "push": "channels.providers.push.PushProvider",
    }
    settings.NOTIFY_PUSH_SENDERS = {"apns": "channels.providers.apns.APNsSender", "fcm": ""}
    settings.APNS_KEY_ID, settings.APNS_TEAM_ID, settings.APNS_TOPIC = KEY_ID, TEAM_ID, TOPIC
    settings.APNS_PRIVATE_KEY, settings.APNS_ENDPOINT = key, server.url
    settings.APNS_CA_FILE = str(server.ca_path)


def _message(token: str) -> OutboundMessage:
    return OutboundMessage(
        delivery_id=1,
        notification_id=str(uuid.uuid4()),
        channel="push",
        event="order_shipped",
        destination=Destination(
            recipient_id=1, external_id="u-1", device_tokens=(("apns", token),)
        ),
        content={"subject": "Order 77 shipped", "body": "On its way."},
        data={"orderId": "77"},
    )


def _accepted(server: FakeAPNs) -> Counter[str]:
    return Counter(record["token"] for record in server.requests if record["status"] == 200)


def test_a_busy_connection_past_a_thousand_requests_gets_every_answer(default_fake):
    """Fails on the fake as it was (hypercorn's default limit): request 1,001 is accepted by
    the fake, and the sender reports a transient error, so the retry delivers it twice."""
    sender = apns.APNsSender()
    tokens = [device_token(tail=f"{i:x}") for i in range(HYPERCORN_DEFAULT_MAX_REQUESTS + 10)]

    for token in tokens:
        assert aio.run(sender.send_to_device(token, _message(token)))  # an apns-id, never an error

    assert _accepted(default_fake) == Counter(tokens)
    assert len({record["client"] for record in default_fake.requests}) == 1  # one connection
    assert sender.open_connections() == 1


def test_a_goaway_over_a_request_in_flight_says_it_may_have_been_accepted(retiring_fake):
    sender = apns.APNsSender()
    a, b, c, d, e = (device_token() for _ in range(5))
    for token in (a, b, c):
        aio.run(sender.send_to_device(token, _message(token)))

    with pytest.raises(TransientDeliveryError) as raised:
        aio.run(sender.send_to_device(d, _message(d)))

    # The GOAWAY names this request as taken; whether the fake then handled it (accepted it,
    # or found its body missing) depends on whether the body arrived before the GOAWAY went
    # out. The client cannot know, and the error says so.
    assert raised.value.provider_code == "GoAway"
    assert "may have been accepted" in str(raised.value)
    assert "last_stream_id:7" in str(raised.value)  # the 4th stream: this very request
    # The next send opens a new connection and gets its answer.
    assert aio.run(sender.send_to_device(e, _message(e)))
    clients = {record["token"]: record["client"] for record in retiring_fake.requests}
    assert clients[a] == clients[c] != clients[e]


@pytest.mark.django_db
def test_a_push_retried_after_such_a_goaway_records_why_in_its_history(
    retiring_fake, order_shipped
):
    devices = [DeviceFactory(platform=Device.Platform.APNS, token=device_token()) for _ in range(4)]
    for device in devices[:3]:
        outcome, delivery = send_push(device, order_shipped)
        assert outcome == Outcome.SENT, delivery.history

    with pytest.raises(TransientDeliveryError):
        send_push(devices[3], order_shipped)

    (delivery,) = devices[3].recipient.notifications.get().deliveries.all()
    assert delivery.status == DeliveryStatus.QUEUED
    assert "may have been accepted" in delivery.history[-1]["error"]


def test_five_hundred_sends_at_once_are_streams_over_at_most_the_connections_allowed(
    default_fake, settings
):
    settings.APNS_MAX_CONNECTIONS = 2
    sender = apns.APNsSender()
    tokens = [device_token(tail=f"{i:x}") for i in range(500)]

    async def all_at_once() -> list[str]:
        return await asyncio.gather(*(sender.send_to_device(t, _message(t)) for t in tokens))

    ids = aio.run(all_at_once())

    assert len(set(ids)) == 500 and all(ids)  # an apns-id each
    assert _accepted(default_fake) == Counter(tokens)  # each device exactly once
    assert 1 <= len({record["client"] for record in default_fake.requests}) <= 2
    assert sender.open_connections() <= 2
