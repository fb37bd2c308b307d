"""What must hold on either broker (Redis, RabbitMQ with classic or quorum queues)."""

from __future__ import annotations

import pytest
from celery.app.task import Context
from django.conf import settings

from channels.lanes import EMAIL, MAINTENANCE_QUEUE, PUSH
from config.celery import app
from notifications.services.outcomes import retry_countdown
from notifications.tasks import deliver_email, deliver_push

DELAYED = "0." * 27 + "1."  # RabbitMQ native delayed delivery's prefix: 28 bits of delay, here 1 s


def _request(routing_key: str | None) -> Context:
    delivery_info = None if routing_key is None else {"exchange": "x", "routing_key": routing_key}
    return Context(id="t", args=(7,), kwargs={}, retries=0, delivery_info=delivery_info)


@pytest.mark.parametrize(
    ("routing_key", "lane"),
    [
        (EMAIL.bulk_queue, EMAIL.bulk_queue),
        (EMAIL.queue, EMAIL.queue),
        (DELAYED + EMAIL.bulk_queue, EMAIL.bulk_queue),  # after a countdown on quorum queues
        (DELAYED + EMAIL.queue, EMAIL.queue),
    ],
)
def test_a_retry_stays_in_the_lane_it_came_from(routing_key, lane):
    retry = deliver_email.signature_from_request(_request(routing_key), countdown=5)

    assert retry.options["queue"] == lane
    # What Celery publishes: the lane's queue, whatever the task's route says.
    options = app.amqp.router.route(dict(retry.options), deliver_email.name)
    assert options["queue"].name == lane


def test_a_retry_without_a_lane_falls_back_to_the_tasks_route():
    retry = deliver_push.signature_from_request(_request(None), countdown=5)

    assert "queue" not in retry.options
    assert app.amqp.router.route(dict(retry.options), deliver_push.name)["queue"].name == PUSH.queue


@pytest.mark.parametrize(("seconds", "whole"), [(0.5, 1), (1.0, 1), (29.2, 30), (0.0, 0)])
def test_provider_retry_after_becomes_whole_seconds(seconds, whole):
    # Quorum queues' delayed delivery refuses a countdown under one second (ValueError).
    assert retry_countdown(attempts=1, retry_after=seconds) == whole


def test_each_transport_gets_only_its_own_options():
    options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    if settings.BROKER_IS_REDIS:
        assert set(options) == {"queue_order_strategy", "visibility_timeout"}
    elif settings.BROKER_IS_AMQP:
        assert "queue_order_strategy" not in options and "visibility_timeout" not in options
        declared = {queue.name for queue in settings.CELERY_TASK_QUEUES}
        assert declared == set(settings.NOTIFY_QUEUES)
        assert {EMAIL.queue, EMAIL.bulk_queue, MAINTENANCE_QUEUE} <= declared
