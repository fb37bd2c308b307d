"""``Authorization: Api-Key <key>``; keys are stored hashed by djangorestframework-api-key."""

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

    def __str__(self) -> str:
        return f"api-key:{self.api_key.name}"


class ApiKeyAuthentication(BaseAuthentication):
    keyword = "Api-Key"

    def authenticate(self, request: Request) -> tuple[ApiKeyClient, APIKey] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        keyword, _, key = header.partition(" ")
        if keyword != self.keyword or not key.strip():
            raise AuthenticationFailed("Expected 'Authorization: Api-Key <key>'.")
        try:
            api_key = cast(APIKey, APIKey.objects.get_from_key(key.strip()))
        except APIKey.DoesNotExist:
            api_key = None
        if api_key is None or api_key.has_expired or api_key.revoked:
            raise AuthenticationFailed("Invalid, revoked or expired API key.")
        return ApiKeyClient(api_key), api_key

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


class HasApiKey(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.auth, APIKey)
