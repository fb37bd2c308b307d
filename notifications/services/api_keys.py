"""API keys with scopes. The key itself is djangorestframework-api-key's: only its SHA-512
hash is stored, and a presented key is compared with that hash in constant time."""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from django.db import transaction
from rest_framework_api_key.models import APIKey

from notifications.models import ApiKeyAccess, ApiScope

ALL_SCOPES: tuple[str, ...] = tuple(ApiScope.values)


class UnknownScope(ValueError):
    pass


def parse_scopes(text: str) -> list[str]:
    """``"notify, read"`` -> ``["notify", "read"]``; an unknown name is an error, not ignored."""
    scopes = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(scopes) - set(ALL_SCOPES))
    if unknown:
        raise UnknownScope(
            f"Unknown scope(s) {', '.join(unknown)}; choose from {', '.join(ALL_SCOPES)}."
        )
    return list(dict.fromkeys(scopes))


@transaction.atomic
def api_key_create(
    *, name: str, scopes: Iterable[str] = ALL_SCOPES, rate_limit: str = ""
) -> tuple[APIKey, str]:
    """A new key and its plain text, which is shown once and never stored."""
    chosen = parse_scopes(",".join(scopes))
    access = ApiKeyAccess(scopes=chosen, rate_limit=rate_limit)
    access.clean_fields(exclude=["api_key"])  # a bad rate limit fails here, not per request
    api_key, key = APIKey.objects.create_key(name=name)
    access.api_key = cast(APIKey, api_key)
    access.save()
    return cast(APIKey, api_key), key
