"""What POST /api/notify renders into each delivery's content."""

from __future__ import annotations

import pytest

from channels.lanes import INAPP
from notifications.models import Delivery, Notification, Template
from tests.conftest import QUEUES
from tests.factories import EventFactory, PreferenceFactory, RecipientFactory, TemplateFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def notify(api_client, broker, django_capture_on_commit_callbacks):
    def call(recipient, event, data=None, channels=None):
        payload = {"userId": recipient.external_id, "event": event, "data": data or {}}
        if channels is not None:
            payload["channels"] = channels
        with django_capture_on_commit_callbacks(execute=True):
            return api_client.post("/api/notify", payload, format="json")

    return call


def content_of(response, channel):
    assert response.status_code == 202, response.json()
    return Delivery.objects.get(notification=response.json()["id"], channel=channel).content


def test_data_is_substituted_in_subject_and_body(notify):
    event = EventFactory(key="order_shipped", default_channels=["email"])
    template = TemplateFactory(
        event=event,
        channel="email",
        subject="Order {{ orderId }} shipped",
        body="Hi {{ recipient.id }}, order {{ data.orderId }} arrives {{ eta }}. ({{ event }})",
    )
    recipient = RecipientFactory(external_id="u-42")

    content = content_of(
        notify(recipient, "order_shipped", {"orderId": "9912", "eta": "today"}), "email"
    )

    assert content == {
        "subject": "Order 9912 shipped",
        "body": "Hi u-42, order 9912 arrives today. (order_shipped)",
        "templateId": str(template.pk),
        "templateVersion": "1",
        "locale": "",
    }


def test_nested_data_and_url(notify):
    event = EventFactory(key="comment_added", default_channels=["inapp"])
    TemplateFactory(
        event=event,
        channel="inapp",
        subject="{{ author.name }} replied",
        body="{{ comment|truncatechars:8 }}",
        url="https://example.com/c/{{ commentId }}",
    )
    recipient = RecipientFactory()

    content = content_of(
        notify(
            recipient,
            "comment_added",
            {"author": {"name": "Ana"}, "comment": "A very long comment", "commentId": 7},
        ),
        "inapp",
    )

    assert content["subject"] == "Ana replied"
    assert content["body"] == "A very …"
    assert content["url"] == "https://example.com/c/7"


def test_notification_id_is_available_to_templates(notify):
    event = EventFactory(key="order_shipped", default_channels=["inapp"])
    TemplateFactory(event=event, channel="inapp", body="ref {{ notification_id }}")

    response = notify(RecipientFactory(), "order_shipped")

    assert content_of(response, "inapp")["body"] == f"ref {response.json()['id']}"


@pytest.fixture
def localized_event():
    event = EventFactory(key="welcome", default_channels=["email"])
    for locale, text in [("", "Welcome"), ("pt", "Bem-vindo"), ("pt-BR", "Bem-vindo, BR")]:
        TemplateFactory(event=event, channel="email", locale=locale, subject=text, body=text)
    TemplateFactory(event=event, channel="inapp", locale="pt-PT", subject="PT only", body="x")
    return event


@pytest.mark.parametrize(
    ("recipient_locale", "template_locale", "subject"),
    [
        ("pt-BR", "pt-BR", "Bem-vindo, BR"),
        ("pt_br", "pt-BR", "Bem-vindo, BR"),
        ("pt", "pt", "Bem-vindo"),
        ("pt-PT", "pt", "Bem-vindo"),
        ("fr", "", "Welcome"),
        ("fr-CA", "", "Welcome"),
        ("", "", "Welcome"),
    ],
)
def test_locale_falls_back_from_region_to_language_to_default(
    notify, localized_event, recipient_locale, template_locale, subject
):
    recipient = RecipientFactory(locale=recipient_locale)

    content = content_of(notify(recipient, "welcome"), "email")

    assert content["locale"] == template_locale
    assert content["subject"] == subject
    assert content["templateId"] == str(
        Template.objects.get(event=localized_event, channel="email", locale=template_locale).pk
    )


def test_each_channel_picks_its_own_locale(notify, localized_event):
    recipient = RecipientFactory(locale="pt-PT")

    response = notify(recipient, "welcome", channels=["email", "inapp"])

    assert content_of(response, "email")["locale"] == "pt"
    assert content_of(response, "inapp")["locale"] == "pt-PT"


def test_html_body_escapes_data_and_text_body_does_not(notify):
    event = EventFactory(key="greeting", default_channels=["email"])
    TemplateFactory(
        event=event,
        channel="email",
        subject="Hello {{ name }}",
        body="Hello {{ name }}",
        html_body="<p>Hello {{ name }}</p>",
    )
    recipient = RecipientFactory()

    content = content_of(notify(recipient, "greeting", {"name": "<b>Tom & Jerry</b>"}), "email")

    assert content["html"] == "<p>Hello &lt;b&gt;Tom &amp; Jerry&lt;/b&gt;</p>"
    assert content["body"] == "Hello <b>Tom & Jerry</b>"
    assert content["subject"] == "Hello <b>Tom & Jerry</b>"


def test_template_syntax_error_is_a_422_and_writes_nothing(
    api_client, broker, django_capture_on_commit_callbacks
):
    event = EventFactory(key="broken", default_channels=["email", "inapp"])
    TemplateFactory(event=event, channel="inapp", body="fine")
    TemplateFactory(event=event, channel="email", body="Hello {% if name %}")
    recipient = RecipientFactory()

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = api_client.post(
            "/api/notify", {"userId": recipient.external_id, "event": "broken"}, format="json"
        )

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "template_error"
    assert "broken/email" in error["message"]
    assert callbacks == []
    assert not Notification.objects.exists()
    assert not Delivery.objects.exists()
    assert all(broker.queued(queue) == 0 for queue in QUEUES)


def test_html_template_syntax_error_is_a_422(api_client, broker):
    event = EventFactory(key="broken_html", default_channels=["email"])
    TemplateFactory(event=event, channel="email", body="ok", html_body="<p>{{ name|nofilter }}</p>")
    recipient = RecipientFactory()

    response = api_client.post(
        "/api/notify", {"userId": recipient.external_id, "event": "broken_html"}, format="json"
    )

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "template_error"
    assert not Notification.objects.exists()


def test_broken_template_of_a_skipped_channel_is_not_rendered(notify, broker):
    event = EventFactory(key="broken", default_channels=["email", "inapp"])
    TemplateFactory(event=event, channel="inapp", body="fine")
    TemplateFactory(event=event, channel="email", body="Hello {% if name %}")
    recipient = RecipientFactory()
    PreferenceFactory(recipient=recipient, channel="email", enabled=False)

    response = notify(recipient, "broken")

    assert response.status_code == 202
    assert response.json()["deliveries"] == [
        {"channel": "email", "status": "skipped", "reason": "opted_out"},
        {"channel": "inapp", "status": "queued"},
    ]
    assert broker.queued(INAPP.queue) == 1


@pytest.mark.parametrize(
    "body",
    ['{% include "no/such/partial.txt" %}', '{% extends "no/such/layout.html" %}'],
    ids=["include", "extends"],
)
def test_template_naming_a_missing_file_is_a_422(api_client, broker, body):
    # Parsing succeeds (the admin accepts it); the missing file only shows when rendering.
    event = EventFactory(key="dangling", default_channels=["email"])
    TemplateFactory(event=event, channel="email", body=body)
    recipient = RecipientFactory()

    response = api_client.post(
        "/api/notify", {"userId": recipient.external_id, "event": "dangling"}, format="json"
    )

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "template_error"
    assert not Notification.objects.exists()
