"""Which deliveries POST /api/notify queues and which it records as skipped, and why."""

from __future__ import annotations

import pytest
from django.conf import settings as django_settings

from channels.lanes import EMAIL
from notifications.models import Delivery, DeliveryStatus
from tests.conftest import QUEUES
from tests.factories import (
    CategoryFactory,
    DeviceFactory,
    EventFactory,
    PreferenceFactory,
    RecipientFactory,
    TemplateFactory,
)

pytestmark = pytest.mark.django_db

ALL_CHANNELS = ["push", "email", "sms", "inapp"]


@pytest.fixture
def all_configured(settings):
    # The accept path only asks whether a channel has a provider; it never imports it.
    settings.NOTIFY_PROVIDERS = {
        **django_settings.NOTIFY_PROVIDERS,
        "push": "tests.fake.Push",
        "sms": "tests.fake.Sms",
    }


@pytest.fixture
def notify(api_client, broker, django_capture_on_commit_callbacks):
    def call(recipient, event="order_shipped", channels=None):
        payload = {"userId": recipient.external_id, "event": event, "data": {"orderId": "1"}}
        if channels is not None:
            payload["channels"] = channels
        with django_capture_on_commit_callbacks(execute=True):
            response = api_client.post("/api/notify", payload, format="json")
        assert response.status_code == 202, response.json()
        return {d["channel"]: d for d in response.json()["deliveries"]}

    return call


def skipped(reason):
    return {"status": "skipped", "reason": reason}


def outcome(deliveries, channel):
    return {key: value for key, value in deliveries[channel].items() if key != "channel"}


def assert_queues(broker, **expected):
    assert {q: broker.queued(q) for q in QUEUES} == {q: expected.get(q, 0) for q in QUEUES}


def test_opted_out_of_one_channel(order_shipped, notify, broker):
    recipient = RecipientFactory()
    PreferenceFactory(recipient=recipient, channel="email", enabled=False)

    deliveries = notify(recipient)

    assert outcome(deliveries, "email") == skipped("opted_out")
    assert outcome(deliveries, "inapp") == {"status": "queued"}
    assert_queues(broker, inapp=1)
    email = Delivery.objects.get(channel="email")
    assert email.status == DeliveryStatus.SKIPPED
    assert email.reason == "opted_out"
    assert email.skipped_at is not None
    assert email.queued_at is None
    assert email.lease_until is None
    assert email.content == {}
    assert email.history[0]["status"] == "skipped"
    assert email.history[0]["reason"] == "opted_out"


def test_opted_out_of_the_category(order_shipped, notify, broker):
    recipient = RecipientFactory()
    PreferenceFactory(recipient=recipient, category=order_shipped.category, enabled=False)

    deliveries = notify(recipient)

    assert outcome(deliveries, "email") == skipped("opted_out")
    assert outcome(deliveries, "inapp") == skipped("opted_out")
    assert_queues(broker)
    assert Delivery.objects.filter(status="skipped").count() == 2


def test_opting_out_of_another_category_changes_nothing(order_shipped, notify, broker):
    recipient = RecipientFactory()
    PreferenceFactory(recipient=recipient, category=CategoryFactory(key="marketing"))

    deliveries = notify(recipient)

    assert outcome(deliveries, "email") == {"status": "queued"}
    assert_queues(broker, email=1, inapp=1)


def test_another_recipients_rules_do_not_apply(order_shipped, notify, broker):
    recipient = RecipientFactory()
    PreferenceFactory(recipient=RecipientFactory(), category=None, channel=None, enabled=False)

    deliveries = notify(recipient)

    assert outcome(deliveries, "email") == {"status": "queued"}


def test_global_opt_out(order_shipped, notify, broker, all_configured):
    recipient = RecipientFactory()
    DeviceFactory(recipient=recipient)
    PreferenceFactory(recipient=recipient, category=None, channel=None, enabled=False)

    deliveries = notify(recipient, channels=ALL_CHANNELS)

    assert {c: outcome(deliveries, c) for c in ALL_CHANNELS} == dict.fromkeys(
        ALL_CHANNELS, skipped("opted_out")
    )
    assert_queues(broker)


