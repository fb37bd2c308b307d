"""Postmark's tracking webhooks through anymail's real view: receipts, suppressions, auth.

Payloads are Postmark's documented samples as anymail's own tests use them; the message ids are
those of deliveries the provider recorded.
"""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from devtools.fakes.postmark import DEFAULT_TOKEN, FakePostmark
from notifications import services
from notifications.models import Delivery, DeliveryStatus
from preferences.models import Suppression
from tests.factories import DeliveryFactory, RecipientFactory

pytestmark = pytest.mark.django_db

URL = "/webhooks/anymail/postmark/tracking/"
SECRET = "postmark:hook-secret"
MESSAGE_ID = "883953f4-6105-42a2-a16a-77a8eac79483"

DELIVERY = {
    "RecordType": "Delivery",
    "ServerID": 23,
    "MessageStream": "outbound",
    "MessageID": MESSAGE_ID,
    "Recipient": "john@example.com",
    "Tag": "welcome-email",
    "DeliveredAt": "2014-08-01T13:28:10.2735393-04:00",
    "Details": "Test delivery webhook details",
    "Metadata": {"a_key": "a_value"},
}
HARD_BOUNCE = {
    "RecordType": "Bounce",
    "MessageStream": "outbound",
    "ID": 4323372036854775807,
    "Type": "HardBounce",
    "TypeCode": 1,
    "Name": "Hard bounce",
    "Tag": "Test",
    "MessageID": MESSAGE_ID,
    "ServerID": 23,
    "Description": "The server was unable to deliver your message "
    "(ex: unknown user, mailbox not found).",
    "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
    "Email": "john@example.com",
    "From": "sender@example.com",
    "BouncedAt": "2019-11-05T16:33:54.9070259Z",
    "DumpAvailable": True,
    "Inactive": True,
    "CanActivate": True,
    "Subject": "Test subject",
    "Content": "<Full dump of bounce>",
}
SOFT_BOUNCE = {
    **HARD_BOUNCE,
    "Type": "SoftBounce",
    "TypeCode": 4096,
    "Name": "Soft bounce/Undeliverable",
    "Description": "Unable to temporarily deliver this email.",
    "Details": "smtp;452 4.2.2 Mailbox full",
    "Inactive": False,
}
BAD_ADDRESS = {**HARD_BOUNCE, "Type": "BadEmailAddress", "TypeCode": 100000}
SPAM_COMPLAINT = {
    "RecordType": "SpamComplaint",
    "MessageStream": "outbound",
    "ID": 42,
    "Type": "SpamComplaint",
    "TypeCode": 512,
    "Name": "Spam complaint",
    "Tag": "Test",
    "MessageID": MESSAGE_ID,
    "ServerID": 1234,
    "Description": "",
    "Details": "Test spam complaint details",
    "Email": "john@example.com",
    "From": "sender@example.com",
    "BouncedAt": "2019-11-05T16:33:54.9070259Z",
    "DumpAvailable": True,
    "Inactive": True,
    "CanActivate": False,
    "Subject": "Test subject",
}
OPEN = {
    "RecordType": "Open",
    "MessageStream": "outbound",
    "FirstOpen": True,
    "Client": {"Name": "Gmail", "Company": "Google", "Family": "Gmail"},
    "OS": {"Name": "unknown", "Company": "unknown", "Family": "unknown"},
    "Platform": "Unknown",
    "UserAgent": "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0",
    "ReadSeconds": 0,
    "Geo": {},
    "MessageID": MESSAGE_ID,
    "ReceivedAt": "2016-04-27T16:21:41.2493688-04:00",
    "Recipient": "john@example.com",
}
CLICK = {
    "RecordType": "Click",
    "MessageStream": "outbound",
    "ClickLocation": "HTML",
    "Platform": "Desktop",
    "UserAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_7_5) etc.",
    "OriginalLink": "https://example.com/click/me",
    "MessageID": MESSAGE_ID,
    "ReceivedAt": "2017-10-25T15:21:11.9065619Z",
    "Tag": "welcome-email",
    "Recipient": "john@example.com",
}
UNSUBSCRIBE = {
    "RecordType": "SubscriptionChange",
    "MessageID": MESSAGE_ID,
    "ServerID": 23,
    "MessageStream": "outbound",
    "ChangedAt": "2022-06-05T17:17:32Z",
    "Recipient": "john@example.com",
    "Origin": "Recipient",
    "SuppressSending": True,
    "SuppressionReason": "ManualSuppression",
    "Tag": "welcome-email",
    "Metadata": {"example": "value"},
}
RESUBSCRIBE = {**UNSUBSCRIBE, "SuppressSending": False, "SuppressionReason": None}


