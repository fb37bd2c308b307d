"""What the rate-limit, circuit-breaker and shutdown tests share: a clean slate of guard state
in Redis, an in-process Twilio fake the test process and worker processes both reach, and SMS
deliveries to it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.conf import settings

from devtools.fakes.twilio import FakeTwilioServer
from notifications.models import Delivery
from preferences.models import Priority
from tests.factories import DeliveryFactory, RecipientFactory

SENDER = "+15005550006"
SLOW_NUMBER = "+15550100999"  # the fake answers it after its slow_seconds


def clear_guard_state() -> None:
    """Forget every rate-limit window and circuit (they live in the tests' own Redis db)."""
    client = redis.Redis.from_url(settings.NOTIFY_GUARD_REDIS_URL)
    keys = [*client.scan_iter("notify:ratelimit*"), *client.scan_iter("notify:circuit*")]
    if keys:
        client.delete(*keys)


@pytest.fixture
def guard_state() -> Iterator[None]:
    clear_guard_state()
    yield
    clear_guard_state()


@pytest.fixture(scope="module")
def twilio_server() -> Iterator[FakeTwilioServer]:
    server = FakeTwilioServer(slow_seconds=3.0).start()
    yield server
    server.stop()


def point_sms_at(settings_: Any, server: FakeTwilioServer) -> None:
    """SMS through ``server`` (the in-process Twilio fake), from our sender number."""
    settings_.NOTIFY_PROVIDERS = {
        **settings_.NOTIFY_PROVIDERS,
        "sms": "channels.providers.sms.SMSProvider",
    }
    settings_.TWILIO_ACCOUNT_SID = server.account_sid
    settings_.TWILIO_AUTH_TOKEN = server.auth_token
    settings_.TWILIO_FROM_NUMBER = SENDER
    settings_.TWILIO_MESSAGING_SERVICE_SID = ""
    settings_.TWILIO_STATUS_CALLBACK_URL = ""
    settings_.TWILIO_API_BASE = server.url


@pytest.fixture
def twilio(settings: Any, twilio_server: FakeTwilioServer) -> FakeTwilioServer:
    """SMS through the in-process fake, which starts each test healthy and with no history."""
    point_sms_at(settings, twilio_server)
    twilio_server.fail_rate = 0.0
    twilio_server.reset()
    return twilio_server


def twilio_worker_env(server: FakeTwilioServer, **overrides: str) -> dict[str, str]:
    """A worker's environment for SMS through ``server``."""
    return {
        "NOTIFY_PROVIDER_SMS": "channels.providers.sms.SMSProvider",
        "TWILIO_ACCOUNT_SID": server.account_sid,
        "TWILIO_AUTH_TOKEN": server.auth_token,
        "TWILIO_FROM_NUMBER": SENDER,
        "TWILIO_API_BASE": server.url,
        "LOG_LEVEL": "WARNING",
        **overrides,
    }


def queued_sms(event: Any, number: str, *, priority: str = Priority.TRANSACTIONAL) -> Delivery:
    return DeliveryFactory(
        notification__recipient=RecipientFactory(phone=number),
        notification__event=event,
        notification__priority=priority,
        channel="sms",
        content={"subject": "Order 7 shipped", "body": "Your order 7 is on its way."},
    )


def numbers(count: int, start: int = 0) -> list[str]:
    """Distinct fictional numbers the fake simply accepts (+1555011xxxx)."""
    return [f"+1555011{n:04d}" for n in range(start, start + count)]


def received(server: FakeTwilioServer, number: str) -> int:
    return len(server.messages_to(number))


def assert_paused_for_configuration(delivery: Delivery, provider: str, cause: str) -> None:
    """``delivery`` waits in ``queued``, no attempt spent and no dead letter, because its
    provider refused our configuration; the provider is paused with ``cause`` as its reason."""
    from channels.gate import circuit
    from notifications.models import DeliveryStatus, FailedDelivery

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.QUEUED, 0), delivery.history
    assert delivery.history[-1]["deferred"] == "misconfigured"
    assert cause in delivery.history[-1]["error"]
    assert not FailedDelivery.objects.filter(delivery=delivery).exists()
    paused = circuit.status(provider)
    assert paused.state == circuit.State.OPEN
    assert cause in paused.cause
