"""APNs through the push channel, against a local HTTP/2 + TLS fake that checks JWTs like Apple.

The device token picks the fake's answer (see devtools/fakes/apns.py).
"""

from __future__ import annotations

import json
import ssl
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.utils import timezone

from channels import aio
from channels.base import (
    Destination,
    OutboundMessage,
    ProviderPaused,
    TransientDeliveryError,
)
from channels.checks import check_providers
from channels.lanes import PUSH
from channels.providers import apns
from devtools.fakes.apns import FakeAPNs, device_token, new_signing_key
from notifications import services
from notifications.models import DeliveryStatus, FailedDelivery
from notifications.services import Outcome
from notifications.tasks import deliver_push, deliver_push_batch
from preferences.models import Device
from tests.channels.guarding import assert_paused_for_configuration
from tests.channels.push import queued_push, send_push
from tests.factories import DeviceFactory
from tests.workers import WorkerProcess, running_worker, settled_delivery, standalone_fake, wait_for

KEY_ID, TEAM_ID, TOPIC = "ABC123DEFG", "DEF123GHIJ", "com.example.notify"


@pytest.fixture(scope="session")
def apns_key() -> str:
    return new_signing_key()


@pytest.fixture(scope="session")
def fake_apns(apns_key: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeAPNs]:
    log = tmp_path_factory.mktemp("apns") / "requests.jsonl"
    server = FakeAPNs(
        key_id=KEY_ID, team_id=TEAM_ID, topic=TOPIC, public_key_pem=apns_key, log_path=log
    ).start()
    yield server
    server.stop()


def _point_at(settings: Any, url: str, ca_file: str, key: str) -> None:
    settings.NOTIFY_PROVIDERS = {
        **settings.NOTIFY_PROVIDERS,
        "push": "channels.providers.push.PushProvider",
    }
    settings.NOTIFY_PUSH_SENDERS = {"apns": "channels.providers.apns.APNsSender", "fcm": ""}
    settings.APNS_KEY_ID, settings.APNS_TEAM_ID, settings.APNS_TOPIC = KEY_ID, TEAM_ID, TOPIC
    settings.APNS_PRIVATE_KEY, settings.APNS_ENDPOINT, settings.APNS_CA_FILE = key, url, ca_file


@pytest.fixture
def fake(settings: Any, fake_apns: FakeAPNs, apns_key: str) -> FakeAPNs:
    _point_at(settings, fake_apns.url, str(fake_apns.ca_path), apns_key)
    return fake_apns


def _device(kind: str, recipient: Any = None, number: int = 0) -> Device:
    """A device whose token makes the fake answer as ``kind`` says (devtools/fakes/apns.py)."""
    extra = {"recipient": recipient} if recipient is not None else {}
    token = device_token(kind, number)
    return DeviceFactory(platform=Device.Platform.APNS, token=token, **extra)


pytestmark = pytest.mark.django_db


def test_the_request_is_what_apple_expects(fake, order_shipped):
    device = _device("ok")

    outcome, delivery = send_push(device, order_shipped, collapseId="order-77")

    assert outcome == Outcome.SENT
    (request,) = fake.requests_to(device.token)
    assert (request["method"], request["path"]) == ("POST", f"/3/device/{device.token}")
    assert request["httpVersion"] == "2"
    headers = request["headers"]
    assert "authorization" not in headers  # the fake never keeps the JWT itself
    assert {k: v for k, v in headers.items() if k.startswith("apns-")} == {
        "apns-topic": TOPIC,
        "apns-push-type": "alert",
        "apns-priority": "10",
        "apns-collapse-id": "order-77",
        "apns-expiration": headers["apns-expiration"],
    }
    assert abs(int(headers["apns-expiration"]) - (time.time() + 86400)) < 60
    assert request["jwt"]["header"]["alg"] == "ES256"
    assert request["jwt"]["header"]["kid"] == KEY_ID
    assert request["jwt"]["claims"]["iss"] == TEAM_ID
    assert abs(request["jwt"]["claims"]["iat"] - time.time()) < 3000
    assert request["status"] == 200
    assert request["payload"] == {
        "aps": {"alert": {"title": "Order 77 shipped", "body": "On its way."}, "sound": "default"},
        "notify": {
            "notificationId": str(delivery.notification_id),
            "event": "order_shipped",
            "data": {"orderId": "77", "collapseId": "order-77"},
        },
    }
    assert delivery.status == DeliveryStatus.SENT
    assert delivery.provider == "apns"
    assert delivery.provider_message_id == request["apnsId"]
    assert delivery.results == {device.token: {"status": "sent", "messageId": request["apnsId"]}}


