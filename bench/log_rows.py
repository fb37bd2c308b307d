"""Realistic rows of the notification log for bench/sizing.py, written two ways.

``load_packed`` COPYs every row in its final state (written once, packed tight: the floor).
``load_as_written`` inserts rows ``queued`` as the accept path does, then moves them through
``sending``, ``sent`` and ``delivered`` with the UPDATEs of ``notifications.services.
transitions``, vacuuming between chunks like an autovacuum that keeps up.

Content is rendered from the shipped ``order_shipped`` templates (email with its HTML layout,
in-app with its link); histories, provider message ids, inbox rows and dead letters look like
the pipeline's. Django must be set up before anything here touches the database.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import random
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from channels.lanes import EMAIL

SPREAD_DAYS = 60  # created_at spread evenly over this many days, so 30-day retention is half
RECIPIENTS = 20_000
FAILED_SHARE = 0.005  # emails dead-lettered (a permanent provider error)
READ_SHARE = 0.3  # inbox messages marked read
STUCK_OLD = 10  # old notifications left with a delivery stuck in "sending"
ETAS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "tomorrow"]
ORDER_PLACEHOLDER = "ORD-PLACEHOLDER"
POSTMARK_ERROR = (
    "Postmark API 422 code 406: You tried to send to recipient(s) that have been marked as "
    "inactive. Found inactive addresses: {email}. Inactive recipients are ones that have "
    "generated a hard bounce, a spam complaint, or a manual suppression."
)


def sql(statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return list(cursor.fetchall()) if cursor.description else []


def copy_rows(table: str, columns: list[str], rows: Iterable[list[Any]]) -> None:
    """COPY rows in, as CSV; None is NULL (\\N), "" stays an empty string."""
    from django.db import connection

    buf = io.StringIO()
    writer = csv.writer(buf)
    for row in rows:
        writer.writerow([r"\N" if value is None else value for value in row])
    buf.seek(0)
    with connection.cursor() as cursor:
        cursor.cursor.copy_expert(
            f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv, NULL '\\N')", buf
        )


@dataclass
class World:
    """What every generated notification shares: key, event, recipients, rendered content."""

    api_key_id: str
    event_id: int
    recipients: list[tuple[int, str, str]]  # (id, external id, email)
    content: dict[tuple[str, str], dict[str, str]]  # (channel, eta) -> rendered, placeholder
    email_provider: str = "postmark"


def build_world() -> World:
    from rest_framework_api_key.models import APIKey

    from notifications.models import Template
    from notifications.rendering import render_template
    from preferences.models import Event

    api_key, _ = APIKey.objects.create_key(name="orders-service")
    event = Event.objects.get(key="order_shipped")
    now = dt.datetime.now(dt.UTC).isoformat()
    copy_rows(
        "preferences_recipient",
        ["external_id", "email", "phone", "locale", "timezone", "created_at", "updated_at"],
        (
            [str(uuid.uuid4()), f"customer{i}@example.com", "+14155550100", "en", "", now, now]
            for i in range(RECIPIENTS)
        ),
    )
    recipients = [
        (pk, external_id, email)
        for pk, external_id, email in sql(
            "SELECT id, external_id, email FROM preferences_recipient ORDER BY id"
        )
    ]
    content = {}
    for channel in ("email", "inapp"):
        template = Template.objects.get(event=event, channel=channel, locale="")
        for eta in ETAS:
            data = {"orderId": ORDER_PLACEHOLDER, "eta": eta}
            context = {
                **data,
                "data": data,
                "recipient": {"id": "x", "email": "x@example.com", "locale": "en"},
                "event": event.key,
                "notification_id": "x",
            }
            content[(channel, eta)] = render_template(template, context)
    return World(api_key_id=api_key.pk, event_id=event.pk, recipients=recipients, content=content)


NOTIFICATION_COLUMNS = """
    id api_key_id recipient_id external_user_id event_id data priority broadcast_id
    idempotency_key request_fingerprint accept_response created_at
""".split()
DELIVERY_COLUMNS = """
    id notification_id channel status reason content provider provider_message_id attempts
    last_error history results lease_until queued_at sending_at sent_at delivered_at
    failed_at skipped_at
""".split()
INBOX_COLUMNS = "id recipient_id delivery_id title body url data read_at created_at".split()
FAILED_COLUMNS = """
    delivery_id task_name error_class error_message traceback attempts failed_at replayed_by
