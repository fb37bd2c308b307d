"""POST /api/broadcasts (idempotent like /api/notify), progress, cancellation, admin."""

from __future__ import annotations

import pytest

from channels.lanes import FANOUT_TASK, MAINTENANCE_QUEUE
from notifications.models import Broadcast, Delivery, DeliveryStatus, Notification, Template
from notifications.services import transitions
from tests.factories import RecipientFactory
from tests.notifications import broadcasting
from tests.notifications.broadcasting import fan_out, topic_with

news = broadcasting.news  # the fixture, shared by the broadcast tests
pytestmark = pytest.mark.django_db


def _post(api_client, body, **headers):
    return api_client.post("/api/broadcasts", body, format="json", **headers)


def _body(**extra):
    return {"event": "product_news", "audience": {"all": True}, "data": {"headline": "Hi"}, **extra}


def test_accepting_records_the_broadcast_and_starts_its_fan_out_after_commit(
    api_client, news, broker, django_capture_on_commit_callbacks
):
    topic_with("news", [])

    with django_capture_on_commit_callbacks(execute=True):
        response = _post(api_client, _body(audience={"topic": "news"}, channels=["email"]))

    assert response.status_code == 202, response.content
    assert response.json() == {"id": response.json()["id"], "status": "pending"}
    broadcast = Broadcast.objects.get(pk=response.json()["id"])
    assert (broadcast.audience, broadcast.channels) == ({"topic": "news"}, ["email"])
    assert broadcast.data == {"headline": "Hi"}
    assert not Notification.objects.exists()  # the fan-out is the task's job, not the request's
    message = broker.messages(MAINTENANCE_QUEUE)[-1]
    assert message["headers"]["task"] == FANOUT_TASK


def test_channels_default_to_the_events_and_are_fixed_at_accept(api_client, news):
    response = _post(api_client, _body())
    assert Broadcast.objects.get(pk=response.json()["id"]).channels == ["email", "inapp"]


def test_same_key_same_body_is_replayed_and_another_body_is_a_conflict(api_client, news):
    first = _post(api_client, _body(idempotencyKey="launch-1"))
    again = _post(api_client, _body(idempotencyKey="launch-1"))
    by_header = _post(api_client, _body(), HTTP_IDEMPOTENCY_KEY="launch-1")
    other = _post(api_client, _body(idempotencyKey="launch-1", data={"headline": "Other"}))

    assert first.status_code == 202
    assert (again.status_code, again.json()) == (200, first.json())
    assert again["Idempotent-Replayed"] == "true"
    assert (by_header.status_code, by_header.json()) == (200, first.json())
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_conflict"
    assert Broadcast.objects.count() == 1


def test_idempotency_keys_are_per_api_key_and_header_must_match_body(api_client, news):
    mismatch = _post(api_client, _body(idempotencyKey="a"), HTTP_IDEMPOTENCY_KEY="b")
    assert mismatch.status_code == 400
    assert _post(api_client, _body()).status_code == 202
    assert _post(api_client, _body()).status_code == 202  # no key: two broadcasts
    assert Broadcast.objects.count() == 2


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (_body(event="nope"), 422, "unknown_event"),
        (_body(audience={"topic": "nope"}), 422, "unknown_topic"),
        (_body(audience={}), 400, "validation_error"),
        (_body(audience={"all": True, "topic": "x"}), 400, "validation_error"),
        (_body(audience={"all": False}), 400, "validation_error"),
        (_body(audience={"userIds": []}), 400, "validation_error"),
        (_body(audience={"userIds": [42]}), 400, "validation_error"),
        (_body(audience={"segment": "vip"}), 400, "validation_error"),
        (_body(audience="everyone"), 400, "validation_error"),
        (_body(channels=["fax"]), 400, "validation_error"),
        (_body(priority="bulk"), 400, "validation_error"),
        (_body(data=[1]), 400, "validation_error"),
        (_body(channels=[]), 400, "validation_error"),
    ],
)
def test_bad_requests_are_json_errors(api_client, news, body, status, code):
    response = _post(api_client, body)
    assert response.status_code == status, response.content
    assert response.json()["error"]["code"] == code
    assert not Broadcast.objects.exists()


def test_a_template_that_cannot_render_is_refused_at_accept(api_client, news):
    Template.objects.filter(event=news, channel="email").update(body="{% include 'nope.txt' %}")
    response = _post(api_client, _body())
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "template_error"


def test_ten_thousand_user_ids_are_accepted_and_one_more_is_not(api_client, news):
    user_ids = [f"user-{i:08d}" for i in range(10_000)]  # ~160 KB: over the 64 KiB default
    assert _post(api_client, _body(audience={"userIds": user_ids})).status_code == 202
    too_many = _post(api_client, _body(audience={"userIds": [*user_ids, "one-more"]}))
    assert too_many.status_code == 400


def test_the_bulk_body_limit_still_holds(api_client, news, settings):
    settings.NOTIFY_FANOUT_MAX_BODY_BYTES = 1000
    response = _post(api_client, _body(audience={"userIds": ["x" * 50] * 30}))
    assert response.status_code == 413


