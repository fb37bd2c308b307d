"""Events and templates are cached per process for NOTIFY_CATALOG_CACHE_SECONDS."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from notifications import selectors
from notifications.models import Delivery, Template
from tests.factories import RecipientFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def cached_catalog(settings):
    settings.NOTIFY_CATALOG_CACHE_SECONDS = 60
    selectors._catalog_cache.clear()
    yield
    selectors._catalog_cache.clear()


def _notify(api_client, user_id: str) -> tuple[dict, int]:
    with CaptureQueriesContext(connection) as queries:
        response = api_client.post(
            "/api/notify",
            {
                "userId": user_id,
                "event": "order_shipped",
                "channels": ["email"],
                "data": {"orderId": "1"},
            },
            format="json",
        )
    assert response.status_code == 202
    return response.json(), len(queries)


def test_second_accept_skips_the_catalog_queries_until_the_entry_expires(
    api_client, order_shipped, cached_catalog
):
    user = RecipientFactory().external_id
    _, first_queries = _notify(api_client, user)
    Template.objects.filter(event=order_shipped, channel="email").update(subject="Edited")

    second, second_queries = _notify(api_client, user)

    assert second_queries == first_queries - 2  # no event query, no template query
    assert (
        Delivery.objects.get(notification_id=second["id"]).content["subject"] == "Order 1 shipped"
    )

    # Once the entry is past its expiry, the edit shows.
    _expires, entry = selectors._catalog_cache["order_shipped"]
    selectors._catalog_cache["order_shipped"] = (0.0, entry)
    third, _ = _notify(api_client, user)
    assert Delivery.objects.get(notification_id=third["id"]).content["subject"] == "Edited"


def test_unknown_events_are_cached_too_but_answer_422(api_client, cached_catalog):
    user = RecipientFactory().external_id
    for _ in range(2):
        response = api_client.post("/api/notify", {"userId": user, "event": "nope"}, format="json")
        assert response.status_code == 422
    assert selectors._catalog_cache["nope"][1] is None
