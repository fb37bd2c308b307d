"""In-app: the inbox row is the delivery."""

from __future__ import annotations

from typing import ClassVar

from channels.base import OutboundMessage, ProviderResult


class InAppProvider:
    name: ClassVar[str] = "inapp"
    channel: ClassVar[str] = "inapp"
    guarded: ClassVar[bool] = False  # an INSERT: no remote service to rate-limit or pause

    def send(self, message: OutboundMessage) -> ProviderResult:
        from notifications.models import InboxMessage

        content = message.content
        # One inbox row per delivery even if the task runs twice (redelivery after a crash).
        inbox, _ = InboxMessage.objects.get_or_create(
            delivery_id=message.delivery_id,
            defaults={
                "recipient_id": message.destination.recipient_id,
                "title": content.get("subject", ""),
                "body": content.get("body", ""),
                "url": content.get("url", ""),
                "data": message.data,
            },
        )
        return ProviderResult(provider=self.name, message_id=str(inbox.pk))

    @classmethod
    def check_configuration(cls) -> list[str]:
        return []
