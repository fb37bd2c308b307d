from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection
from rest_framework.test import APIClient

from channels.lanes import EMAIL, INAPP
from notifications.models import Delivery, Notification
from tests.factories import (
    EventFactory,
    PreferenceFactory,
    RecipientFactory,
    TemplateFactory,
    create_api_key,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def recipient():
    return RecipientFactory(external_id="u-42")


def body(**overrides):
    return {
        "userId": "u-42",
        "event": "order_shipped",
        "channels": ["email", "inapp"],
        "data": {"orderId": "9912", "eta": "tomorrow"},
        "idempotencyKey": "order_shipped:9912",
        **overrides,
    }


def notify(client, payload, capture, **extra):
    with capture(execute=True) as callbacks:
        response = client.post("/api/notify", payload, format="json", **extra)
    return response, callbacks


def test_same_key_same_body_replays_the_first_answer(
    api_client, order_shipped, recipient, broker, django_capture_on_commit_callbacks
):
    first, _ = notify(api_client, body(), django_capture_on_commit_callbacks)
    assert first.status_code == 202
    assert "Idempotent-Replayed" not in first
    assert broker.queued(EMAIL.queue) == 1

    second, callbacks = notify(api_client, body(), django_capture_on_commit_callbacks)

    assert second.status_code == 200
    assert second["Idempotent-Replayed"] == "true"
    assert second.json() == first.json()
    assert Notification.objects.count() == 1
    assert Delivery.objects.count() == 2
    assert callbacks == []
    assert broker.queued(EMAIL.queue) == 1
    assert broker.queued(INAPP.queue) == 1


def test_replay_answers_as_at_accept_even_if_preferences_changed(
    api_client, order_shipped, recipient, broker, django_capture_on_commit_callbacks
):
    first, _ = notify(api_client, body(), django_capture_on_commit_callbacks)
    PreferenceFactory(recipient=recipient, category=None, channel=None, enabled=False)

    second, _ = notify(api_client, body(), django_capture_on_commit_callbacks)

    assert second.status_code == 200
    assert second.json() == first.json()
    assert {d["status"] for d in second.json()["deliveries"]} == {"queued"}


def test_key_order_inside_the_body_does_not_matter(
    api_client, order_shipped, recipient, broker, django_capture_on_commit_callbacks
):
    first, _ = notify(api_client, body(), django_capture_on_commit_callbacks)
    reordered = body(data={"eta": "tomorrow", "orderId": "9912"})
    second, _ = notify(api_client, reordered, django_capture_on_commit_callbacks)

    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]


@pytest.mark.parametrize("second_in", ["header", "body"])
def test_header_key_is_the_same_as_the_body_field(
    api_client, order_shipped, recipient, broker, django_capture_on_commit_callbacks, second_in
):
    without_key = body()
    del without_key["idempotencyKey"]
    first, _ = notify(
        api_client,
        without_key,
        django_capture_on_commit_callbacks,
        headers={"Idempotency-Key": "order_shipped:9912"},
    )
    assert first.status_code == 202
    assert Notification.objects.get().idempotency_key == "order_shipped:9912"

    if second_in == "header":
        second, callbacks = notify(
            api_client,
            without_key,
            django_capture_on_commit_callbacks,
            headers={"Idempotency-Key": "order_shipped:9912"},
        )
    else:
        second, callbacks = notify(api_client, body(), django_capture_on_commit_callbacks)

    assert second.status_code == 200
    assert second["Idempotent-Replayed"] == "true"
    assert second.json() == first.json()
    assert callbacks == []
    assert Notification.objects.count() == 1


def test_header_and_body_may_both_carry_the_same_key(
    api_client, order_shipped, recipient, broker, django_capture_on_commit_callbacks
):
    first, _ = notify(
        api_client,
        body(),
        django_capture_on_commit_callbacks,
        headers={"Idempotency-Key": "order_shipped:9912"},
    )
    second, _ = notify(api_client, body(), django_capture_on_commit_callbacks)

    assert first.status_code == 202
    assert second.status_code == 200
    assert second.json() == first.json()


@pytest.mark.parametrize(
    "changed",
    [
        {"data": {"orderId": "9912", "eta": "next week"}},
        {"channels": ["email"]},
        {"event": "order_delayed"},
        {"userId": "u-43"},
    ],
    ids=["data", "channels", "event", "user"],
)
def test_same_key_different_body_is_a_conflict(
    api_client, order_shipped, recipient, broker, django_capture_on_commit_callbacks, changed
):
    RecipientFactory(external_id="u-43")
    delayed = EventFactory(key="order_delayed", category=order_shipped.category)
    TemplateFactory(event=delayed, channel="email")
    TemplateFactory(event=delayed, channel="inapp")
    first, _ = notify(api_client, body(), django_capture_on_commit_callbacks)
    assert first.status_code == 202

    second, callbacks = notify(api_client, body(**changed), django_capture_on_commit_callbacks)

    assert second.status_code == 409
    error = second.json()["error"]
    assert error["code"] == "idempotency_conflict"
    assert set(error["fields"]) == {"idempotencyKey"}
    assert callbacks == []
    assert Notification.objects.count() == 1
    assert Delivery.objects.count() == 2
    assert broker.queued(EMAIL.queue) == 1


def test_the_same_key_from_two_api_keys_makes_two_notifications(
    api_client, order_shipped, recipient, broker, django_capture_on_commit_callbacks
):
    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=f"Api-Key {create_api_key('billing')[1]}")

    first, _ = notify(api_client, body(), django_capture_on_commit_callbacks)
    second, _ = notify(other, body(), django_capture_on_commit_callbacks)

    assert first.status_code == second.status_code == 202
    assert first.json()["id"] != second.json()["id"]
    assert Notification.objects.count() == 2
    assert broker.queued(EMAIL.queue) == 2


def test_without_a_key_every_request_is_new(
    api_client, order_shipped, recipient, broker, django_capture_on_commit_callbacks
):
    without_key = body()
    del without_key["idempotencyKey"]
    first, _ = notify(api_client, without_key, django_capture_on_commit_callbacks)
    second, _ = notify(api_client, without_key, django_capture_on_commit_callbacks)

    assert first.status_code == second.status_code == 202
    assert first.json()["id"] != second.json()["id"]
    assert Notification.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_concurrent_identical_requests_create_one_notification(api_key, order_shipped, broker):
    RecipientFactory(external_id="u-42")
    threads = 8
    barrier = threading.Barrier(threads, timeout=30)

    def send(_: int):
        try:
            client = APIClient()
            client.credentials(HTTP_AUTHORIZATION=f"Api-Key {api_key[1]}")
            barrier.wait()
            response = client.post("/api/notify", body(), format="json")
            return response.status_code, response.json(), response.get("Idempotent-Replayed")
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(send, range(threads)))

    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200] * 7 + [202], results
    assert len({answer["id"] for _, answer, _ in results}) == 1
    assert {replayed for status, _, replayed in results if status == 200} == {"true"}
    assert Notification.objects.count() == 1
    assert Delivery.objects.count() == 2
    # Only the request that inserted published anything (on its real commit).
    assert broker.queued(EMAIL.queue) == 1
    assert broker.queued(INAPP.queue) == 1
