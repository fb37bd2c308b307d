"""The API as `make run` serves it: nginx on 127.0.0.1:<api port> in front of gunicorn and of
the inbox stream's ASGI process (uvicorn), each on a unix socket, all supervised
(docs/proxy.md).

nginx's server settings are config/nginx.conf.template, the same file docker-compose.yml
mounts; this module fills in its three names and wraps it in a main config of its own under
the run directory (no daemon, no root paths, logs to stderr), so nothing of /etc/nginx is used.
"""

from __future__ import annotations

import http.client
import os
import pwd
import re
import resource
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from devtools.supervisor import ROOT, RunError, Supervisor

TEMPLATE = ROOT / "config" / "nginx.conf.template"
GUNICORN_CONFIG = ROOT / "config" / "gunicorn.conf.py"
# Over the largest body the service takes, so that Django's own 413 (JSON, naming the limit)
# answers bodies just over it, and nginx's only the ones far over it.
BODY_MARGIN = 64 * 1024
# Requests in progress per client address (limit_conn in the template; docs/proxy.md).
CONN_PER_ADDRESS = 256
# Per worker process (worker_processes auto: one per core). A proxied request takes two
# descriptors (client and gunicorn), hence the descriptor limit of twice as many; as a normal
# user, nginx can raise its limit only up to the hard limit (`ulimit -Hn`), so both are capped
# there. config/nginx.main.conf (docker-compose.yml) has the same numbers.
WORKER_CONNECTIONS = 16384


@dataclass(frozen=True)
class Limits:
    """nginx's connection limits; the tests use smaller ones, to exhaust them cheaply."""

    conn_per_address: int = CONN_PER_ADDRESS
    worker_connections: int = WORKER_CONNECTIONS
    worker_processes: str = "auto"


_NAME = re.compile(r"\$\{(PROXY_[A-Z_]+)\}")
# sockaddr_un.sun_path is 108 bytes, NUL included.
_MAX_SOCKET_PATH = 107


def nginx_binary() -> str:
    """nginx from PATH, or Debian's /usr/sbin (not on a normal user's PATH)."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise RunError(
            "nginx is not installed: `make services` installs it (apt-get install nginx)"
        )
    return found


def max_body_size() -> int:
    from django.conf import settings

    return max(settings.NOTIFY_MAX_BODY_BYTES, settings.NOTIFY_FANOUT_MAX_BODY_BYTES) + BODY_MARGIN


def render(
    *,
    listen: str,
    upstream: str,
    max_body: int,
    stream_upstream: str,
    conn_per_address: int = CONN_PER_ADDRESS,
) -> str:
    """The template with its ${PROXY_...} names filled in, as the nginx image's envsubst does."""
    values = {
        "PROXY_LISTEN": listen,
        "PROXY_UPSTREAM": upstream,
        "PROXY_STREAM_UPSTREAM": stream_upstream,
        "PROXY_MAX_BODY_SIZE": str(max_body),
        "PROXY_CONN_PER_ADDRESS": str(conn_per_address),
    }
    text = TEMPLATE.read_text()
    unknown = set(_NAME.findall(text)) - set(values)
    if unknown:
        raise RunError(f"{TEMPLATE} uses {sorted(unknown)}, which devtools/proxy.py does not set")
    return _NAME.sub(lambda match: values[match.group(1)], text)


