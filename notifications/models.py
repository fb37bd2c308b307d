from __future__ import annotations

import uuid

from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from rest_framework_api_key.models import APIKey

from channels.base import Channel
from preferences.models import Event, Priority, Recipient


class Template(models.Model):
    """What one event says on one channel in one locale ("" is the default locale)."""

    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="templates")
    channel = models.CharField(max_length=16, choices=Channel.choices)
    locale = models.CharField(max_length=35, blank=True, default="")
    subject = models.CharField(
        max_length=998, blank=True, default="", help_text="Email subject or push/in-app title."
    )
    body = models.TextField(help_text="Plain text body (Django template syntax).")
    html_body = models.TextField(blank=True, default="", help_text="Email only.")
    url = models.CharField(max_length=2048, blank=True, default="", help_text="In-app link.")
    version = models.PositiveIntegerField(default=1)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["event", "channel", "locale"], name="template_unique_locale"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event.key}/{self.channel}/{self.locale or 'default'}"


class Broadcast(models.Model):
    """One event to an audience (a topic, a list of userIds, everyone), fanned out in batches."""

    class Status(models.TextChoices):
        PENDING = "pending"
        FANNING_OUT = "fanning_out"
        FANNED_OUT = "fanned_out"
        CANCELLED = "cancelled"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    api_key = models.ForeignKey(APIKey, on_delete=models.PROTECT, related_name="+")
    event = models.ForeignKey(Event, on_delete=models.PROTECT, related_name="broadcasts")
    # {"topic": key} | {"userIds": [...]} | {"all": true}
    audience = models.JSONField()
    channels = models.JSONField(null=True, blank=True)  # None: the event's default channels
    data = models.JSONField(default=dict, blank=True)
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    request_fingerprint = models.CharField(max_length=64)
    accept_response = models.JSONField(default=dict)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    # Keyset position of the fan-out (last recipient id done), so a re-run resumes there.
    # The fan-out runs as parallel chains over disjoint recipient id ranges (segments): each
    # segment i covers ids in (its starting cursor, fanout_bounds[i]] and is done when
    # fanout_cursors[i] reaches its bound; the last bound is the largest bigint, so
    # recipients created during the fan-out still get their notification.
    fanout_cursors = ArrayField(models.BigIntegerField(), default=list)
    fanout_bounds = ArrayField(models.BigIntegerField(), default=list)
    recipients_total = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    fanned_out_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    # The last count of its deliveries (notifications.services.broadcasts.broadcast_progress):
    # counting a broadcast of millions takes seconds, so polls share one count for a while.
    progress = models.JSONField(null=True, blank=True, editable=False)
    progress_counted_at = models.DateTimeField(null=True, blank=True, editable=False)
    progress_count_seconds = models.FloatField(default=0.0, db_default=0.0, editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["api_key", "idempotency_key"], name="broadcast_unique_idempotency"
            ),
        ]
        indexes = [models.Index(fields=["-created_at", "-id"], name="broadcast_recent")]

    def __str__(self) -> str:
        return f"{self.event_id} → {self.audience}"


class Notification(models.Model):
    # Every row is written once per recipient of a broadcast, so each index costs the fan-out:
    # the foreign keys below have none of their own, as each leads a composite index of Meta
    # (api_key: the idempotency constraint, recipient and event: their log indexes, broadcast:
    # the per-broadcast constraint), which serves their lookups and cascades as well.
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    api_key = models.ForeignKey(APIKey, on_delete=models.PROTECT, related_name="+", db_index=False)
    # SET_NULL: erasing a recipient keeps the anonymous log of what was sent.
    recipient = models.ForeignKey(
        Recipient,
        on_delete=models.SET_NULL,
        null=True,
        related_name="notifications",
        db_index=False,
    )
    external_user_id = models.CharField(max_length=255, blank=True, default="")
    event = models.ForeignKey(
        Event, on_delete=models.PROTECT, related_name="notifications", db_index=False
    )
    data = models.JSONField(default=dict, blank=True)
    priority = models.CharField(
        max_length=16, choices=Priority.choices, default=Priority.TRANSACTIONAL
    )
    broadcast = models.ForeignKey(
        Broadcast,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="notifications",
        db_index=False,
    )
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    request_fingerprint = models.CharField(max_length=64)
    # What the accept call answered, returned verbatim when the same request is replayed.
    accept_response = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["api_key", "idempotency_key"], name="notification_unique_idempotency"
            ),
            # A fan-out that runs twice inserts nothing twice (ON CONFLICT DO NOTHING); also
            # the index for a broadcast's progress.
            models.UniqueConstraint(
                fields=["broadcast", "recipient"],
                condition=Q(broadcast__isnull=False),
                name="notification_unique_per_broadcast",
            ),
        ]
        indexes = [
            # "-id" matches the API's (created_at, id) cursor order, so pages are index scans.
            models.Index(fields=["-created_at", "-id"], name="notification_recent"),
            models.Index(
                fields=["recipient", "-created_at", "-id"], name="notification_by_recipient"
            ),
            models.Index(fields=["event", "-created_at", "-id"], name="notification_by_event"),
        ]

    def __str__(self) -> str:
        return str(self.id)


