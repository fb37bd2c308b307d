"""In-app: the inbox row is the delivery."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from channels.base import OutboundMessage, ProviderResult


class InAppProvider:
    """Local, not remote: the engine calls ``store_many`` on its own thread (it writes rows),
    for the whole batch, and no gate applies (there is no service to pause or rate-limit)."""

    name: ClassVar[str] = "inapp"
    channel: ClassVar[str] = "inapp"

    def store_many(self, messages: Sequence[OutboundMessage]) -> list[ProviderResult]:
        from notifications.models import InboxMessage

        # One inbox row per delivery even if a batch runs twice (redelivery after a crash):
        # the unique delivery_id skips what is there, and the ids are read back.
        InboxMessage.objects.bulk_create(
            [
                InboxMessage(
                    delivery_id=message.delivery_id,
                    recipient_id=message.destination.recipient_id,
                    title=message.content.get("subject", ""),
                    body=message.content.get("body", ""),
                    url=message.content.get("url", ""),
                    category=message.category,
                    data=message.data,
                )
                for message in messages
            ],
            ignore_conflicts=True,
        )
        ids = dict(
            InboxMessage.objects.filter(
                delivery_id__in=[m.delivery_id for m in messages]
            ).values_list("delivery_id", "pk")
        )
        return [
            ProviderResult(provider=self.name, message_id=str(ids[m.delivery_id])) for m in messages
        ]

    @classmethod
    def check_configuration(cls) -> list[str]:
        return []
