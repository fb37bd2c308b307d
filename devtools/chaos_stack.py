"""The chaos suite's stack: the whole service on 127.0.0.1 with a PostgreSQL and a Redis of its
own, so that killing and restarting them disturbs nothing else on the machine.

``ChaosStack.start()`` makes a temporary folder, starts a ``redis-server`` that keeps nothing
on disk (``--save "" --appendonly no``: a restart loses every queued message), an ``initdb``
cluster under ``pg_ctl`` (run as the ``postgres`` user when started as root: initdb refuses
root), migrates it and loads the catalog, then starts the provider fakes (devtools/fakes_env.py,
with latency and a background rate of transient failures), gunicorn, one Celery worker per
channel queue (prefork, ``-Q <ch>,<ch>.bulk``), the maintenance worker and beat (devtools/run.py's
command lines). Each process runs in its own process group with its output in a log file.

The levers the chaos runner (bench/chaos.py) pulls: ``kill_worker_child()`` / ``kill_worker()``
(SIGKILL, then the worker is started again, as a supervisor would), ``restart_redis_empty()``,
``restart_postgres()``, ``set_fault()`` on every fake. ``stop()`` ends everything it started
and removes the folder.

Settings (``CHAOS_SETTINGS``) make recovery quick: a 45 s lease, a sweep every 3 s, a 3 s
provider timeout, retry waits capped at 8 s, a 5 s circuit cool-down. Broadcast leases keep
their production hour, and the broker watch its production interval: what brings lost
messages back after a broker loss is then the watch, measured, not a lease shortened for it.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg2
import redis

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from channels.lanes import LANES, MAINTENANCE_QUEUE  # noqa: E402
from devtools import fakes_env  # noqa: E402
from devtools import run as service  # noqa: E402
from devtools.fakes import faults  # noqa: E402

CHANNELS = tuple(LANES)
HOST = "127.0.0.1"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
# Quick recovery: the sweep runs often and takes back what a killed worker left `sending`
# once its lease ran out. The lease still exceeds the provider timeout (a task cannot outlive
# it) and, at 45 s, the 30 s target for recovery after a broker loss: a delivery the broker
# lost that only the lease brought back would show in the figure (bench/chaos.py).
CHAOS_SETTINGS = {
    "NOTIFY_LEASE_SECONDS": "45",
    "NOTIFY_SWEEP_INTERVAL_SECONDS": "3",
    "NOTIFY_PROVIDER_TIMEOUT_SECONDS": "3",
    "NOTIFY_RETRY_BACKOFF": "1",
    "NOTIFY_RETRY_BACKOFF_MAX": "8",
    "NOTIFY_CIRCUIT_COOLDOWN_SECONDS": "5",
    "NOTIFY_FANOUT_RESUME_SECONDS": "10",
    "NOTIFY_DELIVERY_BATCH": "10",
    "NOTIFY_CATALOG_CACHE_SECONDS": "60",
    "DEBUG": "false",
    "LOG_LEVEL": "WARNING",
    "PYTHONUNBUFFERED": "1",
}
START_TIMEOUT = 120.0


class StackError(Exception):
    """Something did not start or answer; the message says what and where its log is."""


# Ports below Linux's ephemeral range (32768-60999): a listening port in it can be taken for a
# moment by any outgoing connection on the machine, and PostgreSQL then fails to bind.
@dataclass
class StackConfig:
    api_port: int = 18300  # the four fakes take the next four ports
    redis_port: int = 16391
    pg_port: int = 15432
    latency_ms: int = 25
    fail_rate: float = 0.02
    concurrency: int = 2  # pool processes per channel worker
    settings: dict[str, str] = field(default_factory=dict)  # extra or overriding env


# The service's own settings are the stack's to choose: none leaks in from the caller's
# environment (a pytest run exports the test settings' NOTIFY_* defaults, for one).
_SERVICE_PREFIXES = (
    *("NOTIFY_", "CELERY_", "APNS_", "FCM_", "TWILIO_", "ANYMAIL_", "EMAIL_"),
    *("DATABASE_URL", "DJANGO_", "DB_", "LOG_LEVEL", "DEBUG", "SECRET_KEY"),
)


def _outside_settings(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if not k.startswith(_SERVICE_PREFIXES)}


def scrub_service_settings() -> None:
    """Drop the service's settings from this process's environment (a runner's first step)."""
    for name in [name for name in os.environ if name.startswith(_SERVICE_PREFIXES)]:
        del os.environ[name]


class Proc:
    """One child in its own process group, output appended to ``log``; can be started again."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.argv, self.env, self.log = name, argv, env, log
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> Proc:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.starts += 1
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def children(self) -> list[int]:
        """Pids whose parent is this process (a Celery worker's pool processes)."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                # "pid (comm) state ppid ...": comm may hold spaces, so split after ")".
                if int(stat.rpartition(")")[2].split()[1]) == self.pid:
                    found.append(int(entry.name))
        return found

    def kill_group(self, sig: signal.Signals = signal.SIGKILL) -> None:
        if self.popen is None:
            return
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=5)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL for whatever of the group is left."""
        if self.alive():
            self.kill_group(signal.SIGTERM)
        self.kill_group(signal.SIGKILL)

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


class ChaosStack:
    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig()
        self.dir = Path(tempfile.mkdtemp(prefix="notify-chaos-"))
        self.dir.chmod(0o755)  # the postgres user must reach its data folder below
        self.pg_dir = self.dir / "pg"
        self.procs: dict[str, Proc] = {}
        self.api_key = ""
        self.fakes: list[fakes_env.Fake] = []
        self.fake_urls: dict[str, str] = {}
        self.apns_ca = ""
        self.env: dict[str, str] = {}
        self._pg_started = False
        self.revived: Counter[str] = Counter()  # workers restarted after exiting by themselves
        self._restart_lock = threading.Lock()
        self._stopping = threading.Event()

    # --- addresses -----------------------------------------------------------------------

    @property
    def api(self) -> str:
        return f"http://{HOST}:{self.config.api_port}"

    @property
    def database_url(self) -> str:
        return f"postgres://postgres@{HOST}:{self.config.pg_port}/notifications"

    @property
    def broker_url(self) -> str:
        return f"redis://{HOST}:{self.config.redis_port}/0"

    @property
    def logs(self) -> dict[str, Path]:
        """Each fake's JSONL log of the requests it answered."""
        return {fake.name: fake.log for fake in self.fakes}

    def db(self) -> Any:
        conn = psycopg2.connect(
            host=HOST, port=self.config.pg_port, user="postgres", dbname="notifications"
        )
        conn.autocommit = True
        return conn

    # --- start and stop ------------------------------------------------------------------

    def start(self) -> ChaosStack:
        cfg = self.config
        ports = [cfg.api_port + i for i in range(5)] + [cfg.redis_port, cfg.pg_port]
        taken = [port for port in ports if service.port_answers(port)]
        if taken:
            raise StackError(f"ports in use: {taken}; pick others (StackConfig)")
        self._start_redis()
        self._start_postgres()
        wiring = self._wire_fakes()
        self.env = {
            **_outside_settings(os.environ),
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DATABASE_URL": self.database_url,
            "CELERY_BROKER_URL": self.broker_url,
            **CHAOS_SETTINGS,
            **wiring.env,
            **cfg.settings,
        }
        for fake in self.fakes:
            self._add(f"fake-{fake.name}", fake.argv).start()
        self._wait("the fakes", self._fakes_up)
        self._manage("migrate", "--noinput", "-v", "0")
        self._manage("load_catalog")
        created = self._manage("create_api_key", "chaos")
        self.api_key = created.strip().splitlines()[-1]
        self._add("api", service.api_argv(cfg.api_port)).start()
        for worker in service.WORKERS:
            concurrency = cfg.concurrency if worker != MAINTENANCE_QUEUE else 2
            argv = service.worker_argv(worker, concurrency=concurrency, node=f"chaos-{worker}")
            self._add(f"worker-{worker}", [*argv, "--without-gossip", "--without-mingle"]).start()
        self._add("beat", service.beat_argv(self.dir)).start()
        self._wait("the API's /healthz", lambda: service.http(f"{self.api}/healthz")[0] == 200)
        self._wait("every worker to answer a ping", self._workers_answer)
        return self

    def stop(self, *, keep: bool = False) -> None:
        """End everything started; ``keep`` leaves the folder (each process's log, the fakes'
        JSONL request logs, PostgreSQL's data directory) for a post-mortem."""
        self._stopping.set()
        with self._restart_lock:
            pass  # a restart under way is finished: nothing starts after this
        for proc in reversed(list(self.procs.values())):
            proc.stop()
        if self._pg_started and (self.pg_dir / "data" / "postmaster.pid").exists():
            try:
                self._pg_ctl("stop", "-m", "immediate")
            except StackError as exc:
                print(f"chaos stack: {exc}", file=sys.stderr)
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> ChaosStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _add(self, name: str, argv: list[str]) -> Proc:
        proc = Proc(name, argv, self.env or dict(os.environ), self.dir / f"{name}.log")
        self.procs[name] = proc
        return proc

    def _start_redis(self) -> None:
        argv = ["redis-server", "--port", str(self.config.redis_port), "--bind", HOST,
                "--save", "", "--appendonly", "no", "--dir", str(self.dir)]  # fmt: skip
        self._add("redis", argv).start()
        self._wait("redis", self._redis_answers)

    def _start_postgres(self) -> None:
        self.pg_dir.mkdir()
        data = self.pg_dir / "data"
        self._as_postgres(
            [str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
             "-E", "UTF8", "--no-sync"],
        )  # fmt: skip
        self._pg_started = True
        self._pg_ctl("start")
        self._as_postgres(
            [str(PG_BIN / "createdb"), "-h", HOST, "-p", str(self.config.pg_port),
             "-U", "postgres", "notifications"],
        )  # fmt: skip

    def _pg_ctl(self, action: str, *extra: str) -> None:
        # Durability is not what this cluster is for: fsync off keeps 2 cores for the service.
        options = (
            f"-p {self.config.pg_port} -k {self.pg_dir} -c listen_addresses={HOST} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        argv = [str(PG_BIN / "pg_ctl"), "-D", str(self.pg_dir / "data"), "-l",
                str(self.pg_dir / "postgres.log"), "-o", options, "-w", "-t", "60",
                action, *extra]  # fmt: skip
        self._as_postgres(argv)

    def _as_postgres(self, argv: list[str]) -> None:
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            shutil.chown(self.pg_dir, "postgres", "postgres")
            argv = ["runuser", "-u", "postgres", "--", *argv]
        done = subprocess.run(argv, cwd=self.pg_dir, capture_output=True, text=True)
        if done.returncode != 0:
            log = self.pg_dir / "postgres.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise StackError(f"{' '.join(argv)} failed: {done.stderr or done.stdout}\n{tail}")

    def _wire_fakes(self) -> fakes_env.Wiring:
        cfg = self.config
        ports = {name: cfg.api_port + 1 + i for i, name in enumerate(fakes_env.PORTS)}
        wiring = fakes_env.prepare(self.dir / "run", api_port=cfg.api_port, ports=ports)
        extra = ["--latency-ms", str(cfg.latency_ms), "--fail-rate", str(cfg.fail_rate)]
        self.fakes = [replace(fake, argv=[*fake.argv, *extra]) for fake in wiring.fakes]
        self.apns_ca = wiring.env["APNS_CA_FILE"]
        self.fake_urls = {
            name: f"{'https' if name == 'apns' else 'http'}://{HOST}:{port}"
            for name, port in ports.items()
        }
        return wiring

    def _manage(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True,
            text=True, timeout=300,
        )  # fmt: skip
        if done.returncode != 0:
            raise StackError(f"manage.py {' '.join(args)} failed:\n{done.stderr[-3000:]}")
        return done.stdout

    # --- readiness -----------------------------------------------------------------------

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.procs.values():
                if proc.popen is not None and not proc.alive() and proc.name != "redis":
                    raise StackError(f"{proc.name} exited:\n{proc.tail()}")
            if ready():
                return
            time.sleep(0.25)
        tails = "\n".join(f"--- {p.name}:\n{p.tail(800)}" for p in self.procs.values())
        raise StackError(f"timed out after {timeout:.0f}s waiting for {what}\n{tails}")

    def _redis_answers(self) -> bool:
        try:
            return bool(redis.Redis(host=HOST, port=self.config.redis_port).ping())
        except redis.RedisError:
            return False

    def _fakes_up(self) -> bool:
        ports = [int(url.rsplit(":", 1)[1]) for url in self.fake_urls.values()]
        return all(service.port_answers(port) for port in ports) and Path(self.apns_ca).exists()

    def _workers_answer(self) -> bool:
        from celery import Celery

        names = {f"chaos-{worker}@{socket.gethostname()}" for worker in service.WORKERS}
        if os.environ.get("CELERY_BROKER_URL", self.broker_url) != self.broker_url:
            # Celery's broker_url prefers that variable to the app's own: ours would ask the
            # caller's broker. A runner clears it first (scrub_service_settings).
            raise StackError("CELERY_BROKER_URL is set to another broker in this process")
        app = Celery(broker=self.broker_url, set_as_current=False)
        try:
            replies = app.control.ping(destination=sorted(names), timeout=1.0)
        except Exception:  # the broker is not there yet
            return False
        finally:
            app.close()
        return {name for reply in replies for name in reply} >= names

    # --- faults --------------------------------------------------------------------------

    def kill_worker_child(self, channel: str) -> int:
        """SIGKILL one pool process of the channel's worker (its parent forks a new one);
        the number of processes killed (0 if it had none at that instant)."""
        children = self.procs[f"worker-{channel}"].children()
        if not children:
            return 0
        try:
            os.kill(random.choice(children), signal.SIGKILL)
        except ProcessLookupError:
            return 0
        return 1

    def supervise(self) -> None:
        """Start again, from now on, any worker that exits (as systemd or Kubernetes would).

        Workers do exit under chaos: a prefork worker whose fresh pool process is killed
        before it reported ready ("Could not start worker processes"), and a worker whose
        Redis went away while it acknowledged a message (kombu raises AttributeError in its
        reconnection, "Unrecoverable error"). ``revived`` counts the restarts per worker."""

        def loop() -> None:
            while not self._stopping.wait(0.5):
                for worker in service.WORKERS:
                    with self._restart_lock:
                        proc = self.procs[f"worker-{worker}"]
                        if not proc.alive() and not self._stopping.is_set():
                            proc.kill_group(signal.SIGKILL)  # whatever of its group is left
                            proc.start()
                            self.revived[worker] += 1

        threading.Thread(target=loop, name="chaos-supervisor", daemon=True).start()

    def kill_worker(self, channel: str) -> int:
        """SIGKILL the channel's whole worker (parent and pool processes at once, as the OOM
        killer or a lost container does), then start it again; the pool processes killed."""
        with self._restart_lock:
            proc = self.procs[f"worker-{channel}"]
            pool = len(proc.children())
            proc.kill_group(signal.SIGKILL)
            proc.start()
        return pool

    def restart_redis_empty(self) -> tuple[str, str]:
        """SIGKILL Redis and start an empty one on the same port; (old, new) run ids."""
        before = self._run_id()
        self.procs["redis"].kill_group(signal.SIGKILL)
        self.procs["redis"].start()
        self._wait("redis after its restart", self._redis_answers, timeout=30)
        return before, self._run_id()

    def flush_redis(self) -> dict[str, Any]:
        """``FLUSHALL`` on the running Redis: every queued and unacknowledged message gone, the
        server and every connection to it left as they were; its key counts around it."""
        client = redis.Redis(host=HOST, port=self.config.redis_port)
        before = int(client.dbsize())
        client.flushall()
        return {"keysBefore": before, "keysAfter": int(client.dbsize()), "runId": self._run_id()}

    def _run_id(self) -> str:
        info = redis.Redis(host=HOST, port=self.config.redis_port).info("server")
        return str(info["run_id"])

    def restart_postgres(self, mode: str = "fast") -> None:
        """``pg_ctl restart -m fast|immediate``: every connection is cut."""
        self._pg_ctl("restart", "-m", mode)

    def postgres_pid(self) -> int:
        return int((self.pg_dir / "data" / "postmaster.pid").read_text().split()[0])

    def set_fault(self, mode: str, *, retry_after: int = 1) -> dict[str, Any]:
        """Switch every provider fake to ``mode``; their states by fake."""
        return {
            name: faults.set_fault(url, mode, retry_after=retry_after, cafile=self.apns_ca)
            for name, url in self.fake_urls.items()
        }

    def fault_states(self) -> dict[str, Any]:
        return {
            name: faults.fault_state(url, cafile=self.apns_ca)
            for name, url in self.fake_urls.items()
        }

    def check_alive(self) -> None:
        """Raise if a process died that nobody killed on purpose."""
        for proc in self.procs.values():
            if proc.popen is not None and not proc.alive():
                raise StackError(f"{proc.name} exited:\n{proc.tail()}")
