"""The broadcast benchmark's nginx sinks answer as the real client libraries expect: one APNs
push (HTTP/2 + TLS, our APNs sender), one FCM message (pyfcm and google-auth, our FCM sender)
and one Twilio SMS (the twilio SDK, our SMS provider) each come back sent with a message id,
and each request is in its sink's log, the way bench/broadcast_report.py reads it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import broadcast_report as report
from bench import provider_sinks
from channels import aio
from channels.base import Destination, OutboundMessage
from channels.providers import push
from channels.registry import provider_for
from devtools.fakes.apns import device_token, new_signing_key
from devtools.fakes.fcm import write_service_account
from devtools.supervisor import RunError
from tests.workers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db]

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
FCM_TOKEN = "bench-sink-fcm:" + "x" * 140


@pytest.fixture(scope="module")
def sinks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[provider_sinks.Sinks]:
    try:
        provider_sinks.ensure_nginx()
    except RunError as exc:
        pytest.skip(f"the sinks need nginx: {exc}")
    run = tmp_path_factory.mktemp("sinks")
    with provider_sinks.served(run / "nginx", ca_file=run / "ca.pem") as served:
        yield served


@pytest.fixture
def wired(settings: Any, sinks: provider_sinks.Sinks, tmp_path: Path) -> provider_sinks.Sinks:
    """Our push and SMS providers aimed at the sinks, as bench/broadcast.py wires them."""
    settings.NOTIFY_PROVIDERS = {
        **settings.NOTIFY_PROVIDERS,
        "push": "channels.providers.push.PushProvider",
        "sms": "channels.providers.sms.SMSProvider",
    }
    settings.NOTIFY_PUSH_SENDERS = {
        "apns": "channels.providers.apns.APNsSender",
        "fcm": "channels.providers.fcm.FCMSender",
    }
    settings.APNS_KEY_ID, settings.APNS_TEAM_ID = "SINKKEY123", "SINKTEAM12"
    settings.APNS_TOPIC, settings.APNS_PRIVATE_KEY = "com.example.notify", new_signing_key()
    settings.APNS_ENDPOINT = f"https://127.0.0.1:{sinks.ports['apns']}"
    settings.APNS_CA_FILE = str(sinks.ca_file)
    fcm = f"http://127.0.0.1:{sinks.ports['fcm']}"
    account = write_service_account(tmp_path / "fcm.json", token_uri=f"{fcm}/token")
    settings.FCM_CREDENTIALS_FILE, settings.FCM_PROJECT_ID = str(account.path), ""
    settings.FCM_ENDPOINT = fcm
    settings.TWILIO_ACCOUNT_SID, settings.TWILIO_AUTH_TOKEN = ACCOUNT_SID, "sink-auth-token"
    settings.TWILIO_FROM_NUMBER, settings.TWILIO_MESSAGING_SERVICE_SID = "+15005550006", ""
    settings.TWILIO_STATUS_CALLBACK_URL = ""
    settings.TWILIO_API_BASE = f"http://127.0.0.1:{sinks.ports['twilio']}"
    return sinks


def _message(channel: str, destination: Destination, body: str) -> OutboundMessage:
    return OutboundMessage(
        delivery_id=1,
        notification_id="00000000-0000-0000-0000-000000000001",
        channel=channel,
        event="order_shipped",
        destination=destination,
        content={"subject": "Order 7 shipped", "body": body},
        data={"orderId": "7"},
    )


def _logged(sinks: provider_sinks.Sinks) -> report.Received:
    return report.read_fake_logs(dict(sinks.logs))


def test_an_apns_push_and_an_fcm_message_are_sent_with_message_ids(wired):
    apns_token = device_token("ok")
    destination = Destination(
        recipient_id=1,
        external_id="sink-push",
        device_tokens=(("apns", apns_token), ("fcm", FCM_TOKEN)),
    )
    message = _message("push", destination, "On its way.")

    async def both() -> list[str]:
        return [
            await push.sender_for(platform).send_to_device(token, message)  # type: ignore[union-attr]
            for platform, token in destination.device_tokens
        ]

    apns_id, fcm_id = aio.run(both())
    assert len(apns_id) == 36  # a UUID, as Apple's apns-id
    assert fcm_id.startswith("projects/demo-project/messages/")
    # Counted as the report counts the broadcast's sends; the OAuth token request apart.
    got = wait_for(lambda: (g := _logged(wired)).broadcast["push"][1:] and g, timeout=10,
                   what="both pushes in the sinks' logs")  # fmt: skip
    assert got.statuses == {"apns": {"200": 1}, "fcm": {"200": 1}, "twilio": {}}
    assert got.other["fcm"] == 1 and got.repeated == {"apns": 0, "fcm": 0, "twilio": 0}


def test_a_twilio_sms_is_sent_with_a_message_sid_and_its_text_is_logged(wired):
    destination = Destination(recipient_id=2, external_id="sink-sms", phone="+14155550101")
    body = "Your sign-in code is sinkcode42"
    result = aio.run(provider_for("sms").send(_message("sms", destination, body)))  # type: ignore[union-attr]

    assert result.message_id.startswith("SM") and len(result.message_id) == 34
    assert result.details == {"status": "queued"}
    # The transactional code is found in the logged form, as the benchmark's latency needs.
    got = wait_for(lambda: (g := _logged(wired)).transactional["sms"] and g, timeout=10,
                   what="the SMS in the Twilio sink's log")  # fmt: skip
    assert list(got.transactional["sms"]) == ["sinkcode42"]
