"""``GET /api/inbox/stream``: Server-Sent Events of one recipient's inbox, over ASGI.

A plain ASGI endpoint, not a Django view: an open stream costs a queue and a coroutine, not
a worker, so one process holds thousands (docs/inbox.md has the measured figures). The caller
authenticates as for the inbox API, with a recipient token, in ``Authorization: Bearer`` or,
for a browser's ``EventSource`` (which cannot set headers), ``?token=``. Events:

- ``message``, ``state``, ``all_read``: as published by ``notifications.services.inbox_events``,
  each with its ``id:``, which a reconnect sends back as ``Last-Event-ID`` (or
  ``?lastEventId=``) to receive what it missed;
- ``reset``: events may be missing (nothing kept that far back, Redis restarted, too slow a
  reader): fetch ``GET /api/inbox`` again;
- ``expired``: the token ran out; the stream ends, reconnect with a new token.

A comment line every NOTIFY_INBOX_STREAM_HEARTBEAT_SECONDS keeps proxies from closing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections
from redis.exceptions import RedisError

from notifications.api.errors import error_body
from notifications.stream.hub import RESET, Hub, Listener, stream_id, valid_stream_id
from preferences import access
from preferences import selectors as recipients

PATH = "/api/inbox/stream"
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_hub: Hub | None = None


def hub() -> Hub:
    global _hub
    if _hub is None:
        _hub = Hub(settings.NOTIFY_INBOX_STREAM_REDIS_URL)
    return _hub


async def inbox_stream(scope: Scope, receive: Receive, send: Send) -> None:
    headers = {
        name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]
    }
    query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
    cors = _cors_headers(headers.get("origin", ""))
    if scope["method"] == "OPTIONS":
        await _answer(send, 204, None, cors + _PREFLIGHT)
        return
    if scope["method"] != "GET":
        await _answer(send, 405, error_body("method_not_allowed", "Use GET."), cors)
        return
    token = _token(headers.get("authorization", ""), query.get("token", ""))
    claims = await _authenticate(token) if token else None
    if claims is None:
        await _answer(
            send,
            401,
            error_body("unauthorized", "A valid recipient token is required (Bearer, or ?token=)."),
            [*cors, (b"www-authenticate", b"Bearer")],
        )
        return
    last_event_id = headers.get("last-event-id") or query.get("lastEventId", "")
    if last_event_id and not valid_stream_id(last_event_id):
        await _answer(
            send, 400, error_body("invalid", "Last-Event-ID is not an id of this stream."), cors
        )
        return
    try:
        listener = await hub().open(claims.recipient_id)
    except (RedisError, OSError):
        await _answer(
            send, 503, error_body("unavailable", "The stream is unavailable; retry shortly."), cors
        )
        return
    try:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache, no-store"),
                    (b"x-accel-buffering", b"no"),  # nginx: pass each event on at once
                    *cors,
                ],
            }
        )
        await _stream(listener, last_event_id, claims.expires_at, receive, send)
    finally:
        await hub().close(listener)


async def _stream(
    listener: Listener, last_event_id: str, expires_at: int, receive: Receive, send: Send
) -> None:
    async def chunk(text: str) -> None:
        await send({"type": "http.response.body", "body": text.encode(), "more_body": True})

    sent = last_event_id
    await chunk(f"retry: 3000\n: open {int(time.time())}\n\n")
    if last_event_id:
        missed = await hub().replay(listener.recipient_id, last_event_id)
        if missed is None:
            await chunk(_event("reset", "{}"))
        else:
            for event_id, event in missed:
                await chunk(_event(_kind(event), event, event_id))
                sent = event_id
    disconnected = asyncio.ensure_future(_disconnect(receive))
    heartbeat = float(settings.NOTIFY_INBOX_STREAM_HEARTBEAT_SECONDS)
    try:
        while not disconnected.done():
            remaining = expires_at - time.time()
            if remaining <= 0:
                await chunk(_event("expired", "{}"))
                break
            getting = asyncio.ensure_future(listener.queue.get())
            done, _ = await asyncio.wait(
                {getting, disconnected},
                timeout=min(heartbeat, remaining),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if getting not in done:
                getting.cancel()
                if not disconnected.done():
                    await chunk(": ping\n\n")
                continue
            item = getting.result()
            if item is RESET:
                await chunk(_event("reset", "{}"))
                continue
            assert isinstance(item, tuple)
            event_id, event = item
            if sent and stream_id(event_id) <= stream_id(sent):
                continue  # also in the replay just sent
            await chunk(_event(_kind(event), event, event_id))
            sent = event_id
    except OSError:
        pass  # the client went away mid-write
    finally:
        disconnected.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


@sync_to_async
def _authenticate(token: str) -> access.TokenClaims | None:
    """As the inbox API's authentication: signature and expiry, then one primary-key read."""
    try:
        claims = access.token_verify(token)
    except access.InvalidToken:
        return None
    close_old_connections()  # no Django request cycle here to do it
    found = recipients.recipient_of_token(
        recipient_id=claims.recipient_id, generation=claims.generation
    )
    return claims if found is not None else None


def _token(authorization: str, from_query: str) -> str:
    keyword, _, token = authorization.partition(" ")
    if keyword == "Bearer" and token.strip():
        return token.strip()
    return from_query.strip()


def _kind(event: str) -> str:
    try:
        return str(json.loads(event).get("type", "message"))
    except (ValueError, AttributeError):
        return "message"


def _event(kind: str, data: str, event_id: str = "") -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {kind}\ndata: {data}\n\n"


_PREFLIGHT = [
    (b"access-control-allow-methods", b"GET, OPTIONS"),
    (b"access-control-allow-headers", b"authorization, last-event-id"),
    (b"access-control-max-age", b"600"),
]


def _cors_headers(origin: str) -> list[tuple[bytes, bytes]]:
    if origin and origin in settings.CORS_ALLOWED_ORIGINS:
        return [(b"access-control-allow-origin", origin.encode()), (b"vary", b"Origin")]
    return []


async def _answer(
    send: Send, status: int, body: dict[str, Any] | None, headers: list[tuple[bytes, bytes]]
) -> None:
    payload = json.dumps(body).encode() if body is not None else b""
    kind = [(b"content-type", b"application/json")] if body is not None else []
    await send({"type": "http.response.start", "status": status, "headers": [*kind, *headers]})
    await send({"type": "http.response.body", "body": payload})
