"""gunicorn's settings for the API, behind nginx (config/nginx.conf.template, docs/proxy.md).

`gunicorn -c config/gunicorn.conf.py config.wsgi` in `make run`, docker-compose.yml and the
image; bind and workers come from the command line.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from gunicorn import util

# At least what nginx lets through (8 kB per line, 32 kB of headers), so nothing nginx accepts
# is refused by gunicorn: nginx's limits are the ones a client meets, with its JSON answers.
limit_request_line = 8190  # gunicorn's maximum
limit_request_field_size = 8190
limit_request_fields = 32768  # gunicorn's maximum; nginx's 32 kB hold at most ~8,000 headers
# Above nginx's proxy_read_timeout (25 s), which answers a hung request first (a JSON 504).
timeout = 30
# gunicorn >= 24 otherwise opens ~/.gunicorn/gunicorn.ctl, one path shared by every gunicorn
# of the user.
control_socket_disable = True

_CODES = {
    400: "bad_request",
    403: "forbidden",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "header_too_large",
    500: "internal_error",
    501: "not_implemented",
}


def _write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's own error answer (a request it cannot parse, a worker aborted on its timeout)
    in the API's error shape instead of its HTML page: what gets past nginx anyway (a header
    value with a control character nginx allows), or a client reaching gunicorn directly."""
    code = _CODES.get(status_int, "bad_request" if status_int < 500 else "internal_error")
    message = reason if status_int >= 500 else f"{reason}: {mesg}"
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


def _install(module: Any) -> None:
    # The only place gunicorn writes an error page; its workers look it up at call time.
    module.write_error = _write_json_error


_install(util)
