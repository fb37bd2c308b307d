"""The delivery engine: every delivery goes through here, a transactional one as a batch of
one, a broadcast's page as a batch of hundreds. Each stage works on the whole batch:

1. claim and load in one statement (``UPDATE … RETURNING`` joined with everything the send
   reads: content, recipient, preference rules, suppressions, active devices);
2. decide with plain functions over what was loaded (``decide``): the send-time re-check;
3. send: the batch's provider calls in flight at once on the process's I/O loop, gated a
   chunk at a time (``notifications.services.sending``);
4. record each chunk's outcomes (``notifications.services.outcomes``), acceptances in one
   UPDATE;
5. retries as data: each delivery that must be tried again comes back as a ``Retry`` that
   one place publishes (``notifications.services.enqueue.publish_retries``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import connection

from channels import registry
from channels.base import Channel, Destination, OutboundMessage, ProviderResult
from channels.gate import guard
from channels.gate.guard import guarded_name
from channels.providers import push
from notifications.models import Broadcast
from notifications.services import inbox_events, outcomes, planning, sending
from notifications.services.outcomes import Outcome, Retry
from preferences import access
from preferences import selectors as recipients
from preferences.models import normalize_address

__all__ = ["BatchResult", "Claimed", "Outcome", "Retry", "deliver"]


@dataclass
class Claimed:
    """A delivery this worker claimed, with all its send reads (one row of the claim)."""

    id: int
    channel: str
    attempts: int
    content: dict[str, Any]
    results: dict[str, Any]
    provider: str
    notification_id: str
    data: dict[str, Any]
    priority: str
    event: str
    category_id: int
    critical: bool
    category: str  # its key
    broadcast_status: str | None
    recipient_id: int | None
    external_id: str
    email: str | None
    phone: str | None
    locale: str
    rules: list[dict[str, Any]]
    email_suppressed: bool
    phone_suppressed: bool
    devices: list[tuple[str, str]]


@dataclass
class BatchResult:
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    retries: list[Retry] = field(default_factory=list)
    errors: dict[int, BaseException] = field(default_factory=dict)  # the last error of each


_CLAIM_AND_LOAD = """
WITH claimed AS (
  UPDATE notifications_delivery SET
    status = 'sending', sending_at = now(), attempts = attempts + 1,
    lease_until = now() + make_interval(secs => %(lease)s),
    history = history || jsonb_build_array(jsonb_build_object(
      'status', 'sending', 'at', now(), 'attempt', attempts + 1))
  WHERE id = ANY(%(ids)s) AND status = 'queued'
  RETURNING id, notification_id, channel, content, results, attempts, provider
)
SELECT c.id, c.channel, c.attempts, c.content, c.results, c.provider,
  n.id::text, n.data, n.priority, e.key, e.category_id, cat.critical, cat.key, b.status,
  r.id, r.external_id, r.email, r.phone, r.locale,
  COALESCE((SELECT jsonb_agg(jsonb_build_object(
      'category_id', p.category_id, 'channel', p.channel, 'enabled', p.enabled))
    FROM preferences_preference p WHERE p.recipient_id = r.id
      AND (p.category_id = e.category_id OR p.category_id IS NULL)), '[]'::jsonb),
  c.channel = 'email' AND EXISTS (SELECT 1 FROM preferences_suppression s
    WHERE s.channel = 'email' AND s.address = lower(r.email)),
  c.channel = 'sms' AND EXISTS (SELECT 1 FROM preferences_suppression s
    WHERE s.channel = 'sms' AND s.address = r.phone),
  CASE WHEN c.channel = 'push' THEN (SELECT jsonb_agg(jsonb_build_array(d.platform, d.token)
      ORDER BY d.id) FROM preferences_device d
    WHERE d.recipient_id = r.id AND d.active AND d.platform = ANY(%(platforms)s)) END
FROM claimed c
-- Each claimed row's notification by its primary key, whatever the planner's statistics say:
-- while a first broadcast fills the table they are stale, and it would rather read every
-- notification of the event and hash them (OFFSET 0 keeps the subquery from being merged).
CROSS JOIN LATERAL (SELECT * FROM notifications_notification n0
  WHERE n0.id = c.notification_id OFFSET 0) n
