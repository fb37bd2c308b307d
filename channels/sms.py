"""SMS through Twilio's Programmable Messaging API, with the `twilio` SDK.

One SDK client per worker process (its requests session pools connections), built on an HTTP
client of ours that always has a timeout and can aim the SDK at another host (the local fake)
by settings alone. What Twilio answered is mapped to the one error vocabulary here; the table
with the reasons is in docs/providers/twilio.md.
"""

from __future__ import annotations

import functools
import threading
import time
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings

from channels.base import (
    OutboundMessage,
    PermanentDeliveryError,
    ProviderConfigurationError,
    ProviderResult,
    TransientDeliveryError,
)

if TYPE_CHECKING:
    from twilio.base.exceptions import TwilioException

PROVIDER = "twilio"  # on deliveries and receipts
_SOURCE = "Twilio API"  # in error messages: "Twilio API 400 code 21211: ..."

# The number itself is dead: suppress it (the reason is the Suppression.reason).
DEAD_NUMBER_CODES: dict[int, str] = {
    21610: "sms_stop",  # the recipient replied STOP to our sender
    21211: "invalid",  # not a valid phone number
    21214: "invalid",  # cannot be reached (Twilio's lookup found no such subscriber)
    21614: "invalid",  # not a mobile number
    21635: "invalid",  # a landline, in a country where Twilio does not try landlines
}
# The account, the sender or its permissions are wrong: every SMS would fail the same way until
# an operator acts, so Twilio is paused (channels/guard.py; its deliveries wait in queued and
# go out once a probe passes) and no number is blamed. Each maps to the setting or console
# page to look at.
CONFIGURATION_CODES: dict[int, str] = {
    20003: "check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN",
    20005: "the Twilio account is not active",
    20404: "check TWILIO_ACCOUNT_SID (the account was not found)",
    21212: "check TWILIO_FROM_NUMBER",
    21603: "set TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID",
    21606: "check TWILIO_FROM_NUMBER (not an SMS-capable number of this account)",
    21659: "check TWILIO_FROM_NUMBER (not a Twilio number of this account)",
    21660: "check TWILIO_FROM_NUMBER (it belongs to another account)",
    21701: "check TWILIO_MESSAGING_SERVICE_SID",
    21703: "the Messaging Service has no sender in its pool",
    21704: "the Messaging Service has no sender in its pool",
    21705: "check TWILIO_MESSAGING_SERVICE_SID",
}
# The account may not send to this destination (its country, or an unverified number on a
# trial account): an operator's matter, but one of this destination only. Pausing Twilio for
# it would hold every other SMS (and let one recipient's number pause SMS for everyone), so
# this message fails (dead letter, replayable once the account allows it), the number is not
# suppressed and the others go on.
DESTINATION_NOT_ALLOWED_CODES: dict[int, str] = {
    21408: "enable the destination country in Twilio's Messaging Geo Permissions",
    21608: "a trial account can only send to verified numbers",
}
_RATE_LIMITED = 20429


class SMSProvider:
    name: ClassVar[str] = PROVIDER
    channel: ClassVar[str] = "sms"

    def send(self, message: OutboundMessage) -> ProviderResult:
        import requests
        from twilio.base.exceptions import TwilioException

        phone = message.destination.phone or ""
        if not phone:  # delivery_send skips recipients without one; kept as a guard
            raise PermanentDeliveryError("the recipient has no phone number", provider=_SOURCE)
        sender: dict[str, str] = (
            {"from_": settings.TWILIO_FROM_NUMBER}
            if settings.TWILIO_FROM_NUMBER
            else {"messaging_service_sid": settings.TWILIO_MESSAGING_SERVICE_SID}
        )
        if settings.TWILIO_STATUS_CALLBACK_URL:
            # Our delivery id rides in the callback URL, so a callback that beats our own
            # "sent" bookkeeping (the SM sid is not stored yet) still finds its delivery.
            url = settings.TWILIO_STATUS_CALLBACK_URL
            joiner = "&" if "?" in url else "?"
            sender["status_callback"] = f"{url}{joiner}deliveryId={message.delivery_id}"
        client = _client(
            settings.TWILIO_ACCOUNT_SID,
            settings.TWILIO_AUTH_TOKEN,
            float(settings.NOTIFY_PROVIDER_TIMEOUT_SECONDS),
            settings.TWILIO_API_BASE,
        )
        try:
            sent = client.messages.create(to=phone, body=message.content.get("body", ""), **sender)
        except TwilioException as exc:
            _raise_for_twilio_error(exc, phone, client.http_client.last_retry_after())
        except (
            requests.exceptions.InvalidURL,
            requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema,
        ) as exc:
            raise ProviderConfigurationError(f"{_SOURCE}: check TWILIO_API_BASE: {exc}") from exc
        except requests.exceptions.Timeout as exc:
            # Twilio may have accepted the message before the answer was lost; Messages has no
            # idempotency key, so a retry can rarely send twice. Losing the SMS is worse.
            raise TransientDeliveryError(
                f"no answer within {settings.NOTIFY_PROVIDER_TIMEOUT_SECONDS:g}s ({exc})",
                provider=_SOURCE,
            ) from exc
        except requests.exceptions.RequestException as exc:
            raise TransientDeliveryError(f"{type(exc).__name__}: {exc}", provider=_SOURCE) from exc
        return ProviderResult(
            provider=PROVIDER, message_id=str(sent.sid), details={"status": sent.status}
        )

    @classmethod
    def check_configuration(cls) -> list[str]:
        problems: list[str] = []
        if not settings.TWILIO_ACCOUNT_SID:
            problems.append("TWILIO_ACCOUNT_SID is not set.")
        elif not str(settings.TWILIO_ACCOUNT_SID).startswith("AC"):
            problems.append("TWILIO_ACCOUNT_SID must be an account SID (AC…).")
        if not settings.TWILIO_AUTH_TOKEN:
            problems.append("TWILIO_AUTH_TOKEN (or TWILIO_AUTH_TOKEN_FILE) is not set.")
        if not settings.TWILIO_FROM_NUMBER and not settings.TWILIO_MESSAGING_SERVICE_SID:
            problems.append("neither TWILIO_FROM_NUMBER nor TWILIO_MESSAGING_SERVICE_SID is set.")
        from channels.checks import url_problem

        # Each is used as it is at the first send or the first webhook: a typo there fails
        # every SMS (or every signature check) instead of the start.
        for setting in ("TWILIO_API_BASE", "TWILIO_STATUS_CALLBACK_URL", "TWILIO_INBOUND_URL"):
            value = str(getattr(settings, setting))
            problem = value and url_problem(setting, value, {"http", "https"})
            if problem:
                problems.append(problem)
        return problems


