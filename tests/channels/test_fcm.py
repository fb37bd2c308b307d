"""FCM through the push channel: real pyfcm and google-auth against a local FCM v1 + OAuth fake.

The device token picks the fake's answer (see devtools/fakes/fcm.py).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from channels import aio
from channels.base import TransientDeliveryError
from channels.checks import check_providers
from channels.lanes import PUSH
from channels.providers import push
from devtools.fakes.fcm import AUDIENCE, JWT_BEARER, FakeFCM, write_service_account
from notifications import services
from notifications.models import DeliveryStatus, FailedDelivery
from notifications.services import Outcome
from notifications.tasks import deliver_push
from preferences.models import Device
from tests.channels.guarding import assert_paused_for_configuration
from tests.channels.push import queued_push, send_push
from tests.factories import DeviceFactory
from tests.workers import WorkerProcess, running_worker, settled_delivery, standalone_fake, wait_for

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
SEND_PATH = "/v1/projects/demo-project/messages:send"

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="session")
def private_key(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One RSA key for the session: generating a 2048-bit key per test is slow."""
    path = tmp_path_factory.mktemp("fcm-key") / "sa.json"
    return write_service_account(path, token_uri="http://unused/token").private_key


def _point_at(settings: Any, credentials: Path, endpoint: str) -> None:
    settings.NOTIFY_PROVIDERS = {
        **settings.NOTIFY_PROVIDERS,
        "push": "channels.providers.push.PushProvider",
    }
    settings.NOTIFY_PUSH_SENDERS = {"apns": "", "fcm": "channels.providers.fcm.FCMSender"}
    settings.FCM_CREDENTIALS_FILE, settings.FCM_PROJECT_ID = str(credentials), ""
    settings.FCM_ENDPOINT = endpoint


@pytest.fixture
def fake(settings: Any, private_key: str, tmp_path: Path) -> Iterator[FakeFCM]:
    """A fake of its own per test, with a trusted service account pointing at it."""
    server = FakeFCM(log_path=tmp_path / "requests.jsonl").start()
    account = write_service_account(
        tmp_path / "sa.json", token_uri=server.token_uri, private_key=private_key
    )
    server.trust(account)
    _point_at(settings, account.path, server.url)
    yield server
    server.stop()


@pytest.fixture(scope="module", autouse=True)
def _close_the_push_sender() -> Iterator[None]:
    """The push channel keeps one FCMSender per process: close its session after these tests."""
    yield
    sender: Any = push._sender_instance("channels.providers.fcm.FCMSender")
    aio.run(sender.aclose())


def _device(kind: str, recipient: Any = None) -> Device:
    extra = {"recipient": recipient} if recipient is not None else {}
    return DeviceFactory(platform=Device.Platform.FCM, token=f"{kind}-{uuid.uuid4().hex}", **extra)


def test_oauth_assertion_then_bearer_token_then_the_v1_message(fake, order_shipped):
    device = _device("ok")

    # "from" is reserved: FCM would refuse the whole message for it, so it is left out.
    data = {"count": 3, "gift": True, "items": [1, 2], "from": "shop"}
    outcome, delivery = send_push(device, order_shipped, **data)

    assert outcome == Outcome.SENT
    grant, send = fake.requests
    assert (grant["kind"], grant["grantType"], grant["status"]) == ("token", JWT_BEARER, 200)
    assert grant["assertion"]["header"]["alg"] == "RS256"
    claims = grant["assertion"]["claims"]
    assert claims["iss"] == "firebase-adminsdk@demo-project.iam.gserviceaccount.com"
    assert (claims["aud"], claims["scope"]) == (AUDIENCE, SCOPE)
    assert claims["exp"] - claims["iat"] == 3600
    assert (send["path"], send["status"]) == (SEND_PATH, 200)
    assert send["bearer"] == grant["issued"] == 1
    assert send["headers"]["Content-Type"] == "application/json"
    assert send["body"] == {
        "message": {
            "token": device.token,
            "notification": {"title": "Order 77 shipped", "body": "On its way."},
            "data": {
                "orderId": "77",
                "count": "3",
                "gift": "true",
                "items": "[1,2]",
                "notificationId": str(delivery.notification_id),
                "event": "order_shipped",
            },
        },
        "validate_only": False,
    }
    assert delivery.status == DeliveryStatus.SENT and delivery.provider == "fcm"
    assert delivery.provider_message_id == send["response"]["name"]
    assert delivery.provider_message_id.startswith("projects/demo-project/messages/")
    assert delivery.results == {
        device.token: {"status": "sent", "messageId": delivery.provider_message_id}
    }
    # Neither the signed assertion nor the access token is written down.
    logged = fake.log_path.read_text()
    assert "ya29." not in logged and "eyJ" not in logged
    assert [json.loads(line)["kind"] for line in logged.splitlines()] == ["token", "send"]


