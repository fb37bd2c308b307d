"""Push to Android/web/iOS-through-Firebase devices: FCM HTTP v1, one device per call, on asyncio.

Every send is one ``POST {FCM_ENDPOINT}/v1/projects/{project}/messages:send`` on a kept-alive
aiohttp session (one per event loop). pyfcm only builds the v1 payload; google-auth gets the
service account's OAuth 2.0 access token, refreshed on a worker thread (its HTTP call is
synchronous) once for all the sends waiting on it. Nothing here sleeps for ``Retry-After`` or
re-POSTs: a 429/503 goes back to the caller, whose retry does the waiting. Errors are classified
here from Google's error body.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import google.auth.exceptions
import google.auth.transport.requests
from django.conf import settings
from google.oauth2 import service_account
from pyfcm import FCMNotification
from yarl import URL

from channels.base import (
    DeliveryError,
    OutboundMessage,
    PermanentDeliveryError,
    ProviderConfigurationError,
    TransientDeliveryError,
)
from channels.http import retry_after_seconds
from preferences.tokens import is_valid_device_token

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
PROVIDER = "FCM"
# FCM refuses the whole message (400 "Invalid data payload key: from") for these keys; dropping
# one data key beats losing the push.
_RESERVED_KEYS = {"from", "message_type"}
_RESERVED_PREFIXES = ("google", "gcm")
_FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
_DEAD_TOKEN_CODES = {"UNREGISTERED", "SENDER_ID_MISMATCH"}
# A dead-token answer that a wrong project gives for every token alike (channels/gate/guard.py
# pauses FCM after a run of them instead of retiring every device).
_SUSPECT = {
    "SENDER_ID_MISMATCH": "FCM_CREDENTIALS_FILE and FCM_PROJECT_ID (the app's Firebase project)"
}
_CONFIG_CODES = {"THIRD_PARTY_AUTH_ERROR", "PERMISSION_DENIED", "UNAUTHENTICATED"}
_CONNECTIONS = 100  # per loop: the engine sends a few hundred devices at once
_KEEPALIVE_SECONDS = 60.0


class FCMSender:
    platform: ClassVar[str] = "fcm"
    name: ClassVar[str] = "fcm"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._client: tuple[tuple[object, ...], _Client] | None = None

    async def send_to_device(self, token: str, message: OutboundMessage) -> str:
        client = self._current_client()
        payload: bytes = client.builder.parse_payload(
            fcm_token=token,
            notification_title=message.content.get("subject") or None,
            notification_body=message.content.get("body") or None,
            data_payload=_data(message),
        )
        timeout = _timeout()
        try:
            response = await client.send(payload, timeout)
        except TimeoutError as exc:
            raise TransientDeliveryError(
                f"no answer within {timeout}s: {exc or type(exc).__name__}", provider=PROVIDER
            ) from exc
        except aiohttp.InvalidURL as exc:
            raise ProviderConfigurationError(f"FCM_ENDPOINT is not usable: {exc}") from exc
        except aiohttp.ClientConnectionError as exc:
            # Refused connections and resets.
            raise TransientDeliveryError(
                f"ConnectionError ({type(exc).__name__}): {exc}", provider=PROVIDER
            ) from exc
        except (aiohttp.ClientError, google.auth.exceptions.TransportError) as exc:
            # A broken answer from FCM, or no answer from the token endpoint.
            raise TransientDeliveryError(f"{type(exc).__name__}: {exc}", provider=PROVIDER) from exc
        except google.auth.exceptions.RefreshError as exc:
            detail = exc.args[0] if exc.args else exc  # args[1] is the whole response body
            if exc.retryable:
                raise TransientDeliveryError(f"OAuth: {detail}", provider=PROVIDER) from exc
            raise ProviderConfigurationError(
                f"FCM OAuth token request refused (check FCM_CREDENTIALS_FILE): {detail}"
            ) from exc
        if response.status_code == 200:
            try:
                return str(response.json()["name"])
            except (ValueError, KeyError, TypeError) as exc:
                raise TransientDeliveryError(
                    f"200 without a message name: {response.text[:200]!r}",
                    provider=PROVIDER,
                    status_code=200,
                ) from exc
        raise _error_for(response, token)

    async def aclose(self) -> None:
        """Close this loop's session (and ask other loops to close theirs)."""
        with self._lock:
            client = self._client[1] if self._client else None
        if client is not None:
            await client.aclose()

    @classmethod
    def check_configuration(cls) -> list[str]:
        from channels.checks import url_problem

        # http:// is for a local fake; the endpoint is only used at the first send.
        problem = url_problem("FCM_ENDPOINT", str(settings.FCM_ENDPOINT), {"http", "https"})
        problems = [problem] if problem else []
        try:
            _load_credentials()
        except ProviderConfigurationError as exc:
            problems.append(str(exc))
        return problems

    def _current_client(self) -> _Client:
        # Keyed by settings so tests that override them get a new client; in a worker they
        # never change, so this is one client (and one OAuth token) per process. The key file
        # is read only when they change, so this is no file read per send.
        key = (settings.FCM_CREDENTIALS_FILE, settings.FCM_PROJECT_ID, settings.FCM_ENDPOINT)
        with self._lock:
            if self._client is None or self._client[0] != key:
                credentials, project_id = _load_credentials()
                endpoint = str(settings.FCM_ENDPOINT).rstrip("/")
                try:
                    url = URL(f"{endpoint}/v1/projects/{project_id}/messages:send")
                except ValueError as exc:
                    raise ProviderConfigurationError(f"FCM_ENDPOINT is not usable: {exc}") from exc
                if self._client is not None:
                    self._client[1].close_soon()
                self._client = (key, _Client(credentials, url))
            return self._client[1]


