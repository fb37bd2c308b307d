"""Per-provider rate limits shared by every worker process (the ``limits`` library on Redis).

A moving window: no stretch of one second (or whatever the limit's period is) holds more
calls than the limit, wherever it starts, so a provider account limited to 30/s never sees 31
in one second from us, whatever the number of workers. Each message a call carries takes one
entry (an ESP batch call of 50 messages takes 50).

Transactional traffic is served first: a bulk call must find room both in its own window,
``NOTIFY_RATE_LIMIT_BULK_SHARE`` of the limit (80 %), and in the shared one; a transactional
call needs only the shared one. However large a broadcast, the remaining share of every
second stays free for OTPs and password resets.

A call over the limit waits its turn in short sleeps, at most
``NOTIFY_RATE_LIMIT_MAX_WAIT_SECONDS``; ``RateLimitWaitExceeded`` says how long to come back
after when that ran out. Redis unreachable: the call goes through unlimited (the provider's
own 429 remains the backstop) rather than failing deliveries over our bookkeeping.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from dataclasses import dataclass

from django.conf import settings
from limits import RateLimitItem, parse_many
from limits.errors import StorageError
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from channels.gate import guard_redis

logger = logging.getLogger(__name__)

_KEY_PREFIX = "notify:ratelimit"
_BULK = "bulk"


class RateLimitWaitExceeded(Exception):
    def __init__(self, provider: str, retry_after: float) -> None:
        super().__init__(f"{provider}: rate limit, no room within the allowed wait")
        self.retry_after = retry_after


@dataclass(frozen=True)
class ProviderLimits:
    """The windows one call must find room in, in the order they are taken."""

    shared: tuple[RateLimitItem, ...]
    bulk: tuple[RateLimitItem, ...]


def limits_for(provider: str) -> ProviderLimits | None:
    """The provider's limits from NOTIFY_RATE_LIMITS ("30/second", "500/second;20000/minute"),
    None when it has none."""
    text = str(settings.NOTIFY_RATE_LIMITS.get(provider, "") or "")
    return _parsed(text, float(settings.NOTIFY_RATE_LIMIT_BULK_SHARE)) if text else None


@functools.cache
def _parsed(text: str, bulk_share: float) -> ProviderLimits:
    shared = tuple(parse_many(text))
    bulk = tuple(
        type(item)(max(1, int(item.amount * bulk_share)), item.multiples, namespace=_BULK)
        for item in shared
    )
    return ProviderLimits(shared=shared, bulk=bulk)


@functools.cache
def _limiter(url: str) -> MovingWindowRateLimiter:
    storage = RedisStorage(
        url,
        wrap_exceptions=True,
        key_prefix=_KEY_PREFIX,
        socket_timeout=guard_redis.SOCKET_TIMEOUT,
        socket_connect_timeout=guard_redis.SOCKET_TIMEOUT,
    )
    return MovingWindowRateLimiter(storage)


def acquire(provider: str, *, bulk: bool, max_wait: float | None = None, cost: int = 1) -> float:
    """Take one call's entries (``cost``: the messages it carries, for a batch call) in the
    provider's windows, waiting for room; returns the seconds waited. Raises
    RateLimitWaitExceeded when there was no room within ``max_wait``."""
    limits = limits_for(provider)
    if limits is None or not guard_redis.available():
        return 0.0
    allowed = float(settings.NOTIFY_RATE_LIMIT_MAX_WAIT_SECONDS) if max_wait is None else max_wait
    started = time.monotonic()
    deadline = started + allowed
    windows = [*limits.bulk, *limits.shared] if bulk else list(limits.shared)
    try:
        limiter = _limiter(settings.NOTIFY_GUARD_REDIS_URL)
        # One window at a time: an entry taken in the bulk window is kept while the shared
        # one is waited for, so a bulk call never spends more than its own entry.
        for item in windows:
            while not limiter.hit(item, provider, cost=cost):
                if time.monotonic() >= deadline:
                    raise RateLimitWaitExceeded(provider, _retry_after(item))
                time.sleep(min(_pause(item), max(0.0, deadline - time.monotonic())))
    except StorageError as exc:
        guard_redis.mark_unavailable(exc)
    return time.monotonic() - started


def max_cost(provider: str, *, bulk: bool) -> int | None:
    """The most messages one call may carry: a call costing more than a window holds would
    never find room. None when the provider has no limit."""
    limits = limits_for(provider)
    if limits is None:
        return None
    windows = [*limits.bulk, *limits.shared] if bulk else list(limits.shared)
    return min(item.amount for item in windows)


def _pause(item: RateLimitItem) -> float:
    """A short sleep between two tries, a fraction of the gap between two calls at the limit,
    jittered so that waiting processes do not try in lockstep."""
    gap = item.get_expiry() / item.amount
    return min(0.1, max(0.005, gap)) * random.uniform(0.5, 1.5)


def _retry_after(item: RateLimitItem) -> float:
    """When a re-enqueued call may find room: one period later, the window will have moved."""
    return float(item.get_expiry())
