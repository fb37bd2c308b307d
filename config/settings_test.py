"""Test defaults: a Redis database of their own, fast retries. Everything else is settings.py."""

import os

os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/15")
# With RabbitMQ as the broker, the guard's and the API rate limit's state still want a Redis:
# the tests' own database, not a deployment's default db 0.
if not os.environ["CELERY_BROKER_URL"].startswith(("redis://", "rediss://")):
    os.environ.setdefault("NOTIFY_GUARD_REDIS_URL", "redis://127.0.0.1:6379/15")
    os.environ.setdefault("NOTIFY_API_RATE_LIMIT_STORAGE_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("NOTIFY_RETRY_BACKOFF", "1")
os.environ.setdefault("NOTIFY_RETRY_BACKOFF_MAX", "2")
os.environ.setdefault("NOTIFY_MAX_RETRIES", "3")
os.environ.setdefault("NOTIFY_PROVIDER_TIMEOUT_SECONDS", "5")
# Tests recreate events and templates between cases; the cache has its own test.
os.environ.setdefault("NOTIFY_CATALOG_CACHE_SECONDS", "0")
# Provider rate limits and circuit breakers keep state in Redis across tests: off unless a
# test turns them on (tests/channels/test_rate_limits.py, test_circuit_breaker.py).
os.environ.setdefault("NOTIFY_RATE_LIMITS", "")
os.environ.setdefault("NOTIFY_CIRCUIT_BREAKER", "false")
# Tests that point the guard at a dead Redis must not switch it off for the tests after them.
os.environ.setdefault("NOTIFY_GUARD_REDIS_RETRY_SECONDS", "0")
# Tests read a broadcast's progress right after changing it; the shared count has its own test.
os.environ.setdefault("NOTIFY_BROADCAST_PROGRESS_MIN_AGE_SECONDS", "0")
os.environ.setdefault("NOTIFY_BROADCAST_PROGRESS_RECOUNT_FACTOR", "0")
# Every test e-mail carries its unsubscribe link, as a deployment's should.
os.environ.setdefault("NOTIFY_PUBLIC_URL", "http://testserver")

from config.settings import *  # noqa: F403
from config.settings import ALLOWED_HOSTS

ALLOWED_HOSTS = [*ALLOWED_HOSTS, "testserver"]
