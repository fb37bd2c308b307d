"""OpenAPI description of our two authentications, API keys and recipient tokens
(drf-spectacular extensions), the JSON error format and the error answers common to every
operation."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers

from notifications.api.fields import (
    USER_ID_MAX_LENGTH,
    USER_ID_PATTERN,
    PhoneField,
    RejectUnknownFieldsMixin,
    TrueField,
    UniqueListField,
    ecma_pattern,
)


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    target_class = "notifications.api.auth.ApiKeyAuthentication"
    name = "ApiKeyAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Api-Key <key>`; create one with `manage.py create_api_key <name>`.",
        }


class RecipientTokenScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    target_class = "notifications.api.recipient_auth.RecipientTokenAuthentication"
    name = "RecipientToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A recipient token from `POST /api/recipients/{userId}/tokens`.",
        }


class AutoSchema(SpectacularAutoSchema):
    """drf-spectacular's, saying the rest of what our input fields enforce
    (notifications.api.fields), so that schema and service agree in both directions."""

    def _map_basic_serializer(self, serializer: Any, direction: str) -> dict[str, Any]:
        schema: dict[str, Any] = super()._map_basic_serializer(serializer, direction)
        if isinstance(serializer, RejectUnknownFieldsMixin) or (
            isinstance(serializer, type) and issubclass(serializer, RejectUnknownFieldsMixin)
        ):
            schema["additionalProperties"] = False  # unknown keys are a 400
            # Object-level rules the serializer's validate() enforces (e.g. exactly one key).
            schema.update(getattr(serializer, "openapi_object", {}))
        return schema

    def _map_serializer_field(
        self, field: Any, direction: str, bypass_extensions: bool = False
    ) -> Any:
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        # DRF refuses "" unless allow_blank; say so for the fields of input serializers (those
        # refusing unknown keys), not for output ones, where "" is a value (a delivery's reason).
        if (
            isinstance(field, serializers.CharField)
            and not field.allow_blank
            and not field.read_only
            and _in_input_serializer(field)
            and isinstance(schema, dict)
            and schema.get("type") == "string"
        ):
            schema.setdefault("minLength", 1)
        if isinstance(schema, dict):
            if isinstance(field, UniqueListField):
                schema["uniqueItems"] = True  # a repeated entry is a 400
            elif isinstance(field, TrueField):
                schema["enum"] = [True]
            elif isinstance(field, PhoneField):
                # Validity is phonenumbers' metadata: a format a client (or fuzzer) must know.
                schema["format"] = "phone"
        return schema

    # drf-spectacular documents a body only for POST, PUT and PATCH; a DELETE that declares one
    # with @extend_schema(request=...) reads it (unsubscribing userIds from a topic).
    _documenting_delete = False

    def _get_request_body(self, direction: str = "request") -> Any:
        if self.method != "DELETE":
            body = super()._get_request_body(direction)
            if isinstance(body, dict):
                # An empty PUT/POST body is a 400 (notifications.api.requests), even where
                # every field is optional: "{}" is how to send none.
                body["required"] = True
            return body
        self.method, self._documenting_delete = "POST", True
        try:
            return _raw_schema_body_required(super()._get_request_body(direction))
        finally:
            self.method, self._documenting_delete = "DELETE", False

    def get_request_serializer(self) -> Any:
        if self._documenting_delete:
            return None  # reached only when no body is declared: a DELETE's is never guessed
        return super().get_request_serializer()


def _raw_schema_body_required(body: Any) -> Any:
    """A body declared as a raw schema (a ``oneOf`` no serializer can state) is as required as
    a serializer's: drf-spectacular marks it optional, which would make "no body" schema-valid.
    """
    if isinstance(body, dict) and "$ref" not in str(body.get("content", "")):
        body["required"] = True
    return body


def _in_input_serializer(field: Any) -> bool:
    parent = getattr(field, "parent", None)
    while parent is not None:
        if isinstance(parent, RejectUnknownFieldsMixin):
            return True
        parent = getattr(parent, "parent", None)
    return False


class ErrorDetailSerializer(serializers.Serializer):  # type: ignore[type-arg]
    code = serializers.CharField()
    message = serializers.CharField()
    # Per field (or "non_field_errors"), the reasons it was refused; nested for nested input.
    fields = serializers.JSONField(required=False)  # type: ignore[assignment]


class ErrorSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """Every API error: ``{"error": {"code", "message", "fields"?}}``."""

    error = ErrorDetailSerializer()


ERROR_RESPONSE = OpenApiResponse(ErrorSerializer, description="The JSON error format.")

# Answers any operation can give, whatever its own annotations say: documented here once so that
# a view cannot forget them (the fuzzer checks that every status code it meets is documented).
_ANY_SECURED = {
    "401": "Missing, malformed, unknown, revoked or expired API key.",
    "403": "The API key lacks the scope this operation needs.",
    "429": "Over the API key's rate limit; retry after `Retry-After` seconds.",
}
_WITH_BODY = {
    "400": "The body is not valid JSON or not a valid request (see `fields`).",
    "413": "The body is over the size limit.",
    "415": "The body is not JSON.",
}
_WITH_QUERY = {"400": "A query parameter is invalid (see `fields`)."}
_WITH_PATH = {"404": "Nothing at this path (or a path parameter of the wrong form)."}


def state_path_rules(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """drf-spectacular post-processing hook: a ``user_id`` path parameter follows the userId
    rule (the views check it, notifications.api.requests); the converter only says "a segment"."""
    rule = {
        "type": "string",
        "pattern": ecma_pattern(USER_ID_PATTERN),
        "maxLength": USER_ID_MAX_LENGTH,
    }
    for path_item in result.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict):
                continue
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path" and parameter.get("name") == "user_id":
                    parameter["schema"] = dict(rule)
                    operation.setdefault("responses", {}).setdefault(
                        "400", _error_response("The request is invalid (see `fields`).")
                    )
    return result


def document_common_errors(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """drf-spectacular post-processing hook: adds the error answers every operation of a kind
    can give (above) to each operation that does not document them already."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    if "Error" not in schemas:
        # Normally there through ERROR_RESPONSE; needed if no view names it.
        schemas["Error"] = {
            "type": "object",
            "properties": {"error": {"type": "object"}},
            "required": ["error"],
        }
    for path_item in result.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            errors: dict[str, str] = {}
            parameters = operation.get("parameters", [])
            if any(p.get("in") == "path" for p in parameters):
                errors |= _WITH_PATH
            if any(p.get("in") == "query" for p in parameters):
                errors |= _WITH_QUERY
            if "requestBody" in operation:
                errors |= _WITH_BODY
            if any(requirement for requirement in operation.get("security", [])):
                errors |= _ANY_SECURED
            for code, description in errors.items():
                operation["responses"].setdefault(code, _error_response(description))
            if "429" in operation["responses"]:
                operation["responses"]["429"].setdefault("headers", _RETRY_AFTER)
    return result


_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before the key's next request can pass.",
        "schema": {"type": "integer", "minimum": 1},
    }
}


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
