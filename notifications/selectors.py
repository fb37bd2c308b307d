"""Reads of the notification log."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Count, Exists, OuterRef, Prefetch, Q, QuerySet

from notifications.models import Delivery, InboxMessage, Notification, Template
from preferences.models import Event


def notification_get(*, notification_id: uuid.UUID) -> Notification | None:
    return (
        Notification.objects.select_related("event")
        .prefetch_related(_deliveries_in_order())
        .filter(pk=notification_id)
        .first()
    )


def notifications_list(
    *,
    user_id: str | None = None,
    event: str | None = None,
    status: str | None = None,
    channel: str | None = None,
) -> QuerySet[Notification]:
    """Newest first; each filter narrows, and status/channel match any of the deliveries."""
    notifications = Notification.objects.select_related("event").prefetch_related(
        _deliveries_in_order()
    )
    if user_id:
        # external_user_id survives erasure only as the opaque id; recipient joins the index.
        notifications = notifications.filter(recipient__external_id=user_id)
    if event:
        notifications = notifications.filter(event__key=event)
    if status or channel:
        deliveries = Delivery.objects.filter(notification=OuterRef("pk"))
        if status:
            deliveries = deliveries.filter(status=status)
        if channel:
            deliveries = deliveries.filter(channel=channel)
        notifications = notifications.filter(Exists(deliveries))
    return notifications


def _deliveries_in_order() -> Prefetch:  # type: ignore[type-arg]
    return Prefetch("deliveries", queryset=Delivery.objects.order_by("id"))


@dataclass(frozen=True)
class EventCatalog:
    event: Event  # with its category loaded
    templates: tuple[Template, ...]  # every channel and locale of the event


# key -> (expires at, entry). Per process: events and templates change rarely and every accept
# reads them, so they are kept for NOTIFY_CATALOG_CACHE_SECONDS (admin edits show up after it).
_catalog_cache: dict[str, tuple[float, EventCatalog | None]] = {}
_CATALOG_CACHE_MAX = 10_000


def event_catalog(*, key: str) -> EventCatalog | None:
    """The event and all its templates, or None for an unknown event key."""
    ttl = float(settings.NOTIFY_CATALOG_CACHE_SECONDS)
    now = time.monotonic()
    if ttl > 0:
        cached = _catalog_cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
    event = Event.objects.select_related("category").filter(key=key).first()
    entry = (
        None
        if event is None
        else EventCatalog(event=event, templates=tuple(Template.objects.filter(event=event)))
    )
    if ttl > 0:
        if len(_catalog_cache) >= _CATALOG_CACHE_MAX:
            _catalog_cache.clear()
        _catalog_cache[key] = (now + ttl, entry)
    return entry


# --- the inbox API (a recipient's own messages; docs/inbox.md) ------------------------------


def inbox_messages(
    *,
    recipient_id: int,
    unread: bool | None = None,
    archived: bool = False,
    category: str | None = None,
) -> QuerySet[InboxMessage]:
    """A recipient's inbox messages (ordered by the caller's paginator: newest first by id).
    Archived ones only with ``archived=True``. Each filter has its index (models.InboxMessage)."""
    messages = InboxMessage.objects.filter(
        recipient_id=recipient_id, archived_at__isnull=not archived
    )
    if unread is not None:
        messages = messages.filter(read_at__isnull=unread)
    if category is not None:
        messages = messages.filter(category=category)
    return messages


def inbox_counts(*, recipient_id: int) -> dict[str, int]:
    """Unread and unseen messages, archived ones left out: two index-only counts (the partial
    indexes inbox_unread and inbox_unseen) in one query."""
    counts = InboxMessage.objects.filter(recipient_id=recipient_id, archived_at__isnull=True)
    return counts.aggregate(
        unread=Count("pk", filter=Q(read_at__isnull=True)),
        unseen=Count("pk", filter=Q(seen_at__isnull=True)),
    )
