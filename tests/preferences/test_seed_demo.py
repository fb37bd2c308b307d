"""manage.py seed_demo: the demo recipient's devices go through the registration's rules."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from preferences import tokens
from preferences.management.commands.seed_demo import DEMO_DEVICES
from preferences.models import Device
from tests.factories import DeviceFactory

pytestmark = pytest.mark.django_db


def test_the_demo_devices_are_valid_and_reactivated_on_every_run():
    call_command("seed_demo", stdout=StringIO())
    Device.objects.update(active=False, deactivated_at=timezone.now(), deactivation_reason="x")

    call_command("seed_demo", stdout=StringIO())

    devices = {(d.platform, d.token): d for d in Device.objects.all()}
    assert set(devices) == set(DEMO_DEVICES)
    for (platform, token), device in devices.items():
        assert tokens.device_token(platform, token) == token
        assert device.recipient.external_id == "demo-user"
        assert device.active and device.deactivated_at is None and not device.deactivation_reason


def test_devices_an_older_demo_left_on_the_demo_recipient_are_removed():
    call_command("seed_demo", stdout=StringIO())
    demo = Device.objects.first().recipient
    # An older demo's token, which today's registration rules refuse.
    DeviceFactory(recipient=demo, platform=Device.Platform.APNS, token="demo-apns-token")
    elsewhere = DeviceFactory()

    call_command("seed_demo", stdout=StringIO())

    assert {(d.platform, d.token) for d in demo.devices.all()} == set(DEMO_DEVICES)
    assert Device.objects.filter(pk=elsewhere.pk).exists()
