from __future__ import annotations

import importlib

import pytest
from django.apps import apps

from notifications.models import Delivery
from preferences.models import Suppression
from tests.factories import RecipientFactory

pytestmark = pytest.mark.django_db


def test_suppress_by_hand_list_and_remove(api_client):
    created = api_client.post(
        "/api/suppressions", {"channel": "email", "address": "Someone@Example.com"}, format="json"
    )
    assert created.status_code == 201
    assert created.json()["address"] == "someone@example.com"
    assert created.json()["reason"] == "manual"
    again = api_client.post(
        "/api/suppressions", {"channel": "email", "address": "someone@example.com"}, format="json"
    )
    assert again.status_code == 200 and again.json()["id"] == created.json()["id"]

    listed = api_client.get("/api/suppressions?address=SOMEONE@example.com").json()
    assert [row["id"] for row in listed["results"]] == [created.json()["id"]]
    assert api_client.get("/api/suppressions?channel=sms").json()["results"] == []

    assert api_client.delete(f"/api/suppressions/{created.json()['id']}").status_code == 204
    assert api_client.delete(f"/api/suppressions/{created.json()['id']}").status_code == 404
    assert not Suppression.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"channel": "email", "address": "not-an-email"}, "non_field_errors"),
        ({"channel": "sms", "address": "12345"}, "non_field_errors"),
        ({"channel": "push", "address": "x"}, "channel"),
        ({"channel": "email", "address": "a@b.co", "reason": "because"}, "reason"),
        ({"channel": "email", "address": "a@b.co", "extra": 1}, "extra"),
    ],
)
def test_bad_suppressions_are_400(api_client, body, field):
    response = api_client.post("/api/suppressions", body, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"
    assert not Suppression.objects.exists()


def test_suppressed_destinations_are_skipped_at_accept(api_client, order_shipped):
    recipient = RecipientFactory(email="gone@example.com", phone="+14155550123")
    api_client.post(
        "/api/suppressions", {"channel": "email", "address": "GONE@example.com"}, format="json"
    )
    api_client.post(
        "/api/suppressions", {"channel": "sms", "address": "+14155550123"}, format="json"
    )

    response = api_client.post(
        "/api/notify",
        {"userId": recipient.external_id, "event": "order_shipped", "channels": ["email", "sms"]},
        format="json",
    )

    assert response.status_code == 202
    reasons = {d["channel"]: d.get("reason") for d in response.json()["deliveries"]}
    # SMS has no provider by default, which is reported before the suppression.
    assert reasons == {"email": "suppressed", "sms": "channel_not_configured"}
    assert Delivery.objects.get(channel="email").reason == "suppressed"


@pytest.mark.parametrize(
    ("email", "suppressed"),
    [
        ("e6@exämple.com", "e6@xn--exmple-cua.com"),  # what a bounce for the mail names
        ("e6@xn--exmple-cua.com", "E6@EXÄMPLE.com"),
        ("e6@EXÄMPLE.com", "e6@exämple.com"),
    ],
)
def test_an_idn_address_is_suppressed_in_either_form(api_client, order_shipped, email, suppressed):
    # One canonical form (the domain's IDNA ASCII, lower-cased) when stored and when compared:
    # the Unicode form and the punycode one were two addresses, and the mail still went.
    assert api_client.put("/api/recipients/e6", {"email": email}, format="json").status_code == 201
    created = api_client.post(
        "/api/suppressions", {"channel": "email", "address": suppressed}, format="json"
    )
    assert created.status_code == 201, created.content
    assert created.json()["address"] == "e6@xn--exmple-cua.com"

    response = api_client.post(
        "/api/notify",
        {"userId": "e6", "event": "order_shipped", "channels": ["email"]},
        format="json",
    )

    assert response.status_code == 202, response.content
    assert [d.get("reason") for d in response.json()["deliveries"]] == ["suppressed"]


def test_the_migration_canonicalises_addresses_stored_before(order_shipped):
    migration = importlib.import_module("preferences.migrations.0005_canonical_email_addresses")
    recipient = RecipientFactory(email="e6@exämple.com")
    Suppression.objects.create(channel="email", address="f6@exämple.com", reason="manual")
    Suppression.objects.create(channel="email", address="g6@exämple.com", reason="manual")
    Suppression.objects.create(channel="email", address="g6@xn--exmple-cua.com", reason="manual")

    migration.forwards(apps, None)

    recipient.refresh_from_db()
    assert recipient.email == "e6@xn--exmple-cua.com"
    assert sorted(Suppression.objects.values_list("address", flat=True)) == [
        "f6@xn--exmple-cua.com",
        "g6@xn--exmple-cua.com",
    ]
