"""The chaos suite's accounting: every accepted notification, from the database and from what
the provider fakes received.

What of ours reaches each fake and names the delivery: APNs' payload and FCM's data carry the
notification id (one push delivery per notification, one request per device token), Twilio's
``StatusCallback`` URL carries ``deliveryId``, Postmark's ``Metadata`` carries ``deliveryId``.
A fake *received* a message when it accepted it (2xx): a 503, a 429 or a hang is not a
delivery. In-app has no fake: its delivery is received when its inbox row exists (one at most:
the row is unique per delivery).

A delivery is **lost** when it was not skipped, not dead-lettered, and one of its destinations
never received it (or it is still pending). It is **duplicated** once per extra acceptance of
one destination. Each duplicate example carries its evidence: the delivery's ``history`` and
``results``, and for push every request the fakes logged for each device (when, what they
answered, on which client connection), so the path that sent it twice can be read off.
"""

from __future__ import annotations

import json
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# (kind, id, destination): kind "n" for a notification id (push; the destination is the device
# token), "d" for a delivery id (email, SMS: one destination, "").
Key = tuple[str, str, str]


def received(logs: dict[str, Path]) -> Counter[Key]:
    """How many times each fake accepted each message, by what names its delivery."""
    counts: Counter[Key] = Counter()
    for fake, path in logs.items():
        for record in _records(path):
            for key in _accepted(fake, record):
                counts[key] += 1
    return counts


def traces(logs: dict[str, Path], keys: set[Key]) -> dict[Key, list[dict[str, Any]]]:
    """Every request the fakes logged for these destinations, answered or not (a duplicate's
    evidence): when it arrived, what it was answered, and on which client connection."""
    found: dict[Key, list[dict[str, Any]]] = {}
    for fake, path in logs.items():
        for record in _records(path):
            key = _destination(fake, record)
            if key in keys:
                found.setdefault(key, []).append(
                    {
                        "fake": fake,
                        "at": record.get("at"),
                        "answeredAt": record.get("answeredAt"),  # APNs
                        "status": record.get("status"),
                        "fault": record.get("fault"),
                        "client": record.get("client"),
                    }
                )
    return found


def _destination(fake: str, record: dict[str, Any]) -> Key | None:
    """The push destination a request was for, whatever it was answered (APNs, FCM)."""
    if fake == "apns":
        notification = ((record.get("payload") or {}).get("notify") or {}).get("notificationId")
        return ("n", str(notification), str(record.get("token"))) if notification else None
    if fake == "fcm" and record.get("kind") == "send":
        message = (record.get("body") or {}).get("message") or {}
        notification = (message.get("data") or {}).get("notificationId")
        return ("n", str(notification), str(message.get("token"))) if notification else None
    return None


def _records(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    with path.open() as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)


def _accepted(fake: str, record: dict[str, Any]) -> Iterator[Key]:
    status = record.get("status")
    if fake == "apns" and status == 200:
        payload = record.get("payload") or {}
        notification = (payload.get("notify") or {}).get("notificationId")
        if notification:
            yield "n", str(notification), str(record.get("token"))
    elif fake == "fcm" and record.get("kind") == "send" and status == 200:
        message = (record.get("body") or {}).get("message") or {}
        notification = (message.get("data") or {}).get("notificationId")
        if notification:
            yield "n", str(notification), str(message.get("token"))
    elif fake == "twilio" and record.get("kind") == "requests" and status == 201:
        form = record.get("form") or {}
        query = urllib.parse.urlsplit(form.get("StatusCallback", "")).query
        delivery = urllib.parse.parse_qs(query).get("deliveryId", [""])[0]
        if delivery:
            yield "d", delivery, ""  # one destination per delivery
    elif fake == "postmark" and status == 200:
        body = record.get("json")
        answers = record.get("response")
        messages = body if isinstance(body, list) else [body]
        replies = answers if isinstance(answers, list) else [answers] * len(messages)
        for message, reply in zip(messages, replies, strict=False):
            ok = isinstance(reply, dict) and reply.get("ErrorCode") == 0
            delivery = ((message or {}).get("Metadata") or {}).get("deliveryId")
            if ok and delivery:
                yield "d", str(delivery), ""


