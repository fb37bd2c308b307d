"""POST/GET /api/recipients/{userId}/devices and DELETE /api/recipients/{userId}/devices/{id}."""

from __future__ import annotations

import pytest
from django.utils import timezone

from channels.lanes import PUSH
from preferences.models import Device
from tests.factories import DeviceFactory, RecipientFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def ana():
    return RecipientFactory(external_id="ana")


@pytest.fixture
def bob():
    return RecipientFactory(external_id="bob")


def register(client, user_id, platform="fcm", token="tok-1"):
    return client.post(
        f"/api/recipients/{user_id}/devices", {"platform": platform, "token": token}, format="json"
    )


def assert_error(response, status, code):
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["code"] == code
    return error


def test_register_a_new_token(api_client, ana):
    response = register(api_client, "ana", platform="apns", token="a" * 64)

    assert response.status_code == 201
    body = response.json()
    assert body["platform"] == "apns"
    assert body["token"] == "a" * 64
    assert body["active"] is True
    assert body["deactivatedAt"] is None
    assert body["deactivationReason"] == ""
    device = Device.objects.get(pk=body["id"])
    assert device.recipient == ana
    assert device.active


def test_registering_the_same_token_again_returns_the_same_device(api_client, ana):
    first = register(api_client, "ana")

    again = register(api_client, "ana")

    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert Device.objects.count() == 1


def test_the_same_token_on_another_platform_is_another_device(api_client, ana):
    fcm = register(api_client, "ana", platform="fcm", token="ab" * 32)
    apns = register(api_client, "ana", platform="apns", token="ab" * 32)

    assert fcm.status_code == apns.status_code == 201
    assert fcm.json()["id"] != apns.json()["id"]


def test_a_token_moves_to_its_newest_owner(api_client, ana, bob):
    device = DeviceFactory(recipient=bob, token="shared-phone")

    response = register(api_client, "ana", token="shared-phone")

    assert response.status_code == 200
    assert response.json()["id"] == device.pk
    device.refresh_from_db()
    assert device.recipient == ana
    assert api_client.get("/api/recipients/bob/devices").json()["results"] == []
    listed = api_client.get("/api/recipients/ana/devices").json()["results"]
    assert [d["id"] for d in listed] == [device.pk]


def test_registering_an_inactive_token_reactivates_it(api_client, ana):
    device = DeviceFactory(
        recipient=ana,
        token="revived",
        active=False,
        deactivated_at=timezone.now(),
        deactivation_reason="FCM UNREGISTERED",
    )

    response = register(api_client, "ana", token="revived")

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == device.pk
    assert body["active"] is True
    assert body["deactivatedAt"] is None
    assert body["deactivationReason"] == ""
    device.refresh_from_db()
    assert device.active
    assert device.deactivated_at is None


def test_list_devices(api_client, ana, bob):
    mine = [DeviceFactory(recipient=ana), DeviceFactory(recipient=ana, active=False)]
    DeviceFactory(recipient=bob)

    response = api_client.get("/api/recipients/ana/devices")

    assert response.status_code == 200
    assert [(d["id"], d["active"]) for d in response.json()["results"]] == [
        (mine[0].pk, True),
        (mine[1].pk, False),
    ]
    assert response.json()["next"] is None


def _all_pages(client, url):
    """Every device the list shows, following its ``next`` links."""
    seen, pages = [], 0
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.content
        seen.extend(response.json()["results"])
        url, pages = response.json()["next"], pages + 1
    return seen, pages


def test_the_list_pages_through_every_device_instead_of_cutting_it(api_client, ana, settings):
    # Inactive devices are kept (dead tokens, replaced ones): a recipient can have any number.
    devices = DeviceFactory.create_batch(1_050, recipient=ana, active=False)

    seen, pages = _all_pages(api_client, "/api/recipients/ana/devices?pageSize=500")

    assert [d["id"] for d in seen] == [d.pk for d in devices]  # each once, in order
    assert pages == 3


def test_a_forged_device_cursor_is_a_400(api_client, ana):
    response = api_client.get("/api/recipients/ana/devices?cursor=!!!!")
    assert_error(response, 400, "validation_error")


