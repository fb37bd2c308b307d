"""Settings of the API and the delivery engine that are read lazily (at the first request, the
first send, the first sweep): a wrong value must stop the start, not fail every request later.

The provider checks are in channels/checks.py; they share the helpers.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import Error, Warning, register

from channels.checks import limit_problem, number_problems, url_problem

# (setting, lowest allowed, whether the lowest itself is allowed)
_NUMBERS: tuple[tuple[str, float, bool], ...] = (
    ("NOTIFY_API_RATE_LIMIT_TIMEOUT_SECONDS", 0, False),
    ("NOTIFY_MAX_BODY_BYTES", 1024, True),
    ("NOTIFY_FANOUT_MAX_BODY_BYTES", 1024, True),
    ("NOTIFY_MAX_RETRIES", 0, True),
    ("NOTIFY_MAX_DEVICES_PER_RECIPIENT", 1, True),
    ("NOTIFY_RETRY_BACKOFF", 1, True),
    ("NOTIFY_RETRY_BACKOFF_MAX", 1, True),
    ("NOTIFY_LEASE_SECONDS", 1, True),
    ("NOTIFY_SWEEP_INTERVAL_SECONDS", 1, True),
    ("NOTIFY_SWEEP_BATCH", 1, True),
    ("NOTIFY_CATALOG_CACHE_SECONDS", 0, True),
    ("NOTIFY_FANOUT_PAGE", 1, True),
    ("NOTIFY_FANOUT_CHAINS", 1, True),
    ("NOTIFY_BULK_WORKER_NICE", 0, True),
    ("NOTIFY_INBOX_STREAM_REPLAY", 1, True),
    ("NOTIFY_INBOX_STREAM_REPLAY_SECONDS", 1, True),
    ("NOTIFY_INBOX_STREAM_HEARTBEAT_SECONDS", 1, True),
    ("NOTIFY_FANOUT_LEASE_SECONDS", 1, True),
    ("NOTIFY_FANOUT_RESUME_SECONDS", 1, True),
    ("NOTIFY_BROADCAST_CANCEL_CHUNK", 1, True),
    ("NOTIFY_BROADCAST_CANCEL_TIME_BUDGET_SECONDS", 0, False),
    ("NOTIFY_BROADCAST_PROGRESS_MIN_AGE_SECONDS", 0, True),
    ("NOTIFY_BROADCAST_PROGRESS_RECOUNT_FACTOR", 0, True),
    ("NOTIFY_DELIVERY_BATCH", 1, True),
    ("NOTIFY_RETENTION_DAYS", 0, True),
    ("NOTIFY_RETENTION_BATCH", 1, True),
    ("NOTIFY_RETENTION_INTERVAL_SECONDS", 1, True),
    ("NOTIFY_RETENTION_TIME_BUDGET_SECONDS", 0, False),
    ("NOTIFY_UNSUBSCRIBE_LINK_DAYS", 1, True),
    ("NOTIFY_PREFERENCE_LINK_DAYS", 1, True),
)


def _storage_schemes() -> set[str]:
    # The synchronous storages `limits` knows (the throttle is not async): redis, rediss,
    # redis+sentinel, memcached, mongodb... An amqp:// broker URL is none of them.
    from limits.storage import SCHEMES

    return {scheme for scheme in SCHEMES if not scheme.startswith("async+")}


@register()
def check_engine_settings(app_configs: Any = None, **kwargs: Any) -> list[Error | Warning]:
    problems = number_problems(_NUMBERS)
    if isinstance(settings.NOTIFY_BULK_WORKER_NICE, int) and settings.NOTIFY_BULK_WORKER_NICE > 19:
        problems.append(
            f"NOTIFY_BULK_WORKER_NICE={settings.NOTIFY_BULK_WORKER_NICE!r} must be at most 19."
        )
    if settings.NOTIFY_RETRY_BACKOFF_MAX < settings.NOTIFY_RETRY_BACKOFF:
        problems.append(
            f"NOTIFY_RETRY_BACKOFF_MAX={settings.NOTIFY_RETRY_BACKOFF_MAX!r} is below "
            f"NOTIFY_RETRY_BACKOFF={settings.NOTIFY_RETRY_BACKOFF!r}."
        )
    # A send may take the provider timeout plus the rate-limit wait; a lease shorter than that
    # lets the sweep hand a delivery still being sent to a second worker (a duplicate).
    longest_call = (
        settings.NOTIFY_PROVIDER_TIMEOUT_SECONDS + settings.NOTIFY_RATE_LIMIT_MAX_WAIT_SECONDS
    )
    if settings.NOTIFY_LEASE_SECONDS <= longest_call + 1:
        problems.append(
            f"NOTIFY_LEASE_SECONDS={settings.NOTIFY_LEASE_SECONDS!r} must exceed the longest "
            f"provider call, NOTIFY_PROVIDER_TIMEOUT_SECONDS + NOTIFY_RATE_LIMIT_MAX_WAIT_SECONDS "
            f"+ 1 = {longest_call + 1:g}."
        )
    for name in ("NOTIFY_API_RATE_LIMIT", "NOTIFY_INBOX_RATE_LIMIT"):
        text = str(getattr(settings, name))
        problem = text and limit_problem(name, text)
        if problem:
            problems.append(problem)
    if not (
        60
        <= settings.NOTIFY_RECIPIENT_TOKEN_TTL_SECONDS
        <= settings.NOTIFY_RECIPIENT_TOKEN_MAX_TTL_SECONDS
    ):
        problems.append(
            "NOTIFY_RECIPIENT_TOKEN_TTL_SECONDS must be at least 60 and at most "
            "NOTIFY_RECIPIENT_TOKEN_MAX_TTL_SECONDS."
        )
    problem = url_problem(
        "NOTIFY_API_RATE_LIMIT_STORAGE_URL",
        str(settings.NOTIFY_API_RATE_LIMIT_STORAGE_URL),
        _storage_schemes(),
        host=False,
    )
    if problem:
        problems.append(problem)
    if settings.NOTIFY_PUBLIC_URL:
        problem = url_problem(
            "NOTIFY_PUBLIC_URL", str(settings.NOTIFY_PUBLIC_URL), {"http", "https"}
        )
        if problem:
            problems.append(problem)
    found: list[Error | Warning] = [Error(problem, id="notifications.E001") for problem in problems]
    if not settings.NOTIFY_PUBLIC_URL and settings.NOTIFY_PROVIDERS.get("email"):
        found.append(
            Warning(
                "NOTIFY_PUBLIC_URL is not set: e-mails go out without a one-click unsubscribe "
                "link (List-Unsubscribe), which Gmail and Yahoo require of bulk senders.",
                id="notifications.W002",
            )
        )
    public_host = urlsplit(str(settings.NOTIFY_PUBLIC_URL)).hostname or ""
    if settings.NOTIFY_DEMO_PAGE and public_host not in {"127.0.0.1", "localhost", "::1"}:
        found.append(
            Warning(
                "NOTIFY_DEMO_PAGE is on for a service that is not on this machine only: "
                f"/demo/inbox hands a recipient token of {settings.NOTIFY_DEMO_USER_ID!r} to "
                "anyone who opens it. For local demos (make run) only.",
                id="notifications.W003",
            )
        )
    if settings.NOTIFY_RETENTION_TIME_BUDGET_SECONDS >= settings.NOTIFY_RETENTION_INTERVAL_SECONDS:
        found.append(
            Warning(
                "NOTIFY_RETENTION_TIME_BUDGET_SECONDS is not below "
                "NOTIFY_RETENTION_INTERVAL_SECONDS: purge runs can pile up.",
                id="notifications.W001",
            )
        )
    return found
