"""Topics API: create/rename, subscribe and unsubscribe in bulk, list subscribers by cursor."""

from __future__ import annotations

import pytest

from preferences.models import Topic, TopicSubscription
from tests.factories import RecipientFactory

pytestmark = pytest.mark.django_db


def _put(api_client, key: str, body: dict | None = None):
    return api_client.put(f"/api/topics/{key}", body or {}, format="json")


def test_put_creates_then_renames_a_topic(api_client):
    created = _put(api_client, "product-news", {"name": "Product news"})
    assert created.status_code == 201, created.content
    assert created.json()["key"] == "product-news"
    assert created.json()["subscribers"] == 0

    renamed = _put(api_client, "product-news", {"name": "News"})
    assert renamed.status_code == 200
    assert Topic.objects.get().name == "News"

    shown = api_client.get("/api/topics/product-news")
    assert shown.status_code == 200
    assert shown.json()["name"] == "News"


@pytest.mark.parametrize("key", ["has space", "ü-nicode", "x" * 129])
def test_a_topic_key_must_be_a_slug(api_client, key):
    response = _put(api_client, key)
    assert response.status_code == 400
    assert response.json()["error"]["fields"]["key"]


def test_unknown_fields_and_unknown_topics(api_client):
    assert _put(api_client, "t", {"nmae": "typo"}).status_code == 400
    missing = api_client.get("/api/topics/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "topic_not_found"
    subscribe = api_client.post("/api/topics/nope/subscribers", {"userIds": ["a"]}, format="json")
    assert subscribe.status_code == 404


def test_subscribe_in_bulk_reports_unknown_users_and_is_idempotent(api_client):
    _put(api_client, "news")
    alice, bob = RecipientFactory(external_id="alice"), RecipientFactory(external_id="bob")

    first = api_client.post(
        "/api/topics/news/subscribers",
        {"userIds": ["alice", "ghost", "bob"]},
        format="json",
    )
    assert first.status_code == 200, first.content
    assert first.json() == {"added": 2, "unchanged": 0, "unknownUserIds": ["ghost"]}

    again = api_client.post("/api/topics/news/subscribers", {"userIds": ["bob"]}, format="json")
    assert again.json() == {"added": 0, "unchanged": 1, "unknownUserIds": []}
    assert set(TopicSubscription.objects.values_list("recipient_id", flat=True)) == {
        alice.pk,
        bob.pk,
    }
    assert api_client.get("/api/topics/news").json()["subscribers"] == 2


@pytest.mark.parametrize("method", ["post", "delete"])
def test_a_repeated_user_id_is_refused_not_merged(api_client, method):
    _put(api_client, "news")
    RecipientFactory(external_id="alice")

    response = getattr(api_client, method)(
        "/api/topics/news/subscribers", {"userIds": ["alice", "alice"]}, format="json"
    )

    assert response.status_code == 400, response.content
    assert set(response.json()["error"]["fields"]) == {"userIds"}
    assert not TopicSubscription.objects.exists()


def test_unsubscribe_in_bulk(api_client):
    _put(api_client, "news")
    RecipientFactory(external_id="alice"), RecipientFactory(external_id="bob")
    api_client.post("/api/topics/news/subscribers", {"userIds": ["alice", "bob"]}, format="json")

    response = api_client.delete(
        "/api/topics/news/subscribers", {"userIds": ["alice", "ghost"]}, format="json"
    )

    assert response.status_code == 200
    assert response.json() == {"removed": 1, "unchanged": 0, "unknownUserIds": ["ghost"]}
    assert list(TopicSubscription.objects.values_list("recipient__external_id", flat=True)) == [
        "bob"
    ]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"userIds": []},
        {"userIds": "alice"},
        {"userIds": [42]},
        {"userIds": ["a"] * 1001},
        {"userIds": ["a"], "extra": 1},
    ],
)
def test_bad_user_id_lists_are_400(api_client, body):
    _put(api_client, "news")
    response = api_client.post("/api/topics/news/subscribers", body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "validation_error"


def test_a_thousand_user_ids_fit_in_one_request(api_client):
    # 1,000 userIds of 60 characters are ~64 KiB: over the single-request body limit.
    _put(api_client, "news")
    user_ids = [f"user-{i:055d}" for i in range(1000)]
    response = api_client.post("/api/topics/news/subscribers", {"userIds": user_ids}, format="json")
    assert response.status_code == 200, response.content
    assert len(response.json()["unknownUserIds"]) == 1000


def test_subscribers_are_listed_by_cursor(api_client, django_assert_max_num_queries):
    _put(api_client, "news")
    users = [RecipientFactory().external_id for _ in range(5)]
    api_client.post("/api/topics/news/subscribers", {"userIds": users}, format="json")

    seen: list[str] = []
    url = "/api/topics/news/subscribers?pageSize=2"
    while url:
        with django_assert_max_num_queries(4):  # API key, topic, page (no count)
            page = api_client.get(url).json()
        seen += [subscriber["userId"] for subscriber in page["results"]]
        url = page["next"]
    assert seen == users  # recipient id order, each once
    assert "subscribedAt" in page["results"][0]


def test_admin_shows_topics_with_subscriber_counts_and_searches_subscriptions(admin_client):
    topic = Topic.objects.create(key="news")
    recipient = RecipientFactory(external_id="findme")
    TopicSubscription.objects.create(topic=topic, recipient=recipient)

    topics = admin_client.get("/admin/preferences/topic/")
    assert topics.status_code == 200
    assert b"news" in topics.content
    assert b'<td class="field-subscriber_count">1</td>' in topics.content
    found = admin_client.get("/admin/preferences/topicsubscription/?q=findme")
    assert found.status_code == 200
    assert b"findme" in found.content
    assert (
        admin_client.get("/admin/preferences/topicsubscription/?q=nobody").content.count(b"findme")
        == 0
    )
