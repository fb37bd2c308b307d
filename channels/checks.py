"""A provider that is enabled but misconfigured stops the service at start-up."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, register
from django.utils.module_loading import import_string

from channels.base import Channel


@register()
def check_providers(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    errors: list[Error] = []
    for channel, path in settings.NOTIFY_PROVIDERS.items():
        if channel not in Channel.values:
            errors.append(
                Error(
                    f"NOTIFY_PROVIDERS names unknown channel {channel!r}.",
                    hint=f"Channels are: {', '.join(Channel.values)}.",
                    id="channels.E001",
                )
            )
            continue
        if not path:
            continue
        setting = f"NOTIFY_PROVIDER_{channel.upper()}"
        try:
            provider_class = import_string(path)
        except ImportError as exc:
            errors.append(
                Error(f"{setting}={path!r} cannot be imported: {exc}", id="channels.E002")
            )
            continue
        if getattr(provider_class, "channel", None) != channel:
            errors.append(
                Error(
                    f"{setting}={path!r} is a provider for "
                    f"{getattr(provider_class, 'channel', None)!r}, not {channel!r}.",
                    id="channels.E003",
                )
            )
            continue
        for problem in provider_class.check_configuration():
            errors.append(Error(f"{setting} ({path}): {problem}", id="channels.E004"))
    return errors


# --- settings read lazily at the first send: wrong values must stop the start instead --------

# (setting, lowest allowed, whether the lowest itself is allowed)
_GUARD_NUMBERS: tuple[tuple[str, float, bool], ...] = (
    ("NOTIFY_PROVIDER_TIMEOUT_SECONDS", 0, False),
    ("NOTIFY_PROVIDER_HTTP_POOL_SIZE", 1, True),
    ("NOTIFY_RATE_LIMIT_MAX_WAIT_SECONDS", 0, True),
    ("NOTIFY_CIRCUIT_FAILURES", 1, True),
    ("NOTIFY_CIRCUIT_WINDOW_SECONDS", 0, False),
    ("NOTIFY_CIRCUIT_COOLDOWN_SECONDS", 0, False),
    ("NOTIFY_CIRCUIT_CONFIG_COOLDOWN_SECONDS", 0, False),
    ("NOTIFY_GUARD_REDIS_RETRY_SECONDS", 0, True),
    ("NOTIFY_EMAIL_BATCH_SIZE", 1, True),
)
# What redis-py's from_url takes (the guard's client).
_REDIS_SCHEMES = {"redis", "rediss", "unix"}


def number_problems(
    table: tuple[tuple[str, float, bool], ...], values: dict[str, Any] | None = None
) -> list[str]:
    """``setting=value`` problems for numbers below their lowest sensible value."""
    problems = []
    for name, lowest, inclusive in table:
        value = values[name] if values is not None else getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{name}={value!r} is not a number.")
        elif value < lowest or (value == lowest and not inclusive):
            bound = f"at least {lowest:g}" if inclusive else f"more than {lowest:g}"
            problems.append(f"{name}={value!r} must be {bound}.")
    return problems


def limit_problem(name: str, text: str) -> str:
    """Why ``text`` is not a rate limit in the `limits` notation ("" when it is)."""
    from limits import parse_many

    try:
        parse_many(text)
    except ValueError as exc:
        return f"{name}={text!r} is not a rate limit ('30/second', '5/second;100/minute'): {exc}"
    return ""


def url_problem(name: str, value: str, schemes: set[str], *, host: bool = True) -> str:
    """Why ``value`` is not a URL with one of ``schemes`` (and a host) ("" when it is)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
    except ValueError as exc:
        return f"{name}={value!r} is not a URL: {exc}"
    if parts.scheme.lower() not in schemes:
        allowed = ", ".join(f"{scheme}://" for scheme in sorted(schemes))
        return f"{name}={value!r} is not a {allowed} URL."
    if host and not parts.hostname:
        return f"{name}={value!r} has no host."
    return ""


@register()
def check_guard_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """The provider gate's settings (channels/gate/guard.py), read at the first send."""
    problems = number_problems(_GUARD_NUMBERS)
    share = settings.NOTIFY_RATE_LIMIT_BULK_SHARE
    if not 0 < share <= 1:
        problems.append(f"NOTIFY_RATE_LIMIT_BULK_SHARE={share!r} must be in (0, 1].")
    for provider, text in settings.NOTIFY_RATE_LIMITS.items():
        problem = text and limit_problem(f"NOTIFY_RATE_LIMITS[{provider!r}]", str(text))
        if problem:
            problems.append(problem)
    for channel, calls in settings.NOTIFY_DELIVERY_IN_FLIGHT.items():
        if not isinstance(calls, int) or calls < 1:
            problems.append(f"NOTIFY_DELIVERY_IN_FLIGHT[{channel!r}]={calls!r} must be >= 1.")
    suspect = settings.NOTIFY_PUSH_SUSPECT_REJECTIONS
    if isinstance(suspect, bool) or not isinstance(suspect, int) or not 1 <= suspect <= 10_000:
        # 0 would pause on no evidence; more than thousands lets a wrong setting retire that
        # many devices before the pause.
        problems.append(
            f"NOTIFY_PUSH_SUSPECT_REJECTIONS={suspect!r} must be a whole number from 1 to 10000."
        )
    redis_url = str(settings.NOTIFY_GUARD_REDIS_URL)
    problem = url_problem("NOTIFY_GUARD_REDIS_URL", redis_url, _REDIS_SCHEMES, host=False)
    if problem:
        problems.append(problem)
    return [Error(problem, id="channels.E005") for problem in problems]
