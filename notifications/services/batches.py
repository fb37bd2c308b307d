"""Batch delivery: one task claims many deliveries of a channel and sends each as if single.

One claim (``UPDATE … WHERE id = ANY(…) AND status = 'queued' RETURNING``) and one load
replace a task, a claim and a load per delivery; everything after the claim (checks,
outcome, dead letter, side effects) is ``deliveries.delivery_prepare`` / ``delivery_record``,
the very code single deliveries run. Provider calls may run in a small thread pool per
channel (NOTIFY_DELIVERY_BATCH_THREADS): e-mail, SMS and push calls mostly wait on the
network; the database work stays on the task's own thread.
"""

from __future__ import annotations

import logging
import math
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar, cast

from django.conf import settings
from django.db import InterfaceError, OperationalError, connections

from channels.base import (
    BatchAnswer,
    BatchingProvider,
    PermanentDeliveryError,
    ProviderConfigurationError,
    ProviderPaused,
    ProviderResult,
    TransientDeliveryError,
)
from notifications.models import Delivery
from notifications.services import transitions
from notifications.services.deliveries import (
    Outcome,
    ReadyToSend,
    claimed_deliveries,
    deliveries_mark_sent,
    delivery_dead_letter,
    delivery_prepare,
    delivery_record,
    has_dead_destinations,
)

logger = logging.getLogger(__name__)

_ProviderAnswer = ProviderResult | TransientDeliveryError | PermanentDeliveryError
T = TypeVar("T")


@dataclass(frozen=True)
class Retry:
    """A delivery of the batch that failed transiently: back in ``queued``, to be retried
    alone (as a single delivery task) after ``retry_after`` if the provider said so.
    ``deferred``: the provider was not called (paused, rate-limited): not an attempt, it goes
    back into a batch after ``retry_after``."""

    delivery_id: int
    channel: str
    priority: str
    retry_after: float | None
    deferred: bool = False


@dataclass
class BatchResult:
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    retries: list[Retry] = field(default_factory=list)


def deliveries_send_batch(
    *, delivery_ids: list[int], channel: str, task_name: str = ""
) -> BatchResult:
    """Claim the batch's still-queued deliveries at once, then send each as a single one.

    Rows already sending, sent or skipped (a redelivered batch, a single retry, a cancelled
    broadcast) are not claimed and come back as NOT_CLAIMED.
    """
    result = BatchResult(outcomes=dict.fromkeys(delivery_ids, Outcome.NOT_CLAIMED))
    threads = batch_threads(channel)
    claimed = transitions.claim_many(
        list(delivery_ids), lease_seconds=_batch_lease(len(delivery_ids), threads)
    )
    if not claimed:
        return result
    ready: list[ReadyToSend] = []
    for delivery in claimed_deliveries(claimed):
        prepared = _guarded(result, delivery.pk, task_name, partial(delivery_prepare, delivery))
        if isinstance(prepared, ReadyToSend):
            ready.append(prepared)
        elif prepared is not None:
            result.outcomes[delivery.pk] = prepared
    sent: list[tuple[Delivery, ProviderResult]] = []
    for item, answer, call_done in _call_providers(ready, threads):
        _guarded(
            result,
            item.delivery.pk,
            task_name,
            partial(_record, item, answer, result, task_name, sent),
        )
        # A call that carried many messages (an ESP batch) is recorded in one UPDATE.
        if call_done and len(sent) >= settings.NOTIFY_DELIVERY_SENT_FLUSH:
            _flush_sent(sent)
    _flush_sent(sent)
    return result


def _flush_sent(sent: list[tuple[Delivery, ProviderResult]]) -> None:
    """Record the provider acceptances collected so far in one UPDATE.

    Until then those deliveries stay ``sending``: a worker killed in between leaves them to
    the sweep, which sends them again (docs/reliability.md, the crash window), so the flush
    size bounds the duplicates one crash can cause as well as the number of commits.
    """
    if sent:
        deliveries_mark_sent(sent)
        sent.clear()


def batch_threads(channel: str) -> int:
    return max(1, int(settings.NOTIFY_DELIVERY_BATCH_THREADS.get(channel, 1)))


def _record(
    item: ReadyToSend,
    answer: Callable[[], _ProviderAnswer],
    result: BatchResult,
    task_name: str,
    sent: list[tuple[Delivery, ProviderResult]],
) -> Outcome:
    reply = answer()
    delivery = item.delivery
    if isinstance(reply, ProviderResult) and not has_dead_destinations(reply):
        # Nothing to retire: recorded with the others' (``_flush_sent``).
        sent.append((delivery, reply))
        result.outcomes[delivery.pk] = Outcome.SENT
        return Outcome.SENT
    try:
        if isinstance(reply, ProviderResult):
            outcome = delivery_record(item, result=reply, task_name=task_name)
        else:
            outcome = delivery_record(item, error=reply, task_name=task_name)
    except TransientDeliveryError as exc:
        # Already recorded as queued by delivery_record; the task schedules the retry.
        deferred = isinstance(exc, ProviderPaused)
        outcome = Outcome.DEFERRED if deferred else Outcome.RETRY
        result.retries.append(
            Retry(
                delivery_id=delivery.pk,
                channel=delivery.channel,
                priority=delivery.notification.priority,
                retry_after=exc.retry_after,
                deferred=deferred,
            )
        )
    result.outcomes[delivery.pk] = outcome
    return outcome


