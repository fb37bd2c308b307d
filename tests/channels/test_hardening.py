"""Edges found in review: unsigned ESP webhooks, SMTP credentials, callback URLs with a query."""

from __future__ import annotations

import pytest

from notifications import services
from notifications.tasks import deliver_email
from preferences.models import Suppression
from tests.channels.guarding import assert_paused_for_configuration
from tests.factories import DeliveryFactory, RecipientFactory

pytestmark = pytest.mark.django_db

BOUNCE = {
    "RecordType": "Bounce",
    "Type": "HardBounce",
    "TypeCode": 1,
    "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
    "Email": "victim@example.com",
    "BouncedAt": "2026-11-25T10:00:00Z",
    "Inactive": True,
}


def test_esp_webhooks_are_refused_without_a_configured_secret(client, settings):
    settings.EMAIL_BACKEND = "anymail.backends.postmark.EmailBackend"
    settings.ANYMAIL = {k: v for k, v in settings.ANYMAIL.items() if k != "WEBHOOK_SECRET"}

    response = client.post(
        "/webhooks/anymail/postmark/tracking/", BOUNCE, content_type="application/json"
    )

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert not Suppression.objects.exists()


def test_smtp_that_refuses_our_login_is_a_configuration_error(order_shipped, smtp_relay, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", smtp_relay.port
    # The relay offers no AUTH: a configured login cannot work however often it is retried.
    settings.EMAIL_HOST_USER, settings.EMAIL_HOST_PASSWORD = "user", "secret"
    delivery = DeliveryFactory(notification__event=order_shipped, channel="email")

    result = deliver_email.apply(args=[delivery.pk])

    # Not retried and not dead-lettered: SMTP is paused until a probe finds the login fixed.
    assert result.successful() and result.result == services.Outcome.DEFERRED.value
    assert_paused_for_configuration(delivery, "smtp", "SMTP AUTH extension not supported")


def test_a_status_callback_url_with_its_own_query_keeps_it(order_shipped, settings):
    from devtools.fakes.twilio import ACCOUNT_SID, AUTH_TOKEN, FakeTwilioServer

    fake = FakeTwilioServer().start()
    try:
        settings.NOTIFY_PROVIDERS = {
            **settings.NOTIFY_PROVIDERS,
            "sms": "channels.providers.sms.SMSProvider",
        }
        settings.TWILIO_ACCOUNT_SID, settings.TWILIO_AUTH_TOKEN = ACCOUNT_SID, AUTH_TOKEN
        settings.TWILIO_FROM_NUMBER = "+15005550006"
        settings.TWILIO_API_BASE = fake.url
        settings.TWILIO_STATUS_CALLBACK_URL = "http://127.0.0.1:9/hook?tenant=a"
        delivery = DeliveryFactory(
            notification__recipient=RecipientFactory(phone="+14155550100"),
            notification__event=order_shipped,
            channel="sms",
        )

        assert services.delivery_send(delivery_id=delivery.pk) == services.Outcome.SENT

        callback = fake.requests[0]["form"]["StatusCallback"]
        assert callback == f"http://127.0.0.1:9/hook?tenant=a&deliveryId={delivery.pk}"
    finally:
        fake.stop()
