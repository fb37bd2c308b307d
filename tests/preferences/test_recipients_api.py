"""PUT, GET and DELETE /api/recipients/{userId}."""

from __future__ import annotations

import pytest

from notifications.models import Delivery, InboxMessage, Notification
from notifications.services import delivery_send
from preferences.models import Device, Preference, Recipient
from tests.factories import DeviceFactory, PreferenceFactory, RecipientFactory

pytestmark = pytest.mark.django_db

FULL = {
    "email": "ana@example.com",
    "phone": "+351912345678",
    "locale": "pt-PT",
    "timezone": "Europe/Lisbon",
}


def put(client, user_id, body):
    return client.put(f"/api/recipients/{user_id}", body, format="json")


def assert_error(response, status, code):
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    return error


def test_put_creates_then_get_returns_it(api_client):
    created = put(api_client, "u-42", FULL)

    assert created.status_code == 201
    body = created.json()
    assert {k: body[k] for k in ("userId", *FULL)} == {"userId": "u-42", **FULL}
    assert body["createdAt"] and body["updatedAt"]
    recipient = Recipient.objects.get(external_id="u-42")
    assert recipient.email == "ana@example.com"
    assert str(recipient.phone) == "+351912345678"

    fetched = api_client.get("/api/recipients/u-42")
    assert fetched.status_code == 200
    assert fetched.json() == body


def test_put_again_replaces_and_clears_omitted_fields(api_client):
    put(api_client, "u-42", FULL)

    replaced = put(api_client, "u-42", {"email": "new@example.com"})

    assert replaced.status_code == 200
    body = replaced.json()
    assert body["email"] == "new@example.com"
    assert body["phone"] is None
    assert body["locale"] == ""
    assert body["timezone"] == ""
    assert Recipient.objects.count() == 1
    assert api_client.get("/api/recipients/u-42").json() == body


def test_put_with_an_empty_body_clears_everything(api_client):
    put(api_client, "u-42", FULL)

    response = put(api_client, "u-42", {})

    assert response.status_code == 200
    assert {k: response.json()[k] for k in FULL} == {
        "email": None,
        "phone": None,
        "locale": "",
        "timezone": "",
    }


@pytest.mark.parametrize("blank", [None, ""])
def test_blank_or_null_contact_fields_are_stored_as_absent(api_client, blank):
    response = put(api_client, "u-42", {"email": blank, "phone": blank})

    assert response.status_code == 201
    assert response.json()["email"] is None
    assert response.json()["phone"] is None
    recipient = Recipient.objects.get(external_id="u-42")
    assert recipient.email is None
    assert recipient.phone is None


def test_readonly_fields_in_the_body_are_ignored(api_client):
    response = put(api_client, "u-42", {"userId": "someone-else", "email": "a@example.com"})

    assert response.status_code == 201
    assert response.json()["userId"] == "u-42"
    assert not Recipient.objects.filter(external_id="someone-else").exists()


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("pt_br", "pt-BR"),
        ("PT-br", "pt-BR"),
        ("en", "en"),
        ("zh_hant_tw", "zh-Hant-TW"),
        ("", ""),
    ],
)
def test_locale_is_canonicalised(api_client, given, stored):
    response = put(api_client, "u-42", {"locale": given})

    assert response.status_code == 201
    assert response.json()["locale"] == stored
    assert Recipient.objects.get(external_id="u-42").locale == stored


def test_phone_is_stored_in_e164(api_client):
    response = put(api_client, "u-42", {"phone": "+1 (415) 555-0100"})

    assert response.status_code == 201
    assert response.json()["phone"] == "+14155550100"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "not-an-email"}, "email"),
        ({"email": "ana@"}, "email"),
        ({"phone": "4155550100"}, "phone"),
        ({"phone": "+1 555"}, "phone"),
        ({"phone": "call me"}, "phone"),
        ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"timezone": "utc+1"}, "timezone"),
        ({"timezone": 1}, "timezone"),
        ({"locale": "english!"}, "locale"),
        ({"locale": "e"}, "locale"),
        ({"locale": 7}, "locale"),
        ({"nickname": "ana"}, "nickname"),
    ],
)
def test_invalid_profile(api_client, body, field):
    error = assert_error(put(api_client, "u-42", body), 400, "validation_error")

    assert set(error["fields"]) == {field}
    assert not Recipient.objects.exists()