def test_the_provider_token_is_reused_then_refreshed_after_50_minutes(
    fake, order_shipped, monkeypatch
):
    first, second, later = _device("ok"), _device("ok"), _device("ok")
    send_push(first, order_shipped)
    send_push(second, order_shipped, priority="low")
    started = time.monotonic()
    monkeypatch.setattr(apns, "_clock", lambda: started + 50 * 60 + 1)

    send_push(later, order_shipped)

    fingerprints = [fake.requests_to(d.token)[0]["jwt"]["fingerprint"] for d in (first, second)]
    assert fingerprints[0] == fingerprints[1]
    assert fake.requests_to(later.token)[0]["jwt"]["fingerprint"] != fingerprints[0]
    # And the data can lower the priority; no collapseId, no apns-collapse-id.
    low = fake.requests_to(second.token)[0]["headers"]
    assert low["apns-priority"] == "5" and "apns-collapse-id" not in low


def test_expired_provider_token_is_refreshed_and_the_send_retried_once(fake, order_shipped):
    before, expired, after = _device("ok"), _device("expiredjwt"), _device("ok")
    send_push(before, order_shipped)

    outcome, delivery = send_push(expired, order_shipped)
    send_push(after, order_shipped)

    assert outcome == Outcome.SENT and delivery.attempts == 1
    stale = fake.requests_to(before.token)[0]["jwt"]["fingerprint"]
    tries = fake.requests_to(expired.token)
    assert [(r["status"], r["reason"]) for r in tries] == [(403, "ExpiredProviderToken"), (200, "")]
    assert tries[0]["jwt"]["fingerprint"] == stale
    fresh = tries[1]["jwt"]["fingerprint"]
    assert fresh != stale
    assert fake.requests_to(after.token)[0]["jwt"]["fingerprint"] == fresh  # kept from now on


def test_one_unregistered_device_among_three_is_deactivated(fake, order_shipped):
    first = _device("ok")
    dead = _device("unregistered", first.recipient)
    third = _device("ok", first.recipient)

    outcome, delivery = send_push(first, order_shipped)

    assert outcome == Outcome.SENT
    for device in (first, dead, third):
        assert len(fake.requests_to(device.token)) == 1
    assert {t: r["status"] for t, r in delivery.results.items()} == {
        first.token: "sent",
        dead.token: "dead",
        third.token: "sent",
    }
    assert delivery.results[dead.token]["error"].startswith("APNs 410 code Unregistered: ")
    dead.refresh_from_db()
    assert not dead.active and dead.deactivated_at is not None
    assert "Unregistered" in dead.deactivation_reason and "since" in dead.deactivation_reason
    assert Device.objects.filter(pk__in=[first.pk, third.pk], active=True).count() == 2
    assert not FailedDelivery.objects.exists()


@pytest.mark.parametrize(
    ("kind", "status", "reason"),
    [
        ("unregistered", 410, "Unregistered"),
        ("baddevicetoken", 400, "BadDeviceToken"),
        ("wrongtopic", 400, "DeviceTokenNotForTopic"),
    ],
)
def test_a_dead_token_is_tried_once_failed_and_deactivated(
    fake, order_shipped, kind, status, reason
):
    device = _device(kind)

    outcome, delivery = send_push(device, order_shipped)

    assert outcome == Outcome.FAILED
    assert [(r["status"], r["reason"]) for r in fake.requests_to(device.token)] == [
        (status, reason)
    ]
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.results[device.token]["status"] == "dead"
    assert delivery.results[device.token]["error"].startswith(f"APNs {status} code {reason}: ")
    letter = FailedDelivery.objects.get(delivery=delivery)
    assert letter.attempts == 1 and f"APNs {status} code {reason}" in letter.error_message
    device.refresh_from_db()
    assert not device.active and reason in device.deactivation_reason


