from __future__ import annotations

from typing import Any

from rest_framework import serializers

from channels.base import Channel
from notifications.api.fields import (
    EVENT_MAX_LENGTH,
    RejectUnknownFieldsMixin,
    SlugField,
    StrictCharField,
    StrictChoiceField,
    UniqueListField,
    UserIdField,
    reject_unstorable_json,
)
from notifications.models import Delivery, Notification
from preferences.models import Priority


class NotifyRequestSerializer(RejectUnknownFieldsMixin, serializers.Serializer):  # type: ignore[type-arg]
    userId = UserIdField()
    event = SlugField(max_length=EVENT_MAX_LENGTH)
    channels = UniqueListField(
        child=StrictChoiceField(choices=Channel.choices),
        required=False,
        min_length=1,
        max_length=len(Channel.choices),
    )
    # DRF pops declared fields off the class, so this does not shadow Serializer.data.
    data = serializers.DictField(required=False, default=dict)  # type: ignore[assignment]
    idempotencyKey = StrictCharField(max_length=255, required=False)
    # Overrides the event's lane: "transactional" (never waits behind bulk) or "bulk".
    priority = StrictChoiceField(choices=Priority.choices, required=False)

    def validate_data(self, value: dict[str, Any]) -> dict[str, Any]:
        reject_unstorable_json(value)
        return value


class AcceptedDeliverySerializer(serializers.Serializer):  # type: ignore[type-arg]
    channel = serializers.ChoiceField(choices=Channel.choices)
    status = serializers.CharField()
    reason = serializers.CharField(required=False)


class NotifyResponseSerializer(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.UUIDField()
    deliveries = AcceptedDeliverySerializer(many=True)


class DeliverySerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    providerMessageId = serializers.CharField(source="provider_message_id")
    lastError = serializers.CharField(source="last_error")
    queuedAt = serializers.DateTimeField(source="queued_at", allow_null=True)
    sendingAt = serializers.DateTimeField(source="sending_at", allow_null=True)
    sentAt = serializers.DateTimeField(source="sent_at", allow_null=True)
    deliveredAt = serializers.DateTimeField(source="delivered_at", allow_null=True)
    failedAt = serializers.DateTimeField(source="failed_at", allow_null=True)
    skippedAt = serializers.DateTimeField(source="skipped_at", allow_null=True)
    transitions = serializers.JSONField(source="history")
    # Per destination (each push device token): {"status", "messageId"?, "error"?}.
    destinations = serializers.JSONField(source="results")

    class Meta:
        model = Delivery
        fields = [
            "id",
            "channel",
            "status",
            "reason",
            "attempts",
            "lastError",
            "provider",
            "providerMessageId",
            "content",
            "queuedAt",
            "sendingAt",
            "sentAt",
            "deliveredAt",
            "failedAt",
            "skippedAt",
            "transitions",
            "destinations",
        ]


class NotificationSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    userId = serializers.CharField(source="external_user_id")
    event: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="key", read_only=True
    )
    idempotencyKey = serializers.CharField(source="idempotency_key", allow_null=True)
    createdAt = serializers.DateTimeField(source="created_at")
    deliveries = DeliverySerializer(many=True, read_only=True)

    class Meta:
        model = Notification
        fields = [
            "id",
            "userId",
            "event",
            "priority",
            "data",
            "idempotencyKey",
            "createdAt",
            "deliveries",
        ]
