from __future__ import annotations

import json
import math
from typing import Any

from django.conf import settings
from rest_framework.exceptions import APIException, ParseError, UnsupportedMediaType
from rest_framework.parsers import JSONParser
from rest_framework.utils.mediatypes import _MediaType


class PayloadTooLarge(APIException):
    status_code = 413
    default_code = "payload_too_large"
    default_detail = "Request body is too large."


class BoundedJSONParser(JSONParser):
    """JSON only, refusing bodies over a size limit (with or without Content-Length)."""

    # The setting that holds the limit; bulk endpoints name a larger one.
    limit_setting = "NOTIFY_MAX_BODY_BYTES"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        limit = int(getattr(settings, self.limit_setting))
        # JSON is UTF-8 (RFC 8259 §8.1); a body announced in another charset would be read as
        # UTF-8 anyway, so it is refused as a media type we do not take.
        charset = _MediaType(media_type or "").params.get("charset", "utf-8")
        if charset.strip('"').lower() not in ("utf-8", "utf8"):
            raise UnsupportedMediaType(media_type or "", f"JSON must be UTF-8, not {charset}.")
        if stream is None:
            return {}
        raw = stream.read(limit + 1)
        if len(raw) > limit:
            raise PayloadTooLarge(f"Request body exceeds {limit} bytes.")
        try:
            return json.loads(
                raw.decode("utf-8"),
                parse_constant=_reject_constant,
                parse_float=_finite_float,
                object_pairs_hook=_unique_keys,
            )
        # RecursionError: "[[[[..." nested deeper than the interpreter's stack.
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ParseError(f"Malformed JSON: {exc}") from exc


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # RFC 8259 leaves a repeated name's meaning open; json.loads keeps the last, so
    # {"userId": "p1", "userId": "p2"} meant p2 here and possibly p1 to a proxy or a log reader.
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise ValueError(f"duplicate key {key!r}")
        data[key] = value
    return data


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    # 1e400 parses to inf, which PostgreSQL's jsonb refuses when the row is written.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value
