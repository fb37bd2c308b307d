"""Provider connections kept open across sends, each lent to one thread at a time.

Opening a connection per message costs a TCP (and TLS) handshake each time, and APNs reads
rapid connect/disconnect as a denial-of-service attack. Sharing one connection between a
batch's threads is not safe either (httpcore's synchronous HTTP/2 connection, Django's SMTP
backend). So a sender borrows a connection for one send and gives it back: a worker holds as
many connections as it has sends in flight, and keeps them for the next batch.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

C = TypeVar("C")
logger = logging.getLogger(__name__)


class KeptConnections(Generic[C]):
    """Idle connections for the current settings ``key`` of this process.

    A connection whose send raised is closed rather than kept (its state is unknown). A new
    key (settings changed, or a forked child that must not use its parent's sockets) closes
    the idle connections of the old one.
    """

    def __init__(self, connect: Callable[[Hashable], C], close: Callable[[C], None]) -> None:
        self._connect = connect
        self._close = close
        self._lock = threading.Lock()
        self._idle: list[C] = []
        self._key: tuple[int, Hashable] | None = None

    @contextmanager
    def borrow(self, key: Hashable) -> Iterator[C]:
        full_key = (os.getpid(), key)
        with self._lock:
            if self._key != full_key:
                stale, self._idle = self._idle, []
                same_process = self._key is not None and self._key[0] == full_key[0]
                self._key = full_key
            else:
                stale, same_process = [], True
            connection = self._idle.pop() if self._idle else None
        if same_process:
            for old in stale:
                self._close_quietly(old)
        if connection is None:
            connection = self._connect(key)
        try:
            yield connection
        except BaseException:
            self._close_quietly(connection)
            raise
        with self._lock:
            kept = self._key == full_key
            if kept:
                self._idle.append(connection)
        if not kept:
            self._close_quietly(connection)

    def idle(self) -> int:
        """Connections open and waiting for the next send."""
        with self._lock:
            return len(self._idle)

    def close_all(self) -> None:
        with self._lock:
            stale, self._idle, self._key = self._idle, [], None
        for connection in stale:
            self._close_quietly(connection)

    def _close_quietly(self, connection: C) -> None:
        try:
            self._close(connection)
        except Exception:  # closing a broken connection may fail too; it is gone either way
            logger.debug("closing a provider connection failed", exc_info=True)