@dataclass
class Ledger:
    notifications: int = 0
    deliveries: int = 0
    delivered: int = 0  # every destination received it (or its inbox row exists)
    skipped: int = 0
    lost: int = 0
    duplicated: int = 0
    dead_lettered: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    dead_letter_errors: dict[str, int] = field(default_factory=dict)
    by_channel: dict[str, dict[str, int]] = field(default_factory=dict)
    lost_examples: list[dict[str, Any]] = field(default_factory=list)
    duplicate_examples: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


_DELIVERIES = """
SELECT d.id, d.channel, d.status, n.id::text, n.recipient_id,
       EXISTS (SELECT 1 FROM notifications_faileddelivery f
               WHERE f.delivery_id = d.id AND f.replayed_at IS NULL),
       EXISTS (SELECT 1 FROM notifications_inboxmessage i WHERE i.delivery_id = d.id)
FROM notifications_delivery d JOIN notifications_notification n ON n.id = d.notification_id
WHERE n.id = ANY(%s::uuid[]) OR n.broadcast_id = ANY(%s::uuid[])
"""
_DEAD_LETTER_ERRORS = """
SELECT error_class, left(error_message, 100), count(*) FROM notifications_faileddelivery
WHERE delivery_id = ANY(%s) AND replayed_at IS NULL GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 10
"""
PENDING = """
SELECT count(*) FROM notifications_delivery d
JOIN notifications_notification n ON n.id = d.notification_id
WHERE (n.id = ANY(%s::uuid[]) OR n.broadcast_id = ANY(%s::uuid[]))
  AND d.status IN ('queued', 'sending')
"""


def account(
    conn: Any, *, notification_ids: list[str], broadcast_ids: list[str], got: Counter[Key]
) -> Ledger:
    with conn.cursor() as cursor:
        cursor.execute(_DELIVERIES, [notification_ids, broadcast_ids])
        rows = cursor.fetchall()
        cursor.execute("SELECT recipient_id, token, platform FROM preferences_device WHERE active")
        tokens: dict[int, list[str]] = {}
        for recipient_id, token, _ in cursor.fetchall():
            tokens.setdefault(recipient_id, []).append(token)
    ledger = Ledger(notifications=len({row[3] for row in rows}), deliveries=len(rows))
    statuses: Counter[str] = Counter()
    per_channel: dict[str, Counter[str]] = {}
    for delivery_id, channel, status, notification_id, recipient_id, dead, stored in rows:
        statuses[status] += 1
        tally = per_channel.setdefault(channel, Counter())
        tally[status] += 1
        keys = _expected(channel, delivery_id, notification_id, tokens.get(recipient_id, []))
        copies = [got[key] for key in keys]
        reached = bool(stored) if channel == "inapp" else bool(copies) and min(copies) > 0
        extra = sum(max(0, n - 1) for n in copies)
        if extra:
            ledger.duplicated += extra
            tally["duplicated"] += extra
            if len(ledger.duplicate_examples) < 10:
                ledger.duplicate_examples.append(
                    {
                        "delivery": delivery_id,
                        "channel": channel,
                        "copies": copies,
                        "destinations": [key[2] for key in keys],
                    }
                )
        if reached:
            ledger.delivered += 1
            tally["received"] += 1
        if status == "skipped":
            ledger.skipped += 1
        elif dead:
            ledger.dead_lettered += 1
            tally["dead_lettered"] += 1
        elif not reached:
            ledger.lost += 1
            tally["lost"] += 1
            if len(ledger.lost_examples) < 10:
                ledger.lost_examples.append(
                    {"delivery": delivery_id, "channel": channel, "status": status}
                )
    with conn.cursor() as cursor:
        cursor.execute(_DEAD_LETTER_ERRORS, [[row[0] for row in rows]])
        ledger.dead_letter_errors = {f"{k}: {m}"[:160]: n for k, m, n in cursor.fetchall()}
    _explain_duplicates(conn, ledger, notification_ids_by_delivery={r[0]: r[3] for r in rows})
    ledger.statuses = dict(statuses)
    ledger.by_channel = {channel: dict(counts) for channel, counts in per_channel.items()}
    return ledger


