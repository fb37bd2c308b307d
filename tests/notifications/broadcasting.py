"""Helpers shared by the broadcast tests (fan-out, batch delivery, API)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from channels.base import Channel
from notifications.models import Broadcast
from notifications.services import broadcasts, fanout
from preferences.models import Event, Recipient, Topic, TopicSubscription
from tests.factories import CategoryFactory, EventFactory, TemplateFactory, create_api_key


@pytest.fixture
def news(db: None) -> Event:
    """A marketing event (opt-outs apply) with a template for every channel."""
    event = EventFactory(
        key="product_news",
        category=CategoryFactory(key="marketing"),
        default_channels=[Channel.EMAIL, Channel.INAPP],
    )
    for channel in Channel.values:
        TemplateFactory(
            event=event,
            channel=channel,
            subject="News: {{ headline }}",
            body="{{ headline }} is out.",
        )
    return event


def topic_with(key: str, recipients: list[Recipient]) -> Topic:
    topic = Topic.objects.create(key=key)
    TopicSubscription.objects.bulk_create(
        TopicSubscription(topic=topic, recipient=recipient) for recipient in recipients
    )
    return topic


def start_broadcast(
    event: Event,
    audience: dict[str, Any],
    *,
    channels: list[str] | None = None,
    data: dict[str, Any] | None = None,
) -> uuid.UUID:
    """Accept a broadcast through the service (its fan-out task is published on commit,
    which plain django_db tests never reach: the test drives the pages itself)."""
    result = broadcasts.broadcast_accept(
        api_key=create_api_key()[0],
        event_key=event.key,
        audience=audience,
        channels=channels,
        data=data if data is not None else {"headline": "Dark mode"},
        idempotency_key=None,
    )
    return uuid.UUID(result.body["id"])


def fan_out(broadcast_id: uuid.UUID, *, max_pages: int = 100) -> list[fanout.PageOutcome]:
    """Run each segment's pages until it stops, as its chained tasks would (one segment after
    the other); returns every outcome in that order."""
    outcomes = []
    segments = len(broadcast_row(broadcast_id).fanout_cursors)
    for segment in range(segments):
        for _ in range(max_pages):
            outcomes.append(
                fanout.broadcast_fanout_page(broadcast_id=broadcast_id, segment=segment)
            )
            if outcomes[-1] != fanout.PageOutcome.MORE:
                break
        else:
            raise AssertionError(f"segment {segment} of {broadcast_id} did not end in {max_pages}")
    return outcomes


def broadcast_row(broadcast_id: uuid.UUID) -> Broadcast:
    return Broadcast.objects.get(pk=broadcast_id)
