"""Provider webhooks: delivery receipts and suppressions come in here."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from anymail import urls as anymail_urls
from anymail.utils import get_anymail_setting
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.urls import URLPattern, include, path

from channels.webhooks import twilio


def _only_with_webhook_secret(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """anymail accepts unsigned webhooks when ANYMAIL_WEBHOOK_SECRET is unset (it only warns);
    a forged "bounce" would then suppress any address, so without a secret we refuse."""

    @functools.wraps(view)
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not get_anymail_setting("webhook_secret", default=None):
            return HttpResponseForbidden("ANYMAIL_WEBHOOK_SECRET is not configured.")
        return view(request, *args, **kwargs)

    return guarded


_anymail_webhooks = [
    URLPattern(p.pattern, _only_with_webhook_secret(p.callback), p.default_args, p.name)
    for p in anymail_urls.urlpatterns
    if isinstance(p, URLPattern)
]

urlpatterns = [
    # anymail's tracking webhooks, e.g. /webhooks/anymail/postmark/tracking/ (HTTP basic auth
    # with ANYMAIL_WEBHOOK_SECRET "user:password").
    path("anymail/", include(_anymail_webhooks)),
    path("twilio/status", twilio.status_callback, name="twilio-status"),
    path("twilio/inbound", twilio.inbound, name="twilio-inbound"),
]
