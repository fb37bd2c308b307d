"""The inbox API as a client app uses it: authenticated as one recipient, newest first in
pages, filtered, counted, and changed one message or all at once."""

from __future__ import annotations

import pytest
import redis
from rest_framework.test import APIClient

from notifications.api.throttling import fail_open
from notifications.models import InboxMessage
from preferences import access
from tests.factories import InboxMessageFactory, RecipientFactory

pytestmark = pytest.mark.django_db


def app_for(recipient) -> APIClient:
    token, _ = access.token_mint(
        recipient_id=recipient.pk, generation=recipient.token_generation, ttl_seconds=600
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@pytest.fixture
def ana():
    return RecipientFactory(external_id="ana")


def titles(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [m["title"] for m in response.json()["results"]]


def test_the_list_is_newest_first_in_pages_that_follow_each_other(ana):
    for n in range(5):
        InboxMessageFactory(recipient=ana, title=f"m{n}")
    app = app_for(ana)

    first = app.get("/api/inbox", {"pageSize": 2})
    second = app.get(first.json()["next"])
    third = app.get(second.json()["next"])

    assert titles(first) == ["m4", "m3"]
    assert titles(second) == ["m2", "m1"]
    assert titles(third) == ["m0"]
    assert third.json()["next"] is None


def test_a_message_carries_what_the_app_shows(ana):
    InboxMessageFactory(
        recipient=ana,
        title="Order 9 shipped",
        body="Tomorrow",
        url="https://shop.example.com/o/9",
        category="orders",
        data={"orderId": "9"},
    )

    (message,) = app_for(ana).get("/api/inbox").json()["results"]

    assert message["title"] == "Order 9 shipped"
    assert message["body"] == "Tomorrow"
    assert message["actionUrl"] == "https://shop.example.com/o/9"
    assert message["category"] == "orders"
    assert message["data"] == {"orderId": "9"}
    assert message["createdAt"]
    assert message["readAt"] is message["seenAt"] is message["archivedAt"] is None


def test_one_recipient_never_sees_or_changes_anothers_messages(ana):
    bob = RecipientFactory(external_id="bob")
    bobs = InboxMessageFactory(recipient=bob, title="for bob")
    InboxMessageFactory(recipient=ana, title="for ana")
    app = app_for(ana)

    assert titles(app.get("/api/inbox")) == ["for ana"]
    assert app.get("/api/inbox/count").json() == {"unread": 1, "unseen": 1}
    for action in ("read", "unread", "seen", "archive", "unarchive"):
        response = app.post(f"/api/inbox/{bobs.pk}/{action}")
        assert response.status_code == 404, action
        assert response.json()["error"]["code"] == "not_found"
    assert app.post("/api/inbox/read-all").json() == {"updated": 1}
    bobs.refresh_from_db()
    assert bobs.read_at is bobs.seen_at is bobs.archived_at is None


def test_each_state_change_and_the_counts(ana):
    first, second = InboxMessageFactory(recipient=ana), InboxMessageFactory(recipient=ana)
    app = app_for(ana)
    assert app.get("/api/inbox/count").json() == {"unread": 2, "unseen": 2}

    seen = app.post(f"/api/inbox/{first.pk}/seen").json()
    assert seen["seenAt"] and seen["readAt"] is None
    assert app.get("/api/inbox/count").json() == {"unread": 2, "unseen": 1}

    read = app.post(f"/api/inbox/{second.pk}/read").json()
    assert read["readAt"] and read["seenAt"]  # read implies seen
    assert app.get("/api/inbox/count").json() == {"unread": 1, "unseen": 1 - 1}

    again = app.post(f"/api/inbox/{second.pk}/read").json()
    assert again["readAt"] == read["readAt"]  # the first read time stays

    unread = app.post(f"/api/inbox/{second.pk}/unread").json()
    assert unread["readAt"] is None and unread["seenAt"] == read["seenAt"]
    assert app.get("/api/inbox/count").json() == {"unread": 2, "unseen": 0}

    archived = app.post(f"/api/inbox/{first.pk}/archive").json()
    assert archived["archivedAt"]
    assert [m["id"] for m in app.get("/api/inbox").json()["results"]] == [second.pk]
    assert [m["id"] for m in app.get("/api/inbox", {"archived": "true"}).json()["results"]] == [
        first.pk
    ]
    assert app.get("/api/inbox/count").json() == {"unread": 1, "unseen": 0}

    back = app.post(f"/api/inbox/{first.pk}/unarchive").json()
    assert back["archivedAt"] is None
    assert app.get("/api/inbox/count").json() == {"unread": 2, "unseen": 0}


def test_mark_all_read_leaves_archived_and_read_ones_as_they_were(ana):
    unread = InboxMessageFactory.create_batch(3, recipient=ana)
    archived = InboxMessageFactory(recipient=ana)
    app = app_for(ana)
    app.post(f"/api/inbox/{archived.pk}/archive")
    app.post(f"/api/inbox/{unread[0].pk}/read")

    assert app.post("/api/inbox/read-all").json() == {"updated": 2}

    assert app.get("/api/inbox/count").json() == {"unread": 0, "unseen": 0}
    archived.refresh_from_db()
    assert archived.read_at is None


def test_filters_unread_and_category(ana):
    InboxMessageFactory(recipient=ana, title="order", category="orders")
    social = InboxMessageFactory(recipient=ana, title="like", category="social")
    app = app_for(ana)
    app.post(f"/api/inbox/{social.pk}/read")

    assert titles(app.get("/api/inbox", {"unread": "true"})) == ["order"]
    assert titles(app.get("/api/inbox", {"unread": "false"})) == ["like"]
    assert titles(app.get("/api/inbox", {"category": "social"})) == ["like"]
    assert titles(app.get("/api/inbox", {"category": "social", "unread": "true"})) == []


@pytest.mark.parametrize(
    "query",
    [{"unread": "yes"}, {"archived": "1"}, {"category": "not a slug"}, {"status": "unread"},
     {"pageSize": "0"}, {"cursor": "!!"}],
)  # fmt: skip
def test_a_bad_filter_is_a_400_naming_it(ana, query):
    response = app_for(ana).get("/api/inbox", query)

    assert response.status_code == 400
    assert set(response.json()["error"]["fields"]) == set(query)


def test_an_action_on_a_missing_message_is_a_404_and_a_body_is_not_needed(ana):
    message = InboxMessageFactory(recipient=ana)
    app = app_for(ana)

    assert app.post("/api/inbox/999999999/read").status_code == 404
    assert app.post(f"/api/inbox/{message.pk}/read").status_code == 200
    assert app.post(f"/api/inbox/{message.pk}/delete").status_code == 404
    assert app.get(f"/api/inbox/{message.pk}/read").status_code == 405


def test_requests_are_limited_per_recipient(ana, settings):
    fail_open.reset()
    # Counters outlive the test database, whose ids start again at 1 on the next run.
    counters = redis.Redis.from_url(settings.NOTIFY_API_RATE_LIMIT_STORAGE_URL)
    stale = list(counters.scan_iter("*recipient:*"))
    if stale:
        counters.delete(*stale)
    settings.NOTIFY_INBOX_RATE_LIMIT = "3/minute"
    bob = RecipientFactory(external_id="bob")
    app, other = app_for(ana), app_for(bob)

    statuses = [app.get("/api/inbox/count").status_code for _ in range(4)]

    assert statuses == [200, 200, 200, 429]
    assert other.get("/api/inbox/count").status_code == 200


def test_cors_answers_the_configured_origins_on_the_inbox_only(ana, settings):
    settings.CORS_ALLOWED_ORIGINS = ["https://app.example.com"]
    client = APIClient()
    preflight = {
        "HTTP_ORIGIN": "https://app.example.com",
        "HTTP_ACCESS_CONTROL_REQUEST_METHOD": "POST",
        "HTTP_ACCESS_CONTROL_REQUEST_HEADERS": "authorization",
    }

    allowed = client.options("/api/inbox/read-all", **preflight)
    other_origin = client.options(
        "/api/inbox/read-all", **{**preflight, "HTTP_ORIGIN": "https://evil.example.com"}
    )
    service_api = client.options("/api/notify", **preflight)
    listed = app_for(ana).get("/api/inbox", HTTP_ORIGIN="https://app.example.com")

    assert allowed.status_code == 200
    assert allowed["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "authorization" in allowed["Access-Control-Allow-Headers"]
    assert "Access-Control-Allow-Origin" not in other_origin
    assert "Access-Control-Allow-Origin" not in service_api
    assert listed["Access-Control-Allow-Origin"] == "https://app.example.com"


def test_erasure_removes_the_inbox(ana, api_client):
    InboxMessageFactory.create_batch(2, recipient=ana)

    assert api_client.delete("/api/recipients/ana").status_code == 204

    assert not InboxMessage.objects.exists()
