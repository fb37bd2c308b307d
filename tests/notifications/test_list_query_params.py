"""The list endpoints' query parameters: what is not understood is a 400, never ignored or a 500.

Regressions found by the schemathesis run (tests/test_api_fuzz.py).
"""

from __future__ import annotations

import base64

import pytest

from preferences.models import Suppression, Topic, TopicSubscription
from tests.factories import DeliveryFactory, NotificationFactory, RecipientFactory

pytestmark = pytest.mark.django_db

LISTS = ["/api/notifications", "/api/suppressions", "/api/topics/news/subscribers"]


@pytest.fixture(autouse=True)
def one_of_each():
    recipient = RecipientFactory(external_id="u-42")
    DeliveryFactory(notification=NotificationFactory(recipient=recipient))
    Suppression.objects.create(channel="email", address="gone@example.com", reason="manual")
    topic = Topic.objects.create(key="news")
    TopicSubscription.objects.create(topic=topic, recipient=recipient)


def assert_refused(response, field: str) -> None:
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert field in error["fields"]


def forged_cursor(position: str) -> str:
    return base64.b64encode(f"p={position}".encode()).decode()


@pytest.mark.parametrize("url", LISTS)
def test_every_list_answers_with_defaults(api_client, url):
    response = api_client.get(url)
    assert response.status_code == 200
    assert len(response.json()["results"]) == 1


@pytest.mark.parametrize("url", LISTS)
@pytest.mark.parametrize("size", ["0", "-1", "null", "1.5", ""])
def test_a_page_size_that_is_not_a_positive_integer_is_refused(api_client, url, size):
    # It used to be replaced by the default without a word.
    assert_refused(api_client.get(url, {"pageSize": size}), "pageSize")


@pytest.mark.parametrize("url", LISTS)
def test_a_page_size_over_the_maximum_is_still_capped(api_client, url):
    assert api_client.get(url, {"pageSize": "100000"}).status_code == 200


@pytest.mark.parametrize("url", LISTS)
def test_an_undecodable_cursor_is_a_bad_parameter_not_a_missing_page(api_client, url):
    assert_refused(api_client.get(url, {"cursor": "not base64!"}), "cursor")


@pytest.mark.parametrize("url", LISTS)
@pytest.mark.parametrize("position", ["not-a-date-or-number", "1\x00"])
def test_a_forged_cursor_position_is_refused_before_the_query(api_client, url, position):
    # A position the ordering field cannot hold was a 500 (a DB or conversion error).
    assert_refused(api_client.get(url, {"cursor": forged_cursor(position)}), "cursor")


@pytest.mark.parametrize("url", LISTS)
def test_the_next_link_still_works(api_client, url):
    RecipientFactory(external_id="u-43")
    DeliveryFactory(notification=NotificationFactory())
    Suppression.objects.create(channel="sms", address="+14155550100", reason="manual")
    TopicSubscription.objects.create(
        topic=Topic.objects.get(key="news"), recipient=RecipientFactory()
    )
    first = api_client.get(url, {"pageSize": "1"}).json()
    second = api_client.get(first["next"])
    assert second.status_code == 200
    assert second.json()["results"] and second.json()["results"] != first["results"]


@pytest.mark.parametrize(
    "url, params",
    [
        ("/api/notifications", {"userId": ""}),
        ("/api/notifications", {"status": ""}),
        ("/api/suppressions", {"address": ""}),
        ("/api/suppressions", {"channel": ""}),
    ],
)
def test_an_empty_filter_is_refused_not_ignored(api_client, url, params):
    # "?userId=" used to list every notification, as if no filter had been given.
    assert_refused(api_client.get(url, params), next(iter(params)))


@pytest.mark.parametrize(
    "url, misspelt", [("/api/notifications", "user_id"), ("/api/suppressions", "adress")]
)
def test_an_unknown_filter_is_refused_not_ignored(api_client, url, misspelt):
    assert_refused(api_client.get(url, {misspelt: "u-42"}), misspelt)
