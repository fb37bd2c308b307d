"""The inbox's real-time stream through a real ASGI server process (uvicorn) and a real worker:
a notification posted through the API arrives on an open stream, read state follows across
devices, a reconnect with Last-Event-ID receives what it missed, idle streams get heartbeats,
and a stream ends when its token does."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from rest_framework.test import APIClient

from notifications.services import inbox_events
from notifications.stream.hub import RESET, Listener
from preferences import access
from preferences.models import Recipient
from tests.factories import RecipientFactory
from tests.workers import StreamServer, settled_delivery, wait_for, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def stream_server(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[StreamServer]:
    with django_db_blocker.unblock():
        env = worker_env(
            NOTIFY_INBOX_STREAM_HEARTBEAT_SECONDS="1", NOTIFY_INBOX_CORS_ORIGINS="https://app.test"
        )
    server = StreamServer(env, tmp_path_factory.mktemp("stream"))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@dataclass
class Event:
    kind: str
    data: dict[str, Any]
    id: str = ""


class Stream:
    """An SSE client over a plain HTTP connection, reading events with a deadline."""

    def __init__(self, port: int, token: str, headers: dict[str, str] | None = None) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.connection.request(
            "GET",
            "/api/inbox/stream",
            headers={"Authorization": f"Bearer {token}", **(headers or {})},
        )
        self.response = self.connection.getresponse()
        self.comments: list[str] = []

    def next_event(self, timeout: float = 15.0) -> Event:
        deadline = time.monotonic() + timeout
        fields: dict[str, str] = {}
        while time.monotonic() < deadline:
            line = self.response.readline().decode()
            if line == "":
                raise AssertionError("the stream ended")
            line = line.rstrip("\n")
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
            elif line == "":
                if "event" in fields:
                    return Event(fields["event"], json.loads(fields["data"]), fields.get("id", ""))
            else:
                name, _, value = line.partition(": ")
                fields[name] = value
        raise AssertionError(f"no event within {timeout}s")

    def events(self, count: int) -> list[Event]:
        return [self.next_event() for _ in range(count)]

    def close(self) -> None:
        self.connection.close()


def token_for(recipient: Recipient, ttl_seconds: int = 600) -> str:
    token, _ = access.token_mint(
        recipient_id=recipient.pk, generation=recipient.token_generation, ttl_seconds=ttl_seconds
    )
    return token


def notify(api_client: APIClient, recipient: Recipient, order: str) -> str:
    response = api_client.post(
        "/api/notify",
        {
            "userId": recipient.external_id,
            "event": "order_shipped",
            "channels": ["inapp"],
            "data": {"orderId": order},
        },
        format="json",
    )
    assert response.status_code == 202, response.content
    return str(response.json()["id"])


def test_a_notification_posted_through_the_api_appears_on_the_open_stream(
    api_client, order_shipped, workers, stream_server
):
    ana = RecipientFactory()
    stream = Stream(stream_server.port, token_for(ana))
    assert stream.response.status == 200
    assert stream.response.getheader("Content-Type").startswith("text/event-stream")

    notification_id = notify(api_client, ana, "41")

    event = stream.next_event()
    assert event.kind == "message" and event.id
    assert event.data["message"]["title"] == "Order 41 shipped"
    assert event.data["message"]["readAt"] is None
    # Announced before the outcome is recorded (a batch cut short announces again).
    delivery = wait_for(lambda: settled_delivery(notification_id, "inapp"), what="the delivery")
    assert int(delivery.provider_message_id) == event.data["message"]["id"]
    stream.close()


def test_read_state_changed_on_one_device_arrives_on_the_other(
    api_client, order_shipped, workers, stream_server
):
    ana = RecipientFactory()
    token = token_for(ana)
    phone = Stream(stream_server.port, token)
    notify(api_client, ana, "7")
    message = phone.next_event().data["message"]
    laptop = APIClient()
    laptop.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")

    assert laptop.post(f"/api/inbox/{message['id']}/read").status_code == 200
    state = phone.next_event()
    assert state.kind == "state"
    assert state.data["message"]["id"] == message["id"] and state.data["message"]["readAt"]

    notify(api_client, ana, "8")
    assert phone.next_event().kind == "message"
    assert laptop.post("/api/inbox/read-all").status_code == 200
    assert phone.next_event().kind == "all_read"
    phone.close()


def test_a_reconnect_with_last_event_id_receives_what_it_missed(
    api_client, order_shipped, workers, stream_server
):
    ana = RecipientFactory()
    token = token_for(ana)
    first = Stream(stream_server.port, token)
    notify(api_client, ana, "1")
    seen = first.next_event()
    first.close()

    missed = [notify(api_client, ana, order) for order in ("2", "3")]
    for notification_id in missed:
        wait_for(lambda n=notification_id: settled_delivery(n, "inapp"), what="in-app delivery")
    again = Stream(stream_server.port, token, {"Last-Event-ID": seen.id})

    replayed = again.events(2)
    assert [e.data["message"]["title"] for e in replayed] == ["Order 2 shipped", "Order 3 shipped"]
    assert seen.id < replayed[0].id < replayed[1].id
    notify(api_client, ana, "4")  # and then live again, nothing twice
    assert again.next_event().data["message"]["title"] == "Order 4 shipped"
    again.close()


def test_a_last_event_id_it_cannot_vouch_for_gets_a_reset(stream_server, transactional_db):
    nobody_yet = RecipientFactory()  # no event kept for it: what came after 1-0 is unknown
    stream = Stream(stream_server.port, token_for(nobody_yet), {"Last-Event-ID": "1-0"})

    assert stream.next_event().kind == "reset"
    stream.close()
    bad = Stream(stream_server.port, token_for(nobody_yet), {"Last-Event-ID": "yesterday"})
    assert bad.response.status == 400
    assert json.loads(bad.response.read())["error"]["code"] == "invalid"


def test_an_idle_stream_gets_heartbeats_and_ends_with_its_token(stream_server, transactional_db):
    ana = RecipientFactory()
    stream = Stream(stream_server.port, token_for(ana, ttl_seconds=3))

    assert stream.next_event(timeout=10).kind == "expired"
    assert "ping" in stream.comments  # every second here (NOTIFY_..._HEARTBEAT_SECONDS=1)
    assert stream.response.readline() == b""  # and the server ended it
    stream.close()


def test_only_a_valid_current_token_opens_a_stream(stream_server, transactional_db):
    ana = RecipientFactory()
    token = token_for(ana)

    for presented in ("", token[:-2] + "xx"):
        refused = Stream(stream_server.port, presented)
        assert refused.response.status == 401
        assert json.loads(refused.response.read())["error"]["code"] == "unauthorized"
    Recipient.objects.filter(pk=ana.pk).update(token_generation=ana.token_generation + 1)
    assert Stream(stream_server.port, token).response.status == 401  # revoked

    by_query = http.client.HTTPConnection("127.0.0.1", stream_server.port, timeout=10)
    fresh = token_for(Recipient.objects.get(pk=ana.pk))
    by_query.request(
        "GET", f"/api/inbox/stream?token={fresh}", headers={"Origin": "https://app.test"}
    )
    answer = by_query.getresponse()
    assert answer.status == 200  # EventSource cannot set headers: the token in the query
    assert answer.getheader("Access-Control-Allow-Origin") == "https://app.test"
    by_query.close()


def test_a_listener_too_slow_to_keep_up_is_told_to_start_over():
    listener = Listener(recipient_id=1)
    for n in range(listener.queue.maxsize + 1):
        listener.put((f"{n}-0", "{}"))

    assert listener.queue.qsize() == 1 and listener.queue.get_nowait() is RESET


def test_a_reconnect_from_before_what_is_kept_gets_a_reset_and_a_recent_one_the_rest(
    stream_server, transactional_db, settings
):
    settings.NOTIFY_INBOX_STREAM_REPLAY = 100  # trimmed by whole blocks, about 100 kept
    ana = RecipientFactory()
    for n in range(300):
        inbox_events._publish([(ana.pk, {"type": "all_read", "at": str(n)})])
    kept = redis.Redis.from_url(settings.NOTIFY_INBOX_STREAM_REDIS_URL).xrange(
        inbox_events.stream_key(ana.pk)
    )
    assert 100 <= len(kept) < 300
    token = token_for(ana)

    too_old = Stream(stream_server.port, token, {"Last-Event-ID": "1-0"})
    assert too_old.next_event().kind == "reset"
    too_old.close()
    recent = Stream(stream_server.port, token, {"Last-Event-ID": kept[-3][0].decode()})
    assert [e.data["at"] for e in recent.events(2)] == ["298", "299"]
    recent.close()


def test_without_redis_a_stream_is_refused_with_a_503_not_a_trace(
    django_db_setup, django_db_blocker, transactional_db, tmp_path
):
    with django_db_blocker.unblock():
        env = worker_env(NOTIFY_INBOX_STREAM_REDIS_URL="redis://127.0.0.1:9/0")  # nothing there
    server = StreamServer(env, tmp_path)
    try:
        server.wait_ready()
        refused = Stream(server.port, token_for(RecipientFactory()))
        assert refused.response.status == 503
        assert json.loads(refused.response.read())["error"]["code"] == "unavailable"
    finally:
        server.stop()
