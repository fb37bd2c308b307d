"""May this channel go to this recipient now? The one decision, made the same way when a
notification is accepted, when a broadcast is fanned out and again when it is sent (the
send-time re-check): each caller loads the facts its own way, for one recipient or a page,
and asks here.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from channels import registry
from channels.base import Channel
from preferences import selectors as recipients


@dataclass(frozen=True)
class Reach:
    """What is known of one recipient when deciding: how to reach them and what they allow."""

    email: str | None
    phone: str | None
    has_device: bool  # an active device of a configured push platform
    email_suppressed: bool
    phone_suppressed: bool
    rules: Iterable[dict[str, Any]]  # their preference rules for this category and for all


def skip_reasons(
    reach: Reach,
    *,
    channels: Sequence[str],
    category_id: int,
    critical: bool,
    configured: Collection[str] | None = None,
) -> dict[str, str | None]:
    """For each channel, why it must not go (the delivery's ``reason``), or None if it may:
    not configured, opted out (critical categories ignore opt-outs), no address or device,
    the address suppressed; checked in that order. ``configured`` (from
    ``configured_channels``) spares a caller deciding a page the settings lookups per row."""
    if configured is None:
        configured = configured_channels()
    allowed = (
        dict.fromkeys(channels, True)
        if critical
        else recipients.permissions_from_rules(
            reach.rules, category_id=category_id, channels=channels
        )
    )
    return {
        channel: _reason(channel, reach, allowed[channel], channel in configured)
        for channel in channels
    }


def configured_channels() -> frozenset[str]:
    return frozenset(registry.configured_channels())


def _reason(channel: str, reach: Reach, allowed: bool, configured: bool) -> str | None:
    if not configured:
        return "channel_not_configured"
    if not allowed:
        return "opted_out"
    if channel == Channel.EMAIL and not reach.email:
        return "no_email"
    if channel == Channel.SMS and not reach.phone:
        return "no_phone"
    if channel == Channel.PUSH and not reach.has_device:
        return "no_device"
    if (channel == Channel.EMAIL and reach.email_suppressed) or (
        channel == Channel.SMS and reach.phone_suppressed
    ):
        return "suppressed"
    return None
