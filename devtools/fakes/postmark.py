"""A local Postmark email API (``POST /email``, ``POST /email/batch``), failures on demand.

Requests must carry ``X-Postmark-Server-Token`` equal to ``--server-token`` (else 401, Postmark's
ErrorCode 10). The ``To`` address then decides what happens, so tests and the demo need no
control channel:

- ``inactive…@…``: 422 ErrorCode 406, the address is marked inactive (hard bounce/complaint)
- ``invalid…@…``: 422 ErrorCode 300, "Invalid 'To' address"
- ``forbidden…@…``: 422 ErrorCode 411, this message is refused (a forbidden attachment)
- ``ratelimited…@…``: 429 with ``Retry-After: 1``, every time
- ``flaky-N-…@…``: 500 then 503 (alternating) for the first N attempts at that address
(in a ``/email/batch``, a 5xx or 429 fails the whole call, as Postmark's do; the 406 and 300
refusals are per message, in a 200 answer)
- ``slow-MS-…@…``: answers after MS milliseconds (client timeouts)
- ``bounce…@…``: accepted, then (with ``--webhook-url``) a HardBounce webhook instead of Delivery
- a ``From`` address starting with ``unsigned``: 422 ErrorCode 400, no sender signature
- anything else: 200 with a fresh ``MessageID``

``--fail-rate F`` answers 503 to a random share F of requests; ``--latency-ms N`` delays every
answer. With ``--webhook-url`` (and ``--webhook-auth user:pass``) each accepted message is
followed by the "Delivery" (or "Bounce") webhook Postmark would post, as anymail expects it.

Every request is recorded (without the token): ``GET /_fake/requests`` returns them as JSON, and
``--log file.jsonl`` appends them. ``POST /_fake/fault`` switches a provider-wide outage,
throttle or hang (devtools/fakes/faults.py).
Run alone: ``python -m devtools.fakes.postmark --port 8025``.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import re
import signal
import threading
import time
import urllib.request
import uuid
from collections import Counter
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from devtools.fakes.faults import CONTROL_PATH, FaultRequestError, Faults
from devtools.fakes.httpserver import FakeHTTPServer
from devtools.fakes.stats import STATS_PATH, RequestRate

DEFAULT_TOKEN = "fake-postmark-server-token"
_FLAKY = re.compile(r"^flaky-(\d+)-", re.IGNORECASE)
_SLOW = re.compile(r"^slow-(\d+)-", re.IGNORECASE)
_ADDR = re.compile(r"[^\s<>,\"]+@[^\s<>,\"]+")

# Postmark's own texts (anymail parses the 406 and 300 ones to find the refused addresses).
BAD_TOKEN = (
    "The Server Token you provided in the X-Postmark-Server-Token request header was invalid. "
    "Please verify that you are using a valid token."
)
INACTIVE = (
    "You tried to send to recipient(s) that have been marked as inactive. Found inactive "
    "addresses: {address}. Inactive recipients are ones that have generated a hard bounce, a "
    "spam complaint, or a manual suppression."
)
INVALID_TO = "Invalid 'To' address: '{address}'."
FORBIDDEN = "Forbidden attachment type: the message contains an attachment Postmark refuses."
NO_SIGNATURE = (
    "The 'From' address you supplied ({address}) is not a Sender Signature on your account. "
    "Please add and confirm this address in order to be able to use it in the 'From' field of "
    "your messages."
)
RATE_LIMITED = "Rate limit exceeded. Please retry after the period given in Retry-After."
INTERNAL = "Internal Server Error"
MAINTENANCE = "The Postmark API is currently undergoing maintenance. Please try again later."
INVALID_JSON = "Received invalid JSON input."


class FakePostmark:
    def __init__(
        self,
        port: int = 0,
        *,
        server_token: str = DEFAULT_TOKEN,
        log_path: Path | None = None,
        latency_ms: int = 0,
        fail_rate: float = 0.0,
        webhook_url: str = "",
        webhook_auth: str = "",
        webhook_delay: float = 0.5,
    ) -> None:
        self.server_token = server_token
        self.log_path = log_path
        self.latency_ms = latency_ms
        self.fail_rate = fail_rate
        self.webhook_url = webhook_url
        self.webhook_auth = webhook_auth
        # Postmark calls back seconds later; posting at once would race our own "sent" record.
        self.webhook_delay = webhook_delay
        self.requests: list[dict[str, Any]] = []
        self.webhooks: list[dict[str, Any]] = []  # (payload, answer status) posted back
        self.attempts: Counter[str] = Counter()
        self.faults = Faults()  # switched at runtime: POST /_fake/fault (devtools/fakes/faults.py)
        self.stats = RequestRate()  # GET /_fake/stats: API calls received, busiest second
        self._lock = threading.Lock()
        self._httpd = FakeHTTPServer(("127.0.0.1", port), _handler_for(self))
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> FakePostmark:
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def sent_to(self, address: str) -> list[dict[str, Any]]:
        """Requests that Postmark accepted for ``address``."""
        with self._lock:
            return [
                r
                for r in self.requests
                if r["status"] == 200 and address.lower() in str(r["json"]).lower()
            ]

    # --- behaviour -----------------------------------------------------------------------

    def answer(self, path: str, token: str | None, body: bytes) -> tuple[int, Any, dict[str, str]]:
        """(status, JSON body, extra headers) for one API call."""
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000)
        if token != self.server_token:
            return 401, {"ErrorCode": 10, "Message": BAD_TOKEN}, {}
        try:
            data = json.loads(body or b"null")
        except ValueError:
            return 422, {"ErrorCode": 402, "Message": INVALID_JSON}, {}
        if path == "/email/batch" and isinstance(data, list):
            return self._batch(data)
        if path == "/email" and isinstance(data, dict):
            status, answer, extra, webhook = self._one(data, roll_failure=True)
            self._schedule(webhook)
            return status, answer, extra
        return 404, {"ErrorCode": 0, "Message": f"No endpoint {path}."}, {}

    def _batch(self, messages: list[Any]) -> tuple[int, Any, dict[str, str]]:
        """Postmark answers a batch 200 with an answer per message, which may refuse that
        message (ErrorCode 300, 406...); trouble with the service itself (a 5xx, a 429)
        fails the whole call, and nothing of it is sent."""
        if self.fail_rate and random.random() < self.fail_rate:
            return 503, {"ErrorCode": 100, "Message": MAINTENANCE}, {}
        answers = [
            self._one(message if isinstance(message, dict) else {}, roll_failure=False)
            for message in messages
        ]
        for status, answer, extra, _ in answers:
            if status == 429 or status >= 500:
                return status, answer, extra
        for _, _, _, webhook in answers:
            self._schedule(webhook)
        return 200, [answer for _, answer, _, _ in answers], {}

    def _schedule(self, webhook: dict[str, Any] | None) -> None:
        if webhook is not None:
            timer = threading.Timer(self.webhook_delay, self._post_webhook, [webhook])
            timer.daemon = True
            timer.start()

    def _one(
        self, message: dict[str, Any], *, roll_failure: bool
    ) -> tuple[int, dict[str, Any], dict[str, str], dict[str, Any] | None]:
        """(status, answer, headers, the webhook to post if it is sent) for one message."""
        to = str(message.get("To", ""))
        addresses = _ADDR.findall(to)
        if not addresses:
            return 422, {"ErrorCode": 300, "Message": "Zero recipients specified"}, {}, None
        address = addresses[0]
        local = address.split("@")[0].lower()
        with self._lock:
            self.attempts[address.lower()] += 1
            attempt = self.attempts[address.lower()]
        if roll_failure and self.fail_rate and random.random() < self.fail_rate:
            return 503, {"ErrorCode": 100, "Message": MAINTENANCE}, {}, None
        sender = _ADDR.findall(str(message.get("From", "")))
        if sender and sender[0].lower().startswith("unsigned"):
            refusal = NO_SIGNATURE.format(address=sender[0])
            return 422, {"ErrorCode": 400, "Message": refusal}, {}, None
        if local.startswith("inactive"):
            refusal = INACTIVE.format(address=address.lower())
            return 422, {"ErrorCode": 406, "Message": refusal}, {}, None
        if local.startswith("invalid"):
            return 422, {"ErrorCode": 300, "Message": INVALID_TO.format(address=address)}, {}, None
        if local.startswith("forbidden"):
            return 422, {"ErrorCode": 411, "Message": FORBIDDEN}, {}, None
        if local.startswith("ratelimited"):
            return 429, {"ErrorCode": 429, "Message": RATE_LIMITED}, {"Retry-After": "1"}, None
        flaky = _FLAKY.match(local)
        if flaky and attempt <= int(flaky[1]):
            if attempt % 2:
                return 500, {"ErrorCode": 0, "Message": INTERNAL}, {}, None
            return 503, {"ErrorCode": 100, "Message": MAINTENANCE}, {}, None
        slow = _SLOW.match(local)
        if slow:
            time.sleep(int(slow[1]) / 1000)
        accepted = {
            "To": to,
            "SubmittedAt": datetime.now(UTC).isoformat(),
            "MessageID": str(uuid.uuid4()),
            "ErrorCode": 0,
            "Message": "OK",
        }
        event = None
        if self.webhook_url:
            event = _bounce(accepted, address) if local.startswith("bounce") else None
            event = event or _delivery(accepted, address)
            # Postmark echoes the message's Metadata in its webhooks.
            event["Metadata"] = message.get("Metadata") or {}
        return 200, accepted, {}, event

    def record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(entry)
            if self.log_path is not None:
                with self.log_path.open("a") as log:
                    log.write(json.dumps(entry) + "\n")

    def _post_webhook(self, payload: dict[str, Any]) -> None:
        request = urllib.request.Request(
            self.webhook_url,
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        if self.webhook_auth:
            token = base64.b64encode(self.webhook_auth.encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                status = answer.status
        except OSError as exc:  # HTTPError included: the service refused or is down
            status = getattr(exc, "code", 0)
        with self._lock:
            self.webhooks.append({"payload": payload, "status": status})


def _delivery(accepted: dict[str, Any], address: str) -> dict[str, Any]:
    return {
        "RecordType": "Delivery",
        "ServerID": 1,
        "MessageStream": "outbound",
        "MessageID": accepted["MessageID"],
        "Recipient": address,
        "Tag": "",
        "DeliveredAt": datetime.now(UTC).isoformat(),
        "Details": "smtp;250 2.0.0 OK (fake Postmark)",
        "Metadata": {},
    }


def _bounce(accepted: dict[str, Any], address: str) -> dict[str, Any]:
    return {
        "RecordType": "Bounce",
        "ID": random.randint(1, 2**31),
        "Type": "HardBounce",
        "TypeCode": 1,
        "Name": "Hard bounce",
        "MessageStream": "outbound",
        "MessageID": accepted["MessageID"],
        "ServerID": 1,
        "Description": "The server was unable to deliver your message "
        "(ex: unknown user, mailbox not found).",
        "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
        "Email": address,
        "BouncedAt": datetime.now(UTC).isoformat(),
        "DumpAvailable": False,
        "Inactive": True,
        "CanActivate": True,
        "Subject": "",
    }


def _handler_for(fake: FakePostmark) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            token = self.headers.get("X-Postmark-Server-Token")
            if self.path == CONTROL_PATH:
                try:
                    self._send(200, fake.faults.control(body), {})
                except FaultRequestError as exc:
                    self._send(400, {"ErrorCode": 0, "Message": str(exc)}, {})
                return
            if self.path.startswith("/email"):
                fake.stats.count()
            verdict = fake.faults.intercept() if self.path.startswith("/email") else None
            if verdict is None:
                status, answer, extra = fake.answer(self.path, token, body)
            else:
                refusal = RATE_LIMITED if verdict.status == 429 else MAINTENANCE
                code = 429 if verdict.status == 429 else 100
                status, answer = verdict.status, {"ErrorCode": code, "Message": refusal}
                extra = dict(verdict.headers)
            try:
                parsed: Any = json.loads(body)
            except ValueError:
                parsed = body.decode(errors="replace")
            fake.record(
                {
                    "at": time.time(),
                    "method": "POST",
                    "path": self.path,
                    "headers": {
                        k: v
                        for k, v in self.headers.items()
                        if k.lower() != "x-postmark-server-token"
                    },
                    "serverToken": "missing"
                    if token is None
                    else "valid"
                    if token == fake.server_token
                    else "invalid",
                    "json": parsed,
                    "status": status,
                    "response": answer,
                    **({"fault": verdict.mode} if verdict else {}),
                }
            )
            if verdict and verdict.drop:
                self.close_connection = True  # a hang: no answer at all
                return
            self._send(status, answer, extra)

        def do_GET(self) -> None:
            if self.path == CONTROL_PATH:
                self._send(200, fake.faults.state(), {})
            elif self.path == STATS_PATH:
                self._send(200, fake.stats.as_json(), {})
            elif self.path.rstrip("/") == "/_fake/requests":
                with fake._lock:
                    self._send(200, list(fake.requests), {})
            else:
                self._send(404, {"ErrorCode": 0, "Message": f"No endpoint {self.path}."}, {})

        def _send(self, status: int, answer: Any, extra: dict[str, str]) -> None:
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            try:
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (its timeout), as real clients do

        def log_message(self, format: str, *args: Any) -> None:
            pass  # requests are recorded; stderr stays quiet

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--server-token", default=DEFAULT_TOKEN)
    parser.add_argument("--log", type=Path, help="append every request to this JSONL file")
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument("--webhook-url", default="", help="post Delivery/Bounce webhooks here")
    parser.add_argument("--webhook-auth", default="", help="user:pass for the webhook")
    args = parser.parse_args()
    fake = FakePostmark(
        args.port,
        server_token=args.server_token,
        log_path=args.log,
        latency_ms=args.latency_ms,
        fail_rate=args.fail_rate,
        webhook_url=args.webhook_url,
        webhook_auth=args.webhook_auth,
    ).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"fake postmark on 127.0.0.1:{fake.port}", flush=True)
    stop.wait()
    fake.stop()


if __name__ == "__main__":
    main()
