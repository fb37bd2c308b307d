"""Child processes for integration tests (Celery workers, standalone provider fakes), waiting
on observable conditions, and the broker they share (Redis or RabbitMQ, through kombu)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.db import connection
from kombu import Connection
from kombu import pools as kombu_pools
from kombu.transport.native_delayed_delivery import (
    MAX_LEVEL,
    bind_queue_to_native_delayed_delivery_exchange,
    declare_native_delayed_delivery_exchanges_and_queues,
    level_name,
)

from config.celery import app
from notifications.models import Delivery, DeliveryStatus

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def wait_for(
    condition: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll until ``condition()`` is truthy and return it; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


class WorkerProcess:
    """``celery -A config worker -Q <queue>`` as a child process, ready when it answers a ping."""

    def __init__(self, queue: str, env: dict[str, str], log_dir: Path) -> None:
        self.queue = queue
        self.name = f"{queue}-{uuid.uuid4().hex[:8]}@tests"
        self.log_path = log_dir / f"worker-{queue}.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "-Q",
                queue,
                "-n",
                self.name,
                "--concurrency",
                "2",
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
            ],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        def answered() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"worker {self.name} exited:\n{self.log()}")
            return bool(app.control.ping(destination=[self.name], timeout=0.5))

        wait_for(answered, timeout=timeout, what=f"worker {self.name} to answer a ping")

    def log(self) -> str:
        return self.log_path.read_text()[-5000:]

    def stop(self) -> None:
        # Celery's warm shutdown: the main process lets its pool finish what it holds.
        # SIGTERM to the whole group would kill pool children mid-task.
        terminate(self.process, timeout=60)
        self._log.close()


def test_database_url() -> str:
    """The pytest test database (``test_…``, once django_db_setup ran) as a DATABASE_URL."""
    db = settings.DATABASES["default"]
    name = connection.settings_dict["NAME"]
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{name}"


test_database_url.__test__ = False  # type: ignore[attr-defined]  # not a test, despite its name


def worker_env(**overrides: str) -> dict[str, str]:
    """The environment of a child process on the test settings, database and broker."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings_test",
        "DATABASE_URL": test_database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        **overrides,
    }


def broker_queues() -> list[str]:
    """Every queue the tests' messages can wait in: the lanes and maintenance, plus RabbitMQ's
    native delayed delivery queues when quorum queues send countdowns through them."""
    queues = list(settings.NOTIFY_QUEUES)
    if settings.RABBITMQ_QUORUM_QUEUES:
        queues += [level_name(level) for level in range(MAX_LEVEL + 1)]
    return queues


def purge_broker() -> None:
    """Empty every queue of the test broker (a queue not declared yet is empty already).

    Queues are purged, not deleted: a process that declared one keeps publishing to it without
    declaring it again.
    """
    with app.connection_for_write() as conn:
        if settings.RABBITMQ_QUORUM_QUEUES:
            declare_delayed_delivery(conn)
        for queue in broker_queues():
            with conn.channel() as channel:
                try:
                    channel.queue_purge(queue)
                except conn.channel_errors:  # RabbitMQ: 404 NOT_FOUND, the channel is closed
                    pass


def declare_delayed_delivery(conn: Connection) -> None:
    """What a worker declares when it starts on quorum queues: the queues, RabbitMQ's native
    delayed delivery exchanges and queues, and the bindings between them. Without them a
    countdown published before any worker ran on the vhost is refused (404 no exchange
    'celery_delayed_27'); a deployment has had a worker start before anything retries."""
    declare_native_delayed_delivery_exchanges_and_queues(
        conn, app.conf.broker_native_delayed_delivery_queue_type
    )
    for queue in app.amqp.queues.values():
        with conn.channel() as channel:
            queue.bind(channel).declare()
        bind_queue_to_native_delayed_delivery_exchange(conn, queue)


