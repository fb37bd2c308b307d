"""Fan-out of broadcasts: keyset pages, exactly-once rows, the accept path's decisions, cost."""

from __future__ import annotations

import os
import threading
import uuid
from collections import Counter

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from channels.base import Channel
from channels.lanes import EMAIL, FANOUT_TASK, INAPP, MAINTENANCE_QUEUE
from notifications.models import Broadcast, Delivery, InboxMessage, Notification, Template
from notifications.services import broadcasts, fanout, fanout_plan
from notifications.services.fanout import PageOutcome
from preferences.models import Suppression
from tests.factories import (
    CategoryFactory,
    DeviceFactory,
    EventFactory,
    PreferenceFactory,
    RecipientFactory,
    TemplateFactory,
)
from tests.notifications import broadcasting
from tests.notifications.broadcasting import (
    broadcast_row,
    fan_out,
    start_broadcast,
    topic_with,
)
from tests.workers import WorkerProcess, purge_broker, wait_for

news = broadcasting.news  # the fixture, shared by the broadcast tests
pytestmark = pytest.mark.django_db

MORE, DONE, STOPPED = PageOutcome.MORE, PageOutcome.DONE, PageOutcome.STOPPED


@pytest.fixture
def small_pages(settings):
    """Pages of 3 in one chain: the page sequences below are one segment's."""
    settings.NOTIFY_FANOUT_PAGE = 3
    settings.NOTIFY_FANOUT_CHAINS = 1
    return settings


def _by_recipient(broadcast_id) -> Counter[int]:
    return Counter(
        Notification.objects.filter(broadcast_id=broadcast_id).values_list(
            "recipient_id", flat=True
        )
    )


def test_every_subscriber_gets_exactly_one_notification_over_several_pages(news, small_pages):
    subscribers = [RecipientFactory() for _ in range(10)]
    RecipientFactory()  # not subscribed
    topic_with("news", subscribers)
    broadcast_id = start_broadcast(news, {"topic": "news"})

    assert fan_out(broadcast_id) == [MORE, MORE, MORE, DONE]  # 3 + 3 + 3 + 1

    assert _by_recipient(broadcast_id) == Counter(r.pk for r in subscribers)
    notifications = Notification.objects.filter(broadcast_id=broadcast_id)
    assert {n.priority for n in notifications} == {"bulk"}
    assert {n.external_user_id for n in notifications} == {r.external_id for r in subscribers}
    assert notifications.first().data == {"headline": "Dark mode"}
    deliveries = Delivery.objects.filter(notification__broadcast_id=broadcast_id)
    assert Counter(deliveries.values_list("channel", "status")) == {
        ("email", "queued"): 10,
        ("inapp", "queued"): 10,
    }
    email = deliveries.filter(channel="email").first()
    assert email.content["subject"] == "News: Dark mode"
    assert email.lease_until is not None and email.queued_at is not None
    assert [entry["status"] for entry in email.history] == ["queued"]
    broadcast = broadcast_row(broadcast_id)
    assert broadcast.status == Broadcast.Status.FANNED_OUT
    assert broadcast.recipients_total == 10
    assert broadcast.fanout_cursors == [fanout.BIGINT_MAX]  # its one segment ended
    assert broadcast.fanned_out_at is not None


def test_an_audience_that_fills_the_last_page_ends_with_an_empty_page(news, small_pages):
    topic_with("news", [RecipientFactory() for _ in range(6)])
    broadcast_id = start_broadcast(news, {"topic": "news"})

    assert fan_out(broadcast_id) == [MORE, MORE, DONE]
    assert broadcast_row(broadcast_id).recipients_total == 6


def test_user_id_and_everyone_audiences(news, small_pages):
    everyone = [RecipientFactory() for _ in range(5)]
    listed = [everyone[4].external_id, "ghost", everyone[0].external_id, everyone[2].external_id]

    by_list = start_broadcast(news, {"userIds": listed})
    to_all = start_broadcast(news, {"all": True})
    fan_out(by_list), fan_out(to_all)

    assert _by_recipient(by_list) == Counter([everyone[0].pk, everyone[2].pk, everyone[4].pk])
    assert _by_recipient(to_all) == Counter(r.pk for r in everyone)
    assert broadcast_row(by_list).recipients_total == 3  # the unknown userId is no recipient


