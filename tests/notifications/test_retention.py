"""Retention: the batched purge of old notifications, its task, beat entry and command."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import timedelta

import psycopg2
import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.utils import timezone
from rest_framework_api_key.models import APIKey

from channels.lanes import MAINTENANCE_QUEUE, PURGE_TASK
from config.celery import app
from notifications import tasks
from notifications.models import (
    Delivery,
    DeliveryStatus,
    FailedDelivery,
    InboxMessage,
    Notification,
)
from notifications.services import retention
from preferences.models import Category, Event, Recipient

pytestmark = pytest.mark.django_db

DAYS = timedelta(days=30)


@pytest.fixture
def make_notification(db: None):
    """Builds a notification of a given age with deliveries in given statuses."""
    api_key, _ = APIKey.objects.create_key(name="retention-tests")
    event = Event.objects.create(
        key="retention_event", category=Category.objects.create(key="retention")
    )
    recipient = Recipient.objects.create(external_id="retention-user")

    def make(
        *,
        age: timedelta,
        statuses: tuple[str, ...] = (DeliveryStatus.SENT, DeliveryStatus.SENT),
        dead_letter: bool = False,
        inbox: bool = False,
    ) -> Notification:
        notification = Notification.objects.create(
            api_key=api_key, recipient=recipient, event=event, request_fingerprint="x"
        )
        Notification.objects.filter(pk=notification.pk).update(created_at=timezone.now() - age)
        channels = ("email", "inapp", "push", "sms")
        for channel, status in zip(channels, statuses, strict=False):
            delivery = Delivery.objects.create(
                notification=notification, channel=channel, status=status
            )
            if dead_letter and status == DeliveryStatus.FAILED:
                FailedDelivery.objects.create(delivery=delivery, error_class="X", attempts=3)
            if inbox and channel == "inapp":
                InboxMessage.objects.create(recipient=recipient, delivery=delivery, title="Hi")
        return notification

    return make


def _exists(notification: Notification) -> bool:
    return Notification.objects.filter(pk=notification.pk).exists()


def test_old_notifications_go_with_their_deliveries_and_dead_letters_recent_ones_stay(
    make_notification,
):
    old = make_notification(
        age=DAYS + timedelta(hours=1),
        statuses=(DeliveryStatus.FAILED, DeliveryStatus.SENT),
        dead_letter=True,
        inbox=True,
    )
    recent = make_notification(age=DAYS - timedelta(hours=1), inbox=True)
    old_delivery_ids = list(old.deliveries.values_list("pk", flat=True))

    result = retention.purge_expired_notifications(older_than=DAYS, batch=100, time_budget=60)

    assert not _exists(old)
    assert not Delivery.objects.filter(pk__in=old_delivery_ids).exists()
    assert not FailedDelivery.objects.filter(delivery_id__in=old_delivery_ids).exists()
    assert _exists(recent)
    assert recent.deliveries.count() == 2
    # The inbox is the recipient's: the old message stays, only unlinked from its delivery.
    assert InboxMessage.objects.count() == 2
    assert InboxMessage.objects.filter(delivery__isnull=True).count() == 1
    assert (result.notifications, result.deliveries) == (1, 2)
    assert (result.failed_deliveries, result.inbox_detached) == (1, 1)
    assert result.finished
    assert result.batches == 1


def test_pending_notifications_stay_even_when_old(make_notification):
    half_sent = make_notification(
        age=timedelta(days=90), statuses=(DeliveryStatus.SENT, DeliveryStatus.QUEUED)
    )
    sending = make_notification(age=timedelta(days=90), statuses=(DeliveryStatus.SENDING,))
    done = make_notification(
        age=timedelta(days=90), statuses=(DeliveryStatus.DELIVERED, DeliveryStatus.SKIPPED)
    )

    result = retention.purge_expired_notifications(older_than=DAYS, batch=100, time_budget=60)

    assert _exists(half_sent) and half_sent.deliveries.count() == 2
    assert _exists(sending) and sending.deliveries.count() == 1
    assert not _exists(done)
    assert result.notifications == 1
    assert result.finished


def test_batches_respect_the_batch_size_oldest_first(make_notification):
    old = [make_notification(age=DAYS + timedelta(days=5 - i)) for i in range(5)]
    recent = make_notification(age=timedelta(days=1))

    first = retention.purge_expired_notifications(older_than=DAYS, batch=2, time_budget=0)

    assert (first.batches, first.notifications, first.deliveries) == (1, 2, 4)
    assert not first.finished
    assert [_exists(n) for n in old] == [False, False, True, True, True]

    rest = retention.purge_expired_notifications(older_than=DAYS, batch=2, time_budget=60)

    # 3 left in batches of 2: a full batch, then a short one that shows nothing is left.
    assert (rest.batches, rest.notifications, rest.deliveries) == (2, 3, 6)
    assert rest.finished
    assert not any(_exists(n) for n in old)
    assert _exists(recent)


def test_a_time_budget_of_zero_runs_one_batch(make_notification):
    for _ in range(5):
        make_notification(age=timedelta(days=40))

    result = retention.purge_expired_notifications(older_than=DAYS, batch=2, time_budget=0)

    assert (result.batches, result.notifications) == (1, 2)
    assert Notification.objects.count() == 3
    assert result.longest_batch_seconds <= result.seconds


def test_nothing_expired_is_one_empty_batch(make_notification):
    make_notification(age=timedelta(days=1))

    result = retention.purge_expired_notifications(older_than=DAYS, batch=10, time_budget=60)

    assert (result.batches, result.notifications, result.finished) == (1, 0, True)


def test_a_zero_or_negative_period_is_refused_not_taken_as_everything():
    with pytest.raises(ValueError, match="positive"):
        retention.purge_expired_notifications(older_than=timedelta(0))


def test_the_task_uses_the_retention_setting(make_notification, settings):
    old = make_notification(age=timedelta(days=8))
    recent = make_notification(age=timedelta(days=6))
    settings.NOTIFY_RETENTION_DAYS = 7

    assert tasks.purge_expired_notifications() == 1

    assert not _exists(old) and _exists(recent)


def test_zero_days_keeps_everything(make_notification, settings):
    ancient = make_notification(age=timedelta(days=3650))
    settings.NOTIFY_RETENTION_DAYS = 0

    assert retention.retention_period() is None
    assert tasks.purge_expired_notifications() == 0
    out = io.StringIO()
    call_command("purge_notifications", stdout=out)
    call_command("purge_notifications", "--days", "0", stdout=out)

    assert "Retention is off" in out.getvalue()
    assert _exists(ancient)
    assert ancient.deliveries.count() == 2


def test_the_command_dry_run_deletes_nothing_and_counts(make_notification):
    old = make_notification(age=timedelta(days=40))
    pending = make_notification(age=timedelta(days=40), statuses=(DeliveryStatus.QUEUED,))
    make_notification(age=timedelta(days=1))

    out = io.StringIO()
    call_command("purge_notifications", "--days", "30", "--dry-run", stdout=out)

    assert "1 notifications older than 30 days would be deleted" in out.getvalue()
    assert "1 more are kept while a delivery is pending" in out.getvalue()
    assert Notification.objects.count() == 3

    call_command("purge_notifications", "--days", "30", stdout=out)

    assert "1 notifications, 2 deliveries and 0 dead letters deleted" in out.getvalue()
    assert not _exists(old) and _exists(pending)
    assert Notification.objects.count() == 2


def test_the_task_runs_on_the_maintenance_queue_from_beat():
    name = PURGE_TASK

    assert name in app.tasks
    assert app.amqp.router.route({}, name)["queue"].name == MAINTENANCE_QUEUE
    entries = [e for e in settings.CELERY_BEAT_SCHEDULE.values() if e["task"] == name]
    assert len(entries) == 1
    assert entries[0]["schedule"] == float(settings.NOTIFY_RETENTION_INTERVAL_SECONDS)


def test_every_foreign_key_to_the_log_is_handled_by_the_purge():
    """A new table pointing at a notification or a delivery must be added to the purge, or
    the purge's DELETE fails its foreign-key check at commit."""
    pointing = {
        (f"{rel.related_model._meta.app_label}.{rel.related_model.__name__}", rel.field.name)
        for model in (Notification, Delivery)
        for rel in model._meta.related_objects
    }
    assert pointing == set(retention.HANDLED_RELATIONS)


