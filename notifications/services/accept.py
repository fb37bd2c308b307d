"""The accept path of ``POST /api/notify``: decide, render, record, enqueue after commit."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from rest_framework_api_key.models import APIKey

from channels.providers import push
from notifications.exceptions import (
    IdempotencyConflict,
    NoChannels,
    RecipientNotFound,
    TemplateError,
    UnknownEvent,
)
from notifications.models import Delivery, DeliveryStatus, Notification
from notifications.rendering import TemplateRenderError, pick_templates, render_template
from notifications.selectors import EventCatalog, event_catalog
from notifications.services import planning
from notifications.services.enqueue import enqueue_on_commit
from notifications.services.idempotency import AcceptResult, replay_if_known
from preferences import selectors as recipients
from preferences.models import Event, Recipient


@dataclass(frozen=True)
class _Planned:
    channel: str
    status: str
    reason: str = ""
    content: dict[str, Any] | None = None


def request_fingerprint(
    *,
    user_id: str,
    event: str,
    channels: list[str] | None,
    data: dict[str, Any],
    priority: str | None = None,
) -> str:
    body: dict[str, Any] = {"userId": user_id, "event": event, "channels": channels, "data": data}
    if priority is not None:  # absent from older requests' fingerprints: keep those stable
        body["priority"] = priority
    canonical = json.dumps(
        body,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def notification_accept(
    *,
    api_key: APIKey,
    user_id: str,
    event_key: str,
    channels: list[str] | None,
    data: dict[str, Any],
    idempotency_key: str | None,
    priority: str | None = None,
) -> AcceptResult:
    fingerprint = request_fingerprint(
        user_id=user_id, event=event_key, channels=channels, data=data, priority=priority
    )
    catalog = event_catalog(key=event_key)
    if catalog is None:
        raise UnknownEvent(f"Unknown event {event_key!r}.", fields={"event": ["Unknown event."]})
    event = catalog.event
    lane = priority or event.priority
    recipient = recipients.recipient_get(external_id=user_id)
    if recipient is None:
        # A replay of an accepted request still answers as it did, even if the user was
        # erased since.
        replay = replay_if_known(
            Notification, api_key=api_key, idempotency_key=idempotency_key, fingerprint=fingerprint
        )
        if replay is not None:
            return replay
        raise RecipientNotFound(f"No recipient with userId {user_id!r}.")

    wanted = list(dict.fromkeys(channels if channels is not None else event.default_channels))
    if not wanted:
        raise NoChannels(
            f"Event {event_key!r} has no default channels and the request named none.",
            fields={"channels": ["Name at least one channel."]},
        )
    notification_id = uuid.uuid4()
    plan = _plan_deliveries(
        recipient=recipient,
        catalog=catalog,
        channels=wanted,
        data=data,
        notification_id=notification_id,
    )
    body = {
        "id": str(notification_id),
        "deliveries": [
            {"channel": p.channel, "status": p.status, **({"reason": p.reason} if p.reason else {})}
            for p in plan
        ],
    }
    with transaction.atomic():
        inserted = _insert_notification(
            notification_id=notification_id,
            api_key=api_key,
            recipient=recipient,
            event=event,
            data=data,
            priority=lane,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
            body=body,
        )
        if not inserted:
            replay = replay_if_known(
                Notification,
                api_key=api_key,
                idempotency_key=idempotency_key,
                fingerprint=fingerprint,
            )
            if replay is None:  # the conflicting row vanished (deleted): treat as a fresh race
                raise IdempotencyConflict("Concurrent request with this idempotency key.")
            return replay
        now = timezone.now()
        rows = Delivery.objects.bulk_create([_delivery_row(notification_id, p, now) for p in plan])
        enqueue_on_commit(
            (row.pk, row.channel, lane) for row in rows if row.status == DeliveryStatus.QUEUED
        )
    return AcceptResult(body=body, replayed=False)


def _plan_deliveries(
    *,
    recipient: Recipient,
    catalog: EventCatalog,
    channels: list[str],
    data: dict[str, Any],
    notification_id: uuid.UUID,
) -> list[_Planned]:
    event = catalog.event
    has_device = "push" in channels and bool(
        recipients.active_device_tokens(
            recipient_id=recipient.pk, platforms=push.configured_platforms()
        )
    )
    rules = getattr(recipient, "preference_rules", None)
    if rules is None:
        rules = recipients.preference_rules(recipient_id=recipient.pk)
    reasons = planning.skip_reasons(
        planning.Reach(
            email=recipient.email,
            phone=str(recipient.phone) if recipient.phone else None,
            has_device=has_device,
            email_suppressed=bool(getattr(recipient, "email_suppressed", False)),
            phone_suppressed=bool(getattr(recipient, "phone_suppressed", False)),
            rules=rules,
        ),
        channels=channels,
        category_id=event.category_id,
        critical=event.category.critical,
    )
    templates = pick_templates(catalog.templates, locale=recipient.locale)
    context = {
        **data,
        "data": data,
        "recipient": {
            "id": recipient.external_id,
            "email": recipient.email or "",
            "locale": recipient.locale,
        },
        "event": event.key,
        "notification_id": str(notification_id),
    }
    plan: list[_Planned] = []
    for channel in channels:
        reason = reasons[channel]
        if reason is None and channel not in templates:
            reason = "no_template"
        if reason is not None:
            plan.append(_Planned(channel=channel, status=DeliveryStatus.SKIPPED, reason=reason))
            continue
        try:
            content = render_template(templates[channel], context)
        except TemplateRenderError as exc:
            raise TemplateError(str(exc)) from exc
        plan.append(_Planned(channel=channel, status=DeliveryStatus.QUEUED, content=content))
    return plan


def _delivery_row(notification_id: uuid.UUID, planned: _Planned, now: datetime) -> Delivery:
    queued = planned.status == DeliveryStatus.QUEUED
    entry: dict[str, Any] = {"status": planned.status, "at": now.isoformat(), "attempt": 0}
    if planned.reason:
        entry["reason"] = planned.reason
    return Delivery(
        notification_id=notification_id,
        channel=planned.channel,
        status=planned.status,
        reason=planned.reason,
        content=planned.content or {},
        history=[entry],
        queued_at=now if queued else None,
        skipped_at=None if queued else now,
        lease_until=now + timedelta(seconds=settings.NOTIFY_LEASE_SECONDS) if queued else None,
    )


_INSERT_SQL = """
INSERT INTO notifications_notification
    (id, api_key_id, recipient_id, external_user_id, event_id, data, priority, idempotency_key,
     request_fingerprint, accept_response, created_at)
VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s::jsonb, now())
ON CONFLICT (api_key_id, idempotency_key) DO NOTHING
RETURNING id
"""


def _insert_notification(
    *,
    notification_id: uuid.UUID,
    api_key: APIKey,
    recipient: Recipient,
    event: Event,
    data: dict[str, Any],
    priority: str,
    idempotency_key: str | None,
    fingerprint: str,
    body: dict[str, Any],
) -> bool:
    """Insert unless the idempotency key is taken. The unique index decides, so two
    concurrent identical requests cannot both insert: the second waits for the first to
    commit, then inserts nothing."""
    with connection.cursor() as cursor:
        cursor.execute(
            _INSERT_SQL,
            [
                notification_id,
                api_key.pk,
                recipient.pk,
                recipient.external_id,
                event.pk,
                json.dumps(data),
                priority,
                idempotency_key,
                fingerprint,
                json.dumps(body),
            ],
        )
        return cursor.fetchone() is not None