def test_skips_carry_the_accept_paths_reasons(news, settings):
    settings.NOTIFY_PROVIDERS = {
        **settings.NOTIFY_PROVIDERS,
        "push": "channels.providers.push.PushProvider",
    }
    settings.NOTIFY_PUSH_SENDERS = {"apns": "channels.providers.apns.APNsSender", "fcm": ""}
    ok = RecipientFactory(external_id="ok")
    DeviceFactory(recipient=ok, platform="apns")
    email_off = RecipientFactory(external_id="email-off")
    PreferenceFactory(recipient=email_off, channel="email", enabled=False)
    marketing_off = RecipientFactory(external_id="marketing-off")
    PreferenceFactory(recipient=marketing_off, category=news.category, enabled=False)
    other_category_off = RecipientFactory(external_id="orders-off")
    PreferenceFactory(recipient=other_category_off, category=CategoryFactory(key="orders"))
    bounced = RecipientFactory(external_id="bounced", email="Bounced@Example.com")
    Suppression.objects.create(channel="email", address="bounced@example.com", reason="hard_bounce")
    no_email = RecipientFactory(external_id="no-email", email=None)
    fcm_only = RecipientFactory(external_id="fcm-only")  # FCM is not configured here
    DeviceFactory(recipient=fcm_only, platform="fcm")
    dead_device = RecipientFactory(external_id="dead-device")
    DeviceFactory(recipient=dead_device, platform="apns", active=False)
    users = [ok, email_off, marketing_off, other_category_off, bounced, no_email, fcm_only]
    topic_with("news", [*users, dead_device])
    broadcast_id = start_broadcast(news, {"topic": "news"}, channels=["email", "push", "sms"])

    fan_out(broadcast_id)

    outcome = {
        (d.notification.external_user_id, d.channel): d.reason or d.status
        for d in Delivery.objects.filter(notification__broadcast_id=broadcast_id).select_related(
            "notification"
        )
    }
    sms_off = "channel_not_configured"
    assert outcome == {
        ("ok", "email"): "queued",
        ("ok", "push"): "queued",
        ("ok", "sms"): sms_off,
        ("email-off", "email"): "opted_out",
        ("email-off", "push"): "no_device",
        ("email-off", "sms"): sms_off,
        ("marketing-off", "email"): "opted_out",
        ("marketing-off", "push"): "opted_out",
        ("marketing-off", "sms"): sms_off,
        ("orders-off", "email"): "queued",
        ("orders-off", "push"): "no_device",
        ("orders-off", "sms"): sms_off,
        ("bounced", "email"): "suppressed",
        ("bounced", "push"): "no_device",
        ("bounced", "sms"): sms_off,
        ("no-email", "email"): "no_email",
        ("no-email", "push"): "no_device",
        ("no-email", "sms"): sms_off,
        ("fcm-only", "email"): "queued",
        ("fcm-only", "push"): "no_device",
        ("fcm-only", "sms"): sms_off,
        ("dead-device", "email"): "queued",
        ("dead-device", "push"): "no_device",
        ("dead-device", "sms"): sms_off,
    }
    skipped = Delivery.objects.filter(notification__broadcast_id=broadcast_id, status="skipped")
    assert all(d.skipped_at and d.history[0]["reason"] == d.reason for d in skipped)


def test_critical_categories_ignore_opt_outs_in_a_broadcast(db):
    event = EventFactory(
        key="security_notice", category=CategoryFactory(key="security", critical=True)
    )
    TemplateFactory(event=event, channel="email", subject="Notice", body="Body")
    opted_out = RecipientFactory()
    PreferenceFactory(recipient=opted_out, enabled=False)
    broadcast_id = start_broadcast(event, {"all": True}, channels=["email"])

    fan_out(broadcast_id)

    assert Delivery.objects.get(notification__recipient=opted_out).status == "queued"