def test_the_access_token_is_reused_across_sends(fake, order_shipped):
    first = _device("ok")
    second = _device("ok", first.recipient)

    assert send_push(first, order_shipped)[0] == Outcome.SENT
    assert send_push(_device("ok"), order_shipped)[0] == Outcome.SENT

    assert len(fake.token_requests()) == 1
    assert [r["bearer"] for r in fake.sends()] == [1, 1, 1]
    assert {r["token"] for r in fake.sends()} >= {first.token, second.token}


def test_a_token_fcm_expired_early_is_refreshed_and_the_send_retried_once(fake, order_shipped):
    device = _device("expiredauth")

    outcome, _ = send_push(device, order_shipped)

    assert outcome == Outcome.SENT
    assert [(r["status"], r["bearer"]) for r in fake.sends(device.token)] == [(401, 1), (200, 2)]
    assert len(fake.token_requests()) == 2


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("unregistered", 404, "UNREGISTERED"),
        ("invalid", 400, "INVALID_ARGUMENT"),
        ("mismatch", 403, "SENDER_ID_MISMATCH"),
    ],
)
def test_a_dead_token_is_tried_once_failed_and_the_device_deactivated(
    fake, order_shipped, kind, status, code
):
    device = _device(kind)

    outcome, delivery = send_push(device, order_shipped)

    assert outcome == Outcome.FAILED
    assert [r["status"] for r in fake.sends(device.token)] == [status]
    assert delivery.status == DeliveryStatus.FAILED
    letter = FailedDelivery.objects.get(delivery=delivery)
    assert letter.attempts == 1
    assert letter.error_class == "channels.base.PermanentDeliveryError"
    device.refresh_from_db()
    assert not device.active
    assert device.deactivated_at is not None
    assert device.deactivation_reason.startswith(f"FCM {status} code {code}: ")
    assert delivery.results[device.token]["status"] == "dead"


def test_one_dead_device_does_not_stop_the_others(fake, order_shipped):
    alive = _device("ok")
    dead = _device("unregistered", alive.recipient)

    outcome, delivery = send_push(alive, order_shipped)

    assert outcome == Outcome.SENT
    assert delivery.results[dead.token] == {
        "status": "dead",
        "error": "FCM 404 code UNREGISTERED: Requested entity was not found.",
    }
    assert Device.objects.get(pk=alive.pk).active
    assert not Device.objects.get(pk=dead.pk).active


@pytest.mark.parametrize("legacy", ["abc/def", "tok en", "tok\n1", "tök-1"])
def test_a_legacy_invalid_token_retires_its_device_and_the_others_get_the_push(
    fake, order_shipped, legacy
):
    # Registered before tokens were validated; FCM's answer does not say the token was at fault.
    first = _device("ok")
    second = _device("ok", first.recipient)
    bad = DeviceFactory(platform=Device.Platform.FCM, token=legacy, recipient=first.recipient)

    outcome, delivery = send_push(first, order_shipped)

    assert outcome == Outcome.SENT
    assert [r["status"] for r in fake.sends(bad.token)] == [400]
    assert delivery.results[bad.token]["status"] == "dead"
    assert "INVALID_ARGUMENT" in delivery.results[bad.token]["error"]
    for device in (first, second):
        assert [r["status"] for r in fake.sends(device.token)] == [200]
    assert not FailedDelivery.objects.exists()
    bad.refresh_from_db()
    assert not bad.active and bad.deactivated_at is not None
    outcome, later = send_push(first, order_shipped)
    assert outcome == Outcome.SENT
    assert set(later.results) == {first.token, second.token}


def test_a_refused_message_fails_but_keeps_the_device(fake, order_shipped):
    device = _device("ok")
    delivery = queued_push(device.recipient, order_shipped, body="x" * 5000)

    assert services.delivery_send(delivery_id=delivery.pk) == Outcome.FAILED

    (request,) = fake.sends(device.token)
    assert request["response"]["error"]["message"] == "Android message is too big"
    delivery.refresh_from_db()
    assert delivery.results[device.token]["status"] == "failed"
    letter = FailedDelivery.objects.get(delivery=delivery)
    assert "FCM 400 code INVALID_ARGUMENT: Android message is too big" in letter.error_message
    assert Device.objects.get(pk=device.pk).active


def test_quota_exceeded_is_transient_with_retry_after_and_pyfcm_does_not_sleep(fake, order_shipped):
    device = _device("quota")
    delivery = queued_push(device.recipient, order_shipped)

    with pytest.raises(TransientDeliveryError) as raised:
        services.delivery_send(delivery_id=delivery.pk)

    # pyfcm would sleep Retry-After and POST again inside the call (its sleep always precedes
    # that second POST): one request proves the task, not pyfcm, does the waiting.
    assert len(fake.sends(device.token)) == 1
    assert raised.value.retry_after == 1
    assert (raised.value.status_code, raised.value.provider_code) == (429, "QUOTA_EXCEEDED")
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.QUEUED and "429" in delivery.last_error
    assert Device.objects.get(pk=device.pk).active
    assert not FailedDelivery.objects.exists()


