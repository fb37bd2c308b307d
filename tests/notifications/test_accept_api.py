from __future__ import annotations

import uuid

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext

from channels.lanes import EMAIL, INAPP, MAINTENANCE_QUEUE
from notifications.models import Delivery, DeliveryStatus, Notification
from tests.factories import CategoryFactory, DeviceFactory, PreferenceFactory, RecipientFactory

pytestmark = pytest.mark.django_db

# The accept path's queries, whatever the channels, devices or rules: API key, event,
# recipient, preference rules, devices, templates, savepoint, notification insert, delivery
# insert, savepoint release.
MAX_ACCEPT_QUERIES = 10


def all_channels_configured() -> dict[str, str]:
    # The accept path only asks whether a channel has a provider; it never imports it.
    return {**settings.NOTIFY_PROVIDERS, "push": "tests.fake.Push", "sms": "tests.fake.Sms"}


def published_tasks(broker, queue: str) -> list[tuple[str, list]]:
    """(task name, args) of every message waiting on ``queue`` (Celery protocol 2)."""
    tasks = []
    for message in reversed(broker.messages(queue)):  # newest first
        args, _kwargs, _embed = message["body"]
        tasks.append((message["headers"]["task"], args))
    return tasks


def test_accept_queues_deliveries_and_enqueues_after_commit(
    api_client, order_shipped, broker, django_capture_on_commit_callbacks
):
    recipient = RecipientFactory()
    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.post(
            "/api/notify",
            {"userId": recipient.external_id, "event": "order_shipped", "data": {"orderId": "9"}},
            format="json",
        )
    assert response.status_code == 202
    body = response.json()
    assert body["deliveries"] == [
        {"channel": "email", "status": "queued"},
        {"channel": "inapp", "status": "queued"},
    ]
    notification = Notification.objects.get(pk=body["id"])
    email = Delivery.objects.get(notification=notification, channel="email")
    assert email.content["subject"] == "Order 9 shipped"
    assert broker.queued(EMAIL.queue) == 1
    assert broker.queued(INAPP.queue) == 1


def test_accept_records_the_notification_and_one_queued_delivery_per_channel(
    api_client, api_key, order_shipped, broker, django_capture_on_commit_callbacks
):
    recipient = RecipientFactory()
    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.post(
            "/api/notify",
            {"userId": recipient.external_id, "event": "order_shipped", "data": {"orderId": "9"}},
            format="json",
        )

    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"id", "deliveries"}
    notification = Notification.objects.get(pk=uuid.UUID(body["id"]))
    assert notification.api_key_id == api_key[0].pk
    assert notification.recipient_id == recipient.pk
    assert notification.external_user_id == recipient.external_id
    assert notification.event_id == order_shipped.pk
    assert notification.data == {"orderId": "9"}
    assert notification.idempotency_key is None
    assert notification.accept_response == body
    deliveries = {d.channel: d for d in notification.deliveries.all()}
    assert set(deliveries) == {"email", "inapp"}
    for delivery in deliveries.values():
        assert delivery.status == DeliveryStatus.QUEUED
        assert delivery.attempts == 0
        assert delivery.queued_at is not None
        assert delivery.lease_until is not None
        assert delivery.skipped_at is None
        assert [entry["status"] for entry in delivery.history] == ["queued"]
    assert deliveries["inapp"].content["body"] == "Your order 9 is on its way."


def test_tasks_are_published_only_after_commit_and_name_the_delivery(
    api_client, order_shipped, broker, django_capture_on_commit_callbacks
):
    recipient = RecipientFactory()
    with django_capture_on_commit_callbacks() as callbacks:
        response = api_client.post(
            "/api/notify",
            {"userId": recipient.external_id, "event": "order_shipped", "data": {"orderId": "9"}},
            format="json",
        )
    assert response.status_code == 202
    # The rows exist, but until the transaction commits nothing may reach a worker.
    assert broker.queued(EMAIL.queue) == 0
    assert broker.queued(INAPP.queue) == 0

    for callback in callbacks:
        callback()

    deliveries = {
        d.channel: d.pk for d in Delivery.objects.filter(notification=response.json()["id"])
    }
    assert published_tasks(broker, EMAIL.queue) == [(EMAIL.task, [deliveries["email"]])]
    assert published_tasks(broker, INAPP.queue) == [(INAPP.task, [deliveries["inapp"]])]
    assert broker.queued(MAINTENANCE_QUEUE) == 0


