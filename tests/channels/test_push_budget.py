"""A push attempt never outlasts its claim's lease: past its time budget the remaining devices
wait for the next attempt, which is not counted. Otherwise the sweep would hand a slow
multi-device delivery to a second worker that sends to the devices again."""

from __future__ import annotations

import pytest

from channels.base import ProviderPaused
from notifications import services
from notifications.models import Delivery, DeliveryStatus
from notifications.services import Outcome
from preferences.models import Device
from tests.channels.push import push_sender, queued_push
from tests.factories import DeviceFactory, RecipientFactory

__all__ = ["push_sender"]
pytestmark = pytest.mark.django_db


def test_devices_past_the_budget_wait_for_the_next_attempt(push_sender, order_shipped, settings):
    # Lease 5 s, one round of calls up to 3 + 1 s: no second round fits after the first one
    # (a round is one call here).
    settings.NOTIFY_DELIVERY_IN_FLIGHT = {**settings.NOTIFY_DELIVERY_IN_FLIGHT, "push": 1}
    settings.NOTIFY_LEASE_SECONDS = 5
    settings.NOTIFY_PROVIDER_TIMEOUT_SECONDS = 3
    settings.NOTIFY_RATE_LIMIT_MAX_WAIT_SECONDS = 1
    recipient = RecipientFactory()
    devices = [DeviceFactory(recipient=recipient, platform=Device.Platform.APNS) for i in range(2)]
    delivery = queued_push(recipient, order_shipped)
    push_sender.sent.clear()

    with pytest.raises(ProviderPaused):  # the task re-publishes it (publish_retries)
        services.delivery_send(delivery_id=delivery.pk)

    delivery = Delivery.objects.get(pk=delivery.pk)
    assert delivery.status == DeliveryStatus.QUEUED
    assert delivery.attempts == 0  # deferred, not attempted
    assert len(push_sender.sent) == 1
    assert set(delivery.results) == {push_sender.sent[0]}

    second = services.delivery_send(delivery_id=delivery.pk)

    assert second == Outcome.SENT
    assert sorted(push_sender.sent) == sorted(d.token for d in devices)  # each exactly once