ORDERS = "orders"
ALL = None


@pytest.mark.parametrize(
    ("rules", "email_allowed"),
    [
        ([], True),
        ([(ALL, ALL, False)], False),
        ([(ALL, ALL, False), (ALL, "email", True)], True),
        ([(ALL, ALL, True), (ALL, "email", False)], False),
        ([(ALL, "email", False), (ORDERS, ALL, True)], True),
        ([(ALL, "email", True), (ORDERS, ALL, False)], False),
        ([(ORDERS, ALL, False), (ORDERS, "email", True)], True),
        ([(ORDERS, ALL, True), (ORDERS, "email", False)], False),
        (
            [
                (ORDERS, "email", True),
                (ORDERS, ALL, False),
                (ALL, "email", False),
                (ALL, ALL, False),
            ],
            True,
        ),
        (
            [(ORDERS, "email", False), (ORDERS, ALL, True), (ALL, "email", True), (ALL, ALL, True)],
            False,
        ),
        ([(ALL, ALL, False), (ORDERS, "inapp", True)], False),
    ],
    ids=[
        "no-rules",
        "all-all-off",
        "all-channel-beats-all-all",
        "all-channel-off-beats-all-all-on",
        "category-all-beats-all-channel",
        "category-all-off-beats-all-channel-on",
        "category-channel-beats-category-all",
        "category-channel-off-beats-category-all-on",
        "category-channel-on-beats-everything",
        "category-channel-off-beats-everything",
        "other-channel-rule-does-not-apply",
    ],
)
def test_most_specific_rule_wins(order_shipped, notify, broker, rules, email_allowed):
    recipient = RecipientFactory()
    for category, channel, enabled in rules:
        PreferenceFactory(
            recipient=recipient,
            category=order_shipped.category if category == ORDERS else None,
            channel=channel,
            enabled=enabled,
        )

    deliveries = notify(recipient, channels=["email"])

    if email_allowed:
        assert outcome(deliveries, "email") == {"status": "queued"}
        assert broker.queued(EMAIL.queue) == 1
    else:
        assert outcome(deliveries, "email") == skipped("opted_out")
        assert broker.queued(EMAIL.queue) == 0


def test_critical_category_ignores_every_opt_out(security_code, notify, broker):
    recipient = RecipientFactory()
    # Written straight to the table: the API refuses a critical opt-out, an old row may not.
    PreferenceFactory(recipient=recipient, category=None, channel=None, enabled=False)
    PreferenceFactory(recipient=recipient, category=None, channel="email", enabled=False)
    PreferenceFactory(recipient=recipient, category=security_code.category, enabled=False)
    PreferenceFactory(
        recipient=recipient, category=security_code.category, channel="email", enabled=False
    )

    deliveries = notify(recipient, event="login_code", channels=["email", "inapp"])

    assert outcome(deliveries, "email") == {"status": "queued"}
    assert outcome(deliveries, "inapp") == {"status": "queued"}
    assert_queues(broker, email=1, inapp=1)


def test_critical_category_still_needs_a_way_to_reach(security_code, notify, broker):
    recipient = RecipientFactory(email=None)

    deliveries = notify(recipient, event="login_code")

    assert outcome(deliveries, "email") == skipped("no_email")
    assert_queues(broker)


@pytest.mark.parametrize("email", [None, ""])
def test_no_email_address(order_shipped, notify, broker, email):
    recipient = RecipientFactory(email=email)

    deliveries = notify(recipient)

    assert outcome(deliveries, "email") == skipped("no_email")
    assert outcome(deliveries, "inapp") == {"status": "queued"}
    assert_queues(broker, inapp=1)


def test_no_phone_number(order_shipped, notify, broker, all_configured):
    recipient = RecipientFactory(phone=None)

    deliveries = notify(recipient, channels=["sms"])

    assert outcome(deliveries, "sms") == skipped("no_phone")
    assert_queues(broker)


