"""Rate limits per API key, and per recipient on the inbox API, shared by every API process
through Redis (the `limits` library).

A caller over its limit gets 429 with ``Retry-After`` (notifications.api.errors renders it). A
key's limit is NOTIFY_API_RATE_LIMIT, or its own ``ApiKeyAccess.rate_limit``; a recipient's
NOTIFY_INBOX_RATE_LIMIT (all its tokens together). Counting uses a
sliding window counter: two Redis integers per key and one round trip per request, without the
burst of twice the limit that fixed windows allow across a window boundary.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from typing import Any, cast

from django.conf import settings
from limits import RateLimitItem, parse_many
from limits.errors import ConfigurationError, StorageError
from limits.storage import Storage, storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle
from rest_framework_api_key.models import APIKey

logger = logging.getLogger(__name__)


def storage_url() -> str:
    """NOTIFY_API_RATE_LIMIT_STORAGE_URL (its default is worked out in config/settings.py;
    the system check refuses a scheme `limits` does not know)."""
    return str(settings.NOTIFY_API_RATE_LIMIT_STORAGE_URL)


@functools.lru_cache(maxsize=8)
def _limiter(url: str) -> SlidingWindowCounterRateLimiter:
    timeout = float(settings.NOTIFY_API_RATE_LIMIT_TIMEOUT_SECONDS)
    storage = storage_from_string(
        url,
        wrap_exceptions=True,
        key_prefix="notify-api",
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
    )
    return SlidingWindowCounterRateLimiter(cast(Storage, storage))


@functools.lru_cache(maxsize=256)
def parsed_limits(text: str) -> tuple[RateLimitItem, ...]:
    return tuple(parse_many(text))


class _FailOpen:
    """When Redis is unreachable the API keeps accepting, unlimited, and stops asking Redis for
    a few seconds: a rate limit is not worth refusing notifications or adding a connect
    timeout to every request (the accept path already survives a broker outage)."""

    pause_seconds = 5.0

    def __init__(self) -> None:
        self._until = 0.0
        self._lock = threading.Lock()

    def active(self) -> bool:
        return time.monotonic() < self._until

    def reset(self) -> None:
        self._until = 0.0

    def trip(self, error: Exception, *, misconfigured: bool = False) -> None:
        with self._lock:
            if self.active():
                return
            self._until = time.monotonic() + self.pause_seconds
        if misconfigured:
            # The system check refuses these settings; a process started without it must not
            # answer every request 500 either.
            logger.error(
                "API rate limit not enforced for %ss: its settings are wrong (%s)",
                self.pause_seconds,
                error,
            )
        else:
            logger.warning("API rate limit not enforced for %ss: %s", self.pause_seconds, error)


fail_open = _FailOpen()


class _RateThrottle(BaseThrottle):
    """One caller's limits (``_limits``) counted under its ``_identity`` in Redis."""

    def __init__(self) -> None:
        self._wait: float | None = None

    def _identity(self, request: Request) -> str | None:
        raise NotImplementedError

    def _limits(self, request: Request) -> str:
        raise NotImplementedError

    def allow_request(self, request: Request, view: Any) -> bool:
        identity = self._identity(request)
        if identity is None or fail_open.active():
            return True
        text = self._limits(request)
        if not text:  # "" disables the limit
            return True
        try:
            limiter = _limiter(storage_url())
            items = parsed_limits(text)
        except (ConfigurationError, ValueError) as exc:
            fail_open.trip(exc, misconfigured=True)
            return True
        try:
            for item in items:
                if not limiter.hit(item, identity):
                    reset_at = limiter.get_window_stats(item, identity).reset_time
                    self._wait = max(1.0, math.ceil(reset_at - time.time()))
                    return False
        except StorageError as exc:
            fail_open.trip(exc)
        return True

    def wait(self) -> float | None:
        return self._wait


class ApiKeyRateThrottle(_RateThrottle):
    def _identity(self, request: Request) -> str | None:
        api_key = request.auth
        return api_key.prefix if isinstance(api_key, APIKey) else None

    def _limits(self, request: Request) -> str:
        access = getattr(request.auth, "access", None)
        return (access.rate_limit if access is not None else "") or str(
            settings.NOTIFY_API_RATE_LIMIT
        )


class RecipientRateThrottle(_RateThrottle):
    """The inbox API's: per recipient, whichever of its tokens (and devices) calls."""

    def _identity(self, request: Request) -> str | None:
        recipient_id = getattr(request.user, "recipient_id", None)
        return None if recipient_id is None else f"recipient:{recipient_id}"

    def _limits(self, request: Request) -> str:
        return str(settings.NOTIFY_INBOX_RATE_LIMIT)
