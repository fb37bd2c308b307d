"""Email batches through anymail's Postmark backend: one /email/batch call carries a batch's
deliveries of the same content, and each delivery's outcome is its own, as if sent alone."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from channels.base import Destination, OutboundMessage
from channels.lanes import EMAIL
from channels.providers.email_batch import batch_groups
from devtools.fakes.postmark import FORBIDDEN, FakePostmark
from notifications.models import Delivery, DeliveryStatus, FailedDelivery
from notifications.services import engine
from notifications.tasks import deliver_email_batch
from preferences import access
from preferences.models import Suppression
from tests.channels import guarding
from tests.channels.test_email_postmark import _point_at
from tests.factories import RecipientFactory, TemplateFactory
from tests.notifications import broadcasting
from tests.notifications.broadcasting import fan_out, start_broadcast

news, guard_state = broadcasting.news, guarding.guard_state  # fixtures
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("guard_state")]


@pytest.fixture
def postmark(settings: Any) -> Iterator[FakePostmark]:
    fake = FakePostmark().start()
    _point_at(settings, fake)
    settings.NOTIFY_EMAIL_BATCH_SIZE = 50
    settings.NOTIFY_EMAIL_BATCH_ESPS = ["postmark"]
    yield fake
    fake.stop()


def _email_broadcast(news: Any, addresses: list[str]) -> dict[str, int]:
    """One recipient per address, a broadcast to them fanned out: {address: delivery id}."""
    users = {address: RecipientFactory(email=address) for address in addresses}
    broadcast_id = start_broadcast(
        news, {"userIds": [u.external_id for u in users.values()]}, channels=["email"]
    )
    fan_out(broadcast_id)
    return {
        address: Delivery.objects.get(notification__recipient=user, channel="email").pk
        for address, user in users.items()
    }


def _api_calls(fake: FakePostmark) -> list[dict[str, Any]]:
    return [r for r in fake.requests if r["path"].startswith("/email")]


def _call_sizes(fake: FakePostmark) -> list[int]:
    """Messages per API call: a batch call's list, or one for a plain /email."""
    return sorted(len(c["json"]) if c["path"] == "/email/batch" else 1 for c in _api_calls(fake))


def test_a_batch_of_the_same_message_is_one_call_and_each_delivery_keeps_its_own_id(news, postmark):
    ids = _email_broadcast(news, [f"reader-{n}@example.com" for n in range(5)])

    with CaptureQueriesContext(connection) as queries:
        counts = deliver_email_batch.apply(args=(list(ids.values()),)).get()

    assert counts == {"sent": 5}
    (call,) = _api_calls(postmark)
    assert (call["path"], call["status"]) == ("/email/batch", 200)
    assert sorted(m["To"] for m in call["json"]) == sorted(ids)
    for message in call["json"]:
        # Each message names its own delivery (the ESP's webhooks echo it) and no message
        # carries a Message-ID header another one shares.
        assert message["Metadata"] == {"deliveryId": str(ids[message["To"]])}
        headers = {h["Name"]: h["Value"] for h in message.get("Headers", [])}
        assert "Message-ID" not in headers
        assert message["Subject"] == "News: Dark mode"
        # Its own one-click unsubscribe link (merge headers), for its own recipient.
        link = headers["List-Unsubscribe"].strip("<>")
        assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        token = link.removeprefix("http://testserver/unsubscribe/")
        claims = access.unsubscribe_verify(token, max_age_days=1)
        assert (
            claims.recipient_id
            == Delivery.objects.get(pk=ids[message["To"]]).notification.recipient_id
        )
    accepted = {answer["To"]: answer["MessageID"] for answer in call["response"]}
    for address, delivery_id in ids.items():
        delivery = Delivery.objects.get(pk=delivery_id)
        assert (delivery.status, delivery.attempts) == (DeliveryStatus.SENT, 1)
        assert delivery.provider == "postmark"
        assert delivery.provider_message_id == accepted[address]
        assert delivery.history[-1]["messageId"] == accepted[address]
    # The call's five acceptances are recorded together, in one UPDATE.
    recorded = [q for q in queries.captured_queries if "FROM (VALUES" in q["sql"]]
    assert len(recorded) == 1


def test_refusals_in_a_batch_are_those_deliveries_own_and_the_rest_is_sent(news, postmark):
    ok, inactive, invalid, forbidden = (
        "ok@example.com",
        "inactive-1@example.com",
        "invalid-1@example.com",
        "forbidden-1@example.com",
    )
    ids = _email_broadcast(news, [ok, inactive, invalid, forbidden])

    counts = deliver_email_batch.apply(args=(list(ids.values()),)).get()

    assert counts == {"sent": 1, "failed": 3}
    (call,) = _api_calls(postmark)
    assert len(call["json"]) == 4
    sent = Delivery.objects.get(pk=ids[ok])
    assert sent.status == DeliveryStatus.SENT and sent.provider_message_id
    for address in (inactive, invalid, forbidden):
        failed = Delivery.objects.get(pk=ids[address])
        assert failed.status == DeliveryStatus.FAILED, address
        assert FailedDelivery.objects.filter(delivery=failed).count() == 1
    # A dead address is suppressed as the single send would; a refused message is not.
    suppressed = dict(Suppression.objects.values_list("address", "reason"))
    assert suppressed == {inactive: "hard_bounce", invalid: "invalid"}
    refused = Delivery.objects.get(pk=ids[forbidden])
    assert refused.last_error == "postmark 422 code 411: " + FORBIDDEN, refused.last_error


