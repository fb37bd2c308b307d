"""What push tests share: a queued push delivery, sending it in-process, and a stand-in
platform sender whose verdict per token the test sets."""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

import pytest

from channels.base import (
    OutboundMessage,
    PermanentDeliveryError,
    ProviderConfigurationError,
    TransientDeliveryError,
)
from notifications import services
from notifications.models import Delivery
from notifications.services import Outcome
from preferences.models import Device
from tests.factories import DeliveryFactory


def queued_push(recipient: Any, event: Any, body: str = "On its way.", **data: Any) -> Delivery:
    """A queued push delivery of order 77 to ``recipient``'s devices, ``data`` added."""
    return DeliveryFactory(
        notification__recipient=recipient,
        notification__event=event,
        notification__data={"orderId": "77", **data},
        channel="push",
        content={"subject": "Order 77 shipped", "body": body},
    )


def send_push(device: Device, event: Any, **data: Any) -> tuple[Outcome, Delivery]:
    """Queues a push to ``device``'s recipient and sends it once, as the task would."""
    delivery = queued_push(device.recipient, event, **data)
    outcome = services.delivery_send(delivery_id=delivery.pk, task_name="t")
    delivery.refresh_from_db()
    return outcome, delivery


# A token's readable name, for the tokens apns_token() made.
_NAMES: dict[str, str] = {}


def apns_token(name: str) -> str:
    """A valid APNs token (64 hex digits, the fake's "good" prefix) standing for ``name``:
    the same name, the same token. RecordingSender's verdicts and records use the names."""
    token = "600d" + hashlib.sha256(name.encode()).hexdigest()[:60]
    _NAMES[token] = name
    return token


class RecordingSender:
    """An APNs stand-in: "dead" → Unregistered, "flaky" → one 503 then fine, "throttled" →
    429 with Retry-After 30, "misconfigured" → InvalidProviderToken, else sent (recorded).
    Verdicts, ``sent`` and message ids use the token's name (``apns_token``)."""

    platform: ClassVar[str] = "apns"
    name: ClassVar[str] = "fake-apns"
    verdicts: ClassVar[dict[str, str]] = {}
    sent: ClassVar[list[str]] = []

    async def send_to_device(self, token: str, message: OutboundMessage) -> str:
        name = _NAMES.get(token, token)
        verdict = self.verdicts.get(name, "ok")
        if verdict == "dead":
            raise PermanentDeliveryError(
                "Unregistered",
                provider=self.name,
                status_code=410,
                provider_code="Unregistered",
                dead_device_tokens=(token,),
            )
        if verdict == "flaky":
            self.verdicts[name] = "ok"  # fails once, then recovers
            raise TransientDeliveryError("503 Service Unavailable", provider=self.name)
        if verdict == "throttled":
            raise TransientDeliveryError("429", provider=self.name, retry_after=30)
        if verdict == "misconfigured":
            raise ProviderConfigurationError("InvalidProviderToken")
        self.sent.append(name)
        return f"apns-id-{name}"

    async def aclose(self) -> None:
        pass

    @classmethod
    def check_configuration(cls) -> list[str]:
        return []


@pytest.fixture
def push_sender(settings: Any) -> type[RecordingSender]:
    """Push enabled, APNs devices sent through RecordingSender, FCM off."""
    settings.NOTIFY_PROVIDERS = {
        **settings.NOTIFY_PROVIDERS,
        "push": "channels.providers.push.PushProvider",
    }
    settings.NOTIFY_PUSH_SENDERS = {"apns": f"{__name__}.RecordingSender", "fcm": ""}
    RecordingSender.verdicts = {}
    RecordingSender.sent = []
    return RecordingSender