def _worker_limits(connections: int) -> tuple[int, int]:
    """(worker_connections, worker_rlimit_nofile) for ``connections``, within the hard limit."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 2 * connections if hard == resource.RLIM_INFINITY else min(2 * connections, hard)
    return min(connections, nofile // 2), nofile


def write_config(
    run_dir: Path,
    *,
    listen: str,
    upstream: str,
    stream_upstream: str,
    max_body: int,
    limits: Limits = Limits(),
) -> Path:
    """nginx.conf under ``run_dir/nginx``: the rendered template in an ``http`` block."""
    prefix = run_dir / "nginx"
    prefix.mkdir(parents=True, exist_ok=True)
    server = prefix / "server.conf"
    server.write_text(
        render(
            listen=listen,
            upstream=upstream,
            stream_upstream=stream_upstream,
            max_body=max_body,
            conn_per_address=limits.conn_per_address,
        )
    )
    connections, nofile = _worker_limits(limits.worker_connections)
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                              "uwsgi", "scgi")
    )  # fmt: skip
    # Run as root (a container, CI): workers as root too, since they must reach gunicorn's
    # socket and the temp paths under a run directory nobody else may enter.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
    main = prefix / "nginx.conf"
    main.write_text(
        f"""# Written by devtools/proxy.py for one `make run`; the server is {TEMPLATE.name}.
{user}daemon off;
worker_processes {limits.worker_processes};
worker_rlimit_nofile {nofile};
pid {prefix / "nginx.pid"};
error_log stderr warn;
events {{
    worker_connections {connections};
}}
http {{
    access_log off;
{temp}
    include {server};
}}
"""
    )
    return main


def nginx_argv(config: Path) -> list[str]:
    # -e: the error log before the config is read (the default, /var/log/nginx, may not be ours).
    return [nginx_binary(), "-c", str(config), "-p", str(config.parent), "-e", "stderr"]


def gunicorn_argv(bind: str, *, workers: int = 2) -> list[str]:
    """The API's gunicorn, as `make run` and docker-compose.yml start it."""
    return [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONFIG), "config.wsgi",
            "--bind", bind, "--workers", str(workers)]  # fmt: skip


def stream_argv(uds: Path) -> list[str]:
    """The ASGI process of the inbox stream, as `make run` and docker-compose.yml start it."""
    return [sys.executable, "-m", "uvicorn", "config.asgi:application", "--uds", str(uds),
            "--no-access-log", "--timeout-graceful-shutdown", "5"]  # fmt: skip


def socket_path(run_dir: Path, name: str = "api") -> Path:
    path = run_dir / f"{name}.sock"
    if len(str(path)) > _MAX_SOCKET_PATH:
        raise RunError(f"{path} is too long for a unix socket; choose a shorter --run-dir")
    return path


def start(
    sup: Supervisor, run_dir: Path, api_port: int, *, workers: int = 2, limits: Limits = Limits()
) -> None:
    """gunicorn on ``run_dir/api.sock``, the stream's uvicorn on ``run_dir/stream.sock`` and
    nginx on 127.0.0.1:``api_port`` in front of both."""
    sock, stream_sock = socket_path(run_dir), socket_path(run_dir, "stream")
    config = write_config(
        run_dir,
        listen=f"127.0.0.1:{api_port}",
        upstream=f"unix:{sock}",
        stream_upstream=f"unix:{stream_sock}",
        max_body=max_body_size(),
        limits=limits,
    )
    # Only nginx reaches the socket, and it sets X-Forwarded-Proto itself.
    sup.start(
        "api", gunicorn_argv(f"unix:{sock}", workers=workers), env={"NOTIFY_BEHIND_PROXY": "1"}
    )
    sup.start("stream", stream_argv(stream_sock))
    # SIGQUIT is nginx's graceful stop (it finishes the requests in flight); SIGTERM is fast.
    sup.start("proxy", nginx_argv(config), stop_signal=signal.SIGQUIT)


@contextmanager
def served(
    env: dict[str, str],
    run_dir: Path,
    api_port: int,
    *,
    workers: int = 2,
    timeout: float = 60.0,
    limits: Limits = Limits(),
) -> Iterator[Supervisor]:
    """nginx and gunicorn as `make run` starts them, until /healthz answers 200 through nginx;
    stopped on exit. For the tests and the benchmarks."""
    sup = Supervisor(env, grace=10.0)
    try:
        start(sup, run_dir, api_port, workers=workers, limits=limits)
        deadline = time.monotonic() + timeout
        while _healthz(api_port) != 200:
            sup.check_alive()
            if time.monotonic() > deadline:
                raise RunError(f"no 200 from /healthz through nginx within {timeout:.0f}s")
            time.sleep(0.1)
        yield sup
    finally:
        sup.stop()


def _healthz(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()
