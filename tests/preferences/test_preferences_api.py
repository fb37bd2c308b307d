"""GET and PUT /api/recipients/{userId}/preferences."""

from __future__ import annotations

import pytest

from channels.lanes import EMAIL, INAPP
from preferences.models import Preference
from tests.factories import CategoryFactory, PreferenceFactory, RecipientFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def ana():
    return RecipientFactory(external_id="ana")


@pytest.fixture
def categories():
    CategoryFactory(key="orders")
    CategoryFactory(key="marketing")
    CategoryFactory(key="security", critical=True)


def put(client, rules, user_id="ana"):
    return client.put(
        f"/api/recipients/{user_id}/preferences", {"preferences": rules}, format="json"
    )


def get(client, user_id="ana"):
    return client.get(f"/api/recipients/{user_id}/preferences")


def assert_error(response, status, code):
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["code"] == code
    return error


def rule(category, channel, enabled):
    return {"category": category, "channel": channel, "enabled": enabled}


def test_get_without_rules(api_client, ana):
    response = get(api_client)
    assert response.status_code == 200
    assert response.json() == {"preferences": []}


def test_put_then_get(api_client, ana, categories):
    rules = [
        rule(None, None, False),
        rule("orders", None, True),
        rule(None, "sms", False),
        rule("marketing", "email", True),
    ]

    response = put(api_client, rules)

    assert response.status_code == 200
    assert response.json() == {"preferences": rules}
    assert get(api_client).json() == {"preferences": rules}
    assert Preference.objects.filter(recipient=ana).count() == 4


def test_category_and_channel_may_be_omitted_for_all(api_client, ana, categories):
    response = put(api_client, [{"enabled": False}, {"category": "orders", "enabled": True}])

    assert response.status_code == 200
    assert response.json()["preferences"] == [
        rule(None, None, False),
        rule("orders", None, True),
    ]


def test_put_replaces_every_rule(api_client, ana, categories):
    put(api_client, [rule(None, None, False), rule("orders", "email", False)])

    response = put(api_client, [rule("marketing", None, False)])

    assert response.status_code == 200
    assert get(api_client).json() == {"preferences": [rule("marketing", None, False)]}
    assert Preference.objects.filter(recipient=ana).count() == 1


def test_put_an_empty_list_clears_the_rules(api_client, ana, categories):
    put(api_client, [rule(None, None, False)])

    response = put(api_client, [])

    assert response.status_code == 200
    assert get(api_client).json() == {"preferences": []}


def test_put_leaves_other_recipients_alone(api_client, ana, categories):
    bob = RecipientFactory(external_id="bob")
    PreferenceFactory(recipient=bob, channel="email", enabled=False)

    put(api_client, [rule(None, None, True)])

    assert get(api_client, "bob").json() == {"preferences": [rule(None, "email", False)]}


def test_opting_in_to_a_critical_category_is_allowed(api_client, ana, categories):
    response = put(api_client, [rule("security", "email", True)])
    assert response.status_code == 200


@pytest.mark.parametrize(
    "rules",
    [
        [rule("security", None, False)],
        [rule("orders", None, False), rule("security", "sms", False)],
    ],
)
def test_opting_out_of_a_critical_category_is_refused(api_client, ana, categories, rules):
    put(api_client, [rule(None, "sms", False)])

    error = assert_error(put(api_client, rules), 400, "validation_error")

    assert "preferences" in error["fields"]
    assert "critical" in str(error["fields"])
    # The old rules are untouched: nothing of a refused PUT is applied.
    assert get(api_client).json() == {"preferences": [rule(None, "sms", False)]}


@pytest.mark.parametrize(
    "rules",
    [
        [rule("orders", "email", False), rule("orders", "email", True)],
        [rule(None, None, False), rule(None, None, True)],
        [rule(None, "sms", False), {"channel": "sms", "enabled": True}],
        [{"enabled": False}, rule(None, None, False)],
    ],
    ids=["category-channel", "all-all", "all-channel", "omitted-is-null"],
)
def test_duplicate_rules_are_refused(api_client, ana, categories, rules):
    error = assert_error(put(api_client, rules), 400, "validation_error")
    assert set(error["fields"]) == {"preferences"}
    assert not Preference.objects.exists()


@pytest.mark.parametrize(
    "body",
    [
        {"preferences": [rule("gardening", None, False)]},
        {"preferences": [rule(None, "pigeon", False)]},
        {"preferences": [rule(None, None, "maybe")]},
        {"preferences": [{"category": "orders"}]},
        {"preferences": [{"category": "orders", "enabled": False, "why": "spam"}]},
        {"preferences": [[None, None, False]]},
        {"preferences": {"orders": False}},
        {"preferences": None},
        {},
        {"preferences": [], "extra": 1},
    ],
    ids=[
        "unknown-category",
        "unknown-channel",
        "enabled-not-boolean",
        "enabled-missing",
        "unknown-rule-field",
        "rule-not-object",
        "not-a-list",
        "null",
        "missing",
        "unknown-field",
    ],
)
def test_invalid_preferences(api_client, ana, categories, body):
    PreferenceFactory(recipient=ana, channel="sms", enabled=False)

    response = api_client.put("/api/recipients/ana/preferences", body, format="json")

    error = assert_error(response, 400, "validation_error")
    assert error["fields"]
    assert list(Preference.objects.values_list("channel", "enabled")) == [("sms", False)]


def test_unknown_user(api_client, db, categories):
    assert_error(get(api_client, "nobody"), 404, "recipient_not_found")
    assert_error(put(api_client, [], "nobody"), 404, "recipient_not_found")


def test_rules_put_through_the_api_apply_at_accept(
    api_client, ana, order_shipped, broker, django_capture_on_commit_callbacks
):
    put(api_client, [rule(None, None, False), rule("orders", "inapp", True)])

    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.post(
            "/api/notify", {"userId": "ana", "event": "order_shipped"}, format="json"
        )

    assert response.json()["deliveries"] == [
        {"channel": "email", "status": "skipped", "reason": "opted_out"},
        {"channel": "inapp", "status": "queued"},
    ]
    assert broker.queued(EMAIL.queue) == 0
    assert broker.queued(INAPP.queue) == 1
