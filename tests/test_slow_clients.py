"""Stalled clients cannot starve the API (issue 11, defect 2).

Two connections that sent the headers of `POST /api/notify` with Content-Length: 1000 and
10 bytes of body used to hold both sync gunicorn workers for 30 s, so /healthz and every other
request timed out. nginx now reads every request before gunicorn sees it: with 50 uploads
stalled mid-body and 50 connections stalled mid-headers, /healthz and `POST /api/notify` all
answer. The per-request timeout (5 s) only tells stuck from working; bench/slow_clients.py
measures the latency.

One client address cannot exhaust the proxy's connections either (probe finding 1: 8,200
connections trickling bodies took all of nginx's 4,096): it may have CONN_PER_ADDRESS requests
in progress, and its next ones are refused with a JSON 429 while other addresses are served.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from rest_framework_api_key.models import APIKey

from devtools import proxy
from preferences.models import Event
from tests.factories import RecipientFactory
from tests.proxied import ProxiedAPI, free_port
from tests.workers import purge_broker, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

STALLED = 50
REQUESTS = 50
TIMEOUT = 5.0  # a stalled worker made them wait 30 s


def _stall_body(port: int, key: str, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(
        ("127.0.0.1", port), timeout=TIMEOUT, source_address=(source, 0)
    )
    sock.sendall(
        b"POST /api/notify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Authorization: Api-Key {key}\r\n".encode()
        + b"Content-Length: 1000\r\n\r\n"
        + b'{"userId":'  # 10 of the 1000 bytes, then nothing
    )
    return sock


def _stall_headers(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    return sock


@pytest.fixture
def stalled(proxied_api: ProxiedAPI, api_key: tuple[APIKey, str]) -> Iterator[list[socket.socket]]:
    socks = [_stall_body(proxied_api.port, api_key[1]) for _ in range(STALLED)]
    socks += [_stall_headers(proxied_api.port) for _ in range(STALLED)]
    yield socks
    for sock in socks:
        sock.close()
    purge_broker()  # the accepted notifications' tasks: no worker runs here


def _unanswered(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return not sock.recv(1)  # b"": closed by the other side
    except BlockingIOError:
        return True  # nothing to read: still waiting for the rest of its request
    finally:
        sock.settimeout(TIMEOUT)


def _request(port: int, method: str, path: str, key: str = "", body: object = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    headers = {"Authorization": f"Api-Key {key}", "Content-Type": "application/json"}
    try:
        conn.request(method, path, json.dumps(body) if body is not None else None, headers)
        return conn.getresponse().status
    except (TimeoutError, ConnectionError):
        return 0  # no answer (reset: nginx had no connection left for it)
    finally:
        conn.close()


def test_stalled_uploads_and_headers_do_not_starve_healthz_or_notify(
    proxied_api: ProxiedAPI,
    api_key: tuple[APIKey, str],
    order_shipped: Event,
    stalled: list[socket.socket],
) -> None:
    recipient = RecipientFactory()
    key = api_key[1]
    body = {"userId": recipient.external_id, "event": "order_shipped", "channels": ["inapp"],
            "data": {"orderId": "9912"}}  # fmt: skip

    health = [_request(proxied_api.port, "GET", "/healthz") for _ in range(REQUESTS)]
    notify = [_request(proxied_api.port, "POST", "/api/notify", key, body) for _ in range(REQUESTS)]
    bad = _request(proxied_api.port, "POST", "/api/notify", key, {"event": "order_shipped"})

    assert health == [200] * REQUESTS  # 0: timed out
    assert notify == [202] * REQUESTS
    assert bad == 400
    # The stalled connections were stalled the whole time (not answered or closed early).
    assert all(_unanswered(sock) for sock in stalled)


# The limits are small here so that exhausting them is cheap: one nginx worker with 128
# connections (a proxied request takes two) and 16 requests per address. 160 trickling uploads
# from another loopback address (Linux routes all of 127/8 to lo) are more than the worker has:
# without limit_conn in config/nginx.conf.template, /healthz from 127.0.0.1 then gets no
# answer and far fewer than 144 refusals come back (seen failing so).
PER_ADDRESS = 16
ATTACKERS = 160
BATCH = 16
LIMITS = proxy.Limits(conn_per_address=PER_ADDRESS, worker_connections=128, worker_processes="1")
ATTACKER = "127.0.0.2"


@pytest.fixture(scope="module")
def limited_api(
    django_db_setup: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxiedAPI]:
    port = free_port()
    with proxy.served(worker_env(), tmp_path_factory.mktemp("limited"), port, limits=LIMITS) as sup:
        yield ProxiedAPI(port, sup)


def _answers(
    socks: list[socket.socket], enough: int, deadline: float
) -> dict[socket.socket, bytes]:
    """What ``socks`` were answered, read until the server closed or the answer was whole,
    until ``enough`` of them were or ``deadline``; those are closed (as a client would)."""
    data = {sock: b"" for sock in socks}
    done: dict[socket.socket, bytes] = {}
    while len(done) < enough and time.monotonic() < deadline:
        waiting = [sock for sock in socks if sock not in done]
        readable, _, _ = select.select(waiting, [], [], 0.5)
        for sock in readable:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            data[sock] += chunk
            head, sep, body = data[sock].partition(b"\r\n\r\n")
            length = next(
                (int(line.split(b":")[1]) for line in head.split(b"\r\n")
                 if line.lower().startswith(b"content-length:")),
                None,
            )  # fmt: skip
            if not chunk or (sep and length is not None and len(body) >= length):
                done[sock] = data[sock]
                sock.close()
    return done


class _Trickle(threading.Thread):
    """One byte every 2 s on each socket: nginx's per-read body timeout (10 s) never fires."""

    def __init__(self, socks: list[socket.socket]) -> None:  # appended to while it runs
        super().__init__(daemon=True)
        self.socks = socks
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(2.0):
            for sock in self.socks:
                try:
                    sock.send(b" ")
                except OSError:
                    pass  # refused and closed, or cut by nginx (the test's checks tell)