@dataclass
class _Answer:
    """What is kept of an HTTP answer once its body is read (the session is free again)."""

    status_code: int
    reason: str
    headers: Mapping[str, str]  # case-insensitive, as aiohttp read them
    body: bytes
    url: str

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _OnLoop:
    """What belongs to one event loop: its session, and the lock its sends wait on for a token."""

    session: aiohttp.ClientSession
    token_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class _Client:
    """One send URL and one set of credentials; a kept session per event loop."""

    def __init__(self, credentials: service_account.Credentials, url: URL) -> None:
        self.credentials = credentials
        self.url = url
        # pyfcm's payload builder only: it does no I/O until asked to send, which it never is.
        self.builder = FCMNotification(credentials=credentials)
        # requests honoured HTTP(S)_PROXY and NO_PROXY; looked up once here, not per request.
        proxy = urllib.request.getproxies()
        bypass = urllib.request.proxy_bypass(url.host or "") if proxy else True
        self.proxy = None if bypass else proxy.get(url.scheme)
        self._refresh_lock = threading.Lock()  # one token request at a time, across loops
        self._loops_lock = threading.Lock()
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _OnLoop] = (
            weakref.WeakKeyDictionary()
        )

    async def send(self, payload: bytes, timeout: float) -> _Answer:
        bearer = await self._bearer(stale=None)
        response = await self._post(payload, bearer, timeout)
        if _is_access_token_expired(response):
            # FCM expired the token before our clock did: one fresh token, one more try.
            bearer = await self._bearer(stale=bearer)
            response = await self._post(payload, bearer, timeout)
        if response.status_code == 401 and self.credentials.token == bearer:
            self.credentials.token = None  # never present a refused token again
        return response

    async def _bearer(self, stale: str | None) -> str:
        token = self.credentials.token
        if self.credentials.valid and token != stale:
            return str(token)
        # One refresh for every send of this loop that found the token stale; the others wait
        # here and then find it fresh.
        async with self._on_loop().token_lock:
            await asyncio.to_thread(self._refresh, stale)
        return str(self.credentials.token)

    def _refresh(self, stale: str | None) -> None:
        with self._refresh_lock:
            if self.credentials.valid and self.credentials.token != stale:
                return  # another send (perhaps on another loop) just refreshed it
            self.credentials.refresh(_TokenRequest(_timeout()))

    async def _post(self, payload: bytes, bearer: str, timeout: float) -> _Answer:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {bearer}"}
        session = self._on_loop().session
        async with asyncio.timeout(timeout):
            async with session.post(
                self.url, data=payload, headers=headers, proxy=self.proxy
            ) as response:
                body = await response.read()
        return _Answer(
            response.status, response.reason or "", response.headers, body, str(self.url)
        )

    def _on_loop(self) -> _OnLoop:
        # Sessions are bound to the loop they were opened on: another loop gets its own.
        loop = asyncio.get_running_loop()
        with self._loops_lock:
            state = self._loops.get(loop)
            if state is None or state.session.closed:
                connector = aiohttp.TCPConnector(
                    limit=_CONNECTIONS, keepalive_timeout=_KEEPALIVE_SECONDS
                )
                # No session-wide timeout: every request has its own (asyncio.timeout).
                session = aiohttp.ClientSession(
                    connector=connector, timeout=aiohttp.ClientTimeout(total=None)
                )
                state = self._loops[loop] = _OnLoop(session)
            return state

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        with self._loops_lock:
            mine = self._loops.pop(loop, None)
        self.close_soon()
        if mine is not None:
            await mine.session.close()

    def close_soon(self) -> None:
        """Have every loop still running close its session (each on its own loop)."""
        with self._loops_lock:
            states, self._loops = list(self._loops.items()), weakref.WeakKeyDictionary()
        for loop, state in states:
            if loop.is_running() and not loop.is_closed():
                asyncio.run_coroutine_threadsafe(state.session.close(), loop)


