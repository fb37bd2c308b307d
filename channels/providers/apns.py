"""APNs: one HTTP/2 request per device, token (JWT) authentication, Apple's reasons mapped.

Apple's provider API: ``POST {APNS_ENDPOINT}/3/device/<token>`` with an ES256 provider token
(``kid`` = APNS_KEY_ID, ``iss`` = APNS_TEAM_ID, ``iat``). The answer is 200 with an
``apns-id`` header, or a status and a JSON ``{"reason": ...}`` from "Handling notification
responses from APNs", which decides whether the device is dead, the send may be retried, or
our own settings are wrong.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import threading
import time
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

import jwt
from django.conf import settings

from channels.base import (
    OutboundMessage,
    PermanentDeliveryError,
    ProviderConfigurationError,
    TransientDeliveryError,
)
from channels.http import retry_after_seconds
from channels.providers import http2
from preferences.tokens import is_valid_device_token

PROVIDER = "APNs"
logger = logging.getLogger(__name__)
_GOAWAY_IN_FLIGHT = (
    "the connection was closed (GOAWAY) with this request taken but unanswered; "
    "it may have been accepted"
)
# Apple refuses provider tokens older than an hour and answers TooManyProviderTokenUpdates to
# more than one new token per 20 minutes, so one token serves 50 minutes.
TOKEN_REFRESH_SECONDS = 50 * 60
# Apple keeps an undeliverable notification until apns-expiration; a day-old notice is noise.
EXPIRATION_SECONDS = 24 * 60 * 60
PAYLOAD_KEY = "notify"  # our custom key next to "aps": notification id, event and data

DEAD_TOKEN = {
    "Unregistered",
    "ExpiredToken",
    "BadDeviceToken",
    "DeviceTokenNotForTopic",
    "MissingDeviceToken",  # an empty token: a row no registration could make today
}
TRANSIENT = {
    "TooManyRequests",
    "TooManyProviderTokenUpdates",
    "IdleTimeout",
    "InternalServerError",
    "ServiceUnavailable",
    "Shutdown",
}
# Dead-token answers that a wrong setting of ours gives for every token alike: the settings to
# suspect (channels/gate/guard.py pauses APNs after a run of them instead of retiring every device).
SUSPECT = {
    "BadDeviceToken": "APNS_ENDPOINT (sandbox or production, as the app's build)",
    "DeviceTokenNotForTopic": "APNS_TOPIC (the app's bundle id)",
}
# Wrong settings on our side: retrying cannot help, someone has to fix them.
CONFIGURATION = {
    "InvalidProviderToken": "APNS_KEY_ID, APNS_TEAM_ID and APNS_PRIVATE_KEY",
    "MissingProviderToken": "APNS_PRIVATE_KEY",
    "UnrelatedKeyIdInToken": "APNS_KEY_ID",
    "BadCertificate": "APNS_PRIVATE_KEY",
    "BadCertificateEnvironment": "APNS_ENDPOINT (sandbox or production)",
    "Forbidden": "APNS_KEY_ID and APNS_TOPIC",
    "BadTopic": "APNS_TOPIC",
    "MissingTopic": "APNS_TOPIC",
    "TopicDisallowed": "APNS_TOPIC",
    "BadPath": "APNS_ENDPOINT",
    "MethodNotAllowed": "APNS_ENDPOINT",
}
EXPLAIN = {
    "Unregistered": "the device token is no longer active for the topic",
    "ExpiredToken": "the device token has expired",
    "BadDeviceToken": "the device token is invalid (or belongs to the other environment)",
    "DeviceTokenNotForTopic": "the device token does not match the topic",
    "MissingDeviceToken": "the request has no device token",
    "TooManyRequests": "too many requests to the same device token",
    "ServiceUnavailable": "the service is unavailable",
    "InternalServerError": "an internal server error occurred",
    "PayloadTooLarge": "the payload exceeds Apple's 4 KB limit",
    "BadPath": "the request path is not /3/device/<device token>",
    "ExpiredProviderToken": "the provider token is stale",
    "InvalidProviderToken": "the provider token is invalid or its signature cannot be verified",
}


class APNsSender:
    platform: ClassVar[str] = "apns"
    name: ClassVar[str] = "apns"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # One HTTP/2 client (a few connections, many streams each) per I/O loop and origin.
        self._clients: dict[tuple[asyncio.AbstractEventLoop, str, str], http2.Client] = {}
        self._token = ""
        self._token_key: tuple[str, str, str] = ("", "", "")
        self._token_born = 0.0

    async def send_to_device(self, token: str, message: OutboundMessage) -> str:
        response = await self._post(token, message, self._provider_token())
        if _reason(response) == "ExpiredProviderToken":
            # Stale token (a clock jump, a revoked key): one fresh token, one retry, right now.
            response = await self._post(token, message, self._provider_token(refresh=True))
            if _reason(response) == "ExpiredProviderToken":
                raise ProviderConfigurationError(
                    f"{PROVIDER} 403 ExpiredProviderToken: refused a token issued just now; "
                    "is this machine's clock right?"
                )
        return _outcome(token, response)

    async def _post(
        self, token: str, message: OutboundMessage, provider_token: str
    ) -> http2.Response:
        timeout = float(settings.NOTIFY_PROVIDER_TIMEOUT_SECONDS)
        endpoint = urlsplit(str(settings.APNS_ENDPOINT))
        headers = [("authorization", f"bearer {provider_token}"), *_headers(message).items()]
        path = f"{endpoint.path.rstrip('/')}/3/device/{quote(token, safe='')}"
        try:
            async with asyncio.timeout(timeout):
                client = self._client(endpoint.hostname or "", endpoint.port or 443)
                return await client.post(path, headers, _payload(message))
        except TimeoutError as exc:
            raise TransientDeliveryError(
                f"no answer within {timeout:g}s (timeout)", provider=PROVIDER
            ) from exc
        except http2.GoAwayInFlight as exc:
            # A GOAWAY that leaves this request out (a stream above its last_stream_id) never
            # gets here: the client sends it again on a new connection, which is safe. Here
            # the GOAWAY names this request as taken by the server, and no answer came. Apple
            # may have accepted it, so the retry this error leads to may deliver it twice: at
            # least once, like a timed-out answer.
            logger.warning("%s: %s", PROVIDER, _GOAWAY_IN_FLIGHT)
            raise TransientDeliveryError(
                f"{_GOAWAY_IN_FLIGHT} ({exc})", provider=PROVIDER, provider_code="GoAway"
            ) from exc
        except ssl.SSLCertVerificationError as exc:
            raise ProviderConfigurationError(
                f"{PROVIDER}: the server certificate of {settings.APNS_ENDPOINT} is not "
                f"trusted ({exc}); check APNS_ENDPOINT and APNS_CA_FILE"
            ) from exc
        except (OSError, http2.StreamError) as exc:
            # Refused connections, resets, a connection the server closed.
            name = "ConnectError" if isinstance(exc, ConnectionError) else type(exc).__name__
            raise TransientDeliveryError(f"{name}: {exc}", provider=PROVIDER) from exc

    def _client(self, host: str, port: int) -> http2.Client:
        loop = asyncio.get_running_loop()
        key = (loop, f"{host}:{port}", str(settings.APNS_CA_FILE))
        client = self._clients.get(key)
        if client is None:
            # Clients of a loop that is gone (a test's own loop) are dropped with it.
            self._clients = {k: c for k, c in self._clients.items() if not k[0].is_closed()}
            client = self._clients[key] = http2.Client(
                host,
                port,
                http2.tls_context(key[2]),
                max_connections=int(settings.APNS_MAX_CONNECTIONS),
            )
        return client

    def open_connections(self) -> int:
        """Connections open on the clients kept (one client per I/O loop)."""
        return sum(client.open_connections() for client in self._clients.values())

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        for key in [k for k in self._clients if k[0] is loop]:
            await self._clients.pop(key).aclose()

    def _provider_token(self, *, refresh: bool = False) -> str:
        key = (settings.APNS_KEY_ID, settings.APNS_TEAM_ID, settings.APNS_PRIVATE_KEY)
        with self._lock:
            stale = _clock() - self._token_born >= TOKEN_REFRESH_SECONDS
            if refresh or stale or key != self._token_key or not self._token:
                try:
                    self._token = jwt.encode(
                        {"iss": key[1], "iat": int(time.time())},
                        key[2],
                        algorithm="ES256",
                        headers={"kid": key[0]},
                    )
                except (ValueError, TypeError, jwt.PyJWTError) as exc:
                    raise ProviderConfigurationError(
                        f"{PROVIDER}: APNS_PRIVATE_KEY cannot sign an ES256 token: {exc}"
                    ) from exc
                self._token_key, self._token_born = key, _clock()
            return self._token

    @classmethod
    def check_configuration(cls) -> list[str]:
        problems = [
            f"{setting} is not set."
            for setting in ("APNS_KEY_ID", "APNS_TEAM_ID", "APNS_TOPIC")
            if not getattr(settings, setting)
        ]
        if not settings.APNS_PRIVATE_KEY:
            problems.append("APNS_PRIVATE_KEY (or APNS_PRIVATE_KEY_FILE) is not set.")
        else:
            problems.extend(_key_problems(settings.APNS_PRIVATE_KEY))
        from channels.checks import url_problem

        if problem := url_problem("APNS_ENDPOINT", str(settings.APNS_ENDPOINT), {"https"}):
            problems.append(f"{problem} (APNs only speaks HTTP/2 over TLS)")
        if settings.APNS_CA_FILE and not os.path.isfile(settings.APNS_CA_FILE):
            problems.append(f"APNS_CA_FILE={settings.APNS_CA_FILE!r} is not a readable file.")
        return problems


def _clock() -> float:
    return time.monotonic()


def _headers(message: OutboundMessage) -> dict[str, str]:
    data = message.data
    headers = {
        "apns-topic": str(settings.APNS_TOPIC),
        "apns-push-type": "alert",
        # 10 wakes the device now; 5 lets iOS batch it to save the battery.
        "apns-priority": "5" if data.get("priority") == "low" else "10",
        "apns-expiration": str(int(time.time()) + EXPIRATION_SECONDS),
    }
    if data.get("collapseId"):
        headers["apns-collapse-id"] = str(data["collapseId"]).strip()
    return headers


def _payload(message: OutboundMessage) -> bytes:
    body = {
        "aps": {
            "alert": {
                "title": message.content.get("subject", ""),
                "body": message.content.get("body", ""),
            },
            "sound": "default",
        },
        PAYLOAD_KEY: {
            "notificationId": message.notification_id,
            "event": message.event,
            "data": message.data,
        },
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def _reason(response: http2.Response) -> str:
    if response.status == 200:
        return ""
    return str(_json(response).get("reason", ""))


def _outcome(token: str, response: http2.Response) -> str:
    status = response.status
    if status == 200:
        return response.headers.get("apns-id", "")
    reason = _reason(response)
    detail = EXPLAIN.get(reason, response.body[:200].decode(errors="replace") or f"HTTP {status}")
    where: dict[str, Any] = {
        "provider": PROVIDER,
        "status_code": status,
        "provider_code": reason or None,
    }
    if reason == "BadPath" and not is_valid_device_token("apns", token):
        # A token registered before tokens were validated ("abc/def") makes a path Apple
        # cannot read: that device is dead, not our APNS_ENDPOINT. A valid token's BadPath is.
        raise PermanentDeliveryError(
            f"{detail}: the device token is not 64-200 hexadecimal digits",
            dead_device_tokens=(token,),
            response=_json(response),
            **where,
        )
    if reason in CONFIGURATION or (status == 403 and not reason):
        fix = CONFIGURATION.get(reason, "the APNS_* settings")
        raise ProviderConfigurationError(f"{PROVIDER} {status} {reason}: {detail}; check {fix}")
    if reason in DEAD_TOKEN or status == 410:
        if "timestamp" in (body := _json(response)):
            since = datetime.fromtimestamp(int(body["timestamp"]) / 1000, UTC)
            detail = f"{detail} (since {since:%Y-%m-%d %H:%M:%S}Z)"
        raise PermanentDeliveryError(
            detail,
            dead_device_tokens=(token,),
            response=body,
            suspect_settings=SUSPECT.get(reason, "") if status != 410 else "",
            **where,
        )
    if reason in TRANSIENT or status == 429 or status >= 500:
        raise TransientDeliveryError(
            detail, retry_after=retry_after_seconds(response.headers.get("retry-after")), **where
        )
    # The request itself is wrong (PayloadTooLarge, BadPriority, BadCollapseId...): the
    # device is fine, this notification can never go.
    raise PermanentDeliveryError(detail, response=_json(response), **where)


def _json(response: http2.Response) -> dict[str, Any]:
    try:
        body = json.loads(response.body)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _key_problems(pem: str) -> list[str]:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        return [f"APNS_PRIVATE_KEY is not a PEM private key (the .p8 file's text): {exc}"]
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        return ["APNS_PRIVATE_KEY is not an EC P-256 key; APNs signs tokens with ES256."]
    return []
