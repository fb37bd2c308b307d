"""SMS through the real twilio SDK against the local Twilio fake, via the delivery service."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from channels import aio
from channels.base import ProviderPaused, TransientDeliveryError
from channels.checks import check_providers
from channels.gate import circuit
from channels.lanes import SMS
from channels.providers.sms import SMSProvider, _client
from devtools.fakes.twilio import FakeTwilioServer
from notifications import services
from notifications.models import Delivery, DeliveryStatus, FailedDelivery
from notifications.services import Outcome, engine
from notifications.tasks import deliver_sms
from preferences.models import Suppression
from tests.channels.guarding import SENDER, assert_paused_for_configuration, point_sms_at
from tests.factories import DeliveryFactory, RecipientFactory
from tests.workers import WorkerProcess, running_worker, settled_delivery, wait_for

OK_NUMBER = "+15550100001"

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def twilio_server() -> Iterator[FakeTwilioServer]:
    server = FakeTwilioServer(slow_seconds=2.0).start()
    yield server
    server.stop()


@pytest.fixture
def twilio(settings, twilio_server: FakeTwilioServer) -> FakeTwilioServer:
    point_sms_at(settings, twilio_server)
    twilio_server.reset()
    return twilio_server


def _queued(phone: str, event, body: str = "Your order 7 is on its way.") -> Delivery:
    return DeliveryFactory(
        notification__recipient=RecipientFactory(phone=phone),
        notification__event=event,
        channel="sms",
        content={"subject": "Order 7 shipped", "body": body},
    )


def _send(delivery: Delivery) -> Outcome:
    outcome = services.delivery_send(delivery_id=delivery.pk, task_name="t")
    delivery.refresh_from_db()
    return outcome


def test_sends_the_form_twilio_expects_with_basic_auth(twilio, order_shipped):
    delivery = _queued(OK_NUMBER, order_shipped)

    assert _send(delivery) == Outcome.SENT

    (received,) = twilio.requests
    assert received["path"] == f"/2010-04-01/Accounts/{twilio.account_sid}/Messages.json"
    assert received["authUser"] == twilio.account_sid and received["authOk"] is True
    assert received["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    assert received["headers"]["User-Agent"].startswith("twilio-python/9.")
    assert received["form"] == {"To": OK_NUMBER, "From": SENDER, "Body": delivery.content["body"]}
    assert twilio.auth_token not in json.dumps(twilio.requests)  # the secret is not recorded
    assert delivery.status == DeliveryStatus.SENT
    assert delivery.provider == "twilio"
    assert re.fullmatch(r"SM[0-9a-f]{32}", delivery.provider_message_id)
    assert delivery.provider_message_id == received["response"]["sid"]


def test_messaging_service_and_status_callback_are_sent_when_configured(
    twilio, order_shipped, settings
):
    settings.TWILIO_FROM_NUMBER = ""
    settings.TWILIO_MESSAGING_SERVICE_SID = "MG" + "1" * 32
    # Nobody listens there: the fake's callback fails, which this test does not look at.
    settings.TWILIO_STATUS_CALLBACK_URL = "http://127.0.0.1:9/webhooks/twilio/status"
    delivery = _queued(OK_NUMBER, order_shipped)

    assert _send(delivery) == Outcome.SENT

    assert twilio.requests[0]["form"] == {
        "To": OK_NUMBER,
        "MessagingServiceSid": "MG" + "1" * 32,
        "Body": delivery.content["body"],
        # Our delivery id rides along, so an early callback still finds its delivery.
        "StatusCallback": f"http://127.0.0.1:9/webhooks/twilio/status?deliveryId={delivery.pk}",
    }


@pytest.mark.parametrize(
    ("number", "code", "reason"),
    [
        ("+15550100610", "21610", "sms_stop"),
        ("+15550100211", "21211", "invalid"),
        ("+15550100214", "21214", "invalid"),
        ("+15550100614", "21614", "invalid"),
        ("+15550100635", "21635", "invalid"),
        # The same refusal as RFC 9457 problem details (the SDK's TwilioServiceException).
        ("+15550109211", "21211", "invalid"),
    ],
)
def test_dead_number_fails_once_and_is_suppressed(twilio, order_shipped, number, code, reason):
    delivery = _queued(number, order_shipped)

    assert _send(delivery) == Outcome.FAILED

    assert len(twilio.messages_to(number)) == 1
    assert (delivery.status, delivery.reason, delivery.attempts) == ("failed", code, 1)
    letter = FailedDelivery.objects.get(delivery=delivery)
    assert letter.error_class == "channels.base.PermanentDeliveryError"
    assert letter.error_message.startswith(f"Twilio API 400 code {code}: ")
    assert "Unable to create record" not in letter.error_message
    suppression = Suppression.objects.get(channel="sms", address=number)
    assert (suppression.reason, suppression.provider) == (reason, "Twilio API")

    # A later notification to that number is not even tried.
    later = _queued(number, order_shipped)
    assert _send(later) == Outcome.SKIPPED
    assert later.reason == "suppressed"
    assert len(twilio.messages_to(number)) == 1


def test_error_text_is_twilios_own(twilio, order_shipped):
    delivery = _queued("+15550100211", order_shipped)
    _send(delivery)
    assert delivery.last_error == (
        "Twilio API 400 code 21211: The 'To' number +15550100211 is not a valid phone number."
    )


@pytest.mark.parametrize("number", ["+15550100612", "+15550100617"])
def test_refused_message_fails_without_suppressing_the_number(twilio, order_shipped, number):
    # 21612: this To/From combination cannot be routed; 21617 (body): the message is wrong.
    delivery = _queued(number, order_shipped)

    assert _send(delivery) == Outcome.FAILED

    assert delivery.attempts == 1
    assert FailedDelivery.objects.filter(delivery=delivery).exists()
    assert not Suppression.objects.exists()


def test_rfc9457_error_is_what_the_sdk_raises_as_a_service_exception(twilio):
    from twilio.base.exceptions import TwilioRestException, TwilioServiceException

    async def create() -> Any:
        client = _client(twilio.account_sid, twilio.auth_token, twilio.url)
        return await client.messages.create_async(to="+15550109211", from_=SENDER, body="x")

    with pytest.raises(TwilioServiceException) as raised:
        aio.run(create())

    assert not isinstance(raised.value, TwilioRestException)
    assert (raised.value.status, raised.value.code) == (400, 21211)
    assert twilio.requests[0]["response"]["type"] == "https://www.twilio.com/docs/errors/21211"


@pytest.mark.parametrize("number", ["+15550100429", "+15550109429"])
def test_rate_limit_is_transient_and_keeps_retry_after(twilio, order_shipped, number):
    delivery = _queued(number, order_shipped)

    with pytest.raises(TransientDeliveryError) as raised:
        _send(delivery)

    assert (raised.value.status_code, raised.value.provider_code) == (429, "20429")
    assert raised.value.retry_after == 1.0
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.QUEUED
    assert not FailedDelivery.objects.exists() and not Suppression.objects.exists()


def test_server_error_is_retried_then_sent(twilio, order_shipped):
    delivery = _queued("+15550100501", order_shipped)  # 500 once, then accepted

    with pytest.raises(TransientDeliveryError) as raised:
        _send(delivery)
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.QUEUED
    assert str(raised.value) == "Twilio API 500 code 20500: Internal Server Error"

    assert _send(delivery) == Outcome.SENT

    first, second = twilio.messages_to("+15550100501")
    assert (first["status"], second["status"]) == (500, 201)
    assert delivery.attempts == 2
    assert delivery.provider_message_id == second["response"]["sid"]


def test_slow_answer_times_out_as_transient(twilio, order_shipped, settings):
    settings.NOTIFY_PROVIDER_TIMEOUT_SECONDS = 0.3
    delivery = _queued("+15550100999", order_shipped)  # the fake answers after 2 s

    started = time.monotonic()
    with pytest.raises(TransientDeliveryError):
        _send(delivery)

    assert time.monotonic() - started < 1.5
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.QUEUED
    assert "no answer within 0.3s" in delivery.last_error
    (pending,) = twilio.messages_to("+15550100999")
    assert "status" not in pending  # the client gave up before the fake answered


def test_refused_connection_is_transient(twilio, order_shipped, settings):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        settings.TWILIO_API_BASE = f"http://127.0.0.1:{probe.getsockname()[1]}"
    delivery = _queued(OK_NUMBER, order_shipped)

    with pytest.raises(TransientDeliveryError, match="ConnectionError"):
        _send(delivery)

    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.QUEUED


def test_wrong_auth_token_is_a_configuration_error_that_pauses_twilio(
    twilio, order_shipped, settings
):
    settings.TWILIO_AUTH_TOKEN = "not-the-token"
    delivery = _queued(OK_NUMBER, order_shipped)
    waiting = _queued("+15550100777", order_shipped)

    result = deliver_sms.apply(args=[delivery.pk])

    assert result.successful() and result.result == Outcome.DEFERRED.value
    assert len(twilio.requests) == 1  # not retried
    assert twilio.requests[0]["authOk"] is False
    assert_paused_for_configuration(delivery, "twilio", "401 code 20003: Authenticate")
    assert "TWILIO_AUTH_TOKEN" in delivery.history[-1]["error"]
    assert not Suppression.objects.exists()
    # Paused: the next SMS waits too, without asking Twilio.
    assert deliver_sms.apply(args=[waiting.pk]).result == Outcome.DEFERRED.value
    assert len(twilio.requests) == 1


def test_a_sender_refusal_pauses_twilio(twilio, order_shipped):
    delivery = _queued("+15550100606", order_shipped)

    with pytest.raises(ProviderPaused):  # the task defers it (publish_retries)
        _send(delivery)

    assert_paused_for_configuration(delivery, "twilio", "TWILIO_FROM_NUMBER")
    assert not Suppression.objects.exists()


@pytest.mark.parametrize(
    ("number", "hint"), [("+15550100408", "Geo Permissions"), ("+15550100608", "verified")]
)
def test_a_destination_the_account_may_not_reach_fails_alone(twilio, order_shipped, number, hint):
    delivery = _queued(number, order_shipped)

    assert _send(delivery) == Outcome.FAILED

    letter = FailedDelivery.objects.get(delivery=delivery)
    assert letter.error_class == "channels.base.PermanentDeliveryError"
    assert hint in letter.error_message
    assert not Suppression.objects.exists()  # the number is fine; the account is not set up
    assert circuit.state("twilio") == circuit.State.CLOSED  # other SMS still go
    assert _send(_queued(OK_NUMBER, order_shipped)) == Outcome.SENT


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"TWILIO_ACCOUNT_SID": ""}, "TWILIO_ACCOUNT_SID"),
        ({"TWILIO_AUTH_TOKEN": ""}, "TWILIO_AUTH_TOKEN"),
        (
            {"TWILIO_FROM_NUMBER": "", "TWILIO_MESSAGING_SERVICE_SID": ""},
            "neither TWILIO_FROM_NUMBER nor TWILIO_MESSAGING_SERVICE_SID",
        ),
        ({"TWILIO_API_BASE": "127.0.0.1:8025"}, "TWILIO_API_BASE"),
    ],
)
def test_system_check_names_the_missing_setting(twilio, settings, overrides, named):
    assert check_providers() == []
    for name, value in overrides.items():
        setattr(settings, name, value)

    errors = check_providers()

    assert [error.id for error in errors] == ["channels.E004"]
    assert named in errors[0].msg
    assert SMSProvider.check_configuration() != []


# --- one end-to-end run through a real `celery worker -Q sms` --------------------------------


@pytest.fixture(scope="module")
def sms_worker(
    django_db_setup: None,
    live_server: Any,
    twilio_server: FakeTwilioServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WorkerProcess]:
    with running_worker(
        SMS.queue,
        tmp_path_factory.mktemp("sms-worker"),
        NOTIFY_PROVIDER_SMS="channels.providers.sms.SMSProvider",
        TWILIO_ACCOUNT_SID=twilio_server.account_sid,
        TWILIO_AUTH_TOKEN=twilio_server.auth_token,
        TWILIO_FROM_NUMBER=SENDER,
        TWILIO_API_BASE=twilio_server.url,
        TWILIO_STATUS_CALLBACK_URL=f"{live_server.url}/webhooks/twilio/status",
    ) as worker:
        yield worker


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_worker_sends_retries_and_the_signed_status_callback_marks_delivered(
    api_client, order_shipped, twilio, sms_worker, live_server, settings
):
    # The webhook runs in this process (live_server): same URL and token as the worker's.
    settings.TWILIO_STATUS_CALLBACK_URL = f"{live_server.url}/webhooks/twilio/status"
    number = "+15550100501"  # 500 on the first attempt, then accepted
    recipient = RecipientFactory(phone=number)

    response = api_client.post(
        "/api/notify",
        {"userId": recipient.external_id, "event": "order_shipped", "channels": ["sms"]},
        format="json",
    )
    assert response.status_code == 202, response.content
    notification_id = response.json()["id"]

    delivered = wait_for(
        lambda: settled_delivery(notification_id, "sms", statuses=(DeliveryStatus.DELIVERED,)),
        what=f"sms delivered (worker log:\n{sms_worker.log()})",
    )
    first, second = twilio.messages_to(number)
    assert (first["status"], second["status"]) == (500, 201)
    assert second["form"]["StatusCallback"] == (
        f"{settings.TWILIO_STATUS_CALLBACK_URL}?deliveryId={delivered.pk}"
    )
    assert delivered.attempts == 2
    assert delivered.provider_message_id == second["response"]["sid"]
    steps = [e.get("status") or f"receipt {e['receipt']}" for e in delivered.history]
    assert steps == ["queued", "sending", "queued", "sending", "sent", "receipt sent", "delivered"]
    wait_for(lambda: len(twilio.callbacks) == 2, what="both callbacks answered")
    assert [(c["params"]["MessageStatus"], c["status"]) for c in twilio.callbacks] == [
        ("sent", 200),
        ("delivered", 200),
    ]


def test_a_batch_of_sends_goes_out_together_each_with_its_own_answer(twilio, order_shipped):
    """A batch's 40 SMS are in flight together on the process's one Twilio client; each
    delivery records its own message id."""
    deliveries = [_queued(f"+1415555{i:04d}", order_shipped) for i in range(40)]

    result = engine.deliver([d.pk for d in deliveries], channel="sms")

    assert set(result.outcomes.values()) == {Outcome.SENT}
    ids = {Delivery.objects.get(pk=d.pk).provider_message_id for d in deliveries}
    assert len(ids) == 40 and "" not in ids
