"""The one place where provider calls are gated: the circuit breaker, then the rate limit.

The delivery engine (notifications/services/engine.py) sends in chunks of calls per provider:
``admit`` lets a chunk go (one Redis round trip for the circuit, one per rate-limit window, not
one per message) or raises ``ProviderPaused`` (not an attempt: the deliveries wait in
``queued``); ``settle`` feeds what the chunk's calls answered to the breaker. So every provider,
single or batch, present or added later, is gated without knowing it. docs/reliability.md has
the states and settings.

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
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from django.conf import settings

from channels.base import (
    BatchAnswer,
    PermanentDeliveryError,
    ProviderConfigurationError,
    ProviderPaused,
    ProviderResult,
    TransientDeliveryError,
)
from channels.gate import circuit, ratelimit

logger = logging.getLogger(__name__)


MISCONFIGURED = "misconfigured"  # ProviderPaused.reason of a configuration pause


@dataclass(frozen=True)
class Ticket:
    """Leave for one chunk of calls to ``provider``: the first ``calls`` of the chunk may go
    now (all of them, or one when the circuit is half-open and this is its probe)."""

    provider: str
    admission: circuit.Admission
    calls: int


def admit(provider: str, *, bulk: bool, costs: Sequence[int]) -> Ticket:
    """Let a chunk of calls to ``provider`` go, each carrying ``costs[i]`` messages, if its
    circuit and rate limit allow it now (waiting for room up to
    NOTIFY_RATE_LIMIT_MAX_WAIT_SECONDS). One Redis round trip for the circuit and one per
    rate-limit window, whatever the chunk's size. Raises ProviderPaused (not an attempt)."""
    try:
        admission = circuit.admit(provider)
    except circuit.CircuitOpen as exc:
        raise ProviderPaused(
            exc.detail,  # ProviderPaused names the provider itself
            reason=MISCONFIGURED if exc.cause else "circuit_open",
            retry_after=exc.retry_after,
            provider=provider,
        ) from None
    calls = 1 if admission.probe else len(costs)
    try:
        ratelimit.acquire(provider, bulk=bulk, cost=sum(costs[:calls]))
    except ratelimit.RateLimitWaitExceeded as exc:
        circuit.release(admission)
        raise ProviderPaused(
            str(exc), reason="rate_limited", retry_after=exc.retry_after, provider=provider
        ) from None
    return Ticket(provider, admission, calls)


def max_chunk_cost(provider: str, *, bulk: bool) -> int | None:
    """The most messages one chunk may carry: more than a rate-limit window holds would never
    find room. None when the provider has no limit."""
    return ratelimit.max_cost(provider, bulk=bulk)


def settle(
    ticket: Ticket, answers: Sequence[BatchAnswer | Exception]
) -> list[BatchAnswer | Exception]:
    """Feed what a chunk's calls answered (one answer per message) to the breaker, and return
    the answers as the deliveries must take them: a configuration error, or a suspect token
    rejection taken for one, pauses the provider and becomes ``ProviderPaused``
    ("misconfigured"); everything else is returned as it came. Any send resets the failures
    in a row (and the suspect rejections); only transient failures count towards opening."""
    admission = ticket.admission
    settled = list(answers)
    counted_suspect = False
    for index, answer in enumerate(settled):
        if isinstance(answer, PermanentDeliveryError) and answer.suspect_settings:
            if answer.dead_device_tokens:
                counted_suspect = True
                refused = _suspect_rejection(admission, answer)
                if refused is not None:
                    settled[index] = refused
    config = next((a for a in settled if isinstance(a, ProviderConfigurationError)), None)
    if config is not None:
        retry_after = circuit.pause_for_configuration(admission, str(config))
        return [
            configuration_paused(ticket.provider, a, retry_after)
            if isinstance(a, ProviderConfigurationError)
            else a
            for a in settled
        ]
    # A push device call answers its message id (str), any other call a ProviderResult.
    if any(isinstance(a, ProviderResult | str) for a in settled):
        circuit.record_success(replace(admission, suspect=admission.suspect or counted_suspect))
    elif any(isinstance(a, PermanentDeliveryError) for a in settled):
        # The provider is up: it answered that these destinations or messages are refused.
        circuit.record_success(admission, sent=False)
    elif failures := [
        a
        for a in settled
        if isinstance(a, TransientDeliveryError) and not isinstance(a, ProviderPaused)
    ]:
        circuit.record_failure(
            admission,
            retry_after=max((f.retry_after or 0.0 for f in failures), default=0.0) or None,
        )
    else:
        circuit.release(admission)  # nothing that speaks of its health (a bug)
    return settled


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


def guarded_name(provider: Any) -> str:
    """The name limits and circuits are kept under: the provider's ``limit_name()`` when it
    sends through a service chosen at run time (email: the ESP, "postmark"), else its name."""
    named = getattr(provider, "limit_name", None)
    return str(named()) if callable(named) else str(provider.name)