JOIN preferences_event e ON e.id = n.event_id
JOIN preferences_category cat ON cat.id = e.category_id
LEFT JOIN notifications_broadcast b ON b.id = n.broadcast_id
LEFT JOIN preferences_recipient r ON r.id = n.recipient_id
ORDER BY c.id
"""


def claim_and_load(delivery_ids: Sequence[int], *, lease_seconds: float) -> list[Claimed]:
    """queued → sending for each delivery still queued (counting the attempt), with what its
    send reads, in one round trip. Rows already sending, sent or skipped are left alone."""
    if not delivery_ids:
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            _CLAIM_AND_LOAD,
            {
                "ids": list(delivery_ids),
                "lease": lease_seconds,
                "platforms": sorted(push.configured_platforms()),
            },
        )
        rows = cursor.fetchall()
    claimed = [Claimed(*row) for row in rows]
    for delivery in claimed:
        # Django reads jsonb as text (its JSONField decodes it); so do we, once per row.
        delivery.content = _json(delivery.content) or {}
        delivery.results = _json(delivery.results) or {}
        delivery.data = _json(delivery.data) or {}
        delivery.rules = _json(delivery.rules) or []
        devices = _json(delivery.devices) or []
        delivery.devices = [(platform, token) for platform, token in devices]
        delivery.email_suppressed = bool(delivery.email_suppressed)
        delivery.phone_suppressed = bool(delivery.phone_suppressed)
    return claimed


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def deliver(delivery_ids: Sequence[int], *, channel: str, task_name: str = "") -> BatchResult:
    """Send the deliveries of ``channel`` that are still queued, each at most once per claim;
    the others come back as NOT_CLAIMED. Transient failures and deferrals come back as
    ``Retry`` items for the caller to publish; nothing is raised for a provider's answer."""
    result = BatchResult(outcomes=dict.fromkeys(delivery_ids, Outcome.NOT_CLAIMED))
    in_flight = in_flight_for(channel)
    claimed = claim_and_load(delivery_ids, lease_seconds=batch_lease(len(delivery_ids), in_flight))
    if not claimed:
        return result
    recorder = outcomes.Recorder(result.outcomes, result.retries, result.errors, task_name)
    ready: list[tuple[Claimed, OutboundMessage]] = []
    for delivery in claimed:
        decision = decide(delivery)
        if isinstance(decision, OutboundMessage):
            ready.append((delivery, decision))
        elif isinstance(decision, ProviderResult):
            recorder.sent(delivery, decision)
        else:
            recorder.skipped(delivery, decision)
    recorder.flush()
    if not ready:
        return result
    provider = registry.provider_for(channel)
    if channel == Channel.INAPP:
        stored = provider.store_many([m for _, m in ready])  # type: ignore[union-attr]
        # Before the outcomes are recorded: a batch cut short here runs again and announces
        # its messages again (the stream's clients keep one per id).
        inbox_events.messages_stored(int(r.message_id) for r in stored)
        recorder.answered(ready, stored)
    else:
        _send(ready, provider, recorder, in_flight)
    recorder.flush()
    return result


def decide(delivery: Claimed) -> OutboundMessage | ProviderResult | str:
    """The send-time re-check: the message to send, a result already reached (every device
    settled by earlier attempts), or why the delivery is skipped."""
    if delivery.broadcast_status == Broadcast.Status.CANCELLED:
        return "cancelled"  # back in `queued` after a transient error when it was cancelled
    if delivery.recipient_id is None:
        return "recipient_erased"
    devices = [(p, t) for p, t in delivery.devices if t not in delivery.results]
    # Every device was settled by earlier attempts: only the bookkeeping is left.
    settled = delivery.channel == Channel.PUSH and not devices and _reached_any(delivery)
    reason = planning.skip_reasons(
        planning.Reach(
            email=delivery.email,
            phone=delivery.phone,
            has_device=bool(devices) or settled,
            email_suppressed=_suppressed(delivery, Channel.EMAIL),
            phone_suppressed=_suppressed(delivery, Channel.SMS),
            rules=delivery.rules,
        ),
        channels=[delivery.channel],
        category_id=delivery.category_id,
        critical=delivery.critical,
    )[delivery.channel]
    if reason is not None:
        return reason
    if settled:
        return ProviderResult(provider=delivery.provider or push.PushProvider.name)
    return OutboundMessage(
        delivery_id=delivery.id,
        notification_id=delivery.notification_id,
        channel=delivery.channel,
        event=delivery.event,
        destination=Destination(
            recipient_id=delivery.recipient_id,
            external_id=delivery.external_id,
            email=delivery.email,
            phone=delivery.phone,
            locale=delivery.locale,
            device_tokens=tuple(devices),
        ),
        content=delivery.content,
        data=delivery.data,
        priority=delivery.priority,
        category=delivery.category,
        unsubscribe_url=_unsubscribe_url(delivery),
    )


def _unsubscribe_url(delivery: Claimed) -> str:
    """Every e-mail of a category the recipient may opt out of carries a one-click link for
    it; a critical one (a security code) carries none: it cannot be opted out of."""
    if delivery.channel != Channel.EMAIL or delivery.critical or delivery.recipient_id is None:
        return ""
    return access.unsubscribe_url(
        recipient_id=delivery.recipient_id, category=delivery.category, channel=Channel.EMAIL
    )


def _reached_any(delivery: Claimed) -> bool:
    return any(outcome.get("status") == "sent" for outcome in delivery.results.values())


def _suppressed(delivery: Claimed, channel: str) -> bool:
    """The flag the claim loaded; an address not stored in canonical form (a row written
    outside the API, e.g. "e6@exämple.com" by the admin) is looked up again as canonical."""
    if delivery.channel != channel:
        return False
    if channel == Channel.EMAIL:
        flag, address = delivery.email_suppressed, delivery.email or ""
    else:
        flag, address = delivery.phone_suppressed, delivery.phone or ""
    if flag or not address or normalize_address(channel, address) == address.strip().lower():
        return flag
    return recipients.is_suppressed(channel=channel, address=address)


