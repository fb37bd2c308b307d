"""Writes about recipients: profile upsert and deletion, devices, preference rules."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from channels.base import Channel
from preferences import access, selectors, tokens
from preferences.models import (
    Category,
    Device,
    Preference,
    Recipient,
    Suppression,
    Topic,
    TopicSubscription,
    normalize_address,
)


def recipient_upsert(*, external_id: str, **profile: Any) -> tuple[Recipient, bool]:
    """Create or replace a recipient's profile (PUT semantics: omitted fields are cleared)."""
    defaults = {
        "email": profile.get("email") or None,
        "phone": profile.get("phone") or None,
        "locale": profile.get("locale", ""),
        "timezone": profile.get("timezone", ""),
    }
    return Recipient.objects.update_or_create(external_id=external_id, defaults=defaults)


def recipient_token_mint(*, recipient: Recipient, ttl_seconds: int) -> tuple[str, int]:
    """A recipient token for a client app, and its expiry (Unix time): preferences.access."""
    return access.token_mint(
        recipient_id=recipient.pk, generation=recipient.token_generation, ttl_seconds=ttl_seconds
    )


def recipient_tokens_revoke(*, recipient: Recipient) -> None:
    """Every token minted for the recipient so far stops working (the next ones work)."""
    Recipient.objects.filter(pk=recipient.pk).update(token_generation=F("token_generation") + 1)


def recipient_delete(*, recipient: Recipient) -> None:
    """Delete the profile with its devices, preference rules, topic subscriptions and inbox
    messages (cascades). The notification log is anonymized first by its own app:
    ``notifications.services.erasure`` is the erasure; this is its last step."""
    recipient.delete()


@dataclass(frozen=True)
class DeviceRegistration:
    device: Device
    created: bool


@transaction.atomic
def device_register(*, recipient: Recipient, platform: str, token: str) -> DeviceRegistration:
    """Register (or re-activate) a token. A token seen on another recipient moves here: the
    phone changed hands or accounts, and only the newest owner should get its pushes.

    ``token`` must be one of ``platform``'s (preferences.tokens; a Django ValidationError
    otherwise) and is stored in that platform's form (APNs: lower case).

    A recipient keeps at most ``NOTIFY_MAX_DEVICES_PER_RECIPIENT`` active devices: the ones
    registered longest ago beyond it are deactivated (``_retire_beyond_cap``).
    """
    token = tokens.device_token(platform, token)
    # One registration per recipient at a time, or two at once could both find room under the cap.
    list(Recipient.objects.select_for_update().filter(pk=recipient.pk).values_list("pk"))
    device = Device.objects.select_for_update().filter(platform=platform, token=token).first()
    created = False
    if device is None:
        device, created = Device.objects.get_or_create(
            platform=platform, token=token, defaults={"recipient": recipient}
        )
    if not created:
        device.recipient = recipient
        device.active = True
        device.deactivated_at = None
        device.deactivation_reason = ""
        device.save()  # updated_at: registered now, the newest
    _retire_beyond_cap(recipient=recipient, keep=device)
    return DeviceRegistration(device=device, created=created)


def _retire_beyond_cap(*, recipient: Recipient, keep: Device) -> int:
    """Deactivate the recipient's active devices beyond the cap, those registered (or
    re-registered) longest ago first, never ``keep`` (the one just registered). Kept as
    inactive rows with the reason, like a dead token's, so the API shows what happened."""
    cap = int(settings.NOTIFY_MAX_DEVICES_PER_RECIPIENT)
    beyond = list(
        Device.objects.filter(recipient=recipient, active=True)
        .exclude(pk=keep.pk)
        .order_by("-updated_at", "-id")
        .values_list("pk", flat=True)[max(cap - 1, 0) :]
    )
    if not beyond:
        return 0
    now = timezone.now()
    return Device.objects.filter(pk__in=beyond).update(
        active=False,
        deactivated_at=now,
        deactivation_reason=f"replaced: more than {cap} devices",
        updated_at=now,
    )


def device_remove(*, recipient: Recipient, device_id: int) -> bool:
    deleted, _ = Device.objects.filter(recipient=recipient, pk=device_id).delete()
    return deleted > 0


@dataclass(frozen=True)
class Rule:
    category: Category | None
    channel: str | None
    enabled: bool


def preference_opt_out(*, recipient_id: int, category_key: str, channel: str) -> bool:
    """The recipient's rule for (category, channel) set to off, created or updated in one
    statement (two clicks at once cannot collide). False if the recipient or the category is
    gone (erased, or the category removed since the link was made)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO preferences_preference (recipient_id, category_id, channel, enabled,
                                                updated_at)
            SELECT r.id, c.id, %(channel)s, false, now()
            FROM preferences_recipient r, preferences_category c
            WHERE r.id = %(recipient)s AND c.key = %(category)s
            ON CONFLICT ON CONSTRAINT preference_unique_rule
            DO UPDATE SET enabled = false, updated_at = now()
            """,
            {"recipient": recipient_id, "category": category_key, "channel": channel},
        )
        return cursor.rowcount == 1


