"""The circuit breaker per provider (channels/gate/circuit.py, gated in channels/gate/guard.py):
repeated transient failures pause a provider, paused deliveries wait without spending attempts, one
probe at a time after the cool-down, and an outage does not dead-letter anything."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from channels.base import ProviderPaused, TransientDeliveryError
from channels.gate import circuit
from channels.lanes import SMS
from devtools.fakes.twilio import FakeTwilioServer
from notifications import services
from notifications.models import Delivery, DeliveryStatus, FailedDelivery
from notifications.services import Outcome
from notifications.services.enqueue import enqueue_deliveries
from notifications.tasks import deliver_sms_batch
from preferences.models import Priority
from tests.channels import guarding
from tests.channels.guarding import numbers, queued_sms, received, twilio_worker_env
from tests.channels.push import queued_push
from tests.factories import DeviceFactory
from tests.workers import running_worker, wait_for

# The fixtures these tests share with the other guard tests.
guard_state, twilio_server, twilio = guarding.guard_state, guarding.twilio_server, guarding.twilio
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("guard_state")]


@pytest.fixture
def breaker(settings: Any) -> Any:
    settings.NOTIFY_CIRCUIT_BREAKER = True
    settings.NOTIFY_CIRCUIT_FAILURES = 3
    settings.NOTIFY_CIRCUIT_WINDOW_SECONDS = 60
    settings.NOTIFY_CIRCUIT_COOLDOWN_SECONDS = 30
    return settings


@pytest.fixture
def provider() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def _fail(provider: str, times: int, retry_after: float | None = None) -> None:
    for _ in range(times):
        circuit.record_failure(circuit.admit(provider), retry_after=retry_after)


def test_repeated_transient_failures_open_the_circuit(breaker, provider):
    _fail(provider, 2)
    assert circuit.state(provider) == circuit.State.CLOSED

    _fail(provider, 1)

    assert circuit.state(provider) == circuit.State.OPEN
    with pytest.raises(circuit.CircuitOpen) as raised:
        circuit.admit(provider)
    assert 25 < raised.value.retry_after <= 30


def test_an_answer_from_the_provider_ends_the_failures_in_a_row(breaker, provider):
    _fail(provider, 2)
    circuit.record_success(circuit.admit(provider))
    _fail(provider, 2)

    assert circuit.state(provider) == circuit.State.CLOSED


def test_after_the_cool_down_one_probe_goes_through_and_its_success_closes(breaker, provider):
    breaker.NOTIFY_CIRCUIT_COOLDOWN_SECONDS = 0.2
    _fail(provider, 3)
    wait_for(lambda: circuit.state(provider) == circuit.State.HALF_OPEN, what="cool-down")

    probe = circuit.admit(provider)
    assert probe.probe
    with pytest.raises(circuit.CircuitOpen):  # one probe at a time
        circuit.admit(provider)

    circuit.record_success(probe)
    assert circuit.state(provider) == circuit.State.CLOSED
    assert not circuit.admit(provider).probe


def test_a_failed_probe_reopens_for_another_cool_down(breaker, provider):
    breaker.NOTIFY_CIRCUIT_COOLDOWN_SECONDS = 0.2
    _fail(provider, 3)
    wait_for(lambda: circuit.state(provider) == circuit.State.HALF_OPEN, what="cool-down")
    breaker.NOTIFY_CIRCUIT_COOLDOWN_SECONDS = 30

    circuit.record_failure(circuit.admit(provider))

    assert circuit.state(provider) == circuit.State.OPEN
    with pytest.raises(circuit.CircuitOpen) as raised:
        circuit.admit(provider)
    assert raised.value.retry_after > 25


def test_a_retry_after_longer_than_the_cool_down_keeps_it_open_that_long(breaker, provider):
    _fail(provider, 3, retry_after=120)

    with pytest.raises(circuit.CircuitOpen) as raised:
        circuit.admit(provider)
    assert raised.value.retry_after > 100


def test_off_means_never_open(breaker, provider):
    breaker.NOTIFY_CIRCUIT_BREAKER = False
    _fail(provider, 10)
    assert not circuit.admit(provider).probe


def test_an_open_circuit_defers_sms_without_calling_twilio_or_spending_attempts(
    breaker, twilio: FakeTwilioServer, order_shipped
):
    twilio.fail_rate = 1.0  # every request: 503
    failing = [queued_sms(order_shipped, number) for number in numbers(3)]
    for delivery in failing:
        with pytest.raises(TransientDeliveryError) as failed:
            services.delivery_send(delivery_id=delivery.pk)
        assert not isinstance(failed.value, ProviderPaused)  # tried, and counted
    assert circuit.state("twilio") == circuit.State.OPEN
    waiting = queued_sms(order_shipped, numbers(1, start=50)[0])

    with pytest.raises(ProviderPaused) as raised:
        services.delivery_send(delivery_id=waiting.pk)

    assert raised.value.reason == "circuit_open"
    assert raised.value.retry_after and raised.value.retry_after > 25
    waiting.refresh_from_db()
    assert (waiting.status, waiting.attempts) == (DeliveryStatus.QUEUED, 0)
    assert waiting.history[-1]["deferred"] == "circuit_open"
    assert received(twilio, waiting.notification.recipient.phone) == 0
    assert len(twilio.requests) == 3


def test_a_paused_push_platform_keeps_what_other_attempts_reached(
    breaker, push_sender, order_shipped
):
    recipient = DeviceFactory(platform="apns").recipient
    delivery = queued_push(recipient, order_shipped)
    _fail(push_sender.name, 3)

    with pytest.raises(ProviderPaused):
        services.delivery_send(delivery_id=delivery.pk)

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.QUEUED, 0)
    assert push_sender.sent == []


def test_a_batch_defers_its_paused_deliveries_into_one_later_batch(
    breaker, twilio: FakeTwilioServer, order_shipped, broker
):
    _fail("twilio", 3)
    deliveries = [
        queued_sms(order_shipped, number, priority=Priority.BULK) for number in numbers(3)
    ]
    ids = [d.pk for d in deliveries]

    assert deliver_sms_batch(ids) == {Outcome.DEFERRED.value: 3}

    assert twilio.requests == []
    assert set(Delivery.objects.values_list("status", "attempts")) == {(DeliveryStatus.QUEUED, 0)}
    (message,) = broker.messages(SMS.bulk_queue)
    assert message["headers"]["task"] == SMS.batch_task
    assert message["body"][0] == [ids]
    assert message["headers"]["eta"]
    assert broker.queued(SMS.queue) == 0


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_an_outage_pauses_twilio_instead_of_dead_lettering_then_everything_is_sent(
    twilio: FakeTwilioServer, order_shipped, tmp_path, settings
):
    # Without the breaker, 4 tries 1-2 s apart (settings_test) dead-letter every delivery
    # within about 5 s, and the circuit this test waits for never opens.
    twilio.fail_rate = 1.0
    deliveries = [queued_sms(order_shipped, number) for number in numbers(6)]
    env = twilio_worker_env(
        twilio,
        NOTIFY_CIRCUIT_BREAKER="true",
        NOTIFY_CIRCUIT_FAILURES="2",
        NOTIFY_CIRCUIT_COOLDOWN_SECONDS="3",
    )
    with running_worker(SMS.queue, tmp_path, **env) as worker:
        enqueue_deliveries((d.pk, "sms", Priority.TRANSACTIONAL) for d in deliveries)
        wait_for(
            lambda: circuit.state("twilio") == circuit.State.OPEN,
            what=f"the circuit to open; log:\n{worker.log()}",
        )
        # Two failures open it (three if a third was already under way); each further one
        # is a probe, after a cool-down: at least one probe has failed at four.
        wait_for(lambda: len(twilio.requests) >= 4, timeout=30, what="a failed probe")
        assert not FailedDelivery.objects.exists()
        twilio.fail_rate = 0.0

        wait_for(
            lambda: Delivery.objects.filter(status=DeliveryStatus.SENT).count() == 6,
            timeout=30,
            what=f"all sent after the outage; log:\n{worker.log()}",
        )

    assert not FailedDelivery.objects.exists()
    assert circuit.state("twilio") == circuit.State.CLOSED
    attempts = dict(Delivery.objects.values_list("pk", "attempts"))
    # Every provider call is one attempt of one delivery; deferrals are none.
    assert sum(attempts.values()) == len(twilio.requests)
    assert max(attempts.values()) <= settings.NOTIFY_MAX_RETRIES + 1  # within the budget
    for delivery in deliveries:
        answers = [m["status"] for m in twilio.messages_to(delivery.notification.recipient.phone)]
        assert answers.count(201) == 1, answers
    deferred = [
        entry
        for history in Delivery.objects.values_list("history", flat=True)
        for entry in history
        if entry.get("deferred") == "circuit_open"
    ]
    assert deferred
