"""The engine's record stage: what each claimed delivery's provider answered, written once.

Acceptances of a chunk go in one UPDATE, skips in one per reason, retired devices in one;
the rarer outcomes (a retry, a deferral, a dead letter) a statement or two each. Every
delivery that must be tried again becomes a ``Retry``: the single place that decides its
countdown and whether its retry budget is spent (then it is dead-lettered instead).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from celery.utils.time import get_exponential_backoff_interval
from django.conf import settings
from django.db import transaction

from channels.base import (
    DestinationOutcome,
    PermanentDeliveryError,
    ProviderConfigurationError,
    ProviderPaused,
    ProviderResult,
    TransientDeliveryError,
)
from channels.gate import guard
from notifications.models import DeliveryStatus
from notifications.services import transitions
from notifications.services.sending import Bug
from preferences.services import devices_deactivate, suppression_add

if TYPE_CHECKING:
    from channels.base import OutboundMessage
    from notifications.services.engine import Claimed

logger = logging.getLogger(__name__)


class Outcome(StrEnum):
    SENT = "sent"
    SKIPPED = "skipped"
    FAILED = "failed"
    NOT_CLAIMED = "not_claimed"
    RETRY = "retry"  # back to queued after a transient error; a retry is to be published
    DEFERRED = "deferred"  # provider paused or rate-limited: back to queued, not an attempt


@dataclass(frozen=True)
class Retry:
    """A delivery back in ``queued``, to be published again on its lane in ``countdown``
    seconds. ``deferred``: the provider was not called (not an attempt)."""

    delivery_id: int
    channel: str
    priority: str
    countdown: int
    deferred: bool = False


class Recorder:
    """Collects a batch's outcomes and writes them; ``flush`` writes what is pending."""

    def __init__(
        self,
        outcomes: dict[int, Outcome],
        retries: list[Retry],
        errors: dict[int, BaseException],
        task_name: str,
    ) -> None:
        self.outcomes, self.retries, self.errors = outcomes, retries, errors
        self.task_name = task_name
        self._sent: list[tuple[int, ProviderResult]] = []
        self._skips: dict[str, list[int]] = {}
        self._dead_devices: list[tuple[int, str, str]] = []

    def sent(self, delivery: Claimed, result: ProviderResult) -> None:
        self._retire(delivery, result.destinations)
        self._sent.append((delivery.id, result))
        self.outcomes[delivery.id] = Outcome.SENT

    def skipped(self, delivery: Claimed, reason: str) -> None:
        self._skips.setdefault(reason, []).append(delivery.id)
        self.outcomes[delivery.id] = Outcome.SKIPPED

    def answered(
        self, deliveries: list[tuple[Claimed, OutboundMessage]], answers: list[Any]
    ) -> None:
        for (delivery, _), answer in zip(deliveries, answers, strict=True):
            if isinstance(answer, ProviderResult):
                self.sent(delivery, answer)
            elif isinstance(answer, ProviderPaused):
                self._deferred(delivery, answer)
            elif isinstance(answer, TransientDeliveryError):
                self._transient(delivery, answer)
            elif isinstance(answer, PermanentDeliveryError):
                self._permanent(delivery, answer)
            elif isinstance(answer, Bug):
                self._bug(delivery, answer.error, answer.traceback)
            else:  # a configuration error the gate did not see, or nonsense: loud
                error = answer if isinstance(answer, Exception) else TypeError(repr(answer))
                self._bug(delivery, error, "")

    def flush(self) -> None:
        """Write the acceptances and skips collected so far. Until then those deliveries stay
        ``sending``: a worker killed in between leaves them to the sweep, which sends them
        again (docs/reliability.md, the crash window)."""
        if self._sent:
            moved = set(
                transitions.mark_sent_many(
                    [
                        (pk, r.provider, r.message_id, _as_json(r.destinations))
                        for pk, r in self._sent
                    ]
                )
            )
            for pk, _ in self._sent:
                if pk not in moved:
                    logger.warning("delivery %s was sent but had left the sending state", pk)
            self._sent.clear()
        for reason, ids in self._skips.items():
            transitions.transition(
                ids,
                to=DeliveryStatus.SKIPPED,
                allowed_from=(DeliveryStatus.SENDING,),
                note={"reason": reason},
                reason=reason,
            )
        self._skips.clear()
        if self._dead_devices:
            devices_deactivate(dead=self._dead_devices)
            self._dead_devices.clear()

    # --- the rarer outcomes, written at once -------------------------------------------

    def _deferred(self, delivery: Claimed, paused: ProviderPaused) -> None:
        note: dict[str, Any] = {"deferred": paused.reason, "retryAfter": paused.retry_after}
        if paused.reason == guard.MISCONFIGURED:
            note["error"] = str(paused)  # which setting the provider refused: why it waits
        with transaction.atomic():
            self._retire(delivery, paused.partial)
            self.flush()
            transitions.release(
                [delivery.id],
                lease_seconds=(paused.retry_after or 0.0) + settings.NOTIFY_LEASE_SECONDS,
                note=note,
                merge_results=_as_json(paused.partial),
            )
        self._retry(delivery, math.ceil(paused.retry_after or 1.0), deferred=True)
        self.outcomes[delivery.id] = Outcome.DEFERRED
        self.errors[delivery.id] = paused

    def _transient(self, delivery: Claimed, error: TransientDeliveryError) -> None:
        if delivery.attempts > int(settings.NOTIFY_MAX_RETRIES):
            # The retry budget is spent: the same dead letter as any permanent failure.
            with transaction.atomic():
                self._retire(delivery, error.partial)
                self.flush()
                dead_letter(
                    delivery.id,
                    error=error,
                    traceback="",
                    task_name=self.task_name,
                    results=_as_json(error.partial),
                )
            self.outcomes[delivery.id] = Outcome.FAILED
            self.errors[delivery.id] = error
            return
        wait = max(float(settings.NOTIFY_RETRY_BACKOFF_MAX), error.retry_after or 0.0)
        with transaction.atomic():
            self._retire(delivery, error.partial)
            self.flush()
            transitions.transition(
                [delivery.id],
                to=DeliveryStatus.QUEUED,
                allowed_from=(DeliveryStatus.SENDING,),
                lease_seconds=wait + settings.NOTIFY_LEASE_SECONDS,
                note={"error": str(error), "transient": True},
                merge_results=_as_json(error.partial),
                last_error=str(error),
            )
        self._retry(delivery, retry_countdown(delivery.attempts, error.retry_after))
        self.outcomes[delivery.id] = Outcome.RETRY
        self.errors[delivery.id] = error

    def _permanent(self, delivery: Claimed, error: PermanentDeliveryError) -> None:
        with transaction.atomic():
            self._retire(delivery, error.destinations, error)
            self.flush()
            dead_letter(
                delivery.id,
                error=error,
                traceback="",
                task_name=self.task_name,
                results=_as_json(error.destinations),
            )
        self.outcomes[delivery.id] = Outcome.FAILED
        self.errors[delivery.id] = error

    def _bug(self, delivery: Claimed, error: Exception, traceback: str) -> None:
        """A bug or a misconfiguration fails that delivery only (with the traceback), as the
        task's ``on_failure`` would: the rest of the batch is not held hostage by one row."""
        logger.error("delivery %s failed: %r", delivery.id, error)
        partial = getattr(error, "partial", None) or {}
        dead_letter(
            delivery.id,
            error=error,
            traceback=traceback,
            task_name=self.task_name,
            results=_as_json(partial),
        )
        self.outcomes[delivery.id] = Outcome.FAILED
        self.errors[delivery.id] = error

    def _retry(self, delivery: Claimed, countdown: int, *, deferred: bool = False) -> None:
        self.retries.append(
            Retry(delivery.id, delivery.channel, delivery.priority, countdown, deferred)
        )

    def _retire(
        self,
        delivery: Claimed,
        destinations: dict[str, DestinationOutcome],
        error: PermanentDeliveryError | None = None,
    ) -> None:
        """The one place where a provider's "this destination is dead" has its side effect:
        dead device tokens are deactivated (never deleted), dead addresses suppressed."""
        dead = {t: o.error for t, o in destinations.items() if o.status == "dead"}
        if error is not None:
            dead.update({t: dead.get(t) or str(error) for t in error.dead_device_tokens})
        if delivery.recipient_id is not None:
            self._dead_devices.extend((delivery.recipient_id, t, e) for t, e in dead.items())
        if error is not None and error.dead_address:
            suppression_add(
                channel=delivery.channel,
                address=error.dead_address,
                reason=error.suppress_reason,
                provider=error.provider,
                detail=str(error),
            )