def test_a_page_run_again_creates_nothing_twice(news, small_pages):
    topic_with("news", [RecipientFactory() for _ in range(5)])
    broadcast_id = start_broadcast(news, {"topic": "news"})
    fan_out(broadcast_id)
    before = Delivery.objects.count(), Notification.objects.count()

    # A finished fan-out redelivered: nothing to do.
    assert fanout.broadcast_fanout_page(broadcast_id=broadcast_id) == STOPPED
    # Even rewound to the start, the unique (broadcast, recipient) index refuses every row.
    Broadcast.objects.filter(pk=broadcast_id).update(fanout_cursors=[0], status="fanning_out")
    assert fan_out(broadcast_id) == [MORE, DONE]

    assert (Delivery.objects.count(), Notification.objects.count()) == before
    assert broadcast_row(broadcast_id).recipients_total == 5


def test_a_run_that_lost_the_race_for_its_page_writes_nothing(news, small_pages, monkeypatch):
    topic_with("news", [RecipientFactory() for _ in range(5)])
    broadcast_id = start_broadcast(news, {"topic": "news"})
    real_advance = fanout._advance

    def another_run_advanced_first(*args, **kwargs):
        # As if a twin task committed this very page while we were rendering it.
        Broadcast.objects.filter(pk=broadcast_id).update(fanout_cursors=[10**9])
        return real_advance(*args, **kwargs)

    monkeypatch.setattr(fanout, "_advance", another_run_advanced_first)
    assert fanout.broadcast_fanout_page(broadcast_id=broadcast_id) == STOPPED

    assert not Notification.objects.filter(broadcast_id=broadcast_id).exists()
    assert broadcast_row(broadcast_id).recipients_total == 0


def test_cancellation_stops_the_fan_out_between_pages(news, small_pages):
    topic_with("news", [RecipientFactory() for _ in range(7)])
    broadcast_id = start_broadcast(news, {"topic": "news"})
    assert fanout.broadcast_fanout_page(broadcast_id=broadcast_id) == MORE

    assert broadcasts.broadcast_cancel(broadcast_id=broadcast_id)
    assert fanout.broadcast_fanout_page(broadcast_id=broadcast_id) == STOPPED

    assert Notification.objects.filter(broadcast_id=broadcast_id).count() == 3
    deliveries = Delivery.objects.filter(notification__broadcast_id=broadcast_id)
    assert set(deliveries.values_list("status", "reason")) == {("skipped", "cancelled")}


def test_each_template_is_rendered_once_per_page_unless_it_reads_the_recipient(
    news, monkeypatch, settings
):
    settings.NOTIFY_FANOUT_PAGE = 100
    Template.objects.filter(event=news, channel="inapp").update(
        body="Hi {{ recipient.id }}, {{ headline }} ({{ notification_id }})"
    )
    TemplateFactory(event=news, channel="email", locale="pt", subject="Novidade: {{ headline }}")
    users = [RecipientFactory(locale="pt-BR" if i % 2 else "en") for i in range(6)]
    topic_with("news", users)
    rendered: Counter[str] = Counter()
    real_render = fanout_plan.render_template

    def counting_render(template, context):
        rendered[f"{template.channel}/{template.locale}"] += 1
        return real_render(template, context)

    monkeypatch.setattr(fanout_plan, "render_template", counting_render)
    broadcast_id = start_broadcast(news, {"topic": "news"})
    rendered.clear()  # the accept's own check renders each template once

    fan_out(broadcast_id)

    assert rendered == {"email/": 1, "email/pt": 1, "inapp/": 6}
    for user in users:
        note = Notification.objects.get(broadcast_id=broadcast_id, recipient=user)
        inapp = note.deliveries.get(channel="inapp").content
        assert inapp["body"] == f"Hi {user.external_id}, Dark mode ({note.pk})"
        email = note.deliveries.get(channel="email").content
        expected = "Novidade: Dark mode" if user.locale == "pt-BR" else "News: Dark mode"
        assert email["subject"] == expected