def test_the_candidate_query_can_walk_the_notification_recent_index():
    """The purge reads oldest first with the (created_at DESC, id DESC) index backwards. On a
    tiny table the planner prefers to scan and sort, so scans and sorts are switched off to
    see whether the index fits the query at all (the plan on 200,000 rows: docs/sizing.md)."""
    with connection.cursor() as cursor:
        for plan_kind in ("seqscan", "bitmapscan", "sort"):
            cursor.execute(f"SET LOCAL enable_{plan_kind} = off")
        cursor.execute(
            "EXPLAIN " + retention.CANDIDATES_SQL,
            [timezone.now(), ["queued", "sending"], 5000],
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())

    assert "Index Scan Backward using notification_recent" in plan
    assert "Sort" not in plan


@pytest.fixture
def other_connection() -> Iterator[psycopg2.extensions.connection]:
    db = connection.settings_dict
    conn = psycopg2.connect(
        dbname=db["NAME"], user=db["USER"], host=db["HOST"], port=db["PORT"] or 5432
    )
    try:
        yield conn
    finally:
        conn.rollback()
        conn.close()


@pytest.mark.django_db(transaction=True)
def test_a_delivery_locked_by_a_worker_leaves_its_notification_for_a_later_run(
    make_notification, other_connection
):
    busy = make_notification(age=timedelta(days=40))
    idle = make_notification(age=timedelta(days=40))
    with other_connection.cursor() as cursor:  # a receipt updating one delivery, say
        cursor.execute(
            "SELECT id FROM notifications_delivery WHERE notification_id = %s "
            "AND channel = 'inapp' FOR UPDATE",
            [str(busy.pk)],
        )

        result = retention.purge_expired_notifications(older_than=DAYS, batch=10, time_budget=60)

    assert (result.notifications, result.deliveries) == (1, 2)
    assert _exists(busy) and busy.deliveries.count() == 2
    assert not _exists(idle)

    other_connection.rollback()
    again = retention.purge_expired_notifications(older_than=DAYS, batch=10, time_budget=60)

    assert again.notifications == 1
    assert not _exists(busy)


