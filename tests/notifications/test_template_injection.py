"""A caller's data and a recipient's fields are template context, never template code."""

from __future__ import annotations

import pytest

from notifications.models import Delivery
from tests.factories import EventFactory, RecipientFactory, TemplateFactory

pytestmark = pytest.mark.django_db

HOSTILE = [
    "{{ settings.SECRET_KEY }}",
    "{% debug %}",
    "{% load static %}{% get_static_prefix %}",
    "{{ request.META }}",
    "{% include 'admin/base.html' %}",
    "{{ data.__class__ }}",
]


@pytest.fixture
def greeting(db):
    event = EventFactory(key="greeting", default_channels=["email", "inapp"])
    for channel in ("email", "inapp"):
        TemplateFactory(
            event=event,
            channel=channel,
            subject="Hello {{ name }}",
            body="Hi {{ name }}, {{ recipient.email }} ({{ data.note }})",
            html_body="<p>Hi {{ name }}</p><p>{{ recipient.email }}</p>"
            if channel == "email"
            else "",
        )
    return event


def _contents(api_client, recipient, data: dict) -> dict[str, dict]:
    response = api_client.post(
        "/api/notify",
        {"userId": recipient.external_id, "event": "greeting", "data": data},
        format="json",
    )
    assert response.status_code == 202, response.content
    deliveries = Delivery.objects.filter(notification=response.json()["id"])
    return {d.channel: d.content for d in deliveries}


@pytest.mark.parametrize("value", HOSTILE)
def test_template_syntax_in_data_arrives_as_text(api_client, greeting, settings, value):
    contents = _contents(api_client, RecipientFactory(), {"name": value, "note": value})

    for channel in ("email", "inapp"):
        assert contents[channel]["subject"] == f"Hello {value}"
        assert contents[channel]["body"].startswith(f"Hi {value}, ")
        assert contents[channel]["body"].endswith(f"({value})")
        assert settings.SECRET_KEY not in str(contents[channel])


def test_markup_in_data_is_escaped_in_html_email_only(api_client, greeting):
    script = "<script>alert(document.cookie)</script>"

    contents = _contents(api_client, RecipientFactory(), {"name": script, "note": "x"})

    assert contents["email"]["html"].startswith(
        "<p>Hi &lt;script&gt;alert(document.cookie)&lt;/script&gt;</p>"
    )
    assert "<script>" not in contents["email"]["html"]
    # Plain text stays plain (an SMS shows "<" as "<"); the inbox's client renders it as text.
    assert contents["email"]["body"].startswith(f"Hi {script}, ")
    assert contents["inapp"]["body"].startswith(f"Hi {script}, ")


def test_a_recipients_own_fields_are_escaped_too(api_client, greeting):
    recipient = RecipientFactory(email='"<img src=x onerror=alert(1)>"@example.com')

    contents = _contents(api_client, recipient, {"name": "Ann", "note": "x"})

    assert "<img" not in contents["email"]["html"]
    assert "&lt;img src=x onerror=alert(1)&gt;" in contents["email"]["html"]


def test_data_cannot_replace_the_recipient_or_event_context(api_client, greeting):
    recipient = RecipientFactory(email="real@example.com")

    contents = _contents(
        api_client,
        recipient,
        {"name": "Ann", "note": "x", "recipient": {"email": "attacker@example.com"}},
    )

    assert "real@example.com" in contents["email"]["body"]
    assert "attacker@example.com" not in contents["email"]["body"]


def test_templates_do_not_see_settings(api_client, db, settings):
    event = EventFactory(key="leaky", default_channels=["email"])
    TemplateFactory(event=event, channel="email", subject="s", body="[{{ settings.SECRET_KEY }}]")
    response = api_client.post(
        "/api/notify",
        {"userId": RecipientFactory().external_id, "event": "leaky"},
        format="json",
    )

    content = Delivery.objects.get(notification=response.json()["id"]).content
    assert content["body"] == "[]"


def test_line_breaks_in_data_cannot_add_lines_to_a_subject(api_client, greeting):
    # A subject is one line everywhere (an email header, a push title, an inbox title);
    # "\r\nBcc: ..." from data must not become a second header line.
    contents = _contents(
        api_client, RecipientFactory(), {"name": "Ann\r\nBcc: victim@example.com", "note": "x"}
    )

    for channel in ("email", "inapp"):
        assert contents[channel]["subject"] == "Hello Ann Bcc: victim@example.com"