def _recipient_with_a_legacy_device(legacy: str) -> tuple[Device, Device, Device]:
    """Two good devices and one whose token was registered before tokens were validated
    (inserted as such a row is: the registration's rules never saw it)."""
    first = _device("ok")
    second = _device("ok", first.recipient)
    bad = DeviceFactory(platform=Device.Platform.APNS, token=legacy, recipient=first.recipient)
    return first, second, bad


def _assert_only_the_legacy_device_retired(
    fake: FakeAPNs, delivery: Any, good: tuple[Device, Device], bad: Device
) -> None:
    assert delivery.status == DeliveryStatus.SENT
    for device in good:
        assert [r["status"] for r in fake.requests_to(device.token)] == [200]
        assert delivery.results[device.token]["status"] == "sent"
    assert delivery.results[bad.token]["status"] == "dead"
    assert not FailedDelivery.objects.exists()
    bad.refresh_from_db()
    assert not bad.active and bad.deactivated_at is not None
    assert bad.deactivation_reason.startswith("APNs ")
    assert Device.objects.filter(pk__in=[d.pk for d in good], active=True).count() == 2


# A token Apple cannot route ("abc/def" is two path segments, ".." none) gets BadPath, an empty
# one MissingDeviceToken, other malformed ones BadDeviceToken. Each time the device is dead,
# never our APNS_ENDPOINT's fault.
LEGACY_TOKENS = ["abc/def", "..", "", "tok\n1", "tök-1", "demo-apns-token"]


@pytest.mark.parametrize("legacy", LEGACY_TOKENS)
def test_a_legacy_invalid_token_retires_its_device_and_the_others_get_the_push(
    fake, order_shipped, legacy
):
    first, second, bad = _recipient_with_a_legacy_device(legacy)

    outcome, delivery = send_push(first, order_shipped)

    assert outcome == Outcome.SENT
    _assert_only_the_legacy_device_retired(fake, delivery, (first, second), bad)
    # The next push goes to the two good devices only, and is sent.
    asked = len(fake.requests)
    outcome, later = send_push(first, order_shipped)
    assert outcome == Outcome.SENT
    assert set(later.results) == {first.token, second.token}
    assert len(fake.requests) == asked + 2


def test_a_legacy_invalid_token_retires_its_device_on_the_batch_path(fake, order_shipped):
    first, second, bad = _recipient_with_a_legacy_device("abc/def")
    delivery = queued_push(first.recipient, order_shipped)

    assert deliver_push_batch.apply(args=([delivery.pk],)).get() == {"sent": 1}

    delivery.refresh_from_db()
    _assert_only_the_legacy_device_retired(fake, delivery, (first, second), bad)


def test_bad_path_for_a_valid_token_is_still_the_endpoints_fault(fake, order_shipped, settings):
    settings.APNS_ENDPOINT = f"{fake.url}/apns"  # a path Apple does not serve
    device = _device("ok")
    delivery = queued_push(device.recipient, order_shipped)

    with pytest.raises(ProviderPaused):  # a configuration error pauses APNs
        services.delivery_send(delivery_id=delivery.pk)

    assert [r["reason"] for r in fake.requests if r["path"].startswith("/apns/")][-1] == "BadPath"
    assert_paused_for_configuration(delivery, "apns", "BadPath")
    assert "check APNS_ENDPOINT" in delivery.history[-1]["error"]
    assert Device.objects.get(pk=device.pk).active


def test_a_payload_too_large_fails_the_notification_but_keeps_the_device(fake, order_shipped):
    device = _device("ok")

    outcome, delivery = send_push(device, order_shipped, note="x" * 5000)

    assert outcome == Outcome.FAILED
    assert fake.requests_to(device.token)[0]["reason"] == "PayloadTooLarge"
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.results[device.token]["status"] == "failed"
    assert "APNs 413 code PayloadTooLarge" in FailedDelivery.objects.get().error_message
    assert Device.objects.get(pk=device.pk).active


