"""Push to Android/web/iOS-through-Firebase devices: FCM HTTP v1 via pyfcm, one device per call.

pyfcm does the OAuth 2.0 service-account dance (google-auth) and builds the v1 payload; a small
subclass takes over the three things it does that a Celery worker must not: it sleeps for
``Retry-After`` inside the request, re-POSTs 502/503 through urllib3 retries, and hides FCM's
``errorCode`` behind five exception classes. Errors are classified here from Google's error body.
"""

from __future__ import annotations

import json
import threading
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, ClassVar

import google.auth.exceptions
import google.auth.transport.requests
import requests
from django.conf import settings
from django.utils import timezone
from google.oauth2 import service_account
from pyfcm import FCMNotification
from requests.adapters import HTTPAdapter

from channels.base import (
    DeliveryError,
    OutboundMessage,
    PermanentDeliveryError,
    ProviderConfigurationError,
    TransientDeliveryError,
)
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
# A dead-token answer that a wrong project gives for every token alike (channels/guard.py
# pauses FCM after a run of them instead of retiring every device).
_SUSPECT = {
    "SENDER_ID_MISMATCH": "FCM_CREDENTIALS_FILE and FCM_PROJECT_ID (the app's Firebase project)"
}
_CONFIG_CODES = {"THIRD_PARTY_AUTH_ERROR", "PERMISSION_DENIED", "UNAUTHENTICATED"}


class FCMSender:
    platform: ClassVar[str] = "fcm"
    name: ClassVar[str] = "fcm"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._client: tuple[tuple[object, ...], _Client] | None = None

    def send_to_device(self, token: str, message: OutboundMessage) -> str:
        client = self._current_client()
        payload = client.parse_payload(
            fcm_token=token,
            notification_title=message.content.get("subject") or None,
            notification_body=message.content.get("body") or None,
            data_payload=_data(message),
        )
        try:
            response = client.send_request(payload, timeout=_timeout())
        except requests.Timeout as exc:
            raise TransientDeliveryError(
                f"no answer within {_timeout()}s: {exc}", provider=PROVIDER
            ) from exc
        except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema) as exc:
            raise ProviderConfigurationError(f"FCM_ENDPOINT is not usable: {exc}") from exc
        except (requests.RequestException, google.auth.exceptions.TransportError) as exc:
            # Refused connections and resets, to FCM or to the token endpoint.
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
        # never change, so this is one pyfcm instance (and one OAuth token) per process.
        key = (
            settings.FCM_CREDENTIALS_FILE,
            settings.FCM_PROJECT_ID,
            settings.FCM_ENDPOINT,
            _timeout(),
        )
        with self._lock:
            if self._client is None or self._client[0] != key:
                credentials, project_id = _load_credentials()
                endpoint = str(settings.FCM_ENDPOINT).rstrip("/")
                send_url = f"{endpoint}/v1/projects/{project_id}/messages:send"
                self._client = (key, _Client(credentials, send_url=send_url, timeout=_timeout()))
            return self._client[1]


class _Client(FCMNotification):
    """pyfcm's FCMNotification aimed at FCM_ENDPOINT, without waiting or retrying in-request."""

    def __init__(
        self, credentials: service_account.Credentials, *, send_url: str, timeout: float
    ) -> None:
        # max_retries=0: pyfcm's default adapter re-POSTs 502/503 with backoff inside the task.
        super().__init__(credentials=credentials, adapter=HTTPAdapter(max_retries=0))
        self._send_url = send_url
        self._token_request = _TokenRequest(timeout)

    @property
    def fcm_end_point(self) -> str:
        # pyfcm prefers the credentials' project over an explicit one; FCM_PROJECT_ID wins here.
        return self._send_url

    def request_headers(self) -> dict[str, str]:
        # pyfcm refreshes on every header rebuild; an access token is good for an hour.
        if not self.credentials.valid:
            self.credentials.refresh(self._token_request)
        return {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {self.credentials.token}",
        }

    def send_request(self, payload: bytes | None = None, timeout: float | None = None) -> Any:
        # pyfcm sleeps for Retry-After here and calls itself again; we hand the 429/503 back
        # and the task's countdown does the waiting.
        response = self._post(payload, timeout)
        if self._is_access_token_expired(response):
            # FCM expired the token before our clock did: one fresh token, one more try.
            self.credentials.refresh(self._token_request)
            response = self._post(payload, timeout)
        if response.status_code == 401:
            self.credentials.token = None  # never present a refused token again
        return response

    def _post(self, payload: bytes | None, timeout: float | None) -> Any:
        return self.requests_session.post(
            self.fcm_end_point, data=payload, headers=self.request_headers(), timeout=timeout
        )


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
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:  # the HTTP-date form
        return max(0.0, (parsedate_to_datetime(value) - timezone.now()).total_seconds())
    except (TypeError, ValueError):
        return None
