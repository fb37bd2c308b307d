"""Management commands: create_api_key, replay_failed, load_catalog."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from rest_framework.test import APIClient

from channels.lanes import EMAIL
from notifications.models import Delivery, DeliveryStatus, FailedDelivery, Template
from preferences.models import Category, Event
from tests.factories import DeliveryFactory, RecipientFactory

pytestmark = pytest.mark.django_db


def test_create_api_key_prints_a_working_key_alone_on_the_last_line():
    out = io.StringIO()
    call_command("create_api_key", "orders-service", stdout=out, stderr=io.StringIO())

    key = out.getvalue().strip().splitlines()[-1]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    assert client.get("/api/notifications").status_code == 200
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}x")
    assert client.get("/api/notifications").status_code == 401


def _dead_letter(event, channel: str, age: timedelta) -> FailedDelivery:
    delivery = DeliveryFactory(
        notification__event=event, channel=channel, status=DeliveryStatus.FAILED
    )
    letter = FailedDelivery.objects.create(delivery=delivery, error_class="X", attempts=1)
    FailedDelivery.objects.filter(pk=letter.pk).update(failed_at=timezone.now() - age)
    return letter


def test_replay_failed_by_channel_and_age(
    order_shipped, broker, django_capture_on_commit_callbacks
):
    recent_email = _dead_letter(order_shipped, "email", timedelta(minutes=10))
    old_email = _dead_letter(order_shipped, "email", timedelta(hours=3))
    recent_inapp = _dead_letter(order_shipped, "inapp", timedelta(minutes=10))

    out = io.StringIO()
    call_command("replay_failed", "--channel", "email", "--since", "1h", "--dry-run", stdout=out)
    assert "1 dead letters would be replayed" in out.getvalue()
    assert broker.queued(EMAIL.queue) == 0

    with django_capture_on_commit_callbacks(execute=True):
        call_command("replay_failed", "--channel", "email", "--since", "1h", stdout=out)
        call_command("replay_failed", "--channel", "email", "--since", "1h", stdout=out)

    assert broker.queued(EMAIL.queue) == 1
    assert Delivery.objects.get(pk=recent_email.delivery_id).status == DeliveryStatus.QUEUED
    assert Delivery.objects.get(pk=old_email.delivery_id).status == DeliveryStatus.FAILED
    assert Delivery.objects.get(pk=recent_inapp.delivery_id).status == DeliveryStatus.FAILED
    recent_email.refresh_from_db()
    assert recent_email.replayed_by == "manage.py replay_failed"


def test_replay_failed_rejects_a_bad_duration():
    with pytest.raises(CommandError, match="duration"):
        call_command("replay_failed", "--since", "yesterday")


def test_load_catalog_is_idempotent_and_keeps_admin_edits_unless_told():
    call_command("load_catalog", stdout=io.StringIO())
    call_command("load_catalog", stdout=io.StringIO())

    assert Category.objects.get(key="security").critical
    assert Event.objects.get(key="order_shipped").default_channels == ["email", "inapp", "push"]
    template = Template.objects.get(event__key="order_shipped", channel="email", locale="pt-BR")
    template.subject = "edited in admin"
    template.save()
    count = Template.objects.count()

    call_command("load_catalog", stdout=io.StringIO())
    template.refresh_from_db()
    assert template.subject == "edited in admin"

    call_command("load_catalog", "--overwrite", stdout=io.StringIO())
    template.refresh_from_db()
    assert template.subject == "Seu pedido {{ orderId }} foi enviado"
    assert template.version == 2
    assert Template.objects.count() == count


def test_shipped_templates_render_through_the_api(api_client):
    call_command("load_catalog", stdout=io.StringIO())
    recipient = RecipientFactory(locale="pt-BR")

    response = api_client.post(
        "/api/notify",
        {"userId": recipient.external_id, "event": "order_shipped", "data": {"orderId": "<9>"}},
        format="json",
    )

    assert response.status_code == 202
    email = Delivery.objects.get(notification_id=response.json()["id"], channel="email")
    assert email.content["subject"] == "Seu pedido <9> foi enviado"
    assert email.content["locale"] == "pt-BR"
    # The default-locale HTML (from the shipped layout) is not used for pt-BR: no html there.
    inapp = Delivery.objects.get(notification_id=response.json()["id"], channel="inapp")
    assert inapp.content["url"] == "/orders/<9>"
