"""Replaying an accepted request: same idempotency key, same body → the stored answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rest_framework_api_key.models import APIKey

from notifications.exceptions import IdempotencyConflict
from notifications.models import Broadcast, Notification


@dataclass(frozen=True)
class AcceptResult:
    body: dict[str, Any]
    replayed: bool


def replay_if_known(
    model: type[Notification] | type[Broadcast],
    *,
    api_key: APIKey,
    idempotency_key: str | None,
    fingerprint: str,
) -> AcceptResult | None:
    """The stored answer of an earlier request with this key, None if there was none.

    Raises IdempotencyConflict when the key was used with a different body.
    """
    if not idempotency_key:
        return None
    existing = (
        model.objects.filter(api_key=api_key, idempotency_key=idempotency_key)  # type: ignore[attr-defined]
        .only("request_fingerprint", "accept_response")
        .first()
    )
    if existing is None:
        return None
    if existing.request_fingerprint != fingerprint:
        raise IdempotencyConflict(
            "This idempotency key was already used with a different request body.",
            fields={"idempotencyKey": ["Already used with a different body."]},
        )
    return AcceptResult(body=existing.accept_response, replayed=True)