def _auth(secret: str = SECRET) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(secret.encode()).decode()}


@pytest.fixture(autouse=True)
def webhook_secret(settings: Any) -> None:
    settings.EMAIL_BACKEND = "anymail.backends.postmark.EmailBackend"  # routes its webhook
    settings.ANYMAIL = {"WEBHOOK_SECRET": SECRET}


@pytest.fixture
def sent(order_shipped: Any) -> Delivery:
    """A delivery Postmark accepted as MESSAGE_ID."""
    return DeliveryFactory(
        notification__recipient=RecipientFactory(email="john@example.com"),
        notification__event=order_shipped,
        channel="email",
        status=DeliveryStatus.SENT,
        provider="postmark",
        provider_message_id=MESSAGE_ID,
        sent_at=timezone.now() - timedelta(seconds=5),
    )


def _post(payload: dict[str, Any], **headers: str) -> int:
    client = Client()
    response = client.post(
        URL, data=json.dumps(payload), content_type="application/json", **(headers or _auth())
    )
    return response.status_code


def _suppressions() -> list[tuple[str, str, str, str]]:
    return list(Suppression.objects.values_list("channel", "address", "reason", "provider"))


def test_delivery_webhook_for_a_message_sent_through_the_fake(order_shipped, settings):
    fake = FakePostmark().start()
    try:
        settings.EMAIL_BACKEND = "anymail.backends.postmark.EmailBackend"
        settings.ANYMAIL = {
            "POSTMARK_SERVER_TOKEN": DEFAULT_TOKEN,
            "POSTMARK_API_URL": fake.url,
            "WEBHOOK_SECRET": SECRET,
        }
        delivery = DeliveryFactory(
            notification__recipient=RecipientFactory(email="gus@example.com"),
            notification__event=order_shipped,
            channel="email",
        )
        services.delivery_send(delivery_id=delivery.pk)
        message_id = fake.requests[0]["response"]["MessageID"]
    finally:
        fake.stop()

    status = _post({**DELIVERY, "MessageID": message_id, "Recipient": "gus@example.com"})

    assert status == 200
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.DELIVERED
    assert delivery.delivered_at is not None
    assert delivery.history[-1]["receipt"] == "delivered"


def test_hard_bounce_fails_the_delivery_and_suppresses_the_address(sent):
    assert _post(HARD_BOUNCE) == 200

    sent.refresh_from_db()
    assert sent.status == DeliveryStatus.FAILED
    assert sent.last_error.startswith("smtp;550 5.1.1")
    assert _suppressions() == [("email", "john@example.com", "hard_bounce", "postmark")]


def test_soft_bounce_fails_the_message_but_keeps_the_address(sent):
    assert _post(SOFT_BOUNCE) == 200

    sent.refresh_from_db()
    assert sent.status == DeliveryStatus.FAILED
    assert _suppressions() == []


def test_rejected_bad_address_is_suppressed_as_invalid(sent):
    assert _post(BAD_ADDRESS) == 200

    sent.refresh_from_db()
    assert sent.status == DeliveryStatus.FAILED
    assert _suppressions() == [("email", "john@example.com", "invalid", "postmark")]


