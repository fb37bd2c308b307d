"""The idempotency key of a request: ``idempotencyKey`` in the body or an ``Idempotency-Key``
header, held to the same rule (notifications.api.fields), and equal if both are given."""

from __future__ import annotations

import re

from drf_spectacular.utils import OpenApiParameter
from rest_framework.request import Request

from notifications.api.fields import IDEMPOTENCY_KEY_MAX_LENGTH, TEXT_PATTERN, ecma_pattern
from notifications.exceptions import ServiceError

HEADER = "Idempotency-Key"

IDEMPOTENCY_KEY_HEADER = OpenApiParameter(
    HEADER,
    {
        "type": "string",
        "minLength": 1,
        "maxLength": IDEMPOTENCY_KEY_MAX_LENGTH,
        "pattern": ecma_pattern(TEXT_PATTERN),
    },
    OpenApiParameter.HEADER,
    description="Same as `idempotencyKey` in the body; if both are given they must be equal.",
)


def idempotency_key(request: Request, body_key: str | None) -> str | None:
    header_key = request.headers.get(HEADER)
    if header_key is not None:
        problem = _header_problem(header_key)
        if problem:
            # Named like the body field: one key, whichever way it is given.
            raise ServiceError(
                f"Invalid {HEADER} header.", fields={"idempotencyKey": [f"{HEADER}: {problem}"]}
            )
    if header_key is not None and body_key is not None and header_key != body_key:
        raise ServiceError(
            "Idempotency-Key header and idempotencyKey differ.",
            fields={"idempotencyKey": ["Does not match the Idempotency-Key header."]},
        )
    return body_key if body_key is not None else header_key


def _header_problem(value: str) -> str | None:
    if not value:
        return "May not be empty."
    if len(value) > IDEMPOTENCY_KEY_MAX_LENGTH:
        return f"At most {IDEMPOTENCY_KEY_MAX_LENGTH} characters."
    if not re.search(TEXT_PATTERN, value):
        return "Control characters are not allowed."
    if not value.isascii():
        # HTTP header values are bytes; WSGI hands them over as latin-1, so a UTF-8 key sent
        # in a header and the same key in the body would be two keys.
        return "Only ASCII characters are allowed in a header."
    return None
