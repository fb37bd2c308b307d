"""What every API view checks before it reads anything: the query string and the path.

- A query parameter the operation does not know is a 400, as is one given twice: Django's
  QueryDict would silently answer the last value (``?status=sent&status=failed`` listed the
  failed ones only).
- A ``user_id`` path segment must pass the userId rule (notifications.api.fields), the same
  as a userId in a body: ``PUT /api/recipients/a%FFb`` stored "a%FFb".
- A query value that is not UTF-8 (``?userId=%ED%A0%80``) is a 400: Django decodes it with
  U+FFFD in place of the bytes, a value nobody sent (the same bytes in the path are a 400 too).
- A PUT, POST or PATCH with an empty body is a 400: DRF reads it as ``{}``, so
  ``PUT /api/recipients/p1`` with nothing in it wiped the email and the phone.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, unquote_to_bytes

from rest_framework.exceptions import ParseError, ValidationError
from rest_framework.request import Request

from notifications.api.fields import user_id_errors


class StrictRequestMixin:
    """For APIView subclasses. ``query_parameters``: the operation's own; a list view also
    takes its paginator's and its ``filter_serializer_class``'s fields (on GET)."""

    query_parameters: tuple[str, ...] = ()
    filter_serializer_class: Any = None
    # An operation whose request has no body (a cancel) takes an empty one.
    takes_empty_body = False

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        # After authentication, permissions and throttling: a caller without a key gets 401.
        super().initial(request, *args, **kwargs)  # type: ignore[misc]
        check_query_params(request, allowed=self.allowed_query_parameters(request))
        if "user_id" in kwargs:
            errors = user_id_errors(kwargs["user_id"])
            if errors:
                raise ValidationError({"userId": errors})
        if not self.takes_empty_body:
            check_body_present(request)

    def allowed_query_parameters(self, request: Request) -> set[str]:
        allowed = set(self.query_parameters)
        if request.method == "GET":
            paginator = getattr(self, "paginator", None)
            if paginator is not None:
                allowed |= {paginator.cursor_query_param, paginator.page_size_query_param}
            if self.filter_serializer_class is not None:
                allowed |= set(self.filter_serializer_class().fields)
        return allowed


def check_body_present(request: Request) -> None:
    # DRF's stream is None exactly when it would answer {} without asking the parser.
    if request.method in ("PUT", "POST", "PATCH") and request.stream is None:
        raise ParseError("Malformed JSON: the body is empty.")


def check_query_params(request: Request, *, allowed: set[str]) -> None:
    errors: dict[str, list[str]] = {}
    for part in request.META.get("QUERY_STRING", "").split("&"):
        name, _, value = part.partition("=")
        try:
            unquote_to_bytes(value.replace("+", " ")).decode("utf-8")
        except UnicodeDecodeError:
            errors[unquote(name.replace("+", " "))] = ["Not valid UTF-8."]
    for name in request.query_params:
        if name not in allowed:
            errors[name] = ["Unknown query parameter."]
        elif len(request.query_params.getlist(name)) > 1:
            errors[name] = ["Give this parameter once."]
    if errors:
        raise ValidationError(errors)
