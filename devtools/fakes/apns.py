"""A local APNs: HTTP/2 over TLS with token (JWT) auth, answering like Apple's provider API.

It generates a throwaway CA and a certificate for 127.0.0.1/localhost at start and writes the
CA's PEM to ``ca_path`` (``--ca-out``); point ``APNS_CA_FILE`` at it. Every request's JWT is
checked (ES256, ``kid`` and ``iss`` as configured, ``iat`` within the last hour, signature
against the configured key) and ``apns-topic`` must match, as Apple does. The device token
then decides what happens, so tests and demos need no control channel. Apple's tokens are
hexadecimal (64 digits today), and so are the fake's magic ones: a four-digit prefix picks the
answer, and some take a four-digit decimal number after it (``device_token()`` builds them):

==============  =================================================================
token           answer
==============  =================================================================
``600d…``       200 (good: what generated tokens start with, so that a random tail
                never happens to begin with one of the prefixes below)
``dead…``       410 ``Unregistered`` (with Apple's ``timestamp``)
``badd…``       400 ``BadDeviceToken``
``d1ff…``       400 ``DeviceTokenNotForTopic`` (a different app's token)
``c001SSSS…``   429 ``TooManyRequests`` ("cool off"), with ``Retry-After: SSSS``
                seconds unless SSSS is ``0000``
``fa11NNNN…``   503 ``ServiceUnavailable`` for the first NNNN attempts, then 200
``57a1…``       403 ``ExpiredProviderToken`` ("stale") to the first JWT seen for that
                device; that JWT stays expired for every device, so only a fresh one
                gets through
``de1aMMMM…``   waits MMMM milliseconds ("delay"), then 200
other hex       200 with an ``apns-id`` (a UUID, or the request's own ``apns-id``)
not hex         400 ``BadDeviceToken`` (an odd number of digits, or any other
                character), as Apple answers a malformed token
==============  =================================================================

A path that is not ``/3/device/<one segment>`` (a token with ``/`` in it, say) is 404
``BadPath``, and ``/3/device/`` alone 400 ``MissingDeviceToken``. Prefixes are matched in
either case.

Payloads over 4096 bytes get 413 ``PayloadTooLarge``. A busy connection is never retired after a
number of requests unless ``max_requests_per_connection`` says so (see ``FakeAPNs``). Every
request is recorded (token, headers without the JWT, the JWT's decoded header and claims, JSON
payload, status) in ``requests``, at ``GET /_fake/requests`` and, with ``--log``, in a JSONL file.
``POST /_fake/fault`` switches a provider-wide outage, throttle or hang
(devtools/fakes/faults.py). Alone:
``python -m devtools.fakes.apns --port 2197 --ca-out ca.pem --private-key-out key.p8``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import re
import signal
import socket
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypercorn.asyncio import serve
from hypercorn.config import Config

from devtools.fakes.faults import CONTROL_PATH, FaultRequestError, Faults
from devtools.fakes.stats import STATS_PATH, RequestRate

MAX_PAYLOAD_BYTES = 4096  # Apple's limit for regular remote notifications
UNLIMITED_REQUESTS = 2**62  # hypercorn's keep_alive_max_requests, in effect no limit
# Far longer than any client's idle expiry (httpx drops an idle connection after 5 s), so the
# client retires an idle connection first, as with Apple, which keeps connections open long.
# Hypercorn's own idle close (5 s) sends no GOAWAY and may still hand the app a request that
# arrived as it closed, then drop the answer: the client retried a push the fake had accepted
# (measured: 12 of 6,000 requests sent at the edge of the timeout; 1 push in a 100k broadcast).
IDLE_TIMEOUT_SECONDS = 3600
_DEVICE_PATH = re.compile(r"^/3/device/([^/]+)$")
_HEX = re.compile(r"^(?:[0-9a-fA-F]{2})+$")
TOKEN_HEX_DIGITS = 64  # what device_token() makes; the fake answers any even number of digits
# The magic prefixes (see the table above); the numbered ones take four decimal digits after.
PREFIXES = {
    "ok": "600d",
    "unregistered": "dead",
    "baddevicetoken": "badd",
    "wrongtopic": "d1ff",
    "toomany": "c001",
    "flaky": "fa11",
    "expiredjwt": "57a1",
    "slow": "de1a",
}
_NUMBERED = {"toomany", "flaky", "slow"}
_NUMBER = re.compile(r"^[0-9a-f]{4}(\d{4})")


class FakeAPNs:
    """The server, in a background thread. ``public_key_pem`` (or the private key) checks JWTs.

    ``max_requests_per_connection``: hypercorn's way of retiring a connection after that many
    requests, kept only to show what it does to a client (tests/channels/test_apns_goaway.py).
    The request that crosses the limit is handed to the app (accepted, logged 200) while the
    server sends GOAWAY naming it as processed; h2 then refuses to send its answer after the
    GOAWAY, and the client, told its request may have been processed but never answered,
    retries. Hypercorn's default (1,000) did this once per 1,000 requests on a connection: a
    push accepted twice, the chaos suite's unexplained duplicates. Apple answers what it
    accepts, so by default the fake never retires a busy connection, and leaves closing an
    idle one to the client (``IDLE_TIMEOUT_SECONDS``).
    """

    def __init__(
        self,
        *,
        key_id: str,
        team_id: str,
        topic: str,
        public_key_pem: str,
        port: int = 0,
        ca_out: Path | None = None,
        log_path: Path | None = None,
        latency_ms: int = 0,
        fail_rate: float = 0.0,
        max_requests_per_connection: int | None = None,
    ) -> None:
        self.key_id, self.team_id, self.topic = key_id, team_id, topic
        self.max_requests_per_connection = max_requests_per_connection
        key = public_key_pem.encode()
        if b"PRIVATE KEY" in key:
            private = serialization.load_pem_private_key(key, password=None)
            key = private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        self.public_key_pem = key.decode()
        self.log_path, self.latency_ms, self.fail_rate = log_path, latency_ms, fail_rate
        self.requests: list[dict[str, Any]] = []
        self._attempts: dict[str, int] = {}
        self._expired_jwts: set[str] = set()
        self._expired_for: set[str] = set()
        self.faults = Faults()  # switched at runtime: POST /_fake/fault (devtools/fakes/faults.py)
        self.stats = RequestRate()  # GET /_fake/stats: pushes received, busiest second
        self._lock = threading.Lock()
        self._tls_dir = tempfile.TemporaryDirectory(prefix="fake-apns-")
        self.ca_path = ca_out or Path(self._tls_dir.name) / "ca.pem"
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self.port = int(self._sock.getsockname()[1])
        self.url = f"https://127.0.0.1:{self.port}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> FakeAPNs:
        config = Config()
        config.certfile, config.keyfile = self._write_certificates()
        # Bound and listening before serve(): clients can connect as soon as start() returns.
        self._sock.listen(128)
        config.bind = [f"fd://{self._sock.detach()}"]
        config.graceful_timeout = 0.5
        # Never retire a connection with a request in flight whose answer it then drops.
        config.keep_alive_max_requests = self.max_requests_per_connection or UNLIMITED_REQUESTS
        config.keep_alive_timeout = IDLE_TIMEOUT_SECONDS
        config.loglevel = "WARNING"
        started = threading.Event()

        def run() -> None:
            self._loop = loop = _Loop()
            self._stopping = asyncio.Event()
            started.set()
            loop.run_until_complete(
                serve(self._app, config, shutdown_trigger=self._stopping.wait, mode="asgi")
            )
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-apns", daemon=True)
        self._thread.start()
        started.wait(5)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(10)
        self._tls_dir.cleanup()

    def requests_to(self, token: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r["token"] == token]

    def _write_certificates(self) -> tuple[str, str]:
        ca_pem, cert_pem, key_pem = throwaway_tls()
        self.ca_path.write_bytes(ca_pem)
        cert, key = Path(self._tls_dir.name) / "cert.pem", Path(self._tls_dir.name) / "key.pem"
        cert.write_bytes(cert_pem)
        key.write_bytes(key_pem)
        return str(cert), str(key)

    async def _app(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (event := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        if scope["method"] == "GET" and scope["path"] == "/_fake/requests":
            with self._lock:
                listing = json.dumps(self.requests).encode()
            await _respond(send, 200, {"content-type": "application/json"}, listing)
            return
        if scope["method"] == "GET" and scope["path"] == STATS_PATH:
            stats = json.dumps(self.stats.as_json()).encode()
            await _respond(send, 200, {"content-type": "application/json"}, stats)
            return
        if scope["path"] == CONTROL_PATH:
            try:
                state = self.faults.control(body) if scope["method"] == "POST" else None
                answer = 200, json.dumps(state or self.faults.state()).encode()
            except FaultRequestError as exc:
                answer = 400, json.dumps({"reason": str(exc)}).encode()
            await _respond(send, answer[0], {"content-type": "application/json"}, answer[1])
            return
        self.stats.count()
        record = self._new_record(scope, headers, body)
        try:
            status, reason, extra = await self._handle(scope, headers, body, record)
            response_headers = {"apns-id": headers.get("apns-id") or str(uuid.uuid4()), **extra}
            with self._lock:
                record.update(
                    status=status,
                    reason=reason,
                    apnsId=response_headers["apns-id"],
                    answeredAt=time.time(),
                )
        finally:  # a client that timed out still leaves a trace in the log
            self._log(record)
        payload: dict[str, Any] | None = {"reason": reason} if reason else None
        if reason == "Unregistered":
            payload = {"reason": reason, "timestamp": int(time.time() * 1000)}
        if payload is not None:
            response_headers["content-type"] = "application/json"
        out = json.dumps(payload).encode() if payload is not None else b""
        await _respond(send, status, response_headers, out)

    def _new_record(
        self, scope: dict[str, Any], headers: dict[str, str], body: bytes
    ) -> dict[str, Any]:
        match = _DEVICE_PATH.match(scope["path"])
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            payload = body.decode(errors="replace")
        record: dict[str, Any] = {
            "at": time.time(),
            "method": scope["method"],
            "path": scope["path"],
            "httpVersion": scope["http_version"],
            # Which client connection it came on ("host:port"): a retry on a new one shows.
            "client": ":".join(str(part) for part in scope.get("client") or ()),
            "token": match[1] if match else "",
            "headers": {k: v for k, v in headers.items() if k != "authorization"},
            "jwt": None,
            "payload": payload,
            "status": None,  # stays None when the client gave up before the answer
            "reason": "",
        }
        with self._lock:
            self.requests.append(record)
        return record

    async def _handle(
        self, scope: dict[str, Any], headers: dict[str, str], body: bytes, record: dict[str, Any]
    ) -> tuple[int, str, dict[str, str]]:
        """Apple's checks in Apple's order: method, path, provider token, topic, headers, body."""
        if self.latency_ms:
            await asyncio.sleep(self.latency_ms / 1000)
        if scope["method"] != "POST":
            return 405, "MethodNotAllowed", {}
        if not record["token"]:
            if scope["path"] == "/3/device/":
                return 400, "MissingDeviceToken", {}
            return 404, "BadPath", {}
        bearer = headers.get("authorization", "")
        if not bearer.lower().startswith("bearer "):
            return 403, "MissingProviderToken", {}
        provider_token = bearer[7:].strip()
        auth_problem = self._check_jwt(provider_token, record)
        if auth_problem:
            return 403, auth_problem, {}
        if "apns-topic" not in headers:
            return 400, "MissingTopic", {}
        if headers["apns-topic"] != self.topic:
            return 400, "BadTopic", {}
        if headers.get("apns-priority", "10") not in ("1", "5", "10"):
            return 400, "BadPriority", {}
        if len(headers.get("apns-collapse-id", "").encode()) > 64:
            return 400, "BadCollapseId", {}
        if not body:
            return 400, "PayloadEmpty", {}
        if len(body) > MAX_PAYLOAD_BYTES:
            return 413, "PayloadTooLarge", {}
        verdict = await self.faults.intercept_async()
        if verdict is not None:  # a hang ends in a 503: the client has given up by then
            record["fault"] = verdict.mode
            reason = "TooManyRequests" if verdict.status == 429 else "ServiceUnavailable"
            return verdict.status, reason, {k.lower(): v for k, v in verdict.headers.items()}
        return await self._by_token(record["token"], provider_token)

    def _check_jwt(self, provider_token: str, record: dict[str, Any]) -> str:
        """Apple's answer to a bad provider token, or "" when it is good."""
        try:
            header = jwt.get_unverified_header(provider_token)
            claims = jwt.decode(provider_token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return "InvalidProviderToken"
        fingerprint = hashlib.sha256(provider_token.encode()).hexdigest()[:16]
        record["jwt"] = {"header": header, "claims": claims, "fingerprint": fingerprint}
        if header.get("alg") != "ES256" or header.get("kid") != self.key_id:
            return "InvalidProviderToken"
        try:
            jwt.decode(
                provider_token,
                self.public_key_pem,
                algorithms=["ES256"],
                issuer=self.team_id,
                options={"require": ["iss", "iat"], "verify_iat": False},
            )
        except jwt.PyJWTError:
            return "InvalidProviderToken"
        iat = claims.get("iat")
        if not isinstance(iat, int) or iat > time.time() + 60:
            return "InvalidProviderToken"
        with self._lock:
            expired = provider_token in self._expired_jwts
        if expired or iat < time.time() - 3600:  # Apple refuses tokens older than an hour
            return "ExpiredProviderToken"
        return ""

    async def _by_token(self, token: str, provider_token: str) -> tuple[int, str, dict[str, str]]:
        if not _HEX.match(token):
            return 400, "BadDeviceToken", {}
        lower = token.lower()
        kind = _kind(lower)
        number = _NUMBER.match(lower)
        count = int(number[1]) if number and kind in _NUMBERED else 0
        with self._lock:
            attempt = self._attempts[token] = self._attempts.get(token, 0) + 1
            if kind == "expiredjwt" and token not in self._expired_for:
                self._expired_for.add(token)
                self._expired_jwts.add(provider_token)
                return 403, "ExpiredProviderToken", {}
        if kind == "unregistered":
            return 410, "Unregistered", {}
        if kind == "baddevicetoken":
            return 400, "BadDeviceToken", {}
        if kind == "wrongtopic":
            return 400, "DeviceTokenNotForTopic", {}
        if kind == "toomany":
            return 429, "TooManyRequests", {"retry-after": str(count)} if count else {}
        if kind == "flaky" and attempt <= count:
            return 503, "ServiceUnavailable", {}
        if kind == "slow":
            await asyncio.sleep(count / 1000)
        if self.fail_rate and random.random() < self.fail_rate:
            return 503, "ServiceUnavailable", {}
        return 200, "", {}

    def _log(self, record: dict[str, Any]) -> None:
        if self.log_path is None:
            return
        with self._lock, self.log_path.open("a") as log:
            log.write(json.dumps(record) + "\n")


class _Loop(asyncio.SelectorEventLoop):
    """Hypercorn waits on each client's TLS close_notify at shutdown, 30 s by default; a
    blocking HTTP/2 client that keeps its connection open (as APNs clients should) never
    sends one, so stop() would hang. A fake can afford to give up after a moment."""

    async def create_server(self, *args: Any, **kwargs: Any) -> asyncio.Server:  # type: ignore[override]
        kwargs.setdefault("ssl_shutdown_timeout", 0.2)
        return await super().create_server(*args, **kwargs)

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        if not isinstance(context.get("exception"), TimeoutError):  # the give-up above
            super().call_exception_handler(context)


async def _respond(send: Any, status: int, headers: dict[str, str], body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        }
    )
    await send({"type": "http.response.body", "body": body})