def test_explicit_channels_replace_the_event_defaults(
    api_client, order_shipped, broker, django_capture_on_commit_callbacks
):
    recipient = RecipientFactory()
    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.post(
            "/api/notify",
            {
                "userId": recipient.external_id,
                "event": "order_shipped",
                "channels": ["inapp"],
                "data": {"orderId": "9"},
            },
            format="json",
        )

    assert response.status_code == 202
    assert response.json()["deliveries"] == [{"channel": "inapp", "status": "queued"}]
    assert list(Delivery.objects.values_list("channel", flat=True)) == ["inapp"]
    assert broker.queued(INAPP.queue) == 1
    assert broker.queued(EMAIL.queue) == 0


def test_data_is_optional(api_client, order_shipped, broker, django_capture_on_commit_callbacks):
    recipient = RecipientFactory()
    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.post(
            "/api/notify",
            {"userId": recipient.external_id, "event": "order_shipped", "channels": ["email"]},
            format="json",
        )

    assert response.status_code == 202
    assert Notification.objects.get().data == {}
    assert Delivery.objects.get().content["subject"] == "Order  shipped"


def test_duplicate_channels_are_refused_not_merged(api_client, order_shipped, broker):
    # They used to be merged without a word.
    recipient = RecipientFactory()
    response = api_client.post(
        "/api/notify",
        {
            "userId": recipient.external_id,
            "event": "order_shipped",
            "channels": ["inapp", "email", "inapp", "email"],
            "data": {"orderId": "9"},
        },
        format="json",
    )

    assert response.status_code == 400, response.content
    assert set(response.json()["error"]["fields"]) == {"channels"}
    assert not Delivery.objects.exists()
    assert broker.queued(INAPP.queue) == 0


def test_all_four_channels_when_configured(
    api_client, order_shipped, broker, settings, django_capture_on_commit_callbacks
):
    settings.NOTIFY_PROVIDERS = all_channels_configured()
    recipient = RecipientFactory()
    DeviceFactory(recipient=recipient)
    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.post(
            "/api/notify",
            {
                "userId": recipient.external_id,
                "event": "order_shipped",
                "channels": ["push", "email", "sms", "inapp"],
                "data": {"orderId": "9"},
            },
            format="json",
        )

    assert response.status_code == 202
    assert [d["status"] for d in response.json()["deliveries"]] == ["queued"] * 4
    for queue in ("push", "email", "sms", "inapp"):
        assert broker.queued(queue) == 1, queue


def _count_accept_queries(client, user_id: str, channels: list[str]) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.post(
            "/api/notify",
            {
                "userId": user_id,
                "event": "order_shipped",
                "channels": channels,
                "data": {"orderId": "9"},
            },
            format="json",
        )
    assert response.status_code == 202, response.json()
    assert all(d["status"] == "queued" for d in response.json()["deliveries"])
    return len(queries)


def test_accept_query_count_does_not_grow_with_channels_devices_or_rules(
    api_client, order_shipped, broker, settings
):
    settings.NOTIFY_PROVIDERS = all_channels_configured()
    all_channels = ["push", "email", "sms", "inapp"]

    small = RecipientFactory()
    DeviceFactory(recipient=small)
    one_channel = _count_accept_queries(api_client, small.external_id, ["push"])
    four_channels = _count_accept_queries(api_client, small.external_id, all_channels)

    big = RecipientFactory()
    DeviceFactory.create_batch(10, recipient=big)
    PreferenceFactory(recipient=big, category=None, channel=None, enabled=True)
    PreferenceFactory(recipient=big, category=order_shipped.category, channel=None, enabled=True)
    for channel in all_channels:
        PreferenceFactory(recipient=big, category=None, channel=channel, enabled=True)
        PreferenceFactory(
            recipient=big, category=order_shipped.category, channel=channel, enabled=True
        )
    for n in range(4):
        # Rules of other categories are not even read.
        PreferenceFactory(
            recipient=big,
            category=CategoryFactory(key=f"other-{n}"),
            channel=None,
            enabled=False,
        )
    many = _count_accept_queries(api_client, big.external_id, all_channels)

    assert one_channel == four_channels == many
    assert many <= MAX_ACCEPT_QUERIES
