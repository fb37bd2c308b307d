"""Reads about recipients: who they are, where they can be reached, what they allow."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.db.models import Count, QuerySet

from channels.base import Channel
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

# Hand-written because this runs on every accept: the ORM spelling of the same query
# (ArraySubquery + two Exists annotations) spends ~2 ms compiling, ten times its run time.
_RECIPIENT_WITH_CONTEXT_SQL = """
SELECT r.*,
  EXISTS (SELECT 1 FROM preferences_suppression s
          WHERE s.channel = 'email' AND s.address = lower(r.email)) AS email_suppressed,
  EXISTS (SELECT 1 FROM preferences_suppression s
          WHERE s.channel = 'sms' AND s.address = r.phone) AS phone_suppressed,
  COALESCE((SELECT json_agg(json_build_object(
                'category_id', p.category_id, 'channel', p.channel, 'enabled', p.enabled))
            FROM preferences_preference p WHERE p.recipient_id = r.id), '[]') AS preference_rules
FROM preferences_recipient r
WHERE r.external_id = %s
"""


def recipient_of_token(*, recipient_id: int, generation: int) -> str | None:
    """The userId of the recipient a token names, if it exists and the token's generation is
    still its own (preferences.access); one primary-key read."""
    return (
        Recipient.objects.filter(pk=recipient_id, token_generation=generation)
        .values_list("external_id", flat=True)
        .first()
    )


def recipient_get(*, external_id: str) -> Recipient | None:
    """The recipient with, from the same query, ``email_suppressed`` / ``phone_suppressed``
    and its preference rules as ``preference_rules`` (dicts of category_id, channel, enabled)."""
    return next(iter(Recipient.objects.raw(_RECIPIENT_WITH_CONTEXT_SQL, [external_id])), None)


def is_suppressed(*, channel: str, address: str) -> bool:
    return Suppression.objects.filter(
        channel=channel, address=normalize_address(channel, address)
    ).exists()


def preference_rules(*, recipient_id: int) -> list[dict[str, Any]]:
    """A recipient's preference rules as dicts of category_id, channel, enabled (one query)."""
    found = Preference.objects.filter(recipient_id=recipient_id)
    return [dict(rule) for rule in found.values("category_id", "channel", "enabled")]


def permissions_from_rules(
    rules: Iterable[dict[str, Any]], *, category_id: int, channels: Sequence[str]
) -> dict[str, bool]:
    """Whether each channel may be used for this category, from the recipient's rules: the
    most specific rule wins, (category, channel) > (category, all) > (all, channel) >
    (all, all); no rule means allowed. A critical category skips this altogether
    (``notifications.services.planning``)."""
    by_scope: dict[tuple[int | None, str | None], bool] = {
        (rule["category_id"], rule["channel"]): rule["enabled"] for rule in rules
    }
    if not by_scope:  # most recipients: no rule at all
        return dict.fromkeys(channels, True)
    return {channel: _resolve(by_scope, category_id, channel) for channel in channels}


def _resolve(
    rules: dict[tuple[int | None, str | None], bool], category_id: int, channel: str
) -> bool:
    for key in ((category_id, channel), (category_id, None), (None, channel), (None, None)):
        if key in rules:
            return rules[key]
    return True


def recipient_devices(*, recipient: Recipient) -> QuerySet[Device]:
    """All of the recipient's devices, active or not (the API pages them by id)."""
    return Device.objects.filter(recipient=recipient).order_by("id")


def active_device_tokens(
    *, recipient_id: int, platforms: Iterable[str] | None = None
) -> list[tuple[str, str]]:
    """(platform, token) of the recipient's active devices, optionally of some platforms only."""
    devices = Device.objects.filter(recipient_id=recipient_id, active=True)
    if platforms is not None:
        devices = devices.filter(platform__in=list(platforms))
    return list(devices.order_by("id").values_list("platform", "token"))


def suppressions_list(
    *, channel: str | None = None, address: str | None = None
) -> QuerySet[Suppression]:
    suppressions = Suppression.objects.all()
    if channel:
        suppressions = suppressions.filter(channel=channel)
    if address:
        kind = Channel.EMAIL if "@" in address else Channel.SMS
        suppressions = suppressions.filter(address=normalize_address(kind, address))
    return suppressions


# --- topics and broadcast audiences -----------------------------------------------------


def topic_get(*, key: str) -> Topic | None:
    """The topic with its subscriber count as ``subscriber_count``."""
    return Topic.objects.annotate(subscriber_count=Count("subscriptions")).filter(key=key).first()


def topic_subscriptions(*, topic: Topic) -> QuerySet[TopicSubscription]:
    """Subscriptions of a topic with their recipient (ordered by the caller's paginator)."""
    return TopicSubscription.objects.filter(topic=topic).select_related("recipient")


def recipient_ids_by_external_id(*, external_ids: Iterable[str]) -> dict[str, int]:
    """{userId: recipient id} of those userIds that exist (one query)."""
    return dict(
        Recipient.objects.filter(external_id__in=list(external_ids)).values_list(
            "external_id", "pk"
        )
    )


