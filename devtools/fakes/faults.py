"""Provider-wide faults the fakes can be switched into at runtime (the chaos suite's lever).

Each fake (apns, fcm, twilio, postmark) holds one ``Faults`` and serves ``/_fake/fault``:
``POST`` ``{"mode": "outage" | "throttle" | "hang" | "none", "retryAfter": 2}`` switches it,
``GET`` (and the POST's answer) shows the mode and how many sends met each mode.

- ``outage``: every send gets 503 (the provider's own error shape);
- ``throttle``: every send gets 429 with ``Retry-After: retryAfter``;
- ``hang``: the request is held without an answer until the mode changes (or ``hang_limit``
  seconds), longer than any client's timeout, then the connection is dropped (APNs, one
  stream of a shared HTTP/2 connection, answers 503 instead). It is never accepted: a
  client that gave up must not find its message sent after all.
- ``none``: normal behaviour (the fake's own ``--fail-rate`` and magic addresses).

Faults apply to sends only, never to the control and inspection endpoints, nor to FCM's OAuth
token endpoint. ``set_fault()`` is the client side, for the chaos runner.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

CONTROL_PATH = "/_fake/fault"
MODES = ("none", "outage", "throttle", "hang")


class FaultRequestError(ValueError):
    """A control request the fake refuses (400)."""


@dataclass(frozen=True)
class Verdict:
    """How a faulty provider answers one send instead of its normal answer."""

    mode: str
    status: int  # 503, 429; for a hang, what APNs answers once it lets go
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def drop(self) -> bool:
        """Close the connection without an answer (a hang that ended)."""
        return self.mode == "hang"


class Faults:
    def __init__(self, *, hang_limit: float = 60.0) -> None:
        self.hang_limit = hang_limit
        self._mode = "none"
        self._retry_after = 1
        self._answered: Counter[str] = Counter()  # mode -> sends answered by that fault
        self._changed = threading.Condition()

    def state(self) -> dict[str, Any]:
        with self._changed:
            return {
                "mode": self._mode,
                "retryAfter": self._retry_after,
                "answered": dict(self._answered),
            }

    def control(self, body: bytes) -> dict[str, Any]:
        """Apply a ``POST /_fake/fault`` body; the new state. Raises FaultRequestError."""
        try:
            request = json.loads(body or b"{}")
        except ValueError as exc:
            raise FaultRequestError(f"not JSON: {exc}") from exc
        if not isinstance(request, dict) or request.get("mode") not in MODES:
            raise FaultRequestError(f"expected {{'mode': one of {MODES}, 'retryAfter': s}}")
        retry_after = request.get("retryAfter", 1)
        if not isinstance(retry_after, int) or retry_after < 0:
            raise FaultRequestError("retryAfter must be a whole number of seconds >= 0")
        with self._changed:
            self._mode, self._retry_after = request["mode"], retry_after
            self._changed.notify_all()  # held requests let go at once
        return self.state()

    def intercept(self) -> Verdict | None:
        """The fault's answer to one send (after holding it, for a hang), or None."""
        with self._changed:
            mode = self._mode
            self._count(mode)
            if mode == "hang":
                deadline = time.monotonic() + self.hang_limit
                while self._mode == "hang" and time.monotonic() < deadline:
                    self._changed.wait(deadline - time.monotonic())
            return self._verdict(mode)

    async def intercept_async(self) -> Verdict | None:
        """``intercept()`` for an asyncio server: a hang must not block its event loop."""
        with self._changed:
            mode = self._mode
            self._count(mode)
        if mode == "hang":
            deadline = time.monotonic() + self.hang_limit
            while self.state()["mode"] == "hang" and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        with self._changed:
            return self._verdict(mode)

    def _count(self, mode: str) -> None:
        # On arrival: a send held by a hang counts while it is held.
        if mode != "none":
            self._answered[mode] += 1

    def _verdict(self, mode: str) -> Verdict | None:
        if mode == "none":
            return None
        if mode == "throttle":
            return Verdict(mode, 429, {"Retry-After": str(self._retry_after)})
        return Verdict(mode, 503)


def set_fault(
    base_url: str, mode: str, *, retry_after: int = 1, cafile: str | None = None
) -> dict[str, Any]:
    """Switch a running fake into ``mode``; returns its state (mode and answered counts)."""
    body = json.dumps({"mode": mode, "retryAfter": retry_after}).encode()
    return _call(base_url, body, cafile)


def fault_state(base_url: str, *, cafile: str | None = None) -> dict[str, Any]:
    return _call(base_url, None, cafile)


def _call(base_url: str, body: bytes | None, cafile: str | None) -> dict[str, Any]:
    request = urllib.request.Request(
        base_url.rstrip("/") + CONTROL_PATH,
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST" if body is not None else "GET",
    )
    context = ssl.create_default_context(cafile=cafile) if cafile else None
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        return dict(json.loads(response.read()))