def _explain_duplicates(
    conn: Any, ledger: Ledger, *, notification_ids_by_delivery: dict[int, str]
) -> None:
    """Each duplicate example gets its delivery's ``history`` and ``results``: which path sent
    a destination twice (the fakes' own records of it are added by ``explain``)."""
    ids = [example["delivery"] for example in ledger.duplicate_examples]
    if not ids:
        return
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT id, status, attempts, history, results FROM notifications_delivery"
            " WHERE id = ANY(%s)",
            [ids],
        )
        rows = {row[0]: row[1:] for row in cursor.fetchall()}
    for example in ledger.duplicate_examples:
        status, attempts, history, results = rows.get(example["delivery"], (None, 0, [], {}))
        example.update(
            notification=notification_ids_by_delivery.get(example["delivery"]),
            status=status,
            attempts=attempts,
            history=history,
            results=results,
        )


def explain(ledger: Ledger, logs: dict[str, Path]) -> None:
    """Add to each duplicate example what the fakes logged for its destinations."""
    keys = {
        ("n", str(example.get("notification")), token)
        for example in ledger.duplicate_examples
        if example["channel"] == "push"
        for token in example.get("destinations", [])
    }
    found = traces(logs, keys)
    for example in ledger.duplicate_examples:
        if example["channel"] == "push":
            example["requests"] = {
                token: found.get(("n", str(example.get("notification")), token), [])
                for token in example.get("destinations", [])
            }


def _expected(channel: str, delivery_id: int, notification_id: str, tokens: list[str]) -> list[Key]:
    """The (kind, id, destination) keys a delivery must reach; [] for in-app."""
    if channel == "push":
        return [("n", notification_id, token) for token in tokens]
    if channel in ("email", "sms"):
        return [("d", str(delivery_id), "")]
    return []


def pending(conn: Any, *, notification_ids: list[str], broadcast_ids: list[str]) -> int:
    with conn.cursor() as cursor:
        cursor.execute(PENDING, [notification_ids, broadcast_ids])
        return int(cursor.fetchone()[0])


_IN_FLIGHT = """
SELECT d.id FROM notifications_delivery d
JOIN notifications_notification n ON n.id = d.notification_id
WHERE (n.id = ANY(%s::uuid[]) OR n.broadcast_id = ANY(%s::uuid[]))
  AND d.status IN ('queued', 'sending')
"""
# When each delivery left queued/sending: its last sent, failed or skipped time.
_LEFT_PENDING_AT = """
SELECT extract(epoch FROM max(GREATEST(sent_at, failed_at, skipped_at)))
FROM notifications_delivery WHERE id = ANY(%s)
"""


def in_flight(conn: Any, *, notification_ids: list[str], broadcast_ids: list[str]) -> list[int]:
    """The ids of the deliveries now queued or sending."""
    with conn.cursor() as cursor:
        cursor.execute(_IN_FLIGHT, [notification_ids, broadcast_ids])
        return [int(row[0]) for row in cursor.fetchall()]


def left_pending_at(conn: Any, delivery_ids: list[int]) -> float | None:
    """The epoch second at which the last of these deliveries was sent, failed or skipped
    (None if there are none, or none has yet)."""
    if not delivery_ids:
        return None
    with conn.cursor() as cursor:
        cursor.execute(_LEFT_PENDING_AT, [delivery_ids])
        row = cursor.fetchone()
    return None if row is None or row[0] is None else float(row[0])
