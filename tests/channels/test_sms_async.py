"""SMSProvider.send as a coroutine: many sends at once on one loop against the Twilio fake,
each with its own answer, and the client's life on the loop it was made on."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from channels import aio
from channels.base import (
    Destination,
    OutboundMessage,
    ProviderConfigurationError,
    ProviderResult,
    TransientDeliveryError,
)
from channels.providers.sms import SMSProvider, _client
from devtools.fakes.faults import set_fault
from devtools.fakes.twilio import FakeTwilioServer
from tests.channels import guarding
from tests.channels.guarding import numbers
from tests.workers import wait_for

twilio_server, twilio = guarding.twilio_server, guarding.twilio


def _message(number: str, delivery_id: int = 1) -> OutboundMessage:
    return OutboundMessage(
        delivery_id=delivery_id,
        notification_id="n-1",
        channel="sms",
        event="order_shipped",
        destination=Destination(recipient_id=1, external_id="user-1", phone=number),
        content={"subject": "Order 7 shipped", "body": "Your order 7 is on its way."},
    )


def test_200_concurrent_sends_on_one_loop_reach_twilio_once_each(twilio: FakeTwilioServer):
    provider = SMSProvider()
    to = numbers(200)

    async def batch() -> list[ProviderResult]:
        sends = (provider.send(_message(n, i)) for i, n in enumerate(to))
        return list(await asyncio.gather(*sends))

    results = aio.run(batch())

    assert sorted(r["form"]["To"] for r in twilio.requests) == sorted(to)  # once each
    assert all(r["status"] == 201 for r in twilio.requests)
    sids = {r["form"]["To"]: r["response"]["sid"] for r in twilio.requests}
    assert [r.message_id for r in results] == [sids[n] for n in to]  # each its own answer


def test_concurrent_rate_limited_sends_each_get_their_own_retry_after(
    twilio: FakeTwilioServer, settings: Any
):
    """A is in flight (the fake holds it) while B is refused with Retry-After 2; then A is
    refused with Retry-After 7. Both on the process's loop, through the same client."""
    settings.NOTIFY_PROVIDER_TIMEOUT_SECONDS = 10.0
    provider = SMSProvider()
    first, second = numbers(2, start=300)
    set_fault(twilio.url, "throttle", retry_after=2)
    try:
        twilio.latency = 3.0  # read by A's request as it arrives
        held = asyncio.run_coroutine_threadsafe(provider.send(_message(first)), aio.loop())
        wait_for(lambda: twilio.messages_to(first), what="A at the fake")
        twilio.latency = 0.0
        with pytest.raises(TransientDeliveryError) as refused_second:
            aio.run(provider.send(_message(second)))
        assert not held.done()  # A is still waiting for its answer: both were in flight
        set_fault(twilio.url, "throttle", retry_after=7)
        with pytest.raises(TransientDeliveryError) as refused_first:
            held.result(timeout=10)
    finally:
        twilio.latency = 0.0
        set_fault(twilio.url, "none")

    assert (refused_second.value.status_code, refused_second.value.retry_after) == (429, 2.0)
    assert (refused_first.value.status_code, refused_first.value.retry_after) == (429, 7.0)
    assert [r["status"] for r in twilio.requests] == [429, 429]


def test_a_client_is_kept_on_its_loop_and_another_loop_gets_its_own(twilio: FakeTwilioServer):
    provider = SMSProvider()

    async def current() -> Any:
        return _client(twilio.account_sid, twilio.auth_token, twilio.url)

    kept = aio.run(current())
    aio.run(provider.send(_message(numbers(1)[0])))
    assert aio.run(current()) is kept  # one client, and session, across sends

    async def on_a_loop_of_its_own() -> tuple[Any, ProviderResult]:
        client = await current()
        result = await provider.send(_message(numbers(1, start=1)[0]))
        await provider.aclose()
        return client, result

    other, result = asyncio.run(on_a_loop_of_its_own())

    assert other is not kept
    assert other.http_client.session.closed  # aclose() closed that loop's session
    assert not kept.http_client.session.closed  # and left the process loop's alone
    assert result.message_id == twilio.requests[-1]["response"]["sid"]


@pytest.mark.parametrize("api_base", ["127.0.0.1:8025", "ftp://127.0.0.1:8025", "http://[::1"])
def test_an_unusable_api_base_is_a_configuration_error(twilio, settings, api_base):
    settings.TWILIO_API_BASE = api_base

    with pytest.raises(ProviderConfigurationError, match="check TWILIO_API_BASE"):
        aio.run(SMSProvider().send(_message(numbers(1)[0])))

    assert twilio.requests == []
