"""Token rejections a wrong setting gives for every token alike (APNs BadDeviceToken from the
sandbox endpoint with production tokens, DeviceTokenNotForTopic from another app's topic, FCM
SENDER_ID_MISMATCH from another Firebase project): a run of them pauses the provider as
misconfigured instead of retiring every device (channels/gate/guard.py). Against the real fakes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from channels.gate import circuit, guard_redis
from devtools.fakes.apns import FakeAPNs, device_token
from devtools.fakes.fcm import FakeFCM, write_service_account
from notifications.models import Delivery, DeliveryStatus, FailedDelivery
from notifications.services import Outcome
from notifications.tasks import deliver_push
from preferences.models import Device
from tests.channels.guarding import assert_paused_for_configuration
from tests.channels.push import queued_push
from tests.channels.test_apns import _point_at as point_apns_at
from tests.channels.test_apns import apns_key, fake_apns  # noqa: F401 (fixtures)
from tests.channels.test_fcm import _point_at as point_fcm_at
from tests.channels.test_fcm import private_key  # noqa: F401 (fixture)
from tests.factories import DeviceFactory
from tests.workers import wait_for

pytestmark = pytest.mark.django_db

N = 4  # NOTIFY_PUSH_SUSPECT_REJECTIONS in these tests


@pytest.fixture
def apns(settings: Any, fake_apns: FakeAPNs, apns_key: str) -> FakeAPNs:  # noqa: F811
    point_apns_at(settings, fake_apns.url, str(fake_apns.ca_path), apns_key)
    settings.NOTIFY_PUSH_SUSPECT_REJECTIONS = N
    return fake_apns


@pytest.fixture
def fcm(settings: Any, private_key: str, tmp_path: Path) -> Iterator[FakeFCM]:  # noqa: F811
    server = FakeFCM(log_path=tmp_path / "requests.jsonl").start()
    account = write_service_account(
        tmp_path / "sa.json", token_uri=server.token_uri, private_key=private_key
    )
    server.trust(account)
    point_fcm_at(settings, account.path, server.url)
    settings.NOTIFY_PUSH_SUSPECT_REJECTIONS = N
    yield server
    server.stop()


def _apns_device(kind: str) -> Device:
    return DeviceFactory(platform=Device.Platform.APNS, token=device_token(kind))


def _fcm_device(kind: str) -> Device:
    # The fake answers by prefix ("mismatch…" → SENDER_ID_MISMATCH, else sent).
    return DeviceFactory(platform=Device.Platform.FCM, token=f"{kind}-{uuid.uuid4().hex}")


def _send(device: Device, event: Any) -> tuple[Outcome, Delivery]:
    """One push to ``device``'s recipient, sent once as the push task does."""
    delivery = queued_push(device.recipient, event)
    result = deliver_push.apply(args=[delivery.pk])
    assert result.successful(), result.traceback
    delivery.refresh_from_db()
    return Outcome(result.result), delivery


def _assert_a_run_pauses_instead_of_retiring(
    devices: list[Device], event: Any, provider: str, code: str, settings_named: str
) -> None:
    sent = [_send(device, event) for device in devices]

    retired = Device.objects.filter(pk__in=[d.pk for d in devices], active=False)
    assert retired.count() == N - 1  # at most N-1: the N-th in a row is taken for our settings
    assert set(retired.values_list("pk", flat=True)) == {d.pk for d in devices[: N - 1]}
    assert [outcome for outcome, _ in sent[: N - 1]] == [Outcome.FAILED] * (N - 1)
    for _, delivery in sent[N - 1 :]:
        assert_paused_for_configuration(delivery, provider, code)
        assert settings_named in delivery.history[-1]["error"]
    assert FailedDelivery.objects.count() == N - 1  # none after the pause
    assert not FailedDelivery.objects.filter(delivery__in=[d for _, d in sent[N - 1 :]]).exists()
    assert settings_named in circuit.status(provider).cause