def test_sms_with_a_phone_number_is_queued(order_shipped, notify, broker, all_configured):
    recipient = RecipientFactory(phone="+14155550100")

    deliveries = notify(recipient, channels=["sms"])

    assert outcome(deliveries, "sms") == {"status": "queued"}
    assert_queues(broker, sms=1)


def test_push_without_any_device(order_shipped, notify, broker, all_configured):
    recipient = RecipientFactory()
    DeviceFactory(recipient=RecipientFactory())  # someone else's phone

    deliveries = notify(recipient, channels=["push"])

    assert outcome(deliveries, "push") == skipped("no_device")
    assert_queues(broker)


def test_push_with_only_an_inactive_device(order_shipped, notify, broker, all_configured):
    recipient = RecipientFactory()
    DeviceFactory(recipient=recipient, active=False, deactivation_reason="Unregistered")

    deliveries = notify(recipient, channels=["push"])

    assert outcome(deliveries, "push") == skipped("no_device")
    assert_queues(broker)


def test_push_with_an_active_device_is_queued(order_shipped, notify, broker, all_configured):
    recipient = RecipientFactory()
    DeviceFactory(recipient=recipient, active=False)
    DeviceFactory(recipient=recipient)

    deliveries = notify(recipient, channels=["push"])

    assert outcome(deliveries, "push") == {"status": "queued"}
    assert_queues(broker, push=1)


def test_channels_without_a_provider_are_skipped_by_default(order_shipped, notify, broker):
    assert django_settings.NOTIFY_PROVIDERS["push"] == ""
    assert django_settings.NOTIFY_PROVIDERS["sms"] == ""
    recipient = RecipientFactory()
    DeviceFactory(recipient=recipient)

    deliveries = notify(recipient, channels=ALL_CHANNELS)

    assert outcome(deliveries, "push") == skipped("channel_not_configured")
    assert outcome(deliveries, "sms") == skipped("channel_not_configured")
    assert outcome(deliveries, "email") == {"status": "queued"}
    assert outcome(deliveries, "inapp") == {"status": "queued"}
    assert_queues(broker, email=1, inapp=1)


def test_unconfigured_email_is_skipped(order_shipped, notify, broker, settings):
    settings.NOTIFY_PROVIDERS = {**django_settings.NOTIFY_PROVIDERS, "email": ""}
    recipient = RecipientFactory()

    deliveries = notify(recipient)

    assert outcome(deliveries, "email") == skipped("channel_not_configured")
    assert_queues(broker, inapp=1)


def test_missing_template(notify, broker):
    event = EventFactory(key="order_refunded", default_channels=["email", "inapp"])
    TemplateFactory(event=event, channel="email")
    recipient = RecipientFactory()

    deliveries = notify(recipient, event="order_refunded")

    assert outcome(deliveries, "email") == {"status": "queued"}
    assert outcome(deliveries, "inapp") == skipped("no_template")
    assert_queues(broker, email=1)


def test_a_template_only_in_another_locale_is_missing(notify, broker):
    event = EventFactory(key="order_refunded", default_channels=["email"])
    TemplateFactory(event=event, channel="email", locale="pt")
    recipient = RecipientFactory(locale="en")

    deliveries = notify(recipient, event="order_refunded")

    assert outcome(deliveries, "email") == skipped("no_template")
    assert_queues(broker)


def test_every_delivery_skipped_publishes_nothing(
    order_shipped, api_client, broker, django_capture_on_commit_callbacks
):
    recipient = RecipientFactory(email=None)
    PreferenceFactory(recipient=recipient, channel="inapp", enabled=False)

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = api_client.post(
            "/api/notify",
            {"userId": recipient.external_id, "event": "order_shipped"},
            format="json",
        )

    # Accepted and logged even though nothing will be sent: the caller learns why.
    assert response.status_code == 202
    assert response.json()["deliveries"] == [
        {"channel": "email", "status": "skipped", "reason": "no_email"},
        {"channel": "inapp", "status": "skipped", "reason": "opted_out"},
    ]
    assert callbacks == []
    assert Delivery.objects.filter(status="skipped").count() == 2
    assert_queues(broker)
