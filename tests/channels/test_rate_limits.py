"""Per-provider rate limits (channels/gate/ratelimit.py): shared by processes, bulk held to its
share, a call over the limit waits, and a wait that runs out defers the delivery without an attempt.
Measured from the provider's side: the fake's busiest second."""

from __future__ import annotations

from typing import Any

import pytest

from channels.base import ProviderPaused
from channels.gate import circuit, guard_redis, ratelimit
from channels.lanes import SMS
from devtools.fakes.twilio import FakeTwilioServer
from notifications import services
from notifications.models import Delivery, DeliveryStatus, FailedDelivery
from notifications.services import Outcome, engine
from notifications.services.enqueue import enqueue_deliveries
from notifications.tasks import deliver_sms
from preferences.models import Priority
from tests.channels import guarding
from tests.channels.guarding import numbers, queued_sms, received, twilio_worker_env
from tests.workers import running_workers, wait_for

# The fixtures these tests share with the other guard tests.
guard_state, twilio_server, twilio = guarding.guard_state, guarding.twilio_server, guarding.twilio
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("guard_state")]

# A call takes its entry in the window a moment before its request reaches the provider, and
# that moment varies (a cold SDK client, a busy CPU): the provider's busiest second may hold
# calls whose entries belong to the second before. Each sender sends one call at a time, so at
# most one such call per concurrent sender: the tolerance is the number of senders.
WORKER_CHILDREN = 2  # tests.workers.WorkerProcess runs --concurrency 2


@pytest.fixture
def limited(settings: Any) -> Any:
    settings.NOTIFY_RATE_LIMITS = {"twilio": "20/second", "tiny": "3/minute"}
    settings.NOTIFY_RATE_LIMIT_BULK_SHARE = 0.5
    return settings


def test_calls_within_the_limit_go_at_once_and_the_next_waits_for_the_window(limited):
    for _ in range(3):
        ratelimit.acquire("tiny", bulk=False, max_wait=0)  # raises if it had to wait

    with pytest.raises(ratelimit.RateLimitWaitExceeded) as raised:
        ratelimit.acquire("tiny", bulk=False, max_wait=0.05)

    assert raised.value.retry_after == 60.0  # the window moves within a period


def test_bulk_gets_its_share_and_the_rest_stays_free_for_transactional(limited):
    # 3/minute at a 50 % bulk share: bulk may take 1; transactional still finds the other 2.
    ratelimit.acquire("tiny", bulk=True, max_wait=0)
    with pytest.raises(ratelimit.RateLimitWaitExceeded):
        ratelimit.acquire("tiny", bulk=True, max_wait=0)

    ratelimit.acquire("tiny", bulk=False, max_wait=0)
    ratelimit.acquire("tiny", bulk=False, max_wait=0)
    with pytest.raises(ratelimit.RateLimitWaitExceeded):
        ratelimit.acquire("tiny", bulk=False, max_wait=0)


def test_a_provider_without_a_limit_is_not_limited(limited):
    for _ in range(50):
        ratelimit.acquire("unlisted", bulk=True, max_wait=0)


def test_an_unreachable_limiter_lets_calls_through(limited):
    limited.NOTIFY_GUARD_REDIS_URL = "redis://127.0.0.1:9/0"  # nothing listens there
    for _ in range(5):
        ratelimit.acquire("tiny", bulk=False, max_wait=0)


def test_a_delivery_whose_wait_runs_out_is_deferred_not_attempted(
    limited, twilio: FakeTwilioServer, order_shipped, broker
):
    limited.NOTIFY_RATE_LIMITS = {"twilio": "1/minute"}
    limited.NOTIFY_RATE_LIMIT_MAX_WAIT_SECONDS = 0.05
    first, second = (queued_sms(order_shipped, number) for number in numbers(2))
    assert services.delivery_send(delivery_id=first.pk) == Outcome.SENT

    with pytest.raises(ProviderPaused) as raised:
        services.delivery_send(delivery_id=second.pk)

    assert raised.value.reason == "rate_limited"
    second.refresh_from_db()
    assert second.status == DeliveryStatus.QUEUED
    assert second.attempts == 0
    assert second.history[-1]["deferred"] == "rate_limited"
    assert received(twilio, second.notification.recipient.phone) == 0
    # The task publishes it again, due after the window, as retry number 0: no retry spent.
    assert deliver_sms(second.pk) == Outcome.DEFERRED
    (message,) = broker.messages(SMS.queue)
    assert message["body"][0] == [second.pk]
    assert message["headers"]["retries"] == 0
    assert message["headers"]["eta"]
    assert not FailedDelivery.objects.exists()


