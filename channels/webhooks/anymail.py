"""anymail's tracking webhook for the ESP that sends our email, and what its events mean.

Only the configured ESP's tracking view is routed (``tracking_routes``): anymail ships a view
for every ESP it knows, and the others, unconfigured, answer 500 to anyone. Nothing here
consumes inbound email, so no inbound view is routed. The view is anymail's own (it checks
basic auth against ANYMAIL_WEBHOOK_SECRET and normalises the ESP's payload), answering what it
refuses in our error shape (channels/webhooks/errors.py). The receiver only decides what an
event means for the delivery it names. Unknown message ids are fine: the answer is still 200,
so the ESP stops retrying.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from anymail import urls as anymail_urls
from anymail.exceptions import (
    AnymailConfigurationError,
    AnymailError,
    AnymailImproperlyInstalled,
    AnymailWebhookValidationFailure,
)
from anymail.signals import AnymailTrackingEvent, EventType, RejectReason, tracking
from anymail.utils import get_anymail_setting
from django.core.exceptions import ImproperlyConfigured
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.urls import URLPattern
from django.views import View
from django.views.decorators.csrf import csrf_exempt

from channels.base import Channel
from channels.providers.email import esp_provider_name
from channels.webhooks.errors import (
    MalformedWebhook,
    answering_unreadable_with_4xx,
    method_not_allowed,
    refuse,
    text_field,
)
from notifications.models import DeliveryStatus
from notifications.services import Receipt, delivery_receipt_apply

logger = logging.getLogger(__name__)

# Events that settle a delivery; everything else (opened, clicked, deferred, queued, sent,
# unknown...) is only appended to its history.
_STATUS = {
    EventType.DELIVERED: DeliveryStatus.DELIVERED,
    EventType.BOUNCED: DeliveryStatus.FAILED,
    EventType.REJECTED: DeliveryStatus.FAILED,
    EventType.FAILED: DeliveryStatus.FAILED,
}
# Why the ESP refused to send, when the reason is the address itself.
_DEAD_ADDRESS_REASONS = {
    RejectReason.BOUNCED: "hard_bounce",
    RejectReason.INVALID: "invalid",
    RejectReason.SPAM: "complaint",
    RejectReason.UNSUBSCRIBED: "unsubscribed",
}


# The media type an ESP posts its tracking events with, where we know it; anymail's views
# themselves read the body whatever the header says.
_CONTENT_TYPES = {"postmark": "application/json"}
# Longest message id (Delivery.provider_message_id) and address (Suppression.address) we store.
_MAX_MESSAGE_ID = 255
_MAX_ADDRESS = 320


def tracking_routes(esp_name: str | None) -> list[URLPattern]:
    """anymail's tracking route for this ESP (e.g. postmark/tracking/), none for SMTP."""
    if not esp_name:
        return []
    provider = esp_provider_name(esp_name)
    return [
        URLPattern(pattern.pattern, _hardened(pattern.callback, provider), name=pattern.name)
        for pattern in anymail_urls.urlpatterns
        if isinstance(pattern, URLPattern) and pattern.name == f"{provider}_tracking_webhook"
    ]


def _hardened(view: Callable[..., HttpResponse], provider: str) -> Callable[..., HttpResponse]:
    anymail_view = view.view_class  # type: ignore[attr-defined]
    answering = type(
        anymail_view.__name__,
        (_AnsweringInOurShape, anymail_view),
        {"content_type": _CONTENT_TYPES.get(provider)},
    )
    # csrf_exempt again: anymail marks its dispatch(), which the mixin's dispatch() overrides.
    return csrf_exempt(
        _only_with_webhook_secret(
            answering_unreadable_with_4xx(answering.as_view(**view.view_initkwargs))  # type: ignore[attr-defined]
        )
    )


def tracking_webhook_problems(esp_name: str) -> list[str]:
    """What the ESP's tracking view demands and is not set (e.g. POSTAL_WEBHOOK_KEY), for the
    system check: anymail only finds out when a webhook arrives."""
    problems = []
    for route in tracking_routes(esp_name):
        view = route.callback  # functools.wraps kept as_view()'s view_class and view_initkwargs
        try:
            view.view_class(**view.view_initkwargs)  # type: ignore[attr-defined]
        except AnymailConfigurationError as exc:
            problems.append(f"the tracking webhook cannot work: {exc}")
    return problems


