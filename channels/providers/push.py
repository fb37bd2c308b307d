"""The push channel: a delivery goes to each of the recipient's active devices, each through
its platform's sender (``apns.py``, ``fcm.py``); the per-device answers fold into one outcome
for the delivery, so a retry only re-sends to the devices not reached yet.

The delivery engine makes the device calls (many at once, gated per platform) and hands the
answers of one delivery to ``fold``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import ClassVar, Protocol

from django.conf import settings
from django.utils.module_loading import import_string

from channels.base import (
    DestinationOutcome,
    OutboundMessage,
    PermanentDeliveryError,
    ProviderConfigurationError,
    ProviderPaused,
    ProviderResult,
    TransientDeliveryError,
)

# What one device call answered: the provider's message id, or the error it raised.
DeviceAnswer = str | TransientDeliveryError | PermanentDeliveryError | ProviderConfigurationError


class PushSender(Protocol):
    platform: ClassVar[str]
    name: ClassVar[str]

    async def send_to_device(self, token: str, message: OutboundMessage) -> str:
        """Send to one device and return the provider's message id.

        Raises TransientDeliveryError, PermanentDeliveryError (with the token in
        ``dead_device_tokens`` when the token is dead) or ProviderConfigurationError.
        """
        ...

    async def aclose(self) -> None: ...

    @classmethod
    def check_configuration(cls) -> list[str]: ...


def sender_path(platform: str) -> str:
    return str(settings.NOTIFY_PUSH_SENDERS.get(platform, "") or "")


@functools.cache
def _sender_instance(path: str) -> PushSender:
    return import_string(path)()  # type: ignore[no-any-return]


def sender_for(platform: str) -> PushSender | None:
    path = sender_path(platform)
    return _sender_instance(path) if path else None


def configured_platforms() -> set[str]:
    return {platform for platform in settings.NOTIFY_PUSH_SENDERS if sender_path(platform)}


def send_budget() -> float:
    """Seconds a push attempt may spend before starting another round of device calls: one
    round takes up to the provider timeout plus the rate-limit wait, and all must end within
    the lease (else the sweep could hand the delivery to a second worker)."""
    per_call = (
        settings.NOTIFY_PROVIDER_TIMEOUT_SECONDS + settings.NOTIFY_RATE_LIMIT_MAX_WAIT_SECONDS
    )
    return float(settings.NOTIFY_LEASE_SECONDS) - per_call - 1.0


def fold(
    answers: Sequence[tuple[str, str, DeviceAnswer | ProviderPaused]],
) -> ProviderResult | TransientDeliveryError | PermanentDeliveryError:
    """One delivery's outcome from its devices' answers ((sender name, token, answer)).

    Any transient failure: the delivery is retried, keeping the devices settled (``partial``).
    Else any device not tried (paused, rate-limited, out of time): deferred, not an attempt.
    Else sent if any device got it, the dead ones reported for retirement; a delivery no
    device could take fails. A configuration error never gets here: the gate turned it into
    a pause (``ProviderPaused``).
    """
    outcomes: dict[str, DestinationOutcome] = {}
    first_transient: TransientDeliveryError | None = None
    first_paused: ProviderPaused | None = None
    first_permanent: PermanentDeliveryError | None = None
    used: list[str] = []
    for name, token, answer in answers:
        if not isinstance(answer, ProviderPaused) and name not in used:
            used.append(name)
        if isinstance(answer, str):
            outcomes[token] = DestinationOutcome("sent", message_id=answer)
        elif isinstance(answer, PermanentDeliveryError):
            # Only a dead token retires the device; a refused message (too large, say)
            # fails here but leaves the device in use.
            status = "dead" if token in answer.dead_device_tokens else "failed"
            outcomes[token] = DestinationOutcome(status, error=str(answer))
            first_permanent = first_permanent or answer
        elif isinstance(answer, ProviderPaused):
            first_paused = first_paused or answer
        elif isinstance(answer, TransientDeliveryError):
            first_transient = first_transient or answer
        else:  # a configuration error the gate did not see: loud, never silent
            raise answer
    provider = "+".join(used) or PushProvider.name
    if first_transient is not None:
        return TransientDeliveryError(
            str(first_transient),
            retry_after=first_transient.retry_after,
            partial=outcomes,
            provider=first_transient.provider,
            status_code=first_transient.status_code,
            provider_code=first_transient.provider_code,
        )
    if first_paused is not None:
        # The devices reached are kept; only the paused platform's wait for the retry.
        return ProviderPaused(
            str(first_paused),
            reason=first_paused.reason,
            retry_after=first_paused.retry_after or 1.0,
            partial=outcomes,
            provider=first_paused.provider,
        )
    sent = [outcome for outcome in outcomes.values() if outcome.status == "sent"]
    if not sent:
        dead = tuple(token for token, o in outcomes.items() if o.status == "dead")
        errors = "; ".join(o.error for o in outcomes.values())
        return PermanentDeliveryError(
            f"no device could be reached: {errors}",
            provider=provider,
            # The first device's code ("Unregistered") becomes the delivery's reason.
            status_code=first_permanent.status_code if first_permanent else None,
            provider_code=first_permanent.provider_code if first_permanent else None,
            dead_device_tokens=dead,
            destinations=outcomes,
        )
    return ProviderResult(provider=provider, message_id=sent[0].message_id, destinations=outcomes)


class PushProvider:
    """The push channel's entry in NOTIFY_PROVIDERS: its sends are its senders'."""

    name: ClassVar[str] = "push"
    channel: ClassVar[str] = "push"

    @classmethod
    def check_configuration(cls) -> list[str]:
        problems: list[str] = []
        if not configured_platforms():
            problems.append("no push platform is configured (NOTIFY_PUSH_APNS, NOTIFY_PUSH_FCM).")
        for platform in sorted(configured_platforms()):
            setting = f"NOTIFY_PUSH_{platform.upper()}"
            try:
                sender_class = import_string(sender_path(platform))
            except ImportError as exc:
                problems.append(f"{setting}={sender_path(platform)!r} cannot be imported: {exc}")
                continue
            problems.extend(f"{setting}: {p}" for p in sender_class.check_configuration())
        return problems