def test_included_templates_are_looked_into(db, tmp_path, settings):
    settings.TEMPLATES = [{**settings.TEMPLATES[0], "DIRS": [tmp_path]}]
    (tmp_path / "footer.txt").write_text("Sent to {{ recipient.email }}")
    (tmp_path / "plain.txt").write_text("Thanks")
    fanout_plan._source_uses_recipient.cache_clear()
    reads = Template(subject="s", body='Hi {% include "footer.txt" %}')
    plain = Template(subject="s", body="Hi {% include 'plain.txt' %}")
    dynamic = Template(subject="s", body="{% include footer_name %}")

    assert fanout_plan.uses_recipient_fields(reads)
    assert not fanout_plan.uses_recipient_fields(plain)
    assert fanout_plan.uses_recipient_fields(dynamic)
    fanout_plan._source_uses_recipient.cache_clear()


def _one_page_queries(event, size: int) -> int:
    users = [RecipientFactory() for _ in range(size)]
    for i, user in enumerate(users):
        DeviceFactory(recipient=user, platform="apns")
        if i % 3 == 0:
            PreferenceFactory(recipient=user, channel="email", enabled=False)
        if i % 4 == 0:
            Suppression.objects.create(channel="email", address=user.email, reason="hard_bounce")
    topic_with(f"audience-{size}", users)
    broadcast_id = start_broadcast(event, {"topic": f"audience-{size}"}, channels=Channel.values)
    with CaptureQueriesContext(connection) as queries:
        assert fanout.broadcast_fanout_page(broadcast_id=broadcast_id) == DONE
    assert Notification.objects.filter(broadcast_id=broadcast_id).count() == size
    # The test's own transaction turns the page's BEGIN/COMMIT into a savepoint pair.
    return len([q for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]])


def test_a_page_costs_the_same_number_of_queries_whatever_its_size(news, settings):
    settings.NOTIFY_FANOUT_PAGE = 100
    settings.NOTIFY_PROVIDERS = {
        **settings.NOTIFY_PROVIDERS,
        "push": "channels.providers.push.PushProvider",
    }
    Template.objects.filter(event=news, channel="inapp").update(body="Hi {{ recipient.id }}")

    small, large = _one_page_queries(news, 3), _one_page_queries(news, 30)

    # broadcast, event + templates (the catalog cache is off in tests), the audience page
    # with its context, the notifications, the deliveries, the cursor.
    assert small == large == 7


def test_after_commit_deliveries_go_in_batches_on_bulk_lanes_and_the_next_page_is_chained(
    news, small_pages, broker, django_capture_on_commit_callbacks
):
    small_pages.NOTIFY_DELIVERY_BATCH = 2
    topic_with("news", [RecipientFactory() for _ in range(4)])
    broadcast_id = start_broadcast(news, {"topic": "news"})

    with django_capture_on_commit_callbacks(execute=True):
        assert fanout.broadcast_fanout_page(broadcast_id=broadcast_id) == MORE

    assert (broker.queued(EMAIL.bulk_queue), broker.queued(INAPP.bulk_queue)) == (2, 2)  # 3 = 2 + 1
    assert (broker.queued(EMAIL.queue), broker.queued(INAPP.queue)) == (0, 0)
    assert broker.queued(MAINTENANCE_QUEUE) == 1
    message = broker.messages(EMAIL.bulk_queue)[-1]
    assert message["headers"]["task"] == EMAIL.batch_task
    chained = broker.messages(MAINTENANCE_QUEUE)[-1]
    assert chained["headers"]["task"] == FANOUT_TASK
    assert chained["headers"]["argsrepr"] == repr((str(broadcast_id), 0))  # its segment


def test_resume_restarts_unfinished_fan_outs_only(news, broker):
    RecipientFactory()
    unfinished = start_broadcast(news, {"all": True})
    finished = start_broadcast(news, {"all": True})
    fan_out(finished)

    assert fanout.broadcasts_resume() == 1

    message = broker.messages(MAINTENANCE_QUEUE)[-1]
    assert message["headers"]["argsrepr"] == repr((str(unfinished), 0))


def test_a_recipient_erased_before_its_page_is_left_out(news):
    users = [RecipientFactory() for _ in range(3)]
    broadcast_id = start_broadcast(news, {"all": True})
    users[1].delete()

    fan_out(broadcast_id)

    assert _by_recipient(broadcast_id) == Counter([users[0].pk, users[2].pk])
    assert broadcast_row(broadcast_id).recipients_total == 2


