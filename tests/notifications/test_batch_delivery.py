"""Batch delivery: one claim for many rows, then each delivery handled exactly as if single."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
from django.core import mail
from django.utils import timezone

from channels.lanes import EMAIL, PUSH
from notifications.models import Delivery, DeliveryStatus, FailedDelivery, InboxMessage
from notifications.services import Outcome, broadcasts, engine, transitions
from notifications.tasks import (
    deliver_email_batch,
    deliver_inapp_batch,
    deliver_push,
    deliver_push_batch,
)
from preferences.models import Device, Suppression
from tests.channels.guarding import assert_paused_for_configuration
from tests.channels.push import apns_token
from tests.factories import CategoryFactory, DeviceFactory, PreferenceFactory, RecipientFactory
from tests.notifications import broadcasting
from tests.notifications.broadcasting import fan_out, start_broadcast

news = broadcasting.news  # the fixture, shared by the broadcast tests
pytestmark = pytest.mark.django_db


def _push_broadcast(news, tokens: list[str]) -> dict[str, int]:
    """A push broadcast to one recipient per token name (tests/channels/push.py apns_token),
    fanned out: {name: delivery id}."""
    users = {}
    for token in tokens:
        users[token] = RecipientFactory()
        DeviceFactory(recipient=users[token], platform="apns", token=apns_token(token))
    broadcast_id = start_broadcast(
        news, {"userIds": [u.external_id for u in users.values()]}, channels=["push"]
    )
    fan_out(broadcast_id)
    return {
        token: Delivery.objects.get(notification__recipient=user, channel="push").pk
        for token, user in users.items()
    }


def _queued_messages(broker, queue: str) -> list[dict]:
    return broker.messages(queue)


def test_sent_transient_and_permanent_in_one_batch_each_as_if_single(news, push_sender, broker):
    push_sender.verdicts = {"flaky": "flaky", "dead": "dead"}
    ids = _push_broadcast(news, ["fine", "flaky", "dead"])

    counts = deliver_push_batch.apply(args=(list(ids.values()),)).get()

    assert counts == {"sent": 1, "retry": 1, "failed": 1}
    fine, flaky, dead = (Delivery.objects.get(pk=ids[t]) for t in ("fine", "flaky", "dead"))
    assert (fine.status, fine.provider_message_id, fine.attempts) == ("sent", "apns-id-fine", 1)
    assert fine.results == {apns_token("fine"): {"status": "sent", "messageId": "apns-id-fine"}}
    # Transient: back to queued with the error recorded and a lease covering the retry wait.
    assert (flaky.status, flaky.attempts) == ("queued", 1)
    assert flaky.history[-1]["transient"] is True and "503" in flaky.last_error
    assert flaky.lease_until is not None
    # Permanent: failed, dead-lettered, the dead token's device retired.
    assert (dead.status, dead.reason) == ("failed", "Unregistered")
    assert FailedDelivery.objects.get(delivery=dead).task_name == PUSH.batch_task
    device = Device.objects.get(token=apns_token("dead"))
    assert not device.active and device.deactivation_reason
    # The transient one alone is retried as a batch of one, on the bulk lane; its retry budget
    # is the row's attempts (1 spent), the same whichever task sends it.
    (retry,) = _queued_messages(broker, PUSH.bulk_queue)
    assert retry["headers"]["task"] == PUSH.task
    assert retry["headers"]["argsrepr"] == repr((ids["flaky"],))
    # The single task's own first backoff (jittered: 0-2 s in the test settings).
    eta = retry["headers"]["eta"]
    assert eta is None or datetime.fromisoformat(eta) < timezone.now() + timedelta(seconds=3)
    assert broker.queued(PUSH.queue) == 0

    assert deliver_push.apply(args=(ids["flaky"],), retries=1).get() == "sent"
    flaky.refresh_from_db()
    assert (flaky.status, flaky.attempts) == ("sent", 2)
    assert push_sender.sent.count("flaky") == 1 and push_sender.sent.count("fine") == 1


def test_a_providers_retry_after_is_the_retrys_countdown(news, push_sender, broker):
    push_sender.verdicts = {"slow": "throttled"}
    ids = _push_broadcast(news, ["slow"])

    assert deliver_push_batch.apply(args=([ids["slow"]],)).get() == {"retry": 1}

    (retry,) = _queued_messages(broker, PUSH.bulk_queue)
    # 30 s from now, not the 0-2 s backoff of the test settings.
    eta = retry["headers"]["eta"]
    assert datetime.fromisoformat(eta) > timezone.now() + timedelta(seconds=20)


def test_mixed_smtp_outcomes_in_one_email_batch(news, settings, smtp_relay, broker):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", smtp_relay.port
    tag = uuid.uuid4().hex[:8]
    addresses = [f"ok-{tag}@example.com", f"tempfail-1-{tag}@example.com", f"bounce-{tag}@x.org"]
    users = [RecipientFactory(email=address) for address in addresses]
    broadcast_id = start_broadcast(news, {"all": True}, channels=["email"])
    fan_out(broadcast_id)
    ids = [Delivery.objects.get(notification__recipient=user).pk for user in users]

    # Email sends run on a small thread pool; the outcomes are the single path's all the same.
    assert deliver_email_batch.apply(args=(ids,)).get() == {"sent": 1, "retry": 1, "failed": 1}

    ok, tempfail, bounce = Delivery.objects.filter(pk__in=ids).order_by("pk")
    assert ok.status == "sent" and smtp_relay.behaviour.messages_to(addresses[0])
    assert tempfail.status == "queued" and "451" in tempfail.last_error
    assert bounce.status == "failed" and FailedDelivery.objects.filter(delivery=bounce).exists()
    assert Suppression.objects.filter(address=addresses[2].lower(), channel="email").exists()
    assert broker.queued(EMAIL.bulk_queue) == 1


def test_the_batch_claim_skips_rows_already_sending_sent_or_skipped(news, push_sender):
    ids = _push_broadcast(news, ["a", "b", "c", "d"])
    transitions.claim(ids["a"])  # another worker has it
    transitions.claim(ids["b"])
    transitions.transition(
        [ids["b"]], to=DeliveryStatus.SENT, allowed_from=(DeliveryStatus.SENDING,)
    )
    transitions.transition(
        [ids["c"]], to=DeliveryStatus.SKIPPED, allowed_from=(DeliveryStatus.QUEUED,)
    )

    result = engine.deliver(list(ids.values()), channel="push")

    assert result.outcomes == {
        ids["a"]: Outcome.NOT_CLAIMED,
        ids["b"]: Outcome.NOT_CLAIMED,
        ids["c"]: Outcome.NOT_CLAIMED,
        ids["d"]: Outcome.SENT,
    }
    assert push_sender.sent == ["d"]
    statuses = dict(Delivery.objects.values_list("pk", "status"))
    assert [statuses[ids[t]] for t in "abcd"] == ["sending", "sent", "skipped", "sent"]
    assert Delivery.objects.get(pk=ids["a"]).attempts == 1  # not claimed twice


def test_a_redelivered_batch_sends_nothing_twice(news, push_sender):
    ids = list(_push_broadcast(news, ["a", "b"]).values())

    assert deliver_push_batch.apply(args=(ids,)).get() == {"sent": 2}
    assert deliver_push_batch.apply(args=(ids,)).get() == {"not_claimed": 2}
    assert sorted(push_sender.sent) == ["a", "b"]


def test_send_time_checks_are_the_single_paths(news, push_sender):
    ids = _push_broadcast(news, ["opted-out", "erased", "no-more-device", "fine"])
    recipient = Delivery.objects.get(pk=ids["opted-out"]).notification.recipient
    PreferenceFactory(recipient=recipient, channel="push", enabled=False)
    Delivery.objects.get(pk=ids["erased"]).notification.recipient.delete()
    Device.objects.filter(token=apns_token("no-more-device")).update(active=False)

    result = engine.deliver(list(ids.values()), channel="push")

    assert [result.outcomes[ids[t]] for t in ids] == ["skipped", "skipped", "skipped", "sent"]
    reasons = dict(Delivery.objects.values_list("pk", "reason"))
    assert [reasons[ids[t]] for t in ids] == ["opted_out", "recipient_erased", "no_device", ""]


def test_a_delivery_of_a_cancelled_broadcast_back_from_a_retry_is_skipped(news, push_sender):
    ids = _push_broadcast(news, ["late"])
    delivery = Delivery.objects.get(pk=ids["late"])
    transitions.claim(delivery.pk)  # sending while the broadcast is cancelled...
    broadcasts.broadcast_cancel(broadcast_id=delivery.notification.broadcast_id)
    # ...then a transient error puts it back in the queue.
    transitions.transition(
        [delivery.pk], to=DeliveryStatus.QUEUED, allowed_from=(DeliveryStatus.SENDING,)
    )

    result = engine.deliver([delivery.pk], channel="push")

    assert result.outcomes == {delivery.pk: Outcome.SKIPPED}
    delivery.refresh_from_db()
    assert (delivery.status, delivery.reason) == ("skipped", "cancelled")
    assert push_sender.sent == []


def test_a_configuration_error_pauses_the_provider_for_the_rest_of_the_batch(
    news, push_sender, settings, broker
):
    settings.NOTIFY_DELIVERY_IN_FLIGHT = {**settings.NOTIFY_DELIVERY_IN_FLIGHT, "push": 1}
    push_sender.verdicts = {"bad": "misconfigured"}
    ids = _push_broadcast(news, ["good", "bad", "also-good"])

    counts = deliver_push_batch.apply(args=(list(ids.values()),)).get()

    # The refusal was about our settings, not "bad": nothing is failed, and what comes after
    # it waits for the provider's probe instead of being refused the same way.
    assert counts == {"sent": 1, "deferred": 2}
    assert not FailedDelivery.objects.exists()
    assert_paused_for_configuration(
        Delivery.objects.get(pk=ids["bad"]), push_sender.name, "InvalidProviderToken"
    )
    assert Delivery.objects.get(pk=ids["also-good"]).status == DeliveryStatus.QUEUED
    assert push_sender.sent == ["good"]
    (deferred,) = broker.messages(PUSH.bulk_queue)
    assert sorted(deferred["body"][0][0]) == sorted([ids["bad"], ids["also-good"]])


def test_in_app_batches_write_one_inbox_row_each(news):
    users = [RecipientFactory() for _ in range(3)]
    broadcast_id = start_broadcast(news, {"all": True}, channels=["inapp"])
    fan_out(broadcast_id)
    ids = list(Delivery.objects.values_list("pk", flat=True))

    assert deliver_inapp_batch.apply(args=(ids,)).get() == {"sent": 3}

    assert sorted(InboxMessage.objects.values_list("recipient_id", flat=True)) == sorted(
        u.pk for u in users
    )
    assert set(InboxMessage.objects.values_list("title", flat=True)) == {"News: Dark mode"}


def test_a_batch_claims_in_one_statement_and_loads_in_one(
    news, settings, django_assert_num_queries
):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    for _ in range(5):
        RecipientFactory()
    broadcast_id = start_broadcast(news, {"all": True}, channels=["email"])
    fan_out(broadcast_id)
    ids = list(Delivery.objects.values_list("pk", flat=True))
    transitions.claim_many(ids[:0])  # nothing to claim: no query at all

    # One claim that loads what the send reads (rules and suppressions included), one UPDATE
    # for the acceptances of a round of calls in flight (here all five).
    settings.NOTIFY_DELIVERY_IN_FLIGHT = {**settings.NOTIFY_DELIVERY_IN_FLIGHT, "email": 8}
    with django_assert_num_queries(1 + 1):
        engine.deliver(ids, channel="email")

    assert len(mail.outbox) == 5
    sent = Delivery.objects.filter(status=DeliveryStatus.SENT)
    assert sent.count() == 5
    # Each row got its own message id and history entry, not one copied across the batch.
    assert len(set(sent.values_list("provider_message_id", flat=True))) == 5
    for delivery in sent:
        assert delivery.history[-1]["status"] == "sent"
        assert delivery.history[-1]["messageId"] == delivery.provider_message_id
        assert delivery.lease_until is None


def test_acceptances_are_recorded_after_each_round_of_calls_in_flight(
    news, settings, django_assert_num_queries
):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.NOTIFY_DELIVERY_IN_FLIGHT = {**settings.NOTIFY_DELIVERY_IN_FLIGHT, "email": 2}
    for _ in range(5):
        RecipientFactory()
    broadcast_id = start_broadcast(news, {"all": True}, channels=["email"])
    fan_out(broadcast_id)
    ids = list(Delivery.objects.values_list("pk", flat=True))

    with django_assert_num_queries(1 + 3):  # rounds of 2 + 2 + 1 calls, an UPDATE each
        engine.deliver(ids, channel="email")

    assert Delivery.objects.filter(status=DeliveryStatus.SENT).count() == 5


def test_rules_and_suppressions_loaded_with_the_batch_are_read_at_send_time(news):
    users = [RecipientFactory() for _ in range(4)]
    broadcast_id = start_broadcast(news, {"all": True}, channels=["email"])
    fan_out(broadcast_id)
    # After the fan-out, before the send: one address bounces, two people opt out (one of the
    # category, one of everything), the last one opts out of another category only.
    Suppression.objects.create(channel="email", address=users[0].email, reason="hard_bounce")
    PreferenceFactory(recipient=users[1], category=news.category, enabled=False)
    PreferenceFactory(recipient=users[2], enabled=False)
    PreferenceFactory(recipient=users[3], category=CategoryFactory(key="orders"), enabled=False)
    ids = [Delivery.objects.get(notification__recipient=user).pk for user in users]

    result = engine.deliver(ids, channel="email")

    assert [result.outcomes[pk] for pk in ids] == ["skipped", "skipped", "skipped", "sent"]
    reasons = dict(Delivery.objects.values_list("pk", "reason"))
    assert [reasons[pk] for pk in ids] == ["suppressed", "opted_out", "opted_out", ""]
    assert [m.to for m in mail.outbox] == [[users[3].email]]
