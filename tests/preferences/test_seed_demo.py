"""manage.py seed_demo: the demo recipient's devices go through the registration's rules."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from preferences import tokens
from preferences.management.commands.seed_demo import DEMO_DEVICES
from preferences.models import Device

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
