"""The one interface every provider implements, and the one error vocabulary they raise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from django.db import models


class Channel(models.TextChoices):
    PUSH = "push", "Push"
    EMAIL = "email", "Email"
    SMS = "sms", "SMS"
    INAPP = "inapp", "In-app"


@dataclass(frozen=True)
class Destination:
    """Where one delivery goes, read fresh at send time (addresses can change after accept)."""

    recipient_id: int
    external_id: str
    email: str | None = None
    phone: str | None = None
    locale: str = ""
    device_tokens: tuple[tuple[str, str], ...] = ()  # (platform, token) of active devices


@dataclass(frozen=True)
class OutboundMessage:
    delivery_id: int
    notification_id: str
    channel: str
    event: str
    destination: Destination
    content: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)
    # "transactional" or "bulk": the bulk lane gets only a share of a provider's rate limit.
    priority: str = "transactional"
    category: str = ""  # the event's category, by key (the inbox files messages by it)
    # E-mail of a non-critical category: the signed one-click unsubscribe link (RFC 8058).
    unsubscribe_url: str = ""


@dataclass(frozen=True)
class DestinationOutcome:
    """What happened at one destination of a delivery (one device token, say)."""

    status: str  # "sent", "dead" (device to retire) or "failed" (message refused)
    message_id: str = ""
    error: str = ""

    def as_json(self) -> dict[str, str]:
        out = {"status": self.status}
        if self.message_id:
            out["messageId"] = self.message_id
        if self.error:
            out["error"] = self.error
        return out


@dataclass(frozen=True)
class ProviderResult:
    provider: str
    message_id: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    # Per destination, for channels that fan out (push to each device).
    destinations: dict[str, DestinationOutcome] = field(default_factory=dict)


class DeliveryError(Exception):
    """A delivery attempt failed. Carries what the provider said, so str() explains itself."""

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        status_code: int | None = None,
        provider_code: str | None = None,
        response: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.status_code = status_code
        self.provider_code = provider_code
        self.response = response

    def __str__(self) -> str:
        parts = [self.provider] if self.provider else []
        if self.status_code is not None:
            parts.append(str(self.status_code))
        if self.provider_code:
            parts.append(f"code {self.provider_code}")
        prefix = " ".join(parts)
        return f"{prefix}: {self.message}" if prefix else self.message


class TransientDeliveryError(DeliveryError):
    """Worth trying again later: rate limits, timeouts, 5xx, dropped connections.

    ``partial`` holds the destinations already settled before the failure, so the retry
    does not send to them again.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        partial: dict[str, DestinationOutcome] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after
        self.partial = partial or {}


class ProviderPaused(TransientDeliveryError):
    """The provider was not called: its circuit is open (an outage), it is paused because it
    refused our configuration, or its rate limit had no room within the wait allowed
    (``reason``: "circuit_open", "misconfigured" or "rate_limited"; push also has
    "time_budget"). A call the provider refused for our settings ends the same way: it was
    an attempt of nothing the delivery could change.

    Not an attempt: the delivery goes back to ``queued`` without spending an attempt or a
    Celery retry and is tried again after ``retry_after`` seconds (``channels/gate/guard.py``). A
    subclass of the transient error so that code unaware of it still retries, never fails.
    """

    def __init__(self, message: str, *, reason: str, retry_after: float, **kwargs: Any) -> None:
        super().__init__(message, retry_after=retry_after, **kwargs)
        self.reason = reason


class PermanentDeliveryError(DeliveryError):
    """Trying again cannot help: the destination is dead or the provider refused the message.

    ``dead_device_tokens`` / ``dead_address`` name what must stop being used (the device is
    deactivated, the address suppressed with ``suppress_reason``); the side effect is applied
    in one place, ``notifications.services.deliveries``.

    ``suspect_settings``: the token rejection could equally mean these settings of ours are
    wrong (a sandbox endpoint answers BadDeviceToken to production tokens). The sender only
    names them; ``channels/gate/guard.py`` decides whether the device is retired or the provider
    paused.
    """

    def __init__(
        self,
        message: str,
        *,
        dead_device_tokens: tuple[str, ...] = (),
        dead_address: str | None = None,
        suppress_reason: str = "invalid",
        destinations: dict[str, DestinationOutcome] | None = None,
        suspect_settings: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.dead_device_tokens = dead_device_tokens
        self.suspect_settings = suspect_settings
        self.dead_address = dead_address
        self.suppress_reason = suppress_reason
        self.destinations = destinations or {}


class ProviderConfigurationError(Exception):
    """Provider settings are wrong: every message would fail the same way until an operator
    fixes them. The system checks find what they can at start-up; one met at send time pauses
    the provider (``channels/gate/guard.py``): its deliveries wait in ``queued``, never failed."""


# What a batch call answers for each message it carried (a configuration error found in one
# message's answer is that message's, raised when it is recorded).
BatchAnswer = (
    ProviderResult | TransientDeliveryError | PermanentDeliveryError | ProviderConfigurationError
)


class Provider(Protocol):
    """A remote provider of one channel. ``send`` runs on the process's I/O loop
    (channels/aio.py), many at once; it raises the errors above. The push channel's calls are
    its platforms' senders' (channels/providers/push.py); in-app is local (``store_many``)."""

    name: ClassVar[str]
    channel: ClassVar[str]

    async def send(self, message: OutboundMessage) -> ProviderResult: ...

    @classmethod
    def check_configuration(cls) -> list[str]:
        """Human-readable problems with this provider's settings; empty when usable."""
        ...


class BatchingProvider(Provider, Protocol):
    """A provider that can carry several messages in one call (an ESP's batch API).

    Optional: the delivery engine uses it when a provider has it, one call per group.
    """

    def batch_groups(self, messages: Sequence[OutboundMessage]) -> list[list[int]]:
        """Indexes of ``messages`` grouped so that each group can go in one ``send_many``
        call; a message that cannot share a call is a group of its own."""
        ...

    async def send_many(self, messages: Sequence[OutboundMessage]) -> list[BatchAnswer]:
        """One call for one group; an answer per message, in order. An error of the whole
        call (the ESP down, a 429) is raised, and counts for every message of the group."""
        ...
