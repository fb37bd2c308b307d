"""Receipts move deliveries forward only; duplicates and strays are harmless."""

from __future__ import annotations

import pytest

from notifications.models import Delivery, DeliveryStatus
from notifications.services import Receipt, delivery_receipt_apply
from preferences.models import Suppression
from tests.factories import DeliveryFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent_email(order_shipped) -> Delivery:
    return DeliveryFactory(
        notification__event=order_shipped,
        channel="email",
        status=DeliveryStatus.SENT,
        provider="postmark",
        provider_message_id="msg-1",
    )


def _receipt(event: str, status=None, **kwargs) -> Receipt:
    return Receipt(provider="postmark", message_id="msg-1", event=event, status=status, **kwargs)


def test_delivered_moves_sent_forward_once(sent_email):
    assert delivery_receipt_apply(_receipt("delivered", DeliveryStatus.DELIVERED)) == sent_email.pk
    assert delivery_receipt_apply(_receipt("delivered", DeliveryStatus.DELIVERED)) == sent_email.pk

    sent_email.refresh_from_db()
    assert sent_email.status == DeliveryStatus.DELIVERED
    assert sent_email.delivered_at is not None
    assert [entry.get("receipt") for entry in sent_email.history] == ["delivered"]


def test_a_late_failure_never_overwrites_delivered(sent_email):
    delivery_receipt_apply(_receipt("delivered", DeliveryStatus.DELIVERED))
    delivery_receipt_apply(_receipt("bounced", DeliveryStatus.FAILED, detail="late"))

    sent_email.refresh_from_db()
    assert sent_email.status == DeliveryStatus.DELIVERED


def test_failure_receipt_records_why(sent_email):
    delivery_receipt_apply(_receipt("undelivered", DeliveryStatus.FAILED, detail="30005"))

    sent_email.refresh_from_db()
    assert (sent_email.status, sent_email.reason, sent_email.last_error) == (
        DeliveryStatus.FAILED,
        "30005",
        "30005",
    )


def test_engagement_is_history_only(sent_email):
    delivery_receipt_apply(_receipt("delivered", DeliveryStatus.DELIVERED))
    delivery_receipt_apply(_receipt("opened"))
    delivery_receipt_apply(_receipt("clicked", detail="https://example.com/x"))

    sent_email.refresh_from_db()
    assert sent_email.status == DeliveryStatus.DELIVERED
    assert [e.get("receipt") for e in sent_email.history] == ["delivered", "opened", "clicked"]
    assert sent_email.history[-1]["detail"] == "https://example.com/x"


def test_unknown_message_id_is_ignored_but_its_suppression_applies(sent_email):
    stray = Receipt(
        provider="postmark",
        message_id="nobody-knows",
        event="complained",
        suppress=("email", "Someone@Example.com", "complaint"),
    )

    assert delivery_receipt_apply(stray) is None

    sent_email.refresh_from_db()
    assert sent_email.status == DeliveryStatus.SENT
    assert Suppression.objects.get().address == "someone@example.com"


def test_receipt_for_another_provider_does_not_match(sent_email):
    other = Receipt(provider="twilio", message_id="msg-1", event="delivered", status="delivered")
    assert delivery_receipt_apply(other) is None


def test_a_receipt_that_beats_the_workers_bookkeeping_is_matched_by_our_id(order_shipped):
    # The provider accepted the message and called back before we recorded its id.
    sending = DeliveryFactory(
        notification__event=order_shipped, channel="sms", status=DeliveryStatus.SENDING
    )
    early = Receipt(
        provider="twilio",
        message_id="SM1",
        delivery_id=sending.pk,
        event="delivered",
        status=DeliveryStatus.DELIVERED,
    )

    assert delivery_receipt_apply(early) == sending.pk

    sending.refresh_from_db()
    assert sending.status == DeliveryStatus.DELIVERED
    assert (sending.provider, sending.provider_message_id) == ("twilio", "SM1")
    # An id that disagrees with the recorded message id matches nothing.
    stale = Receipt(provider="twilio", message_id="SM-other", delivery_id=sending.pk, event="x")
    assert delivery_receipt_apply(stale) is None
