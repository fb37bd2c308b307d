"""Email through anymail's real Postmark backend against the local Postmark fake.

Sends go through notifications.services.delivery_send, so what is asserted is the policy:
what Postmark received, what was retried, what was dead-lettered, which address suppressed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from channels.base import ProviderPaused, TransientDeliveryError
from channels.checks import check_providers
from channels.gate import circuit
from channels.lanes import EMAIL
from devtools.fakes.postmark import DEFAULT_TOKEN, FakePostmark
from notifications import services
from notifications.models import Delivery, DeliveryStatus, FailedDelivery
from notifications.services import Outcome
from notifications.tasks import deliver_email
from preferences.models import Suppression
from tests.channels.guarding import assert_paused_for_configuration
from tests.factories import DeliveryFactory, RecipientFactory
from tests.workers import WorkerProcess, running_worker, settled_delivery, wait_for

POSTMARK_BACKEND = "anymail.backends.postmark.EmailBackend"
WEBHOOK_SECRET = "postmark:hook-secret"


@pytest.fixture
def postmark() -> Iterator[FakePostmark]:
    fake = FakePostmark().start()
    yield fake
    fake.stop()


def _point_at(settings: Any, fake: FakePostmark, **anymail: str) -> None:
    # pytest-django forces the locmem backend at setup; this override comes later and wins.
    settings.EMAIL_BACKEND = POSTMARK_BACKEND
    settings.DEFAULT_FROM_EMAIL = "Shop <notify@shop.example>"
    settings.ANYMAIL = {
        "POSTMARK_SERVER_TOKEN": DEFAULT_TOKEN,
        "POSTMARK_API_URL": fake.url,
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        **anymail,
    }


@pytest.fixture
def via_postmark(settings: Any, postmark: FakePostmark) -> FakePostmark:
    _point_at(settings, postmark)
    return postmark


def _queued(event: Any, email: str, **content: Any) -> Delivery:
    return DeliveryFactory(
        notification__recipient=RecipientFactory(email=email),
        notification__event=event,
        channel="email",
        content={"subject": "Order 7 shipped", "body": "On its way.", **content},
    )


@pytest.mark.django_db
def test_postmark_receives_exactly_the_message_and_its_id_is_recorded(
    order_shipped, settings, postmark
):
    _point_at(settings, postmark, POSTMARK_MESSAGE_STREAM="outbound")
    delivery = _queued(order_shipped, "ana@example.com", html="<p>On its way.</p>")

    assert services.delivery_send(delivery_id=delivery.pk) == Outcome.SENT

    (request,) = postmark.requests
    assert (request["method"], request["path"]) == ("POST", "/email")
    assert request["serverToken"] == "valid"
    headers = {name.lower(): value for name, value in request["headers"].items()}
    assert headers["content-type"] == "application/json"
    assert headers["accept"] == "application/json"
    assert headers["user-agent"].startswith("django-anymail/")
    message_id, unsubscribe, one_click = request["json"].pop("Headers")
    assert message_id["Name"] == "Message-ID"
    assert message_id["Value"].endswith("@shop.example>")
    # RFC 8058: the recipient's signed link, and the one-click POST it accepts.
    assert unsubscribe["Name"] == "List-Unsubscribe"
    assert unsubscribe["Value"].startswith("<http://testserver/unsubscribe/")
    assert one_click == {"Name": "List-Unsubscribe-Post", "Value": "List-Unsubscribe=One-Click"}
    assert request["json"] == {
        "From": "Shop <notify@shop.example>",
        "To": "ana@example.com",
        "Subject": "Order 7 shipped",
        "TextBody": "On its way.",
        "HtmlBody": "<p>On its way.</p>",
        "MessageStream": "outbound",
        # Echoed in Postmark's webhooks, so receipts find the delivery by our own id.
        "Metadata": {"deliveryId": str(delivery.pk)},
    }
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SENT
    assert delivery.provider == "postmark"
    assert delivery.provider_message_id == request["response"]["MessageID"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("address", "code", "reason"),
    [
        ("inactive-1@example.com", "406", "hard_bounce"),
        ("invalid-1@example.com", "300", "invalid"),
    ],
)
def test_a_refused_address_is_tried_once_dead_lettered_and_suppressed(
    order_shipped, via_postmark, address, code, reason
):
    delivery = _queued(order_shipped, address)

    assert services.delivery_send(delivery_id=delivery.pk, task_name="t") == Outcome.FAILED

    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED and delivery.attempts == 1
    letter = FailedDelivery.objects.get(delivery=delivery)
    assert letter.error_class == "channels.base.PermanentDeliveryError"
    assert letter.error_message.startswith(f"postmark 422 code {code}: ")
    assert address in letter.error_message
    suppression = Suppression.objects.get()
    assert (suppression.channel, suppression.address) == ("email", address)
    assert (suppression.reason, suppression.provider) == (reason, "postmark")
    # The next notification to that address is skipped without asking Postmark again.
    again = _queued(order_shipped, address.upper())
    assert services.delivery_send(delivery_id=again.pk) == Outcome.SKIPPED
    again.refresh_from_db()
    assert again.reason == "suppressed"
    assert len(via_postmark.requests) == 1


@pytest.mark.django_db
def test_rate_limit_is_transient_and_carries_retry_after(order_shipped, via_postmark):
    delivery = _queued(order_shipped, "ratelimited@example.com")

    with pytest.raises(TransientDeliveryError) as caught:
        services.delivery_send(delivery_id=delivery.pk)

    assert caught.value.status_code == 429
    assert caught.value.retry_after == 1.0
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.QUEUED
    assert "postmark 429" in delivery.last_error
    assert not FailedDelivery.objects.exists()
    assert not Suppression.objects.exists()


@pytest.mark.django_db
def test_server_errors_are_retried_until_postmark_accepts(order_shipped, via_postmark):
    # The fake answers 500, then 503, then accepts.
    delivery = _queued(order_shipped, "flaky-2-bob@example.com")

    for status in (500, 503):
        with pytest.raises(TransientDeliveryError) as caught:
            services.delivery_send(delivery_id=delivery.pk)
        assert caught.value.status_code == status
        delivery.refresh_from_db()
        assert delivery.status == DeliveryStatus.QUEUED
    assert services.delivery_send(delivery_id=delivery.pk) == Outcome.SENT

    delivery.refresh_from_db()
    assert delivery.attempts == 3
    assert [r["status"] for r in via_postmark.requests] == [500, 503, 200]
    assert delivery.provider_message_id == via_postmark.requests[-1]["response"]["MessageID"]
    assert not Suppression.objects.exists()


@pytest.mark.django_db
def test_a_slow_postmark_is_cut_off_by_our_timeout(order_shipped, via_postmark, settings):
    settings.NOTIFY_PROVIDER_TIMEOUT_SECONDS = 0.3
    delivery = _queued(order_shipped, "slow-3000-carl@example.com")

    started = time.monotonic()
    with pytest.raises(TransientDeliveryError) as caught:
        services.delivery_send(delivery_id=delivery.pk)

    assert time.monotonic() - started < 2.0  # anymail's own default would wait 30 s
    assert caught.value.status_code is None
    assert "ReadTimeout" in str(caught.value)
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.QUEUED


@pytest.mark.django_db
def test_postmark_unreachable_is_transient(order_shipped, settings, postmark):
    _point_at(settings, postmark)
    postmark.stop()  # nothing listens on that port any more
    delivery = _queued(order_shipped, "dan@example.com")

    with pytest.raises(TransientDeliveryError):
        services.delivery_send(delivery_id=delivery.pk)

    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.QUEUED
    assert "ConnectionError" in delivery.last_error


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("anymail", "sender", "expected"),
    [
        ({"POSTMARK_SERVER_TOKEN": "wrong-token"}, "notify@shop.example", "401 code 10"),
        ({}, "unsigned@shop.example", "422 code 400"),
    ],
)
def test_bad_credentials_pause_postmark_instead_of_dead_lettering(
    order_shipped, settings, postmark, anymail, sender, expected
):
    _point_at(settings, postmark, **anymail)
    settings.DEFAULT_FROM_EMAIL = sender
    delivery = _queued(order_shipped, "erin@example.com")
    waiting = _queued(order_shipped, "fred@example.com")

    result = deliver_email.apply(args=[delivery.pk])

    assert result.successful() and result.result == Outcome.DEFERRED.value
    assert_paused_for_configuration(delivery, "postmark", f"postmark {expected}: ")
    assert not Suppression.objects.exists()
    # Paused: the next delivery does not ask Postmark to refuse it the same way.
    assert deliver_email.apply(args=[waiting.pk]).result == Outcome.DEFERRED.value
    assert_paused_for_configuration(waiting, "postmark", f"postmark {expected}: ")
    assert len(postmark.requests) == 1


@pytest.mark.django_db
def test_a_sender_anymail_cannot_parse_pauses_email_without_calling_postmark(
    order_shipped, via_postmark, settings
):
    # The literal quotes a shell-quoted env file leaves: every message was refused by anymail
    # before any call (AnymailInvalidAddress) and dead-lettered, one by one.
    settings.DEFAULT_FROM_EMAIL = "'Notifications <notify@example.com>'"
    delivery = _queued(order_shipped, "gina@example.com")

    with pytest.raises(ProviderPaused):  # the task defers it (publish_retries)
        services.delivery_send(delivery_id=delivery.pk)

    assert_paused_for_configuration(delivery, "postmark", "DEFAULT_FROM_EMAIL")
    assert via_postmark.requests == []


@pytest.mark.django_db
def test_a_recipient_address_anymail_cannot_parse_is_that_deliverys_alone(
    order_shipped, via_postmark
):
    delivery = _queued(order_shipped, "no-at-sign.example.com")

    assert services.delivery_send(delivery_id=delivery.pk) == Outcome.FAILED

    letter = FailedDelivery.objects.get(delivery=delivery)
    assert letter.error_class == "channels.base.PermanentDeliveryError"
    assert circuit.state("postmark") == circuit.State.CLOSED


def _email_errors() -> list[Any]:
    return [error for error in check_providers() if "NOTIFY_PROVIDER_EMAIL" in error.msg]


def test_system_check_names_the_missing_postmark_token(settings):
    settings.EMAIL_BACKEND = POSTMARK_BACKEND
    settings.ANYMAIL = {"WEBHOOK_SECRET": WEBHOOK_SECRET}

    (error,) = _email_errors()

    assert error.id == "channels.E004"
    assert "ANYMAIL_POSTMARK_SERVER_TOKEN" in error.msg


def test_system_check_refuses_an_empty_token_and_an_open_webhook(settings):
    settings.EMAIL_BACKEND = POSTMARK_BACKEND
    settings.ANYMAIL = {"POSTMARK_SERVER_TOKEN": ""}

    messages = [error.msg for error in _email_errors()]

    assert any("ANYMAIL_POSTMARK_SERVER_TOKEN is empty" in m for m in messages)
    assert any("ANYMAIL_WEBHOOK_SECRET" in m for m in messages)


def test_system_check_refuses_a_batch_size_postmark_would_refuse(settings):
    settings.EMAIL_BACKEND = POSTMARK_BACKEND
    settings.ANYMAIL = {"POSTMARK_SERVER_TOKEN": "t", "WEBHOOK_SECRET": WEBHOOK_SECRET}
    settings.NOTIFY_EMAIL_BATCH_SIZE = 501

    (error,) = _email_errors()

    assert "NOTIFY_EMAIL_BATCH_SIZE=501" in error.msg
    settings.NOTIFY_EMAIL_BATCH_SIZE = 500
    assert _email_errors() == []


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        ("'Notifications <notify@example.com>'", "remove the quotes"),
        ("notify@example.com, other@example.com", "Only one email address"),
        ("Notifications", "not one valid address"),
        ("", "DEFAULT_FROM_EMAIL is empty"),
    ],
)
def test_system_check_refuses_a_sender_anymail_would_refuse(settings, sender, expected):
    settings.EMAIL_BACKEND = POSTMARK_BACKEND
    settings.ANYMAIL = {"POSTMARK_SERVER_TOKEN": "t", "WEBHOOK_SECRET": WEBHOOK_SECRET}
    settings.DEFAULT_FROM_EMAIL = sender

    (error,) = _email_errors()

    assert "DEFAULT_FROM_EMAIL" in error.msg and expected in error.msg
    settings.DEFAULT_FROM_EMAIL = "Notifications <notify@example.com>"  # a display name is fine
    assert _email_errors() == []


def test_system_check_passes_for_a_configured_postmark_and_for_smtp(settings):
    settings.EMAIL_BACKEND = POSTMARK_BACKEND
    settings.ANYMAIL = {"POSTMARK_SERVER_TOKEN": "t", "WEBHOOK_SECRET": WEBHOOK_SECRET}
    assert _email_errors() == []
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.ANYMAIL = {}
    assert _email_errors() == []


# --- one real worker ----------------------------------------------------------------------
# Module scope, and last in the file: while it runs the worker consumes the email queue.


@pytest.fixture(scope="module")
def postmark_for_worker() -> Iterator[FakePostmark]:
    fake = FakePostmark().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def email_worker(
    django_db_setup: None,
    postmark_for_worker: FakePostmark,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WorkerProcess]:
    with running_worker(
        EMAIL.queue,
        tmp_path_factory.mktemp("postmark-worker"),
        EMAIL_BACKEND=POSTMARK_BACKEND,
        ANYMAIL_POSTMARK_SERVER_TOKEN=DEFAULT_TOKEN,
        ANYMAIL_POSTMARK_API_URL=postmark_for_worker.url,
        ANYMAIL_WEBHOOK_SECRET=WEBHOOK_SECRET,
    ) as worker:
        yield worker


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_real_worker_retries_a_postmark_5xx_then_the_webhook_marks_it_delivered(
    api_client, order_shipped, email_worker, postmark_for_worker, live_server, settings
):
    settings.EMAIL_BACKEND = POSTMARK_BACKEND  # the live server routes Postmark's webhook
    settings.ANYMAIL = {"WEBHOOK_SECRET": WEBHOOK_SECRET}
    postmark_for_worker.webhook_url = f"{live_server.url}/webhooks/anymail/postmark/tracking/"
    postmark_for_worker.webhook_auth = WEBHOOK_SECRET
    # Like Postmark's, the callback comes after the worker recorded "sent" (a receipt for a
    # message id not yet recorded is dropped).
    postmark_for_worker.webhook_delay = 1.0
    recipient = RecipientFactory(email="flaky-1-fay@example.com")

    response = api_client.post(
        "/api/notify",
        {"userId": recipient.external_id, "event": "order_shipped", "data": {"orderId": "9"}},
        format="json",
    )
    assert response.status_code == 202, response.content

    email = wait_for(
        lambda: settled_delivery(
            response.json()["id"],
            "email",
            statuses=(DeliveryStatus.DELIVERED, DeliveryStatus.FAILED),
        ),
        what="the email to be delivered",
        timeout=30,
    )
    assert email.status == DeliveryStatus.DELIVERED, email_worker.log()
    assert email.attempts == 2
    assert [e["status"] for e in email.history if "status" in e] == [
        "queued",
        "sending",
        "queued",
        "sending",
        "sent",
        "delivered",
    ]
    (accepted,) = postmark_for_worker.sent_to("flaky-1-fay@example.com")
    assert email.provider_message_id == accepted["response"]["MessageID"]
    assert accepted["json"]["Subject"] == "Order 9 shipped"
    # The fake records its callback once it has our answer, which can come after the row
    # changed: wait for the record rather than read it at once.
    webhook = wait_for(
        lambda: postmark_for_worker.webhooks[-1] if postmark_for_worker.webhooks else None,
        what="the fake to record its webhook call",
        timeout=10,
    )
    assert webhook["status"] == 200


@pytest.mark.django_db
def test_the_one_message_id_is_recorded_when_anymail_reports_a_set(order_shipped, via_postmark):
    # A row stored before addresses were canonical: anymail keys its status by the address as
    # given, Postmark's answer names the punycode one, so anymail's message_id was the set
    # {None, '<id>'}; stored as its repr, no receipt ever matched it.
    delivery = _queued(order_shipped, "e6@exämple.com")

    assert services.delivery_send(delivery_id=delivery.pk) == Outcome.SENT

    (request,) = via_postmark.requests
    delivery.refresh_from_db()
    assert delivery.provider_message_id == request["response"]["MessageID"]
