"""One Redis subscription per ASGI process, fanned in to its open streams.

Every open stream of a recipient gets a ``Listener`` (a bounded queue). The hub subscribes to
the recipient's channel when its first listener opens and unsubscribes when the last one
closes, so a process holds one Redis connection for the channels plus one for replays,
whatever its number of streams. When the subscription breaks (Redis restarted, the network
dropped) events may have been missed: every listener gets ``RESET`` and the hub subscribes
again. A listener whose client reads too slowly to keep up gets ``RESET`` too, instead of
the process buffering without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from notifications.services.inbox_events import stream_key

logger = logging.getLogger(__name__)

RESET = object()  # in a listener's queue: events may be missing, the client must refetch
_QUEUE_SIZE = 256
_RETRY_SECONDS = 1.0


@dataclass(eq=False)
class Listener:
    recipient_id: int
    queue: asyncio.Queue[tuple[str, str] | object] = field(
        default_factory=lambda: asyncio.Queue(_QUEUE_SIZE)
    )

    def put(self, item: tuple[str, str] | object) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            # Too slow a reader: drop what waits and tell it to start over.
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(RESET)


class Hub:
    def __init__(self, url: str) -> None:
        self._url = url
        self._redis: aioredis.Redis | None = None
        self._pubsub: aioredis.client.PubSub | None = None
        self._listeners: dict[str, set[Listener]] = defaultdict(set)
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def streams(self) -> int:
        return sum(len(group) for group in self._listeners.values())

    async def open(self, recipient_id: int) -> Listener:
        listener = Listener(recipient_id)
        channel = stream_key(recipient_id)
        async with self._lock:
            await self._start()
            first = not self._listeners[channel]
            self._listeners[channel].add(listener)
            if first:
                assert self._pubsub is not None
                await self._pubsub.subscribe(channel)
        return listener

    async def close(self, listener: Listener) -> None:
        channel = stream_key(listener.recipient_id)
        async with self._lock:
            group = self._listeners.get(channel)
            if group is None:
                return
            group.discard(listener)
            if not group:
                del self._listeners[channel]
                if self._pubsub is not None:
                    with contextlib.suppress(RedisError, OSError):
                        await self._pubsub.unsubscribe(channel)

    async def replay(self, recipient_id: int, after: str) -> list[tuple[str, str]] | None:
        """The recipient's events after stream id ``after``, oldest first; None when some may
        be gone (trimmed, expired, Redis restarted): the client must fetch the inbox again."""
        assert self._redis is not None
        key = stream_key(recipient_id)
        try:
            info = await self._redis.xinfo_stream(key)
        except RedisError:  # no such stream: nothing kept, so nothing can be vouched for
            return None
        last_seen = stream_id(after)
        deleted = stream_id(_text(info.get("max-deleted-entry-id", "0-0")))
        first = info.get("first-entry")
        # Trimming removes the oldest entries only, so everything after ``after`` is here if
        # the stream still reaches back to it, or exactly up to it was trimmed. A stream that
        # starts later otherwise was trimmed past it, or expired and began again.
        intact = (first and stream_id(_text(first[0])) <= last_seen) or deleted == last_seen
        if not intact:
            return None
        entries: list[Any] = await self._redis.xrange(key, min=f"({after}", max="+") or []
        return [(_text(entry_id), _text(fields[b"e"])) for entry_id, fields in entries]

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()
        if self._redis is not None:
            await self._redis.aclose()

    async def _start(self) -> None:
        if self._reader is not None:
            return
        self._redis = aioredis.Redis.from_url(self._url, socket_connect_timeout=2.0)
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        # A PubSub with no channel yet does not connect; the reader waits for the first one.
        self._reader = asyncio.create_task(self._read(), name="inbox-hub-reader")

    async def _read(self) -> None:
        while True:
            try:
                assert self._pubsub is not None
                if not self._pubsub.subscribed:
                    await asyncio.sleep(0.05)
                    continue
                message = await self._pubsub.get_message(timeout=1.0)
                if message is not None and message["type"] == "message":
                    self._dispatch(_text(message["channel"]), _text(message["data"]))
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError):
                logger.warning(
                    "inbox stream: Redis subscription lost; resubscribing", exc_info=True
                )
                await self._resubscribe()

    def _dispatch(self, channel: str, data: str) -> None:
        event_id, _, event = data.partition(" ")
        for listener in self._listeners.get(channel, ()):
            listener.put((event_id, event))

    async def _resubscribe(self) -> None:
        for group in self._listeners.values():
            for listener in group:
                listener.put(RESET)
        while True:
            await asyncio.sleep(_RETRY_SECONDS)
            async with self._lock:
                try:
                    assert self._redis is not None and self._pubsub is not None
                    with contextlib.suppress(RedisError, OSError):
                        await self._pubsub.aclose()
                    self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                    if self._listeners:
                        await self._pubsub.subscribe(*self._listeners)
                    return
                except (RedisError, OSError):
                    continue


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def stream_id(value: str) -> tuple[int, int]:
    """A Redis stream id ("<ms>-<seq>") as a comparable pair; ValueError if it is none."""
    millis, _, sequence = value.partition("-")
    return int(millis), int(sequence or 0)


def valid_stream_id(value: str) -> bool:
    try:
        stream_id(value)
    except ValueError:
        return False
    return True