def test_a_batch_with_calls_in_flight_keeps_bulk_within_its_share(
    limited, twilio: FakeTwilioServer, order_shipped
):
    # 20/s at a 50 % bulk share: 10 bulk SMS per second at most, 4 calls in flight.
    threads = 4
    limited.NOTIFY_DELIVERY_IN_FLIGHT = {"sms": threads}
    deliveries = [
        queued_sms(order_shipped, number, priority=Priority.BULK) for number in numbers(30)
    ]

    result = engine.deliver([d.pk for d in deliveries], channel="sms", task_name="t")

    assert set(result.outcomes.values()) == {Outcome.SENT}
    stats = twilio.stats.as_json()
    assert stats["requests"] == 30
    assert stats["maxPerSecond"] <= 10 + threads, stats
    attempts = Delivery.objects.filter(pk__in=[d.pk for d in deliveries]).values_list(
        "attempts", flat=True
    )
    assert set(attempts) == {1}


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_two_worker_processes_share_the_limit(
    twilio: FakeTwilioServer, order_shipped, tmp_path, settings
):
    # 60 SMS, 3x the limit, half on each lane, through two worker processes (2 children each).
    limit = 20
    lanes = {Priority.TRANSACTIONAL: numbers(30), Priority.BULK: numbers(30, start=100)}
    deliveries = [
        queued_sms(order_shipped, number, priority=priority)
        for priority, group in lanes.items()
        for number in group
    ]
    env = twilio_worker_env(twilio, NOTIFY_RATE_LIMITS=f"twilio={limit}/second")

    with running_workers((SMS.queue, SMS.bulk_queue), tmp_path, **env) as workers:
        enqueue_deliveries((d.pk, "sms", d.notification.priority) for d in deliveries)
        wait_for(
            lambda: Delivery.objects.filter(status=DeliveryStatus.SENT).count() == 60,
            timeout=60,
            what="60 SMS sent; logs:\n" + "\n".join(w.log() for w in workers.values()),
        )

    stats = twilio.stats.as_json()
    assert stats["requests"] == 60
    assert stats["maxPerSecond"] <= limit + 2 * WORKER_CHILDREN, stats
    assert all(received(twilio, d.notification.recipient.phone) == 1 for d in deliveries)
    assert set(Delivery.objects.values_list("attempts", flat=True)) == {1}


def test_after_the_guard_redis_fails_it_is_not_asked_again_for_a_while(limited):
    """Asking a dead Redis on every call would add its timeout to every send, long enough for
    a send to outlive its lease (the chaos suite's Redis restart caused a duplicate)."""
    redis_url = limited.NOTIFY_GUARD_REDIS_URL
    limited.NOTIFY_GUARD_REDIS_RETRY_SECONDS = 60
    limited.NOTIFY_CIRCUIT_BREAKER = True
    limited.NOTIFY_GUARD_REDIS_URL = "redis://127.0.0.1:9/0"  # nothing listens there
    try:
        assert guard_redis.available()
        for _ in range(5):
            ratelimit.acquire("tiny", bulk=False, max_wait=0)
        assert not guard_redis.available()
        assert not circuit.enabled()  # the breaker skips it too, and calls go through

        # Back: once the pause is over, limits apply again.
        limited.NOTIFY_GUARD_REDIS_URL = redis_url
        guard_redis.reset()
        for _ in range(3):
            ratelimit.acquire("tiny", bulk=False, max_wait=0)
        with pytest.raises(ratelimit.RateLimitWaitExceeded):
            ratelimit.acquire("tiny", bulk=False, max_wait=0)
    finally:
        guard_redis.reset()
