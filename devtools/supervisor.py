"""The process supervisor of `make run` (devtools/run.py) and the benchmarks.

Each child runs in its own process group with its output prefixed by its name. A child that
dies is reported and started again after a back-off (1 s doubling to 30 s, back to 1 s once it
stayed up a minute); one that dies quickly too many times in a row is given up on loudly, and
that ends the run. Stopping sends the stop signal to each child's MAIN pid only, so a Celery
worker's parent does its warm shutdown (finishes the tasks in flight, then stops its pool) and
gunicorn and nginx finish their requests; only after the grace period (or once the main pid has
exited) is the whole group SIGKILLed, which catches what a leader left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import PIPE, STDOUT
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
_output = threading.Lock()


class RunError(Exception):
    """Something did not start, did not stay up, or the demo did not go through."""


def say(text: str = "", name: str = "") -> None:
    with _output:
        print(f"{name:>18} | {text}" if name else text, flush=True)


@dataclass(frozen=True)
class Backoff:
    first: float = 1.0  # the wait before the first restart
    limit: float = 30.0  # doubling stops here
    # Up at least this long: the death was not "quick", and the wait starts again from `first`.
    stable: float = 60.0
    # This many quick deaths in a row: a crash loop (bad settings, a port taken), not bad luck.
    give_up_after: int = 5


@dataclass
class _Child:
    name: str
    argv: Sequence[str]
    env: dict[str, str]
    ready_line: str
    stop_signal: signal.Signals
    restart: bool
    proc: subprocess.Popen[str]
    started_at: float
    ready: threading.Event
    delay: float
    quick_deaths: int = 0
    restart_at: float | None = None  # dead, waiting for its back-off
    readers: list[threading.Thread] = field(default_factory=list)


def _pump(name: str, stream: IO[str], ready_line: str, ready: threading.Event) -> None:
    for line in stream:
        say(line.rstrip(), name)
        if ready_line and ready_line in line:
            ready.set()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is empty (PermissionError: a reused id on some kernels)


def _exit_text(code: int) -> str:
    return f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"


class Supervisor:
    """Start children, restart the ones that die, and stop them all gently."""

    def __init__(
        self,
        env: dict[str, str],
        *,
        cwd: Path = ROOT,
        backoff: Backoff = Backoff(),
        grace: float = 30.0,
    ) -> None:
        self.env = env
        self.cwd = cwd
        self.backoff = backoff
        self.grace = grace  # how long a main pid may take to stop before its group is killed
        self.children: list[_Child] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        ready_line: str = "",
        *,
        stop_signal: signal.Signals = signal.SIGTERM,
        restart: bool = True,
        env: dict[str, str] | None = None,
    ) -> threading.Event:
        """Start ``argv`` (``env`` added to the supervisor's); the event is set once it prints
        ``ready_line``. ``stop_signal`` asks it to stop gracefully (nginx: SIGQUIT)."""
        ready = threading.Event()
        child_env = {**self.env, **(env or {})}
        child = _Child(
            name, list(argv), child_env, ready_line, stop_signal, restart,
            self._spawn(argv, child_env), time.monotonic(), ready, self.backoff.first,
        )  # fmt: skip
        self._read(child)
        self.children.append(child)
        return ready

    def pids(self) -> dict[str, int]:
        """The main pid of each child that is running now."""
        return {c.name: c.proc.pid for c in self.children if c.proc.poll() is None}

    def check_alive(self) -> None:
        """Report and schedule a restart for each child that died; start the ones whose
        back-off is over. Raises RunError for a child given up on (or not to be restarted).
        Call it often: it is where restarts happen."""
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is None and child.proc.poll() is not None:
                self._died(child, now)
            elif child.restart_at is not None and now >= child.restart_at:
                say(f"restarting {child.name}")
                child.restart_at = None
                child.proc = self._spawn(child.argv, child.env)
                child.started_at = time.monotonic()
                self._read(child)

    def _died(self, child: _Child, now: float) -> None:
        code = child.proc.returncode
        uptime = now - child.started_at
        # Its pool or worker processes are useless without it (a Celery parent's tasks go back
        # to the queue unacknowledged): clear the group before a new leader starts.
        _signal_group(child.proc.pid, signal.SIGKILL)
        say(f"{child.name} (pid {child.proc.pid}) {_exit_text(code)} after {uptime:.1f}s")
        if not child.restart:
            raise RunError(f"{child.name} {_exit_text(code)}; see its output above")
        if uptime >= self.backoff.stable:
            child.quick_deaths, child.delay = 0, self.backoff.first
        child.quick_deaths += 1
        if child.quick_deaths >= self.backoff.give_up_after:
            raise RunError(
                f"{child.name} died {child.quick_deaths} times in a row, each within "
                f"{self.backoff.stable:.0f}s of starting; giving up (see its output above)"
            )
        child.restart_at = now + child.delay
        say(f"{child.name} will be restarted in {child.delay:.1f}s")
        child.delay = min(child.delay * 2, self.backoff.limit)

    def stop(self) -> None:
        """The stop signal to each main pid, up to ``grace`` seconds for them to exit, then
        SIGKILL to every group (what a leader left behind, or a leader that did not stop)."""
        # A second Ctrl-C must not interrupt this and orphan children.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            running = [c for c in self.children if c.restart_at is None and c.proc.poll() is None]
            if running:
                say(f"stopping {len(running)} processes ...")
            for child in running:
                try:
                    child.proc.send_signal(child.stop_signal)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + self.grace
            for child in running:
                try:
                    child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    say(f"{child.name} did not stop within {self.grace:.0f}s; killing it")
            for child in self.children:
                _signal_group(child.proc.pid, signal.SIGKILL)
                child.proc.wait()
            for child in self.children:
                for reader in child.readers:
                    reader.join(timeout=1.0)
        finally:
            signal.signal(signal.SIGINT, previous)

    def _spawn(self, argv: Sequence[str], env: dict[str, str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            argv, cwd=self.cwd, env=env, stdout=PIPE, stderr=STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip

    def _read(self, child: _Child) -> None:
        assert child.proc.stdout is not None
        reader = threading.Thread(
            target=_pump,
            args=(child.name, child.proc.stdout, child.ready_line, child.ready),
            daemon=True,
        )
        child.readers.append(reader)
        reader.start()
