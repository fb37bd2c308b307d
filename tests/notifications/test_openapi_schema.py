"""What the OpenAPI schema promises, where the schemathesis run (tests/test_api_fuzz.py) found
it promising less or other than the API does."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.django_db

ERROR_REF = "#/components/schemas/Error"


@pytest.fixture
def schema(client) -> dict[str, Any]:
    response = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    return response.json()


def operations(schema: dict[str, Any]):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            yield f"{method.upper()} {path}", operation


def error_ref(operation: dict[str, Any], status: str) -> str | None:
    response = operation["responses"].get(status)
    if response is None:
        return None
    return response["content"]["application/json"]["schema"]["$ref"]


def test_every_operation_documents_the_answers_any_request_can_get(schema):
    # 401 (no or a bad key) was undocumented everywhere but POST /api/notify and broadcasts.
    for name, operation in operations(schema):
        for status in ("401", "403", "429"):
            assert error_ref(operation, status) == ERROR_REF, (name, status)
        if "requestBody" in operation:
            for status in ("400", "413", "415"):
                assert error_ref(operation, status) == ERROR_REF, (name, status)
        if any(p["in"] == "query" for p in operation.get("parameters", [])):
            assert error_ref(operation, "400") == ERROR_REF, name
        if any(p["in"] == "path" for p in operation.get("parameters", [])):
            assert error_ref(operation, "404") == ERROR_REF, name


def test_the_error_format_is_a_schema_not_just_a_description(schema):
    components = schema["components"]["schemas"]
    assert components["Error"]["required"] == ["error"]
    detail = components["ErrorDetail"]
    assert set(detail["required"]) == {"code", "message"}
    assert set(detail["properties"]) == {"code", "message", "fields"}


@pytest.mark.parametrize(
    "component, field",
    [
        ("Notification", "idempotencyKey"),
        ("Delivery", "queuedAt"),
        ("Delivery", "sendingAt"),
        ("Delivery", "sentAt"),
        ("Delivery", "deliveredAt"),
        ("Delivery", "failedAt"),
        ("Delivery", "skippedAt"),
        ("Device", "deactivatedAt"),
    ],
)
def test_fields_that_can_be_null_say_so(schema, component, field):
    # The API answered null where the schema said "string".
    assert schema["components"]["schemas"][component]["properties"][field]["nullable"] is True


@pytest.mark.parametrize(
    "component", ["NotifyRequest", "BroadcastRequest", "Recipient", "Device", "Preferences"]
)
def test_request_bodies_that_refuse_unknown_keys_say_so(schema, component):
    assert schema["components"]["schemas"][component]["additionalProperties"] is False


def test_required_strings_may_not_be_blank(schema):
    properties = schema["components"]["schemas"]["NotifyRequest"]["properties"]
    assert properties["userId"]["minLength"] == 1
    assert properties["event"]["minLength"] == 1
    # Output fields may be "": a delivery's reason, its last error.
    assert "minLength" not in schema["components"]["schemas"]["Delivery"]["properties"]["reason"]


def test_unsubscribing_from_a_topic_documents_its_body(schema):
    # drf-spectacular leaves DELETE bodies out; this one is required (the userIds).
    delete = schema["paths"]["/api/topics/{key}/subscribers"]["delete"]
    body = delete["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/UserIds"}


def test_a_new_topic_key_is_documented_as_a_slug(schema):
    put = schema["paths"]["/api/topics/{key}"]["put"]
    (key,) = [p for p in put["parameters"] if p["name"] == "key"]
    assert key["schema"]["pattern"] == "^[-a-zA-Z0-9_]+$"
    assert key["schema"]["maxLength"] == 128


def test_page_size_is_documented_as_positive(schema):
    parameters = schema["paths"]["/api/notifications"]["get"]["parameters"]
    (page_size,) = [p for p in parameters if p["name"] == "pageSize"]
    assert page_size["schema"] == {"type": "integer", "minimum": 1}
