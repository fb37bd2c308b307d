"""Admin for templates, the notification log, the dead-letter list and API keys' scopes.

The log models record what happened; they are never written by hand here. The only write
the log admin offers is replaying dead letters, which goes through the delivery service.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Exists, F, Model, OuterRef, QuerySet
from django.http import HttpRequest
from django.utils.text import Truncator
from rest_framework_api_key.admin import APIKeyModelAdmin
from rest_framework_api_key.models import APIKey

from channels.base import Channel
from notifications.locales import canonical_locale, is_valid_locale
from notifications.models import (
    ApiKeyAccess,
    ApiScope,
    Broadcast,
    Delivery,
    DeliveryStatus,
    FailedDelivery,
    InboxMessage,
    Notification,
    Template,
)
from notifications.rendering import TemplateRenderError, validate_template_source
from notifications.services import failed_deliveries_replay
from notifications.services.broadcasts import broadcast_cancel

# --- templates ---------------------------------------------------------------------------


class TemplateForm(forms.ModelForm):
    class Meta:
        model = Template
        fields = ("event", "channel", "locale", "subject", "body", "html_body", "url")

    SOURCE_FIELDS = ("subject", "body", "html_body", "url")

    def clean_locale(self) -> str:
        # Matching at send time compares canonical tags, so "pt_br" must be stored "pt-BR".
        locale = self.cleaned_data.get("locale", "")
        if not is_valid_locale(locale):
            raise forms.ValidationError("Not a locale tag such as 'en' or 'pt-BR'.")
        return canonical_locale(locale)

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        # A syntax error saved here would only surface at send time, failing every delivery
        # of the event; catch it while the author is still looking at it.
        for name in self.SOURCE_FIELDS:
            source = cleaned.get(name)
            if not source:
                continue
            try:
                validate_template_source(source)
            except TemplateRenderError as exc:
                self.add_error(name, f"Template syntax error: {exc}")
        return cleaned


@admin.register(Template)
class TemplateAdmin(admin.ModelAdmin):
    form = TemplateForm
    list_display = ("event", "channel", "locale", "version", "updated_at")
    list_filter = ("channel", "locale", "event")
    search_fields = ("event__key", "subject")
    list_select_related = ("event",)
    readonly_fields = ("version", "updated_at")
    ordering = ("event__key", "channel", "locale")

    def save_model(
        self, request: HttpRequest, obj: Template, form: forms.ModelForm, change: bool
    ) -> None:
        # Deliveries record templateVersion, so a content change must be visible there. F()
        # keeps two admins saving the same template at once from both writing the same number.
        bump = change and form.has_changed()
        if bump:
            obj.version = F("version") + 1  # type: ignore[assignment]
        super().save_model(request, obj, form, change)
        if bump:
            obj.refresh_from_db(fields=["version"])


# --- the notification log ----------------------------------------------------------------


class ReadOnlyLogAdmin(admin.ModelAdmin):
    """The log is written by the services only; superusers may still delete (e.g. erasure)."""

    # Counting a large log table on every changelist view is the slowest query of the page.
    show_full_result_count = False

    def get_readonly_fields(self, request: HttpRequest, obj: Model | None = None) -> list[str]:
        return [field.name for field in self.model._meta.fields]

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return request.user.is_superuser


class _DeliveryExistsFilter(admin.SimpleListFilter):
    """Notifications having at least one delivery with ``field == value``.

    EXISTS rather than a join on deliveries: a notification with several matching
    deliveries must still be listed once, and without DISTINCT over the whole log.
    """

    field: str
    options: list[tuple[str, str]]

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return self.options

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[Notification]
    ) -> QuerySet[Notification]:
        value = self.value()
        if value is None:
            return queryset
        matching = Delivery.objects.filter(notification=OuterRef("pk"), **{self.field: value})
        return queryset.filter(Exists(matching))


class DeliveryStatusFilter(_DeliveryExistsFilter):
    title = "delivery status"
    parameter_name = "delivery_status"
    field = "status"
    options = list(DeliveryStatus.choices)


class DeliveryChannelFilter(_DeliveryExistsFilter):
    title = "delivery channel"
    parameter_name = "delivery_channel"
    field = "channel"
    options = list(Channel.choices)


class DeliveryInline(admin.TabularInline):
    model = Delivery
    extra = 0
    can_delete = False
    show_change_link = True
    fields = (
        "channel",
        "status",
        "reason",
        "attempts",
        "provider",
        "provider_message_id",
        "queued_at",
        "sent_at",
        "failed_at",
        "last_error",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


@admin.register(Notification)
class NotificationAdmin(ReadOnlyLogAdmin):
    list_display = ("id", "external_user_id", "event", "created_at", "idempotency_key")
    list_filter = (
        "event",
        ("created_at", admin.DateFieldListFilter),
        DeliveryStatusFilter,
        DeliveryChannelFilter,
    )
    search_fields = ("external_user_id", "recipient__external_id", "idempotency_key")
    list_select_related = ("event",)
    ordering = ("-created_at",)
    inlines = (DeliveryInline,)


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyLogAdmin):
    list_display = (
        "notification",
        "channel",
        "status",
        "reason",
        "attempts",
        "provider",
        "queued_at",
        "sent_at",
    )
    list_filter = ("status", "channel", ("queued_at", admin.DateFieldListFilter))
    search_fields = ("notification__external_user_id", "provider_message_id")
    list_select_related = ("notification",)
    ordering = ("-id",)


# --- dead letters ------------------------------------------------------------------------


class ReplayedFilter(admin.SimpleListFilter):
    title = "replayed"
    parameter_name = "replayed"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("yes", "Yes"), ("no", "No")]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[FailedDelivery]
    ) -> QuerySet[FailedDelivery]:
        value = self.value()
        if value == "yes":
            return queryset.filter(replayed_at__isnull=False)
        if value == "no":
            return queryset.filter(replayed_at__isnull=True)
        return queryset


@admin.register(FailedDelivery)
class FailedDeliveryAdmin(ReadOnlyLogAdmin):
    list_display = (
        "delivery",
        "channel",
        "error_class",
        "short_error_message",
        "attempts",
        "failed_at",
        "replayed_at",
        "replayed_by",
    )
    list_filter = (
        "delivery__channel",
        ReplayedFilter,
        ("failed_at", admin.DateFieldListFilter),
    )
    search_fields = ("delivery__notification__external_user_id", "error_class")
    list_select_related = ("delivery",)
    ordering = ("-failed_at",)
    actions = ("replay_selected",)

    @admin.display(description="channel", ordering="delivery__channel")
    def channel(self, obj: FailedDelivery) -> str:
        return obj.delivery.get_channel_display()

    @admin.display(description="error message")
    def short_error_message(self, obj: FailedDelivery) -> str:
        return Truncator(obj.error_message).chars(80)

    def has_replay_permission(self, request: HttpRequest) -> bool:
        # Replaying sends messages to real people again: a permission of its own ("Can
        # replay dead letters"), granted apart from viewing the list.
        return request.user.has_perm("notifications.replay_faileddelivery")

    @admin.action(description="Replay selected", permissions=["replay"])
    def replay_selected(self, request: HttpRequest, queryset: QuerySet[FailedDelivery]) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        already = queryset.filter(replayed_at__isnull=False).count()
        replayed = failed_deliveries_replay(failed_ids=ids, replayed_by=request.user.get_username())
        parts = [f"Replayed {replayed} of {len(ids)} selected dead letters."]
        if already:
            parts.append(f"{already} skipped: already replayed.")
        # Another admin replaying the same rows right now, or a delivery that left `failed`.
        others = len(ids) - replayed - already
        if others > 0:
            parts.append(f"{others} not requeued: replayed concurrently or no longer failed.")
        level = (
            messages.SUCCESS if replayed and replayed + already == len(ids) else messages.WARNING
        )
        self.message_user(request, " ".join(parts), level)


# --- in-app inbox ------------------------------------------------------------------------


@admin.register(InboxMessage)
class InboxMessageAdmin(admin.ModelAdmin):
    list_display = ("recipient", "title", "category", "read_at", "archived_at", "created_at")
    search_fields = ("recipient__external_id", "title")
    list_select_related = ("recipient",)
    # Selects listing every recipient and every delivery would not render on a real log.
    raw_id_fields = ("recipient", "delivery")
    readonly_fields = ("created_at",)
    ordering = ("-id",)


# --- broadcasts --------------------------------------------------------------------------


@admin.register(Broadcast)
class BroadcastAdmin(ReadOnlyLogAdmin):
    list_display = (
        "id",
        "event",
        "audience_kind",
        "status",
        "recipients_total",
        "created_at",
        "fanned_out_at",
        "cancelled_at",
    )
    list_filter = ("status", "event", ("created_at", admin.DateFieldListFilter))
    search_fields = ("=id", "idempotency_key")
    list_select_related = ("event",)
    ordering = ("-created_at",)
    actions = ("cancel_selected",)

    @admin.display(description="audience")
    def audience_kind(self, obj: Broadcast) -> str:
        audience = obj.audience or {}
        if "topic" in audience:
            return f"topic {audience['topic']}"
        if "userIds" in audience:
            return f"{len(audience['userIds'])} userIds"
        return "everyone"

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        # View-only list, but cancelling changes what real people receive.
        return request.user.has_perm("notifications.change_broadcast")

    @admin.action(
        description="Cancel selected (queued deliveries are skipped)", permissions=["cancel"]
    )
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet[Broadcast]) -> None:
        ids = list(queryset.exclude(status=Broadcast.Status.CANCELLED).values_list("pk", flat=True))
        for broadcast_id in ids:
            broadcast_cancel(broadcast_id=broadcast_id)
        self.message_user(request, f"Cancelled {len(ids)} broadcasts.", messages.SUCCESS)


# --- API keys: the library's admin (shows a new key once) plus scopes and rate limit -----


class ApiKeyAccessForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=ApiScope.choices, widget=forms.CheckboxSelectMultiple, required=False
    )

    class Meta:
        model = ApiKeyAccess
        fields = ("scopes", "rate_limit")


class ApiKeyAccessInline(admin.StackedInline):
    model = ApiKeyAccess
    form = ApiKeyAccessForm
    can_delete = False
    min_num = 1
    max_num = 1
    verbose_name_plural = "access (a key without scopes may call nothing)"


admin.site.unregister(APIKey)


@admin.register(APIKey)
class ApiKeyAdmin(APIKeyModelAdmin):
    inlines = (ApiKeyAccessInline,)
    # The library types its list_display as a fixed-length tuple.
    list_display = (*APIKeyModelAdmin.list_display, "scope_list", "rate_limit")  # type: ignore[assignment]
    list_select_related = ("access",)

    @admin.display(description="scopes")
    def scope_list(self, obj: APIKey) -> str:
        access = getattr(obj, "access", None)
        return ", ".join(access.scopes) if access is not None else "(none)"

    @admin.display(description="rate limit")
    def rate_limit(self, obj: APIKey) -> str:
        access = getattr(obj, "access", None)
        return (access.rate_limit if access is not None else "") or "default"
