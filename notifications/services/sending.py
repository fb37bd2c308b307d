"""The engine's send stage: a batch's provider calls, many in flight at once on the process's
I/O loop (channels/aio.py), gated a chunk at a time per provider (channels/gate/guard.py).

A call is one provider request carrying one message (a device push, an SMS) or several (an
ESP batch call). Its answers, one per message, are handed back in order; nothing here touches
the database, so the engine records between chunks on its own thread.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from channels import aio
from channels.base import (
    BatchAnswer,
    PermanentDeliveryError,
    ProviderConfigurationError,
    ProviderPaused,
    TransientDeliveryError,
)
from channels.gate import guard


class Bug(Exception):
    """What a call raised beyond the delivery errors: that delivery is dead-lettered with the
    traceback, the rest of the batch goes on."""

    def __init__(self, error: Exception, traceback: str) -> None:
        super().__init__(repr(error))
        self.error = error
        self.traceback = traceback


Answer = BatchAnswer | Exception  # a Bug, or a delivery error


@dataclass
class Call:
    gate: str  # the name its circuit and rate limit are kept under ("apns", "postmark")
    bulk: bool
    keys: list[Hashable]  # whose answers: one key per message the call carries
    run: Callable[[], Awaitable[list[Any]]]  # one answer per message, or raises for them all
    answers: list[Answer] = field(default_factory=list)


def send(
    calls: Sequence[Call],
    *,
    in_flight: int,
    deadline: float | None = None,
    on_chunk: Callable[[list[Call]], None] | None = None,
) -> None:
    """Make ``calls``, up to ``in_flight`` at once, filling each call's ``answers``.

    Per gate, calls go in chunks of at most ``in_flight`` calls (and no more messages than a
    rate-limit window holds); each chunk is admitted by the gate, sent, settled, then handed
    to ``on_chunk`` (which records it) before the next one starts, so a crash loses at most
    one chunk's answers. A gate that refuses (open circuit, rate limit without room) defers
    the calls left for it; past ``deadline`` the calls left are deferred too.
    """
    groups: dict[tuple[str, bool], list[Call]] = {}
    for call in calls:
        groups.setdefault((call.gate, call.bulk), []).append(call)
    first = True
    for (gate, bulk), pending in groups.items():
        ceiling = guard.max_chunk_cost(gate, bulk=bulk)
        while pending:
            if not first and deadline is not None and time.monotonic() > deadline:
                _defer(pending, _out_of_time(gate), on_chunk)
                break
            chunk = _next_chunk(pending, in_flight, ceiling)
            try:
                ticket = guard.admit(gate, bulk=bulk, costs=[len(c.keys) for c in chunk])
            except ProviderPaused as paused:
                _defer(pending, paused, on_chunk)
                break
            going = chunk[: ticket.calls]
            first = False
            aio.run(_send_all(going, in_flight))
            settled = iter(guard.settle(ticket, [a for c in going for a in c.answers]))
            for call in going:
                call.answers = [next(settled) for _ in call.keys]  # type: ignore[misc]
            if on_chunk is not None:
                on_chunk(going)
            pending = pending[len(going) :]
            if ticket.calls < len(chunk):  # the half-open circuit's probe went alone
                _defer(pending, _probing(gate), on_chunk)
                break


def _next_chunk(pending: list[Call], in_flight: int, ceiling: int | None) -> list[Call]:
    chunk: list[Call] = []
    cost = 0
    for call in pending[: max(1, in_flight)]:
        if chunk and ceiling is not None and cost + len(call.keys) > ceiling:
            break
        chunk.append(call)
        cost += len(call.keys)
    return chunk


async def _send_all(calls: Sequence[Call], in_flight: int) -> None:
    limit = asyncio.Semaphore(max(1, in_flight))

    async def one(call: Call) -> None:
        async with limit:
            call.answers = await _answers(call)

    await asyncio.gather(*(one(call) for call in calls))


async def _answers(call: Call) -> list[Answer]:
    try:
        answers = await call.run()
    except (TransientDeliveryError, PermanentDeliveryError, ProviderConfigurationError) as exc:
        return [exc] * len(call.keys)  # the whole call failed: every message's answer
    except Exception as exc:
        return [Bug(exc, traceback.format_exc())] * len(call.keys)
    if len(answers) != len(call.keys):
        bug = RuntimeError(f"{call.gate} answered {len(answers)} of {len(call.keys)} messages")
        return [Bug(bug, "")] * len(call.keys)
    return list(answers)


def _defer(calls: list[Call], paused: ProviderPaused, on_chunk: Callable[..., None] | None) -> None:
    for call in calls:
        call.answers = [paused] * len(call.keys)
    if on_chunk is not None and calls:
        on_chunk(list(calls))


def _out_of_time(gate: str) -> ProviderPaused:
    # One more round could outlast the claim's lease, and the sweep would hand the deliveries
    # to a second worker. What was reached is kept; the rest waits for the next attempt.
    return ProviderPaused(
        "the attempt's time budget is spent; the rest is next",
        reason="time_budget",
        retry_after=1.0,
        provider=gate,
    )


def _probing(gate: str) -> ProviderPaused:
    return ProviderPaused(
        "circuit half-open: one probe at a time", reason="circuit_open", retry_after=1.0,
        provider=gate,
    )  # fmt: skip
