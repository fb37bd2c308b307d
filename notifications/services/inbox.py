"""A recipient's own changes to their inbox: read, unread, seen, archived, all read.

Each is one UPDATE scoped to the recipient (a message of someone else is "not found", never
changed), idempotent (marking a read message read keeps its first read time), and answers
the message as it now is.
"""

from __future__ import annotations

import functools
from enum import StrEnum
from typing import Any

from django.db import transaction
from django.db.models import F, Value
from django.db.models.functions import Coalesce, Now

from notifications.models import InboxMessage
from notifications.services import inbox_events


class InboxAction(StrEnum):
    READ = "read"
    UNREAD = "unread"
    SEEN = "seen"
    ARCHIVE = "archive"
    UNARCHIVE = "unarchive"


_NOW = Now()
# Read implies seen: a message opened was shown.
_CHANGES: dict[InboxAction, dict[str, Any]] = {
    InboxAction.READ: {
        "read_at": Coalesce(F("read_at"), _NOW),
        "seen_at": Coalesce(F("seen_at"), _NOW),
    },
    InboxAction.UNREAD: {"read_at": Value(None)},
    InboxAction.SEEN: {"seen_at": Coalesce(F("seen_at"), _NOW)},
    InboxAction.ARCHIVE: {"archived_at": Coalesce(F("archived_at"), _NOW)},
    InboxAction.UNARCHIVE: {"archived_at": Value(None)},
}


def inbox_mark(*, recipient_id: int, message_id: int, action: InboxAction) -> InboxMessage | None:
    """Apply ``action`` to one of the recipient's messages; None if it has no such message."""
    mine = InboxMessage.objects.filter(pk=message_id, recipient_id=recipient_id)
    if not mine.update(**_CHANGES[action]):
        return None
    message = mine.first()
    if message is not None:
        # The recipient's other devices follow, once the change is there to be read.
        transaction.on_commit(functools.partial(inbox_events.message_changed, message))
    return message


def inbox_mark_all_read(*, recipient_id: int) -> int:
    """Every unread, unarchived message of the recipient read (and seen); how many changed."""
    changed = InboxMessage.objects.filter(
        recipient_id=recipient_id, read_at__isnull=True, archived_at__isnull=True
    ).update(**_CHANGES[InboxAction.READ])
    if changed:
        transaction.on_commit(functools.partial(inbox_events.all_read, recipient_id=recipient_id))
    return changed