def test_the_newest_registration_replaces_the_oldest_device_beyond_the_cap(
    api_client, ana, settings
):
    settings.NOTIFY_MAX_DEVICES_PER_RECIPIENT = 3
    for n in range(3):
        assert register(api_client, "ana", token=f"tok-{n}").status_code == 201
    register(api_client, "ana", token="tok-0")  # re-registered: now the newest

    fourth = register(api_client, "ana", token="tok-3")

    assert fourth.status_code == 201
    listed = {
        d["token"]: d for d in api_client.get("/api/recipients/ana/devices").json()["results"]
    }
    assert [t for t, d in listed.items() if d["active"]] == ["tok-0", "tok-2", "tok-3"]
    replaced = listed["tok-1"]
    assert replaced["deactivationReason"] == "replaced: more than 3 devices"
    assert replaced["deactivatedAt"] is not None
    assert ana.devices.filter(active=True).count() == 3


def test_an_app_registering_on_every_launch_keeps_the_cap(api_client, ana, settings):
    settings.NOTIFY_MAX_DEVICES_PER_RECIPIENT = 20

    answers = [register(api_client, "ana", token=f"launch-{n}").status_code for n in range(60)]

    assert set(answers) == {201}
    active = ana.devices.filter(active=True).order_by("id")
    assert [d.token for d in active] == [f"launch-{n}" for n in range(40, 60)]
    assert ana.devices.filter(active=False).count() == 40


def test_a_replaced_device_registered_again_is_active_again(api_client, ana, settings):
    settings.NOTIFY_MAX_DEVICES_PER_RECIPIENT = 1
    register(api_client, "ana", token="old")
    register(api_client, "ana", token="new")

    again = register(api_client, "ana", token="old")

    assert again.status_code == 200 and again.json()["active"] is True
    assert [d.token for d in ana.devices.filter(active=True)] == ["old"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"platform": "blackberry", "token": "t"}, "platform"),
        ({"platform": "", "token": "t"}, "platform"),
        ({"token": "t"}, "platform"),
        ({"platform": "fcm"}, "token"),
        ({"platform": "fcm", "token": ""}, "token"),
        ({"platform": "fcm", "token": 123}, "token"),
        ({"platform": "fcm", "token": "t", "owner": "bob"}, "owner"),
    ],
)
def test_invalid_registration(api_client, ana, body, field):
    response = api_client.post("/api/recipients/ana/devices", body, format="json")

    error = assert_error(response, 400, "validation_error")
    assert set(error["fields"]) == {field}
    assert not Device.objects.exists()


APNS = "0123456789abcdef" * 4  # 64 hex digits, like Apple's tokens today


@pytest.mark.parametrize(
    ("platform", "token"),
    [
        ("apns", "abc/def"),
        ("apns", APNS[:-2] + "/0"),
        ("apns", APNS[:32] + "\n" + APNS[33:]),
        ("apns", APNS + "\n"),  # trailing whitespace is refused, not trimmed
        (" apns", APNS),
        ("apns", " " + APNS),
        ("apns", APNS[:-1] + "\x07"),  # a control character
        ("apns", APNS[:-1] + "\x00"),
        ("apns", APNS[:-1] + "é"),  # non-ASCII
        ("apns", APNS[:-2] + "٣٣"),  # digits, but not ASCII ones
        ("apns", APNS[:-2]),  # 62 digits: too short
        ("apns", "ab" * 101),  # 202 digits: too long
        ("apns", APNS + "a"),  # an odd number of digits
        ("apns", APNS[:-1] + "g"),  # not hexadecimal
        ("apns", "unregistered-" + APNS),
        ("fcm", "abc/def"),
        ("fcm", "fcm token"),
        ("fcm", "fcm-token\n"),
        ("fcm", "fcm\ttoken"),
        ("fcm", "fcm-tökén"),
        ("fcm", "fcm+token="),  # base64's other characters are not in FCM's alphabet
        ("fcm", "a" * 4097),
        ("fcm", "a" * 4095 + "  "),  # over maxLength before trimming (schemathesis found it)
    ],
)
def test_a_token_its_platform_cannot_have_is_refused(api_client, ana, platform, token):
    response = api_client.post(
        "/api/recipients/ana/devices", {"platform": platform, "token": token}, format="json"
    )

    error = assert_error(response, 400, "validation_error")
    assert set(error["fields"]) == {"token" if platform in ("apns", "fcm") else "platform"}
    assert not Device.objects.exists()


