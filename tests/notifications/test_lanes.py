"""Transactional and bulk lanes: each delivery is published on its channel's lane queue."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from channels.lanes import EMAIL
from notifications import services
from notifications.models import Delivery, Notification
from preferences.models import Event
from tests.factories import RecipientFactory

pytestmark = pytest.mark.django_db


def _notify(api_client, user_id: str, **extra):
    response = api_client.post(
        "/api/notify",
        {"userId": user_id, "event": "order_shipped", "channels": ["email"], **extra},
        format="json",
    )
    assert response.status_code == 202, response.content
    return response.json()["id"]


def test_the_event_decides_the_lane_and_the_request_may_override_it(
    api_client, order_shipped, broker, django_capture_on_commit_callbacks
):
    user = RecipientFactory().external_id
    with django_capture_on_commit_callbacks(execute=True):
        transactional = _notify(api_client, user)
        Event.objects.filter(pk=order_shipped.pk).update(priority="bulk")
        bulk = _notify(api_client, user)
        forced = _notify(api_client, user, priority="transactional")

    assert broker.queued(EMAIL.queue) == 2
    assert broker.queued(EMAIL.bulk_queue) == 1
    priorities = {str(pk): lane for pk, lane in Notification.objects.values_list("pk", "priority")}
    assert [priorities[n] for n in (transactional, bulk, forced)] == [
        "transactional",
        "bulk",
        "transactional",
    ]
    shown = api_client.get(f"/api/notifications/{bulk}").json()
    assert shown["priority"] == "bulk"


def test_an_unknown_priority_is_a_400(api_client, order_shipped):
    user = RecipientFactory().external_id
    response = api_client.post(
        "/api/notify",
        {"userId": user, "event": "order_shipped", "priority": "urgent"},
        format="json",
    )
    assert response.status_code == 400
    assert "priority" in response.json()["error"]["fields"]


def test_the_sweep_puts_a_bulk_delivery_back_on_the_bulk_lane(
    api_client, order_shipped, broker, django_capture_on_commit_callbacks
):
    user = RecipientFactory().external_id
    notification_id = _notify(api_client, user, priority="bulk")  # never published
    Delivery.objects.filter(notification_id=notification_id).update(
        lease_until=timezone.now() - timedelta(seconds=1)
    )

    with django_capture_on_commit_callbacks(execute=True):
        assert services.sweep_stuck_deliveries() == 1

    assert (broker.queued(EMAIL.queue), broker.queued(EMAIL.bulk_queue)) == (0, 1)