@pytest.mark.parametrize(
    ("payload", "receipt", "reason"),
    [
        (SPAM_COMPLAINT, "complained", "complaint"),
        (UNSUBSCRIBE, "unsubscribed", "unsubscribed"),
        (RESUBSCRIBE, "subscribed", None),
        (OPEN, "opened", None),
        (CLICK, "clicked", None),
    ],
)
def test_engagement_is_history_only_and_complaints_suppress(sent, payload, receipt, reason):
    assert _post(payload) == 200

    sent.refresh_from_db()
    assert sent.status == DeliveryStatus.SENT
    assert sent.history[-1]["receipt"] == receipt
    expected = [("email", "john@example.com", reason, "postmark")] if reason else []
    assert _suppressions() == expected


@pytest.mark.parametrize("headers", [{}, _auth("postmark:wrong"), _auth("someone:hook-secret")])
def test_unauthenticated_posts_are_refused_and_change_nothing(sent, headers):
    client = Client()
    response = client.post(
        URL, data=json.dumps(HARD_BOUNCE), content_type="application/json", **headers
    )

    assert response.status_code == 401  # anymail's AnymailWebhookValidationFailure
    assert response.json()["error"]["code"] == "unauthorized"
    sent.refresh_from_db()
    assert sent.status == DeliveryStatus.SENT
    assert sent.history == []
    assert _suppressions() == []


def test_duplicate_and_late_receipts_are_harmless(sent):
    assert _post(HARD_BOUNCE) == 200
    assert _post(HARD_BOUNCE) == 200
    assert _post(DELIVERY) == 200  # arrives after the bounce: must not resurrect it

    sent.refresh_from_db()
    assert sent.status == DeliveryStatus.FAILED
    assert [entry.get("status") for entry in sent.history] == ["failed"]
    assert Suppression.objects.count() == 1


def test_unknown_message_id_is_accepted_and_still_suppresses_a_dead_address(sent):
    status = _post({**HARD_BOUNCE, "MessageID": "not-ours", "Email": "stranger@example.com"})

    assert status == 200  # Postmark stops retrying
    sent.refresh_from_db()
    assert sent.status == DeliveryStatus.SENT
    assert _suppressions() == [("email", "stranger@example.com", "hard_bounce", "postmark")]


def test_receipts_only_match_their_own_provider(sent):
    Delivery.objects.filter(pk=sent.pk).update(provider="smtp")

    assert _post(DELIVERY) == 200

    sent.refresh_from_db()
    assert sent.status == DeliveryStatus.SENT


def test_the_url_without_its_trailing_slash_is_the_same_webhook(sent):
    # It used to be APPEND_SLASH's 301 (text/html): the ESP's POST, and its event, were lost.
    response = Client().post(
        URL.rstrip("/"), data=json.dumps(DELIVERY), content_type="application/json", **_auth()
    )
    assert response.status_code == 200
    sent.refresh_from_db()
    assert sent.status == DeliveryStatus.DELIVERED


@pytest.mark.parametrize(
    ("bounced", "stored"),
    [("e6@exämple.com", "e6@xn--exmple-cua.com"), ("e6@xn--exmple-cua.com", "e6@exämple.com")],
)
def test_a_bounce_suppresses_an_idn_address_whichever_form_either_side_uses(
    sent, order_shipped, bounced, stored
):
    # The send-time check compares the suppression with the recipient's stored address: one
    # canonical form on both sides (the domain's IDNA ASCII), or the mail still goes.
    assert _post({**HARD_BOUNCE, "MessageID": "not-ours", "Email": bounced}) == 200
    assert _suppressions() == [("email", "e6@xn--exmple-cua.com", "hard_bounce", "postmark")]

    queued = DeliveryFactory(
        notification__recipient=RecipientFactory(email=stored),
        notification__event=order_shipped,
        channel="email",
    )
    assert services.delivery_send(delivery_id=queued.pk) == services.Outcome.SKIPPED
    queued.refresh_from_db()
    assert queued.reason == "suppressed"