def test_invalid_put_leaves_the_existing_profile_alone(api_client):
    put(api_client, "u-42", FULL)

    assert_error(put(api_client, "u-42", {"email": "nope"}), 400, "validation_error")

    assert Recipient.objects.get(external_id="u-42").email == FULL["email"]


def test_put_with_a_json_array_body(api_client):
    response = api_client.put("/api/recipients/u-42", "[]", content_type="application/json")
    assert_error(response, 400, "validation_error")


def test_user_id_over_255_characters(api_client):
    # The userId rule, as in a body (it was a 404).
    error = assert_error(put(api_client, "u" * 256, FULL), 400, "validation_error")
    assert set(error["fields"]) == {"userId"}
    assert not Recipient.objects.exists()


def test_get_unknown_recipient(api_client):
    assert_error(api_client.get("/api/recipients/nobody"), 404, "recipient_not_found")


def test_delete_unknown_recipient(api_client):
    assert_error(api_client.delete("/api/recipients/nobody"), 404, "recipient_not_found")


def test_recipients_need_an_api_key(client, db):
    response = client.put("/api/recipients/u-42", FULL, content_type="application/json")
    assert_error(response, 401, "unauthorized")
    assert not Recipient.objects.exists()


def test_delete_erases_personal_data_and_keeps_an_anonymous_log(api_client, order_shipped):
    recipient = RecipientFactory(external_id="u-42")
    other = RecipientFactory(external_id="u-43")
    DeviceFactory.create_batch(2, recipient=recipient)
    PreferenceFactory(recipient=recipient, channel="sms", enabled=False)
    other_device = DeviceFactory(recipient=other)
    response = api_client.post(
        "/api/notify",
        {"userId": "u-42", "event": "order_shipped", "data": {"orderId": "9"}},
        format="json",
    )
    notification_id = response.json()["id"]
    delivery_send(
        delivery_id=Delivery.objects.get(notification=notification_id, channel="inapp").pk
    )
    assert InboxMessage.objects.filter(recipient=recipient).count() == 1
    kept = api_client.post(
        "/api/notify",
        {"userId": "u-43", "event": "order_shipped", "data": {"orderId": "10"}},
        format="json",
    ).json()["id"]

    erased = api_client.delete("/api/recipients/u-42")

    assert erased.status_code == 204
    assert not Recipient.objects.filter(external_id="u-42").exists()
    assert not Device.objects.filter(recipient_id=recipient.pk).exists()
    assert not Preference.objects.filter(recipient_id=recipient.pk).exists()
    assert not InboxMessage.objects.filter(recipient_id=recipient.pk).exists()

    notification = Notification.objects.get(pk=notification_id)
    assert notification.recipient_id is None
    assert notification.external_user_id == ""
    assert notification.data == {}
    assert notification.accept_response == response.json()  # id and statuses only
    assert notification.event_id == order_shipped.pk
    deliveries = list(notification.deliveries.order_by("channel"))
    assert [(d.channel, d.status) for d in deliveries] == [("email", "queued"), ("inapp", "sent")]
    assert all(d.content == {} for d in deliveries)

    detail = api_client.get(f"/api/notifications/{notification_id}").json()
    assert detail["userId"] == ""
    assert detail["data"] == {}
    assert {d["channel"]: d["status"] for d in detail["deliveries"]} == {
        "email": "queued",
        "inapp": "sent",
    }
    listed = api_client.get("/api/notifications?userId=u-42").json()["results"]
    assert listed == []
    assert api_client.get("/api/recipients/u-42").status_code == 404

    # Nobody else's data went with it.
    assert Device.objects.filter(pk=other_device.pk).exists()
    kept_row = Notification.objects.get(pk=kept)
    assert kept_row.data == {"orderId": "10"}
    assert kept_row.deliveries.get(channel="email").content["subject"] == "Order 10 shipped"
    assert [
        n["id"] for n in api_client.get("/api/notifications?userId=u-43").json()["results"]
    ] == [kept]


