"""The fakes' runtime faults (devtools/fakes/faults.py): what a client sees in each mode."""

from __future__ import annotations

import base64
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from devtools.fakes import faults
from devtools.fakes.postmark import DEFAULT_TOKEN, FakePostmark
from devtools.fakes.twilio import ACCOUNT_SID, AUTH_TOKEN, FakeTwilioServer


@pytest.fixture
def twilio() -> Iterator[FakeTwilioServer]:
    server = FakeTwilioServer(callback_delay=0).start()
    yield server
    faults.set_fault(server.url, "none")  # lets a held request go before the server stops
    server.stop()


@pytest.fixture
def postmark() -> Iterator[FakePostmark]:
    fake = FakePostmark().start()
    yield fake
    faults.set_fault(fake.url, "none")
    fake.stop()


def _sms(server: FakeTwilioServer, timeout: float = 5.0) -> tuple[int, dict[str, str]]:
    auth = base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
    request = urllib.request.Request(
        f"{server.url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json",
        data=urllib.parse.urlencode(
            {"To": "+14155550100", "From": "+15005550006", "Body": "hi"}
        ).encode(),
        headers={"Authorization": f"Basic {auth}"},
    )
    return _status(request, timeout)


def _email(fake: FakePostmark, timeout: float = 5.0) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(
        f"{fake.url}email",
        data=json.dumps({"From": "a@example.com", "To": "b@example.com", "TextBody": "x"}).encode(),
        headers={"X-Postmark-Server-Token": DEFAULT_TOKEN, "Content-Type": "application/json"},
    )
    return _status(request, timeout)


def _status(request: urllib.request.Request, timeout: float) -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


@pytest.mark.parametrize(("fixture", "send"), [("twilio", _sms), ("postmark", _email)])
def test_outage_and_throttle_answer_every_send_until_switched_off(
    request: pytest.FixtureRequest, fixture: str, send: Any
) -> None:
    fake = request.getfixturevalue(fixture)
    faults.set_fault(fake.url, "outage")
    assert [send(fake)[0] for _ in range(3)] == [503, 503, 503]
    faults.set_fault(fake.url, "throttle", retry_after=2)
    status, headers = send(fake)
    assert (status, headers.get("Retry-After")) == (429, "2")
    state = faults.set_fault(fake.url, "none")
    assert state["answered"] == {"outage": 3, "throttle": 1}
    assert send(fake)[0] in (200, 201)


def test_a_hung_send_times_out_and_is_never_accepted_afterwards(twilio: FakeTwilioServer) -> None:
    faults.set_fault(twilio.url, "hang")
    with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
        _sms(twilio, timeout=0.5)
    faults.set_fault(twilio.url, "none")
    assert faults.fault_state(twilio.url)["answered"] == {"hang": 1}
    assert _sms(twilio)[0] == 201
    answered = [r.get("status") for r in twilio.requests if r.get("fault") == "hang"]
    assert answered == [503]  # recorded as refused, not sent


def test_a_bad_control_request_is_refused(postmark: FakePostmark) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        faults.set_fault(postmark.url, "meltdown")
    assert refused.value.code == 400
    assert faults.fault_state(postmark.url)["mode"] == "none"
