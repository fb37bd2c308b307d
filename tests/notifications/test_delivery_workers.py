"""End to end through real worker processes: API → PostgreSQL → Redis → celery worker → SMTP."""

from __future__ import annotations

from typing import Any

import pytest
from django_celery_results.models import TaskResult

from channels.lanes import EMAIL
from notifications import services
from notifications.models import Delivery, DeliveryStatus, FailedDelivery, InboxMessage
from notifications.tasks import sweep_stuck_deliveries
from tests.factories import RecipientFactory
from tests.workers import settled_delivery, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _notify(api_client: Any, user_id: str, channels: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"userId": user_id, "event": "order_shipped", "data": {"orderId": "77"}}
    if channels:
        body["channels"] = channels
    response = api_client.post("/api/notify", body, format="json")
    assert response.status_code == 202, response.content
    return response.json()


def test_notification_goes_through_real_workers(api_client, order_shipped, workers, smtp_relay):
    recipient = RecipientFactory(email="happy@example.com")

    accepted = _notify(api_client, recipient.external_id)

    email = wait_for(lambda: settled_delivery(accepted["id"], "email"), what="email delivery")
    inapp = wait_for(lambda: settled_delivery(accepted["id"], "inapp"), what="inapp delivery")
    assert email.status == inapp.status == DeliveryStatus.SENT
    received = smtp_relay.behaviour.messages_to("happy@example.com")
    assert [m["subject"] for m in received] == ["Order 77 shipped"]
    assert email.provider == "smtp"
    assert email.provider_message_id == received[0]["messageId"]
    assert InboxMessage.objects.get(delivery=inapp).title == "Order 77 shipped"

    shown = api_client.get(f"/api/notifications/{accepted['id']}").json()
    email_shown = next(d for d in shown["deliveries"] if d["channel"] == "email")
    assert email_shown["status"] == "sent"
    assert email_shown["attempts"] == 1
    assert [t["status"] for t in email_shown["transitions"]] == ["queued", "sending", "sent"]


def test_transient_failures_are_retried_until_sent(api_client, order_shipped, workers, smtp_relay):
    # The relay answers 451 to the first two attempts at this address.
    recipient = RecipientFactory(email="tempfail-2-retry@example.com")

    accepted = _notify(api_client, recipient.external_id, ["email"])

    email = wait_for(lambda: settled_delivery(accepted["id"], "email"), what="retried email")
    assert email.status == DeliveryStatus.SENT
    assert email.attempts == 3
    statuses = [entry["status"] for entry in email.history]
    assert statuses == ["queued", "sending", "queued", "sending", "queued", "sending", "sent"]
    assert "451" in email.history[2]["error"]
    assert len(smtp_relay.behaviour.messages_to("tempfail-2-retry@example.com")) == 1
    assert not FailedDelivery.objects.filter(delivery=email).exists()


def test_retries_are_bounded_then_dead_lettered(api_client, order_shipped, workers, settings):
    # settings_test sets NOTIFY_MAX_RETRIES=3: 1 try + 3 retries, all answered 451.
    recipient = RecipientFactory(email="tempfail-99-exhausted@example.com")

    accepted = _notify(api_client, recipient.external_id, ["email"])

    email = wait_for(
        lambda: settled_delivery(accepted["id"], "email"), timeout=60, what="exhausted email"
    )
    assert email.status == DeliveryStatus.FAILED
    assert email.attempts == settings.NOTIFY_MAX_RETRIES + 1
    letter = FailedDelivery.objects.get(delivery=email)
    assert letter.error_class == "channels.base.TransientDeliveryError"
    assert "451" in letter.error_message
    assert letter.task_name == EMAIL.task
    # Retries are data: the task that spent the budget dead-lettered the delivery and ended
    # without an exception, so no task failure is stored besides the dead letter.
    assert not TaskResult.objects.filter(task_name=EMAIL.task, status="FAILURE").exists()


def test_permanent_failure_is_dead_lettered_once_and_replay_sends_once(
    api_client, order_shipped, workers, smtp_relay
):
    recipient = RecipientFactory(email="bounce-permanent@example.com")

    accepted = _notify(api_client, recipient.external_id, ["email"])

    email = wait_for(lambda: settled_delivery(accepted["id"], "email"), what="bounced email")
    assert email.status == DeliveryStatus.FAILED
    assert email.attempts == 1  # permanent: never retried
    letter = FailedDelivery.objects.get(delivery=email)
    assert letter.error_class == "channels.base.PermanentDeliveryError"
    assert "550" in letter.error_message

    # The user fixes their address; an operator replays the dead letter, twice by mistake.
    recipient.email = "fixed@example.com"
    recipient.save()
    assert services.failed_deliveries_replay(failed_ids=[letter.pk], replayed_by="ops") == 1
    assert services.failed_deliveries_replay(failed_ids=[letter.pk], replayed_by="ops") == 0

    email = wait_for(lambda: settled_delivery(accepted["id"], "email"), what="replayed email")
    assert email.status == DeliveryStatus.SENT
    assert email.attempts == 2
    assert len(smtp_relay.behaviour.messages_to("fixed@example.com")) == 1
    letter.refresh_from_db()
    assert letter.replayed_by == "ops"


def test_sweep_run_by_beat_task_recovers_a_lost_message(
    api_client, order_shipped, workers, smtp_relay
):
    recipient = RecipientFactory(email="lost@example.com")
    accepted = _notify(api_client, recipient.external_id, ["email"])
    delivery = Delivery.objects.get(notification_id=accepted["id"])
    wait_for(lambda: settled_delivery(accepted["id"], "email"), what="first send")
    # A delivery whose message the broker lost: queued, never consumed, lease long expired.
    lost = Delivery.objects.create(
        notification=delivery.notification,
        channel="inapp",
        status=DeliveryStatus.QUEUED,
        content={"subject": "Lost", "body": "found again"},
        lease_until="2000-01-01T00:00:00Z",
    )

    # The maintenance worker runs the sweep (as beat would schedule it); inapp sends it.
    sweep_stuck_deliveries.delay()

    found = wait_for(lambda: settled_delivery(accepted["id"], "inapp"), what="swept delivery")
    assert found.pk == lost.pk
    assert found.status == DeliveryStatus.SENT
    assert found.history[0]["reason"] == "lease_expired"
    assert InboxMessage.objects.get(delivery=found).body == "found again"


def test_an_inapp_delivery_reaches_the_recipients_app(api_client, order_shipped, workers):
    recipient = RecipientFactory()

    accepted = _notify(api_client, recipient.external_id, channels=["inapp"])
    wait_for(lambda: settled_delivery(accepted["id"], "inapp"), what="inapp delivery")

    minted = api_client.post(
        f"/api/recipients/{recipient.external_id}/tokens", {}, format="json"
    ).json()
    app = api_client.__class__()
    app.credentials(HTTP_AUTHORIZATION=f"Bearer {minted['token']}")
    (message,) = app.get("/api/inbox").json()["results"]
    assert message["title"] == "Order 77 shipped"
    assert message["category"] == "orders"  # the event's
    assert message["data"] == {"orderId": "77"}
    assert app.get("/api/inbox/count").json() == {"unread": 1, "unseen": 1}
