"""Reads about recipients: who they are, where they can be reached, what they allow."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from django.db.models import Q

from channels.base import Channel
from preferences.models import Category, Device, Preference, Recipient


def recipient_get(*, external_id: str) -> Recipient | None:
    return Recipient.objects.filter(external_id=external_id).first()


def channel_permissions(
    *, recipient_id: int, category: Category, channels: Sequence[str]
) -> dict[str, bool]:
    """Whether each channel may be used for this category, in one query.

    Most specific rule wins: (category, channel) > (category, all) > (all, channel) > (all, all);
    no rule means allowed. Critical categories ignore opt-outs altogether.
    """
    if category.critical:
        return dict.fromkeys(channels, True)
    rules: dict[tuple[int | None, str | None], bool] = {
        (category_id, channel): enabled
        for category_id, channel, enabled in Preference.objects.filter(
            Q(category_id=category.pk) | Q(category__isnull=True), recipient_id=recipient_id
        ).values_list("category_id", "channel", "enabled")
    }
    return {channel: _resolve(rules, category.pk, channel) for channel in channels}


def _resolve(
    rules: dict[tuple[int | None, str | None], bool], category_id: int, channel: str
) -> bool:
    for key in ((category_id, channel), (category_id, None), (None, channel), (None, None)):
        if key in rules:
            return rules[key]
    return True


def active_device_tokens(*, recipient_id: int) -> list[tuple[str, str]]:
    return list(
        Device.objects.filter(recipient_id=recipient_id, active=True)
        .order_by("id")
        .values_list("platform", "token")
    )


def unreachable_reason(
    *, channel: str, recipient: Recipient, device_tokens: Iterable[tuple[str, str]] = ()
) -> str | None:
    """Why ``channel`` cannot reach ``recipient`` right now, or None if it can."""
    if channel == Channel.EMAIL and not recipient.email:
        return "no_email"
    if channel == Channel.SMS and not recipient.phone:
        return "no_phone"
    if channel == Channel.PUSH and not any(True for _ in device_tokens):
        return "no_device"
    return None
