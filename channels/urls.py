"""Provider webhooks: delivery receipts and suppressions come in here.

Built from settings when the URLconf loads: only the email ESP EMAIL_BACKEND names has a route
(e.g. /webhooks/anymail/postmark/tracking/, HTTP basic auth with ANYMAIL_WEBHOOK_SECRET
"user:password"); every other anymail URL is a 404. SMTP has no webhook. The same route without
its trailing slash is the same view: APPEND_SLASH would answer a POST there with a 301, and the
ESP's event would be lost.
"""

from __future__ import annotations

from django.urls import URLPattern, include, path

from channels.providers.email import configured_esp_name
from channels.webhooks import anymail, twilio

_tracking: list[URLPattern] = anymail.tracking_routes(configured_esp_name())

urlpatterns = [
    path("anymail/", include(_tracking)),
    path("anymail/", include([path(str(r.pattern).rstrip("/"), r.callback) for r in _tracking])),
    path("twilio/status", twilio.status_callback, name="twilio-status"),
    path("twilio/inbound", twilio.inbound, name="twilio-inbound"),
]