def test_a_new_recipient_with_an_erased_user_id_starts_clean(api_client, order_shipped):
    RecipientFactory(external_id="u-42")
    api_client.post("/api/notify", {"userId": "u-42", "event": "order_shipped"}, format="json")
    api_client.delete("/api/recipients/u-42")

    response = put(api_client, "u-42", {"email": "fresh@example.com"})

    assert response.status_code == 201
    assert api_client.get("/api/notifications?userId=u-42").json()["results"] == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/recipients/a%00b"),
        ("put", "/api/recipients/a%00b"),
        ("delete", "/api/recipients/a%00b"),
        ("get", "/api/recipients/a%00b/devices"),
        ("post", "/api/recipients/a%00b/devices"),
        ("get", "/api/recipients/a%00b/preferences"),
        ("put", "/api/recipients/a%00b/preferences"),
    ],
)
def test_user_id_with_a_nul_character_is_refused(api_client, method, path):
    # PostgreSQL cannot even compare text with NUL in it: this used to be a 500, then a 404;
    # now the userId rule answers, as for a userId in a body.
    response = getattr(api_client, method)(path, {}, format="json")

    error = assert_error(response, 400, "validation_error")
    assert set(error["fields"]) == {"userId"}
    assert not Recipient.objects.exists()


def test_an_idempotent_retry_after_erasure_still_gets_the_original_answer(
    api_client, order_shipped
):
    RecipientFactory(external_id="u-44")
    request = {"userId": "u-44", "event": "order_shipped", "idempotencyKey": "k-44"}
    first = api_client.post("/api/notify", request, format="json")
    assert api_client.delete("/api/recipients/u-44").status_code == 204

    retry = api_client.post("/api/notify", request, format="json")

    assert retry.status_code == 200
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.json() == first.json()
    # Without the key the user is simply unknown now.
    fresh = {**request, "idempotencyKey": "k-45"}
    assert api_client.post("/api/notify", fresh, format="json").status_code == 404


def test_erasure_scrubs_provider_texts_tokens_and_dead_letters(api_client, order_shipped):
    from notifications.models import FailedDelivery

    recipient = RecipientFactory(external_id="u-46", email="ana@example.com")
    accepted = api_client.post(
        "/api/notify", {"userId": "u-46", "event": "order_shipped"}, format="json"
    ).json()
    email = Delivery.objects.get(notification_id=accepted["id"], channel="email")
    Delivery.objects.filter(pk=email.pk).update(
        status="failed",
        results={"token-1": {"status": "dead", "error": "410"}},
        last_error="550 <ana@example.com> unknown",
        history=[
            {"status": "queued", "at": "t0", "attempt": 0},
            {"status": "failed", "at": "t1", "attempt": 1, "error": "550 <ana@example.com>"},
        ],
    )
    FailedDelivery.objects.create(
        delivery=email, error_class="X", error_message="550 <ana@example.com>", traceback="tb"
    )

    assert api_client.delete("/api/recipients/u-46").status_code == 204

    email.refresh_from_db()
    assert (email.results, email.last_error, email.content) == ({}, "", {})
    assert email.history == [
        {"status": "queued", "at": "t0", "attempt": 0},
        {"status": "failed", "at": "t1", "attempt": 1},
    ]
    letter = FailedDelivery.objects.get(delivery=email)
    assert (letter.error_message, letter.traceback) == ("", "")
    assert recipient.email not in str(api_client.get(f"/api/notifications/{accepted['id']}").json())
