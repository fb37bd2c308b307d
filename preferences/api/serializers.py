from __future__ import annotations

import functools
import zoneinfo
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from channels.base import Channel
from notifications.api.fields import (
    EmailField,
    PhoneField,
    RejectUnknownFieldsMixin,
    StrictBooleanField,
    StrictCharField,
    StrictChoiceField,
)
from notifications.locales import LOCALE_MAX_LENGTH, LOCALE_PATTERN, canonical_locale
from preferences import tokens
from preferences.models import Category, Device, Preference, Recipient, Suppression

# In the tz database's files but not zones: "localtime" is the host's own setting (a symlink
# some systems install), "Factory" a placeholder zone whose abbreviation is "-00".
_NOT_ZONES = frozenset({"localtime", "Factory", "posixrules"})


@functools.cache
def _time_zones() -> list[str]:
    return sorted(zoneinfo.available_timezones() - _NOT_ZONES)


class RecipientSerializer(RejectUnknownFieldsMixin, serializers.ModelSerializer):  # type: ignore[type-arg]
    userId = serializers.CharField(source="external_id", read_only=True)
    # The validator allows up to 320 characters; the column (and RFC 5321's path) holds 254.
    email = EmailField(required=False, allow_null=True, allow_blank=True, max_length=254)
    phone = PhoneField(required=False, allow_null=True, allow_blank=True)
    # Checked as sent, then stored in canonical case with "-" (pt_br -> pt-BR).
    locale = StrictCharField(
        required=False,
        allow_blank=True,
        max_length=LOCALE_MAX_LENGTH,
        pattern=LOCALE_PATTERN,
        pattern_message="Not a language tag (BCP 47) such as 'en' or 'pt-BR'.",
    )
    # An enum in the schema too: no pattern tells an IANA name from a string that looks like one.
    timezone = StrictChoiceField(choices=_time_zones(), required=False, allow_blank=True)
    createdAt = serializers.DateTimeField(source="created_at", read_only=True)
    updatedAt = serializers.DateTimeField(source="updated_at", read_only=True)

    class Meta:
        model = Recipient
        fields = ["userId", "email", "phone", "locale", "timezone", "createdAt", "updatedAt"]

    def validate_locale(self, value: str) -> str:
        return canonical_locale(value)

    def to_representation(self, instance: Recipient) -> dict[str, Any]:
        data = super().to_representation(instance)
        data["phone"] = str(instance.phone) if instance.phone else None
        return data  # type: ignore[no-any-return]


