"""A worker's life around its messages: SIGTERM finishes what is in flight and acknowledges
nothing it has not done; a copy of a message redelivered early (the broker's visibility
timeout) finds the delivery claimed and sends nothing."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
from django.conf import settings

from channels.lanes import SMS
from config.celery import app
from devtools.fakes.twilio import FakeTwilioServer
from notifications.models import Delivery, DeliveryStatus
from notifications.services import engine
from notifications.services.enqueue import enqueue_deliveries
from preferences.models import Priority
from tests.channels import guarding
from tests.channels.guarding import SLOW_NUMBER, numbers, queued_sms, twilio_worker_env
from tests.workers import WorkerProcess, running_worker, wait_for, worker_env

twilio_server, twilio = guarding.twilio_server, guarding.twilio  # fixtures

# Our delivery id rides in each request's status callback URL; nothing listens there.
CALLBACK = "http://127.0.0.1:9/status"


def _accepted(server: FakeTwilioServer, delivery: Delivery) -> int:
    """How many times the fake accepted (201) an SMS of this delivery."""
    tag = f"deliveryId={delivery.pk}"
    return sum(
        1
        for r in server.requests
        if r.get("status") == 201 and r["form"].get("StatusCallback", "").endswith(tag)
    )


def _enqueue(*deliveries: Delivery) -> None:
    enqueue_deliveries((d.pk, "sms", Priority.TRANSACTIONAL) for d in deliveries)


def _status(delivery: Delivery) -> tuple[str, int]:
    delivery.refresh_from_db()
    return delivery.status, delivery.attempts


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_sigterm_finishes_in_flight_sends_and_leaves_the_rest_queued(
    twilio: FakeTwilioServer, order_shipped, tmp_path, broker: Any
):
    # The fake answers SLOW_NUMBER after 3 s: both worker children are busy that long.
    slow = [queued_sms(order_shipped, SLOW_NUMBER) for _ in range(2)]
    waiting = queued_sms(order_shipped, numbers(1)[0])
    env = twilio_worker_env(twilio, TWILIO_STATUS_CALLBACK_URL=CALLBACK)

    with running_worker(SMS.queue, tmp_path, **env) as worker:
        _enqueue(*slow)
        wait_for(
            lambda: len(twilio.messages_to(SLOW_NUMBER)) == 2,
            what=f"both slow sends in flight; log:\n{worker.log()}",
        )
        _enqueue(waiting)  # no free child: it waits in the broker
        # What `docker stop` does: SIGTERM to the main process only (Celery's warm shutdown).
        os.kill(worker.process.pid, signal.SIGTERM)
        assert worker.process.wait(timeout=30) == 0, worker.log()

    for delivery in slow:
        assert _status(delivery) == (DeliveryStatus.SENT, 1)
        assert _accepted(twilio, delivery) == 1
    # Not started, so not acknowledged: still in the queue, for the next worker.
    assert _status(waiting) == (DeliveryStatus.QUEUED, 0)
    assert broker.queued(SMS.queue) == 1

    # The next worker (on the same broker, not emptied) takes it from there.
    (tmp_path / "second").mkdir()
    successor = WorkerProcess("sms", worker_env(**env), tmp_path / "second")
    try:
        successor.wait_ready()
        wait_for(
            lambda: _status(waiting)[0] == DeliveryStatus.SENT,
            what=f"the waiting SMS sent; log:\n{successor.log()}",
        )
    finally:
        successor.stop()
    assert _accepted(twilio, waiting) == 1
    assert broker.queued(SMS.queue) == 0


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_copy_redelivered_while_the_first_is_sending_sends_nothing_twice(
    twilio: FakeTwilioServer, order_shipped, tmp_path
):
    if not settings.BROKER_IS_REDIS:
        pytest.skip("the visibility timeout is the Redis transport's")
    delivery = queued_sms(order_shipped, SLOW_NUMBER)
    env = twilio_worker_env(twilio, TWILIO_STATUS_CALLBACK_URL=CALLBACK, LOG_LEVEL="INFO")

    with running_worker(SMS.queue, tmp_path, **env) as worker:
        _enqueue(delivery)
        wait_for(lambda: twilio.messages_to(SLOW_NUMBER), what="the slow send in flight")
        # What Redis does once a message has been unacknowledged for visibility_timeout:
        # puts it back in its queue, where the worker's free child takes the copy.
        with app.connection_for_write() as connection:
            channel = connection.default_channel
            channel.visibility_timeout = 0
            channel.qos.restore_visible(interval=1)
        wait_for(
            lambda: "'not_claimed'" in worker.log(),
            what=f"the copy to find the delivery claimed; log:\n{worker.log()}",
        )
        wait_for(lambda: _status(delivery)[0] == DeliveryStatus.SENT, what="the first copy")

    assert _status(delivery) == (DeliveryStatus.SENT, 1)
    assert _accepted(twilio, delivery) == 1


def test_the_visibility_timeout_outlasts_every_wait_and_every_task():
    if not settings.BROKER_IS_REDIS:
        pytest.skip("the visibility timeout is the Redis transport's")
    timeout = settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]
    longest_batch = engine.batch_lease(settings.NOTIFY_DELIVERY_BATCH, in_flight=1)

    assert timeout > settings.NOTIFY_RETRY_BACKOFF_MAX  # a retry's countdown
    assert timeout > settings.NOTIFY_CIRCUIT_COOLDOWN_SECONDS  # a deferral's countdown
    assert timeout > settings.NOTIFY_LEASE_SECONDS  # the sweep's lease
    assert timeout > longest_batch  # a batch waiting out rate limits and timeouts
