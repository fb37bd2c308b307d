"""Scopes: each API view names the one scope a key needs to call it (SECURITY.md has the table).

A view that names none refuses every key, so an endpoint added without thinking about who may
call it is closed, not open.
"""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from notifications.api.auth import ApiKeyClient


class HasScope(BasePermission):
    message = "This API key lacks the scope this endpoint needs."

    def has_permission(self, request: Request, view: Any) -> bool:
        scope = getattr(view, "required_scope", None)
        scope = None if scope is None else str(scope)
        client = request.user
        if scope is None or not isinstance(client, ApiKeyClient):
            return False
        if scope in client.scopes:
            return True
        self.message = f"This API key lacks the '{scope}' scope."
        return False