def retry_countdown(attempts: int, retry_after: float | None) -> int:
    """Seconds until a transient failure is tried again: the provider's Retry-After if it
    said, else exponential backoff with full jitter on the attempts made (whole seconds: on
    RabbitMQ quorum queues Celery refuses a countdown under a second)."""
    if retry_after is not None:
        return math.ceil(retry_after)
    return int(
        get_exponential_backoff_interval(
            factor=int(max(1.0, float(settings.NOTIFY_RETRY_BACKOFF))),
            retries=max(0, attempts - 1),
            maximum=int(settings.NOTIFY_RETRY_BACKOFF_MAX),
            full_jitter=True,
        )
    )


def dead_letter(
    delivery_id: int,
    *,
    error: BaseException,
    traceback: str,
    task_name: str,
    results: dict[str, Any] | None = None,
) -> bool:
    """Fail a pending delivery and record it in the dead-letter table; False if not pending."""
    from notifications.models import FailedDelivery

    with transaction.atomic():
        moved = transitions.transition(
            [delivery_id],
            to=DeliveryStatus.FAILED,
            allowed_from=(DeliveryStatus.QUEUED, DeliveryStatus.SENDING),
            note={"error": str(error), "errorClass": type(error).__name__},
            merge_results=results,
            reason=getattr(error, "provider_code", None) or type(error).__name__,
            last_error=str(error),
        )
        if not moved:
            return False
        FailedDelivery.objects.create(
            delivery_id=delivery_id,
            task_name=task_name,
            error_class=f"{type(error).__module__}.{type(error).__qualname__}",
            error_message=str(error),
            traceback=traceback,
            attempts=moved[0][2],
        )
    return True


def _as_json(outcomes: dict[str, DestinationOutcome]) -> dict[str, Any]:
    return {destination: outcome.as_json() for destination, outcome in outcomes.items()}


__all__ = [
    "Outcome",
    "ProviderConfigurationError",
    "Recorder",
    "Retry",
    "dead_letter",
    "retry_countdown",
]