def _raise_for_twilio_error(
    exc: TwilioException, phone: str, retry_after: float | None
) -> NoReturn:
    """Map what Twilio answered to transient / permanent / configuration.

    The SDK raises TwilioRestException for Twilio's classic JSON errors and, in 9.x,
    TwilioServiceException for RFC 9457 problem details; both carry ``status`` and ``code``.
    """
    status: int | None = getattr(exc, "status", None)
    code: int | None = getattr(exc, "code", None)
    if code is not None and (code < 10000 or code == status):
        code = None  # not JSON: the SDK puts the HTTP status where the Twilio code goes
    text = _twilio_message(exc)
    details: dict[str, Any] = {
        "provider": _SOURCE,
        "status_code": status,
        "provider_code": str(code) if code is not None else None,
        "response": text,
    }
    if code in DEAD_NUMBER_CODES:
        raise PermanentDeliveryError(
            text, dead_address=phone, suppress_reason=DEAD_NUMBER_CODES[code], **details
        ) from exc
    if code in DESTINATION_NOT_ALLOWED_CODES:
        hint = DESTINATION_NOT_ALLOWED_CODES[code]
        raise PermanentDeliveryError(f"{text} ({hint})", **details) from exc
    if code in CONFIGURATION_CODES:
        prefix = f"{_SOURCE} {status} code {code}"
        raise ProviderConfigurationError(f"{prefix}: {text} ({CONFIGURATION_CODES[code]})") from exc
    if status is None:  # the SDK refused before any request: retrying cannot help
        raise PermanentDeliveryError(f"{type(exc).__name__}: {exc}", provider=_SOURCE) from exc
    if status == 429 or status >= 500 or code == _RATE_LIMITED:
        raise TransientDeliveryError(text, retry_after=retry_after, **details) from exc
    if status in (401, 403):  # an auth failure without a code we know is still our setup
        raise ProviderConfigurationError(f"{_SOURCE} {status}: {text}") from exc
    # Any other refusal (body too long, 21612 To/From combination...): this message cannot
    # go out as it is, but nothing says the number is dead, so it is not suppressed.
    raise PermanentDeliveryError(text, **details) from exc


def _twilio_message(exc: TwilioException) -> str:
    # Twilio's own words, without the SDK's "Unable to create record: " and terminal colours.
    if getattr(exc, "title", None) is not None:  # TwilioServiceException (RFC 9457)
        return str(getattr(exc, "detail", None) or exc.title)
    text = str(getattr(exc, "msg", "") or type(exc).__name__)
    return text.removeprefix("Unable to create record: ")


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:  # the HTTP-date form
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _rebase(url: str, api_base: str) -> str:
    """https://api.twilio.com/2010-04-01/... (or a regional api.*.twilio.com) on api_base."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https" and host.startswith("api.") and host.endswith(".twilio.com"):
        base = urlsplit(api_base)
        return urlunsplit(
            (base.scheme, base.netloc, base.path.rstrip("/") + parts.path, parts.query, "")
        )
    return url


@functools.cache
def _client(account_sid: str, auth_token: str, timeout: float, api_base: str) -> Any:
    """The worker process's one Twilio client; keyed by settings so tests can change them."""
    from requests.adapters import HTTPAdapter
    from twilio.http.http_client import TwilioHttpClient
    from twilio.rest import Client

    class HttpClient(TwilioHttpClient):  # type: ignore[misc]
        """Every request has a timeout and goes to TWILIO_API_BASE when that is set.

        The SDK's exceptions drop the response headers, so Retry-After is kept here, per
        thread (a threaded worker pool shares this client).
        """

        def __init__(self) -> None:
            super().__init__(timeout=timeout)
            self._last = threading.local()
            # The SDK keeps min(32, cores + 4) connections for https and requests' 10 for
            # http; a batch's threads in every worker thread share this client, and past the
            # pool's size each send opened and dropped a connection of its own.
            adapter = HTTPAdapter(pool_maxsize=settings.NOTIFY_PROVIDER_HTTP_POOL_SIZE)
            self.session.mount("https://", adapter)
            self.session.mount("http://", adapter)

        def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            if api_base:
                url = _rebase(url, api_base)
            kwargs["timeout"] = kwargs.get("timeout") or timeout
            self._last.retry_after = None
            response = super().request(method, url, *args, **kwargs)
            if response.status_code >= 400 and response.headers:
                self._last.retry_after = _parse_retry_after(response.headers.get("Retry-After"))
            return response

        def last_retry_after(self) -> float | None:
            return getattr(self._last, "retry_after", None)

    return Client(account_sid, auth_token, http_client=HttpClient())