# Which recipient ids make up an audience, one keyset page at a time: "after" is the last
# recipient id of the previous page. Each is an index range scan (the topic subscription's
# unique (topic, recipient) index, the recipient primary key), never an OFFSET.
_AUDIENCE_PAGE_SQL = {
    "topic": """
        SELECT s.recipient_id AS id FROM preferences_topicsubscription s
        JOIN preferences_topic t ON t.id = s.topic_id
        WHERE t.key = %(topic)s AND s.recipient_id > %(after)s AND s.recipient_id <= %(until)s
        ORDER BY s.recipient_id LIMIT %(limit)s""",
    "userIds": """
        SELECT r.id FROM preferences_recipient r
        WHERE r.external_id = ANY(%(user_ids)s::text[]) AND r.id > %(after)s
          AND r.id <= %(until)s
        ORDER BY r.id LIMIT %(limit)s""",
    "all": """
        SELECT r.id FROM preferences_recipient r
        WHERE r.id > %(after)s AND r.id <= %(until)s ORDER BY r.id LIMIT %(limit)s""",
}

# The smallest and largest recipient id of an audience (index-only lookups, whatever its size).
_AUDIENCE_RANGE_SQL = {
    "topic": """
        SELECT min(s.recipient_id), max(s.recipient_id) FROM preferences_topicsubscription s
        JOIN preferences_topic t ON t.id = s.topic_id WHERE t.key = %(topic)s""",
    "userIds": """
        SELECT min(r.id), max(r.id) FROM preferences_recipient r
        WHERE r.external_id = ANY(%(user_ids)s::text[])""",
    "all": "SELECT min(r.id), max(r.id) FROM preferences_recipient r",
}

# The accept path's recipient query (above) for a whole page of an audience at once: each
# recipient with its suppression flags, its rules for this category and for all, and the
# platforms of its active devices (presence is all the fan-out needs; tokens are read fresh
# when the push is sent). One statement, so a page costs the same whatever its size.
_AUDIENCE_WITH_CONTEXT_SQL = """
WITH page AS ({audience})
SELECT r.id, r.external_id, r.email, r.phone, r.locale,
  EXISTS (SELECT 1 FROM preferences_suppression s
          WHERE s.channel = 'email' AND s.address = lower(r.email)) AS email_suppressed,
  EXISTS (SELECT 1 FROM preferences_suppression s
          WHERE s.channel = 'sms' AND s.address = r.phone) AS phone_suppressed,
  COALESCE((SELECT json_agg(json_build_object(
                'category_id', p.category_id, 'channel', p.channel, 'enabled', p.enabled))
            FROM preferences_preference p
            WHERE p.recipient_id = r.id
              AND (p.category_id = %(category)s OR p.category_id IS NULL)), '[]')
    AS preference_rules,
  ARRAY(SELECT DISTINCT d.platform FROM preferences_device d
        WHERE d.recipient_id = r.id AND d.active
          AND d.platform = ANY(%(platforms)s::text[])) AS device_platforms
FROM page JOIN preferences_recipient r ON r.id = page.id
ORDER BY r.id
"""


@dataclass(frozen=True, slots=True)
class AudienceMember:
    """A broadcast recipient with what the fan-out decides on. Plain values, not a model
    instance: building and reading a ``Recipient`` (its phone parsed and re-validated by
    phonenumbers) was the largest cost of a fan-out page."""

    id: int
    external_id: str
    email: str | None
    phone: str | None  # E.164, as stored
    locale: str
    email_suppressed: bool
    phone_suppressed: bool
    preference_rules: list[dict[str, Any]]
    device_platforms: list[str]


def audience_page(
    *,
    audience: dict[str, Any],
    after: int,
    until: int,
    limit: int,
    category_id: int,
    platforms: Iterable[str],
) -> list[AudienceMember]:
    """Up to ``limit`` recipients of the audience with ids in (after, until], in id order, each
    with its suppression flags, preference rules (this category and all) and the platforms
    of its active devices, in one query.

    ``audience`` is a broadcast's: {"topic": key} | {"userIds": [...]} | {"all": true}.
    """
    kind = next(k for k in ("topic", "userIds", "all") if k in audience)
    sql = _AUDIENCE_WITH_CONTEXT_SQL.format(audience=_AUDIENCE_PAGE_SQL[kind])
    params = {
        "topic": audience.get("topic"),
        "user_ids": list(audience.get("userIds") or []),
        "after": after,
        "until": until,
        "limit": limit,
        "category": category_id,
        "platforms": sorted(platforms),
    }
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [AudienceMember(*row) for row in cursor.fetchall()]


def audience_id_range(*, audience: dict[str, Any]) -> tuple[int, int] | None:
    """The smallest and largest recipient id in a broadcast's audience now, or None if it is
    empty (the fan-out splits this range between its chains)."""
    kind = next(k for k in ("topic", "userIds", "all") if k in audience)
    params = {"topic": audience.get("topic"), "user_ids": list(audience.get("userIds") or [])}
    with connection.cursor() as cursor:
        cursor.execute(_AUDIENCE_RANGE_SQL[kind], params)
        low, high = cursor.fetchone()
    return None if low is None else (int(low), int(high))


@dataclass(frozen=True)
class CentreRow:
    """One category of the preference centre: whether each channel may be used for it."""

    category: Category
    allowed: dict[str, bool]  # by channel, in Channel order


def preference_centre(*, recipient_id: int) -> list[CentreRow]:
    """Every category with what the recipient's rules allow on each channel (the same rule
    resolution as sending); critical categories are always allowed (they ignore opt-outs)."""
    rules = preference_rules(recipient_id=recipient_id)
    channels = list(Channel.values)
    return [
        CentreRow(
            category,
            dict.fromkeys(channels, True)
            if category.critical
            else permissions_from_rules(
                [r for r in rules if r["category_id"] in (category.pk, None)],
                category_id=category.pk,
                channels=channels,
            ),
        )
        for category in Category.objects.order_by("critical", "name", "key")
    ]
