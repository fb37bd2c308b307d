"""Errors the services raise for the API to turn into 4xx JSON answers."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, fields: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class RecipientNotFound(NotFound):
    code = "recipient_not_found"


class Unprocessable(ServiceError):
    status_code = 422
    code = "unprocessable"


class UnknownEvent(Unprocessable):
    code = "unknown_event"


class NoChannels(Unprocessable):
    code = "no_channels"


class TemplateError(Unprocessable):
    code = "template_error"


class IdempotencyConflict(ServiceError):
    status_code = 409
    code = "idempotency_conflict"
