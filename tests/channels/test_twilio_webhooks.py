"""Twilio's status callbacks and inbound messages, signed as Twilio signs them (the SDK's own
RequestValidator.compute_signature), through Django's full request stack."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pytest
from django.test import Client
from twilio.request_validator import RequestValidator

from notifications.models import Delivery, DeliveryStatus, Notification
from preferences.models import Suppression
from tests.factories import DeliveryFactory, RecipientFactory

pytestmark = pytest.mark.django_db

TOKEN = "webhook-test-auth-token"
STATUS_URL = "https://notify.example.com/webhooks/twilio/status"
INBOUND_URL = "https://notify.example.com/webhooks/twilio/inbound"
SID = "SM" + "ab" * 16
NUMBER = "+15550100001"
FORM = "application/x-www-form-urlencoded"


@pytest.fixture(autouse=True)
def twilio_settings(settings) -> None:
    settings.TWILIO_AUTH_TOKEN = TOKEN
    settings.TWILIO_STATUS_CALLBACK_URL = STATUS_URL
    settings.TWILIO_INBOUND_URL = INBOUND_URL


@pytest.fixture
def client() -> Client:
    return Client(enforce_csrf_checks=True)  # Twilio sends no CSRF token


@pytest.fixture
def sent_sms(order_shipped) -> Delivery:
    return DeliveryFactory(
        notification__recipient=RecipientFactory(phone=NUMBER),
        notification__event=order_shipped,
        channel="sms",
        status=DeliveryStatus.SENT,
        provider="twilio",
        provider_message_id=SID,
    )


def _post(
    client: Client,
    path: str,
    params: dict[str, str],
    *,
    url: str | None = None,
    token: str = TOKEN,
    signature: str | None = None,
    **headers: Any,
):
    signed_url = url or (STATUS_URL if path.endswith("status") else INBOUND_URL)
    if signature is None:
        signature = RequestValidator(token).compute_signature(signed_url, params)
    if signature:
        headers["HTTP_X_TWILIO_SIGNATURE"] = signature
    # Form-encoded, as Twilio posts (a multipart body is refused: 415).
    return client.post(path, urlencode(params), content_type=FORM, **headers)


def _callback(client: Client, status: str, sid: str = SID, **extra: str):
    params = {
        "AccountSid": "AC" + "0" * 32,
        "ApiVersion": "2010-04-01",
        "From": "+15005550006",
        "To": NUMBER,
        "MessageSid": sid,
        "SmsSid": sid,
        "MessageStatus": status,
        "SmsStatus": status,
        **extra,
    }
    return _post(client, "/webhooks/twilio/status", params)


def _inbound(client: Client, body: str, sender: str = NUMBER, **extra: str):
    params = {
        "AccountSid": "AC" + "0" * 32,
        "MessageSid": "SM" + "cd" * 16,
        "From": sender,
        "To": "+15005550006",
        "Body": body,
        "NumMedia": "0",
        **extra,
    }
    return _post(client, "/webhooks/twilio/inbound", params)


def _receipts(delivery: Delivery) -> list[str]:
    delivery.refresh_from_db()
    return [entry["receipt"] for entry in delivery.history if "receipt" in entry]


def test_delivered_callback_marks_the_sms_delivered(client, sent_sms):
    assert _callback(client, "delivered").status_code == 200

    sent_sms.refresh_from_db()
    assert sent_sms.status == DeliveryStatus.DELIVERED
    assert sent_sms.delivered_at is not None


@pytest.mark.parametrize(
    ("status", "code", "suppressed_as"),
    [
        ("undelivered", "30005", "invalid"),  # unknown handset
        ("undelivered", "30006", "invalid"),  # landline
        ("failed", "21610", "sms_stop"),
        ("undelivered", "30003", None),  # handset off: the number is fine
        ("undelivered", "30007", None),  # carrier filtering: our content
    ],
)
def test_failure_callback_fails_the_sms_and_suppresses_dead_numbers(
    client, sent_sms, status, code, suppressed_as
):
    assert _callback(client, status, ErrorCode=code).status_code == 200

    sent_sms.refresh_from_db()
    assert (sent_sms.status, sent_sms.reason, sent_sms.last_error) == ("failed", code, code)
    reasons = list(Suppression.objects.filter(address=NUMBER).values_list("reason", flat=True))
    assert reasons == ([suppressed_as] if suppressed_as else [])


def test_intermediate_statuses_are_history_only(client, sent_sms):
    for status in ("queued", "sending", "sent"):
        assert _callback(client, status).status_code == 200

    assert _receipts(sent_sms) == ["queued", "sending", "sent"]
    assert sent_sms.status == DeliveryStatus.SENT


def test_duplicate_and_out_of_order_callbacks_are_harmless(client, sent_sms):
    _callback(client, "delivered")
    _callback(client, "delivered")
    _callback(client, "sent")  # arrived late
    _callback(client, "undelivered", ErrorCode="30005")  # contradicts what was settled

    assert _receipts(sent_sms) == ["delivered", "sent"]
    assert sent_sms.status == DeliveryStatus.DELIVERED
    assert sent_sms.reason == ""


def test_unknown_message_sid_is_answered_200(client, sent_sms):
    assert _callback(client, "delivered", sid="SM" + "ee" * 16).status_code == 200

    sent_sms.refresh_from_db()
    assert sent_sms.status == DeliveryStatus.SENT


@pytest.mark.parametrize(
    "how",
    ["missing", "garbage", "other token", "other url", "tampered", "shared key header"],
)
def test_bad_signature_is_403_and_changes_nothing(client, sent_sms, how):
    params = {"MessageSid": SID, "MessageStatus": "undelivered", "ErrorCode": "30005", "To": NUMBER}
    kwargs: dict[str, Any] = {
        "missing": {"signature": ""},
        "garbage": {"signature": "bm90IGEgc2lnbmF0dXJl"},
        "other token": {"token": "someone-elses-token"},
        "other url": {"url": "https://evil.example.com/webhooks/twilio/status"},
        "tampered": {"signature": RequestValidator(TOKEN).compute_signature(STATUS_URL, {})},
        "shared key header": {
            "HTTP_X_TWILIO_WEBHOOKS_SIGNATURE_SETTINGS": "key=KS1,algorithm=HMAC_SHA256"
        },
    }[how]

    response = _post(client, "/webhooks/twilio/status", params, **kwargs)

    assert response.status_code == 403
    sent_sms.refresh_from_db()
    assert sent_sms.status == DeliveryStatus.SENT
    assert sent_sms.history == []
    assert not Suppression.objects.exists()


def test_without_auth_token_every_callback_is_refused(client, sent_sms, settings):
    settings.TWILIO_AUTH_TOKEN = ""
    assert (
        _post(client, "/webhooks/twilio/status", {"MessageSid": SID}, token="").status_code == 403
    )


def test_signature_falls_back_to_the_url_this_server_sees(client, sent_sms, settings):
    settings.TWILIO_STATUS_CALLBACK_URL = ""
    params = {"MessageSid": SID, "MessageStatus": "delivered"}

    response = _post(
        client, "/webhooks/twilio/status", params, url="http://testserver/webhooks/twilio/status"
    )

    assert response.status_code == 200
    sent_sms.refresh_from_db()
    assert sent_sms.status == DeliveryStatus.DELIVERED


@pytest.mark.parametrize("path", ["/webhooks/twilio/status", "/webhooks/twilio/inbound"])
def test_only_post_is_allowed(client, path):
    assert client.get(path).status_code == 405


@pytest.mark.parametrize("body", ["STOP", "stop", " Unsubscribe ", "QUIT", "stopall"])
def test_inbound_stop_suppresses_the_sender(client, body):
    response = _inbound(client, body)

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/xml")
    assert response.content.decode().endswith("<Response/>")
    suppression = Suppression.objects.get(channel="sms", address=NUMBER)
    assert (suppression.reason, suppression.provider) == ("sms_stop", "twilio")


def test_inbound_start_lifts_only_a_stop_suppression(client):
    _inbound(client, "STOP")
    Suppression.objects.create(channel="sms", address="+15550100211", reason="invalid")

    assert _inbound(client, "start").status_code == 200
    assert _inbound(client, "UNSTOP", sender="+15550100211").status_code == 200

    assert list(Suppression.objects.values_list("address", "reason")) == [
        ("+15550100211", "invalid")
    ]


def test_advanced_opt_out_type_is_honoured(client):
    _inbound(client, "ARRET", OptOutType="STOP")  # a custom keyword Twilio recognised

    assert Suppression.objects.filter(address=NUMBER, reason="sms_stop").exists()


def test_ordinary_inbound_message_changes_nothing(client):
    assert _inbound(client, "Please stop by tomorrow").status_code == 200
    assert not Suppression.objects.exists()


def test_unsigned_inbound_stop_is_refused(client):
    params = {"From": NUMBER, "Body": "STOP"}
    assert _post(client, "/webhooks/twilio/inbound", params, signature="").status_code == 403
    assert not Suppression.objects.exists()


def test_suppressed_after_stop_the_next_sms_is_skipped(client, sent_sms, settings):
    from notifications import services

    settings.NOTIFY_PROVIDERS = {
        **settings.NOTIFY_PROVIDERS,
        "sms": "channels.providers.sms.SMSProvider",
    }
    _inbound(client, "STOP")
    notification = Notification.objects.create(
        api_key=sent_sms.notification.api_key,
        recipient=sent_sms.notification.recipient,
        event=sent_sms.notification.event,
        request_fingerprint="y",
    )
    later = Delivery.objects.create(
        notification=notification, channel="sms", status=DeliveryStatus.QUEUED
    )

    assert services.delivery_send(delivery_id=later.pk) == services.Outcome.SKIPPED
    later.refresh_from_db()
    assert later.reason == "suppressed"
