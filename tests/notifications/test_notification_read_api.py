"""GET /api/notifications/{id} and GET /api/notifications: the log as callers see it."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import ClassVar

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from channels.base import OutboundMessage, ProviderResult, TransientDeliveryError
from notifications.models import Delivery, Notification
from notifications.services import delivery_send
from tests.factories import EventFactory, RecipientFactory, TemplateFactory

pytestmark = pytest.mark.django_db


class BusyEmailProvider:
    """An email provider that is always briefly unavailable."""

    name: ClassVar[str] = "busy"
    channel: ClassVar[str] = "email"

    def send(self, message: OutboundMessage) -> ProviderResult:
        raise TransientDeliveryError("try again later", provider="busy", status_code=503)

    @classmethod
    def check_configuration(cls) -> list[str]:
        return []


def notify(client, user_id, event="order_shipped", channels=None, **data):
    payload = {"userId": user_id, "event": event, "data": data}
    if channels is not None:
        payload["channels"] = channels
    response = client.post("/api/notify", payload, format="json")
    assert response.status_code == 202, response.json()
    return response.json()["id"]


def assert_error(response, status, code):
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


def test_detail_shows_each_deliverys_status_attempts_error_and_transitions(
    api_client, order_shipped, settings
):
    settings.NOTIFY_PROVIDERS = {
        **django_settings.NOTIFY_PROVIDERS,
        "email": f"{__name__}.BusyEmailProvider",
    }
    recipient = RecipientFactory(external_id="u-42")
    notification_id = notify(api_client, "u-42", orderId="9")
    email = Delivery.objects.get(notification=notification_id, channel="email")
    inapp = Delivery.objects.get(notification=notification_id, channel="inapp")
    with pytest.raises(TransientDeliveryError):
        delivery_send(delivery_id=email.pk)
    delivery_send(delivery_id=inapp.pk)

    response = api_client.get(f"/api/notifications/{notification_id}")

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == notification_id
    assert body["userId"] == recipient.external_id
    assert body["event"] == "order_shipped"
    assert body["data"] == {"orderId": "9"}
    assert body["idempotencyKey"] is None
    assert body["createdAt"]
    by_channel = {d["channel"]: d for d in body["deliveries"]}
    assert [d["channel"] for d in body["deliveries"]] == ["email", "inapp"]

    busy = by_channel["email"]
    assert busy["status"] == "queued"
    assert busy["attempts"] == 1
    assert busy["lastError"] == "busy 503: try again later"
    assert [t["status"] for t in busy["transitions"]] == ["queued", "sending", "queued"]
    assert busy["transitions"][-1]["error"] == "busy 503: try again later"
    assert [t["attempt"] for t in busy["transitions"]] == [0, 1, 1]
    assert busy["content"]["subject"] == "Order 9 shipped"

    sent = by_channel["inapp"]
    assert sent["status"] == "sent"
    assert sent["attempts"] == 1
    assert sent["lastError"] == ""
    assert sent["provider"] == "inapp"
    assert sent["providerMessageId"] == str(inapp.inbox_message.pk)
    assert sent["sentAt"] is not None
    assert [t["status"] for t in sent["transitions"]] == ["queued", "sending", "sent"]


def test_detail_of_a_skipped_delivery_gives_the_reason(api_client, order_shipped):
    RecipientFactory(external_id="u-42", email=None)
    notification_id = notify(api_client, "u-42", channels=["email"])

    delivery = api_client.get(f"/api/notifications/{notification_id}").json()["deliveries"][0]

    assert delivery["status"] == "skipped"
    assert delivery["reason"] == "no_email"
    assert delivery["attempts"] == 0
    assert delivery["skippedAt"] is not None
    assert delivery["queuedAt"] is None
    assert [t["status"] for t in delivery["transitions"]] == ["skipped"]


def test_detail_of_an_unknown_id_is_a_json_404(api_client, db):
    response = api_client.get(f"/api/notifications/{uuid.uuid4()}")
    assert_error(response, 404, "not_found")


@pytest.mark.parametrize("path", ["/api/notifications/not-a-uuid", "/api/notifications/123"])
def test_detail_of_a_non_uuid_path_is_a_json_404(api_client, db, path):
    response = api_client.get(path)
    assert response["Content-Type"].startswith("application/json")
    assert_error(response, 404, "not_found")


def test_detail_needs_an_api_key(order_shipped, client):
    response = client.get(f"/api/notifications/{uuid.uuid4()}")
    assert_error(response, 401, "unauthorized")


@pytest.fixture
def log(api_client, order_shipped):
    """Five notifications with distinct creation times, oldest first."""
    reset = EventFactory(key="password_reset", category=order_shipped.category)
    for channel in ("email", "inapp"):
        TemplateFactory(event=reset, channel=channel)
    RecipientFactory(external_id="ana")
    RecipientFactory(external_id="bob", email=None)
    ids = [
        notify(api_client, "ana"),  # email queued, inapp queued
        notify(api_client, "bob"),  # email skipped, inapp queued
        notify(api_client, "ana", event="password_reset", channels=["email"]),
        notify(api_client, "bob", event="password_reset", channels=["inapp"]),
        notify(api_client, "ana", channels=["inapp"]),
    ]
    # One test transaction means one now(): spread the rows out explicitly.
    start = timezone.now() - timedelta(hours=1)
    for n, notification_id in enumerate(ids):
        Notification.objects.filter(pk=notification_id).update(
            created_at=start + timedelta(minutes=n)
        )
    return ids


def listed_ids(response):
    assert response.status_code == 200, response.json()
    return [item["id"] for item in response.json()["results"]]


def test_list_is_newest_first(api_client, log):
    response = api_client.get("/api/notifications")
    assert listed_ids(response) == log[::-1]
    first = response.json()["results"][0]
    assert first["event"] == "order_shipped"
    assert [d["channel"] for d in first["deliveries"]] == ["inapp"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("userId=ana", [4, 2, 0]),
        ("userId=bob", [3, 1]),
        ("userId=carol", []),
        ("event=password_reset", [3, 2]),
        ("event=order_shipped&userId=ana", [4, 0]),
        ("status=skipped", [1]),
        ("status=queued&userId=bob", [3, 1]),
        ("channel=email", [2, 1, 0]),
        ("channel=inapp&event=password_reset", [3]),
        ("status=sent", []),
    ],
)
def test_list_filters(api_client, log, query, expected):
    assert listed_ids(api_client.get(f"/api/notifications?{query}")) == [log[n] for n in expected]


def test_status_and_channel_filters_match_one_delivery_each_not_the_same_one(api_client, log):
    # bob's order: email skipped, inapp queued. "skipped on inapp" matches no delivery.
    assert listed_ids(api_client.get("/api/notifications?status=skipped&channel=inapp")) == []
    assert listed_ids(api_client.get("/api/notifications?status=skipped&channel=email")) == [log[1]]


@pytest.mark.parametrize(
    ("query", "field"),
    [("status=lost", "status"), ("channel=pigeon", "channel")],
)
def test_list_rejects_unknown_filter_values(api_client, log, query, field):
    response = api_client.get(f"/api/notifications?{query}")
    assert_error(response, 400, "validation_error")
    assert set(response.json()["error"]["fields"]) == {field}


def follow_pages(client, url):
    pages = []
    while url:
        response = client.get(url)
        assert response.status_code == 200
        pages.append([item["id"] for item in response.json()["results"]])
        url = response.json()["next"]
        assert len(pages) < 50, "pagination does not end"
    return pages


def test_cursor_pagination_visits_every_notification_once_newest_first(api_client, log):
    pages = follow_pages(api_client, "/api/notifications?pageSize=2")

    assert [len(page) for page in pages] == [2, 2, 1]
    assert [item for page in pages for item in page] == log[::-1]


def test_cursor_pagination_with_a_filter_keeps_the_filter(api_client, log):
    pages = follow_pages(api_client, "/api/notifications?userId=ana&pageSize=1")

    assert [item for page in pages for item in page] == [log[4], log[2], log[0]]


def test_cursor_pagination_with_identical_creation_times(api_client, order_shipped):
    # Rows created in one transaction (a broadcast, a batch import) share created_at.
    RecipientFactory(external_id="ana")
    ids = {notify(api_client, "ana") for _ in range(40)}
    assert Notification.objects.values("created_at").distinct().count() == 1

    for size in (1, 2, 3, 7, 11):
        pages = follow_pages(api_client, f"/api/notifications?pageSize={size}")
        seen = [item for page in pages for item in page]
        assert len(seen) == len(ids), size
        assert sorted(seen) == sorted(ids), size


def test_page_size_is_capped(api_client, order_shipped):
    RecipientFactory(external_id="ana")
    for _ in range(3):
        notify(api_client, "ana")
    response = api_client.get("/api/notifications?pageSize=100000")
    assert len(response.json()["results"]) == 3
    assert response.json()["next"] is None


def test_list_needs_an_api_key(client, db):
    assert_error(client.get("/api/notifications"), 401, "unauthorized")
