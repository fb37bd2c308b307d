"""The delivery service in-process: claim, re-checks at send time, outcomes, sweep, dead letters."""

from __future__ import annotations

from datetime import timedelta
from typing import ClassVar

import pytest
from django.core import mail
from django.utils import timezone

from channels.base import (
    OutboundMessage,
    PermanentDeliveryError,
    ProviderConfigurationError,
    ProviderResult,
    TransientDeliveryError,
)
from notifications import services
from notifications.models import (
    Delivery,
    DeliveryStatus,
    FailedDelivery,
    InboxMessage,
    Notification,
)
from notifications.services import Outcome
from notifications.tasks import deliver_push
from preferences.models import Device
from tests.factories import DeviceFactory, PreferenceFactory, RecipientFactory, create_api_key

pytestmark = pytest.mark.django_db


class DeadTokenProvider:
    """A push provider that reports the first device token dead, as APNs/FCM would."""

    name: ClassVar[str] = "dead-token"
    channel: ClassVar[str] = "push"

    def send(self, message: OutboundMessage) -> ProviderResult:
        raise PermanentDeliveryError(
            "Unregistered",
            provider=self.name,
            status_code=410,
            provider_code="Unregistered",
            dead_device_token=message.destination.device_tokens[0][1],
        )

    @classmethod
    def check_configuration(cls) -> list[str]:
        return []


class FlakyProvider(DeadTokenProvider):
    name: ClassVar[str] = "flaky"

    def send(self, message: OutboundMessage) -> ProviderResult:
        raise TransientDeliveryError("503 Service Unavailable", provider=self.name, status_code=503)


class MisconfiguredProvider(DeadTokenProvider):
    name: ClassVar[str] = "misconfigured"

    def send(self, message: OutboundMessage) -> ProviderResult:
        raise ProviderConfigurationError("InvalidProviderToken")


def _queued(recipient, event, channel: str, **content) -> Delivery:
    api_key, _ = create_api_key()
    notification = Notification.objects.create(
        api_key=api_key,
        recipient=recipient,
        external_user_id=recipient.external_id,
        event=event,
        request_fingerprint="x",
    )
    return Delivery.objects.create(
        notification=notification,
        channel=channel,
        status=DeliveryStatus.QUEUED,
        content={"subject": "Hi", "body": "Body", **content},
        lease_until=timezone.now() + timedelta(minutes=5),
    )


def test_inapp_is_sent_once_even_if_the_task_runs_twice(order_shipped):
    delivery = _queued(RecipientFactory(), order_shipped, "inapp", url="/orders/1")

    assert services.delivery_send(delivery_id=delivery.pk) == Outcome.SENT
    assert services.delivery_send(delivery_id=delivery.pk) == Outcome.NOT_CLAIMED

    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SENT
    assert delivery.attempts == 1
    assert delivery.sent_at is not None and delivery.lease_until is None
    inbox = InboxMessage.objects.get()
    assert (inbox.title, inbox.body, inbox.url) == ("Hi", "Body", "/orders/1")
    assert delivery.provider_message_id == str(inbox.pk)


def test_email_goes_through_djangos_email_api_with_html_alternative(order_shipped):
    delivery = _queued(
        RecipientFactory(email="a@example.com"), order_shipped, "email", html="<b>B</b>"
    )

    assert services.delivery_send(delivery_id=delivery.pk) == Outcome.SENT

    (message,) = mail.outbox
    assert message.to == ["a@example.com"] and message.subject == "Hi"
    assert message.alternatives[0][1] == "text/html"
    delivery.refresh_from_db()
    assert delivery.provider_message_id == message.extra_headers["Message-ID"].strip("<>")


def test_opt_out_after_accept_wins(order_shipped):
    recipient = RecipientFactory()
    delivery = _queued(recipient, order_shipped, "email")
    PreferenceFactory(recipient=recipient, channel="email", enabled=False)

    assert services.delivery_send(delivery_id=delivery.pk) == Outcome.SKIPPED

    delivery.refresh_from_db()
    assert (delivery.status, delivery.reason) == (DeliveryStatus.SKIPPED, "opted_out")
    assert mail.outbox == []


def test_critical_category_ignores_opt_out_at_send_time(security_code):
    recipient = RecipientFactory()
    delivery = _queued(recipient, security_code, "email")
    PreferenceFactory(recipient=recipient, enabled=False)

    assert services.delivery_send(delivery_id=delivery.pk) == Outcome.SENT


def test_address_removed_after_accept_is_skipped(order_shipped):
    recipient = RecipientFactory()
    delivery = _queued(recipient, order_shipped, "email")
    recipient.email = None
    recipient.save()

    assert services.delivery_send(delivery_id=delivery.pk) == Outcome.SKIPPED
    delivery.refresh_from_db()
    assert delivery.reason == "no_email"


