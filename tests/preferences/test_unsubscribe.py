"""One-click unsubscribe (RFC 8058): the link an e-mail carries opts its recipient out of the
e-mail's category, by the mail provider's POST or the page's button, and nothing else."""

from __future__ import annotations

import pytest
from django.core import signing
from rest_framework.test import APIClient

from notifications.models import Delivery
from notifications.services import engine
from preferences import access
from preferences.models import Preference
from tests.factories import DeliveryFactory, RecipientFactory

pytestmark = pytest.mark.django_db


def link_for(recipient, category: str = "orders") -> str:
    url = access.unsubscribe_url(recipient_id=recipient.pk, category=category, channel="email")
    return url.removeprefix("http://testserver")


def test_the_mail_providers_one_click_post_opts_out_of_that_category_on_email(
    order_shipped, api_client
):
    ana = RecipientFactory(external_id="ana")
    client = APIClient()

    response = client.post(
        link_for(ana),
        "List-Unsubscribe=One-Click",
        content_type="application/x-www-form-urlencoded",
    )

    assert response.status_code == 200
    assert b"You are unsubscribed" in response.content
    (rule,) = Preference.objects.filter(recipient=ana)
    assert (rule.category.key, rule.channel, rule.enabled) == ("orders", "email", False)
    # The next notification of the category skips e-mail and keeps in-app.
    sent = api_client.post(
        "/api/notify",
        {"userId": "ana", "event": "order_shipped", "channels": ["email", "inapp"]},
        format="json",
    ).json()
    assert {d["channel"]: d.get("reason") for d in sent["deliveries"]} == {
        "email": "opted_out",
        "inapp": None,
    }


def test_get_shows_a_confirmation_page_and_changes_nothing(order_shipped):
    ana = RecipientFactory()

    page = APIClient().get(link_for(ana))

    assert page.status_code == 200
    assert page["Content-Type"].startswith("text/html")
    assert b'<form method="post">' in page.content
    assert b'<button type="submit">' in page.content
    assert page["Referrer-Policy"] == "no-referrer"
    assert not Preference.objects.exists()


def test_twice_is_the_same_as_once_and_an_opt_in_is_turned_off(order_shipped):
    ana = RecipientFactory()
    Preference.objects.create(
        recipient=ana, category=order_shipped.category, channel="email", enabled=True
    )
    client = APIClient()

    assert client.post(link_for(ana)).status_code == 200
    assert client.post(link_for(ana)).status_code == 200

    (rule,) = Preference.objects.filter(recipient=ana)
    assert rule.enabled is False


def test_a_tampered_or_foreign_link_is_a_clear_400_page(order_shipped):
    ana = RecipientFactory()
    good = link_for(ana)
    forged = signing.dumps({"r": ana.pk, "k": "orders", "c": "email"}, salt="another")

    for path in (good[:-2] + "xx", f"/unsubscribe/{forged}", "/unsubscribe/nonsense"):
        response = APIClient().post(path)
        assert response.status_code == 400, path
        assert b"This link does not work" in response.content
        assert b"Traceback" not in response.content
    assert not Preference.objects.exists()


def test_an_expired_link_is_a_410_page(order_shipped, settings):
    ana = RecipientFactory()
    path = link_for(ana)
    settings.NOTIFY_UNSUBSCRIBE_LINK_DAYS = 0  # every link is older than that

    response = APIClient().post(path)

    assert response.status_code == 410
    assert b"This link has expired" in response.content
    assert not Preference.objects.exists()


def test_a_link_to_an_erased_recipient_changes_nothing(order_shipped, api_client):
    ana = RecipientFactory(external_id="ana")
    path = link_for(ana)
    api_client.delete("/api/recipients/ana")

    response = APIClient().post(path)

    assert response.status_code == 410
    assert not Preference.objects.exists()


def test_only_non_critical_email_carries_a_link(order_shipped, security_code):
    ana = RecipientFactory()
    orders = DeliveryFactory(notification__recipient=ana, notification__event=order_shipped)
    codes = DeliveryFactory(notification__recipient=ana, notification__event=security_code)
    inapp = DeliveryFactory(
        notification__recipient=ana, notification__event=order_shipped, channel="inapp"
    )

    messages = {
        d.pk: engine.decide(claimed)
        for d in (orders, codes, inapp)
        for claimed in engine.claim_and_load([d.pk], lease_seconds=60)
    }

    assert messages[orders.pk].unsubscribe_url.startswith("http://testserver/unsubscribe/")
    assert messages[codes.pk].unsubscribe_url == ""
    assert messages[inapp.pk].unsubscribe_url == ""
    assert Delivery.objects.filter(status="sending").count() == 3


def test_no_public_url_no_link(order_shipped, settings):
    settings.NOTIFY_PUBLIC_URL = ""
    ana = RecipientFactory()

    assert access.unsubscribe_url(recipient_id=ana.pk, category="orders", channel="email") == ""
