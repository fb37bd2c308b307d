"""``Authorization: Bearer <recipient token>``: the inbox API's caller is one recipient's app.

The token (preferences.access) is checked without the database, then its recipient and
generation with one primary-key read: a revoked token or an erased recipient is a 401. The
views of the inbox API take this authentication only, so an API key opens none of them and a
recipient token opens nothing else.
"""

from __future__ import annotations

from typing import Any

from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from preferences import access
from preferences import selectors as recipients


class RecipientClient:
    """The authenticated caller: one recipient, through an app."""

    is_authenticated = True

    def __init__(self, recipient_id: int, external_id: str) -> None:
        self.recipient_id = recipient_id
        self.external_id = external_id

    def __str__(self) -> str:
        return f"recipient:{self.recipient_id}"


class RecipientTokenAuthentication(BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[RecipientClient, access.TokenClaims] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        keyword, _, token = header.partition(" ")
        if keyword != self.keyword or not token.strip():
            raise AuthenticationFailed("Expected 'Authorization: Bearer <recipient token>'.")
        try:
            claims = access.token_verify(token.strip())
        except access.InvalidToken as exc:
            raise AuthenticationFailed("Invalid or expired recipient token.") from exc
        external_id = recipients.recipient_of_token(
            recipient_id=claims.recipient_id, generation=claims.generation
        )
        if external_id is None:
            raise AuthenticationFailed("Revoked recipient token, or the recipient is gone.")
        return RecipientClient(claims.recipient_id, external_id), claims

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


class IsRecipient(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.user, RecipientClient)
