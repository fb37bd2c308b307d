"""A broadcast of millions: cancelling skips it a chunk per transaction (the request does only
the first), and progress polls share one count instead of each reading every delivery."""

from __future__ import annotations

import ast
from datetime import timedelta

import pytest
from django.utils import timezone

from channels.lanes import MAINTENANCE_QUEUE, SKIP_CANCELLED_TASK
from notifications.models import Broadcast, Delivery, DeliveryStatus, Notification
from notifications.services import broadcasts, transitions
from notifications.tasks import skip_cancelled_deliveries
from tests.factories import RecipientFactory
from tests.notifications import broadcasting
from tests.notifications.broadcasting import fan_out, start_broadcast

news = broadcasting.news  # the fixture, shared by the broadcast tests
pytestmark = pytest.mark.django_db


def _queued_broadcast(news, recipients: int) -> str:
    for _ in range(recipients):
        RecipientFactory()
    broadcast_id = start_broadcast(news, {"all": True}, channels=["email"])
    fan_out(broadcast_id)
    return str(broadcast_id)


def _statuses(broadcast_id: str) -> dict[str, int]:
    deliveries = Delivery.objects.filter(notification__broadcast_id=broadcast_id)
    return {
        status: deliveries.filter(status=status).count()
        for status in ("queued", "skipped", "sending")
    }


def test_cancel_skips_one_chunk_in_the_request_and_hands_the_rest_to_a_task(
    api_client, news, settings, broker, django_capture_on_commit_callbacks
):
    settings.NOTIFY_BROADCAST_CANCEL_CHUNK = 2
    broadcast_id = _queued_broadcast(news, 5)
    deliveries = Delivery.objects.filter(notification__broadcast_id=broadcast_id)
    busy = deliveries.order_by("-notification__recipient_id").first()
    transitions.claim(busy.pk)  # a batch is sending the last one: it finishes

    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.post(f"/api/broadcasts/{broadcast_id}/cancel")

    assert response.status_code == 200
    assert response.json()["deliveries"]["skippedByReason"] == {"cancelled": 2}
    assert _statuses(broadcast_id) == {"queued": 2, "skipped": 2, "sending": 1}
    (task,) = broker.messages(MAINTENANCE_QUEUE)
    assert task["headers"]["task"] == SKIP_CANCELLED_TASK
    # It goes on after the page the request did: the second recipient's.
    second = sorted(deliveries.values_list("notification__recipient_id", flat=True))[1]
    assert task["headers"]["argsrepr"] == repr((broadcast_id, second))

    assert skip_cancelled_deliveries.apply(args=(broadcast_id, second)).get() == 2
    assert _statuses(broadcast_id) == {"queued": 0, "skipped": 4, "sending": 1}
    skipped = Delivery.objects.filter(notification__broadcast_id=broadcast_id, status="skipped")
    assert set(skipped.values_list("reason", flat=True)) == {"cancelled"}


def test_a_small_broadcast_is_cancelled_whole_in_the_request(
    api_client, news, broker, django_capture_on_commit_callbacks
):
    broadcast_id = _queued_broadcast(news, 3)

    with django_capture_on_commit_callbacks(execute=True):
        api_client.post(f"/api/broadcasts/{broadcast_id}/cancel")

    assert _statuses(broadcast_id) == {"queued": 0, "skipped": 3, "sending": 0}
    assert broker.queued(MAINTENANCE_QUEUE) == 0


def test_the_skip_task_hands_over_to_a_next_run_when_its_time_is_spent(news, settings, broker):
    settings.NOTIFY_BROADCAST_CANCEL_CHUNK = 2
    settings.NOTIFY_BROADCAST_CANCEL_TIME_BUDGET_SECONDS = 0
    broadcast_id = _queued_broadcast(news, 5)
    Broadcast.objects.filter(pk=broadcast_id).update(status=Broadcast.Status.CANCELLED)

    assert skip_cancelled_deliveries.apply(args=(broadcast_id,)).get() == 2

    assert _statuses(broadcast_id)["queued"] == 3
    (task,) = broker.messages(MAINTENANCE_QUEUE)
    assert task["headers"]["task"] == SKIP_CANCELLED_TASK
    # The next run starts after the page this one did, not from the beginning.
    (_, cursor) = ast.literal_eval(task["headers"]["argsrepr"])
    settings.NOTIFY_BROADCAST_CANCEL_TIME_BUDGET_SECONDS = 60
    assert skip_cancelled_deliveries.apply(args=(broadcast_id, cursor)).get() == 3
    assert _statuses(broadcast_id)["queued"] == 0


