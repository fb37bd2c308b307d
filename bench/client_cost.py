"""CPU per provider request of our own senders (APNs, FCM, Twilio), against the nginx sinks.

Each sender is driven as the delivery engine drives it: ``--in-flight`` sends at once on the
process's I/O loop. The figure is this process's CPU (every thread) per request, the sinks'
own cost (a few hundredths of a millisecond) apart, so it is the client's cost alone: what a
change to a sender's request path buys is measured here in seconds, where the broadcast
benchmark needs minutes and mixes it with everything else.

    python bench/client_cost.py --requests 10000 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import provider_sinks  # noqa: E402

PROVIDERS = ("apns", "fcm", "twilio")


def configure(sinks: provider_sinks.Sinks, work: Path) -> None:
    """Django set up with our providers aimed at the sinks (as bench/broadcast.py wires them)."""
    from devtools.fakes.apns import new_signing_key
    from devtools.fakes.fcm import write_service_account

    fcm = f"http://127.0.0.1:{sinks.ports['fcm']}"
    account = write_service_account(work / "fcm.json", token_uri=f"{fcm}/token")
    key = work / "apns.p8"
    key.write_text(new_signing_key())
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "NOTIFY_PROVIDER_PUSH": "channels.providers.push.PushProvider",
            "NOTIFY_PROVIDER_SMS": "channels.providers.sms.SMSProvider",
            "NOTIFY_PUSH_APNS": "channels.providers.apns.APNsSender",
            "NOTIFY_PUSH_FCM": "channels.providers.fcm.FCMSender",
            "APNS_KEY_ID": "SINKKEY123",
            "APNS_TEAM_ID": "SINKTEAM12",
            "APNS_TOPIC": "com.example.notify",
            "APNS_PRIVATE_KEY_FILE": str(key),
            "APNS_ENDPOINT": f"https://127.0.0.1:{sinks.ports['apns']}",
            "APNS_CA_FILE": str(sinks.ca_file),
            "FCM_CREDENTIALS_FILE": str(account.path),
            "FCM_ENDPOINT": fcm,
            "TWILIO_ACCOUNT_SID": "AC" + "0123456789abcdef" * 2,
            "TWILIO_AUTH_TOKEN": "sink-auth-token",
            "TWILIO_FROM_NUMBER": "+15005550006",
            "TWILIO_API_BASE": f"http://127.0.0.1:{sinks.ports['twilio']}",
        }
    )
    import django

    django.setup()


def _message(index: int, channel: str, phone: str = "") -> Any:
    from channels.base import Destination, OutboundMessage

    return OutboundMessage(
        delivery_id=index,
        notification_id=f"00000000-0000-0000-0000-{index:012d}",
        channel=channel,
        event="order_shipped",
        destination=Destination(recipient_id=index, external_id=f"u{index}", phone=phone),
        content={"subject": "Your order has shipped", "body": "Order 9912 arrives tomorrow"},
        data={"orderId": "9912"},
        priority="bulk",
    )


def _one_call(provider: str) -> Any:
    """A coroutine function sending request ``i`` through our sender for ``provider``."""
    from channels.providers import push
    from channels.registry import provider_for

    if provider == "twilio":
        sms = provider_for("sms")
        return lambda i: sms.send(_message(i, "sms", phone=f"+1415555{i % 10000:04d}"))  # type: ignore[union-attr]
    from devtools.fakes.apns import device_token

    sender = push.sender_for(provider)
    assert sender is not None, provider
    if provider == "apns":
        token = lambda i: device_token(tail=f"{i:x}")  # noqa: E731
    else:
        token = lambda i: f"fcm:{i:0>152}"  # noqa: E731
    return lambda i: sender.send_to_device(token(i), _message(i, "push"))


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(provider: str, requests: int, in_flight: int) -> dict[str, float]:
    from channels import aio

    call = _one_call(provider)

    async def batch(start: int, count: int) -> None:
        limit = asyncio.Semaphore(in_flight)

        async def one(i: int) -> None:
            async with limit:
                await call(i)

        await asyncio.gather(*(one(i) for i in range(start, start + count)))

    aio.run(batch(0, min(500, requests)))  # connections, tokens, warm caches
    wall, cpu = time.perf_counter(), _cpu()
    aio.run(batch(1_000_000, requests))
    wall, cpu = time.perf_counter() - wall, _cpu() - cpu
    return {"ms_per_request": round(1000 * cpu / requests, 3), "per_s": round(requests / wall)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--in-flight", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--providers", default=",".join(PROVIDERS))
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/client_cost.json")
    args = parser.parse_args(argv)
    providers = [p for p in args.providers.split(",") if p]
    with tempfile.TemporaryDirectory(prefix="bench-client-cost-") as tmp:
        work = Path(tmp)
        with provider_sinks.served(work / "nginx", ca_file=work / "ca.pem") as sinks:
            configure(sinks, work)
            runs: dict[str, list[dict[str, float]]] = {p: [] for p in providers}
            for _ in range(args.runs):
                for provider in providers:  # interleaved: drift on a shared machine hits all
                    runs[provider].append(measure(provider, args.requests, args.in_flight))
            from notifications.tasks import _close_provider_connections

            _close_provider_connections()  # as a worker does at its shutdown
    result = {
        "parameters": {"requests": args.requests, "in_flight": args.in_flight, "runs": args.runs},
        "median_ms_per_request": {
            p: statistics.median(r["ms_per_request"] for r in rs) for p, rs in runs.items()
        },
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for provider, ms in result["median_ms_per_request"].items():
        print(f"{provider:7} {ms:.3f} ms CPU per request (median of {args.runs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
