"""SMS through Twilio's Programmable Messaging API, with the `twilio` SDK's async client.

One SDK client per event loop (its aiohttp session keeps connections alive across sends and
carries the sends in flight on that loop at once), on an HTTP client of ours that can aim the
SDK at another host (the local fake) by settings alone. Every send has the provider timeout.
What Twilio answered is mapped to the one error vocabulary here; the table with the reasons is
in docs/providers/twilio.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn
from urllib.parse import urlencode, urlsplit, urlunsplit

from django.conf import settings

from channels.base import (
    OutboundMessage,
    PermanentDeliveryError,
    ProviderConfigurationError,
    ProviderResult,
    TransientDeliveryError,
)
from channels.http import retry_after_seconds

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
# an operator acts, so Twilio is paused (channels/gate/guard.py; its deliveries wait in queued and
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
_TWILIO_API = "https://api.twilio.com"  # where the SDK sends, unless TWILIO_API_BASE says

# The Retry-After of the answer the current task's request got (see HttpClient).
_retry_after: ContextVar[float | None] = ContextVar("twilio_retry_after", default=None)
# Per event loop, its clients by (account SID, auth token, API base). Not weak: a client's
# session refers to its loop. Those of loops closed without aclose() are dropped (_client).
_clients: dict[asyncio.AbstractEventLoop, dict[tuple[str, str, str], Any]] = {}
_clients_lock = threading.Lock()  # loops on several threads (tests') may add theirs at once


class SMSProvider:
    name: ClassVar[str] = PROVIDER
    channel: ClassVar[str] = "sms"

    async def send(self, message: OutboundMessage) -> ProviderResult:
        from aiohttp import ClientConnectorError, ClientError, InvalidURL, NonHttpUrlClientError
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
        timeout = float(settings.NOTIFY_PROVIDER_TIMEOUT_SECONDS)
        client = _client(
            settings.TWILIO_ACCOUNT_SID, settings.TWILIO_AUTH_TOKEN, settings.TWILIO_API_BASE
        )
        _retry_after.set(None)
        try:
            async with asyncio.timeout(timeout):
                sent = await client.messages.create_async(
                    to=phone, body=message.content.get("body", ""), **sender
                )
        except TwilioException as exc:
            _raise_for_twilio_error(exc, phone, _retry_after.get())
        except (InvalidURL, NonHttpUrlClientError) as exc:
            raise ProviderConfigurationError(f"{_SOURCE}: check TWILIO_API_BASE: {exc}") from exc
        except TimeoutError as exc:  # ours (asyncio.timeout) or aiohttp's, which is one too
            # Twilio may have accepted the message before the answer was lost; Messages has no
            # idempotency key, so a retry can rarely send twice. Losing the SMS is worse.
            raise TransientDeliveryError(
                f"no answer within {timeout:g}s", provider=_SOURCE
            ) from exc
        except ClientConnectorError as exc:  # named as before, for operators and alerts
            raise TransientDeliveryError(f"ConnectionError: {exc}", provider=_SOURCE) from exc
        except ClientError as exc:  # a dropped connection, a broken answer
            raise TransientDeliveryError(f"{type(exc).__name__}: {exc}", provider=_SOURCE) from exc
        return ProviderResult(
            provider=PROVIDER, message_id=str(sent.sid), details={"status": sent.status}
        )

    async def aclose(self) -> None:
        """Close the clients (their sessions and kept connections) of the running loop."""
        with _clients_lock:
            clients = _clients.pop(asyncio.get_running_loop(), {})
        for client in clients.values():
            await client.http_client.close()

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


def _client(account_sid: str, auth_token: str, api_base: str) -> Any:
    """The running loop's Twilio client for these settings (tests change them), made on first
    use: its aiohttp session belongs to that loop, so another loop gets its own."""
    loop = asyncio.get_running_loop()
    key = (account_sid, auth_token, api_base)
    client = _clients.get(loop, {}).get(key)
    if client is None:
        from twilio.rest import Client

        _check_api_base(api_base)
        client = Client(account_sid, auth_token, http_client=_http_client_class()(api_base))
        with _clients_lock:
            for closed in [other for other in _clients if other.is_closed()]:
                del _clients[closed]
            _clients.setdefault(loop, {})[key] = client
    return client


def _check_api_base(api_base: str) -> None:
    try:
        parts = urlsplit(api_base)
        usable = not api_base or (parts.scheme in ("http", "https") and bool(parts.hostname))
    except ValueError:  # a malformed host ("http://[::1")
        usable = False
    if not usable:
        raise ProviderConfigurationError(
            f"{_SOURCE}: check TWILIO_API_BASE: {api_base!r} is not a http:// or https:// URL"
        )


@functools.cache
def _http_client_class() -> type[Any]:
    # Made on first use: importing the SDK and aiohttp is not every process's business (the
    # web process imports this module for PROVIDER).
    from aiohttp import ClientSession, TCPConnector
    from aiohttp.helpers import get_env_proxy_for_url
    from twilio.http.async_http_client import AsyncTwilioHttpClient
    from twilio.http.response import Response
    from yarl import URL

    class HttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]
        """The SDK's async client on a kept-alive session, aimed at TWILIO_API_BASE when set.

        The SDK's exceptions drop the response headers, so the Retry-After of a refusal is
        kept in ``_retry_after``: a context variable, so each of the sends in flight on the
        loop (each its own task) reads its own answer's, never another's.
        """

        def __init__(self, api_base: str) -> None:
            super().__init__(pool_connections=False)  # our session, made here on the loop
            self.api_base = api_base
            # One connection per send in flight, kept alive for the next sends; past the
            # limit a send waits for a free one (within its timeout) instead of opening more.
            connector = TCPConnector(limit=int(settings.NOTIFY_PROVIDER_HTTP_POOL_SIZE))
            # HTTPS_PROXY, NO_PROXY... apply as they did with requests, looked up once here:
            # aiohttp's trust_env looks them (and ~/.netrc) up on a thread at every request.
            proxy, proxy_auth = None, None
            with contextlib.suppress(LookupError):
                proxy, proxy_auth = get_env_proxy_for_url(URL(api_base or _TWILIO_API))
            self.session = ClientSession(connector=connector, proxy=proxy, proxy_auth=proxy_auth)

        async def request(self, method: str, url: str, **kwargs: Any) -> Response:
            if self.api_base:
                url = _rebase(url, self.api_base)
            headers = dict(kwargs.get("headers") or {})
            auth = kwargs.pop("auth", None)
            if auth is not None:  # as a header: aiohttp deprecates the BasicAuth the SDK makes
                headers.update(_basic_auth(*auth))
            if isinstance(kwargs.get("data"), dict):
                # The form encoded here: aiohttp's FormData for a dict costs more per request
                # (a multipart writer with a random boundary it then does not use).
                kwargs["data"] = urlencode(kwargs["data"], doseq=True).encode()
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            kwargs["headers"] = headers
            response: Response = await super().request(method, url, **kwargs)
            if response.status_code >= 400 and response.headers:
                _retry_after.set(retry_after_seconds(response.headers.get("Retry-After")))
            return response

        # The SDK formats every request and answer (headers included) for INFO records even
        # when nobody listens at INFO: only when someone does.
        def log_request(self, kwargs: dict[str, Any]) -> None:
            if self.logger.isEnabledFor(logging.INFO):
                super().log_request(kwargs)

        def log_response(self, status_code: int, response: Any) -> None:
            if self.logger.isEnabledFor(logging.INFO):
                super().log_response(status_code, response)

    return HttpClient


@functools.lru_cache(maxsize=8)
def _basic_auth(user: str, password: str) -> dict[str, str]:
    from aiohttp import encode_basic_auth

    return {"Authorization": encode_basic_auth(user, password)}