def lose_broker_messages() -> None:
    """What a broker loss does to the test broker: Redis ``FLUSHDB`` (every queue, the
    unacknowledged messages, the broker watch's canary), or RabbitMQ's queues deleted and this
    process's connections closed, as a deleted vhost or a restart that kept no queue leaves
    them (a connection remembers what it declared: a live one would publish into the void).
    Workers declare the lanes again when they start."""
    with app.connection_for_write() as conn:
        if settings.BROKER_IS_REDIS:
            conn.default_channel.client.flushdb()
            return
        from notifications.services.broker_watch import CANARY

        for queue in [*broker_queues(), CANARY]:
            with conn.channel() as channel:
                try:
                    channel.queue_delete(queue)
                except conn.channel_errors:  # never declared
                    pass
    # Connections dropped as the broker drops them: new pools, so nothing declared is cached.
    kombu_pools.reset()
    app._pool = None
    app.amqp._producer_pool = None


class BeatProcess:
    """``celery -A config beat`` as a child process, its schedule file in ``log_dir``."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.log_path = log_dir / "beat.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "beat", "--loglevel", "INFO",
             "--schedule", str(log_dir / "celerybeat-schedule")],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text()[-5000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._log.close()


def dead_broker_url() -> str:
    """The test broker's URL with the port of a service nothing listens on (discard, 9)."""
    parts = urlsplit(settings.CELERY_BROKER_URL)
    netloc = parts.netloc.rpartition("@")
    host = f"{netloc[0]}{netloc[1]}{parts.hostname}:9"
    return urlunsplit(parts._replace(netloc=host))


@contextmanager
def running_workers(
    queues: Iterable[str], log_dir: Path, *, keep_broker: bool = False, **env_overrides: str
) -> Iterator[dict[str, WorkerProcess]]:
    """One worker per queue on an emptied broker (``keep_broker``: as it is, e.g. for workers
    that take over what earlier ones left), all started before any is waited for."""
    env = worker_env(**env_overrides)
    if not keep_broker:
        purge_broker()
    started: dict[str, WorkerProcess] = {}
    try:
        for queue in queues:
            started[queue] = WorkerProcess(queue, env, log_dir)
        for worker in started.values():
            worker.wait_ready()
        yield started
    finally:
        for worker in started.values():
            worker.stop()


@contextmanager
def running_worker(queue: str, log_dir: Path, **env_overrides: str) -> Iterator[WorkerProcess]:
    """``celery worker -Q <queue>`` on an emptied broker, ready, stopped on exit."""
    with running_workers([queue], log_dir, **env_overrides) as started:
        yield started[queue]


def settled_delivery(
    notification_id: str,
    channel: str,
    statuses: Collection[str] = (DeliveryStatus.SENT, DeliveryStatus.FAILED),
) -> Delivery | None:
    """The notification's delivery on ``channel`` once its status is one of ``statuses``."""
    delivery = Delivery.objects.get(notification_id=notification_id, channel=channel)
    return delivery if delivery.status in statuses else None


@contextmanager
def standalone_fake(name: str, *options: str) -> Iterator[int]:
    """``python -m devtools.fakes.<name> --port=0 …`` as a demo runs it; yields the port it took.

    Stopped on exit, where it must exit cleanly.
    """
    command = [sys.executable, "-m", f"devtools.fakes.{name}", "--port=0", *options]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith(f"fake {name} on 127.0.0.1:"), line
        yield int(line.rsplit(":", 1)[1])
    finally:
        process.terminate()
        assert process.wait(timeout=15) == 0


class StreamServer:
    """``uvicorn config.asgi:application`` (the ASGI process that serves the inbox stream) on
    a free port, ready when it accepts connections."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.log_path = log_dir / "stream.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1",
             "--port", str(self.port), "--no-access-log", "--timeout-graceful-shutdown", "2"],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 30.0) -> None:
        def accepting() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"stream server exited:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            except OSError:
                return False
            return True

        wait_for(accepting, timeout=timeout, what="the stream server to accept connections")

    def log(self) -> str:
        return self.log_path.read_text()[-5000:]

    def stop(self) -> None:
        terminate(self.process, timeout=15)
        self._log.close()


def terminate(process: subprocess.Popen[bytes], *, timeout: float) -> None:
    """SIGTERM to the process (its own graceful stop), SIGKILL to its group after ``timeout``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
