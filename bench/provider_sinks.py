"""The broadcast benchmark's provider sinks: nginx answering APNs, FCM and Twilio.

The Python fakes (devtools/fakes) check what a provider checks and cost about 0.8 ms of CPU per
delivery, as much as a third of what they are meant to measure. These sinks only answer each
provider's canned success reply, for a few hundredths of a millisecond per request: APNs over
HTTP/2 + TLS (a throwaway CA made here, trusted through ``APNS_CA_FILE``), FCM HTTP v1 and
Google's OAuth token endpoint over HTTP/1.1 (what the FCM sender's requests session speaks) and
Twilio's Messages API over HTTP/1.1. They take the ports the fakes would take, so the provider
settings of devtools/fakes_env.py stay as they are. Each request is one JSON line in
``<dir>/<provider>.log`` (bench/broadcast_report.py reads them); the server config is
bench/sinks/nginx.conf.in.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from devtools import proxy
from devtools.fakes.apns import throwaway_tls
from devtools.supervisor import RunError, Supervisor

TEMPLATE = Path(__file__).resolve().parent / "sinks" / "nginx.conf.in"
PROVIDERS = ("apns", "fcm", "twilio")
START_TIMEOUT = 30.0


@dataclass(frozen=True)
class Sinks:
    config: Path
    ports: dict[str, int]  # provider -> port on 127.0.0.1
    logs: dict[str, Path]  # provider -> its JSON-lines access log
    ca_file: Path  # the CA that signed the APNs sink's certificate


def ensure_nginx() -> str:
    """nginx's path; Debian's package is installed first if it is missing and apt-get can
    (as devtools/services.sh does). RunError says why when neither works."""
    try:
        return proxy.nginx_binary()
    except RunError:
        pass
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise RunError("nginx is not installed and cannot be installed here (needs root apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step in (["update", "-qq"], ["install", "-y", "-qq", "nginx"]):
        subprocess.run([apt, *step], env=env, check=False, capture_output=True, timeout=600)
    return proxy.nginx_binary()


def prepare(directory: Path, *, ports: Mapping[str, int], ca_file: Path) -> Sinks:
    """The config, the TLS files and the CA at ``ca_file``, under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_pem, cert_pem, key_pem = throwaway_tls()
    ca_file.write_bytes(ca_pem)
    (directory / "cert.pem").write_bytes(cert_pem)
    key = directory / "key.pem"
    key.touch(mode=0o600)
    key.write_bytes(key_pem)
    logs = {name: directory / f"{name}.log" for name in PROVIDERS}
    for log in logs.values():
        log.unlink(missing_ok=True)  # a previous run's requests would be counted
    # Run as root (a container, CI): nginx's worker too, or it could not enter the directory.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    words = {
        "@USER@": user,
        "@DIR@": str(directory),
        "@APNS_PORT@": str(ports["apns"]),
        "@FCM_PORT@": str(ports["fcm"]),
        "@TWILIO_PORT@": str(ports["twilio"]),
    }
    text = TEMPLATE.read_text()
    for word, value in words.items():
        text = text.replace(word, value)
    leftover = sorted(set(re.findall(r"@[A-Z_]+@", text)))
    if leftover:
        raise RunError(f"{TEMPLATE} uses {leftover}, which bench/provider_sinks.py does not set")
    config = directory / "nginx.conf"
    config.write_text(text)
    if len(str(directory / "replies.sock")) > 107:  # sockaddr_un.sun_path
        raise RunError(f"{directory} is too long for nginx's unix socket")
    return Sinks(config, {name: ports[name] for name in PROVIDERS}, logs, ca_file)


def argv(sinks: Sinks) -> list[str]:
    ensure_nginx()
    return proxy.nginx_argv(sinks.config)


def answering(sinks: Sinks) -> bool:
    return all(_accepts(port) for port in sinks.ports.values())


def start(sup: Supervisor, sinks: Sinks) -> None:
    """nginx under ``sup`` (as "sinks"), once every port accepts connections."""
    # SIGQUIT: nginx's graceful stop, which writes out the buffered access logs.
    sup.start("sinks", argv(sinks), stop_signal=signal.SIGQUIT)
    deadline = time.monotonic() + START_TIMEOUT
    while not answering(sinks):
        sup.check_alive()
        if time.monotonic() > deadline:
            raise RunError(f"the sinks did not listen on {sinks.ports} within {START_TIMEOUT}s")
        time.sleep(0.1)


@contextmanager
def served(directory: Path, *, ca_file: Path) -> Iterator[Sinks]:
    """The sinks on free ports, as a plain child process (for the tests); stopped on exit."""
    sinks = prepare(directory, ports={name: free_port() for name in PROVIDERS}, ca_file=ca_file)
    process = subprocess.Popen(
        argv(sinks), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not answering(sinks):
            if process.poll() is not None:
                raise RunError(f"nginx exited {process.returncode}: {process.stderr.read()}")  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                raise RunError(f"the sinks did not listen on {sinks.ports}")
            time.sleep(0.05)
        yield sinks
    finally:
        process.send_signal(signal.SIGQUIT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
