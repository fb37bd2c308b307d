"""One asyncio event loop per process, on a thread of its own, that providers' network I/O
runs on: their connections (HTTP/2 to APNs, kept-alive sessions to FCM and Twilio) belong to
this loop and are reused by every batch the process sends.

Synchronous code (a Celery task, a test) hands a coroutine to ``run`` and waits for its
result; any thread may call it. Database work never runs on the loop (Django's ORM refuses to
be called from one): the delivery engine claims and loads before ``run`` and records after it.
A process forked from one that had a loop (Celery's prefork pool) starts a loop of its own.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_pid = 0


def loop() -> asyncio.AbstractEventLoop:
    """This process's I/O loop, started on first use (and again after a fork)."""
    global _loop, _pid
    with _lock:
        if _loop is None or _pid != os.getpid() or _loop.is_closed():
            _loop, _pid = asyncio.new_event_loop(), os.getpid()
            threading.Thread(target=_loop.run_forever, name="provider-io", daemon=True).start()
        return _loop


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on this process's I/O loop and wait for its result (or exception)."""
    io_loop = loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is io_loop:
        coroutine.close()
        raise RuntimeError("aio.run() called from the I/O loop itself; await the coroutine")
    return asyncio.run_coroutine_threadsafe(coroutine, io_loop).result()
