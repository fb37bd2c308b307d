from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

import factory
from django.utils import timezone
from rest_framework_api_key.models import APIKey

from channels.base import Channel
from devtools.fakes.apns import device_token as apns_device_token
from notifications.models import Delivery, DeliveryStatus, InboxMessage, Notification, Template
from notifications.services.api_keys import ALL_SCOPES, api_key_create
from preferences.models import Category, Device, Event, Preference, Recipient


class CategoryFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Category
        django_get_or_create = ("key",)

    key = factory.Sequence(lambda n: f"category-{n}")
    critical = False


class EventFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Event
        django_get_or_create = ("key",)

    key = factory.Sequence(lambda n: f"event_{n}")
    category = factory.SubFactory(CategoryFactory)
    default_channels = factory.LazyFunction(lambda: [Channel.EMAIL, Channel.INAPP])


class TemplateFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Template

    event = factory.SubFactory(EventFactory)
    channel = Channel.EMAIL
    locale = ""
    subject = "Order {{ orderId }} shipped"
    body = "Your order {{ orderId }} is on its way."


class RecipientFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Recipient

    external_id = factory.Sequence(lambda n: f"user-{n}")
    email = factory.LazyAttribute(lambda r: f"{r.external_id}@example.com")
    phone = "+14155550100"
    locale = "en"


class DeviceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Device

    recipient = factory.SubFactory(RecipientFactory)
    platform = Device.Platform.FCM
    # Valid for the platform (preferences/tokens.py), and answered 200 by the fakes: an APNs
    # token starts with the APNs fake's "good" prefix (devtools/fakes/apns.py).
    token = factory.LazyAttributeSequence(
        lambda device, n: (
            apns_device_token(tail=f"{n:x}")
            if device.platform == Device.Platform.APNS
            else f"fcm-token-{n}"
        )
    )


class PreferenceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Preference

    recipient = factory.SubFactory(RecipientFactory)
    category = None
    channel = None
    enabled = False


class NotificationFactory(factory.django.DjangoModelFactory):
    """A notification as if accepted: its own API key, the recipient's user id."""

    class Meta:
        model = Notification

    api_key = factory.LazyFunction(lambda: create_api_key()[0])
    recipient = factory.SubFactory(RecipientFactory)
    external_user_id = factory.LazyAttribute(lambda n: n.recipient.external_id)
    event = factory.SubFactory(EventFactory)
    request_fingerprint = "x"


class DeliveryFactory(factory.django.DjangoModelFactory):
    """A delivery waiting for its task: queued, leased for a few minutes, content rendered.

    Made in another status (sending, sent, failed) it has no lease unless given one.
    """

    class Meta:
        model = Delivery

    notification = factory.SubFactory(NotificationFactory)
    channel = Channel.EMAIL
    status = DeliveryStatus.QUEUED
    content = factory.LazyFunction(lambda: {"subject": "Hi", "body": "Body"})
    lease_until = factory.LazyAttribute(
        lambda d: (
            timezone.now() + timedelta(minutes=5) if d.status == DeliveryStatus.QUEUED else None
        )
    )


def create_api_key(
    name: str = "tests", scopes: Iterable[str] = ALL_SCOPES, rate_limit: str = ""
) -> tuple[APIKey, str]:
    """A key with every scope unless told otherwise, as `manage.py create_api_key` makes."""
    return api_key_create(name=name, scopes=scopes, rate_limit=rate_limit)


class InboxMessageFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = InboxMessage

    recipient = factory.SubFactory(RecipientFactory)
    title = factory.Sequence(lambda n: f"Message {n}")
    body = "Your order is on its way."
    url = "https://shop.example.com/orders/1"
    category = "orders"
    data = factory.LazyFunction(lambda: {"orderId": "1"})