@transaction.atomic
def preferences_replace(*, recipient: Recipient, rules: list[Rule]) -> list[Preference]:
    """Replace all of a recipient's rules at once (PUT semantics)."""
    Preference.objects.filter(recipient=recipient).delete()
    return Preference.objects.bulk_create(
        [
            Preference(
                recipient=recipient,
                category=rule.category,
                channel=rule.channel,
                enabled=rule.enabled,
            )
            for rule in rules
        ]
    )


def devices_deactivate(*, dead: Iterable[tuple[int, str, str]]) -> int:
    """Retire devices a provider called dead ((recipient id, token, reason) each), in one
    UPDATE; never deleted, so the log still says which device it was. Returns how many."""
    rows = list(dead)
    if not rows:
        return 0
    from psycopg2.extras import execute_values

    with connection.cursor() as cursor:
        execute_values(
            cursor,
            "UPDATE preferences_device AS d SET active = false, deactivated_at = now(),"
            " deactivation_reason = v.reason FROM (VALUES %s) AS v(recipient_id, token, reason)"
            " WHERE d.recipient_id = v.recipient_id AND d.token = v.token AND d.active",
            [(recipient_id, token, reason[:255]) for recipient_id, token, reason in rows],
            template="(%s::bigint, %s, %s)",
        )
        return int(cursor.rowcount)


def suppression_add(
    *, channel: str, address: str, reason: str, provider: str = "", detail: str = ""
) -> tuple[Suppression, bool]:
    """Stop using an address on a channel; the first reason recorded is kept."""
    return Suppression.objects.get_or_create(
        channel=channel,
        address=normalize_address(channel, address),
        defaults={"reason": reason, "provider": provider[:64], "detail": detail},
    )


def suppression_remove(*, suppression_id: int) -> bool:
    deleted, _ = Suppression.objects.filter(pk=suppression_id).delete()
    return deleted > 0


# --- topics --------------------------------------------------------------------------------


def topic_upsert(*, key: str, name: str = "") -> tuple[Topic, bool]:
    """Create a topic or rename it (PUT semantics)."""
    return Topic.objects.update_or_create(key=key, defaults={"name": name})


@dataclass(frozen=True)
class SubscriptionChange:
    changed: int  # subscriptions added (or removed)
    unchanged: int  # already subscribed (or not subscribed) userIds
    unknown_user_ids: list[str]  # userIds with no recipient: reported, not created


def topic_subscribe(*, topic: Topic, external_ids: list[str]) -> SubscriptionChange:
    """Subscribe recipients in bulk; subscribing twice is harmless (ON CONFLICT DO NOTHING)."""
    wanted = list(dict.fromkeys(external_ids))
    known = selectors.recipient_ids_by_external_id(external_ids=wanted)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO preferences_topicsubscription (topic_id, recipient_id, created_at)"
            " SELECT %s, unnest(%s::bigint[]), now()"
            " ON CONFLICT (topic_id, recipient_id) DO NOTHING",
            [topic.pk, sorted(known.values())],
        )
        added = cursor.rowcount
    return SubscriptionChange(
        changed=added,
        unchanged=len(known) - added,
        unknown_user_ids=[user_id for user_id in wanted if user_id not in known],
    )


def topic_unsubscribe(*, topic: Topic, external_ids: list[str]) -> SubscriptionChange:
    wanted = list(dict.fromkeys(external_ids))
    known = selectors.recipient_ids_by_external_id(external_ids=wanted)
    removed, _ = TopicSubscription.objects.filter(
        topic=topic, recipient_id__in=list(known.values())
    ).delete()
    return SubscriptionChange(
        changed=removed,
        unchanged=len(known) - removed,
        unknown_user_ids=[user_id for user_id in wanted if user_id not in known],
    )


def preference_centre_save(*, recipient: Recipient, allowed: set[tuple[int, str]]) -> None:
    """What the recipient chose in the preference centre: for every non-critical category and
    channel a rule of its own, on if (category id, channel) is in ``allowed``; the rules for
    all categories stay (each cell's own rule is more specific, so it decides)."""
    kept = [
        Rule(category=None, channel=rule["channel"], enabled=rule["enabled"])
        for rule in selectors.preference_rules(recipient_id=recipient.pk)
        if rule["category_id"] is None
    ]
    cells = [
        Rule(category=category, channel=channel, enabled=(category.pk, channel) in allowed)
        for category in Category.objects.filter(critical=False)
        for channel in Channel.values
    ]
    preferences_replace(recipient=recipient, rules=kept + cells)