def test_a_503_is_one_request_then_the_retry_sends(fake, order_shipped):
    device = _device("flaky-1")
    delivery = queued_push(device.recipient, order_shipped)

    with pytest.raises(TransientDeliveryError, match="FCM 503 code UNAVAILABLE") as raised:
        services.delivery_send(delivery_id=delivery.pk)

    assert raised.value.retry_after is None  # Celery's backoff decides
    # No urllib3 retry behind our back: the adapter was mounted with max_retries=0.
    assert [r["status"] for r in fake.sends(device.token)] == [503]
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.QUEUED
    assert Device.objects.get(pk=device.pk).active

    assert services.delivery_send(delivery_id=delivery.pk) == Outcome.SENT
    assert [r["status"] for r in fake.sends(device.token)] == [503, 200]


def test_a_timeout_is_transient(fake, order_shipped, settings):
    settings.NOTIFY_PROVIDER_TIMEOUT_SECONDS = 0.3
    device = _device("slow-3000")
    delivery = queued_push(device.recipient, order_shipped)

    started = time.monotonic()
    with pytest.raises(TransientDeliveryError, match=r"no answer within 0.3s"):
        services.delivery_send(delivery_id=delivery.pk)

    # The fake answers after 3 s: returning before that means our 0.3 s timeout cut it off.
    assert time.monotonic() - started < 2.9
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.QUEUED
    assert Device.objects.get(pk=device.pk).active


@pytest.mark.parametrize("unreachable", ["FCM_ENDPOINT", "token_uri"])
def test_an_unreachable_server_is_transient(fake, order_shipped, settings, tmp_path, unreachable):
    closed = "http://127.0.0.1:9"  # discard port: nothing listens there
    if unreachable == "FCM_ENDPOINT":
        settings.FCM_ENDPOINT = closed
    else:
        account = write_service_account(tmp_path / "other.json", token_uri=f"{closed}/token")
        settings.FCM_CREDENTIALS_FILE = str(account.path)
    device = _device("ok")
    delivery = queued_push(device.recipient, order_shipped)

    with pytest.raises(TransientDeliveryError, match=r"ConnectionError|TransportError"):
        services.delivery_send(delivery_id=delivery.pk)

    assert fake.sends() == []
    assert Device.objects.get(pk=device.pk).active


def test_a_token_endpoint_503_is_transient_without_google_auth_sleeping(
    fake, order_shipped, settings, private_key, tmp_path, request
):
    issuer = FakeFCM(fail_rate=1.0).start()  # every token request answered 503
    request.addfinalizer(issuer.stop)
    account = write_service_account(
        tmp_path / "b.json", token_uri=issuer.token_uri, private_key=private_key
    )
    settings.FCM_CREDENTIALS_FILE = str(issuer.trust(account).path)
    device = _device("ok")
    delivery = queued_push(device.recipient, order_shipped)

    with pytest.raises(TransientDeliveryError, match="answered 503"):
        services.delivery_send(delivery_id=delivery.pk)

    # google-auth alone would ask three times, sleeping about 1 s and 2 s in between.
    assert [r["status"] for r in issuer.token_requests()] == [503]
    assert fake.sends() == []
    assert Device.objects.get(pk=device.pk).active


@pytest.mark.parametrize(
    ("problem", "expected"),
    [
        ("bearer token from another issuer", "FCM 401 UNAUTHENTICATED: Request had invalid"),
        (
            "key the token endpoint does not know",
            "FCM OAuth token request refused (check FCM_CREDENTIALS_FILE): invalid_grant: "
            "Invalid JWT Signature.",
        ),
        ("project the key has no right to", "FCM 403 PERMISSION_DENIED: Permission 'cloudmess"),
    ],
)
def test_a_configuration_error_pauses_fcm_without_retry(
    fake, order_shipped, settings, private_key, tmp_path, request, problem, expected
):
    if problem.startswith("bearer"):  # another OAuth server issues it; FCM does not know it
        issuer = FakeFCM().start()
        request.addfinalizer(issuer.stop)
        account = write_service_account(
            tmp_path / "b.json", token_uri=issuer.token_uri, private_key=private_key
        )
        settings.FCM_CREDENTIALS_FILE = str(issuer.trust(account).path)
    elif problem.startswith("key"):
        stranger = write_service_account(tmp_path / "k.json", token_uri=fake.token_uri)
        settings.FCM_CREDENTIALS_FILE = str(stranger.path)
    else:
        settings.FCM_PROJECT_ID = "someone-elses-project"
    device = _device("ok")
    delivery = queued_push(device.recipient, order_shipped)

    result = deliver_push.apply(args=[delivery.pk])

    assert result.successful() and result.result == Outcome.DEFERRED.value
    assert_paused_for_configuration(delivery, "fcm", expected)
    assert len(fake.sends(device.token)) == (0 if problem.startswith("key") else 1)
    assert Device.objects.get(pk=device.pk).active


