from __future__ import annotations

from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand

from preferences.models import Device, Recipient
from preferences.services import device_register, device_remove

# What the local fakes (devtools/fakes/) deliver: their answer depends on the address, number or
# token, and none of these asks for a failure. The phone is outside the Twilio fake's +1555010xxxx
# failure numbers, and (unlike those) a valid number, so the admin and the API accept it too.
DEMO_EMAIL = "demo@example.com"
DEMO_PHONE = "+14155550100"
# The APNs token is 64 hex digits like Apple's, after the APNs fake's "good" prefix 600d.
DEMO_APNS_DEVICE = "600d" + "de70" * 15
DEMO_FCM_DEVICE = "demo-fcm-token"
DEMO_DEVICES = (
    (Device.Platform.APNS, DEMO_APNS_DEVICE),
    (Device.Platform.FCM, DEMO_FCM_DEVICE),
)


class Command(BaseCommand):
    help = (
        "Load the catalog and a demo recipient (userId 'demo-user', with an email address, a "
        "phone number, an APNs and an FCM device) for trying the API."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        call_command("load_catalog", stdout=self.stdout)
        recipient, _ = Recipient.objects.update_or_create(
            external_id="demo-user",
            defaults={"email": DEMO_EMAIL, "phone": DEMO_PHONE, "locale": "en"},
        )
        kept = set()
        for platform, token in DEMO_DEVICES:
            # The API's own registration (token rules included), which also reactivates: a
            # demo that pruned its own device should not stay broken.
            kept.add(device_register(recipient=recipient, platform=platform, token=token).device.pk)
        # The demo has exactly its own devices: one left by an older demo (a token the
        # registration rules now refuse) would be pushed to, and fail, on every run.
        for device_id in recipient.devices.exclude(pk__in=kept).values_list("pk", flat=True):
            device_remove(recipient=recipient, device_id=device_id)
        self.stdout.write("demo recipient 'demo-user' ready")