def _delivery(broadcast_id, user, channel) -> Delivery:
    return Delivery.objects.get(
        notification__broadcast_id=broadcast_id, notification__recipient=user, channel=channel
    )


def test_progress_counts_deliveries_by_channel_status_and_skip_reason(
    api_client, news, django_assert_num_queries
):
    users = [RecipientFactory() for _ in range(4)]
    users.append(RecipientFactory(email=None))
    broadcast_id = _post(api_client, _body()).json()["id"]
    fan_out(broadcast_id)
    first, second, third = (_delivery(broadcast_id, users[i], "email").pk for i in range(3))
    transitions.claim(first)
    transitions.claim(second)
    transitions.transition([second], to=DeliveryStatus.SENT, allowed_from=(DeliveryStatus.SENDING,))
    transitions.transition([third], to=DeliveryStatus.FAILED, allowed_from=(DeliveryStatus.QUEUED,))

    # API key, broadcast, then the count: savepoint, advisory lock, one GROUP BY, the count
    # stored for the next polls, release.
    with django_assert_num_queries(7):
        progress = api_client.get(f"/api/broadcasts/{broadcast_id}").json()

    assert progress["status"] == "fanned_out"
    assert progress["recipientsTotal"] == 5
    assert progress["audience"] == {"all": True}
    assert progress["event"] == "product_news"
    deliveries = progress["deliveries"]
    assert deliveries["byChannel"]["email"] == {
        "total": 5,
        "queued": 1,
        "sending": 1,
        "sent": 1,
        "delivered": 0,
        "failed": 1,
        "skipped": 1,
        "skippedByReason": {"no_email": 1},
    }
    assert deliveries["byChannel"]["inapp"]["queued"] == 5
    assert (deliveries["total"], deliveries["queued"], deliveries["skipped"]) == (10, 6, 1)


def test_progress_of_a_user_id_broadcast_shows_the_list_size_only(api_client, news):
    broadcast_id = _post(api_client, _body(audience={"userIds": ["a", "b"]})).json()["id"]
    assert api_client.get(f"/api/broadcasts/{broadcast_id}").json()["audience"] == {"userIds": 2}


def test_a_repeated_user_id_is_refused_not_merged(api_client, news):
    response = _post(api_client, _body(audience={"userIds": ["a", "b", "a"]}))

    assert response.status_code == 400, response.content
    assert set(response.json()["error"]["fields"]["audience"]) == {"userIds"}
    assert not Broadcast.objects.exists()


def test_unknown_broadcasts_are_404(api_client):
    missing = "00000000-0000-0000-0000-000000000000"
    assert api_client.get(f"/api/broadcasts/{missing}").status_code == 404
    assert api_client.post(f"/api/broadcasts/{missing}/cancel").status_code == 404


def test_cancel_skips_what_is_still_queued_and_lets_sending_ones_finish(api_client, news):
    users = [RecipientFactory() for _ in range(3)]
    broadcast_id = _post(api_client, _body(channels=["email"])).json()["id"]
    fan_out(broadcast_id)
    sending, sent, queued = (_delivery(broadcast_id, user, "email").pk for user in users)
    transitions.claim(sending)
    transitions.claim(sent)
    transitions.transition([sent], to=DeliveryStatus.SENT, allowed_from=(DeliveryStatus.SENDING,))

    response = api_client.post(f"/api/broadcasts/{broadcast_id}/cancel")

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["cancelledAt"] is not None
    statuses = dict(
        Delivery.objects.filter(pk__in=[sending, sent, queued]).values_list("pk", "status")
    )
    assert statuses == {sending: "sending", sent: "sent", queued: "skipped"}
    skipped = Delivery.objects.get(pk=queued)
    assert skipped.reason == "cancelled"
    assert skipped.history[-1]["status"] == "skipped"
    assert skipped.history[-1]["reason"] == "cancelled"
    assert response.json()["deliveries"]["skippedByReason"] == {"cancelled": 1}
    again = api_client.post(f"/api/broadcasts/{broadcast_id}/cancel")
    assert (again.status_code, again.json()["cancelledAt"]) == (200, response.json()["cancelledAt"])


def test_cancel_touches_no_other_broadcast(api_client, news):
    RecipientFactory()
    cancelled = _post(api_client, _body()).json()["id"]
    other = _post(api_client, _body()).json()["id"]
    fan_out(cancelled), fan_out(other)

    api_client.post(f"/api/broadcasts/{cancelled}/cancel")

    other_statuses = Delivery.objects.filter(notification__broadcast_id=other)
    assert set(other_statuses.values_list("status", flat=True)) == {"queued"}


def test_admin_lists_broadcasts_and_cancels_a_selection(admin_client, api_client, news):
    RecipientFactory()
    broadcast_id = _post(api_client, _body(audience={"userIds": ["a", "b"]})).json()["id"]

    listing = admin_client.get("/admin/notifications/broadcast/")
    assert listing.status_code == 200
    assert b"2 userIds" in listing.content
    response = admin_client.post(
        "/admin/notifications/broadcast/",
        {"action": "cancel_selected", "_selected_action": [broadcast_id]},
    )
    assert response.status_code == 302
    assert Broadcast.objects.get(pk=broadcast_id).status == "cancelled"
