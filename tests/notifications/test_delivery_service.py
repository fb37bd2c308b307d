"""The delivery service in-process: claim, re-checks at send time, outcomes, sweep, dead letters."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import mail
from django.db import OperationalError
from django.utils import timezone

from channels.base import (
    TransientDeliveryError,
)
from channels.lanes import EMAIL, INAPP
from notifications import services
from notifications.models import (
    Delivery,
    DeliveryStatus,
    FailedDelivery,
    InboxMessage,
)
from notifications.services import Outcome
from notifications.tasks import deliver_email, deliver_push
from preferences.models import Device, Suppression
from tests.channels.guarding import assert_paused_for_configuration
from tests.channels.push import apns_token
from tests.factories import DeliveryFactory, DeviceFactory, PreferenceFactory, RecipientFactory

pytestmark = pytest.mark.django_db


def test_inapp_is_sent_once_even_if_the_task_runs_twice(order_shipped):
    delivery = DeliveryFactory(
        notification__event=order_shipped,
        channel="inapp",
        content={"subject": "Hi", "body": "Body", "url": "/orders/1"},
    )

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
    delivery = DeliveryFactory(
        notification__recipient=RecipientFactory(email="a@example.com"),
        notification__event=order_shipped,
        channel="email",
        content={"subject": "Hi", "body": "Body", "html": "<b>B</b>"},
    )

    assert services.delivery_send(delivery_id=delivery.pk) == Outcome.SENT

    (message,) = mail.outbox
    assert message.to == ["a@example.com"] and message.subject == "Hi"
    assert message.alternatives[0][1] == "text/html"
    delivery.refresh_from_db()
    assert delivery.provider_message_id == message.extra_headers["Message-ID"].strip("<>")


def test_opt_out_after_accept_wins(order_shipped):
    recipient = RecipientFactory()
    delivery = DeliveryFactory(
        notification__recipient=recipient, notification__event=order_shipped, channel="email"
    )
    PreferenceFactory(recipient=recipient, channel="email", enabled=False)

    assert services.delivery_send(delivery_id=delivery.pk) == Outcome.SKIPPED

    delivery.refresh_from_db()
    assert (delivery.status, delivery.reason) == (DeliveryStatus.SKIPPED, "opted_out")
    assert mail.outbox == []


def test_critical_category_ignores_opt_out_at_send_time(security_code):
    recipient = RecipientFactory()
    delivery = DeliveryFactory(
        notification__recipient=recipient, notification__event=security_code, channel="email"
    )
    PreferenceFactory(recipient=recipient, enabled=False)

    assert services.delivery_send(delivery_id=delivery.pk) == Outcome.SENT


def test_address_removed_after_accept_is_skipped(order_shipped):
    recipient = RecipientFactory()
    delivery = DeliveryFactory(
        notification__recipient=recipient, notification__event=order_shipped, channel="email"
    )
    recipient.email = None
    recipient.save()

    assert services.delivery_send(delivery_id=delivery.pk) == Outcome.SKIPPED
    delivery.refresh_from_db()
    assert delivery.reason == "no_email"


def test_erased_recipient_is_skipped(order_shipped):
    recipient = RecipientFactory()
    delivery = DeliveryFactory(
        notification__recipient=recipient, notification__event=order_shipped, channel="email"
    )
    recipient.delete()

    assert services.delivery_send(delivery_id=delivery.pk) == Outcome.SKIPPED
    delivery.refresh_from_db()
    assert delivery.reason == "recipient_erased"


def test_permanent_error_fails_dead_letters_and_deactivates_the_device(order_shipped, push_sender):
    device = DeviceFactory(platform=Device.Platform.APNS, token=apns_token("t-dead"))
    push_sender.verdicts["t-dead"] = "dead"
    delivery = DeliveryFactory(
        notification__recipient=device.recipient, notification__event=order_shipped, channel="push"
    )

    assert services.delivery_send(delivery_id=delivery.pk, task_name="t") == Outcome.FAILED

    delivery.refresh_from_db()
    assert (delivery.status, delivery.reason) == (DeliveryStatus.FAILED, "Unregistered")
    assert delivery.results[apns_token("t-dead")]["status"] == "dead"
    letter = FailedDelivery.objects.get(delivery=delivery)
    assert letter.attempts == 1 and letter.task_name == "t"
    assert "410" in letter.error_message
    device.refresh_from_db()
    assert not device.active
    assert device.deactivated_at is not None
    assert "Unregistered" in device.deactivation_reason


def test_one_dead_device_does_not_fail_the_others(order_shipped, push_sender):
    good = DeviceFactory(platform=Device.Platform.APNS, token=apns_token("t-good"))
    dead = DeviceFactory(
        platform=Device.Platform.APNS, token=apns_token("t-dead"), recipient=good.recipient
    )
    fcm = DeviceFactory(platform=Device.Platform.FCM, token="t-fcm", recipient=good.recipient)
    push_sender.verdicts["t-dead"] = "dead"
    delivery = DeliveryFactory(
        notification__recipient=good.recipient, notification__event=order_shipped, channel="push"
    )

    assert services.delivery_send(delivery_id=delivery.pk) == Outcome.SENT

    delivery.refresh_from_db()
    assert delivery.results == {
        apns_token("t-good"): {"status": "sent", "messageId": "apns-id-t-good"},
        apns_token("t-dead"): {
            "status": "dead",
            "error": "fake-apns 410 code Unregistered: Unregistered",
        },
    }
    assert delivery.provider == "fake-apns"
    # FCM is not configured here, so its device is neither tried nor deactivated.
    assert push_sender.sent == ["t-good"]
    assert Device.objects.get(pk=dead.pk).active is False
    assert Device.objects.get(pk=fcm.pk).active is True


def test_a_retry_only_resends_to_devices_not_yet_reached(order_shipped, push_sender):
    first = DeviceFactory(platform=Device.Platform.APNS, token=apns_token("t-1"))
    DeviceFactory(platform=Device.Platform.APNS, token=apns_token("t-2"), recipient=first.recipient)
    push_sender.verdicts["t-2"] = "flaky"
    delivery = DeliveryFactory(
        notification__recipient=first.recipient, notification__event=order_shipped, channel="push"
    )

    with pytest.raises(TransientDeliveryError):
        services.delivery_send(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.QUEUED
    assert delivery.results == {apns_token("t-1"): {"status": "sent", "messageId": "apns-id-t-1"}}

    assert services.delivery_send(delivery_id=delivery.pk) == Outcome.SENT

    assert push_sender.sent == ["t-1", "t-2"]  # t-1 exactly once
    delivery.refresh_from_db()
    assert set(delivery.results) == {apns_token("t-1"), apns_token("t-2")}
    assert delivery.attempts == 2


def test_transient_error_requeues_with_a_lease_and_reraises(order_shipped, push_sender, settings):
    device = DeviceFactory(platform=Device.Platform.APNS, token=apns_token("t-flaky"))
    push_sender.verdicts["t-flaky"] = "flaky"
    delivery = DeliveryFactory(
        notification__recipient=device.recipient, notification__event=order_shipped, channel="push"
    )

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
    assert Device.objects.get(pk=device.pk).active


def test_a_configuration_error_in_a_task_pauses_the_provider_instead_of_dead_lettering(
    order_shipped, push_sender
):
    device = DeviceFactory(platform=Device.Platform.APNS, token=apns_token("t-conf"))
    push_sender.verdicts["t-conf"] = "misconfigured"
    delivery = DeliveryFactory(
        notification__recipient=device.recipient, notification__event=order_shipped, channel="push"
    )

    result = deliver_push.apply(args=[delivery.pk])

    assert result.successful() and result.result == Outcome.DEFERRED.value
    assert_paused_for_configuration(delivery, push_sender.name, "InvalidProviderToken")
    assert Device.objects.get(pk=device.pk).active


def test_hard_bounce_suppresses_the_address_for_everyone(order_shipped, smtp_relay, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", smtp_relay.port
    bounced = RecipientFactory(email="Bounce-Hard@Example.com")
    delivery = DeliveryFactory(
        notification__recipient=bounced, notification__event=order_shipped, channel="email"
    )

    assert services.delivery_send(delivery_id=delivery.pk) == Outcome.FAILED

    suppression = Suppression.objects.get()
    assert (suppression.channel, suppression.address) == ("email", "bounce-hard@example.com")
    assert suppression.reason == "hard_bounce"
    # Another recipient with the same address is skipped, without a new SMTP attempt.
    again = DeliveryFactory(
        notification__recipient=RecipientFactory(email="bounce-hard@example.com"),
        notification__event=order_shipped,
        channel="email",
    )
    attempts_before = dict(smtp_relay.behaviour.attempts)
    assert services.delivery_send(delivery_id=again.pk) == Outcome.SKIPPED
    again.refresh_from_db()
    assert again.reason == "suppressed"
    assert dict(smtp_relay.behaviour.attempts) == attempts_before


def test_sweep_requeues_only_expired_pending_deliveries(
    order_shipped, broker, django_capture_on_commit_callbacks
):
    recipient = RecipientFactory()
    past = timezone.now() - timedelta(seconds=1)
    expired_queued = DeliveryFactory(
        notification__recipient=recipient, notification__event=order_shipped, channel="email"
    )
    expired_sending = DeliveryFactory(
        notification__recipient=recipient, notification__event=order_shipped, channel="inapp"
    )
    fresh = DeliveryFactory(
        notification__recipient=recipient, notification__event=order_shipped, channel="email"
    )
    done = DeliveryFactory(
        notification__recipient=recipient, notification__event=order_shipped, channel="inapp"
    )
    Delivery.objects.filter(pk=expired_queued.pk).update(lease_until=past)
    Delivery.objects.filter(pk=expired_sending.pk).update(status="sending", lease_until=past)
    Delivery.objects.filter(pk=done.pk).update(status="sent", lease_until=past)

    with django_capture_on_commit_callbacks(execute=True):
        assert services.sweep_stuck_deliveries() == 2

    statuses = dict(Delivery.objects.values_list("pk", "status"))
    assert statuses[expired_sending.pk] == "queued"
    assert statuses[done.pk] == "sent"
    assert Delivery.objects.get(pk=fresh.pk).history == []
    assert broker.queued(EMAIL.queue) == 1 and broker.queued(INAPP.queue) == 1
    # A second sweep finds nothing: the leases were renewed.
    with django_capture_on_commit_callbacks(execute=True):
        assert services.sweep_stuck_deliveries() == 0


def test_dead_letter_leaves_finished_deliveries_alone(order_shipped):
    delivery = DeliveryFactory(notification__event=order_shipped, channel="inapp")
    services.delivery_send(delivery_id=delivery.pk)

    moved = services.delivery_dead_letter(
        delivery_id=delivery.pk, error=RuntimeError("late"), traceback="", task_name="t"
    )

    assert moved is False
    assert not FailedDelivery.objects.exists()


def test_a_configuration_error_mid_fan_out_keeps_the_devices_already_reached(
    order_shipped, push_sender
):
    first = DeviceFactory(platform=Device.Platform.APNS, token=apns_token("t-ok"))
    DeviceFactory(
        platform=Device.Platform.APNS, token=apns_token("t-conf"), recipient=first.recipient
    )
    push_sender.verdicts["t-conf"] = "misconfigured"
    delivery = DeliveryFactory(
        notification__recipient=first.recipient, notification__event=order_shipped, channel="push"
    )

    assert deliver_push.apply(args=[delivery.pk]).result == Outcome.DEFERRED.value

    assert_paused_for_configuration(delivery, push_sender.name, "InvalidProviderToken")
    assert delivery.results == {apns_token("t-ok"): {"status": "sent", "messageId": "apns-id-t-ok"}}


def test_a_database_outage_outlasting_the_retries_leaves_the_delivery_to_the_sweep(
    order_shipped,
):
    delivery = DeliveryFactory(notification__event=order_shipped, channel="email")

    deliver_email.on_failure(
        OperationalError("server closed the connection unexpectedly"), "t-1", (delivery.pk,), {}, ""
    )

    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.QUEUED  # the sweep takes it back after its lease
    assert not FailedDelivery.objects.exists()
    # Anything else that exhausts a task is still dead-lettered.
    deliver_email.on_failure(RuntimeError("a bug"), "t-2", (delivery.pk,), {}, "")
    assert FailedDelivery.objects.get().delivery_id == delivery.pk