@pytest.mark.parametrize(
    ("kind", "code", "settings_named"),
    [
        ("baddevicetoken", "BadDeviceToken", "APNS_ENDPOINT (sandbox or production"),
        ("wrongtopic", "DeviceTokenNotForTopic", "APNS_TOPIC"),
    ],
)
def test_a_run_of_apns_token_rejections_pauses_apns_and_keeps_the_devices(
    apns, order_shipped, kind, code, settings_named
):
    devices = [_apns_device(kind) for _ in range(N + 5)]  # one per recipient

    _assert_a_run_pauses_instead_of_retiring(devices, order_shipped, "apns", code, settings_named)

    later = devices[N:]
    assert all(not apns.requests_to(d.token) for d in later)  # paused: not even tried


def test_a_success_in_between_resets_the_count_and_a_real_bad_token_is_retired(apns, order_shipped):
    bad = [_apns_device("baddevicetoken") for _ in range(3 * N)]
    for number, device in enumerate(bad, start=1):
        outcome, _ = _send(device, order_shipped)
        assert outcome == Outcome.FAILED
        if number % (N - 1) == 0:  # N-1 in a row, then a good device answers
            assert _send(_apns_device("ok"), order_shipped)[0] == Outcome.SENT

    assert not Device.objects.filter(pk__in=[d.pk for d in bad], active=True).exists()
    assert circuit.status("apns").state == circuit.State.CLOSED
    # ...while N in a row, with no success between them, still pause it.
    run = [_apns_device("baddevicetoken") for _ in range(N)]
    assert [_send(device, order_shipped)[0] for device in run][-1] == Outcome.DEFERRED
    assert Device.objects.get(pk=run[-1].pk).active
    assert circuit.status("apns").state == circuit.State.OPEN


def test_a_run_of_fcm_sender_id_mismatches_pauses_fcm_and_keeps_the_devices(fcm, order_shipped):
    devices = [_fcm_device("mismatch") for _ in range(N + 5)]

    _assert_a_run_pauses_instead_of_retiring(
        devices, order_shipped, "fcm", "SENDER_ID_MISMATCH", "FCM_PROJECT_ID"
    )

    assert all(not fcm.sends(d.token) for d in devices[N:])


def test_unregistered_is_never_suspect_every_dead_device_is_retired(apns, order_shipped):
    devices = [_apns_device("unregistered") for _ in range(N + 2)]

    assert all(_send(device, order_shipped)[0] == Outcome.FAILED for device in devices)

    assert not Device.objects.filter(pk__in=[d.pk for d in devices], active=True).exists()
    assert circuit.status("apns").state == circuit.State.CLOSED


def test_the_probe_refused_the_same_way_pauses_again_and_retires_nothing(
    apns, order_shipped, settings
):
    settings.NOTIFY_CIRCUIT_CONFIG_COOLDOWN_SECONDS = 0.05
    devices = [_apns_device("baddevicetoken") for _ in range(N + 1)]
    for device in devices[:N]:
        _send(device, order_shipped)
    assert circuit.status("apns").state == circuit.State.OPEN
    wait_for(lambda: circuit.status("apns").state == circuit.State.HALF_OPEN, what="the probe")

    probe = devices[N]
    outcome, delivery = _send(probe, order_shipped)

    assert [r["reason"] for r in apns.requests_to(probe.token)] == ["BadDeviceToken"]
    assert outcome == Outcome.DEFERRED and delivery.status == DeliveryStatus.QUEUED
    assert Device.objects.get(pk=probe.pk).active
    assert circuit.status("apns").state == circuit.State.OPEN


def test_with_the_guard_redis_away_a_suspect_rejection_keeps_the_device(
    apns, order_shipped, settings, request
):
    request.addfinalizer(guard_redis.reset)
    settings.NOTIFY_GUARD_REDIS_RETRY_SECONDS = 60
    settings.NOTIFY_GUARD_REDIS_URL = "redis://127.0.0.1:9/0"  # nothing listens there
    suspect, dead = _apns_device("baddevicetoken"), _apns_device("unregistered")

    assert _send(suspect, order_shipped)[0] == Outcome.FAILED  # nothing to count with
    assert _send(dead, order_shipped)[0] == Outcome.FAILED

    assert Device.objects.get(pk=suspect.pk).active  # cannot be told from a wrong setting
    assert not Device.objects.get(pk=dead.pk).active  # unambiguous: retired