def test_a_503_is_retried_without_resending_to_devices_already_reached(fake, order_shipped):
    reached = _device("ok")
    flaky = _device("flaky", reached.recipient, 1)
    delivery = queued_push(reached.recipient, order_shipped)

    with pytest.raises(TransientDeliveryError) as raised:
        services.delivery_send(delivery_id=delivery.pk)

    assert "APNs 503 code ServiceUnavailable" in str(raised.value)
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.QUEUED
    assert set(delivery.results) == {reached.token}
    assert Device.objects.get(pk=flaky.pk).active

    assert services.delivery_send(delivery_id=delivery.pk) == Outcome.SENT

    assert len(fake.requests_to(reached.token)) == 1
    assert [r["status"] for r in fake.requests_to(flaky.token)] == [503, 200]
    delivery.refresh_from_db()
    assert delivery.attempts == 2
    assert {r["status"] for r in delivery.results.values()} == {"sent"}


def test_a_429_with_retry_after_holds_the_delivery_that_long(fake, order_shipped):
    device = _device("toomany", number=120)
    delivery = queued_push(device.recipient, order_shipped)

    with pytest.raises(TransientDeliveryError) as raised:
        services.delivery_send(delivery_id=delivery.pk)

    assert raised.value.retry_after == 120
    assert raised.value.status_code == 429 and raised.value.provider_code == "TooManyRequests"
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.QUEUED
    assert "429" in delivery.last_error
    # The sweep leaves it alone while Apple asked us to wait.
    assert delivery.lease_until > timezone.now() + timedelta(seconds=120)
    assert Device.objects.get(pk=device.pk).active


def test_a_timeout_is_transient_and_the_connection_stays_usable(fake, order_shipped, settings):
    settings.NOTIFY_PROVIDER_TIMEOUT_SECONDS = 0.3
    slow = _device("slow", number=3000)
    delivery = queued_push(slow.recipient, order_shipped)

    started = time.monotonic()
    with pytest.raises(TransientDeliveryError) as raised:
        services.delivery_send(delivery_id=delivery.pk)

    assert time.monotonic() - started < 2
    assert "no answer within 0.3s" in str(raised.value)
    assert len(fake.requests_to(slow.token)) == 1
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.QUEUED
    assert Device.objects.get(pk=slow.pk).active
    assert send_push(_device("ok"), order_shipped)[0] == Outcome.SENT


def test_an_unreachable_endpoint_is_transient(fake, order_shipped, settings):
    settings.APNS_ENDPOINT = "https://127.0.0.1:9"  # discard port: nothing listens there
    device = _device("ok")
    delivery = queued_push(device.recipient, order_shipped)

    with pytest.raises(TransientDeliveryError, match="ConnectError"):
        services.delivery_send(delivery_id=delivery.pk)

    assert Device.objects.get(pk=device.pk).active


@pytest.mark.parametrize(
    ("setting", "value", "reason"),
    [
        ("APNS_PRIVATE_KEY", "other key", "InvalidProviderToken"),
        ("APNS_KEY_ID", "WRONGKEY12", "InvalidProviderToken"),
        ("APNS_TEAM_ID", "WRONGTEAM1", "InvalidProviderToken"),
        ("APNS_TOPIC", "com.example.other", "BadTopic"),
    ],
)
def test_wrong_credentials_pause_apns_loudly_without_retry(
    fake, order_shipped, settings, setting, value, reason
):
    setattr(settings, setting, new_signing_key() if value == "other key" else value)
    device = _device("ok")
    delivery = queued_push(device.recipient, order_shipped)

    result = deliver_push.apply(args=[delivery.pk])

    assert result.successful() and result.result == Outcome.DEFERRED.value
    assert [r["reason"] for r in fake.requests_to(device.token)] == [reason]
    status = 403 if reason != "BadTopic" else 400
    assert_paused_for_configuration(delivery, "apns", f"APNs {status} {reason}")
    assert "check APNS_" in delivery.history[-1]["error"]
    assert Device.objects.get(pk=device.pk).active


def test_an_untrusted_server_certificate_is_a_configuration_error(fake, order_shipped, settings):
    settings.APNS_CA_FILE = ""  # the system's CAs do not know the fake's throwaway CA
    device = _device("ok")
    delivery = queued_push(device.recipient, order_shipped)

    with pytest.raises(ProviderPaused):  # the task defers it (publish_retries)
        services.delivery_send(delivery_id=delivery.pk)

    assert_paused_for_configuration(delivery, "apns", "APNS_CA_FILE")
    assert fake.requests_to(device.token) == []