# --- parallel chains: the audience's id range cut into segments ---


@pytest.fixture
def three_chains(settings):
    settings.NOTIFY_FANOUT_PAGE = 3
    settings.NOTIFY_FANOUT_CHAINS = 3
    return settings


def test_the_id_range_is_cut_into_up_to_the_chains_of_at_least_a_page_each(news, three_chains):
    assert fanout.fanout_segments(audience={"topic": "nobody"}) == ([0], [fanout.BIGINT_MAX])
    few = [RecipientFactory() for _ in range(5)]
    topic_with("few", few)  # 5 ids: one page and a bit, so one chain
    assert fanout.fanout_segments(audience={"topic": "few"}) == ([0], [fanout.BIGINT_MAX])
    many = [RecipientFactory() for _ in range(10)]
    topic_with("many", many)
    low, high = many[0].pk, many[-1].pk

    cursors, bounds = fanout.fanout_segments(audience={"topic": "many"})

    assert len(bounds) == 3 and bounds[-1] == fanout.BIGINT_MAX
    assert cursors == [0, *bounds[:-1]] and low <= bounds[0] < bounds[1] < high


def test_segments_together_write_each_subscriber_once_and_the_last_to_end_finishes(
    news, three_chains
):
    subscribers = [RecipientFactory() for _ in range(10)]
    topic_with("news", subscribers)
    broadcast_id = start_broadcast(news, {"topic": "news"})
    assert len(broadcast_row(broadcast_id).fanout_cursors) == 3

    for segment in (2, 0):  # in any order; each ends with a page shorter than 3
        while fanout.broadcast_fanout_page(broadcast_id=broadcast_id, segment=segment) == MORE:
            pass
        assert broadcast_row(broadcast_id).status == Broadcast.Status.FANNING_OUT
    assert fanout.broadcast_fanout_page(broadcast_id=broadcast_id, segment=0) == STOPPED  # ended

    while fanout.broadcast_fanout_page(broadcast_id=broadcast_id, segment=1) == MORE:
        pass

    broadcast = broadcast_row(broadcast_id)
    assert broadcast.status == Broadcast.Status.FANNED_OUT and broadcast.fanned_out_at
    assert broadcast.recipients_total == 10
    assert _by_recipient(broadcast_id) == Counter(r.pk for r in subscribers)
    assert fanout.broadcast_fanout_page(broadcast_id=broadcast_id, segment=7) == STOPPED


def test_a_recipient_created_during_the_fan_out_is_in_the_last_segment(news, three_chains):
    everyone = [RecipientFactory() for _ in range(10)]
    broadcast_id = start_broadcast(news, {"all": True})
    late = RecipientFactory()

    fan_out(broadcast_id)

    assert _by_recipient(broadcast_id) == Counter(r.pk for r in [*everyone, late])


def test_resume_publishes_only_the_segments_still_open(news, three_chains, broker):
    topic_with("news", [RecipientFactory() for _ in range(10)])
    broadcast_id = start_broadcast(news, {"topic": "news"})
    while fanout.broadcast_fanout_page(broadcast_id=broadcast_id, segment=1) == MORE:
        pass
    broker.purge()

    assert fanout.broadcasts_resume() == 1

    assert sorted(m["headers"]["argsrepr"] for m in broker.messages(MAINTENANCE_QUEUE)) == [
        repr((str(broadcast_id), 0)),
        repr((str(broadcast_id), 2)),
    ]