def test_pages_are_counted_in_notifications_and_erased_recipients_are_skipped_too(news, settings):
    settings.NOTIFY_BROADCAST_CANCEL_CHUNK = 4  # two channels: 2 notifications a page
    for _ in range(3):
        RecipientFactory()
    broadcast_id = start_broadcast(news, {"all": True}, channels=["email", "inapp"])
    fan_out(broadcast_id)
    erased = Notification.objects.filter(broadcast_id=broadcast_id).order_by("recipient_id")[0]
    Notification.objects.filter(pk=erased.pk).update(recipient=None)  # erased since
    Broadcast.objects.filter(pk=broadcast_id).update(status=Broadcast.Status.CANCELLED)

    moved, cursor = broadcasts.skip_cancelled_page(broadcast_id=broadcast_id, after_recipient=0)
    assert moved == 4 and cursor is not None

    assert broadcasts.skip_cancelled_rest(
        broadcast_id=broadcast_id, after_recipient=cursor, time_budget=60
    ) == (2, None)
    assert _statuses(str(broadcast_id)) == {"queued": 0, "skipped": 6, "sending": 0}


def test_polls_share_one_count_until_it_is_old_enough(api_client, news, settings):
    settings.NOTIFY_BROADCAST_PROGRESS_MIN_AGE_SECONDS = 60
    broadcast_id = _queued_broadcast(news, 3)
    first = api_client.get(f"/api/broadcasts/{broadcast_id}").json()
    assert first["deliveries"]["queued"] == 3
    one = Delivery.objects.filter(notification__broadcast_id=broadcast_id).first()
    transitions.claim(one.pk)

    again = api_client.get(f"/api/broadcasts/{broadcast_id}").json()

    assert again["deliveries"] == first["deliveries"]
    assert again["countedAt"] == first["countedAt"]
    # Once the count is older than its age, the next poll counts again.
    Broadcast.objects.filter(pk=broadcast_id).update(
        progress_counted_at=timezone.now() - timedelta(seconds=61)
    )
    fresh = api_client.get(f"/api/broadcasts/{broadcast_id}").json()
    assert (fresh["deliveries"]["queued"], fresh["deliveries"]["sending"]) == (2, 1)
    assert fresh["countedAt"] > first["countedAt"]


def test_a_slow_count_is_shared_for_longer(news, settings):
    settings.NOTIFY_BROADCAST_PROGRESS_MIN_AGE_SECONDS = 1
    settings.NOTIFY_BROADCAST_PROGRESS_RECOUNT_FACTOR = 20
    broadcast_id = _queued_broadcast(news, 2)
    counted_at = timezone.now() - timedelta(seconds=100)
    stale = {"total": 99}
    # A count that took 10 s is shared for 200 s: 100 s after it, polls still get it.
    Broadcast.objects.filter(pk=broadcast_id).update(
        progress=stale, progress_counted_at=counted_at, progress_count_seconds=10.0
    )

    counts, at = broadcasts.broadcast_progress(broadcast=Broadcast.objects.get(pk=broadcast_id))
    assert (counts, at) == (stale, counted_at)

    Broadcast.objects.filter(pk=broadcast_id).update(progress_count_seconds=4.0)  # 80 s
    counts, at = broadcasts.broadcast_progress(broadcast=Broadcast.objects.get(pk=broadcast_id))
    assert counts["total"] == 2 and counts[DeliveryStatus.QUEUED] == 2 and at > counted_at