@pytest.mark.django_db(transaction=True)
def test_a_dead_letter_held_by_a_replay_leaves_its_notification_alone(
    make_notification, other_connection
):
    replayed = make_notification(
        age=timedelta(days=40), statuses=(DeliveryStatus.FAILED,), dead_letter=True
    )
    with other_connection.cursor() as cursor:  # failed_deliveries_replay locks it first
        cursor.execute("SELECT id FROM notifications_faileddelivery FOR UPDATE")

        result = retention.purge_expired_notifications(older_than=DAYS, batch=10, time_budget=60)

    assert (result.notifications, result.failed_deliveries) == (0, 0)
    assert _exists(replayed) and FailedDelivery.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_an_inbox_row_locked_too_long_rolls_the_batch_back_and_ends_the_run(
    make_notification, other_connection, monkeypatch
):
    monkeypatch.setattr(retention, "_LOCK_TIMEOUT", "100ms")
    old = make_notification(age=timedelta(days=40), inbox=True)
    with other_connection.cursor() as cursor:  # the recipient marking it read, say
        cursor.execute("SELECT id FROM notifications_inboxmessage FOR UPDATE")

        result = retention.purge_expired_notifications(older_than=DAYS, batch=10, time_budget=60)

    assert result.stopped_by == "lock_timeout"
    assert (result.notifications, result.batches, result.finished) == (0, 0, False)
    assert _exists(old) and old.deliveries.count() == 2
    assert InboxMessage.objects.get().delivery is not None
