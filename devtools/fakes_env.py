"""The four provider fakes `make run` starts, and the wiring that points the real clients at them.

``prepare()`` writes under ``.run/`` what the fakes and the service must share (a fresh APNs
signing key, an FCM service account whose ``token_uri`` is the FCM fake, random Twilio and
Postmark credentials; the APNs fake adds its CA when it starts) and returns the fakes' command
lines and the environment for gunicorn, the workers and beat: the same settings a production
deployment sets, only aimed at 127.0.0.1. ``received()`` reads the fakes' JSONL logs back as
one line per fake. Secrets are new on every run: nothing in ``.run/`` outlives the fakes that
trust it.
"""

from __future__ import annotations

import json
import secrets
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from devtools.fakes.apns import new_signing_key
from devtools.fakes.fcm import write_service_account

PORTS = {"apns": 2197, "fcm": 8089, "twilio": 8026, "postmark": 8025}
# What the APNs fake expects in the provider token and the apns-topic header.
APNS_KEY_ID, APNS_TEAM_ID, APNS_TOPIC = "FAKEKEY123", "FAKETEAM12", "com.example.notify"
TWILIO_FROM_NUMBER = "+15005550006"  # Twilio's magic "valid sender" test number
FROM_EMAIL = "Notifications <notify@example.com>"


@dataclass(frozen=True)
class Fake:
    name: str
    argv: list[str]
    ready: str  # the line it prints once it answers
    log: Path


@dataclass(frozen=True)
class Wiring:
    fakes: list[Fake]
    env: dict[str, str]  # provider settings for gunicorn, the workers and beat
    env_file: Path  # the same settings, to `set -a; . .run/providers.env` in another shell


def prepare(run_dir: Path, *, api_port: int, ports: Mapping[str, int]) -> Wiring:
    run_dir.mkdir(parents=True, exist_ok=True)
    api = f"http://127.0.0.1:{api_port}"
    files = {
        "apns_key": run_dir / "apns-key.p8",
        "apns_public": run_dir / "apns-key.pub.pem",
        "apns_ca": run_dir / "apns-ca.pem",
        "fcm_account": run_dir / "fcm-service-account.json",
    }
    logs = {name: run_dir / f"{name}.jsonl" for name in PORTS}
    for path in [files["apns_ca"], *logs.values()]:
        path.unlink(missing_ok=True)  # a stale CA or last run's requests would mislead

    private_pem = new_signing_key()
    _write_secret(files["apns_key"], private_pem)
    # Apple only ever holds the public half of a .p8 key; so does the fake.
    public_pem = (
        serialization.load_pem_private_key(private_pem.encode(), password=None)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    files["apns_public"].write_bytes(public_pem)
    fcm_url = f"http://127.0.0.1:{ports['fcm']}"
    write_service_account(files["fcm_account"], token_uri=f"{fcm_url}/token")
    twilio_sid, twilio_token = "AC" + secrets.token_hex(16), secrets.token_urlsafe(24)
    postmark_token = secrets.token_urlsafe(24)
    webhook_secret = f"postmark:{secrets.token_urlsafe(18)}"

    python = [sys.executable, "-m"]
    fakes = [
        Fake(
            "apns",
            [*python, "devtools.fakes.apns", "--port", str(ports["apns"]),
             "--key-id", APNS_KEY_ID, "--team-id", APNS_TEAM_ID, "--topic", APNS_TOPIC,
             "--public-key", str(files["apns_public"]), "--ca-out", str(files["apns_ca"]),
             "--log", str(logs["apns"])],
            f"fake apns on 127.0.0.1:{ports['apns']}",
            logs["apns"],
        ),
        Fake(
            "fcm",
            [*python, "devtools.fakes.fcm", "--port", str(ports["fcm"]),
             "--service-account", str(files["fcm_account"]), "--log", str(logs["fcm"])],
            f"fake fcm on 127.0.0.1:{ports['fcm']}",
            logs["fcm"],
        ),
        Fake(
            "twilio",
            [*python, "devtools.fakes.twilio", "--port", str(ports["twilio"]),
             # "=" form: a random token may start with "-", which argparse takes for an option.
             "--account-sid", twilio_sid, f"--auth-token={twilio_token}",
             "--log", str(logs["twilio"])],
            f"fake twilio on 127.0.0.1:{ports['twilio']}",
            logs["twilio"],
        ),
        Fake(
            "postmark",
            [*python, "devtools.fakes.postmark", "--port", str(ports["postmark"]),
             f"--server-token={postmark_token}", "--log", str(logs["postmark"]),
             "--webhook-url", f"{api}/webhooks/anymail/postmark/tracking/",
             "--webhook-auth", webhook_secret],
            f"fake postmark on 127.0.0.1:{ports['postmark']}",
            logs["postmark"],
        ),
    ]  # fmt: skip
    env = {
        "NOTIFY_PROVIDER_PUSH": "channels.providers.push.PushProvider",
        "NOTIFY_PROVIDER_SMS": "channels.providers.sms.SMSProvider",
        "NOTIFY_PROVIDER_EMAIL": "channels.providers.email.EmailProvider",
        "NOTIFY_PROVIDER_INAPP": "channels.providers.inapp.InAppProvider",
        "NOTIFY_PUSH_APNS": "channels.providers.apns.APNsSender",
        "NOTIFY_PUSH_FCM": "channels.providers.fcm.FCMSender",
        "APNS_KEY_ID": APNS_KEY_ID,
        "APNS_TEAM_ID": APNS_TEAM_ID,
        "APNS_TOPIC": APNS_TOPIC,
        "APNS_PRIVATE_KEY_FILE": str(files["apns_key"]),
        "APNS_ENDPOINT": f"https://127.0.0.1:{ports['apns']}",
        "APNS_CA_FILE": str(files["apns_ca"]),
        "FCM_CREDENTIALS_FILE": str(files["fcm_account"]),
        "FCM_ENDPOINT": fcm_url,
        "TWILIO_ACCOUNT_SID": twilio_sid,
        "TWILIO_AUTH_TOKEN": twilio_token,
        "TWILIO_FROM_NUMBER": TWILIO_FROM_NUMBER,
        "TWILIO_API_BASE": f"http://127.0.0.1:{ports['twilio']}",
        # The fake signs its callbacks over this URL, and the webhook checks them against it.
        "TWILIO_STATUS_CALLBACK_URL": f"{api}/webhooks/twilio/status",
        "EMAIL_BACKEND": "anymail.backends.postmark.EmailBackend",
        "ANYMAIL_POSTMARK_SERVER_TOKEN": postmark_token,
        "ANYMAIL_POSTMARK_API_URL": f"http://127.0.0.1:{ports['postmark']}/",
        "ANYMAIL_WEBHOOK_SECRET": webhook_secret,
        "DEFAULT_FROM_EMAIL": FROM_EMAIL,
        # Where the e-mails' one-click unsubscribe links point (the API behind nginx).
        "NOTIFY_PUBLIC_URL": api,
    }
    env_file = run_dir / "providers.env"
    _write_secret(env_file, "".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items()))
    return Wiring(fakes, env, env_file)


