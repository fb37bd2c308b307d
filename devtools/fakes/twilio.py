"""A local Twilio Messages API (``POST /2010-04-01/Accounts/{sid}/Messages.json``).

It speaks Twilio's wire protocol: form-encoded body, HTTP basic auth with the account SID and
auth token (``401`` code ``20003`` otherwise), ``201`` with Twilio's message JSON, errors in
Twilio's JSON shape, and signed status callbacks (X-Twilio-Signature, computed with the SDK's
own ``RequestValidator``) to the request's ``StatusCallback``, first ``sent`` then the outcome.

The ``To`` number decides what happens (fictional numbers ``+1555010xxxx``):

- ``+15550100XXX`` where ``21XXX`` is a code below: that error, status 400. ``0610`` 21610
  (replied STOP), ``0211`` 21211 (invalid), ``0214`` 21214, ``0614`` 21614 (not mobile),
  ``0635`` 21635 (landline), ``0612`` 21612 (not reachable from this sender), ``0408`` 21408
  (region not enabled), ``0608`` 21608 (unverified, trial account), ``0606`` 21606 (From not
  SMS-capable), ``0659`` 21659, ``0617`` 21617 (body too long)
- ``+15550100429``: ``429`` code 20429 with ``Retry-After: 1``
- ``+155501005NN``: ``500`` code 20500 for the first NN attempts at that number, then accepted
- ``+155501003NN``: accepted, then the callback says ``undelivered`` with ErrorCode ``300NN``
  (``0305`` → 30005 unknown handset, ``0303`` → 30003 unreachable)
- ``+15550100999``: answers only after ``slow_seconds`` (a timeout, for the client)
- ``+15550109XXX``: as ``+15550100XXX``, but the error body is RFC 9457 problem details
  (``application/problem+json``), which the SDK 9.x raises as ``TwilioServiceException``
- anything else: accepted; the callback says ``delivered``

Every request is recorded without the auth token (``server.requests``, ``GET /_fake/requests``,
``--log`` JSONL), every callback in ``server.callbacks`` (``GET /_fake/callbacks``).
``POST /_fake/fault`` switches a provider-wide outage, throttle or hang (devtools/fakes/faults.py).
Run alone: ``python -m devtools.fakes.twilio --port 8025``.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import json
import random
import re
import secrets
import signal
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from twilio.request_validator import RequestValidator

from devtools.fakes.faults import CONTROL_PATH, FaultRequestError, Faults
from devtools.fakes.httpserver import FakeHTTPServer
from devtools.fakes.stats import STATS_PATH, RequestRate

ACCOUNT_SID = "AC" + "0" * 31 + "1"
AUTH_TOKEN = "fake-twilio-auth-token"
_MESSAGES = re.compile(r"^/2010-04-01/Accounts/([^/]+)/Messages\.json$")
_ERRORS = {
    21610: "Attempt to send to unsubscribed recipient",
    21211: "The 'To' number {to} is not a valid phone number.",
    21214: "'To' phone number cannot be reached",
    21614: "'To' number {to} is not a valid mobile number",
    21635: "'To' number cannot be a landline",
    21612: "The 'To' phone number: {to}, is not currently reachable using the 'From' phone "
    "number: {sender} via SMS.",
    21408: "Permission to send an SMS has not been enabled for the region indicated by the "
    "'To' number: {to}.",
    21608: "The number {to} is unverified. Trial accounts cannot send messages to unverified "
    "numbers; verify {to} at twilio.com/user/account/phone-numbers/verified, or purchase a "
    "Twilio number to send messages to unverified numbers.",
    21606: "The 'From' phone number provided ({sender}) is not a valid message-capable Twilio "
    "phone number for this destination.",
    21659: "'From' {sender} is not a Twilio phone number or Short Code country mismatch",
    21617: "The concatenated message body exceeds the 1600 character limit.",
}
_TITLES = {20429: "Too Many Requests", 20500: "Internal Server Error", 20503: "Service Unavailable"}


class FakeTwilioServer:
    def __init__(
        self,
        port: int = 0,
        *,
        account_sid: str = ACCOUNT_SID,
        auth_token: str = AUTH_TOKEN,
        log_path: Path | None = None,
        latency: float = 0.0,
        fail_rate: float = 0.0,
        slow_seconds: float = 10.0,
        callback_delay: float = 0.3,
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.log_path = log_path
        self.latency = latency
        self.fail_rate = fail_rate
        self.slow_seconds = slow_seconds
        # Twilio reports status asynchronously, after the 201; so does the fake.
        self.callback_delay = callback_delay
        self.requests: list[dict[str, Any]] = []
        self.callbacks: list[dict[str, Any]] = []
        self.attempts: Counter[str] = Counter()
        self.faults = Faults()  # switched at runtime: POST /_fake/fault (devtools/fakes/faults.py)
        self.stats = RequestRate()  # GET /_fake/stats: API calls received, busiest second
        self._lock = threading.Lock()
        self._httpd = FakeHTTPServer(("127.0.0.1", port), _handler_for(self))
        self.port = int(self._httpd.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeTwilioServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.callbacks.clear()
            self.attempts.clear()
        self.stats.reset()

    def messages_to(self, number: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r["form"].get("To") == number]

    def record(self, entry: dict[str, Any], kind: str = "requests", log: bool = True) -> None:
        with self._lock:
            getattr(self, kind).append(entry)
        if log:
            self.log(entry, kind)

    def log(self, entry: dict[str, Any], kind: str = "requests") -> None:
        if self.log_path is not None:
            with self._lock, self.log_path.open("a") as log:
                log.write(json.dumps({"kind": kind, **entry}) + "\n")

    # --- behaviour ---------------------------------------------------------------------

    def answer(
        self, account_sid: str, form: dict[str, str]
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """(status, JSON body, extra headers) for one create-message request."""
        to = form.get("To", "")
        sender = form.get("From") or form.get("MessagingServiceSid") or ""
        with self._lock:
            self.attempts[to] += 1
            attempt = self.attempts[to]
        problem = to.startswith("+15550109")
        tail = ""
        if to.startswith(("+15550100", "+15550109")) and len(to) == 12:
            tail = "0" + to[-3:]  # the problem-details numbers behave as their 0XXX twins
        if not to:
            return _error(400, 21604, "A 'To' phone number is required.", problem)
        if not sender:
            return _error(400, 21603, "A 'From' phone number is required.", problem)
        if not form.get("Body") and not form.get("MediaUrl"):
            return _error(400, 21602, "Message body is required.", problem)
        if tail == "0999":
            time.sleep(self.slow_seconds)
        if self.fail_rate and random.random() < self.fail_rate:
            return _error(503, 20503, "Service Unavailable", problem)
        if tail == "0429":
            status, body, headers = _error(429, 20429, "Too Many Requests", problem)
            return status, body, {**headers, "Retry-After": "1"}
        if tail[:2] == "05" and attempt <= int(tail[2:]):
            return _error(500, 20500, "Internal Server Error", problem)
        code = 21000 + int(tail[1:]) if tail[:1] == "0" and tail[1:].isdigit() else 0
        if code in _ERRORS:
            return _error(400, code, _ERRORS[code].format(to=to, sender=sender), problem)
        if len(form.get("Body", "")) > 1600:
            return _error(400, 21617, _ERRORS[21617], problem)
        return 201, self._message(account_sid, form), {}

    def _message(self, account_sid: str, form: dict[str, str]) -> dict[str, Any]:
        sid = "SM" + secrets.token_hex(16)
        now = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
        uri = f"/2010-04-01/Accounts/{account_sid}/Messages/{sid}"
        return {
            "account_sid": account_sid,
            "api_version": "2010-04-01",
            "body": form.get("Body", ""),
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": form.get("From"),
            "messaging_service_sid": form.get("MessagingServiceSid"),
            "num_media": "0",
            "num_segments": str(max(1, -(-len(form.get("Body", "")) // 153))),
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "accepted" if "MessagingServiceSid" in form else "queued",
            "subresource_uris": {"media": f"{uri}/Media.json"},
            "to": form["To"],
            "uri": f"{uri}.json",
        }

    def schedule_callbacks(self, message: dict[str, Any], url: str) -> None:
        tail = message["to"][-4:]
        final: dict[str, str] = {"MessageStatus": "delivered"}
        if message["to"].startswith("+15550100") and tail[:2] == "03":
            final = {"MessageStatus": "undelivered", "ErrorCode": f"300{tail[2:]}"}
        base = {
            "AccountSid": message["account_sid"],
            "ApiVersion": "2010-04-01",
            "From": message["from"] or "",
            "MessageSid": message["sid"],
            "SmsSid": message["sid"],
            "To": message["to"],
        }
        if message["messaging_service_sid"]:
            base["MessagingServiceSid"] = message["messaging_service_sid"]
        steps = [{**base, "MessageStatus": "sent"}, {**base, **final}]
        threading.Thread(target=self._call_back, args=(url, steps), daemon=True).start()

    def _call_back(self, url: str, steps: list[dict[str, str]]) -> None:
        validator = RequestValidator(self.auth_token)
        for params in steps:
            time.sleep(self.callback_delay)
            params = {**params, "SmsStatus": params["MessageStatus"]}
            request = urllib.request.Request(
                url,
                data=urllib.parse.urlencode(params).encode(),
                headers={
                    "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
                    "User-Agent": "TwilioProxy/1.1",
                    "X-Twilio-Signature": validator.compute_signature(url, params),
                },
            )
            entry: dict[str, Any] = {"at": time.time(), "url": url, "params": params}
            try:
                with urllib.request.urlopen(request, timeout=15) as response:
                    entry["status"] = response.status
            except urllib.error.HTTPError as exc:
                entry["status"] = exc.code
            except OSError as exc:
                entry["error"] = f"{type(exc).__name__}: {exc}"
            self.record(entry, "callbacks")


def _error(
    status: int, code: int, message: str, problem: bool
) -> tuple[int, dict[str, Any], dict[str, str]]:
    more_info = f"https://www.twilio.com/docs/errors/{code}"
    if problem:  # RFC 9457, as Twilio's newer APIs answer
        body: dict[str, Any] = {
            "type": more_info,
            "title": _TITLES.get(code, message),
            "status": status,
            "code": code,
            "detail": message,
        }
        return status, body, {"Content-Type": "application/problem+json"}
    body = {"code": code, "message": message, "more_info": more_info, "status": status}
    return status, body, {}


def _handler_for(server: FakeTwilioServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "FakeTwilio/1.0"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the JSONL log is the record

        def do_GET(self) -> None:
            if self.path == CONTROL_PATH:
                self._send(200, server.faults.state())
            elif self.path == STATS_PATH:
                self._send(200, server.stats.as_json())
            elif self.path in ("/_fake/requests", "/_fake/callbacks"):
                with server._lock:
                    records = list(getattr(server, self.path.rsplit("/", 1)[1]))
                self._send(200, records)
            else:
                self._send(
                    *_error(404, 20404, f"The requested resource {self.path} was not found", False)[
                        :2
                    ]
                )

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode()
            if self.path == CONTROL_PATH:
                try:
                    self._send(200, server.faults.control(raw.encode()))
                except FaultRequestError as exc:
                    self._send(400, {"error": str(exc)})
                return
            server.stats.count()
            form = dict(urllib.parse.parse_qsl(raw, keep_blank_values=True))
            user, password = _basic_auth(self.headers.get("Authorization", ""))
            entry: dict[str, Any] = {
                "at": time.time(),
                "method": "POST",
                "path": self.path,
                "headers": {k: v for k, v in self.headers.items() if k.lower() != "authorization"},
                "authUser": user,
                "authOk": hmac.compare_digest(user, server.account_sid)
                and hmac.compare_digest(password, server.auth_token),
                "form": form,
            }
            # Recorded on arrival (a slow answer is visible while pending), logged when answered.
            server.record(entry, log=False)
            if server.latency:
                time.sleep(server.latency)
            match = _MESSAGES.match(self.path.split("?", 1)[0])
            verdict = None
            if not entry["authOk"]:
                status, body, headers = _error(401, 20003, "Authenticate", False)
                headers["WWW-Authenticate"] = 'Basic realm="Twilio API"'
            elif match is None or match[1] != server.account_sid:
                status, body, headers = _error(
                    404, 20404, f"The requested resource {self.path} was not found", False
                )
            elif verdict := server.faults.intercept():
                code = 20429 if verdict.status == 429 else 20503
                status, body, headers = _error(verdict.status, code, verdict.mode, False)
                headers.update(verdict.headers)
                entry["fault"] = verdict.mode
            else:
                status, body, headers = server.answer(match[1], form)
            entry.update(status=status, response=body)
            server.log(entry)
            if verdict and verdict.drop:
                self.close_connection = True  # a hang: no answer at all
                return
            self._send(status, body, headers)
            if status == 201 and form.get("StatusCallback"):
                server.schedule_callbacks(body, form["StatusCallback"])

        def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            headers = {"Content-Type": "application/json", **(headers or {})}
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def _basic_auth(header: str) -> tuple[str, str]:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return "", ""
    try:
        user, _, password = base64.b64decode(encoded).decode().partition(":")
    except ValueError:
        return "", ""
    return user, password


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--log", type=Path, help="append every request to this JSONL file")
    parser.add_argument("--latency-ms", type=int, default=0, help="delay before each answer")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="share answered 503")
    parser.add_argument("--account-sid", default=ACCOUNT_SID)
    parser.add_argument("--auth-token", default=AUTH_TOKEN)
    args = parser.parse_args()
    server = FakeTwilioServer(
        args.port,
        account_sid=args.account_sid,
        auth_token=args.auth_token,
        log_path=args.log,
        latency=args.latency_ms / 1000,
        fail_rate=args.fail_rate,
    ).start()
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    print(f"fake twilio on 127.0.0.1:{server.port}", flush=True)
    done.wait()
    server.stop()


if __name__ == "__main__":
    main()
