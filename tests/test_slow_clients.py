"""Stalled clients cannot starve the API (issue 11, defect 2).

Two connections that sent the headers of `POST /api/notify` with Content-Length: 1000 and
10 bytes of body used to hold both sync gunicorn workers for 30 s, so /healthz and every other
request timed out. nginx now reads every request before gunicorn sees it: with 50 uploads
stalled mid-body and 50 connections stalled mid-headers, /healthz and `POST /api/notify` all
answer. The per-request timeout (5 s) only tells stuck from working; bench/slow_clients.py
measures the latency.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator

import pytest
from rest_framework_api_key.models import APIKey

from preferences.models import Event
from tests.factories import RecipientFactory
from tests.proxied import ProxiedAPI
from tests.workers import purge_broker

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

STALLED = 50
REQUESTS = 50
TIMEOUT = 5.0  # a stalled worker made them wait 30 s


def _stall_body(port: int, key: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
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
    except TimeoutError:
        return 0
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