def test_one_address_cannot_exhaust_the_proxys_connections(
    limited_api: ProxiedAPI, api_key: tuple[APIKey, str], order_shipped: Event
) -> None:
    key = api_key[1]
    attack: list[socket.socket] = []
    refused: dict[socket.socket, bytes] = {}
    trickle = _Trickle(attack)
    trickle.start()
    try:
        for _ in range(ATTACKERS // BATCH):
            # Opened a batch at a time, each answered before the next: a burst of more new
            # connections than nginx has left would be closed unanswered (nginx reuses idle new
            # connections when it runs out), refused or not.
            attack += [_stall_body(limited_api.port, key, ATTACKER) for _ in range(BATCH)]
            waiting = [sock for sock in attack if sock not in refused]
            # Generous for a slow machine: a refusal comes as soon as nginx has read the headers.
            # (Without the limit, no batch is answered: each waits this long, then the next.)
            deadline = time.monotonic() + 5
            refused |= _answers(waiting, len(attack) - PER_ADDRESS - len(refused), deadline)
        held = [sock for sock in attack if sock not in refused]

        recipient = RecipientFactory()
        body = {"userId": recipient.external_id, "event": "order_shipped", "channels": ["inapp"],
                "data": {"orderId": "9913"}}  # fmt: skip
        health = [_request(limited_api.port, "GET", "/healthz") for _ in range(5)]
        notify = [_request(limited_api.port, "POST", "/api/notify", key, body) for _ in range(5)]

        assert health == [200] * 5  # 0: timed out, no connection left for 127.0.0.1
        assert notify == [202] * 5
        assert len(refused) == ATTACKERS - PER_ADDRESS
        for answer in refused.values():
            head, _, payload = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 429 ")
            assert b"content-type: application/json" in head.lower()
            assert json.loads(payload)["error"]["code"] == "too_many_connections"
        # The ones within the limit are still being read (trickled, never answered or cut).
        assert len(held) == PER_ADDRESS
        assert all(_unanswered(sock) for sock in held)
    finally:
        trickle.stopped.set()
        trickle.join()
        for sock in attack:
            sock.close()
        purge_broker()
