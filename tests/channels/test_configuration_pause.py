"""A configuration error met at send time pauses its provider instead of dead-lettering
(channels/gate/guard.py, channels/gate/circuit.py): the deliveries wait in `queued` without spending
attempts, the pause is logged at ERROR once and shown by /healthz, and a probe after each
cool-down resumes the provider once the settings are fixed, with no replay."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.test import Client

from channels.gate import circuit
from channels.lanes import EMAIL
from devtools.fakes.postmark import DEFAULT_TOKEN, FakePostmark
from notifications.models import Delivery, DeliveryStatus, FailedDelivery
from notifications.services.enqueue import enqueue_deliveries
from notifications.tasks import deliver_email_batch
from preferences.models import Priority
from tests.factories import DeliveryFactory, RecipientFactory
from tests.workers import WorkerProcess, running_workers, wait_for

pytestmark = pytest.mark.django_db

BAD_SENDER = "unsigned@shop.example"  # the fake refuses it: 422 ErrorCode 400, no signature
GOOD_SENDER = "Shop <notify@shop.example>"


@pytest.fixture
def provider() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("breaker", [True, False])
def test_a_configuration_error_opens_the_circuit_with_its_reason(
    settings, provider, caplog, breaker
):
    settings.NOTIFY_CIRCUIT_BREAKER = breaker  # the pause does not depend on the breaker
    settings.NOTIFY_CIRCUIT_CONFIG_COOLDOWN_SECONDS = 60

    with caplog.at_level(logging.WARNING, logger="channels.gate.circuit"):
        waits = [
            circuit.pause_for_configuration(circuit.admit(provider), "sender refused"),
            # A call admitted before the pause, refused after it: the same pause.
            circuit.pause_for_configuration(circuit.Admission(provider), "sender refused"),
        ]

    assert waits == [60, 60]
    assert circuit.status(provider) == circuit.Status(
        circuit.State.OPEN, "sender refused", pytest.approx(60, abs=1)
    )
    with pytest.raises(circuit.CircuitOpen) as raised:
        circuit.admit(provider)
    assert raised.value.cause == "sender refused"
    assert "misconfigured: sender refused" in str(raised.value)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1  # once per pause, not per delivery
    assert "PAUSED" in errors[0].getMessage() and "sender refused" in errors[0].getMessage()


def test_the_probe_after_the_cool_down_closes_it_once_the_setting_is_fixed(
    settings, provider, caplog
):
    settings.NOTIFY_CIRCUIT_CONFIG_COOLDOWN_SECONDS = 0.2
    circuit.pause_for_configuration(circuit.admit(provider), "sender refused")
    wait_for(lambda: circuit.state(provider) == circuit.State.HALF_OPEN, what="cool-down")

    # Still wrong: the probe is refused again, the pause goes on, without a second ERROR.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="channels.gate.circuit"):
        probe = circuit.admit(provider)
        assert probe.probe and probe.cause == "sender refused"
        with pytest.raises(circuit.CircuitOpen):  # one probe at a time
            circuit.admit(provider)
        circuit.pause_for_configuration(probe, "sender refused")
    assert circuit.state(provider) == circuit.State.OPEN
    assert [r.levelno for r in caplog.records if "still misconfigured" in r.getMessage()] == [
        logging.WARNING
    ]
    assert not [r for r in caplog.records if r.levelno == logging.ERROR]

    wait_for(lambda: circuit.state(provider) == circuit.State.HALF_OPEN, what="cool-down")
    circuit.record_success(circuit.admit(provider))  # fixed: the probe went through

    assert circuit.status(provider) == circuit.Status(circuit.State.CLOSED)
    assert not circuit.admit(provider).probe


def test_healthz_shows_the_pause_and_stays_200(client, provider):
    circuit.pause_for_configuration(circuit.admit(provider), "DEFAULT_FROM_EMAIL refused")

    response = client.get("/healthz")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["providers"] == {provider: "paused: DEFAULT_FROM_EMAIL refused"}
    circuit.reset(provider)
    assert client.get("/healthz").json()["providers"] == {}


# --- a real email worker and the Postmark fake ---------------------------------------------


@pytest.fixture
def postmark() -> Iterator[FakePostmark]:
    fake = FakePostmark().start()
    yield fake
    fake.stop()


def _worker_env(postmark: FakePostmark, sender: str) -> dict[str, str]:
    return {
        "EMAIL_BACKEND": "anymail.backends.postmark.EmailBackend",
        "ANYMAIL_POSTMARK_SERVER_TOKEN": DEFAULT_TOKEN,
        "ANYMAIL_POSTMARK_API_URL": postmark.url,
        "ANYMAIL_WEBHOOK_SECRET": "postmark:hook-secret",
        "DEFAULT_FROM_EMAIL": sender,
        "NOTIFY_CIRCUIT_CONFIG_COOLDOWN_SECONDS": "2",
        "LOG_LEVEL": "WARNING",
    }


def _emails(event: Any, count: int, *, priority: str, start: int = 0) -> list[Delivery]:
    return [
        DeliveryFactory(
            notification__recipient=RecipientFactory(email=f"reader-{n}@example.com"),
            notification__event=event,
            notification__priority=priority,
            channel="email",
            content={"subject": "News", "body": "Dark mode is here."},
        )
        for n in range(start, start + count)
    ]


def _logs(workers: dict[str, WorkerProcess]) -> str:
    return "\n".join(worker.log() for worker in workers.values())


def _wait(
    condition: Callable[[], object],
    workers: dict[str, WorkerProcess],
    *,
    what: str,
    timeout: float = 60,
) -> None:
    try:
        wait_for(condition, timeout=timeout, what=what)
    except AssertionError as exc:
        rows = list(Delivery.objects.values_list("pk", "status", "attempts", "history"))
        raise AssertionError(f"{exc}; deliveries {rows}; logs:\n{_logs(workers)}") from None


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_refused_sender_pauses_email_then_everything_goes_once_it_is_fixed(
    order_shipped, postmark, tmp_path
):
    # Before: every one of these was dead-lettered as the ESP refused the sender.
    single = _emails(order_shipped, 4, priority=Priority.TRANSACTIONAL)
    bulk = _emails(order_shipped, 6, priority=Priority.BULK, start=100)
    everything = [d.pk for d in single + bulk]
    queues = [EMAIL.queue, EMAIL.bulk_queue]
    (tmp_path / "bad").mkdir()
    (tmp_path / "good").mkdir()

    with running_workers(queues, tmp_path / "bad", **_worker_env(postmark, BAD_SENDER)) as bad:
        enqueue_deliveries((d.pk, "email", Priority.TRANSACTIONAL) for d in single)
        deliver_email_batch.apply_async(([d.pk for d in bulk],), queue=EMAIL.bulk_queue)

        def all_deferred() -> bool:
            rows = Delivery.objects.filter(pk__in=everything)
            return all(
                any(entry.get("deferred") == "misconfigured" for entry in d.history) for d in rows
            )

        _wait(all_deferred, bad, what="every delivery deferred")
        health = Client().get("/healthz")
        assert health.status_code == 200
        assert health.json()["status"] == "degraded"
        paused = health.json()["providers"]["postmark"]
        assert paused.startswith("paused: postmark") and "not a Sender Signature" in paused
        # A probe every cool-down, each refused: still nothing failed.
        refused = len(postmark.requests)
        _wait(lambda: len(postmark.requests) > refused, bad, what="a refused probe")
        assert not FailedDelivery.objects.exists()
        assert set(
            Delivery.objects.filter(pk__in=everything).values_list("status", "attempts")
        ) <= {(DeliveryStatus.QUEUED, 0), (DeliveryStatus.SENDING, 1)}
        assert postmark.sent_to("reader-0@example.com") == []
    logs = "\n".join(worker.log_path.read_text() for worker in bad.values())  # all of it
    assert logs.count("postmark PAUSED") == 1, logs[-5000:]  # loud, once per pause
    refused = len(postmark.requests)

    # Fixed: the workers restart with a good sender; nobody replays anything.
    # The broker kept as it is: the deferred messages the first workers gave back at their warm
    # shutdown are what must carry the deliveries now.
    with running_workers(
        queues, tmp_path / "good", keep_broker=True, **_worker_env(postmark, GOOD_SENDER)
    ) as good:
        _wait(
            lambda: (
                Delivery.objects.filter(pk__in=everything, status=DeliveryStatus.SENT).count()
                == len(everything)
            ),
            good,
            what="every delivery sent after the fix",
            timeout=90,
        )

    assert not FailedDelivery.objects.exists()
    # Refused calls were no attempts of the deliveries: one attempt each, the one that went.
    assert set(Delivery.objects.filter(pk__in=everything).values_list("attempts", flat=True)) == {1}
    for delivery in Delivery.objects.filter(pk__in=everything).select_related(
        "notification__recipient"
    ):
        address = delivery.notification.recipient.email
        # Once each, after the fix (a batch's refusals came in 200 replies too).
        accepted = [r for r in postmark.requests[refused:] if address in str(r["json"])]
        assert len(accepted) == 1, address
        assert not [
            r
            for r in postmark.sent_to(address)
            if r in postmark.requests[:refused] and r["path"] == "/email"
        ]
    assert circuit.state("postmark") == circuit.State.CLOSED
    assert Client().get("/healthz").json()["providers"] == {}