class DeliveryStatus(models.TextChoices):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    SKIPPED = "skipped"


PENDING_STATUSES = (DeliveryStatus.QUEUED, DeliveryStatus.SENDING)
FINAL_STATUSES = (
    DeliveryStatus.SENT,
    DeliveryStatus.DELIVERED,
    DeliveryStatus.FAILED,
    DeliveryStatus.SKIPPED,
)


class Delivery(models.Model):
    """The notification log: one row per notification and channel."""

    # No index of its own: delivery_unique_channel (notification, channel) leads with it.
    notification = models.ForeignKey(
        Notification, on_delete=models.CASCADE, related_name="deliveries", db_index=False
    )
    channel = models.CharField(max_length=16, choices=Channel.choices)
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices)
    reason = models.CharField(max_length=64, blank=True, default="")
    content = models.JSONField(default=dict, blank=True)
    provider = models.CharField(max_length=64, blank=True, default="")
    provider_message_id = models.CharField(max_length=255, blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    # Every transition appended as {"status", "at", "attempt", "error"?}.
    history = models.JSONField(default=list, blank=True)
    # Per destination (e.g. each push device token): {"status", "messageId"?, "error"?}. A
    # retry skips the destinations already sent, so one dead phone never re-sends to the rest.
    results = models.JSONField(default=dict, blank=True)
    # Past this instant a queued/sending delivery is presumed lost and the sweep re-enqueues it.
    lease_until = models.DateTimeField(null=True, blank=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    sending_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    skipped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "deliveries"
        constraints = [
            models.UniqueConstraint(
                fields=["notification", "channel"], name="delivery_unique_channel"
            ),
        ]
        indexes = [
            models.Index(
                fields=["lease_until"],
                condition=Q(status__in=["queued", "sending"]),
                name="delivery_pending_lease",
            ),
            models.Index(fields=["status", "channel"], name="delivery_by_status"),
            # After the broker lost its messages, the broker watch re-enqueues queued rows
            # newest first, a keyset page at a time, from the loss back to its bound
            # (notifications/services/broker_watch.py).
            models.Index(
                fields=["-queued_at", "-id"],
                condition=Q(status="queued"),
                name="delivery_queued_recent",
            ),
            # Provider receipts (webhooks) find their delivery by the provider's message id.
            models.Index(
                fields=["provider", "provider_message_id"],
                condition=~Q(provider_message_id=""),
                name="delivery_by_provider_id",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.notification_id}/{self.channel}: {self.status}"


class FailedDelivery(models.Model):
    """The dead-letter table: deliveries that will not be tried again unless replayed."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="failures")
    task_name = models.CharField(max_length=255, blank=True, default="")
    error_class = models.CharField(max_length=255)
    error_message = models.TextField(blank=True, default="")
    traceback = models.TextField(blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    failed_at = models.DateTimeField(auto_now_add=True)
    replayed_at = models.DateTimeField(null=True, blank=True)
    replayed_by = models.CharField(max_length=255, blank=True, default="")

    class Meta:
        verbose_name = "failed delivery (dead letter)"
        verbose_name_plural = "failed deliveries (dead letters)"
        # Replaying sends messages to real people again: its own permission, not "change".
        permissions = [("replay_faileddelivery", "Can replay dead letters")]
        indexes = [
            models.Index(
                fields=["-failed_at"],
                condition=Q(replayed_at__isnull=True),
                name="failed_delivery_unreplayed",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.delivery}: {self.error_class}"


class InboxMessage(models.Model):
    """The in-app channel's store: what a recipient sees in their inbox."""

    recipient = models.ForeignKey(
        Recipient, on_delete=models.CASCADE, related_name="inbox_messages"
    )
    delivery = models.OneToOneField(
        Delivery, on_delete=models.SET_NULL, null=True, related_name="inbox_message"
    )
    title = models.CharField(max_length=998, blank=True, default="")
    body = models.TextField(blank=True, default="")
    url = models.CharField(max_length=2048, blank=True, default="")
    category = models.CharField(max_length=64, blank=True, default="")  # the event's, by key
    data = models.JSONField(default=dict, blank=True)
    read_at = models.DateTimeField(null=True, blank=True)
    seen_at = models.DateTimeField(null=True, blank=True)
    archived_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        # The inbox API's reads (notifications.selectors): newest first by id, per recipient;
        # the unread and unseen ones (the badge counts, the unread filter) by partial indexes.
        indexes = [
            models.Index(fields=["recipient", "-id"], name="inbox_by_recipient"),
            models.Index(fields=["recipient", "category", "-id"], name="inbox_by_category"),
            models.Index(
                fields=["recipient", "-id"],
                condition=Q(read_at__isnull=True, archived_at__isnull=True),
                name="inbox_unread",
            ),
            models.Index(
                fields=["recipient"],
                condition=Q(seen_at__isnull=True, archived_at__isnull=True),
                name="inbox_unseen",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.recipient}: {self.title}"


class ApiScope(models.TextChoices):
    """What an API key may call (SECURITY.md has the table of endpoints per scope)."""

    NOTIFY = "notify", "notify: POST /api/notify"
    BROADCAST = "broadcast", "broadcast: create, follow and cancel broadcasts"
    READ = "read", "read: the notification log (payloads and rendered content)"
    RECIPIENTS = "recipients", "recipients: recipients, devices, preferences, suppressions, topics"
    TOKENS = "tokens", "tokens: mint and revoke recipient tokens (the inbox API's credentials)"


def validate_rate_limit(value: str) -> None:
    from limits import parse_many

    try:
        parse_many(value)
    except ValueError as exc:
        raise ValidationError(
            f"{value!r} is not a rate limit such as '100/second' or '10/second;500/minute'."
        ) from exc


class ApiKeyAccess(models.Model):
    """What one API key may do: its scopes and, optionally, its own rate limit.

    A row beside the library's APIKey rather than a model replacing it: notifications and
    broadcasts point at APIKey rows, and a key without this row may call nothing.
    """

    api_key = models.OneToOneField(
        APIKey, on_delete=models.CASCADE, primary_key=True, related_name="access"
    )
    scopes = ArrayField(
        models.CharField(max_length=16, choices=ApiScope.choices), default=list, blank=True
    )
    # Empty: NOTIFY_API_RATE_LIMIT. Else the `limits` notation, e.g. "50/second;1000/minute".
    rate_limit = models.CharField(
        max_length=100, blank=True, default="", validators=[validate_rate_limit]
    )

    class Meta:
        verbose_name = "API key access"
        verbose_name_plural = "API key access"

    def __str__(self) -> str:
        return f"{self.api_key}: {', '.join(self.scopes) or 'no scopes'}"


class BrokerCanary(models.Model):
    """What the broker watch last wrote to the broker (one row): a token the broker must still
    hold at the next check, and the Redis server's run id then. A missing token, an older
    one, or another run id means the broker lost messages (docs/reliability.md)."""

    token = models.CharField(max_length=64, blank=True, default="")
    armed_at = models.DateTimeField(null=True, blank=True)
    server_id = models.CharField(max_length=64, blank=True, default="")

    def __str__(self) -> str:
        return f"broker canary {self.token or '(not armed)'}"


class BrokerLoss(models.Model):
    """One loss of the broker's messages the watch detected, and how far re-enqueueing the
    deliveries it may have lost has got: those queued between ``since`` (None: all of them)
    and ``detected_at``, newest first, ``cursor_*`` the last one published."""

    detected_at = models.DateTimeField()
    cause = models.CharField(max_length=200)
    since = models.DateTimeField(null=True, blank=True)
    cursor_queued_at = models.DateTimeField(null=True, blank=True)
    cursor_id = models.BigIntegerField(null=True, blank=True)
    requeued = models.BigIntegerField(default=0)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(
                fields=["detected_at"],
                condition=Q(finished_at__isnull=True),
                name="broker_loss_unfinished",
            )
        ]

    def __str__(self) -> str:
        return f"broker loss at {self.detected_at:%Y-%m-%d %H:%M:%S}: {self.cause}"
