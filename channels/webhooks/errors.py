"""What a webhook answers when it will not act on a request.

The webhooks face the internet, so a refusal is a 4xx in the API's error shape and one WARNING
line naming the path and the reason, never the payload (it may hold addresses) and never a
traceback: Django's own handling of these errors logs the security ones at ERROR with a
traceback, which lets anyone fill the error log. Errors of our own while applying an event stay
500s, so the provider retries later.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError

from notifications.api.errors import error_body

logger = logging.getLogger(__name__)


class MalformedWebhook(ValueError):
    """An authenticated webhook whose body we cannot read (not the provider's format, a field
    of the wrong type or size): 400, the provider's retry cannot make it readable."""


def refuse(
    request: HttpRequest, status: int, code: str, message: str, **headers: str
) -> JsonResponse:
    logger.warning("webhook %s %s refused (%s): %s", request.method, request.path, status, message)
    response = JsonResponse(error_body(code, message), status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def method_not_allowed(request: HttpRequest, allowed: list[str]) -> JsonResponse:
    return refuse(
        request,
        405,
        "method_not_allowed",
        f"Method {request.method} not allowed.",
        Allow=", ".join(allowed),
    )


def answering_unreadable_with_4xx(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Request bodies we cannot read, or will not (too big, too many fields, a broken multipart
    body, a field of the wrong type), are the sender's error: 4xx in our shape."""

    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except RequestDataTooBig:
            return refuse(request, 413, "payload_too_large", "The request body is too large.")
        except MalformedWebhook as exc:
            return refuse(request, 400, "malformed_webhook", str(exc))
        except (SuspiciousOperation, MultiPartParserError) as exc:
            # TooManyFieldsSent and the like; their text names a setting, not the payload.
            return refuse(request, 400, "bad_request", f"{type(exc).__name__}: {exc}")

    return wrapped


def text_field(value: Any, *, field: str, max_length: int, required: bool = False) -> str | None:
    """A provider's string field as we can store it (PostgreSQL text holds no NUL), or None
    when it is absent; MalformedWebhook when it is something else."""
    if value is None or value == "":
        if required:
            raise MalformedWebhook(f"{field} is missing.")
        return None
    if not isinstance(value, str):
        raise MalformedWebhook(f"{field} is not a string.")
    if "\x00" in value or len(value) > max_length:
        raise MalformedWebhook(f"{field} holds a NUL character or is over {max_length} long.")
    if "\ufffd" in value:
        # Django decodes bodies with errors="replace": the sender's bytes were not UTF-8.
        raise MalformedWebhook(f"{field} is not UTF-8.")
    return value
