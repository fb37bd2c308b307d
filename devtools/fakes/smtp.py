"""A local SMTP server that behaves like a real mail relay, with failures on demand.

The recipient address decides what happens, so a test (or the demo) can ask for any outcome
without touching the server:

- ``bounce…@…`` or any address at ``bounce.test``: ``550 5.1.1`` (permanent: mailbox unknown)
- ``tempfail-N-…@…``: ``451 4.3.0`` for the first N attempts at that address, then accepted
- anything else: accepted and recorded

Every accepted message is kept in ``server.messages`` and, with ``--log``, appended to a JSONL
file. Run it alone with ``python -m devtools.fakes.smtp --port 2525``.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import threading
import time
from collections import Counter
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

_TEMPFAIL = re.compile(r"^tempfail-(\d+)-", re.IGNORECASE)


class RelayBehaviour:
    def __init__(self, log_path: Path | None = None) -> None:
        self.messages: list[dict[str, Any]] = []
        self.attempts: Counter[str] = Counter()
        self.log_path = log_path
        self._lock = threading.Lock()

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        local, _, domain = address.lower().partition("@")
        with self._lock:
            self.attempts[address.lower()] += 1
            attempt = self.attempts[address.lower()]
        if local.startswith("bounce") or domain == "bounce.test":
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        match = _TEMPFAIL.match(local)
        if match and attempt <= int(match[1]):
            return f"451 4.3.0 <{address}>: Temporary failure, try again later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = message_from_bytes(envelope.original_content or b"", policy=policy.default)
        body = parsed.get_body(preferencelist=("plain",))
        html = parsed.get_body(preferencelist=("html",))
        record = {
            "at": time.time(),
            "session": "{}:{}".format(*session.peer[:2]),  # the client's end of the connection
            "from": envelope.mail_from,
            "to": list(envelope.rcpt_tos),
            "subject": str(parsed.get("Subject", "")),
            "messageId": str(parsed.get("Message-ID", "")).strip("<>"),
            "text": body.get_content() if body is not None else "",
            "html": html.get_content() if html is not None else "",
        }
        with self._lock:
            self.messages.append(record)
            if self.log_path is not None:
                with self.log_path.open("a") as log:
                    log.write(json.dumps(record) + "\n")
        return "250 2.0.0 Ok: queued as {}".format(record["messageId"])

    def messages_to(self, address: str) -> list[dict[str, Any]]:
        with self._lock:
            return [m for m in self.messages if address in m["to"]]


class FakeSMTPServer:
    def __init__(self, port: int = 0, log_path: Path | None = None) -> None:
        self.port = port or _free_port()
        self.behaviour = RelayBehaviour(log_path)
        self._controller = Controller(self.behaviour, hostname="127.0.0.1", port=self.port)

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.behaviour.messages

    def start(self) -> FakeSMTPServer:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--log", type=Path, help="append accepted messages to this JSONL file")
    args = parser.parse_args()
    server = FakeSMTPServer(args.port, args.log).start()
    print(f"fake SMTP relay on 127.0.0.1:{server.port}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
