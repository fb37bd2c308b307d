"""A local FCM HTTP v1 API and the Google OAuth 2.0 token endpoint in front of it.

``POST /token`` takes a service account's signed JWT assertion (grant type
``urn:ietf:params:oauth:grant-type:jwt-bearer``), checks it as Google does (RS256 signature
against the trusted account's public key, ``kid``, ``iss``, ``aud`` =
``https://oauth2.googleapis.com/token``, a lifetime of at most an hour, an FCM scope) and issues
an hour-long bearer token. ``POST /v1/projects/{project}/messages:send`` requires that token
(401 ``UNAUTHENTICATED`` otherwise; 403 ``PERMISSION_DENIED`` for another project), checks the
body like FCM (known fields, one target, string data values, no reserved data keys, 4 KB) and
answers ``{"name": "projects/{project}/messages/{id}"}``. The device token decides the rest:

- ``unregistered…``: 404 ``UNREGISTERED``
- ``invalid…``: 400 ``INVALID_ARGUMENT`` (not a valid FCM registration token)
- a character other than letters, digits, ``_``, ``-`` and ``:``, or over 4,096 of them:
  400 ``INVALID_ARGUMENT`` with Google's generic "Request contains an invalid argument."
- ``mismatch…``: 403 ``SENDER_ID_MISMATCH``
- ``quota…``: 429 ``QUOTA_EXCEEDED`` with ``Retry-After: 1``
- ``flaky-N-…``: 503 ``UNAVAILABLE`` for the first N attempts, then 200
- ``expiredauth-…``: 401 with reason ``ACCESS_TOKEN_EXPIRED`` to the first bearer token seen
  for that device; that token then stays expired for every device, so only a fresh one works
- ``slow-MS-…``: waits MS milliseconds, then 200
- anything else: 200

Errors use Google's shape (``{"error": {"code", "message", "status", "details"}}``). Every request
is recorded without secrets (the assertion's decoded header and claims, the bearer token's serial
number) in ``requests``, at ``GET /_fake/requests`` and, with ``--log``, in a JSONL file.
``write_service_account()`` makes a key pair and service-account JSON for a ``token_uri``. Alone:
``POST /_fake/fault`` switches a provider-wide outage, throttle or hang of the sends
(devtools/fakes/faults.py). Alone:
``python -m devtools.fakes.fcm --port 8089 --service-account .run/fcm-service-account.json``
(the file is written, pointing at this fake, if it does not exist).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import secrets
import signal
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from devtools.fakes.faults import CONTROL_PATH, FaultRequestError, Faults
from devtools.fakes.httpserver import FakeHTTPServer
from devtools.fakes.stats import STATS_PATH, RequestRate

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
AUDIENCE = "https://oauth2.googleapis.com/token"  # google-auth signs this whatever token_uri says
SCOPES = {
    "https://www.googleapis.com/auth/firebase.messaging",
    "https://www.googleapis.com/auth/cloud-platform",
}
TOKEN_LIFETIME = 3600
MAX_PAYLOAD_BYTES = 4096  # FCM's limit on data plus notification for a device message
_SEND_PATH = re.compile(r"^/v1/projects/([^/]+)/messages:send$")
_FLAKY = re.compile(r"^flaky-(\d+)-")
_SLOW = re.compile(r"^slow-(\d+)-")
_TOKEN = re.compile(r"[A-Za-z0-9_:-]{1,4096}")  # what FCM's registration tokens are made of
_INVALID_ARGUMENT = "Request contains an invalid argument."
_MESSAGE_FIELDS = {"name", "data", "notification", "android", "webpush", "apns", "fcm_options"}
_TARGETS = ("token", "topic", "condition")
_FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_FCM_INVALID = {"@type": _FCM_ERROR, "errorCode": "INVALID_ARGUMENT"}
_WRONG_AUDIENCE = f"Invalid JWT: Failed audience check. The right audience is {AUDIENCE}"
_UNAUTHENTICATED = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie "
    "or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
_ACCOUNT_FIELDS = ("project_id", "client_email", "private_key_id", "private_key", "token_uri")
_SHORT_LIVED = (
    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
    "Check your iat and exp values in the JWT claim."
)


@dataclass(frozen=True)
class ServiceAccount:
    path: Path
    project_id: str
    client_email: str
    private_key_id: str
    private_key: str  # PEM
    token_uri: str

    def public_key(self) -> Any:
        return serialization.load_pem_private_key(self.private_key.encode(), None).public_key()


def write_service_account(
    path: Path | str, *, token_uri: str, project_id: str = "demo-project", private_key: str = ""
) -> ServiceAccount:
    """A new RSA key pair and the service-account JSON Firebase would give you, at ``path``."""
    if not private_key:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pkcs8 = serialization.PrivateFormat.PKCS8
        pem = key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption())
        private_key = pem.decode()
    email = f"firebase-adminsdk@{project_id}.iam.gserviceaccount.com"
    account = ServiceAccount(
        Path(path), project_id, email, secrets.token_hex(20), private_key, token_uri
    )
    info = {
        "type": "service_account",
        **{name: getattr(account, name) for name in _ACCOUNT_FIELDS},
        "client_id": str(random.randrange(10**20, 10**21)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
    }
    account.path.parent.mkdir(parents=True, exist_ok=True)
    account.path.write_text(json.dumps(info, indent=2))
    account.path.chmod(0o600)
    return account


def load_service_account(path: Path | str) -> ServiceAccount:
    info = json.loads(Path(path).read_text())
    return ServiceAccount(Path(path), **{name: info[name] for name in _ACCOUNT_FIELDS})


@dataclass
class _Issued:
    serial: int
    project_id: str
    expires_at: float
    expired: bool = False


class FakeFCM:
    """The server in a background thread; ``trust()`` the service accounts it should accept."""

    def __init__(
        self,
        port: int = 0,
        *,
        log_path: Path | None = None,
        latency_ms: int = 0,
        fail_rate: float = 0.0,
    ) -> None:
        self.requests: list[dict[str, Any]] = []
        self.log_path = log_path
        self.latency_ms = latency_ms
        self.fail_rate = fail_rate
        self._accounts: dict[str, ServiceAccount] = {}
        self._tokens: dict[str, _Issued] = {}
        self._attempts: dict[str, int] = {}
        self._expired_for: set[str] = set()
        self.faults = Faults()  # switched at runtime: POST /_fake/fault (devtools/fakes/faults.py)
        self.stats = RequestRate()  # GET /_fake/stats: sends received (not tokens), busiest second
        self._lock = threading.Lock()
        self._server = FakeHTTPServer(("127.0.0.1", port), _Handler)
        self._server.fake = self  # type: ignore[attr-defined]
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def start(self) -> FakeFCM:
        self._thread.start()
        return self

    def _serve(self) -> None:
        self._server.serve_forever(poll_interval=0.05)  # so stop() returns at once

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def trust(self, account: ServiceAccount) -> ServiceAccount:
        with self._lock:
            self._accounts[account.client_email] = account
        return account

    def write_service_account(
        self, path: Path | str, *, project_id: str = "demo-project"
    ) -> ServiceAccount:
        """A service account whose ``token_uri`` is this fake, trusted by it."""
        return self.trust(
            write_service_account(path, token_uri=self.token_uri, project_id=project_id)
        )

    def sends(self, token: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [
                r
                for r in self.requests
                if r["kind"] == "send" and (token is None or r.get("token") == token)
            ]

    def token_requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r["kind"] == "token"]

    def handle(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], Any]:
        if method == "GET" and path == "/_fake/requests":
            with self._lock:
                return 200, {}, list(self.requests)
        if method == "GET" and path == STATS_PATH:
            return 200, {}, self.stats.as_json()
        if method == "POST" and _SEND_PATH.match(path):
            self.stats.count()
        if path == CONTROL_PATH:
            try:
                state = self.faults.control(body) if method == "POST" else self.faults.state()
            except FaultRequestError as exc:
                return 400, {}, _google(400, "INVALID_ARGUMENT", str(exc))
            return 200, {}, state
        record: dict[str, Any] = {"at": time.time(), "method": method, "path": path}
        record["headers"] = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        time.sleep(self.latency_ms / 1000)
        send, extra = _SEND_PATH.match(path), dict[str, str]()
        if method == "POST" and path == "/token":
            record["kind"] = "token"
            status, answer = self._token(body, record)
        elif method == "POST" and send and (verdict := self.faults.intercept()):
            # A hang ends in a 503 too: the client gave up by then, or gets a transient error.
            record.update(kind="send", fault=verdict.mode)
            throttled = verdict.status == 429
            status, answer, _ = _fcm(
                verdict.status,
                "RESOURCE_EXHAUSTED" if throttled else "UNAVAILABLE",
                "QUOTA_EXCEEDED" if throttled else "UNAVAILABLE",
                verdict.mode,
            )
            extra = dict(verdict.headers)
        elif method == "POST" and send:
            record["kind"] = "send"
            status, answer, extra = self._send(send[1], headers, body, record)
        else:
            record["kind"] = "other"
            status, answer = 404, _google(404, "NOT_FOUND", f"Not found: {path}")
        # The access token is a secret: the record names it by its serial number instead.
        shown = {**answer, "access_token": "<redacted>"} if "access_token" in answer else answer
        record.update(status=status, response=shown)
        with self._lock:
            self.requests.append(record)
            if self.log_path is not None:
                with self.log_path.open("a") as log:
                    log.write(json.dumps(record) + "\n")
        return status, extra, answer

    def _token(self, body: bytes, record: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        form = urllib.parse.parse_qs(body.decode(errors="replace"))
        grant_type, assertion = form.get("grant_type", [""])[0], form.get("assertion", [""])[0]
        record["grantType"] = grant_type
        if random.random() < self.fail_rate:
            return 503, _oauth("temporarily_unavailable", "The service is currently unavailable.")
        if grant_type != JWT_BEARER:
            return 400, _oauth("unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            return 400, _oauth("invalid_grant", "Invalid JWT: not a signed JWT.")
        record["assertion"] = {"header": header, "claims": claims}  # not the signed JWT itself
        with self._lock:
            account = self._accounts.get(str(claims.get("iss")))
        if account is None:
            return 400, _oauth("invalid_grant", "Invalid grant: account not found")
        problem = _check_assertion(assertion, header, claims, account)
        if problem:
            return 400, _oauth(*problem)
        access_token = "ya29.fake-" + secrets.token_urlsafe(32)
        with self._lock:
            issued = _Issued(
                len(self._tokens) + 1, account.project_id, time.time() + TOKEN_LIFETIME
            )
            self._tokens[access_token] = issued
        record["issued"] = issued.serial
        return 200, {
            "access_token": access_token,
            "expires_in": TOKEN_LIFETIME,
            "token_type": "Bearer",
        }

    def _send(
        self, project: str, headers: dict[str, str], body: bytes, record: dict[str, Any]
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        try:
            payload = json.loads(body)
        except ValueError as exc:
            payload, invalid = None, f"Invalid JSON payload received. {exc}"
        message = payload.get("message") if isinstance(payload, dict) else None
        token = str(message.get("token", "")) if isinstance(message, dict) else ""
        record.update(body=payload, token=token)  # recorded whatever the verdict
        authorization = headers.get("Authorization", "")
        with self._lock:
            issued = self._tokens.get(authorization.removeprefix("Bearer "))
        record["bearer"] = issued.serial if issued else None
        if issued is None or not authorization.startswith("Bearer "):
            return 401, _google(401, "UNAUTHENTICATED", _UNAUTHENTICATED), {}
        if project != issued.project_id:
            denied = (
                f"Permission 'cloudmessaging.messages.create' denied on resource "
                f"'//cloudresourcemanager.googleapis.com/projects/{project}' (or it may not exist)."
            )
            return 403, _google(403, "PERMISSION_DENIED", denied), {}
        if payload is None:
            return 400, _google(400, "INVALID_ARGUMENT", invalid), {}
        problem = _invalid_payload(payload)
        if problem:
            return 400, _google(400, "INVALID_ARGUMENT", problem[0], details=problem[1]), {}
        with self._lock:
            if token.startswith("expiredauth-") and token not in self._expired_for:
                self._expired_for.add(token)
                issued.expired = True
            expired = issued.expired or time.time() > issued.expires_at
            self._attempts[token] = attempt = self._attempts.get(token, 0) + 1
        if expired:
            reason = {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "ACCESS_TOKEN_EXPIRED",
                "domain": "googleapis.com",
                "metadata": {"service": "fcm.googleapis.com"},
            }
            return 401, _google(401, "UNAUTHENTICATED", _UNAUTHENTICATED, details=[reason]), {}
        return self._by_token(project, token, attempt, bool(payload.get("validate_only")))

    def _by_token(
        self, project: str, token: str, attempt: int, validate_only: bool
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        flaky, slow = _FLAKY.match(token), _SLOW.match(token)
        if token.startswith("invalid"):
            text = "The registration token is not a valid FCM registration token"
            return _fcm(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", text)
        if not _TOKEN.fullmatch(token):
            # Google's generic answer, which does not say the token was the argument at fault.
            return _fcm(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", _INVALID_ARGUMENT)
        if token.startswith("unregistered"):
            return _fcm(404, "NOT_FOUND", "UNREGISTERED", "Requested entity was not found.")
        if token.startswith("mismatch"):
            return _fcm(403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH", "SenderId mismatch")
        if token.startswith("quota"):
            text = (
                "Quota exceeded for quota metric 'Send requests' of service 'fcm.googleapis.com'."
            )
            status, answer, _ = _fcm(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", text)
            return status, answer, {"Retry-After": "1"}
        if (flaky and attempt <= int(flaky[1])) or random.random() < self.fail_rate:
            text = "The service is currently unavailable."
            return _fcm(503, "UNAVAILABLE", "UNAVAILABLE", text)
        if slow:
            time.sleep(int(slow[1]) / 1000)
        message_id = "fake_message_id" if validate_only else f"0:{time.time_ns()}%fake"
        return 200, {"name": f"projects/{project}/messages/{message_id}"}, {}


def _check_assertion(
    assertion: str, header: dict[str, Any], claims: dict[str, Any], account: ServiceAccount
) -> tuple[str, str] | None:
    """Google's verdict on a service account's JWT assertion: (error, description) or None."""
    if header.get("kid") != account.private_key_id:
        return "invalid_grant", "Invalid JWT Signature."
    try:
        jwt.decode(
            assertion,
            account.public_key(),
            algorithms=["RS256"],
            audience=AUDIENCE,
            leeway=60,
            options={"require": ["iss", "aud", "iat", "exp"]},
        )
    except jwt.InvalidSignatureError:
        return "invalid_grant", "Invalid JWT Signature."
    except jwt.InvalidAudienceError:
        return "invalid_grant", _WRONG_AUDIENCE
    except jwt.PyJWTError:
        return "invalid_grant", _SHORT_LIVED
    if int(claims["exp"]) - int(claims["iat"]) > TOKEN_LIFETIME:
        return "invalid_grant", _SHORT_LIVED
    if not SCOPES & set(str(claims.get("scope", "")).split()):
        return "invalid_scope", "Invalid OAuth scope or ID token audience provided."
    return None


def _invalid_payload(payload: Any) -> tuple[str, list[dict[str, Any]]] | None:
    """What FCM would refuse in this body (its message and error details), or None."""
    if not isinstance(payload, dict) or not isinstance(payload.get("message"), dict):
        return "Invalid JSON payload received. 'message' must be an object.", []
    for name in set(payload) - {"message", "validate_only"}:
        return f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.', []
    message = payload["message"]
    for name in set(message) - _MESSAGE_FIELDS - set(_TARGETS):
        unknown = f"Invalid JSON payload received. Unknown name \"{name}\" at 'message': "
        return unknown + "Cannot find field.", []
    if sum(1 for target in _TARGETS if message.get(target)) != 1:
        text = "Recipient of the message is not set."
        return text, [_violation("message", text), _FCM_INVALID]
    data = message.get("data", {})
    if len(json.dumps([data, message.get("notification")]).encode()) > MAX_PAYLOAD_BYTES:
        return "Android message is too big", [_FCM_INVALID]
    if not isinstance(data, dict):
        return "Invalid value at 'message.data' (type.googleapis.com/Map), not a map", []
    for index, (key, value) in enumerate(data.items()):
        if not isinstance(value, str):
            text = f"Invalid value at 'message.data[{index}].value' (TYPE_STRING), {value}"
            return text, [_violation(f"message.data[{index}].value", text)]
        if key in ("from", "message_type") or key.lower().startswith(("google", "gcm")):
            text = f"Invalid data payload key: {key}"
            return text, [_FCM_INVALID]
    return None


def _violation(field: str, description: str) -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "fieldViolations": [{"field": field, "description": description}],
    }


def _google(
    code: int, status: str, message: str, *, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return {"error": error}


def _fcm(
    code: int, status: str, error_code: str, message: str
) -> tuple[int, dict[str, Any], dict[str, str]]:
    details = [{"@type": _FCM_ERROR, "errorCode": error_code}]
    return code, _google(code, status, message, details=details), {}


def _oauth(error: str, description: str) -> dict[str, str]:
    return {"error": error, "error_description": description}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clients pool connections to Google
    timeout = 60  # an idle keep-alive connection does not hold its thread forever

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def _answer(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        fake: FakeFCM = self.server.fake  # type: ignore[attr-defined]
        status, extra, answer = fake.handle(method, self.path, dict(self.headers.items()), body)
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in extra.items():
            self.send_header(name, value)
        try:
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up waiting (a slow-… token)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the records and the JSONL log say what happened


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--log", type=Path, help="append every request to this JSONL file")
    parser.add_argument("--latency-ms", type=int, default=0, help="wait before every answer")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="share of requests given 503")
    parser.add_argument(
        "--service-account",
        type=Path,
        action="append",
        default=[],
        help="trust this service-account JSON (written, pointing here, if it does not exist)",
    )
    args = parser.parse_args()
    fake = FakeFCM(
        args.port, log_path=args.log, latency_ms=args.latency_ms, fail_rate=args.fail_rate
    )
    for path in args.service_account:
        if path.exists():
            fake.trust(load_service_account(path))
        else:
            fake.write_service_account(path)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as on Ctrl-C
    fake.start()
    print(f"fake fcm on 127.0.0.1:{fake.port}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
