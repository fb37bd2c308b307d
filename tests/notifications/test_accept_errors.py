"""Every refusal of POST /api/notify: the right status, the JSON error shape, nothing written."""

from __future__ import annotations

import json
from datetime import timedelta
from urllib.parse import urlencode

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from notifications.models import Delivery, Notification
from tests.conftest import QUEUES
from tests.factories import EventFactory, RecipientFactory, create_api_key

pytestmark = pytest.mark.django_db


@pytest.fixture
def recipient():
    return RecipientFactory(external_id="u-42")


def valid_body(**overrides):
    return {"userId": "u-42", "event": "order_shipped", "data": {"orderId": "9"}, **overrides}


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) <= {"code", "message", "fields"}
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    return error


@pytest.fixture
def nothing_written(broker, django_capture_on_commit_callbacks):
    """Runs the test with on-commit callbacks captured, then checks that it left no trace."""
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        yield
    assert callbacks == []
    assert not Notification.objects.exists()
    assert not Delivery.objects.exists()
    assert {queue: broker.queued(queue) for queue in QUEUES} == dict.fromkeys(QUEUES, 0)


def post_raw(client, content: str | bytes, content_type: str = "application/json"):
    return client.post("/api/notify", data=content, content_type=content_type)


@pytest.mark.parametrize(
    "content",
    [
        '{"userId": "u-42", "event": ',
        "{'userId': 'u-42'}",
        '{"userId": "u-42", "event": "order_shipped", "data": {"x": NaN}}',
        b'{"userId": "\xff"}',
    ],
    ids=["truncated", "single-quotes", "nan", "not-utf8"],
)
def test_malformed_json(api_client, order_shipped, recipient, nothing_written, content):
    assert_error(post_raw(api_client, content), 400, "malformed_json")


def test_json_array_body(api_client, order_shipped, recipient, nothing_written):
    error = assert_error(post_raw(api_client, json.dumps([valid_body()])), 400, "validation_error")
    assert "non_field_errors" in error["fields"]


def test_json_scalar_body(api_client, order_shipped, recipient, nothing_written):
    error = assert_error(post_raw(api_client, '"u-42"'), 400, "validation_error")
    assert "non_field_errors" in error["fields"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"userId": 42}, "userId"),
        ({"userId": None}, "userId"),
        ({"userId": ""}, "userId"),
        ({"event": ["order_shipped"]}, "event"),
        ({"channels": "email"}, "channels"),
        ({"channels": []}, "channels"),
        ({"channels": ["email", 3]}, "channels"),
        ({"data": ["orderId", "9"]}, "data"),
        ({"data": "orderId=9"}, "data"),
        ({"idempotencyKey": 7}, "idempotencyKey"),
        ({"idempotencyKey": "k" * 256}, "idempotencyKey"),
    ],
)
def test_wrong_types(api_client, order_shipped, recipient, nothing_written, overrides, field):
    response = api_client.post("/api/notify", valid_body(**overrides), format="json")
    error = assert_error(response, 400, "validation_error")
    assert set(error["fields"]) == {field}


@pytest.mark.parametrize("missing", ["userId", "event"])
def test_missing_required_field(api_client, order_shipped, recipient, nothing_written, missing):
    body = valid_body()
    del body[missing]
    error = assert_error(
        api_client.post("/api/notify", body, format="json"), 400, "validation_error"
    )
    assert set(error["fields"]) == {missing}


def test_unknown_channel(api_client, order_shipped, recipient, nothing_written):
    response = api_client.post(
        "/api/notify", valid_body(channels=["email", "pigeon"]), format="json"
    )
    error = assert_error(response, 400, "validation_error")
    assert set(error["fields"]) == {"channels"}


def test_unknown_field(api_client, order_shipped, recipient, nothing_written):
    # "channel" for "channels": a typo must not silently fall back to the default channels.
    response = api_client.post("/api/notify", valid_body(channel=["sms"]), format="json")
    error = assert_error(response, 400, "validation_error")
    assert error["fields"] == {"channel": ["Unknown field."]}


def test_unknown_event(api_client, order_shipped, recipient, nothing_written):
    response = api_client.post("/api/notify", valid_body(event="order_lost"), format="json")
    error = assert_error(response, 422, "unknown_event")
    assert set(error["fields"]) == {"event"}


def test_unknown_user(api_client, order_shipped, nothing_written):
    response = api_client.post("/api/notify", valid_body(userId="nobody"), format="json")
    assert_error(response, 404, "recipient_not_found")


def test_event_without_default_channels_and_none_given(
    api_client, recipient, order_shipped, nothing_written
):
    EventFactory(key="silent", default_channels=[])
    response = api_client.post("/api/notify", valid_body(event="silent"), format="json")
    error = assert_error(response, 422, "no_channels")
    assert set(error["fields"]) == {"channels"}


def test_body_over_the_limit(api_client, order_shipped, recipient, settings, nothing_written):
    settings.NOTIFY_MAX_BODY_BYTES = 200
    body = valid_body(data={"padding": "x" * 200})
    assert len(json.dumps(body)) > 200
    response = api_client.post("/api/notify", body, format="json")
    assert_error(response, 413, "payload_too_large")