def test_erased_recipient_is_skipped(order_shipped):
    recipient = RecipientFactory()
    delivery = _queued(recipient, order_shipped, "email")
    recipient.delete()

    assert services.delivery_send(delivery_id=delivery.pk) == Outcome.SKIPPED
    delivery.refresh_from_db()
    assert delivery.reason == "recipient_erased"


def test_permanent_error_fails_dead_letters_and_deactivates_the_device(order_shipped, settings):
    settings.NOTIFY_PROVIDERS = {
        **settings.NOTIFY_PROVIDERS,
        "push": f"{__name__}.DeadTokenProvider",
    }
    device = DeviceFactory(platform=Device.Platform.APNS)
    delivery = _queued(device.recipient, order_shipped, "push")

    assert services.delivery_send(delivery_id=delivery.pk, task_name="t") == Outcome.FAILED

    delivery.refresh_from_db()
    assert (delivery.status, delivery.reason) == (DeliveryStatus.FAILED, "Unregistered")
    letter = FailedDelivery.objects.get(delivery=delivery)
    assert letter.attempts == 1 and letter.task_name == "t"
    assert "410" in letter.error_message
    device.refresh_from_db()
    assert not device.active
    assert device.deactivated_at is not None
    assert "Unregistered" in device.deactivation_reason


def test_transient_error_requeues_with_a_lease_and_reraises(order_shipped, settings):
    settings.NOTIFY_PROVIDERS = {**settings.NOTIFY_PROVIDERS, "push": f"{__name__}.FlakyProvider"}
    device = DeviceFactory()
    delivery = _queued(device.recipient, order_shipped, "push")

    with pytest.raises(TransientDeliveryError):
        services.delivery_send(delivery_id=delivery.pk)

    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.QUEUED
    assert delivery.attempts == 1
    assert "503" in delivery.last_error
    # Not swept while a retry may still be waiting for its countdown.
    assert delivery.lease_until > timezone.now() + timedelta(
        seconds=settings.NOTIFY_RETRY_BACKOFF_MAX
    )
    assert not FailedDelivery.objects.exists()


def test_configuration_error_in_a_task_goes_to_the_dead_letter_table(order_shipped, settings):
    settings.NOTIFY_PROVIDERS = {
        **settings.NOTIFY_PROVIDERS,
        "push": f"{__name__}.MisconfiguredProvider",
    }
    device = DeviceFactory()
    delivery = _queued(device.recipient, order_shipped, "push")

    result = deliver_push.apply(args=[delivery.pk])

    assert result.failed()
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED
    letter = FailedDelivery.objects.get(delivery=delivery)
    assert letter.error_class == "channels.base.ProviderConfigurationError"
    assert "Traceback" in letter.traceback


def test_sweep_requeues_only_expired_pending_deliveries(
    order_shipped, broker, django_capture_on_commit_callbacks
):
    recipient = RecipientFactory()
    past = timezone.now() - timedelta(seconds=1)
    expired_queued = _queued(recipient, order_shipped, "email")
    expired_sending = _queued(recipient, order_shipped, "inapp")
    fresh = _queued(recipient, order_shipped, "email")
    done = _queued(recipient, order_shipped, "inapp")
    Delivery.objects.filter(pk=expired_queued.pk).update(lease_until=past)
    Delivery.objects.filter(pk=expired_sending.pk).update(status="sending", lease_until=past)
    Delivery.objects.filter(pk=done.pk).update(status="sent", lease_until=past)

    with django_capture_on_commit_callbacks(execute=True):
        assert services.sweep_stuck_deliveries() == 2

    statuses = dict(Delivery.objects.values_list("pk", "status"))
    assert statuses[expired_sending.pk] == "queued"
    assert statuses[done.pk] == "sent"
    assert Delivery.objects.get(pk=fresh.pk).history == []
    assert broker.queued("email") == 1 and broker.queued("inapp") == 1
    # A second sweep finds nothing: the leases were renewed.
    with django_capture_on_commit_callbacks(execute=True):
        assert services.sweep_stuck_deliveries() == 0


def test_dead_letter_leaves_finished_deliveries_alone(order_shipped):
    delivery = _queued(RecipientFactory(), order_shipped, "inapp")
    services.delivery_send(delivery_id=delivery.pk)

    moved = services.delivery_dead_letter(
        delivery_id=delivery.pk, error=RuntimeError("late"), traceback="", task_name="t"
    )

    assert moved is False
    assert not FailedDelivery.objects.exists()