def test_an_esp_failure_of_the_whole_call_retries_every_delivery_it_carried(news, postmark, broker):
    # Postmark fails a batch holding a message that trips its 500 as a whole: nothing is sent.
    ids = _email_broadcast(news, ["a@example.com", "flaky-1-b@example.com", "c@example.com"])

    counts = deliver_email_batch.apply(args=(list(ids.values()),)).get()

    assert counts == {"retry": 3}
    (call,) = _api_calls(postmark)
    assert call["status"] == 500
    for delivery in Delivery.objects.filter(pk__in=ids.values()):
        assert (delivery.status, delivery.attempts) == (DeliveryStatus.QUEUED, 1)
        assert "500" in delivery.last_error
    assert broker.queued(EMAIL.bulk_queue) == 3  # each retried alone, as a single delivery

    # The retries go one by one, and each address receives the message once.
    counts = deliver_email_batch.apply(args=(list(ids.values()),)).get()
    assert counts == {"sent": 3}
    accepted = [
        message["To"]
        for call in _api_calls(postmark)
        if call["status"] == 200
        for message in call["json"]
    ]
    assert sorted(accepted) == sorted(ids)


def test_calls_hold_at_most_the_batch_size_and_the_rate_limits_room(news, postmark, settings):
    ids = _email_broadcast(news, [f"r{n}@example.com" for n in range(7)])
    settings.NOTIFY_EMAIL_BATCH_SIZE = 3

    assert deliver_email_batch.apply(args=(list(ids.values()),)).get() == {"sent": 7}
    assert _call_sizes(postmark) == [1, 3, 3]

    # A call takes one rate-limit entry per message: no call may carry more than the bulk
    # lane's window holds (2 of 4 per second here), or it would never find room.
    postmark.requests.clear()
    settings.NOTIFY_EMAIL_BATCH_SIZE = 50
    settings.NOTIFY_RATE_LIMITS = {"postmark": "4/second"}
    settings.NOTIFY_RATE_LIMIT_BULK_SHARE = 0.5
    more = _email_broadcast(news, [f"s{n}@example.com" for n in range(5)])
    assert deliver_email_batch.apply(args=(list(more.values()),)).get() == {"sent": 5}
    assert _call_sizes(postmark) == [1, 2, 2]


def test_only_the_same_content_to_distinct_addresses_shares_a_call(news, postmark):
    # The template uses a recipient field: every message differs, so none can share a call.
    TemplateFactory(
        event=news,
        channel="email",
        locale="fr",
        subject="Nouveau",
        body="Bonjour {{ recipient.id }}",
    )
    french = [RecipientFactory(email=f"fr{n}@example.com", locale="fr") for n in range(2)]
    ids = _email_broadcast(news, ["x@example.com", "y@example.com"])
    broadcast_id = start_broadcast(
        news, {"userIds": [u.external_id for u in french]}, channels=["email"]
    )
    fan_out(broadcast_id)
    french_ids = list(
        Delivery.objects.filter(notification__broadcast_id=broadcast_id).values_list(
            "pk", flat=True
        )
    )

    result = engine.deliver([*ids.values(), *french_ids], channel="email")

    assert set(result.outcomes.values()) == {"sent"}
    assert _call_sizes(postmark) == [1, 1, 2]


def _message(delivery_id: int, email: str, body: str = "same") -> OutboundMessage:
    return OutboundMessage(
        delivery_id=delivery_id,
        notification_id=str(delivery_id),
        channel="email",
        event="news",
        destination=Destination(recipient_id=delivery_id, external_id="u", email=email),
        content={"subject": "s", "body": body},
        priority="bulk",
    )


def test_grouping_keeps_one_message_per_address_per_call_and_trusts_only_listed_esps(settings):
    settings.NOTIFY_EMAIL_BATCH_SIZE = 50
    settings.NOTIFY_EMAIL_BATCH_ESPS = ["postmark"]
    messages = [
        _message(1, "a@x.org"),
        _message(2, "A@x.org"),  # the same mailbox: a second call
        _message(3, "b@x.org"),
        _message(4, "c@x.org", body="other"),
    ]

    assert batch_groups(messages, provider="postmark") == [[0, 2], [1], [3]]
    # SMTP (or an ESP not listed) would put every address on one message: never batched.
    assert batch_groups(messages, provider="smtp") == [[0], [1], [2], [3]]
    settings.NOTIFY_EMAIL_BATCH_SIZE = 1
    assert batch_groups(messages, provider="postmark") == [[0], [1], [2], [3]]