def _send(
    ready: list[tuple[Claimed, OutboundMessage]],
    provider: Any,
    recorder: outcomes.Recorder,
    in_flight: int,
) -> None:
    """Build the batch's provider calls, make them, and record each delivery once all of its
    calls have answered (a push to three devices is three calls)."""
    calls: list[sending.Call] = []
    waiting: dict[int, int] = {}  # delivery id → calls it still waits for
    parts: dict[int, list[tuple[str, str, Any]]] = {}
    by_id = {delivery.id: (delivery, message) for delivery, message in ready}
    if ready[0][0].channel == Channel.PUSH:
        for delivery, message in ready:
            for platform, token in message.destination.device_tokens:
                sender = push.sender_for(platform)
                if sender is None:
                    continue
                calls.append(_device_call(sender, token, message))
                waiting[delivery.id] = waiting.get(delivery.id, 0) + 1
    else:
        calls = _provider_calls(provider, [message for _, message in ready])
        for call in calls:
            for key in call.keys:
                waiting[int(key)] = waiting.get(int(key), 0) + 1  # type: ignore[call-overload]

    def on_chunk(chunk: list[sending.Call]) -> None:
        done: list[tuple[Claimed, OutboundMessage]] = []
        answers: list[Any] = []
        for call in chunk:
            for key, answer in zip(call.keys, call.answers, strict=True):
                delivery_id = key[0] if isinstance(key, tuple) else int(key)  # type: ignore[call-overload]
                if isinstance(key, tuple):
                    parts.setdefault(delivery_id, []).append((call.gate, key[1], answer))
                waiting[delivery_id] -= 1
                if waiting[delivery_id] == 0:
                    done.append(by_id[delivery_id])
                    answers.append(
                        _fold(parts.pop(delivery_id)) if isinstance(key, tuple) else answer
                    )
        recorder.answered(done, answers)
        recorder.flush()

    started = time.monotonic()
    deadline = started + push.send_budget() if ready[0][0].channel == Channel.PUSH else None
    sending.send(calls, in_flight=in_flight, deadline=deadline, on_chunk=on_chunk)


def _fold(devices: list[tuple[str, str, Any]]) -> Any:
    """A push delivery's answer from its devices'; a bug in any of them is the delivery's."""
    bug = next((a for _, _, a in devices if isinstance(a, sending.Bug)), None)
    return bug or push.fold(devices)


def _device_call(sender: push.PushSender, token: str, message: OutboundMessage) -> sending.Call:
    async def run() -> list[Any]:
        return [await sender.send_to_device(token, message)]

    key: Hashable = (message.delivery_id, token)
    return sending.Call(
        gate=guarded_name(sender), bulk=message.priority == "bulk", keys=[key], run=run
    )


def _provider_calls(provider: Any, messages: list[OutboundMessage]) -> list[sending.Call]:
    """One call per message, or per group for a provider that carries several in one call
    (``BatchingProvider``: an ESP's batch API)."""
    gate = guarded_name(provider)
    grouping = getattr(provider, "batch_groups", None)
    groups = grouping(messages) if grouping is not None and len(messages) > 1 else None
    groups = groups or [[index] for index in range(len(messages))]
    # A call takes a rate-limit entry per message: none may carry more than a window holds.
    ceiling = guard.max_chunk_cost(gate, bulk=messages[0].priority == "bulk")
    if ceiling is not None:
        groups = [g[i : i + ceiling] for g in groups for i in range(0, len(g), ceiling)]
    calls = []
    for group in groups:
        carried = [messages[index] for index in group]
        calls.append(
            sending.Call(
                gate=gate,
                bulk=carried[0].priority == "bulk",
                keys=[m.delivery_id for m in carried],
                run=_run_call(provider, carried),
            )
        )
    return calls


def _run_call(provider: Any, carried: list[OutboundMessage]) -> Any:
    async def run() -> list[Any]:
        if len(carried) > 1:
            return list(await provider.send_many(carried))
        return [await provider.send(carried[0])]

    return run


def in_flight_for(channel: str) -> int:
    return max(1, int(settings.NOTIFY_DELIVERY_IN_FLIGHT.get(channel, 1)))


def batch_lease(size: int, in_flight: int) -> float:
    """Long enough for every round of the batch's calls to wait out the rate limit and then
    run into the timeout; otherwise the sweep could hand a delivery still waiting in this
    batch to a second worker."""
    rounds = math.ceil(max(1, size) / in_flight)
    per_round = (
        settings.NOTIFY_PROVIDER_TIMEOUT_SECONDS + settings.NOTIFY_RATE_LIMIT_MAX_WAIT_SECONDS
    )
    return float(settings.NOTIFY_LEASE_SECONDS + rounds * per_round)
