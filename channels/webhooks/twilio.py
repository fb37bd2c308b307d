"""Twilio's webhooks: message status callbacks, and inbound messages (STOP / START).

Both are signed with X-Twilio-Signature (HMAC-SHA1 of the URL Twilio called plus the sorted
POST parameters, keyed by the account's Auth Token); the SDK's RequestValidator checks it in
constant time. The URL must be the public one Twilio used, so it comes from settings: behind a
proxy, what Django rebuilds (scheme, host, port) often differs from it.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from channels.base import Channel
from channels.sms import PROVIDER
from notifications.models import DeliveryStatus
from notifications.services import Receipt, delivery_receipt_apply
from preferences.models import Suppression
from preferences.selectors import suppressions_list
from preferences.services import suppression_add, suppression_remove

logger = logging.getLogger(__name__)

_SETTLED = {
    "delivered": DeliveryStatus.DELIVERED,
    "undelivered": DeliveryStatus.FAILED,
    "failed": DeliveryStatus.FAILED,
}
# Error codes in a failed/undelivered callback that mean the number itself is dead. Not
# suppressed: 30003 (handset off or out of coverage), 30004 (blocked: by the carrier or the
# user, often temporarily), 30007 (carrier filtering: our content), 30008 (unknown).
DEAD_NUMBER_RECEIPT_CODES: dict[str, str] = {
    "21610": Suppression.Reason.SMS_STOP,  # the recipient had replied STOP
    "30005": Suppression.Reason.INVALID,  # unknown handset: the number does not exist
    "30006": Suppression.Reason.INVALID,  # a landline, or no carrier that takes SMS
    "21211": Suppression.Reason.INVALID,
    "21614": Suppression.Reason.INVALID,
    "21635": Suppression.Reason.INVALID,
}
# Twilio's default opt-out and opt-in keywords: Twilio itself blocks (21610) or unblocks the
# number on these, so our suppression follows the same words. Matched on the whole message.
STOP_KEYWORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
START_KEYWORDS = frozenset({"START", "UNSTOP", "YES"})
_EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'


@csrf_exempt
@require_POST
def status_callback(request: HttpRequest) -> HttpResponse:
    if not _signed(request, settings.TWILIO_STATUS_CALLBACK_URL):
        return HttpResponseForbidden()
    params = request.POST
    message_status = params.get("MessageStatus") or params.get("SmsStatus") or ""
    status = _SETTLED.get(message_status)
    code = params.get("ErrorCode", "")
    suppress = None
    reason = DEAD_NUMBER_RECEIPT_CODES.get(code)
    if status == DeliveryStatus.FAILED and reason and params.get("To"):
        suppress = (Channel.SMS.value, params["To"], str(reason))
    delivery_receipt_apply(
        Receipt(
            provider=PROVIDER,
            message_id=params.get("MessageSid") or params.get("SmsSid") or "",
            delivery_id=_delivery_id(request.GET.get("deliveryId", "")),
            event=message_status,
            status=status,
            detail=code if status == DeliveryStatus.FAILED else "",
            suppress=suppress,
        )
    )
    # 200 even for a message id we do not know (sent by another system on the same account,
    # or already erased): anything else makes Twilio log errors and retry for nothing.
    return HttpResponse(status=200)


@csrf_exempt
@require_POST
def inbound(request: HttpRequest) -> HttpResponse:
    if not _signed(request, settings.TWILIO_INBOUND_URL):
        return HttpResponseForbidden()
    sender = request.POST.get("From", "")
    # With Advanced Opt-Out, Twilio names the kind of keyword (custom ones too) in OptOutType.
    keyword = (request.POST.get("OptOutType") or request.POST.get("Body", "")).strip().upper()
    if sender and keyword in STOP_KEYWORDS:
        suppression_add(
            channel=Channel.SMS,
            address=sender,
            reason=Suppression.Reason.SMS_STOP,
            provider=PROVIDER,
            detail=f"replied {keyword}",
        )
    elif sender and keyword in START_KEYWORDS:
        # Only what STOP did is undone: a number suppressed as invalid or by an operator stays.
        for suppression in suppressions_list(channel=Channel.SMS, address=sender).filter(
            reason=Suppression.Reason.SMS_STOP
        ):
            suppression_remove(suppression_id=suppression.pk)
    # Empty TwiML: no reply of ours (Twilio sends its own opt-out confirmation).
    return HttpResponse(_EMPTY_TWIML, content_type="text/xml")


def _signed(request: HttpRequest, public_url: str) -> bool:
    from twilio.request_validator import SIGNATURE_SETTINGS_HEADER, RequestValidator

    signature = request.headers.get("X-Twilio-Signature", "")
    if not signature or not settings.TWILIO_AUTH_TOKEN:
        return False
    if request.headers.get(SIGNATURE_SETTINGS_HEADER):
        # A Webhook Rule made Twilio sign with a SharedKey, whose secret we are not given.
        logger.warning("Twilio webhook signed with a SharedKey; only Auth Token signing is set up")
        return False
    url = request.build_absolute_uri()
    if public_url:
        # Twilio signs the exact URL it called, query string included (our ?deliveryId=).
        query = request.META.get("QUERY_STRING", "")
        base = public_url.split("?", 1)[0]
        url = f"{base}?{query}" if query else public_url
    valid = RequestValidator(settings.TWILIO_AUTH_TOKEN).validate(url, request.POST, signature)
    if not valid:
        logger.warning("Twilio webhook with a bad signature for %s", url)
    return bool(valid)


def _delivery_id(value: str) -> int | None:
    return int(value) if value.isdigit() else None