class _TokenRequest(google.auth.transport.requests.Request):
    """google-auth's HTTP transport with our timeout, and no sleeping between token retries."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self._timeout = timeout

    def __call__(  # type: ignore[override]
        self, url: str, method: str = "GET", body: Any = None, headers: Any = None, **kwargs: Any
    ) -> Any:
        kwargs["timeout"] = self._timeout  # google-auth's default is 120 s
        response = super().__call__(url, method, body, headers, **kwargs)
        if response.status >= 500 or response.status in (408, 429):
            # google-auth would sleep 1 s then 2 s and ask again, inside the task.
            raise google.auth.exceptions.TransportError(
                f"token endpoint {url} answered {response.status}"
            )
        return response


def _load_credentials() -> tuple[service_account.Credentials, str]:
    path = str(settings.FCM_CREDENTIALS_FILE or "")
    if not path:
        raise ProviderConfigurationError(
            "FCM_CREDENTIALS_FILE is not set (the Firebase project's service-account JSON key)."
        )
    try:
        info = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ProviderConfigurationError(
            f"FCM_CREDENTIALS_FILE={path!r} cannot be read: {exc}"
        ) from exc
    except ValueError as exc:
        raise ProviderConfigurationError(
            f"FCM_CREDENTIALS_FILE={path!r} is not JSON: {exc}"
        ) from exc
    if not isinstance(info, dict) or info.get("type") != "service_account":
        kind = info.get("type") if isinstance(info, dict) else type(info).__name__
        raise ProviderConfigurationError(
            f"FCM_CREDENTIALS_FILE={path!r} is not a service-account key (type={kind!r})."
        )
    try:
        credentials = service_account.Credentials.from_service_account_info(info, scopes=[SCOPE])
    except (ValueError, KeyError) as exc:
        raise ProviderConfigurationError(
            f"FCM_CREDENTIALS_FILE={path!r} is not a usable service-account key: {exc}"
        ) from exc
    project_id = str(settings.FCM_PROJECT_ID or info.get("project_id") or "")
    if not project_id:
        raise ProviderConfigurationError(
            f"no FCM project id: set FCM_PROJECT_ID ({path!r} has no project_id)."
        )
    if not str(settings.FCM_ENDPOINT).startswith(("https://", "http://")):
        raise ProviderConfigurationError(
            f"FCM_ENDPOINT={settings.FCM_ENDPOINT!r} is not an http(s) URL."
        )
    return credentials, project_id


def _timeout() -> float:
    return float(settings.NOTIFY_PROVIDER_TIMEOUT_SECONDS)


def _data(message: OutboundMessage) -> dict[str, str]:
    """FCM data values must be strings: strings pass as they are, anything else as JSON."""
    data = {
        str(key): value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        for key, value in message.data.items()
        if key not in _RESERVED_KEYS and not str(key).lower().startswith(_RESERVED_PREFIXES)
    }
    data["notificationId"] = message.notification_id
    data["event"] = message.event
    return data


def _error_for(response: Any, token: str) -> DeliveryError | ProviderConfigurationError:
    status = int(response.status_code)
    error = _google_error(response)
    details = error.get("details") or []
    fcm_code = next((d.get("errorCode") for d in details if d.get("@type") == _FCM_ERROR), None)
    code = str(fcm_code or error.get("status") or status)
    text = str(error.get("message") or response.text[:200] or response.reason)
    described: dict[str, Any] = {
        "provider": PROVIDER,
        "status_code": status,
        "provider_code": code,
        "response": error,
    }
    if code in _DEAD_TOKEN_CODES or _is_bad_token(code, text, details, token):
        return PermanentDeliveryError(
            text,
            dead_device_tokens=(token,),
            suspect_settings=_SUSPECT.get(code, ""),
            **described,
        )
    if status == 429 or status >= 500:
        return TransientDeliveryError(text, retry_after=_retry_after(response), **described)
    if status in (401, 403) or code in _CONFIG_CODES:
        check = (
            "the APNs key uploaded to the Firebase project"
            if code == "THIRD_PARTY_AUTH_ERROR"
            else "FCM_CREDENTIALS_FILE and FCM_PROJECT_ID"
        )
        return ProviderConfigurationError(f"FCM {status} {code}: {text} (check {check})")
    if status == 404:
        # Not UNREGISTERED: the URL itself is wrong. Retiring the device would be a mistake.
        return ProviderConfigurationError(
            f"FCM {status} {code} from {response.url} (check FCM_ENDPOINT, FCM_PROJECT_ID): {text}"
        )
    return PermanentDeliveryError(text, **described)  # the message itself was refused


def _is_bad_token(code: str, text: str, details: list[dict[str, Any]], token: str) -> bool:
    # INVALID_ARGUMENT also covers bad payloads; only the token's kind kills the device.
    if code != "INVALID_ARGUMENT":
        return False
    if not is_valid_device_token("fcm", token):
        # Registered before tokens were validated: whatever FCM says was wrong, this was.
        return True
    fields = {
        violation.get("field")
        for detail in details
        if detail.get("@type") == _BAD_REQUEST
        for violation in detail.get("fieldViolations") or []
    }
    return "message.token" in fields or "registration token" in text.lower()


def _google_error(response: Any) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def _retry_after(response: Any) -> float | None:
    return retry_after_seconds(response.headers.get("Retry-After"))


def _is_access_token_expired(response: _Answer) -> bool:
    if response.status_code != 401:
        return False
    details = _google_error(response).get("details") or []
    return any(isinstance(d, dict) and d.get("reason") == "ACCESS_TOKEN_EXPIRED" for d in details)
