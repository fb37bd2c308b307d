"""Inbox events for the real-time stream: what an open ``GET /api/inbox/stream`` receives.

Each event is appended to the recipient's Redis stream (``inbox:<recipient id>``, the last
NOTIFY_INBOX_STREAM_REPLAY events kept for NOTIFY_INBOX_STREAM_REPLAY_SECONDS) and published
on the channel of the same name, in one script, so the stream id that a reconnecting client
sends back as ``Last-Event-ID`` orders live and replayed events alike. Publishing is best
effort: the rows are the truth, and a stream that may have missed events (Redis was away)
tells its client to fetch the inbox again (``notifications.stream``).

Kinds: ``message`` (a new message, as GET /api/inbox shows it), ``state`` (one message's
read/seen/archived times changed), ``all_read`` (mark-all-read; ``at`` is when).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable
from typing import Any

import redis
from django.conf import settings
from django.utils import timezone

from notifications.models import InboxMessage

logger = logging.getLogger(__name__)

MESSAGE, STATE, ALL_READ = "message", "state", "all_read"
KEY_PREFIX = "inbox:"

# KEYS[1] the recipient's stream; ARGV: the event, how many to keep, seconds to keep them.
# The id Redis gives the entry goes out with it on the channel: "<id> <event json>".
_APPEND_AND_PUBLISH = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', KEYS[1], id .. ' ' .. ARGV[1])
return id
"""


def stream_key(recipient_id: int) -> str:
    return f"{KEY_PREFIX}{recipient_id}"


def messages_stored(message_ids: Iterable[int]) -> None:
    """Announce new inbox messages (the in-app channel calls this once per batch)."""
    ids = list(message_ids)
    if not ids:
        return
    rows = InboxMessage.objects.filter(pk__in=ids).order_by("pk")
    _publish([(row.recipient_id, {"type": MESSAGE, "message": message_json(row)}) for row in rows])


def message_changed(message: InboxMessage) -> None:
    _publish([(message.recipient_id, {"type": STATE, "message": message_json(message)})])


def all_read(*, recipient_id: int) -> None:
    _publish([(recipient_id, {"type": ALL_READ, "at": timezone.now().isoformat()})])


def message_json(message: InboxMessage) -> dict[str, Any]:
    """The message exactly as GET /api/inbox shows it."""
    from notifications.api.inbox import InboxMessageSerializer

    return dict(InboxMessageSerializer(message).data)


def _publish(events: list[tuple[int, dict[str, Any]]]) -> None:
    if not events:
        return
    try:
        client = _client(settings.NOTIFY_INBOX_STREAM_REDIS_URL)
        script = client.register_script(_APPEND_AND_PUBLISH)
        with client.pipeline(transaction=False) as pipe:
            for recipient_id, event in events:
                script(
                    keys=[stream_key(recipient_id)],
                    args=[
                        json.dumps(event, separators=(",", ":")),
                        settings.NOTIFY_INBOX_STREAM_REPLAY,
                        settings.NOTIFY_INBOX_STREAM_REPLAY_SECONDS,
                    ],
                    client=pipe,
                )
            pipe.execute()
    except redis.RedisError:
        # Never fail a delivery or an inbox change over it: open streams notice that Redis
        # went away and tell their clients to fetch the inbox again.
        logger.warning("could not publish %d inbox event(s)", len(events), exc_info=True)


@functools.cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
