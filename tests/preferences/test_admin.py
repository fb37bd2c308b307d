from __future__ import annotations

import pytest
from django.urls import reverse

from preferences.models import Device, Recipient
from tests.factories import (
    CategoryFactory,
    DeviceFactory,
    EventFactory,
    PreferenceFactory,
    RecipientFactory,
)

pytestmark = pytest.mark.django_db


def _result_pks(response) -> set:
    return {obj.pk for obj in response.context["cl"].result_list}


def test_recipient_changelist_lists_and_searches(admin_client):
    alice = RecipientFactory(external_id="alice", email="alice@example.com")
    bob = RecipientFactory(external_id="bob", email="bob@example.com", phone="+14155550199")
    url = reverse("admin:preferences_recipient_changelist")

    response = admin_client.get(url)
    assert response.status_code == 200
    assert _result_pks(response) == {alice.pk, bob.pk}
    assert b"alice@example.com" in response.content

    assert _result_pks(admin_client.get(url, {"q": "alice"})) == {alice.pk}
    assert _result_pks(admin_client.get(url, {"q": "bob@example"})) == {bob.pk}
    assert _result_pks(admin_client.get(url, {"q": "5550199"})) == {bob.pk}


def test_recipient_change_page_shows_devices_and_preferences_inline(admin_client):
    recipient = RecipientFactory()
    DeviceFactory(recipient=recipient, token="tok-inline")
    PreferenceFactory(recipient=recipient, category=CategoryFactory(key="marketing"))

    response = admin_client.get(reverse("admin:preferences_recipient_change", args=[recipient.pk]))

    assert response.status_code == 200
    assert b"tok-inline" in response.content
    formsets = {f.formset.prefix: f for f in response.context["inline_admin_formsets"]}
    assert formsets["devices"].formset.queryset.count() == 1
    assert formsets["preferences"].formset.queryset.count() == 1


def _add_carol_with_a_device(admin_client, platform, token):
    return admin_client.post(
        reverse("admin:preferences_recipient_add"),
        {
            "external_id": "carol",
            "email": "carol@example.com",
            "phone": "",
            "locale": "fr",
            "timezone": "",
            "devices-TOTAL_FORMS": "1",
            "devices-INITIAL_FORMS": "0",
            "devices-0-platform": platform,
            "devices-0-token": token,
            "devices-0-active": "on",
            "preferences-TOTAL_FORMS": "0",
            "preferences-INITIAL_FORMS": "0",
        },
    )


def test_recipient_add_saves_with_an_inline_device(admin_client):
    response = _add_carol_with_a_device(admin_client, "apns", "C0FFEE" * 10 + "ABCD")

    assert response.status_code == 302, response.context["errors"] if response.context else ""
    carol = Recipient.objects.get(external_id="carol")
    # APNs tokens are stored in lower case, whoever registers them (preferences/tokens.py).
    assert list(carol.devices.values_list("token", flat=True)) == ["c0ffee" * 10 + "abcd"]


@pytest.mark.parametrize(
    ("platform", "token"), [("apns", "carol-token"), ("apns", "abc/def"), ("fcm", "a b")]
)
def test_the_admin_refuses_a_token_its_platform_cannot_have(admin_client, platform, token):
    response = _add_carol_with_a_device(admin_client, platform, token)

    assert response.status_code == 200  # the form again, with the error
    (errors,) = [form.errors for form in response.context["inline_admin_formsets"][0].formset]
    assert "token" in errors
    assert not Recipient.objects.filter(external_id="carol").exists()


def test_device_changelist_filters_and_searches(admin_client):
    alice = RecipientFactory(external_id="alice")
    active_fcm = DeviceFactory(recipient=alice, platform=Device.Platform.FCM, token="fcm-1")
    dead_apns = DeviceFactory(
        recipient=RecipientFactory(external_id="bob"),
        platform=Device.Platform.APNS,
        token="600d" + "0" * 59 + "1",
        active=False,
    )
    url = reverse("admin:preferences_device_changelist")

    response = admin_client.get(url)
    assert response.status_code == 200
    assert _result_pks(response) == {active_fcm.pk, dead_apns.pk}

    assert _result_pks(admin_client.get(url, {"platform__exact": "apns"})) == {dead_apns.pk}
    assert _result_pks(admin_client.get(url, {"active__exact": "1"})) == {active_fcm.pk}
    assert _result_pks(admin_client.get(url, {"q": "600d000"})) == {dead_apns.pk}
    assert _result_pks(admin_client.get(url, {"q": "alice"})) == {active_fcm.pk}


def test_category_changelist(admin_client):
    orders = CategoryFactory(key="orders", name="Orders")
    security = CategoryFactory(key="security", critical=True)
    url = reverse("admin:preferences_category_changelist")

    response = admin_client.get(url)
    assert response.status_code == 200
    assert _result_pks(response) == {orders.pk, security.pk}
    assert _result_pks(admin_client.get(url, {"critical__exact": "1"})) == {security.pk}
    assert _result_pks(admin_client.get(url, {"q": "ord"})) == {orders.pk}


def test_event_changelist(admin_client):
    shipped = EventFactory(key="order_shipped", category=CategoryFactory(key="orders"))
    code = EventFactory(key="login_code", category=CategoryFactory(key="security"))
    url = reverse("admin:preferences_event_changelist")

    response = admin_client.get(url)
    assert response.status_code == 200
    assert _result_pks(response) == {shipped.pk, code.pk}
    assert _result_pks(admin_client.get(url, {"q": "login"})) == {code.pk}
    assert _result_pks(admin_client.get(url, {"category__id__exact": shipped.category_id})) == {
        shipped.pk
    }


def test_suppression_admin_lists_and_normalises(admin_client):
    response = admin_client.post(
        "/admin/preferences/suppression/add/",
        {"channel": "email", "address": " Who@Example.COM ", "reason": "manual"},
    )
    assert response.status_code == 302
    listed = admin_client.get("/admin/preferences/suppression/", {"q": "who@example.com"})
    assert listed.status_code == 200
    assert b"who@example.com" in listed.content
