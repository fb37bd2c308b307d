from __future__ import annotations

from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand

from preferences.models import Device, Recipient


class Command(BaseCommand):
    help = "Load the catalog and a demo recipient (userId 'demo-user') for trying the API."

    def handle(self, *args: Any, **options: Any) -> None:
        call_command("load_catalog", stdout=self.stdout)
        recipient, _ = Recipient.objects.update_or_create(
            external_id="demo-user",
            defaults={"email": "demo@example.com", "phone": "+14155550100", "locale": "en"},
        )
        Device.objects.get_or_create(
            platform=Device.Platform.FCM,
            token="demo-fcm-token",  # noqa: S106 (a push token, not a secret)
            defaults={"recipient": recipient},
        )
        self.stdout.write("demo recipient 'demo-user' ready")