def _write_secret(path: Path, text: str) -> None:
    path.unlink(missing_ok=True)
    path.touch(mode=0o600)
    path.write_text(text)


def received(fakes: list[Fake]) -> list[tuple[str, str]]:
    """(fake, one line saying what it received and answered), from the fakes' JSONL logs."""
    describe = {"apns": _apns, "fcm": _fcm, "twilio": _twilio, "postmark": _postmark}
    return [(fake.name, describe[fake.name](_records(fake.log))) for fake in fakes]


def _records(log: Path) -> list[dict[str, Any]]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [json.loads(line) for line in lines if line.strip()]


def _apns(records: list[dict[str, Any]]) -> str:
    sends = [
        f"{r['token']} → {r['status']} {r['reason'] or 'apns-id ' + r.get('apnsId', '?')}"
        for r in records
    ]
    return f"{len(records)} push request(s) over HTTP/2, JWT and topic checked: " + (
        "; ".join(sends) or "none"
    )


def _fcm(records: list[dict[str, Any]]) -> str:
    tokens = [r for r in records if r["kind"] == "token"]
    sends = [
        f"{r.get('token')} → {r['status']} "
        + str(r["response"].get("name") or r["response"].get("error", {}).get("status"))
        for r in records
        if r["kind"] == "send"
    ]
    granted = sum(1 for r in tokens if r["status"] == 200)
    return f"{len(tokens)} OAuth token request(s) ({granted} granted), {len(sends)} send(s): " + (
        "; ".join(sends) or "none"
    )


def _twilio(records: list[dict[str, Any]]) -> str:
    messages = [
        f"To {r['form'].get('To')} {r['form'].get('Body', '')!r} → {r['status']} "
        + str(r["response"].get("sid") or r["response"].get("code"))
        for r in records
        if r["kind"] == "requests"
    ]
    callbacks = [
        f"{r['params']['MessageStatus']} ({r.get('status') or r.get('error')})"
        for r in records
        if r["kind"] == "callbacks"
    ]
    return (
        f"{len(messages)} message(s): {'; '.join(messages) or 'none'}; signed status "
        f"callbacks posted: {', '.join(callbacks) or 'none'}"
    )


def _postmark(records: list[dict[str, Any]]) -> str:
    emails = [
        f"To {r['json'].get('To')} {r['json'].get('Subject')!r} → {r['status']} "
        + str(r["response"].get("MessageID") or r["response"].get("Message"))
        for r in records
        if isinstance(r.get("json"), dict)
    ]
    return (
        f"{len(emails)} email(s): {'; '.join(emails) or 'none'}; then Postmark's Delivery webhook"
    )