@pytest.mark.django_db(transaction=True)
def test_two_segments_ending_at_once_leave_the_broadcast_fanned_out(news, three_chains):
    """The second UPDATE waits for the first's row lock, then decides on the row as the first
    left it: whichever commits second sees every segment ended."""
    topic_with("news", [RecipientFactory() for _ in range(10)])
    broadcast_id = start_broadcast(news, {"topic": "news"})
    row = broadcast_row(broadcast_id)
    bounds = row.fanout_bounds
    # Segment 0 already ended; 1 and 2 are at their last page.
    Broadcast.objects.filter(pk=broadcast_id).update(fanout_cursors=[bounds[0], 5, 6])
    waiting: dict[str, bool] = {}

    def end_segment_2() -> None:
        try:
            with transaction.atomic():
                waiting["moved"] = fanout._advance(
                    broadcast_id, segment=2, from_cursor=6, to_cursor=bounds[2], added=1
                )
        finally:
            connection.close()

    with transaction.atomic():
        assert fanout._advance(broadcast_id, segment=1, from_cursor=5, to_cursor=bounds[1], added=1)
        other = threading.Thread(target=end_segment_2)
        other.start()
        wait_for(lambda: _waits_for_a_lock("UPDATE notifications_broadcast"), timeout=10)
        # Both UPDATEs have read "the other segment is still open"; only one commit is first.

    other.join(timeout=10)
    assert waiting == {"moved": True}
    broadcast = broadcast_row(broadcast_id)
    assert broadcast.status == Broadcast.Status.FANNED_OUT and broadcast.fanned_out_at
    assert broadcast.fanout_cursors == [bounds[0], bounds[1], bounds[2]]
    assert broadcast.recipients_total == 2


def _waits_for_a_lock(query_start: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # else read once per transaction
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND datname = current_database() AND query LIKE %s",
            [f"%{query_start}%"],
        )
        return bool(cursor.fetchone()[0])


# --- end to end through real workers (last in this module: they consume the test broker) ---


@pytest.fixture(scope="module")
def broadcast_workers(django_db_setup, django_db_blocker, smtp_relay, tmp_path_factory):
    """Real workers for the fan-out (maintenance) and both lanes of email and in-app, with
    small pages and batches so that ~20 recipients take several of each."""
    with django_db_blocker.unblock():
        database_name = connection.settings_dict["NAME"]
    db = settings.DATABASES["default"]
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings_test",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{database_name}",
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "EMAIL_URL": f"smtp://127.0.0.1:{smtp_relay.port}",
        "NOTIFY_FANOUT_PAGE": "7",
        "NOTIFY_DELIVERY_BATCH": "4",
    }
    purge_broker()
    log_dir = tmp_path_factory.mktemp("broadcast-workers")
    started = [
        WorkerProcess(queues, env, log_dir)
        for queues in (MAINTENANCE_QUEUE, EMAIL.worker_queues, INAPP.worker_queues)
    ]
    try:
        for worker in started:
            worker.wait_ready()
        yield started
    finally:
        for worker in started:
            worker.stop()


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_topic_broadcast_drains_through_real_workers(
    api_client, news, broadcast_workers, smtp_relay
):
    tag = uuid.uuid4().hex[:8]
    users = [RecipientFactory(email=f"fan-{tag}-{i}@example.com") for i in range(19)]
    users.append(RecipientFactory(email=f"tempfail-1-{tag}@example.com"))  # retried alone
    topic_with("launch", users)

    response = api_client.post(
        "/api/broadcasts",
        {"event": "product_news", "audience": {"topic": "launch"}, "data": {"headline": "v2"}},
        format="json",
    )
    assert response.status_code == 202, response.content
    broadcast_id = response.json()["id"]

    def drained():
        progress = api_client.get(f"/api/broadcasts/{broadcast_id}").json()
        done = progress["status"] == "fanned_out" and progress["deliveries"]["sent"] == 40
        return progress if done else None

    try:
        progress = wait_for(drained, timeout=60, what="the broadcast to drain")
    except AssertionError:
        raise AssertionError("\n".join(w.log() for w in broadcast_workers)) from None
    assert progress["recipientsTotal"] == 20
    assert progress["deliveries"]["byChannel"]["email"]["sent"] == 20
    assert progress["deliveries"]["byChannel"]["inapp"]["sent"] == 20
    for user in users:
        assert len(smtp_relay.behaviour.messages_to(user.email)) == 1
    assert InboxMessage.objects.filter(recipient__in=users).count() == 20
    retried = Delivery.objects.get(notification__recipient=users[-1], channel="email")
    assert retried.attempts == 2
    assert [e["status"] for e in retried.history] == [
        "queued",
        "sending",
        "queued",
        "sending",
        "sent",
    ]