def _only_with_webhook_secret(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """anymail accepts unsigned webhooks when ANYMAIL_WEBHOOK_SECRET is unset (it only warns);
    a forged "bounce" would then suppress any address, so without a secret we refuse."""

    @functools.wraps(view)
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not get_anymail_setting("webhook_secret", default=None):
            return refuse(request, 403, "forbidden", "ANYMAIL_WEBHOOK_SECRET is not configured.")
        try:
            return view(request, *args, **kwargs)
        except AnymailConfigurationError as exc:
            # A setting the ESP's view needs (the system check names it): the ESP retries
            # after a 503, so no receipt is lost once it is set.
            return refuse(request, 503, "webhook_not_configured", str(exc))

    return guarded


class _AnsweringInOurShape(View):
    """Mixed in before anymail's view: its refusals become our 4xx JSON instead of Django's
    SuspiciousOperation handling (a 400 logged at ERROR with a traceback) or a 500."""

    content_type: str | None = None
    esp_name: str

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        try:
            return super().dispatch(request, *args, **kwargs)
        except AnymailWebhookValidationFailure as exc:
            # 401, not 403: after a secret rotation the ESP keeps retrying until it has the new one.
            return refuse(
                request, 401, "unauthorized", str(exc), WWW_Authenticate='Basic realm="webhooks"'
            )

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if self.content_type and request.content_type != self.content_type:
            self.run_validators(request)  # type: ignore[attr-defined]  # anymail's auth first
            return refuse(request, 415, "unsupported_media_type", f"Expected {self.content_type}.")
        return super().post(request, *args, **kwargs)  # type: ignore[misc]

    def parse_events(self, request: HttpRequest) -> list[Any]:
        try:
            return super().parse_events(request)  # type: ignore[misc, no-any-return]
        except (AnymailWebhookValidationFailure, AnymailImproperlyInstalled):
            raise
        # RecursionError: JSON nested deeper than json.loads' stack ("[[[[..." by the thousand).
        except (
            ValueError,
            TypeError,
            LookupError,
            AttributeError,
            RecursionError,
            AnymailError,
        ) as exc:
            # The payload's shape, not ours: anymail indexes into whatever JSON it was given.
            raise MalformedWebhook(
                f"Not a {self.esp_name} tracking payload ({type(exc).__name__})."
            ) from exc
        except ImproperlyConfigured as exc:
            # anymail's "an inbound payload at the tracking URL": the ESP's settings, not ours.
            raise MalformedWebhook(f"Not a {self.esp_name} tracking payload: {exc}") from exc

    def http_method_not_allowed(
        self, request: HttpRequest, *args: Any, **kwargs: Any
    ) -> HttpResponse:
        allowed = [m.upper() for m in self.http_method_names if hasattr(self, m)]
        return method_not_allowed(request, allowed)


@receiver(tracking, dispatch_uid="channels.webhooks.anymail.tracking")
def on_tracking_event(
    sender: Any, event: AnymailTrackingEvent, esp_name: str, **kwargs: Any
) -> None:
    message_id = _message_id(event.message_id)
    if not message_id:
        logger.info("%s %s event without a message id ignored", esp_name, event.event_type)
        return
    recipient = text_field(event.recipient, field="recipient", max_length=_MAX_ADDRESS)
    metadata = event.metadata or {}
    if not isinstance(metadata, dict):
        raise MalformedWebhook("metadata is not an object.")
    reason = _suppression_reason(event)
    detail = (
        text_field(event.mta_response, field="mta_response", max_length=10_000),
        text_field(event.description, field="description", max_length=10_000),
    )
    delivery_receipt_apply(
        Receipt(
            provider=esp_provider_name(esp_name),
            message_id=message_id,
            delivery_id=_delivery_id(metadata.get("deliveryId")),
            event=str(event.event_type),
            status=_STATUS.get(event.event_type),
            detail=" / ".join(filter(None, detail)),
            suppress=(Channel.EMAIL.value, recipient, reason) if reason and recipient else None,
        )
    )


def _message_id(value: Any) -> str | None:
    # Postmark's are strings; a number is only a number written as one.
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return text_field(value, field="message id", max_length=_MAX_MESSAGE_ID)


def _suppression_reason(event: AnymailTrackingEvent) -> str | None:
    if event.event_type == EventType.COMPLAINED:
        return "complaint"
    if event.event_type == EventType.UNSUBSCRIBED:
        return "unsubscribed"
    if event.event_type == EventType.BOUNCED:
        # anymail calls Postmark's SoftBounce "bounced" too; Postmark's Inactive=false says the
        # address still works (a full mailbox), so the message failed but the address lives.
        esp_event = event.esp_event
        soft = isinstance(esp_event, dict) and esp_event.get("Inactive") is False
        return None if soft else "hard_bounce"
    if event.event_type == EventType.REJECTED:
        return _DEAD_ADDRESS_REASONS.get(event.reject_reason)
    return None


def _delivery_id(value: Any) -> int | None:
    # isdigit() alone takes "²" (int() refuses it) and numbers past PostgreSQL's bigint.
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    return None
