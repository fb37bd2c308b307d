"""The one place where a provider call is gated: its circuit breaker, then its rate limit.

``registry.provider_for`` and ``push.sender_for`` hand out providers and push senders wrapped
here, so the single and batch delivery paths, and any provider added later, are gated without
knowing it. A call that must not go now raises ``ProviderPaused`` (not an attempt: the
delivery waits in ``queued``); what the provider answers feeds the breaker. docs/reliability.md
has the states and settings.

This is also the one place where a ``ProviderConfigurationError`` met at send time is decided:
it pauses the provider (``circuit.pause_for_configuration``) and becomes a ``ProviderPaused``
(reason "misconfigured"), so the delivery waits in ``queued`` instead of being dead-lettered,
and goes out once a probe finds the configuration fixed.

And the one place where a device token rejection that a wrong setting would give for every
token (``PermanentDeliveryError.suspect_settings``: APNs BadDeviceToken, DeviceTokenNotForTopic,
FCM SENDER_ID_MISMATCH) is decided: the device is retired, unless it is the
``NOTIFY_PUSH_SUSPECT_REJECTIONS``-th such rejection in a row from that provider with no
successful send in between; then it is a configuration error (the provider pauses, that device
stays active). Retiring a device cannot be undone, pausing can: so up to N-1 devices may be
retired before the pause, never every device.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

from django.conf import settings

from channels import circuit, ratelimit
from channels.base import (
    BatchAnswer,
    OutboundMessage,
    PermanentDeliveryError,
    Provider,
    ProviderConfigurationError,
    ProviderPaused,
    ProviderResult,
    TransientDeliveryError,
)

T = TypeVar("T")

logger = logging.getLogger(__name__)


MISCONFIGURED = "misconfigured"  # ProviderPaused.reason of a configuration pause


def _no_refused_settings(_: object) -> ProviderConfigurationError | None:
    return None


def guarded_call(
    provider: str,
    *,
    bulk: bool,
    call: Callable[[], T],
    cost: int = 1,
    refused_settings: Callable[[T], ProviderConfigurationError | None] = _no_refused_settings,
) -> T:
    """``call()`` (one request to ``provider``, carrying ``cost`` messages) if its circuit and
    rate limit allow it now. ``refused_settings`` finds a configuration error in what the call
    returned (a batch's answer for one of its messages): it pauses the provider too."""
    try:
        admission = circuit.admit(provider)
    except circuit.CircuitOpen as exc:
        raise ProviderPaused(
            exc.detail,  # ProviderPaused names the provider itself
            reason=MISCONFIGURED if exc.cause else "circuit_open",
            retry_after=exc.retry_after,
            provider=provider,
        ) from None
    try:
        ratelimit.acquire(provider, bulk=bulk, cost=cost)
    except ratelimit.RateLimitWaitExceeded as exc:
        circuit.release(admission)
        raise ProviderPaused(
            str(exc), reason="rate_limited", retry_after=exc.retry_after, provider=provider
        ) from None
    try:
        result = call()
    except ProviderConfigurationError as exc:
        retry_after = circuit.pause_for_configuration(admission, str(exc))
        raise configuration_paused(provider, exc, retry_after) from exc
    except TransientDeliveryError as exc:
        circuit.record_failure(admission, retry_after=exc.retry_after)
        raise
    except PermanentDeliveryError as exc:
        if exc.suspect_settings and exc.dead_device_tokens:
            refused = _suspect_rejection(admission, exc)
            if refused is not None:
                retry_after = circuit.pause_for_configuration(admission, str(refused))
                raise configuration_paused(provider, refused, retry_after) from exc
        # The provider is up: it answered that this destination or message is refused.
        circuit.record_success(admission, sent=False)
        raise
    except BaseException:
        circuit.release(admission)  # a bug says nothing of its health
        raise
    refused = refused_settings(result)
    if refused is not None:
        circuit.pause_for_configuration(admission, str(refused))
    else:
        circuit.record_success(admission)
    return result


def _suspect_rejection(
    admission: circuit.Admission, error: PermanentDeliveryError
) -> ProviderConfigurationError | None:
    """A token rejection our settings could cause: counted; the configuration error it is
    taken for once ``NOTIFY_PUSH_SUSPECT_REJECTIONS`` come in a row, else None (the device is
    retired). With nowhere to count (guard Redis away) the device is kept: this delivery fails
    for it, and the token is tried again next time."""
    count = circuit.count_suspect(admission)
    if count is None:
        logger.warning(
            "%s refused a device token (%s), kept active: with the guard Redis away, a wrong %s "
            "cannot be told from a dead token",
            admission.provider,
            error.provider_code,
            error.suspect_settings,
        )
        error.dead_device_tokens = ()
        return None
    threshold = int(settings.NOTIFY_PUSH_SUSPECT_REJECTIONS)
    if count < threshold:
        return None
    return ProviderConfigurationError(
        f"{count} device tokens in a row refused ({error.provider_code}) with no successful "
        f"send in between: likely our settings, check {error.suspect_settings}; last: {error}"
    )


def configuration_paused(
    provider: str, error: ProviderConfigurationError, retry_after: float
) -> ProviderPaused:
    """What a delivery whose provider refused our settings gets: not an attempt, not failed;
    it waits for the probe. Devices a push reached before are kept (``partial``)."""
    return ProviderPaused(
        f"paused, misconfigured: {error}",
        reason=MISCONFIGURED,
        retry_after=retry_after,
        provider=provider,
        partial=getattr(error, "partial", None),
    )


def _first_refused_settings(answers: list[BatchAnswer]) -> ProviderConfigurationError | None:
    return next((a for a in answers if isinstance(a, ProviderConfigurationError)), None)


def guarded_name(provider: Any) -> str:
    """The name limits and circuits are kept under: the provider's ``limit_name()`` when it
    sends through a service chosen at run time (email: the ESP, "postmark"), else its name."""
    named = getattr(provider, "limit_name", None)
    return str(named()) if callable(named) else str(provider.name)


class GuardedProvider:
    """A channel's provider whose every ``send`` is gated."""

    def __init__(self, inner: Provider) -> None:
        self.inner = inner
        self.name = inner.name
        self.channel = inner.channel

    def send(self, message: OutboundMessage) -> ProviderResult:
        return guarded_call(
            guarded_name(self.inner),
            bulk=message.priority == "bulk",
            call=lambda: self.inner.send(message),
        )

    def batch_groups(self, messages: Sequence[OutboundMessage]) -> list[list[int]]:
        """The provider's own groups (``BatchingProvider``), cut to what one call may carry
        under the rate limit, since a call takes an entry per message it carries."""
        inner_groups = getattr(self.inner, "batch_groups", None)
        if inner_groups is None:
            return [[index] for index in range(len(messages))]
        groups: list[list[int]] = inner_groups(messages)
        if not messages:
            return groups
        ceiling = ratelimit.max_cost(guarded_name(self.inner), bulk=messages[0].priority == "bulk")
        if ceiling is None:
            return groups
        return [group[i : i + ceiling] for group in groups for i in range(0, len(group), ceiling)]

    def send_many(self, messages: Sequence[OutboundMessage]) -> list[BatchAnswer]:
        """One gated call for a group from ``batch_groups``: it takes an entry per message.
        A message the ESP refused for our settings (a sender it does not accept) pauses the
        provider, and that message waits like the ones the pause will hold."""
        name = guarded_name(self.inner)
        answers: list[BatchAnswer] = guarded_call(
            name,
            bulk=messages[0].priority == "bulk",
            call=lambda: self.inner.send_many(messages),  # type: ignore[attr-defined]
            cost=len(messages),
            refused_settings=_first_refused_settings,
        )
        cooldown = float(settings.NOTIFY_CIRCUIT_CONFIG_COOLDOWN_SECONDS)
        return [
            configuration_paused(name, answer, cooldown)
            if isinstance(answer, ProviderConfigurationError)
            else answer
            for answer in answers
        ]

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.inner, attribute)


class GuardedSender:
    """A push platform's sender whose every device send is gated (one call per device)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.platform = inner.platform
        self.name = inner.name

    def send_to_device(self, token: str, message: OutboundMessage) -> str:
        return guarded_call(
            guarded_name(self.inner),
            bulk=message.priority == "bulk",
            call=lambda: str(self.inner.send_to_device(token, message)),
        )

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.inner, attribute)


def guarded(provider: T) -> T:
    """``provider`` gated, unless it declares ``guarded = False``: in-app calls no remote
    service, and the push provider's calls are its senders', each gated by itself."""
    if not getattr(provider, "guarded", True):
        return provider
    if hasattr(provider, "send_to_device"):
        return cast(T, GuardedSender(provider))
    return cast(T, GuardedProvider(cast(Provider, provider)))
