"""Broker loss: notice within seconds that the broker lost its messages, and re-enqueue the
queued deliveries whose messages may be gone, instead of waiting out their lease.

A lease alone cannot tell a lost message from one still waiting its turn: a bulk lane holds
an hour of backlog by design, and a short lease for queued rows would publish every row of a
healthy backlog again at each expiry. So the broker carries a canary, checked by beat every
``NOTIFY_BROKER_WATCH_SECONDS`` (docs/reliability.md, "Broker loss"):

- Redis: a key in the broker's database, swapped for a fresh token at every check
  (``SET … GET``, one atomic step), and the server's ``run_id``. The key missing: the database
  was flushed or Redis restarted empty, every message is gone. An older token: Redis came back
  from a snapshot, so what it lost was written after that token. The same token under another
  ``run_id``: Redis restarted from its append-only file, losing at most its last writes.
- RabbitMQ: a queue declared like the lanes (durable or not, classic or quorum) holding one
  message. Gone or empty: the vhost was deleted or recreated, or the queues did not survive a
  restart, so the lanes' messages are gone as well.

A loss becomes a ``BrokerLoss`` row; each watch run then publishes the deliveries queued before
it (and, when only the last writes were lost, after its bound), newest first so that
transactional ones come before an old broadcast backlog, a keyset page at a time
(``delivery_queued_recent``), bulk ones in batch tasks. Rows are read, not updated: the claim
makes a copy of a message that did survive harmless, and 10M history appends would cost more
than the messages.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from celery import current_app
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from kombu import Connection, Exchange, Queue

from channels.lanes import LANES
from notifications.models import BrokerCanary, BrokerLoss
from notifications.services import fanout
from preferences.models import Priority

logger = logging.getLogger(__name__)

CANARY = "notify.broker-canary"  # the Redis key, or the RabbitMQ queue
_STATE = 1  # BrokerCanary's one row
_MAX_ID = 2**63 - 1


@dataclass(frozen=True)
class Reading:
    """What a check found in the broker (before it armed the canary again)."""

    present: bool
    token: str | None = None  # the token found; None where the broker keeps none (RabbitMQ)
    written_at: datetime | None = None  # when that token was written
    server_id: str = ""  # Redis' run_id; "" where there is none


class Canary(Protocol):
    def exchange(self, token: str, at: datetime) -> Reading:
        """Read the canary and leave ``token`` (written at ``at``) in its place."""


@dataclass(frozen=True)
class WatchResult:
    loss: BrokerLoss | None  # detected by this check
    requeued: int  # deliveries published again by this run
    more: bool  # a loss still has deliveries to publish


def broker_watch(*, time_budget: float | None = None) -> WatchResult:
    """One run of the watch (beat): check the canary, then re-enqueue for any loss not done."""
    loss = broker_check()
    budget = settings.NOTIFY_BROKER_RECOVERY_TIME_BUDGET_SECONDS
    requeued, more = broker_recover(time_budget=budget if time_budget is None else time_budget)
    return WatchResult(loss=loss, requeued=requeued, more=more)


def broker_check() -> BrokerLoss | None:
    """Read and re-arm the canary; the loss it reveals, if any. A broker that does not answer
    is judged at the next check, once it does."""
    BrokerCanary.objects.bulk_create([BrokerCanary(pk=_STATE)], ignore_conflicts=True)
    with transaction.atomic():
        # Checks run one at a time: a run that finds the row locked leaves it to the other.
        state = BrokerCanary.objects.select_for_update(skip_locked=True).filter(pk=_STATE).first()
        if state is None:
            return None
        token, now = uuid.uuid4().hex, timezone.now()
        with _broker() as broker:
            if broker is None:
                return None
            canary = _canary_for(broker)
            if canary is None:
                return None
            try:
                reading = canary.exchange(token, now)
            except (*broker.connection_errors, *broker.channel_errors, OSError) as exc:
                logger.warning("broker watch: the broker did not answer (%s)", exc)
                return None
        found = loss_of(state, reading, margin=settings.NOTIFY_BROKER_LOSS_MARGIN_SECONDS)
        state.token, state.armed_at, state.server_id = token, now, reading.server_id
        state.save(update_fields=["token", "armed_at", "server_id"])
        if found is None:
            return None
        cause, since = found
        loss = BrokerLoss.objects.create(detected_at=now, cause=cause, since=since)
        _supersede(loss)
        logger.error(
            "broker lost messages: %s; re-enqueueing the deliveries queued %s",
            cause,
            f"since {since.isoformat()}" if since else "before now",
        )
        # A broadcast whose fan-out chain was in the broker goes on now, not at the next
        # periodic resume (NOTIFY_FANOUT_RESUME_SECONDS).
        transaction.on_commit(fanout.broadcasts_resume)
    return loss


def loss_of(
    state: BrokerCanary, reading: Reading, *, margin: float
) -> tuple[str, datetime | None] | None:
    """(cause, since) if the reading shows a loss of what was published since ``since``
    (None: everything), else None. The first check ever arms the canary and judges nothing."""
    if not state.token:
        return None
    if not reading.present:
        return "the canary vanished (broker flushed, recreated, or restarted empty)", None
    if reading.token is not None and reading.token != state.token:
        since = reading.written_at - timedelta(seconds=margin) if reading.written_at else None
        return "the broker holds an older canary (restored from a snapshot)", since
    if reading.server_id and state.server_id and reading.server_id != state.server_id:
        assert state.armed_at is not None  # armed with its token
        since = state.armed_at - timedelta(seconds=margin)
        return "Redis restarted (run_id changed) and may have lost its last writes", since
    return None


def _supersede(loss: BrokerLoss) -> None:
    """Earlier losses still being worked off whose deliveries this one covers are done."""
    older = BrokerLoss.objects.filter(finished_at__isnull=True).exclude(pk=loss.pk)
    if loss.since is not None:
        older = older.filter(since__gte=loss.since)
    older.update(finished_at=loss.detected_at)


def broker_recover(*, time_budget: float) -> tuple[int, bool]:
    """Publish the deliveries of unfinished losses, a page per transaction, for at most
    ``time_budget`` seconds; (how many were published, whether any loss has more left)."""
    deadline = time.monotonic() + time_budget
    requeued = 0
    while True:
        with transaction.atomic():
            loss = (
                BrokerLoss.objects.select_for_update(skip_locked=True)
                .filter(finished_at__isnull=True)
                .order_by("detected_at")
                .first()
            )
            if loss is None:
                return requeued, False
            page = lost_page(loss, size=settings.NOTIFY_SWEEP_BATCH)
            # Published before the cursor moves: a failure (the broker gone again) rolls the
            # page back for the next run; a commit that fails after it publishes it twice.
            publish_recovered(page)
            if page:
                loss.cursor_queued_at, loss.cursor_id = page[-1].queued_at, page[-1].id
                loss.requeued += len(page)
                requeued += len(page)
            if len(page) < settings.NOTIFY_SWEEP_BATCH:
                loss.finished_at = timezone.now()
                logger.warning(
                    "broker loss of %s: %d deliveries re-enqueued",
                    loss.detected_at.isoformat(),
                    loss.requeued,
                )
            loss.save()
        if time.monotonic() >= deadline:
            return requeued, BrokerLoss.objects.filter(finished_at__isnull=True).exists()


@dataclass(frozen=True)
class LostDelivery:
    id: int
    channel: str
    priority: str
    queued_at: datetime


# The rows a loss may have cost, newest first from its cursor: a range scan of the partial
# index delivery_queued_recent (queued_at DESC, id DESC WHERE status = 'queued'), each page
# starting where the last one ended however many rows there are.
_LOST_PAGE = """
SELECT d.id, d.channel, n.priority, d.queued_at
FROM notifications_delivery d JOIN notifications_notification n ON n.id = d.notification_id
WHERE d.status = 'queued' AND (d.queued_at, d.id) < (%s, %s) {since}
ORDER BY d.queued_at DESC, d.id DESC
LIMIT %s
"""


def lost_page(loss: BrokerLoss, *, size: int) -> list[LostDelivery]:
    """The next ``size`` queued deliveries of a loss, after its cursor."""
    if loss.cursor_queued_at is None:
        cursor: tuple[datetime, int] = (loss.detected_at, _MAX_ID)
    else:
        cursor = (loss.cursor_queued_at, int(loss.cursor_id or 0))
    since = "" if loss.since is None else "AND d.queued_at >= %s"
    params: list[Any] = [*cursor, *([loss.since] if loss.since is not None else []), size]
    with connection.cursor() as db:
        db.execute(_LOST_PAGE.format(since=since), params)
        return [LostDelivery(*row) for row in db.fetchall()]


def publish_recovered(page: list[LostDelivery]) -> None:
    """Transactional deliveries one task each on their lane; bulk ones in batch tasks of
    NOTIFY_DELIVERY_BATCH on the bulk lane, as their fan-out published them (a tenth of the
    messages a lost broadcast would otherwise cost). Raises if the broker refuses."""
    if not page:
        return
    size = max(1, int(settings.NOTIFY_DELIVERY_BATCH))
    bulk: dict[str, list[int]] = defaultdict(list)
    with current_app.producer_or_acquire() as producer:
        for lost in page:
            if lost.priority == Priority.TRANSACTIONAL:
                current_app.send_task(
                    LANES[lost.channel].task,
                    args=(lost.id,),
                    queue=LANES[lost.channel].queue,
                    producer=producer,
                )
            else:
                bulk[lost.channel].append(lost.id)
        for channel, ids in sorted(bulk.items()):
            for start in range(0, len(ids), size):
                current_app.send_task(
                    LANES[channel].batch_task,
                    args=(ids[start : start + size],),
                    queue=LANES[channel].bulk_queue,
                    producer=producer,
                )


# --- the canaries -----------------------------------------------------------------------------


@contextmanager
def _broker() -> Iterator[Connection | None]:
    conn = current_app.connection_for_write()
    try:
        try:
            conn.ensure_connection(max_retries=1)
        except (*conn.connection_errors, OSError) as exc:
            logger.warning("broker watch: the broker is unreachable (%s)", exc)
            yield None
            return
        yield conn
    finally:
        conn.release()


def _canary_for(conn: Connection) -> Canary | None:
    if settings.BROKER_IS_REDIS:
        return RedisCanary(conn)
    if settings.BROKER_IS_AMQP:
        return AmqpCanary(conn)
    return None  # another transport (tests' memory://): nothing to watch


class RedisCanary:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def exchange(self, token: str, at: datetime) -> Reading:
        client = self.conn.default_channel.client  # type: ignore[attr-defined]  # the broker's db
        value = json.dumps({"token": token, "at": at.isoformat()})
        old = client.set(CANARY, value, get=True)
        # Read after the swap: a restart between the two still shows as a new run_id.
        run_id = str(client.info("server").get("run_id", ""))
        if old is None:
            return Reading(present=False, server_id=run_id)
        try:
            found = json.loads(old)
            return Reading(
                present=True,
                token=str(found["token"]),
                written_at=datetime.fromisoformat(found["at"]),
                server_id=run_id,
            )
        except (ValueError, KeyError, TypeError):
            return Reading(present=True, token="", server_id=run_id)  # not ours: older


class AmqpCanary:
    """A queue of its own holding one message, never consumed: RabbitMQ keeps or loses it
    with the lanes' messages (it is declared as they are), and has nothing like a run id."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def exchange(self, token: str, at: datetime) -> Reading:
        with self.conn.channel() as channel:
            try:
                present = channel.queue_declare(queue=CANARY, passive=True).message_count > 0
            except self.conn.channel_errors:  # 404 NOT_FOUND: gone (and the channel closed)
                present = False
        if not present:
            queue = _amqp_canary_queue()
            producer = self.conn.Producer()
            producer.publish(
                {"token": token, "at": at.isoformat()},
                exchange="",
                routing_key=CANARY,
                delivery_mode=2,
                serializer="json",
                declare=[queue],
            )
        return Reading(present=present)


def _amqp_canary_queue() -> Queue:
    lane = current_app.amqp.queues[settings.CELERY_TASK_DEFAULT_QUEUE]
    return Queue(
        CANARY,
        Exchange(""),
        routing_key=CANARY,
        durable=lane.durable,
        auto_delete=False,
        queue_arguments=lane.queue_arguments,
    )
