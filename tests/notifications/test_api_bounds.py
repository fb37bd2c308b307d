"""Every body has a size limit (413) and every stored string a length limit (400, never 500)."""

from __future__ import annotations

import json

import pytest

from preferences.models import Recipient, Topic
from tests.factories import RecipientFactory

pytestmark = pytest.mark.django_db


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.content
    return response.json()["error"]


def test_a_notify_body_over_the_limit_is_413(api_client, settings):
    settings.NOTIFY_MAX_BODY_BYTES = 1024
    body = json.dumps({"userId": "u", "event": "e", "data": {"x": "y" * 2000}})

    error = _error(api_client.post("/api/notify", body, content_type="application/json"), 413)
    assert error["code"] == "payload_too_large"


def test_a_broadcast_body_over_its_limit_is_413(api_client, settings):
    settings.NOTIFY_FANOUT_MAX_BODY_BYTES = 2048
    body = json.dumps({"event": "e", "audience": {"userIds": [f"u-{i}" for i in range(500)]}})

    response = api_client.post("/api/broadcasts", body, content_type="application/json")
    assert _error(response, 413)["code"] == "payload_too_large"


@pytest.mark.parametrize(
    ("field", "limit"), [("userId", 255), ("event", 128), ("idempotencyKey", 255)]
)
def test_notify_fields_are_bounded(api_client, field, limit):
    body = {"userId": "u-1", "event": "order_shipped", field: "x" * (limit + 1)}

    error = _error(api_client.post("/api/notify", body, format="json"), 400)
    assert field in error["fields"]


def test_an_idempotency_key_header_is_bounded(api_client):
    response = api_client.post(
        "/api/notify",
        {"userId": "u-1", "event": "order_shipped"},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k" * 256,
    )

    assert "idempotencyKey" in _error(response, 400)["fields"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        # Valid for the email validator (up to 320 characters) but not for the column (254).
        ("email", f"{'a' * 64}@{'b' * 63}.{'c' * 63}.{'d' * 63}.example"),
        ("locale", "x" * 36),
        ("timezone", "x" * 65),
    ],
)
def test_recipient_fields_are_bounded(api_client, field, value):
    response = api_client.put("/api/recipients/u-1", {field: value}, format="json")

    assert field in _error(response, 400)["fields"]
    assert not Recipient.objects.exists()


def test_a_user_id_in_the_path_is_bounded(api_client):
    response = api_client.put(f"/api/recipients/{'u' * 256}", {}, format="json")
    assert "userId" in _error(response, 400)["fields"]


def test_a_device_token_is_bounded(api_client):
    recipient = RecipientFactory()

    response = api_client.post(
        f"/api/recipients/{recipient.external_id}/devices",
        {"platform": "fcm", "token": "t" * 4097},
        format="json",
    )
    assert "token" in _error(response, 400)["fields"]


def test_topic_key_and_name_are_bounded(api_client):
    assert (
        "key"
        in _error(api_client.put(f"/api/topics/{'k' * 129}", {}, format="json"), 400)["fields"]
    )
    response = api_client.put("/api/topics/news", {"name": "n" * 256}, format="json")
    assert "name" in _error(response, 400)["fields"]
    assert not Topic.objects.exists()


def test_a_suppressed_address_is_bounded(api_client):
    response = api_client.post(
        "/api/suppressions", {"channel": "email", "address": "a" * 321}, format="json"
    )

    assert "address" in _error(response, 400)["fields"]
