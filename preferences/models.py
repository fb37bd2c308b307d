from __future__ import annotations

from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from phonenumber_field.modelfields import PhoneNumberField

from channels.base import Channel
from preferences import tokens
from preferences.addresses import canonical_email


class Recipient(models.Model):
    external_id = models.CharField(max_length=255, unique=True, help_text="The caller's userId.")
    email = models.EmailField(blank=True, null=True)
    phone = PhoneNumberField(blank=True, null=True, help_text="E.164, e.g. +14155550100")
    locale = models.CharField(max_length=35, blank=True, default="")
    timezone = models.CharField(max_length=64, blank=True, default="")
    # Carried by each recipient token (preferences.access): raising it revokes them all.
    token_generation = models.PositiveIntegerField(default=0, db_default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return self.external_id


class Device(models.Model):
    class Platform(models.TextChoices):
        APNS = "apns", "Apple (APNs)"
        FCM = "fcm", "Firebase (FCM)"

    recipient = models.ForeignKey(Recipient, on_delete=models.CASCADE, related_name="devices")
    platform = models.CharField(max_length=8, choices=Platform.choices)
    token = models.CharField(max_length=4096)
    active = models.BooleanField(default=True)
    deactivated_at = models.DateTimeField(null=True, blank=True)
    deactivation_reason = models.CharField(max_length=255, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["platform", "token"], name="device_unique_token"),
        ]
        indexes = [
            models.Index(
                fields=["recipient"], condition=Q(active=True), name="device_active_by_recipient"
            ),
            # GET …/devices pages a recipient's devices by id (inactive ones are kept, so
            # there can be many): each page a range scan, not a sort of all of them.
            models.Index(fields=["recipient", "id"], name="device_by_recipient_id"),
        ]

    def __str__(self) -> str:
        return f"{self.platform}:{self.token[:12]}…"

    def clean(self) -> None:
        # The admin's forms run this; the API and services call preferences.tokens themselves.
        if self.platform in self.Platform.values:
            try:
                self.token = tokens.device_token(self.platform, self.token)
            except ValidationError as exc:
                raise ValidationError({"token": exc.messages}) from exc


class Category(models.Model):
    key = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=255, blank=True, default="")
    critical = models.BooleanField(
        default=False, help_text="Critical categories (security codes…) ignore opt-outs."
    )

    class Meta:
        verbose_name_plural = "categories"

    def __str__(self) -> str:
        return self.key


class Priority(models.TextChoices):
    """Which lane a notification travels in: transactional never waits behind bulk."""

    TRANSACTIONAL = "transactional", "Transactional (OTP, password reset…)"
    BULK = "bulk", "Bulk (broadcasts, digests…)"


class Event(models.Model):
    key = models.SlugField(max_length=128, unique=True)
    category = models.ForeignKey(Category, on_delete=models.PROTECT, related_name="events")
    default_channels = ArrayField(
        models.CharField(max_length=16, choices=Channel.choices), default=list, blank=True
    )
    description = models.TextField(blank=True, default="")
    priority = models.CharField(
        max_length=16, choices=Priority.choices, default=Priority.TRANSACTIONAL
    )

    def __str__(self) -> str:
        return self.key


class Topic(models.Model):
    """A named audience for broadcasts (e.g. "product-news"), with its subscribers."""

    key = models.SlugField(max_length=128, unique=True)
    name = models.CharField(max_length=255, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.key


class TopicSubscription(models.Model):
    topic = models.ForeignKey(Topic, on_delete=models.CASCADE, related_name="subscriptions")
    recipient = models.ForeignKey(
        Recipient, on_delete=models.CASCADE, related_name="topic_subscriptions"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            # Also the index that fan-out pages through by (topic, recipient_id) keyset.
            models.UniqueConstraint(
                fields=["topic", "recipient"], name="topic_subscription_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.topic}: {self.recipient}"


class Preference(models.Model):
    """One opt-in/opt-out rule. A null category or channel means "all"; most specific wins."""

    recipient = models.ForeignKey(Recipient, on_delete=models.CASCADE, related_name="preferences")
    category = models.ForeignKey(Category, on_delete=models.CASCADE, null=True, blank=True)
    channel = models.CharField(max_length=16, choices=Channel.choices, null=True, blank=True)
    enabled = models.BooleanField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["recipient", "category", "channel"],
                name="preference_unique_rule",
                nulls_distinct=False,
            ),
        ]

    def __str__(self) -> str:
        scope = f"{self.category or 'all'}/{self.channel or 'all'}"
        return f"{self.recipient}: {scope} {'on' if self.enabled else 'off'}"


class Suppression(models.Model):
    """A destination that must not be used again: a hard bounce, a complaint, an SMS STOP.

    Keyed by the address itself (not the recipient), because the address is what the provider
    refused; any recipient holding it is skipped with reason ``suppressed``.
    """

    class Reason(models.TextChoices):
        HARD_BOUNCE = "hard_bounce", "Hard bounce"
        COMPLAINT = "complaint", "Spam complaint"
        UNSUBSCRIBED = "unsubscribed", "Unsubscribed at the provider"
        INVALID = "invalid", "Invalid destination"
        SMS_STOP = "sms_stop", "Replied STOP"
        MANUAL = "manual", "Added by an operator"

    channel = models.CharField(
        max_length=16, choices=[(Channel.EMAIL, "Email"), (Channel.SMS, "SMS")]
    )
    address = models.CharField(max_length=320, help_text="Lower-case email or E.164 phone.")
    reason = models.CharField(max_length=32, choices=Reason.choices)
    provider = models.CharField(max_length=64, blank=True, default="")
    detail = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["channel", "address"], name="suppression_unique"),
        ]
        indexes = [models.Index(fields=["-created_at", "-id"], name="suppression_recent")]

    def __str__(self) -> str:
        return f"{self.channel}:{self.address} ({self.reason})"


def normalize_address(channel: str, address: str) -> str:
    """A suppression's address as stored and compared: an email in canonical form (its domain
    in IDNA ASCII, see preferences.addresses) and lower-case, as the send-time SQL compares
    ``lower(recipient.email)`` with it; a phone as E.164."""
    address = address.strip()
    if channel != Channel.EMAIL:
        return address
    try:
        address = canonical_email(address)
    except ValueError:
        pass  # a bounce for a domain with no IDNA form: stored as reported, it matches nothing
    return address.lower()
