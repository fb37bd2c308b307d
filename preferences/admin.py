"""Admin for recipients, their devices and opt-outs, and the event catalogue."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from preferences.models import (
    Category,
    Device,
    Event,
    Preference,
    Recipient,
    Suppression,
    Topic,
    TopicSubscription,
    normalize_address,
)


class DeviceInline(admin.TabularInline):
    model = Device
    extra = 0
    fields = ("platform", "token", "active", "deactivated_at", "deactivation_reason", "created_at")
    # Deactivation is the push providers' verdict on a dead token; editing it by hand would
    # hide why a device stopped receiving.
    readonly_fields = ("deactivated_at", "deactivation_reason", "created_at")


class PreferenceInline(admin.TabularInline):
    model = Preference
    extra = 0
    fields = ("category", "channel", "enabled", "updated_at")
    readonly_fields = ("updated_at",)


@admin.register(Recipient)
class RecipientAdmin(admin.ModelAdmin):
    list_display = ("external_id", "email", "phone", "locale", "created_at")
    search_fields = ("external_id", "email", "phone")
    readonly_fields = ("created_at", "updated_at")
    inlines = (DeviceInline, PreferenceInline)
    ordering = ("-created_at",)


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    list_display = ("__str__", "recipient", "platform", "active", "deactivated_at", "created_at")
    list_filter = ("platform", "active")
    search_fields = ("token", "recipient__external_id")
    list_select_related = ("recipient",)
    # A select listing every recipient would not render on a real installation.
    autocomplete_fields = ("recipient",)
    readonly_fields = ("created_at", "updated_at")
    ordering = ("-created_at",)


@admin.register(Category)
class CategoryAdmin(admin.ModelAdmin):
    list_display = ("key", "name", "critical")
    list_filter = ("critical",)
    search_fields = ("key", "name")


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ("key", "category", "default_channels")
    list_filter = ("category",)
    search_fields = ("key", "description")
    list_select_related = ("category",)


@admin.register(Suppression)
class SuppressionAdmin(admin.ModelAdmin):
    """Addresses we no longer send to; delete a row to allow the address again."""

    list_display = ("channel", "address", "reason", "provider", "created_at")
    list_filter = ("channel", "reason", "created_at")
    search_fields = ("address",)
    readonly_fields = ("created_at",)
    show_full_result_count = False

    def save_model(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        # Lookups compare normalised addresses, so store them that way.
        obj.address = normalize_address(obj.channel, obj.address)
        super().save_model(request, obj, form, change)


# --- topics --------------------------------------------------------------------------------


@admin.register(Topic)
class TopicAdmin(admin.ModelAdmin):
    list_display = ("key", "name", "subscriber_count", "created_at")
    search_fields = ("key", "name")
    readonly_fields = ("created_at",)
    ordering = ("key",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Topic]:
        return super().get_queryset(request).annotate(subscriber_count=Count("subscriptions"))

    @admin.display(description="subscribers", ordering="subscriber_count")
    def subscriber_count(self, obj: Topic) -> int:
        return int(obj.subscriber_count)  # type: ignore[attr-defined]


@admin.register(TopicSubscription)
class TopicSubscriptionAdmin(admin.ModelAdmin):
    list_display = ("topic", "recipient", "created_at")
    list_filter = ("topic",)
    search_fields = ("recipient__external_id", "recipient__email")
    list_select_related = ("topic", "recipient")
    # A select listing every recipient would not render on a real installation.
    autocomplete_fields = ("recipient",)
    readonly_fields = ("created_at",)
    ordering = ("-created_at",)
    show_full_result_count = False
