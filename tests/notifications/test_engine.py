"""The delivery engine (notifications/services/engine.py): a batch's provider calls go
concurrently on the process's I/O loop, gated and recorded a round at a time; one bad call
fails only its own delivery; a transactional delivery is a batch of one through the same path."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import pytest

from channels.base import OutboundMessage
from notifications.models import Delivery, DeliveryStatus, FailedDelivery
from notifications.services import Outcome, engine
from notifications.tasks import deliver_push, deliver_push_batch
from tests.channels.push import apns_token
from tests.factories import DeviceFactory, RecipientFactory
from tests.notifications import broadcasting
from tests.notifications.broadcasting import fan_out, start_broadcast

news = broadcasting.news
pytestmark = pytest.mark.django_db


class SlowSender:
    """An APNs stand-in that takes 20 ms per device and counts the calls in flight at once;
    a token named "boom" raises a bug (not a delivery error)."""

    platform: ClassVar[str] = "apns"
    name: ClassVar[str] = "slow-apns"
    in_flight: ClassVar[int] = 0
    most: ClassVar[int] = 0
    calls: ClassVar[list[str]] = []

    async def send_to_device(self, token: str, message: OutboundMessage) -> str:
        cls = type(self)
        cls.in_flight += 1
        cls.most = max(cls.most, cls.in_flight)
        try:
            await asyncio.sleep(0.02)
            if token == apns_token("boom"):
                raise KeyError("a bug in the sender")
            cls.calls.append(token)
            return f"id-{token[-6:]}"
        finally:
            cls.in_flight -= 1

    async def aclose(self) -> None:
        pass

    @classmethod
    def check_configuration(cls) -> list[str]:
        return []


@pytest.fixture
def slow_sender(settings: Any) -> type[SlowSender]:
    settings.NOTIFY_PROVIDERS = {
        **settings.NOTIFY_PROVIDERS,
        "push": "channels.providers.push.PushProvider",
    }
    settings.NOTIFY_PUSH_SENDERS = {"apns": f"{__name__}.SlowSender", "fcm": ""}
    SlowSender.in_flight, SlowSender.most, SlowSender.calls = 0, 0, []
    return SlowSender


def _push_deliveries(news: Any, names: list[str]) -> list[int]:
    users = []
    for name in names:
        user = RecipientFactory()
        DeviceFactory(recipient=user, platform="apns", token=apns_token(name))
        users.append(user)
    broadcast_id = start_broadcast(
        news, {"userIds": [u.external_id for u in users]}, channels=["push"]
    )
    fan_out(broadcast_id)
    return list(Delivery.objects.filter(channel="push").order_by("pk").values_list("pk", flat=True))


def test_a_batchs_device_calls_are_in_flight_together_up_to_the_setting(
    news, slow_sender, settings
):
    settings.NOTIFY_DELIVERY_IN_FLIGHT = {**settings.NOTIFY_DELIVERY_IN_FLIGHT, "push": 16}
    ids = _push_deliveries(news, [f"user{i}" for i in range(40)])

    result = engine.deliver(ids, channel="push")

    assert set(result.outcomes.values()) == {Outcome.SENT}
    assert slow_sender.most == 16  # not one at a time, and never more than allowed
    assert len(slow_sender.calls) == 40
    assert Delivery.objects.filter(status=DeliveryStatus.SENT).count() == 40


def test_a_bug_in_one_call_fails_only_its_delivery_with_the_traceback(news, slow_sender):
    ids = _push_deliveries(news, ["fine", "boom", "also-fine"])

    counts = deliver_push_batch.apply(args=(ids,)).get()

    assert counts == {"sent": 2, "failed": 1}
    boom = Delivery.objects.get(notification__recipient__devices__token=apns_token("boom"))
    assert boom.status == DeliveryStatus.FAILED
    letter = FailedDelivery.objects.get(delivery=boom)
    assert "KeyError" in letter.error_class or "KeyError" in letter.error_message
    assert "a bug in the sender" in letter.traceback


def test_a_transactional_delivery_is_a_batch_of_one_with_the_same_record(news, slow_sender):
    alone, batched = _push_deliveries(news, ["alone", "batched"])

    assert deliver_push.apply(args=(alone,)).get() == "sent"
    assert deliver_push_batch.apply(args=([batched],)).get() == {"sent": 1}

    def record(pk: int) -> tuple[Any, ...]:
        d = Delivery.objects.get(pk=pk)
        return (
            d.status,
            d.attempts,
            d.provider,
            [(e["status"], e["attempt"]) for e in d.history],
            [o["status"] for o in d.results.values()],
            d.lease_until,
        )

    assert record(alone) == record(batched)
    assert record(alone)[0] == DeliveryStatus.SENT and record(alone)[2] == "slow-apns"


def test_a_delivery_claimed_elsewhere_is_neither_sent_nor_loaded(news, slow_sender):
    ids = _push_deliveries(news, ["taken", "free"])
    Delivery.objects.filter(pk=ids[0]).update(status=DeliveryStatus.SENDING)

    result = engine.deliver(ids, channel="push")

    assert result.outcomes == {ids[0]: Outcome.NOT_CLAIMED, ids[1]: Outcome.SENT}
    assert slow_sender.calls == [apns_token("free")]
