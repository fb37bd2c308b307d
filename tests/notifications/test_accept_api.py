from __future__ import annotations

import pytest

from notifications.models import Delivery, Notification
from tests.factories import RecipientFactory

pytestmark = pytest.mark.django_db


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
    assert broker.queued("email") == 1
    assert broker.queued("inapp") == 1
