"""What the APNs and FCM tests share: a queued push delivery, and sending it in-process."""

from __future__ import annotations

from typing import Any

from notifications import services
from notifications.models import Delivery
from notifications.services import Outcome
from preferences.models import Device
from tests.factories import DeliveryFactory


def queued_push(recipient: Any, event: Any, body: str = "On its way.", **data: Any) -> Delivery:
    """A queued push delivery of order 77 to ``recipient``'s devices, ``data`` added."""
    return DeliveryFactory(
        notification__recipient=recipient,
        notification__event=event,
        notification__data={"orderId": "77", **data},
        channel="push",
        content={"subject": "Order 77 shipped", "body": body},
    )


def send_push(device: Device, event: Any, **data: Any) -> tuple[Outcome, Delivery]:
    """Queues a push to ``device``'s recipient and sends it once, as the task would."""
    delivery = queued_push(device.recipient, event, **data)
    outcome = services.delivery_send(delivery_id=delivery.pk, task_name="t")
    delivery.refresh_from_db()
    return outcome, delivery