def test_missing_key_id_fails_the_system_check_when_push_is_enabled(fake, settings):
    assert check_providers() == []
    settings.APNS_KEY_ID = ""

    messages = [error.msg for error in check_providers()]

    assert len(messages) == 1 and "APNS_KEY_ID is not set" in messages[0]
    with pytest.raises(SystemCheckError, match="APNS_KEY_ID"):
        call_command("check")


def test_push_disabled_does_not_check_apns(settings):
    settings.APNS_KEY_ID = ""
    assert check_providers() == []


@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        ("APNS_PRIVATE_KEY", "", "APNS_PRIVATE_KEY (or APNS_PRIVATE_KEY_FILE) is not set"),
        ("APNS_PRIVATE_KEY", "not a key", "APNS_PRIVATE_KEY is not a PEM private key"),
        ("APNS_PRIVATE_KEY", "p384", "APNS_PRIVATE_KEY is not an EC P-256 key"),
        ("APNS_ENDPOINT", "http://127.0.0.1:2197", "APNS_ENDPOINT='http://127.0.0.1:2197' is not"),
        ("APNS_TOPIC", "", "APNS_TOPIC is not set"),
        ("APNS_CA_FILE", "/nonexistent/ca.pem", "APNS_CA_FILE='/nonexistent/ca.pem' is not"),
    ],
)
def test_bad_settings_are_named_by_the_system_check(fake, settings, setting, value, expected):
    if value == "p384":  # a valid EC key, on a curve ES256 cannot use
        key = ec.generate_private_key(ec.SECP384R1())
        value = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    setattr(settings, setting, value)

    (error,) = check_providers()

    assert expected in error.msg
    assert error.msg.startswith(
        "NOTIFY_PROVIDER_PUSH (channels.providers.push.PushProvider): NOTIFY_PUSH_APNS:"
    )


# --- a real worker process --------------------------------------------------------------------