def test_configured_fcm_passes_the_system_check(fake):
    assert check_providers() == []


def test_missing_credentials_fail_the_system_check_when_push_is_enabled(fake, settings):
    settings.FCM_CREDENTIALS_FILE = ""

    (error,) = check_providers()

    assert error.id == "channels.E004"
    assert error.msg == (
        "NOTIFY_PROVIDER_PUSH (channels.providers.push.PushProvider): NOTIFY_PUSH_FCM: "
        "FCM_CREDENTIALS_FILE is not set (the Firebase project's service-account JSON key)."
    )
    with pytest.raises(SystemCheckError, match="FCM_CREDENTIALS_FILE"):
        call_command("check")


def test_push_without_fcm_does_not_check_it(settings):
    settings.FCM_CREDENTIALS_FILE = ""
    settings.NOTIFY_PUSH_SENDERS = {"apns": "", "fcm": ""}
    assert check_providers() == []  # push itself is not enabled by default


@pytest.mark.parametrize(
    ("contents", "expected"),
    [
        (None, "cannot be read"),
        ("{not json", "is not JSON"),
        ('{"type": "authorized_user"}', "is not a service-account key (type='authorized_user')"),
        ('{"type": "service_account"}', "is not a usable service-account key"),
        ("no project", "no FCM project id: set FCM_PROJECT_ID"),
    ],
)
def test_bad_credentials_files_are_named_by_the_system_check(
    fake, settings, tmp_path, contents, expected
):
    path = tmp_path / "bad.json"
    if contents == "no project":
        info = json.loads(Path(settings.FCM_CREDENTIALS_FILE).read_text())
        contents = json.dumps({**info, "project_id": ""})
    if contents is not None:
        path.write_text(contents)
    settings.FCM_CREDENTIALS_FILE = str(path)

    (error,) = check_providers()

    assert expected in error.msg
    assert error.msg.startswith(
        "NOTIFY_PROVIDER_PUSH (channels.providers.push.PushProvider): NOTIFY_PUSH_FCM:"
    )


# --- a real worker process --------------------------------------------------------------------


@pytest.fixture(scope="module")
def standalone_fcm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The fake run the way a demo runs it; it writes the service account pointing at itself."""
    folder = tmp_path_factory.mktemp("fcm-standalone")
    with standalone_fake(
        "fcm", f"--service-account={folder / 'sa.json'}", f"--log={folder / 'log'}"
    ) as port:
        yield {"url": f"http://127.0.0.1:{port}", "credentials": folder / "sa.json"}


@pytest.fixture(scope="module")
def push_worker(
    django_db_setup: None,
    standalone_fcm: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WorkerProcess]:
    with running_worker(
        PUSH.queue,
        tmp_path_factory.mktemp("fcm-worker"),
        NOTIFY_PROVIDER_PUSH="channels.providers.push.PushProvider",
        NOTIFY_PUSH_APNS="",
        NOTIFY_PUSH_FCM="channels.providers.fcm.FCMSender",
        FCM_CREDENTIALS_FILE=str(standalone_fcm["credentials"]),
        FCM_ENDPOINT=standalone_fcm["url"],
    ) as worker:
        yield worker


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_real_push_worker_sends_and_retries_a_503_once(
    api_client, order_shipped, push_worker, standalone_fcm, settings
):
    _point_at(settings, standalone_fcm["credentials"], standalone_fcm["url"])
    reached = _device("ok")
    flaky = _device("flaky-1", reached.recipient)

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
    assert delivery.provider == "fcm"
    seen = requests.get(f"{standalone_fcm['url']}/_fake/requests", timeout=5).json()
    sends = [r for r in seen if r["kind"] == "send"]
    statuses = {
        t: [r["status"] for r in sends if r["token"] == t] for t in (reached.token, flaky.token)
    }
    assert statuses == {reached.token: [200], flaky.token: [503, 200]}
    # One access token per worker process (the worker has two), each from a verified assertion.
    issued = [r["issued"] for r in seen if r["kind"] == "token"]
    assert 1 <= len(issued) <= 2
    assert {r["bearer"] for r in sends} <= set(issued)
    logged = (standalone_fcm["credentials"].parent / "log").read_text().splitlines()
    assert [json.loads(line)["kind"] for line in logged] == [r["kind"] for r in seen]
