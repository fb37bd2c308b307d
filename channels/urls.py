"""Provider webhooks: delivery receipts and suppressions come in here."""

from django.urls import include, path

from channels.webhooks import twilio

urlpatterns = [
    # anymail's tracking webhooks, e.g. /webhooks/anymail/postmark/tracking/ (basic auth via
    # ANYMAIL_WEBHOOK_SECRET, as anymail requires).
    path("anymail/", include("anymail.urls")),
    path("twilio/status", twilio.status_callback, name="twilio-status"),
    path("twilio/inbound", twilio.inbound, name="twilio-inbound"),
]