@extend_schema_field(
    {
        "type": "string",
        "minLength": 1,
        "maxLength": tokens.MAX_LENGTH,
        # Both platforms' characters; the platform's own rule is checked with the platform.
        "pattern": "^[A-Za-z0-9_:-]+$",
        "description": (
            f"apns: {tokens.APNS_MIN_HEX_DIGITS} to {tokens.APNS_MAX_HEX_DIGITS} hexadecimal "
            "digits, an even number (stored in lower case); fcm: the registration token, "
            f"letters, digits, '_', '-' and ':', at most {tokens.FCM_MAX_LENGTH} characters. "
            "Never trimmed: whitespace makes a token invalid."
        ),
    }
)
class DeviceTokenField(StrictCharField):
    """Length checked on the token as sent: trimming first let a token over maxLength in."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(trim_whitespace=False, max_length=tokens.MAX_LENGTH, **kwargs)


def _registration(platform: str, token_schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["platform", "token"],
        "properties": {
            "platform": {"type": "string", "enum": [platform]},
            "token": {"type": "string", **token_schema},
        },
    }


# The token's rule depends on the platform, which one field's schema cannot say: the request is
# one of two shapes (the schemathesis run holds the API to it both ways).
DEVICE_REGISTRATION_SCHEMA: dict[str, Any] = {
    "oneOf": [
        _registration(
            Device.Platform.APNS.value,
            {
                "minLength": tokens.APNS_MIN_HEX_DIGITS,
                "maxLength": tokens.APNS_MAX_HEX_DIGITS,
                "pattern": "^(?:[0-9a-fA-F]{2})+$",
                "description": "hexadecimal digits, an even number; stored in lower case",
            },
        ),
        _registration(
            Device.Platform.FCM.value,
            {
                "minLength": 1,
                "maxLength": tokens.FCM_MAX_LENGTH,
                "pattern": "^[A-Za-z0-9_:-]+$",
                "description": "the registration token as Firebase gave it",
            },
        ),
    ]
}


class DeviceSerializer(RejectUnknownFieldsMixin, serializers.ModelSerializer):  # type: ignore[type-arg]
    platform = StrictChoiceField(choices=Device.Platform.choices)
    token = DeviceTokenField()
    deactivatedAt = serializers.DateTimeField(
        source="deactivated_at", read_only=True, allow_null=True
    )
    deactivationReason = serializers.CharField(source="deactivation_reason", read_only=True)
    createdAt = serializers.DateTimeField(source="created_at", read_only=True)

    class Meta:
        model = Device
        fields = [
            "id",
            "platform",
            "token",
            "active",
            "deactivatedAt",
            "deactivationReason",
            "createdAt",
        ]
        read_only_fields = ["id", "active"]
        # The (platform, token) uniqueness is handled by the service (a token moves to its
        # newest owner), so the automatic unique-together validator must not reject it.
        validators: list[Any] = []

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        try:
            attrs["token"] = tokens.device_token(attrs["platform"], attrs["token"])
        except DjangoValidationError as exc:
            raise serializers.ValidationError({"token": exc.messages}) from exc
        return attrs


class PreferenceRuleSerializer(RejectUnknownFieldsMixin, serializers.Serializer):  # type: ignore[type-arg]
    category = serializers.SlugRelatedField(
        slug_field="key", queryset=Category.objects.all(), allow_null=True, required=False
    )
    channel = StrictChoiceField(choices=Channel.choices, allow_null=True, required=False)
    enabled = StrictBooleanField()

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        category = attrs.get("category")
        if category is not None and category.critical and not attrs["enabled"]:
            raise serializers.ValidationError(
                {"category": [f"{category.key!r} is critical and cannot be opted out of."]}
            )
        return attrs


class PreferencesSerializer(RejectUnknownFieldsMixin, serializers.Serializer):  # type: ignore[type-arg]
    preferences = PreferenceRuleSerializer(many=True, max_length=500)  # type: ignore[call-arg]

    def validate_preferences(self, rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
        seen: set[tuple[Any, Any]] = set()
        for rule in rules:
            category = rule.get("category")
            key = (category.pk if category else None, rule.get("channel"))
            if key in seen:
                raise serializers.ValidationError(
                    "Each (category, channel) pair may appear only once."
                )
            seen.add(key)
        return rules


def preference_representation(preference: Preference) -> dict[str, Any]:
    return {
        "category": preference.category.key if preference.category else None,
        "channel": preference.channel,
        "enabled": preference.enabled,
    }


class SuppressionSerializer(RejectUnknownFieldsMixin, serializers.ModelSerializer):  # type: ignore[type-arg]
    channel = StrictChoiceField(choices=[("email", "email"), ("sms", "sms")])
    address = StrictCharField(max_length=320)
    reason = StrictChoiceField(choices=Suppression.Reason.choices, default="manual")
    createdAt = serializers.DateTimeField(source="created_at", read_only=True)

    class Meta:
        model = Suppression
        fields = ["id", "channel", "address", "reason", "provider", "detail", "createdAt"]
        read_only_fields = ["id", "provider", "detail"]
        validators: list[Any] = []  # duplicates answer 200 with the existing row (the service)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        check = EmailField() if attrs["channel"] == "email" else PhoneField()
        try:
            attrs["address"] = str(check.run_validation(attrs["address"]))
        except serializers.ValidationError as exc:
            raise serializers.ValidationError({"address": exc.detail}) from exc
        return attrs


class _StrictIntegerField(serializers.IntegerField):
    """A JSON integer: DRF's would take "60", 60.0 and true as well."""

    default_error_messages = {"invalid": "Must be a JSON integer."}

    def to_internal_value(self, data: Any) -> int:
        if not isinstance(data, int) or isinstance(data, bool):
            self.fail("invalid")
        return super().to_internal_value(data)  # type: ignore[no-any-return]


class RecipientTokenRequestSerializer(RejectUnknownFieldsMixin, serializers.Serializer):  # type: ignore[type-arg]
    expiresIn = _StrictIntegerField(
        required=False,
        min_value=60,
        max_value=settings.NOTIFY_RECIPIENT_TOKEN_MAX_TTL_SECONDS,
        help_text="Seconds the token is valid; default NOTIFY_RECIPIENT_TOKEN_TTL_SECONDS.",
    )


class RecipientTokenSerializer(serializers.Serializer):  # type: ignore[type-arg]
    userId = serializers.CharField()
    token = serializers.CharField(help_text="`Authorization: Bearer <token>` on /api/inbox.")
    expiresAt = serializers.DateTimeField()
    preferencesUrl = serializers.CharField(
        help_text="The recipient's preference centre: a signed link, NOTIFY_PREFERENCE_LINK_DAYS."
    )
