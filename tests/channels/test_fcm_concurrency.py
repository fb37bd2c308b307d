"""FCMSender called the way the delivery engine calls it: coroutines on the process's I/O loop
(channels/aio.py), many at once, against the local FCM v1 + OAuth fake."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from channels import aio
from channels.base import Destination, OutboundMessage, TransientDeliveryError
from channels.providers.fcm import FCMSender
from devtools.fakes.fcm import FakeFCM, write_service_account
from tests.channels.test_fcm import (
    _point_at,
    private_key,  # noqa: F401 (fixture)
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def fake(settings: Any, private_key: str, tmp_path: Path) -> Iterator[FakeFCM]:  # noqa: F811
    server = FakeFCM().start()
    account = write_service_account(
        tmp_path / "sa.json", token_uri=server.token_uri, private_key=private_key
    )
    _point_at(settings, server.trust(account).path, server.url)
    yield server
    server.stop()


def _message(number: int = 1) -> OutboundMessage:
    return OutboundMessage(
        delivery_id=number,
        notification_id=str(uuid.uuid4()),
        channel="push",
        event="order_shipped",
        destination=Destination(recipient_id=number, external_id=f"user-{number}"),
        content={"subject": "Order shipped", "body": "On its way."},
        data={"orderId": str(number)},
    )


def test_300_concurrent_sends_reach_each_device_once_with_one_token_request(fake):
    sender = FCMSender()
    tokens = [f"ok-{n}-{uuid.uuid4().hex}" for n in range(300)]

    async def send_all() -> list[str]:
        try:
            return await asyncio.gather(
                *(sender.send_to_device(t, _message(n)) for n, t in enumerate(tokens))
            )
        finally:
            await sender.aclose()

    names = aio.run(send_all())

    sends = fake.sends()
    assert sorted(r["token"] for r in sends) == sorted(tokens)  # each device exactly once
    assert {r["status"] for r in sends} == {200}
    assert names == [str(r["response"]["name"]) for r in sorted(sends, key=_order(tokens))]
    # All 300 found no token at first; one of them asked, the others waited for its answer.
    assert [r["status"] for r in fake.token_requests()] == [200]
    assert {r["bearer"] for r in sends} == {1}


def _order(tokens: list[str]) -> Any:
    position = {token: n for n, token in enumerate(tokens)}
    return lambda record: position[record["token"]]


def test_a_429_gives_its_retry_after_to_its_caller_and_the_send_beside_it_goes(fake):
    sender = FCMSender()
    throttled, beside = f"quota-{uuid.uuid4().hex}", f"ok-{uuid.uuid4().hex}"

    async def send_both() -> tuple[str | BaseException, str | BaseException]:
        try:
            return await asyncio.gather(
                sender.send_to_device(throttled, _message(1)),
                sender.send_to_device(beside, _message(2)),
                return_exceptions=True,
            )
        finally:
            await sender.aclose()

    started = time.monotonic()
    error, name = aio.run(send_both())

    assert isinstance(error, TransientDeliveryError)
    assert error.retry_after == 1
    assert (error.status_code, error.provider_code) == (429, "QUOTA_EXCEEDED")
    assert isinstance(name, str) and name.startswith("projects/demo-project/messages/")
    # One POST, and no waiting for the Retry-After second: the caller's retry does that.
    assert [r["status"] for r in fake.sends(throttled)] == [429]
    assert time.monotonic() - started < 1


def test_a_sender_used_from_another_loop_opens_a_session_of_its_own(fake):
    sender = FCMSender()
    first, second = f"ok-{uuid.uuid4().hex}", f"ok-{uuid.uuid4().hex}"

    async def send_then_close(token: str) -> str:
        try:
            return await sender.send_to_device(token, _message())
        finally:
            await sender.aclose()

    assert aio.run(sender.send_to_device(first, _message())).startswith("projects/demo-project/")
    # asyncio.run: a loop of its own on this thread, while the I/O loop's session stays open.
    assert asyncio.run(send_then_close(second)).startswith("projects/demo-project/")
    aio.run(sender.aclose())

    assert [r["status"] for r in fake.sends()] == [200, 200]
    assert len(fake.token_requests()) == 1  # the access token is the process's, not a loop's