def throwaway_tls() -> tuple[bytes, bytes, bytes]:
    """A fresh CA and a server certificate for 127.0.0.1/localhost signed by it (PEMs)."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake APNs test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pem = serialization.Encoding.PEM
    return ca.public_bytes(pem), cert.public_bytes(pem), key_pem


def device_token(kind: str = "ok", number: int = 0, *, tail: str = "") -> str:
    """A valid APNs token (64 hex digits) the fake answers as ``kind`` says (``PREFIXES``):
    ``device_token("flaky", 2)`` fails twice, then succeeds. ``tail`` (hex) makes it unique;
    a random one by default."""
    head = PREFIXES[kind] + (f"{number:04d}" if kind in _NUMBERED else "")
    if kind in _NUMBERED and not 0 <= number <= 9999:
        raise ValueError(f"{kind} takes a number of 0 to 9999, not {number}")
    tail = (tail or uuid.uuid4().hex + uuid.uuid4().hex).lower()
    if not re.fullmatch(r"[0-9a-f]+", tail):
        raise ValueError(f"the tail of an APNs token is hex digits, not {tail!r}")
    room = TOKEN_HEX_DIGITS - len(head)
    return head + tail.rjust(room, "0")[-room:]


def _kind(token: str) -> str:
    return next((kind for kind, prefix in PREFIXES.items() if token.startswith(prefix)), "ok")


def new_signing_key() -> str:
    """A P-256 private key in PKCS#8 PEM, the format of Apple's .p8 files."""
    return (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=2197)
    parser.add_argument("--key-id", default="FAKEKEY123", help="the kid JWTs must carry")
    parser.add_argument("--team-id", default="FAKETEAM12", help="the iss JWTs must carry")
    parser.add_argument("--topic", default="com.example.notify", help="the expected apns-topic")
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument("--public-key", type=Path, help="PEM (public or private) that signs JWTs")
    keys.add_argument(
        "--private-key-out", type=Path, help="generate a .p8-style key and write it here"
    )
    parser.add_argument("--ca-out", type=Path, help="write the test CA's PEM here")
    parser.add_argument("--log", type=Path, help="append every request to this JSONL file")
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument("--fail-rate", type=float, default=0.0, help="share of random 503s")
    args = parser.parse_args()
    if args.public_key is not None:
        key_pem = args.public_key.read_text()
    else:
        key_pem = new_signing_key()
        if args.private_key_out is not None:
            args.private_key_out.write_text(key_pem)
    server = FakeAPNs(
        key_id=args.key_id,
        team_id=args.team_id,
        topic=args.topic,
        public_key_pem=key_pem,
        port=args.port,
        ca_out=args.ca_out,
        log_path=args.log,
        latency_ms=args.latency_ms,
        fail_rate=args.fail_rate,
    ).start()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    print(f"fake apns on 127.0.0.1:{server.port}", flush=True)
    stop.wait()
    server.stop()


if __name__ == "__main__":
    main()
