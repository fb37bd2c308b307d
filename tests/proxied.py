"""The API behind nginx, as `make run` serves it (devtools/proxy.py), on the test database:
a fixture for the tests that talk HTTP to it over real sockets."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from devtools import proxy
from devtools.supervisor import Supervisor
from tests.workers import worker_env


@dataclass
class ProxiedAPI:
    port: int
    supervisor: Supervisor


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def proxied_api(
    django_db_setup: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxiedAPI]:
    """nginx on a free 127.0.0.1 port in front of gunicorn (2 sync workers) on a unix socket."""
    port = free_port()
    with proxy.served(worker_env(), tmp_path_factory.mktemp("proxy"), port) as sup:
        yield ProxiedAPI(port, sup)
