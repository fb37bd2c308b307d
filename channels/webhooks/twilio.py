"""Twilio's webhooks: message status callbacks, and inbound messages (STOP / START).

Both are signed with X-Twilio-Signature (HMAC-SHA1 of the URL Twilio called plus the sorted
POST parameters, keyed by the account's Auth Token); the SDK's RequestValidator checks it in
constant time. The URL must be the public one Twilio used, so it comes from settings: behind a
proxy, what Django rebuilds (scheme, host, port) often differs from it.

Whatever is refused (a wrong method or media type, no or a bad signature, a body we cannot
read, a missing field) is a 4xx in the API's error shape (channels/webhooks/errors.py).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, QueryDict
from django.views.decorators.csrf import csrf_exempt

from channels.base import Channel
from channels.providers.sms import PROVIDER
from channels.webhooks.errors import (
    MalformedWebhook,
    answering_unreadable_with_4xx,
    method_not_allowed,
    refuse,
    text_field,
)
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
# A Message SID: "SM" (SMS) or "MM" (MMS) and 32 hex digits.
_MESSAGE_SID = re.compile(r"[A-Z]{2}[0-9a-f]{32}")
_FORM = "application/x-www-form-urlencoded"
_MAX_FIELD = 1600  # Twilio's longest field, Body, is at most 1,600 characters


def _twilio_webhook(
    public_url: Callable[[], str],
) -> Callable[[Callable[[HttpRequest, QueryDict], HttpResponse]], Callable[..., HttpResponse]]:
    """POST, form-encoded, signed, readable: each refused with its own 4xx before the view."""

    def decorate(
        view: Callable[[HttpRequest, QueryDict], HttpResponse],
    ) -> Callable[..., HttpResponse]:
        @csrf_exempt
        @functools.wraps(view)
        @answering_unreadable_with_4xx
        def checked(request: HttpRequest) -> HttpResponse:
            if request.method != "POST":
                return method_not_allowed(request, ["POST"])
            if request.content_type != _FORM:
                return refuse(request, 415, "unsupported_media_type", f"Expected {_FORM}.")
            if not _signed(request, public_url()):
                return refuse(request, 403, "forbidden", "Missing or invalid X-Twilio-Signature.")
            for name, values in request.POST.lists():
                for value in values:
                    text_field(value, field=name, max_length=_MAX_FIELD)
            return view(request, request.POST)

        return checked

    return decorate


@_twilio_webhook(lambda: settings.TWILIO_STATUS_CALLBACK_URL)
def status_callback(request: HttpRequest, params: QueryDict) -> HttpResponse:
    message_id = params.get("MessageSid") or params.get("SmsSid") or ""
    if not _MESSAGE_SID.fullmatch(message_id):
        raise MalformedWebhook("MessageSid is missing or not a Message SID.")
    message_status = params.get("MessageStatus") or params.get("SmsStatus") or ""
    if not message_status:
        raise MalformedWebhook("MessageStatus is missing.")
    status = _SETTLED.get(message_status)
    code = params.get("ErrorCode", "")
    suppress = None
    reason = DEAD_NUMBER_RECEIPT_CODES.get(code)
    to = _address(params.get("To", ""), field="To")
    if status == DeliveryStatus.FAILED and reason and to:
        suppress = (Channel.SMS.value, to, str(reason))
    delivery_receipt_apply(
        Receipt(
            provider=PROVIDER,
            message_id=message_id,
            delivery_id=_delivery_id(request.GET.get("deliveryId", "")),
            event=message_status[:64],
            status=status,
            detail=code[:64] if status == DeliveryStatus.FAILED else "",
            suppress=suppress,
        )
    )
    # 200 even for a message id we do not know (sent by another system on the same account,
    # or already erased): anything else makes Twilio log errors and retry for nothing.
    return HttpResponse(status=200)


@_twilio_webhook(lambda: settings.TWILIO_INBOUND_URL)
def inbound(request: HttpRequest, params: QueryDict) -> HttpResponse:
    sender = _address(params.get("From", ""), field="From")
    if not sender:
        raise MalformedWebhook("From is missing.")
    # With Advanced Opt-Out, Twilio names the kind of keyword (custom ones too) in OptOutType.
    keyword = (params.get("OptOutType") or params.get("Body", "")).strip().upper()
    if keyword in STOP_KEYWORDS:
        suppression_add(
            channel=Channel.SMS,
            address=sender,
            reason=Suppression.Reason.SMS_STOP,
            provider=PROVIDER,
            detail=f"replied {keyword}",
        )
    elif keyword in START_KEYWORDS:
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


def _address(value: str, *, field: str) -> str:
    if len(value) > 320:  # Suppression.address; a phone number is far shorter
        raise MalformedWebhook(f"{field} is too long.")
    return value


def _delivery_id(value: str) -> int | None:
    # Our own ?deliveryId=; isdigit() alone takes "²" (int() refuses it) and numbers past
    # PostgreSQL's bigint.
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 18 else None