def _guarded(
    result: BatchResult, delivery_id: int, task_name: str, step: Callable[[], T]
) -> T | None:
    """Run one delivery's step; a bug or misconfiguration fails that delivery only.

    That is what a single delivery task's ``on_failure`` does with the same error (dead
    letter with the traceback), so the rest of the batch is not held hostage by one row. A
    database that went away is not one delivery's problem: it propagates, and the claimed
    rows left in ``sending`` are re-enqueued by the sweep when their lease runs out.
    """
    try:
        return step()
    except (OperationalError, InterfaceError):
        raise
    except Exception as exc:
        logger.exception("delivery %s failed in a batch", delivery_id)
        # Devices a push reached before a configuration error are kept (as on_failure does).
        partial = getattr(exc, "partial", None) or {}
        delivery_dead_letter(
            delivery_id=delivery_id,
            error=exc,
            traceback=traceback.format_exc(),
            task_name=task_name,
            results={token: outcome.as_json() for token, outcome in partial.items()},
        )
        result.outcomes[delivery_id] = Outcome.FAILED
        return None


def _call_providers(
    ready: list[ReadyToSend], threads: int
) -> Iterator[tuple[ReadyToSend, Callable[[], _ProviderAnswer], bool]]:
    """Each delivery with a callable giving its provider's answer, in call order, and whether
    it is the last of its provider call.

    A provider that carries several messages per call (``BatchingProvider``: an ESP's batch
    API) gets one call per group it forms; every other delivery is a call of its own. The
    callable raises what the provider raised beyond delivery errors (a bug, a configuration
    error), so that lands in that delivery's ``_guarded`` step.
    """
    calls = _provider_calls(ready)
    if threads <= 1 or len(calls) <= 1:
        for call in calls:
            yield from _answers(call, _send_call(call))
        return
    with ThreadPoolExecutor(
        max_workers=min(threads, len(calls)), thread_name_prefix="batch-send"
    ) as pool:
        futures = [(call, pool.submit(_send_call_in_thread, call)) for call in calls]
        for call, future in futures:
            yield from _answers(call, future.result())


def _provider_calls(ready: list[ReadyToSend]) -> list[list[ReadyToSend]]:
    """The deliveries grouped by the provider call that carries them."""
    if len(ready) <= 1:
        return [[item] for item in ready]
    by_provider: dict[int, list[ReadyToSend]] = {}
    for item in ready:
        by_provider.setdefault(id(item.provider), []).append(item)
    calls: list[list[ReadyToSend]] = []
    for items in by_provider.values():
        grouping = getattr(items[0].provider, "batch_groups", None)
        if grouping is None or len(items) == 1:
            calls.extend([item] for item in items)
            continue
        groups: list[list[int]] = grouping([item.message for item in items])
        calls.extend([items[index] for index in group] for group in groups)
    return calls


# A call's answers, one per delivery it carried, or what it raised beyond delivery errors.
_CallOutcome = list[BatchAnswer] | Exception


def _send_call(call: list[ReadyToSend]) -> _CallOutcome:
    try:
        if len(call) == 1:
            return [call[0].provider.send(call[0].message)]
        provider = cast(BatchingProvider, call[0].provider)
        return provider.send_many([item.message for item in call])
    except (TransientDeliveryError, PermanentDeliveryError) as exc:
        return [exc] * len(call)  # the whole call failed: every message's answer
    except Exception as exc:
        return exc


def _send_call_in_thread(call: list[ReadyToSend]) -> _CallOutcome:
    try:
        return _send_call(call)
    finally:
        # A provider that writes rows (in-app) opened a connection in this thread; the pool
        # thread dies with the batch, so close it rather than leak it.
        connections.close_all()


def _answers(
    call: list[ReadyToSend], outcome: _CallOutcome
) -> Iterator[tuple[ReadyToSend, Callable[[], _ProviderAnswer], bool]]:
    for index, item in enumerate(call):
        yield item, partial(_answer, outcome, index), index == len(call) - 1


def _answer(outcome: _CallOutcome, index: int) -> _ProviderAnswer:
    if isinstance(outcome, Exception):
        raise outcome
    answer = outcome[index]
    if isinstance(answer, ProviderConfigurationError):
        raise answer
    return answer


def _batch_lease(size: int, threads: int) -> float:
    """Long enough for the whole batch to get through its provider calls even if every one
    of them waits out the rate limit, then runs into the timeout; otherwise the sweep could
    hand a delivery still waiting in this batch to a second worker."""
    rounds = math.ceil(size / threads)
    per_call = (
        settings.NOTIFY_PROVIDER_TIMEOUT_SECONDS + settings.NOTIFY_RATE_LIMIT_MAX_WAIT_SECONDS
    )
    return float(settings.NOTIFY_LEASE_SECONDS + rounds * per_call)