@pytest.fixture(scope="module")
def standalone_apns(apns_key: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The fake run the way a demo runs it: ``python -m devtools.fakes.apns``."""
    folder = tmp_path_factory.mktemp("apns-standalone")
    (folder / "key.p8").write_text(apns_key)
    with standalone_fake(
        "apns",
        f"--key-id={KEY_ID}",
        f"--team-id={TEAM_ID}",
        f"--topic={TOPIC}",
        f"--public-key={folder / 'key.p8'}",
        f"--ca-out={folder / 'ca.pem'}",
        f"--log={folder / 'requests.jsonl'}",
    ) as port:
        yield {"url": f"https://127.0.0.1:{port}", "folder": folder}


@pytest.fixture(scope="module")
def push_worker(
    django_db_setup: None,
    standalone_apns: dict,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WorkerProcess]:
    folder = standalone_apns["folder"]
    with running_worker(
        PUSH.worker_queues,  # both lanes, as make run and docker-compose start it
        tmp_path_factory.mktemp("apns-worker"),
        NOTIFY_PROVIDER_PUSH="channels.providers.push.PushProvider",
        NOTIFY_PUSH_APNS="channels.providers.apns.APNsSender",
        NOTIFY_PUSH_FCM="",
        APNS_KEY_ID=KEY_ID,
        APNS_TEAM_ID=TEAM_ID,
        APNS_TOPIC=TOPIC,
        APNS_PRIVATE_KEY_FILE=str(folder / "key.p8"),
        APNS_ENDPOINT=standalone_apns["url"],
        APNS_CA_FILE=str(folder / "ca.pem"),
    ) as worker:
        yield worker


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_real_push_worker_sends_and_retries_a_503_once(
    api_client, order_shipped, push_worker, standalone_apns, settings, apns_key
):
    _point_at(settings, standalone_apns["url"], str(standalone_apns["folder"] / "ca.pem"), apns_key)
    reached = _device("ok")
    flaky = _device("flaky", reached.recipient, 1)

    response = api_client.post(
        "/api/notify",
        {
            "userId": reached.recipient.external_id,
            "event": "order_shipped",
            "channels": ["push"],
            "data": {"orderId": "77"},
        },
        format="json",
    )
    assert response.status_code == 202, response.content

    delivery = wait_for(
        lambda: settled_delivery(response.json()["id"], "push"),
        timeout=60,
        what="the push delivery to settle",
    )
    assert delivery.status == DeliveryStatus.SENT and delivery.attempts == 2
    assert delivery.provider == "apns"
    seen = httpx.get(
        f"{standalone_apns['url']}/_fake/requests",
        verify=ssl.create_default_context(cafile=standalone_apns["folder"] / "ca.pem"),
        timeout=5,
    ).json()
    statuses = {
        t: [r["status"] for r in seen if r["token"] == t] for t in (reached.token, flaky.token)
    }
    assert statuses == {reached.token: [200], flaky.token: [503, 200]}
    assert {r["httpVersion"] for r in seen} == {"2"}
    assert {r["jwt"]["header"]["kid"] for r in seen} == {KEY_ID}
    logged = [json.loads(line) for line in (standalone_apns["folder"] / "requests.jsonl").open()]
    assert [r["token"] for r in logged] == [r["token"] for r in seen]


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_real_push_worker_retires_a_legacy_token_on_both_lanes(
    api_client, order_shipped, push_worker, standalone_apns, settings, apns_key
):
    """The issue's case: two good devices and one "abc/def" registered before validation."""
    _point_at(settings, standalone_apns["url"], str(standalone_apns["folder"] / "ca.pem"), apns_key)
    single = _recipient_with_a_legacy_device("abc/def")
    bulk = _recipient_with_a_legacy_device("legacy/bulk")

    response = api_client.post(
        "/api/notify",
        {"userId": single[0].recipient.external_id, "event": "order_shipped", "channels": ["push"]},
        format="json",
    )
    assert response.status_code == 202, response.content
    # The bulk lane's task, as a broadcast page publishes it.
    batched = queued_push(bulk[0].recipient, order_shipped)
    deliver_push_batch.apply_async(args=([batched.pk],), queue=PUSH.bulk_queue)

    settled = [
        wait_for(
            lambda: settled_delivery(response.json()["id"], "push"),
            timeout=60,
            what="the single push to settle",
        ),
        wait_for(
            lambda: settled_delivery(str(batched.notification_id), "push"),
            timeout=60,
            what="the batched push to settle",
        ),
    ]
    seen = httpx.get(
        f"{standalone_apns['url']}/_fake/requests",
        verify=ssl.create_default_context(cafile=standalone_apns["folder"] / "ca.pem"),
        timeout=5,
    ).json()
    for delivery, (first, second, bad) in zip(settled, (single, bulk), strict=True):
        assert delivery.status == DeliveryStatus.SENT, delivery.history
        assert {t: r["status"] for t, r in delivery.results.items()} == {
            first.token: "sent",
            second.token: "sent",
            bad.token: "dead",
        }
        for device in (first, second):
            assert [r["status"] for r in seen if r["token"] == device.token] == [200]
        bad.refresh_from_db()
        assert (
            not bad.active
            and bad.deactivated_at is not None
            and "BadPath" in (bad.deactivation_reason)
        )
    assert not FailedDelivery.objects.exists()


def test_concurrent_sends_reach_each_device_exactly_once(fake, order_shipped, settings):
    """A push batch's threads each borrow their own connection (httpcore's sync HTTP/2
    connection is not thread-safe: shared, it duplicated and lost streams under load)."""
    fake.latency_ms = 20  # so the threads' requests overlap
    sender = apns.APNsSender()
    outbound = OutboundMessage(
        delivery_id=1,
        notification_id=str(uuid.uuid4()),
        channel="push",
        event=order_shipped.key,
        destination=Destination(recipient_id=1, external_id="u-1"),
        content={"title": "Shipped", "body": "On its way."},
    )
    tokens = [device_token() for _ in range(160)]
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            ids = list(
                pool.map(lambda token: aio.run(sender.send_to_device(token, outbound)), tokens)
            )
    finally:
        fake.latency_ms = 0

    assert len(set(ids)) == len(tokens)
    assert [len(fake.requests_to(token)) for token in tokens] == [1] * len(tokens)
    assert 1 <= sender.open_connections() <= 8
