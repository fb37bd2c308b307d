"""Cursor pagination that refuses what it cannot use, rather than ignoring it or failing."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request


class StrictCursorPagination(CursorPagination):
    """DRF's cursor pagination, with its three soft spots made 400s:

    - a ``pageSize`` that is not a positive integer is refused, not silently replaced by the
      default (a larger one is still capped at ``max_page_size``);
    - an undecodable ``cursor`` is a bad parameter (400), not a missing page (404);
    - a cursor whose position is not a value of the ordering field (base64 is easy to forge)
      is refused before it reaches the query, where it would be a 500.
    """

    page_size_query_param = "pageSize"

    def get_page_size(self, request: Request) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return int(self.page_size or 0)
        try:
            size = int(raw)
        except ValueError:
            size = 0
        if size < 1:
            raise ValidationError({self.page_size_query_param: ["A positive integer."]})
        return min(size, int(self.max_page_size or size))

    def decode_cursor(self, request: Request) -> Any:
        try:
            return super().decode_cursor(request)
        except NotFound as exc:
            raise ValidationError({self.cursor_query_param: ["Invalid cursor."]}) from exc

    def paginate_queryset(
        self, queryset: Any, request: Request, view: Any = None
    ) -> list[Any] | None:
        cursor = self.decode_cursor(request)
        if cursor is not None and cursor.position is not None:
            self._check_position(queryset, cursor.position)
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
        return parameters


def filter_params(request: Request, paginator: Any) -> dict[str, str]:
    """The query parameters other than the paginator's own, for a filter serializer.

    A plain dict, not the QueryDict: DRF reads a QueryDict as an HTML form, where an empty value
    ("?userId=") means "not given"; a filter serializer refuses it like any invalid value.
    """
    params = request.query_params.dict()
    params.pop(paginator.cursor_query_param, None)
    params.pop(paginator.page_size_query_param, None)
    return params
