"""Reads of the notification log."""

from __future__ import annotations

import uuid

from django.db.models import Exists, OuterRef, Prefetch, QuerySet

from notifications.models import Delivery, Notification


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
