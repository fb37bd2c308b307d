"""The push channel: one send per active device, each through its platform's sender.

APNs and FCM senders (``channels/apns.py``, ``channels/fcm.py``) each handle one device; this
module fans a delivery out over the recipient's devices and folds the per-device outcomes
into one result, so a retry only re-sends to the devices that have not been reached yet.
"""

from __future__ import annotations

import functools
import time
from typing import ClassVar, Protocol

from django.conf import settings
from django.utils.module_loading import import_string

from channels import guard
from channels.base import (
    DestinationOutcome,
    OutboundMessage,
    PermanentDeliveryError,
    ProviderConfigurationError,
    ProviderPaused,
    ProviderResult,
    TransientDeliveryError,
)


class PushSender(Protocol):
    platform: ClassVar[str]
    name: ClassVar[str]

    def send_to_device(self, token: str, message: OutboundMessage) -> str:
        """Send to one device and return the provider's message id.

        Raises TransientDeliveryError, PermanentDeliveryError (with the token in
        ``dead_device_tokens`` when the token is dead) or ProviderConfigurationError.
        """
        ...

    @classmethod
    def check_configuration(cls) -> list[str]: ...


def sender_path(platform: str) -> str:
    return str(settings.NOTIFY_PUSH_SENDERS.get(platform, "") or "")


@functools.cache
def _sender_instance(path: str) -> PushSender:
    # Each device send passes its platform's circuit breaker and rate limit (channels/guard.py).
    return guard.guarded(import_string(path)())  # type: ignore[no-any-return]


def sender_for(platform: str) -> PushSender | None:
    path = sender_path(platform)
    return _sender_instance(path) if path else None


def configured_platforms() -> set[str]:
    return {platform for platform in settings.NOTIFY_PUSH_SENDERS if sender_path(platform)}


def _send_budget() -> float:
    """Seconds a push attempt may spend before starting another device's call: one call takes
    up to the provider timeout plus the rate-limit wait, and all must end within the lease."""
    per_call = (
        settings.NOTIFY_PROVIDER_TIMEOUT_SECONDS + settings.NOTIFY_RATE_LIMIT_MAX_WAIT_SECONDS
    )
    return float(settings.NOTIFY_LEASE_SECONDS) - per_call - 1.0


class PushProvider:
    name: ClassVar[str] = "push"
    channel: ClassVar[str] = "push"
    guarded: ClassVar[bool] = False  # its senders are, one device send at a time

    def send(self, message: OutboundMessage) -> ProviderResult:
        outcomes: dict[str, DestinationOutcome] = {}
        first_transient: TransientDeliveryError | None = None
        first_paused: ProviderPaused | None = None
        first_permanent: PermanentDeliveryError | None = None
        used: list[str] = []
        started = time.monotonic()
        for platform, token in message.destination.device_tokens:
            sender = sender_for(platform)
            if sender is None:  # filtered out before sending; kept as a guard
                continue
            if used and time.monotonic() - started > _send_budget():
                # One more call could outlast the claim's lease, and the sweep would hand the
                # delivery to a second worker that sends to these devices again. The devices
                # reached are kept; the others wait for the next attempt (not counted).
                first_paused = first_paused or ProviderPaused(
                    "the attempt's time budget is spent; the other devices are next",
                    reason="time_budget",
                    retry_after=1.0,
                    provider=self.name,
                )
                continue
            if sender.name not in used:
                used.append(sender.name)
            try:
                message_id = sender.send_to_device(token, message)
            except PermanentDeliveryError as exc:
                # Only a dead token retires the device; a refused message (too large, say)
                # fails here but leaves the device in use.
                status = "dead" if token in exc.dead_device_tokens else "failed"
                outcomes[token] = DestinationOutcome(status, error=str(exc))
                first_permanent = first_permanent or exc
            except ProviderPaused as exc:
                # Not tried (that platform is paused or at its rate limit): not an attempt.
                first_paused = first_paused or exc
            except TransientDeliveryError as exc:
                # Keep going: the other devices should not wait for this one's retry.
                first_transient = first_transient or exc
            except ProviderConfigurationError as exc:
                # Loud (dead letter), but remember who was already reached this attempt.
                exc.partial = outcomes  # type: ignore[attr-defined]
                raise
            else:
                outcomes[token] = DestinationOutcome("sent", message_id=message_id)
        provider = "+".join(used) or self.name
        if first_transient is not None:
            raise TransientDeliveryError(
                str(first_transient),
                retry_after=first_transient.retry_after,
                partial=outcomes,
                provider=first_transient.provider,
                status_code=first_transient.status_code,
                provider_code=first_transient.provider_code,
            ) from first_transient
        if first_paused is not None:
            # The devices reached are kept; only the paused platform's wait for the retry.
            raise ProviderPaused(
                str(first_paused),
                reason=first_paused.reason,
                retry_after=first_paused.retry_after or 1.0,
                partial=outcomes,
                provider=first_paused.provider,
            ) from first_paused
        sent = [outcome for outcome in outcomes.values() if outcome.status == "sent"]
        if not sent:
            dead = tuple(token for token, o in outcomes.items() if o.status == "dead")
            errors = "; ".join(o.error for o in outcomes.values())
            raise PermanentDeliveryError(
                f"no device could be reached: {errors}",
                provider=provider,
                # The first device's code ("Unregistered") becomes the delivery's reason.
                status_code=first_permanent.status_code if first_permanent else None,
                provider_code=first_permanent.provider_code if first_permanent else None,
                dead_device_tokens=dead,
                destinations=outcomes,
            )
        return ProviderResult(
            provider=provider, message_id=sent[0].message_id, destinations=outcomes
        )

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
