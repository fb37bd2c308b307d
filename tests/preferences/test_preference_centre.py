"""The preference centre: a signed link opens the recipient's categories by channels, saving
writes the rules sending applies, critical categories stay on, and a bad link is a page."""

from __future__ import annotations

import re

import pytest
from django.core import signing
from django.test import Client
from rest_framework.test import APIClient

from preferences import access
from preferences.models import Preference, Recipient
from tests.factories import CategoryFactory, PreferenceFactory, RecipientFactory

pytestmark = pytest.mark.django_db


def centre_path(recipient: Recipient) -> str:
    url = access.preference_centre_url(
        recipient_id=recipient.pk, generation=recipient.token_generation
    )
    return url.removeprefix("http://testserver")


def checked(page: bytes) -> set[str]:
    return set(re.findall(rb'name="(allow:[^"]+)" checked', page))


def test_the_page_shows_each_category_and_channel_as_the_rules_allow(order_shipped):
    ana = RecipientFactory()
    orders = order_shipped.category
    PreferenceFactory(recipient=ana, category=orders, channel="sms", enabled=False)
    PreferenceFactory(recipient=ana, category=None, channel="push", enabled=False)

    page = Client().get(centre_path(ana))

    assert page.status_code == 200 and page["Cache-Control"] == "no-store"
    on = {name.decode() for name in checked(page.content)}
    assert on == {f"allow:{orders.pk}:email", f"allow:{orders.pk}:inapp"}
    assert b"<label>" in page.content and b"E-mail for orders" in page.content


def test_saving_turns_a_channel_off_and_the_next_notification_skips_it(order_shipped, api_client):
    ana = RecipientFactory(external_id="ana")
    orders = order_shipped.category
    client = Client(enforce_csrf_checks=True)  # the link is the authorization, not a cookie
    path = centre_path(ana)

    saved = client.post(
        path,
        {
            f"allow:{orders.pk}:inapp": "on",
            f"allow:{orders.pk}:sms": "on",
        },
    )

    assert saved.status_code == 200 and b'role="status"' in saved.content
    rules = {
        (p.category_id, p.channel): p.enabled for p in Preference.objects.filter(recipient=ana)
    }
    assert rules[(orders.pk, "email")] is False and rules[(orders.pk, "inapp")] is True
    sent = api_client.post(
        "/api/notify",
        {"userId": "ana", "event": "order_shipped", "channels": ["email", "inapp"]},
        format="json",
    ).json()
    reasons = {d["channel"]: d.get("reason") for d in sent["deliveries"]}
    assert reasons == {"email": "opted_out", "inapp": None}


def test_critical_categories_are_shown_on_and_locked_and_stay_so(order_shipped):
    security = CategoryFactory(key="security", name="Security", critical=True)
    ana = RecipientFactory()
    client = Client()

    page = client.get(centre_path(ana))
    client.post(centre_path(ana), {})  # everything unticked

    assert f'name="allow:{security.pk}:email" checked disabled'.encode() in page.content
    assert b"Always sent" in page.content
    assert not Preference.objects.filter(recipient=ana, category=security).exists()


def test_a_tampered_an_expired_or_a_revoked_link_gets_a_page_not_an_error(order_shipped, settings):
    ana = RecipientFactory()
    path = centre_path(ana)
    client = Client()

    assert client.get(path[:-3] + "abc").status_code == 400
    settings.NOTIFY_PREFERENCE_LINK_DAYS = 0  # every link is older than that
    expired = client.get(path)
    assert expired.status_code == 410 and b"expired" in expired.content
    settings.NOTIFY_PREFERENCE_LINK_DAYS = 30
    Recipient.objects.filter(pk=ana.pk).update(token_generation=ana.token_generation + 1)
    assert client.get(path).status_code == 410
    forged = signing.dumps({"r": ana.pk, "g": 1}, salt="another purpose")
    assert client.get(f"/preferences/{forged}").status_code == 400


def test_apps_get_the_link_with_a_token_and_from_the_inbox_api(api_client, order_shipped):
    RecipientFactory(external_id="ana")

    minted = api_client.post("/api/recipients/ana/tokens", {}, format="json").json()
    app = APIClient()
    app.credentials(HTTP_AUTHORIZATION=f"Bearer {minted['token']}")
    from_inbox = app.get("/api/inbox/preferences-link").json()["url"]

    for url in (minted["preferencesUrl"], from_inbox):
        assert Client().get(url.removeprefix("http://testserver")).status_code == 200
    assert APIClient().get("/api/inbox/preferences-link").status_code == 401