@pytest.mark.parametrize(
    ("platform", "token"),
    [
        ("apns", APNS),
        ("apns", "ab" * 100),  # Apple says the length may grow: up to 200 digits
        ("fcm", "dGhpcyBpcyBub3Q:APA91bH-x_y" + "z" * 140),
        ("fcm", "a" * 4096),
    ],
)
def test_a_token_of_the_platforms_form_is_registered_as_sent(api_client, ana, platform, token):
    response = register(api_client, "ana", platform=platform, token=token)

    assert response.status_code == 201, response.content
    assert response.json()["token"] == token
    assert Device.objects.get().token == token


def test_an_apns_token_is_stored_in_lower_case_so_it_is_one_device(api_client, ana):
    first = register(api_client, "ana", platform="apns", token=APNS.upper())
    again = register(api_client, "ana", platform="apns", token=APNS)

    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["token"] == again.json()["token"] == APNS
    assert Device.objects.get().token == APNS


def test_the_schema_says_what_the_token_field_takes(api_client):
    schema = api_client.get("/api/schema/", {"format": "json"}).json()
    token = schema["components"]["schemas"]["Device"]["properties"]["token"]

    assert (token["minLength"], token["maxLength"]) == (1, 4096)
    assert token["pattern"] == "^[A-Za-z0-9_:-]+$"


def test_a_caller_cannot_register_a_device_as_inactive(api_client, ana):
    # "active" is read-only: only a provider's verdict deactivates a token.
    response = api_client.post(
        "/api/recipients/ana/devices",
        {"platform": "fcm", "token": "t", "active": False},
        format="json",
    )

    assert response.status_code == 201
    assert response.json()["active"] is True
    assert Device.objects.get().active


def test_register_for_an_unknown_recipient(api_client, db):
    assert_error(register(api_client, "nobody"), 404, "recipient_not_found")
    assert not Device.objects.exists()


def test_list_for_an_unknown_recipient(api_client, db):
    assert_error(api_client.get("/api/recipients/nobody/devices"), 404, "recipient_not_found")


def test_delete_own_device(api_client, ana):
    device = DeviceFactory(recipient=ana)
    other = DeviceFactory(recipient=ana)

    response = api_client.delete(f"/api/recipients/ana/devices/{device.pk}")

    assert response.status_code == 204
    assert not Device.objects.filter(pk=device.pk).exists()
    assert Device.objects.filter(pk=other.pk).exists()


def test_delete_someone_elses_device_is_a_404(api_client, ana, bob):
    device = DeviceFactory(recipient=bob)

    response = api_client.delete(f"/api/recipients/ana/devices/{device.pk}")

    assert_error(response, 404, "not_found")
    assert Device.objects.filter(pk=device.pk, recipient=bob).exists()


def test_delete_unknown_device_is_a_404(api_client, ana):
    assert_error(api_client.delete("/api/recipients/ana/devices/999999"), 404, "not_found")


def test_delete_twice_is_a_404_the_second_time(api_client, ana):
    device = DeviceFactory(recipient=ana)
    assert api_client.delete(f"/api/recipients/ana/devices/{device.pk}").status_code == 204
    assert_error(api_client.delete(f"/api/recipients/ana/devices/{device.pk}"), 404, "not_found")


def test_delete_device_of_an_unknown_recipient(api_client, ana):
    device = DeviceFactory(recipient=ana)
    response = api_client.delete(f"/api/recipients/nobody/devices/{device.pk}")
    assert_error(response, 404, "recipient_not_found")
    assert Device.objects.filter(pk=device.pk).exists()


def test_non_numeric_device_id_is_a_json_404(api_client, ana):
    assert_error(api_client.delete("/api/recipients/ana/devices/abc"), 404, "not_found")


def test_registered_device_makes_push_reachable(
    api_client, ana, order_shipped, settings, django_capture_on_commit_callbacks, broker
):
    settings.NOTIFY_PROVIDERS = {**settings.NOTIFY_PROVIDERS, "push": "tests.fake.Push"}
    register(api_client, "ana")

    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.post(
            "/api/notify",
            {"userId": "ana", "event": "order_shipped", "channels": ["push"]},
            format="json",
        )

    assert response.json()["deliveries"] == [{"channel": "push", "status": "queued"}]
    assert broker.queued(PUSH.queue) == 1