def test_body_at_the_limit_is_accepted(
    api_client, order_shipped, recipient, settings, broker, django_capture_on_commit_callbacks
):
    content = json.dumps(valid_body())
    settings.NOTIFY_MAX_BODY_BYTES = len(content)
    with django_capture_on_commit_callbacks(execute=True):
        response = post_raw(api_client, content)
    assert response.status_code == 202


def test_form_encoded_body(api_client, order_shipped, recipient, nothing_written):
    response = post_raw(
        api_client,
        urlencode({"userId": "u-42", "event": "order_shipped"}),
        content_type="application/x-www-form-urlencoded",
    )
    assert_error(response, 415, "unsupported_media_type")


def test_no_authorization_header(order_shipped, recipient, nothing_written):
    response = APIClient().post("/api/notify", valid_body(), format="json")
    assert_error(response, 401, "unauthorized")
    assert response["WWW-Authenticate"] == "Api-Key"


@pytest.mark.parametrize(
    "header",
    [
        "Api-Key not.a-key",
        "Api-Key ",
        "Bearer abc.def",
        "Token abc.def",
    ],
)
def test_bad_authorization_header(order_shipped, recipient, nothing_written, header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.post("/api/notify", valid_body(), format="json")
    assert_error(response, 401, "unauthorized")
    assert response["WWW-Authenticate"] == "Api-Key"


def test_wrong_secret_for_an_existing_prefix(order_shipped, recipient, nothing_written):
    _, key = create_api_key()
    prefix, _, secret = key.partition(".")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {prefix}.{'x' * len(secret)}")
    assert_error(client.post("/api/notify", valid_body(), format="json"), 401, "unauthorized")


def test_revoked_key(order_shipped, recipient, nothing_written):
    api_key, key = create_api_key()
    api_key.revoked = True
    api_key.save()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    assert_error(client.post("/api/notify", valid_body(), format="json"), 401, "unauthorized")


def test_expired_key(order_shipped, recipient, nothing_written):
    api_key, key = create_api_key()
    api_key.expiry_date = timezone.now() - timedelta(minutes=1)
    api_key.save()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    assert_error(client.post("/api/notify", valid_body(), format="json"), 401, "unauthorized")


def test_header_and_body_idempotency_keys_differ(
    api_client, order_shipped, recipient, nothing_written
):
    response = api_client.post(
        "/api/notify",
        valid_body(idempotencyKey="a"),
        format="json",
        headers={"Idempotency-Key": "b"},
    )
    error = assert_error(response, 400, "bad_request")
    assert set(error["fields"]) == {"idempotencyKey"}


def test_idempotency_header_too_long(api_client, order_shipped, recipient, nothing_written):
    response = api_client.post(
        "/api/notify", valid_body(), format="json", headers={"Idempotency-Key": "k" * 256}
    )
    error = assert_error(response, 400, "bad_request")
    assert set(error["fields"]) == {"idempotencyKey"}


def test_wrong_method(api_client, nothing_written):
    assert_error(api_client.get("/api/notify"), 405, "method_not_allowed")


@pytest.mark.parametrize(
    "content",
    [
        '{"userId": "u-42", "event": "order_shipped", "data": {"x": 1e400}}',
        '{"userId": "u-42", "event": "order_shipped", "data": {"x": -1e400}}',
        '{"userId": "u-42", "event": "order_shipped", "data": {"x": '
        + "[" * 5000
        + "]" * 5000
        + "}}",
    ],
    ids=["overflowing-float", "overflowing-negative-float", "nested-beyond-the-stack"],
)
def test_json_that_cannot_be_stored_is_malformed(
    api_client, order_shipped, recipient, nothing_written, content
):
    assert_error(post_raw(api_client, content), 400, "malformed_json")


@pytest.mark.parametrize(
    "data",
    [
        '{"x": "a\\u0000b"}',
        '{"a\\u0000": "b"}',
        '{"x": ["ok", {"y": "\\u0000"}]}',
        '{"x": "\\ud800"}',
        '{"\\udfff": 1}',
    ],
    ids=["nul-in-value", "nul-in-key", "nul-nested", "lone-surrogate", "lone-surrogate-key"],
)
def test_data_with_characters_postgres_cannot_hold(
    api_client, order_shipped, recipient, nothing_written, data
):
    content = '{"userId": "u-42", "event": "order_shipped", "data": ' + data + "}"
    error = assert_error(post_raw(api_client, content), 400, "validation_error")
    assert set(error["fields"]) == {"data"}


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_data_nested_too_deep(api_client, order_shipped, recipient, nothing_written):
    response = api_client.post("/api/notify", valid_body(data=nested(65)), format="json")
    error = assert_error(response, 400, "validation_error")
    assert set(error["fields"]) == {"data"}


def test_data_nested_to_the_limit_is_accepted_and_readable(
    api_client, order_shipped, recipient, broker, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.post("/api/notify", valid_body(data=nested(64)), format="json")

    assert response.status_code == 202
    listed = api_client.get("/api/notifications").json()["results"]
    assert listed[0]["data"] == nested(64)
