"""``Authorization: Api-Key <key>``; keys are stored hashed by djangorestframework-api-key.

What a key may call is its scopes (notifications.api.permissions); how often, its rate limit
(notifications.api.throttling).
"""

from __future__ import annotations

from typing import Any, cast

from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework_api_key.models import APIKey


class ApiKeyClient:
    """The authenticated caller: an internal service, not a person."""

    is_authenticated = True

    def __init__(self, api_key: APIKey) -> None:
        self.api_key = api_key
        access = getattr(api_key, "access", None)  # no ApiKeyAccess row: no scopes
        self.scopes: frozenset[str] = frozenset(access.scopes if access is not None else ())

    def __str__(self) -> str:
        return f"api-key:{self.api_key.name}"


def _usable_key(key: str) -> APIKey | None:
    """The library's ``get_from_key`` (look up by the public prefix, then compare SHA-512
    hashes in constant time), with the key's scopes loaded in the same query."""
    prefix, _, _ = key.partition(".")
    if "\x00" in prefix:  # PostgreSQL text cannot even be compared with a NUL
        return None
    api_key = APIKey.objects.filter(prefix=prefix, revoked=False).select_related("access").first()
    if api_key is None or not api_key.is_valid(key):
        return None
    return cast(APIKey, api_key)


class ApiKeyAuthentication(BaseAuthentication):
    keyword = "Api-Key"

    def authenticate(self, request: Request) -> tuple[ApiKeyClient, APIKey] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        keyword, _, key = header.partition(" ")
        if keyword != self.keyword or not key.strip():
            raise AuthenticationFailed("Expected 'Authorization: Api-Key <key>'.")
        api_key = _usable_key(key.strip())
        if api_key is None or api_key.has_expired:
            raise AuthenticationFailed("Invalid, revoked or expired API key.")
        return ApiKeyClient(api_key), api_key

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


class HasApiKey(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.auth, APIKey)
