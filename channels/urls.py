"""Provider webhooks: delivery receipts and suppressions come in here.

Built from settings when the URLconf loads: only the email ESP EMAIL_BACKEND names has a route
(e.g. /webhooks/anymail/postmark/tracking/, HTTP basic auth with ANYMAIL_WEBHOOK_SECRET
"user:password"); every other anymail URL is a 404. SMTP has no webhook.
"""

from __future__ import annotations

from django.urls import include, path

from channels.email import configured_esp_name
from channels.webhooks import anymail, twilio

urlpatterns = [
    path("anymail/", include(anymail.tracking_routes(configured_esp_name()))),
    path("twilio/status", twilio.status_callback, name="twilio-status"),
    path("twilio/inbound", twilio.inbound, name="twilio-inbound"),
]