""".split()


def _json(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "))  # json.dumps's default, as Django writes


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat()


@dataclass
class Generated:
    notifications: list[list[Any]] = field(default_factory=list)
    deliveries: list[list[Any]] = field(default_factory=list)
    inbox: list[list[Any]] = field(default_factory=list)
    failed: list[list[Any]] = field(default_factory=list)
    # For the "as written" pass: ids by what happens to them next.
    email_ok: list[int] = field(default_factory=list)
    email_failed: list[int] = field(default_factory=list)
    inapp: list[int] = field(default_factory=list)


class Generator:
    """Notifications as the accept path writes them; deliveries queued (as accepted) or final."""

    def __init__(self, world: World, total: int, seed: int = 7) -> None:
        self.world = world
        self.total = total
        self.rng = random.Random(seed)
        self.start = dt.datetime.now(dt.UTC) - dt.timedelta(days=SPREAD_DAYS)
        self.step = dt.timedelta(days=SPREAD_DAYS) / total
        self.next_delivery_id = 1
        self.next_inbox_id = 1

    def chunk(self, first: int, count: int, *, final: bool) -> Generated:
        out = Generated()
        for i in range(first, first + count):
            self._one(i, out, final=final)
        return out

    def _one(self, i: int, out: Generated, *, final: bool) -> None:
        rng = self.rng
        notification_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        recipient_id, external_id, email = rng.choice(self.world.recipients)
        order_id = f"ORD-2026-{rng.randrange(10**8):08d}"
        eta = rng.choice(ETAS)
        data = {"orderId": order_id, "eta": eta}
        created = self.start + self.step * i
        accept = {
            "id": notification_id,
            "deliveries": [
                {"channel": "email", "status": "queued"},
                {"channel": "inapp", "status": "queued"},
            ],
        }
        fingerprint_body = {"userId": external_id, "event": "order_shipped", "data": data}
        fingerprint = hashlib.sha256(_json(fingerprint_body).encode()).hexdigest()
        out.notifications.append(
            [
                notification_id,
                self.world.api_key_id,
                recipient_id,
                external_id,
                self.world.event_id,
                _json(data),
                "transactional",
                None,
                str(uuid.uuid4()),  # callers send a fresh idempotency key per notification
                fingerprint,
                _json(accept),
                _iso(created),
            ]
        )
        failed = rng.random() < FAILED_SHARE
        for channel in ("email", "inapp"):
            delivery_id = self.next_delivery_id
            self.next_delivery_id += 1
            content = {
                key: value.replace(ORDER_PLACEHOLDER, order_id)
                for key, value in self.world.content[(channel, eta)].items()
            }
            inbox_id = None
            if channel == "inapp":
                inbox_id = self.next_inbox_id
                self.next_inbox_id += 1
                read = rng.random() < READ_SHARE
                out.inbox.append(
                    [
                        inbox_id,
                        recipient_id,
                        delivery_id,
                        content.get("subject", ""),
                        content.get("body", ""),
                        content.get("url", ""),
                        _json(data),
                        _iso(created + dt.timedelta(hours=2)) if read else None,
                        _iso(created + dt.timedelta(seconds=1)),
                    ]
                )
                out.inapp.append(delivery_id)
            elif failed:
                out.email_failed.append(delivery_id)
            else:
                out.email_ok.append(delivery_id)
            row = self._delivery(
                delivery_id,
                notification_id,
                channel,
                content,
                created,
                email=email,
                failed=failed and channel == "email",
                inbox_id=inbox_id,
                final=final,
            )
            out.deliveries.append(row)
            if final and failed and channel == "email":
                out.failed.append(self._dead_letter(delivery_id, email, created))

    def _delivery(
        self,
        delivery_id: int,
        notification_id: str,
        channel: str,
        content: dict[str, str],
        created: dt.datetime,
        *,
        email: str,
        failed: bool,
        inbox_id: int | None,
        final: bool,
    ) -> list[Any]:
        queued = created
        history: list[dict[str, Any]] = [{"status": "queued", "at": _iso(queued), "attempt": 0}]
        row: dict[str, Any] = dict.fromkeys(DELIVERY_COLUMNS)
        row.update(
            id=delivery_id,
            notification_id=notification_id,
            channel=channel,
            status="queued",
            reason="",
            content=content,
            provider="",
            provider_message_id="",
            attempts=0,
            last_error="",
            results={},
            queued_at=_iso(queued),
            lease_until=_iso(queued + dt.timedelta(seconds=300)),
        )
        if final:
            sending = created + dt.timedelta(milliseconds=180)
            done = sending + dt.timedelta(milliseconds=420)
            provider = self.world.email_provider if channel == "email" else "inapp"
            history.append({"status": "sending", "at": _iso(sending), "attempt": 1})
            row.update(attempts=1, sending_at=_iso(sending), lease_until=None)
            if failed:
                error = POSTMARK_ERROR.format(email=email)
                history.append(
                    {
                        "status": "failed",
                        "at": _iso(done),
                        "attempt": 1,
                        "error": error,
                        "errorClass": "PermanentDeliveryError",
                    }
                )
                row.update(status="failed", reason="406", last_error=error, failed_at=_iso(done))
            else:
                message_id = str(inbox_id) if channel == "inapp" else str(uuid.uuid4())
                history.append(
                    {
                        "status": "sent",
                        "at": _iso(done),
                        "attempt": 1,
                        "provider": provider,
                        "messageId": message_id,
                    }
                )
                row.update(
                    status="sent",
                    provider=provider,
                    provider_message_id=message_id,
                    sent_at=_iso(done),
                )
                if channel == "email":
                    delivered = done + dt.timedelta(seconds=4)
                    history.append(
                        {
                            "status": "delivered",
                            "at": _iso(delivered),
                            "attempt": 1,
                            "receipt": "Delivery",
                        }
                    )
                    row.update(status="delivered", delivered_at=_iso(delivered))
        row["history"] = history
        for key in ("content", "history", "results"):
            row[key] = _json(row[key])
        return [row[column] for column in DELIVERY_COLUMNS]

    def _dead_letter(self, delivery_id: int, email: str, created: dt.datetime) -> list[Any]:
        return [
            delivery_id,
            EMAIL.task,
            "channels.base.PermanentDeliveryError",
            POSTMARK_ERROR.format(email=email),
            "",
            1,
            _iso(created + dt.timedelta(milliseconds=600)),
            "",
        ]


def write_chunk(chunk: Generated) -> None:
    copy_rows("notifications_notification", NOTIFICATION_COLUMNS, chunk.notifications)
    copy_rows("notifications_delivery", DELIVERY_COLUMNS, chunk.deliveries)
    copy_rows("notifications_inboxmessage", INBOX_COLUMNS, chunk.inbox)
    if chunk.failed:
        copy_rows("notifications_faileddelivery", FAILED_COLUMNS, chunk.failed)


def fix_sequences() -> None:
    for table in ("notifications_delivery", "notifications_inboxmessage"):
        sql(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
            f" (SELECT coalesce(max(id), 1) FROM {table}))"
        )


def chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for first in range(0, total, size):
        yield first, min(size, total - first)


def load_packed(gen: Generator, total: int, chunk_size: int) -> float:
    from django.db import transaction

    started = time.monotonic()
    for first, count in chunks(total, chunk_size):
        with transaction.atomic():
            write_chunk(gen.chunk(first, count, final=True))
    fix_sequences()
    return time.monotonic() - started


def load_as_written(gen: Generator, total: int, chunk_size: int) -> float:
    """Insert queued, then the pipeline's transitions, one chunk at a time, vacuuming between
    chunks as an autovacuum that keeps up with this table would."""
    from django.db import connection, transaction
    from psycopg2.extras import execute_values

    from notifications.models import DeliveryStatus as S
    from notifications.services import transitions

    started = time.monotonic()
    pieces = list(chunks(total, chunk_size))
    for number, (first, count) in enumerate(pieces):
        chunk = gen.chunk(first, count, final=False)
        with transaction.atomic():
            write_chunk(chunk)
        if number == len(pieces) - 1:
            break  # the newest chunk stays queued: the backlog the purge must not touch
        stuck = chunk.email_ok[:STUCK_OLD] if number == 0 else []
        with transaction.atomic():
            transitions.transition(
                chunk.email_ok + chunk.email_failed + chunk.inapp,
                to=S.SENDING,
                allowed_from=(S.QUEUED,),
                lease_seconds=300,
                count_attempt=True,
            )
        with transaction.atomic():
            sent = [d for d in chunk.email_ok if d not in stuck]
            # transitions.transition's UPDATE, with a message id per row (the pipeline runs
            # it once per delivery; batched here so the load takes a minute, not an hour).
            values = [(d, "postmark", str(uuid.uuid4())) for d in sent]
            values += [(d, "inapp", str(d)) for d in chunk.inapp]  # the inbox row's id
            with connection.cursor() as cursor:
                execute_values(
                    cursor.cursor,
                    """
                    UPDATE notifications_delivery d SET status = 'sent', sent_at = now(),
                      lease_until = NULL,
                      history = d.history || jsonb_build_array(
                        jsonb_build_object('status', 'sent', 'at', now(), 'attempt', d.attempts)
                        || jsonb_build_object('provider', v.provider, 'messageId', v.mid)),
                      provider = v.provider, provider_message_id = v.mid, last_error = ''
                    FROM (VALUES %s) AS v (id, provider, mid)
                    WHERE d.id = v.id AND d.status = ANY(ARRAY['sending', 'queued'])
                    """,
                    values,
                    page_size=5000,
                )
            for delivery_id in chunk.email_failed:
                error = POSTMARK_ERROR.format(email="customer@example.com")
                transitions.transition(
                    [delivery_id],
                    to=S.FAILED,
                    allowed_from=(S.QUEUED, S.SENDING),
                    note={"error": error, "errorClass": "PermanentDeliveryError"},
                    reason="406",
                    last_error=error,
                )
            copy_rows(
                "notifications_faileddelivery",
                FAILED_COLUMNS,
                (
                    gen._dead_letter(d, "customer@example.com", dt.datetime.now(dt.UTC))
                    for d in chunk.email_failed
                ),
            )
        with transaction.atomic():
            transitions.transition(
                sent, to=S.DELIVERED, allowed_from=(S.SENT,), note={"receipt": "Delivery"}
            )
        sql("VACUUM notifications_delivery")
    fix_sequences()
    return time.monotonic() - started
