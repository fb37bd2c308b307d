"""Cursor pagination that refuses what it cannot use, rather than ignoring it or failing."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any
from urllib import parse

from django.core import signing
from django.core.exceptions import ValidationError as DjangoValidationError
from django.utils.crypto import constant_time_compare
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.request import Request
from rest_framework.utils.urls import replace_query_param

# What DRF's encode_cursor writes: base64 (standard alphabet, padded) of "o=…&r=1&p=…".
_CURSOR = re.compile(r"[A-Za-z0-9+/]+={0,2}")
CURSOR_PATTERN = f"^{_CURSOR.pattern}$"
_CURSOR_TOKENS = frozenset({"o", "r", "p"})
# A cursor carries a signature ("s") of its other tokens: a forged one that is still a value
# of the ordering field ("r=1&p=1" on a list ordered by an integer) would otherwise be taken.
_SIGNER = signing.Signer(salt="notifications.api.pagination.cursor")


def signed_cursor(tokens: str) -> str:
    """The cursor for DRF's query-string ``tokens`` ("o=1&p=…"), as the links carry it."""
    signed = f"{tokens}&s={_SIGNER.signature(tokens)}" if tokens else f"s={_SIGNER.signature('')}"
    return base64.b64encode(signed.encode("ascii")).decode("ascii")


def _verified(decoded: str) -> str:
    tokens, separator, signature = decoded.rpartition("s=")
    if not separator or (tokens and not tokens.endswith("&")):
        raise ValueError("unsigned")
    tokens = tokens.removesuffix("&")
    if not constant_time_compare(signature, _SIGNER.signature(tokens)):
        raise ValueError("bad signature")
    return tokens


_PAGE_SIZE = re.compile(r"[1-9][0-9]*")
_OFFSET = re.compile(r"0|[1-9][0-9]{0,8}")


class StrictCursorPagination(CursorPagination):
    """DRF's cursor pagination, with its soft spots made 400s:

    - a ``pageSize`` that is not a positive integer in plain ASCII digits is refused, not
      silently replaced by the default (a larger one is still capped at ``max_page_size``);
    - a ``cursor`` that is not exactly what ``encode_cursor`` writes is refused: DRF's decoder
      skips characters outside the base64 alphabet, so "!!!!", "%00" or "" decoded to an empty
      cursor, the first page; and an undecodable one was a 404 (a missing page);
    - a cursor whose position is not a value of the ordering field (base64 is easy to forge)
      is refused before it reaches the query, where it would be a 500.
    """

    page_size_query_param = "pageSize"

    def get_page_size(self, request: Request) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return int(self.page_size or 0)
        # int() would take " 5", "5_0" and other scripts' digits; str.isdigit() would take "²".
        if not _PAGE_SIZE.fullmatch(raw):
            raise ValidationError({self.page_size_query_param: ["A positive integer."]})
        maximum = int(self.max_page_size or 0)
        if maximum and len(raw) > len(str(maximum)):
            return maximum  # also spares int() a number of thousands of digits
        size = int(raw)
        return min(size, maximum) if maximum else size

    def decode_cursor(self, request: Request) -> Cursor | None:
        encoded = request.query_params.get(self.cursor_query_param)
        if encoded is None:
            return None
        try:
            if not _CURSOR.fullmatch(encoded):
                raise ValueError("not base64")
            decoded = base64.b64decode(encoded.encode("ascii"), validate=True).decode("ascii")
            tokens = parse.parse_qs(_verified(decoded), keep_blank_values=True, strict_parsing=True)
            if not set(tokens) <= _CURSOR_TOKENS or any(len(v) != 1 for v in tokens.values()):
                raise ValueError("unknown or repeated token")
            offset = tokens.get("o", ["0"])[0]
            reverse = tokens.get("r", ["0"])[0]
            if not _OFFSET.fullmatch(offset) or int(offset) > self.offset_cutoff:
                raise ValueError("offset")
            if reverse not in ("0", "1"):
                raise ValueError("reverse")
        except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
            raise ValidationError({self.cursor_query_param: ["Invalid cursor."]}) from exc
        position: Any = tokens.get("p", [None])[0]  # a string; the stubs say int
        return Cursor(offset=int(offset), reverse=reverse == "1", position=position)

    def encode_cursor(self, cursor: Cursor) -> str:
        # DRF's, signed (see _SIGNER).
        tokens: dict[str, Any] = {}
        if cursor.offset != 0:
            tokens["o"] = str(cursor.offset)
        if cursor.reverse:
            tokens["r"] = "1"
        if cursor.position is not None:
            tokens["p"] = cursor.position
        encoded = signed_cursor(parse.urlencode(tokens, doseq=True))
        return replace_query_param(str(self.base_url), self.cursor_query_param, encoded)  # type: ignore[no-any-return]

    def paginate_queryset(
        self, queryset: Any, request: Request, view: Any = None
    ) -> list[Any] | None:
        cursor = self.decode_cursor(request)
        if cursor is not None and cursor.position is not None:
            self._check_position(queryset, str(cursor.position))
        return super().paginate_queryset(queryset, request, view)  # type: ignore[no-any-return]

    def _check_position(self, queryset: Any, position: str) -> None:
        ordering = self.ordering[0] if isinstance(self.ordering, list | tuple) else self.ordering
        field = queryset.model._meta.get_field(str(ordering).lstrip("-"))
        try:
            if "\x00" in position:
                raise ValueError("NUL")
            field.to_python(position)
        except (DjangoValidationError, ValueError, TypeError) as exc:
            raise ValidationError({self.cursor_query_param: ["Invalid cursor."]}) from exc

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters: list[dict[str, Any]] = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"] = {"type": "integer", "minimum": 1}
            elif parameter["name"] == self.cursor_query_param:
                # Opaque: only values taken from a "next"/"previous" link are accepted. The
                # pattern is what the schema can say about them.
                parameter["schema"] = {"type": "string", "pattern": CURSOR_PATTERN}
                parameter["description"] = (
                    "Opaque; take it from the `next` or `previous` link of the previous page."
                )
        return parameters


def filter_params(request: Request, paginator: Any) -> dict[str, str]:
    """The query parameters other than the paginator's own, for a filter serializer.

    A plain dict, not the QueryDict: DRF reads a QueryDict as an HTML form, where an empty value
    ("?userId=") means "not given"; a filter serializer refuses it like any invalid value. A
    repeated parameter never gets here (notifications.api.requests).
    """
    params = request.query_params.dict()
    params.pop(paginator.cursor_query_param, None)
    params.pop(paginator.page_size_query_param, None)
    return params
