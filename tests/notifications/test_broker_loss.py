"""The broker loses its messages (a Redis flush or empty restart, RabbitMQ's queues gone): the
broker watch notices within seconds and re-enqueues what was queued, instead of leaving it to
the lease (5 minutes; an hour for a broadcast)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.conf import settings
from django.utils import timezone

from channels.lanes import INAPP, MAINTENANCE_QUEUE
from config.celery import app
from notifications.models import (
    BrokerCanary,
    BrokerLoss,
    Delivery,
    DeliveryStatus,
    InboxMessage,
)
from notifications.services import broker_watch
from notifications.services.broker_watch import CANARY, Reading, loss_of
from preferences.models import Priority
from tests.conftest import Broker
from tests.factories import DeliveryFactory, NotificationFactory, RecipientFactory
from tests.notifications import broadcasting
from tests.notifications.broadcasting import fan_out, start_broadcast, topic_with
from tests.workers import (
    BeatProcess,
    lose_broker_messages,
    running_workers,
    wait_for,
    worker_env,
)

pytestmark = pytest.mark.django_db(transaction=True)

news = broadcasting.news  # the fixture, shared by the broadcast tests
redis_only = pytest.mark.skipif(not settings.BROKER_IS_REDIS, reason="Redis' canary and run id")

# --- the judgement ------------------------------------------------------------------------

ARMED = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
MARGIN = 60.0


def _state(token: str = "t1", server_id: str = "run-a") -> BrokerCanary:
    return BrokerCanary(token=token, armed_at=ARMED, server_id=server_id)


@pytest.mark.parametrize(
    ("state", "reading", "since"),
    [
        # Flushed, recreated or restarted empty: everything queued may be gone.
        (_state(), Reading(present=False, server_id="run-a"), None),
        (_state(), Reading(present=False), None),  # RabbitMQ
        # Restored from a snapshot holding an older token: what came after it.
        (
            _state(),
            Reading(present=True, token="t0", written_at=ARMED - timedelta(minutes=5)),
            ARMED - timedelta(minutes=5, seconds=MARGIN),
        ),
        # Restarted from its append-only file: at most its last writes, after our token.
        (
            _state(),
            Reading(present=True, token="t1", written_at=ARMED, server_id="run-b"),
            ARMED - timedelta(seconds=MARGIN),
        ),
    ],
    ids=["vanished", "vanished-rabbitmq", "older-token", "new-run-id"],
)
def test_a_lost_or_rolled_back_canary_is_a_loss_since_what_it_proves(
    state: BrokerCanary, reading: Reading, since: datetime | None
) -> None:
    found = loss_of(state, reading, margin=MARGIN)
    assert found is not None
    assert found[1] == since


@pytest.mark.parametrize(
    ("state", "reading"),
    [
        (_state(), Reading(present=True, token="t1", written_at=ARMED, server_id="run-a")),
        (_state(server_id=""), Reading(present=True)),  # RabbitMQ: there, nothing more to know
        (_state(token=""), Reading(present=False)),  # the first check ever only arms it
    ],
    ids=["same", "rabbitmq-present", "first-check"],
)
def test_a_canary_as_left_is_no_loss(state: BrokerCanary, reading: Reading) -> None:
    assert loss_of(state, reading, margin=MARGIN) is None


# --- the check against the real broker ----------------------------------------------------


def test_the_watch_arms_then_sees_nothing_lost_on_a_healthy_broker(broker: Broker) -> None:
    assert broker_watch.broker_check() is None  # arms
    first = BrokerCanary.objects.get()
    assert first.token
    assert broker_watch.broker_check() is None
    assert broker_watch.broker_check() is None
    assert BrokerCanary.objects.get().armed_at > first.armed_at  # re-armed each check
    assert not BrokerLoss.objects.exists()


def test_lost_broker_messages_are_detected_at_the_next_check(broker: Broker) -> None:
    broker_watch.broker_check()
    lose_broker_messages()

    loss = broker_watch.broker_check()

    assert loss is not None and loss.since is None  # everything queued
    assert "vanished" in loss.cause
    assert broker_watch.broker_check() is None  # re-armed: one loss, detected once


def _redis() -> Any:
    with app.connection_for_write() as conn:
        return conn.default_channel.client


@redis_only
def test_redis_restored_from_an_older_snapshot_is_a_loss_since_that_snapshot(
    broker: Broker,
) -> None:
    broker_watch.broker_check()
    snapshot = _redis().get(CANARY)
    broker_watch.broker_check()
    _redis().set(CANARY, snapshot)  # what a restart from the earlier snapshot holds

    loss = broker_watch.broker_check()

    assert loss is not None and loss.since is not None
    written = datetime.fromisoformat(json.loads(snapshot)["at"])
    assert loss.since == written - timedelta(seconds=settings.NOTIFY_BROKER_LOSS_MARGIN_SECONDS)


@redis_only
def test_a_redis_restart_that_kept_its_data_is_a_loss_of_its_last_writes_only(
    broker: Broker,
) -> None:
    broker_watch.broker_check()
    # The run id the watch saw before: another server's (the restart, seen from our side).
    BrokerCanary.objects.update(server_id="a-previous-run")
    armed_at = BrokerCanary.objects.get().armed_at

    loss = broker_watch.broker_check()

    assert loss is not None
    assert loss.since == armed_at - timedelta(seconds=settings.NOTIFY_BROKER_LOSS_MARGIN_SECONDS)


# --- re-enqueueing what a loss may have cost ----------------------------------------------


def _queued(minutes_ago: float, *, priority: str = Priority.TRANSACTIONAL, **kwargs: Any) -> int:
    delivery = DeliveryFactory(
        notification=NotificationFactory(priority=priority),
        channel="inapp",
        queued_at=timezone.now() - timedelta(minutes=minutes_ago),
        **kwargs,
    )
    return int(delivery.pk)


def _published(broker: Broker, queue: str) -> list[int]:
    """The delivery ids the queue's messages name, a batch task's all of them."""
    ids: list[int] = []
    for message in broker.messages(queue):
        (arg,) = message["body"][0]
        ids += arg if isinstance(arg, list) else [arg]
    return ids


def test_a_loss_republishes_queued_deliveries_newest_first_in_pages_and_batches(
    broker: Broker, settings: Any
) -> None:
    settings.NOTIFY_SWEEP_BATCH = 2
    settings.NOTIFY_DELIVERY_BATCH = 2
    old_otp = _queued(90)
    otp = _queued(1)
    bulk = [_queued(30 + i, priority=Priority.BULK) for i in range(3)]
    _queued(2, status=DeliveryStatus.SENT)  # done: nothing to publish
    _queued(3, status=DeliveryStatus.SENDING)  # its worker holds it: the lease's to rescue
    loss = BrokerLoss.objects.create(detected_at=timezone.now(), cause="test")
    _queued(-1)  # queued after the loss was detected: published to the new broker already

    requeued, more = broker_watch.broker_recover(time_budget=0)  # one page
    assert (requeued, more) == (2, True)
    assert _published(broker, INAPP.queue) == [otp]
    assert _published(broker, INAPP.bulk_queue) == [bulk[0]]

    assert broker_watch.broker_recover(time_budget=60) == (3, False)
    assert sorted(_published(broker, INAPP.queue)) == sorted([otp, old_otp])
    assert sorted(_published(broker, INAPP.bulk_queue)) == sorted(bulk)
    # Bulk ones travel in batch tasks, as their fan-out published them.
    assert {m["headers"]["task"] for m in broker.messages(INAPP.bulk_queue)} == {INAPP.batch_task}
    loss.refresh_from_db()
    assert loss.finished_at is not None and loss.requeued == 5


def test_a_loss_of_the_last_writes_republishes_only_those(broker: Broker) -> None:
    _queued(120, priority=Priority.BULK)  # a healthy backlog the broker kept
    recent = _queued(1)
    BrokerLoss.objects.create(
        detected_at=timezone.now(), cause="test", since=timezone.now() - timedelta(minutes=5)
    )

    assert broker_watch.broker_recover(time_budget=60) == (1, False)
    assert _published(broker, INAPP.queue) == [recent]
    assert broker.queued(INAPP.bulk_queue) == 0


def test_a_total_loss_supersedes_a_partial_one_still_being_worked_off(broker: Broker) -> None:
    broker_watch.broker_check()
    partial = BrokerLoss.objects.create(
        detected_at=timezone.now(), cause="test", since=timezone.now() - timedelta(minutes=5)
    )
    lose_broker_messages()

    total = broker_watch.broker_check()

    partial.refresh_from_db()
    assert total is not None and partial.finished_at is not None


# --- end to end: real workers, beat, a broker that lost everything -----------------------


@pytest.mark.integration
def test_deliveries_lost_with_the_broker_go_out_within_seconds_not_a_lease(
    api_client: Any, order_shipped: Any, news: Any, broker: Broker, tmp_path: Any
) -> None:
    env = worker_env(NOTIFY_BROKER_WATCH_SECONDS="2")
    beat = BeatProcess(env, tmp_path)
    try:
        with running_workers([MAINTENANCE_QUEUE], tmp_path, NOTIFY_BROKER_WATCH_SECONDS="2"):
            wait_for(
                lambda: BrokerCanary.objects.exclude(token="").exists(),
                timeout=60,
                what=f"the broker watch to arm its canary\n{beat.log()}",
            )
        # Nothing consumes the lanes now: the messages wait in the broker, as a backlog does.
        recipients = [RecipientFactory() for _ in range(3)]
        accepted = []
        for recipient in recipients:
            body = {"userId": recipient.external_id, "event": "order_shipped"}
            response = api_client.post(
                "/api/notify", {**body, "channels": ["inapp"]}, format="json"
            )
            assert response.status_code == 202, response.content
            accepted.append(response.json()["id"])
        broadcast = start_broadcast(
            news, {"topic": topic_with("all", recipients).key}, channels=["inapp"]
        )
        fan_out(broadcast)
        pending = Delivery.objects.filter(status=DeliveryStatus.QUEUED)
        assert pending.count() == 6
        assert broker.queued(INAPP.queue) == 3 and broker.queued(INAPP.bulk_queue) == 1
        lease_left = min(d.lease_until for d in pending) - timezone.now()
        assert lease_left > timedelta(minutes=4)  # the lease would keep them for minutes

        lose_broker_messages()
        assert broker.queued(INAPP.queue) == broker.queued(INAPP.bulk_queue) == 0

        with running_workers(
            [MAINTENANCE_QUEUE, INAPP.worker_queues], tmp_path, NOTIFY_BROKER_WATCH_SECONDS="2"
        ):
            # Well under the 300 s lease: only the watch can make this deadline.
            wait_for(
                lambda: not Delivery.objects.filter(status=DeliveryStatus.QUEUED).exists(),
                timeout=60,
                interval=0.25,
                what="every lost delivery sent again",
            )
    finally:
        beat.stop()
    assert set(Delivery.objects.values_list("status", flat=True)) == {DeliveryStatus.SENT}
    assert InboxMessage.objects.count() == 6  # each once
    loss = BrokerLoss.objects.get()
    assert loss.since is None and loss.requeued == 6
