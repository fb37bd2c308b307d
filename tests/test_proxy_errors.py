"""Every answer of the service is JSON in the API's error shape, also the ones Django never
sees (issue 11, defect 7): a 10 kB header, a long URL, a body over the limit, a malformed
request line, an HTTP version nginx does not speak, a header gunicorn refuses, and gunicorn
itself gone (a stalled body gets no answer at all, and no longer holds a worker). They used
to be gunicorn's (or nginx's) HTML pages. Django's own JSON errors pass through nginx
untouched."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from devtools import proxy
from tests.proxied import ProxiedAPI, free_port
from tests.workers import wait_for, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _exchange(port: int, raw: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` as is, read the answer until the server closes: (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before reading it all (a body over the limit)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def _request(target: str = "/healthz", extra: str = "", method: str = "GET") -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n"
    return head.encode()


def _error(status: int, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    assert headers.get("content-type", "").startswith("application/json"), (status, headers)
    error = json.loads(body)["error"]
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    return dict(error)


def test_a_10kb_header_is_a_json_431(proxied_api: ProxiedAPI) -> None:
    status, headers, body = _exchange(
        proxied_api.port, _request(extra=f"X-Big: {'a' * 10_000}\r\n")
    )
    assert status == 431
    assert _error(status, headers, body)["code"] == "header_too_large"


@pytest.mark.parametrize(("length", "expected"), [(4_000, 404), (9_000, 414)])
def test_long_urls_are_answered_in_json(
    proxied_api: ProxiedAPI, length: int, expected: int
) -> None:
    # 4 kB reaches Django (its JSON 404); over nginx's 8 kB line it is nginx's JSON 414.
    status, headers, body = _exchange(proxied_api.port, _request("/" + "a" * length))
    assert status == expected
    _error(status, headers, body)


def test_a_body_far_over_the_limit_is_a_json_413_from_the_proxy(proxied_api: ProxiedAPI) -> None:
    # Answered on the headers alone, before any of the body is read.
    extra = f"Content-Length: {proxy.max_body_size() + 1}\r\nContent-Type: application/json\r\n"
    status, headers, body = _exchange(proxied_api.port, _request("/api/notify", extra, "POST"))
    assert status == 413
    assert _error(status, headers, body)["code"] == "payload_too_large"


def test_a_malformed_request_line_is_a_json_400(proxied_api: ProxiedAPI) -> None:
    status, headers, body = _exchange(proxied_api.port, b"garbage\r\n\r\n")
    assert status == 400
    assert _error(status, headers, body)["code"] == "bad_request"


def test_an_unsupported_http_version_is_a_json_505(proxied_api: ProxiedAPI) -> None:
    # HTTP/2.0 in a plain request line: it used to be nginx's HTML page.
    raw = b"GET /healthz HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n"
    status, headers, body = _exchange(proxied_api.port, raw)
    assert status == 505
    assert _error(status, headers, body)["code"] == "http_version_not_supported"


def test_healthz_refuses_a_post_with_a_json_405_through_the_proxy(proxied_api: ProxiedAPI) -> None:
    extra = "Content-Length: 0\r\n"
    status, headers, body = _exchange(proxied_api.port, _request("/healthz", extra, "POST"))
    assert status == 405
    assert _error(status, headers, body)["code"] == "method_not_allowed"


def test_django_json_errors_pass_through_untouched(proxied_api: ProxiedAPI) -> None:
    # Just over the accept path's own limit: Django's 413, naming the limit, not nginx's page.
    length = settings.NOTIFY_MAX_BODY_BYTES + 1
    extra = (
        f"Content-Length: {length}\r\nContent-Type: application/json\r\n"
        "Authorization: Api-Key x\r\n"
    )
    status, headers, body = _exchange(
        proxied_api.port, _request("/api/notify", extra, "POST") + b" " * length
    )
    assert status in (401, 413)  # whichever Django decides first; its answer, not nginx's
    assert _error(status, headers, body)["code"] in ("unauthorized", "payload_too_large")
    status, headers, body = _exchange(proxied_api.port, _request("/api/notifications"))
    assert (status, _error(status, headers, body)["code"]) == (401, "unauthorized")


def test_a_stalled_body_is_cut_off_without_an_html_page(proxied_api: ProxiedAPI) -> None:
    # nginx logs a 408 on client_body_timeout (10 s) but sends nothing: a client that stopped
    # sending is taken for gone, so the connection is just closed (reset). What must not
    # happen: gunicorn's HTML page, or the connection held for gunicorn's 30 s.
    raw = _request(
        "/api/notify", "Content-Length: 1000\r\nContent-Type: application/json\r\n", "POST"
    )
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", proxied_api.port), timeout=60) as sock:
        sock.sendall(raw + b'{"userId":')
        try:
            answer = sock.recv(65536)
        except ConnectionResetError:
            answer = b""
    assert answer == b""
    assert time.monotonic() - started < 25


def test_a_header_gunicorn_refuses_is_answered_in_json(proxied_api: ProxiedAPI) -> None:
    # nginx lets a control character through in a header value; gunicorn refuses the request.
    status, headers, body = _exchange(proxied_api.port, _request(extra="X-Odd: a\x01b\r\n"))
    assert status == 400
    assert _error(status, headers, body)["code"] == "bad_request"


def test_gunicorn_gone_is_a_json_502(tmp_path_factory: pytest.TempPathFactory) -> None:
    port = free_port()
    with proxy.served(worker_env(), tmp_path_factory.mktemp("gone"), port) as sup:
        api = sup.pids()["api"]
        os.killpg(api, signal.SIGKILL)  # the master and its workers; not restarted (no polling)
        wait_for(lambda: _gone(api), timeout=30, what="gunicorn to die")

        status, headers, body = _exchange(port, _request())
        assert status == 502
        assert _error(status, headers, body)["code"] == "bad_gateway"

        def healthy() -> bool:
            sup.check_alive()
            return _exchange(port, _request())[0] == 200

        wait_for(healthy, timeout=60, interval=0.25, what="the supervisor to restart gunicorn")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
