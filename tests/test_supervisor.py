"""`make run`'s supervisor (devtools/supervisor.py) with small child processes of our own.

Each child is a main process that starts a grandchild in its own process group (as a Celery
worker's parent starts its pool, or gunicorn its workers) and writes every signal either of
them gets to a log. A child killed with -9 is restarted while the others keep their pids; a
stop sends exactly one SIGTERM to each main pid and leaves the grandchildren alone until the
main pid has exited or the grace period is over; a crash loop is given up on loudly.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.supervisor import Backoff, RunError, Supervisor
from tests.workers import wait_for

CHILD = r"""
import os, signal, subprocess, sys, time

log, role, linger = sys.argv[1], sys.argv[2], float(sys.argv[3])
stopping = []

def record(signum, frame):
    with open(log, "a") as f:
        f.write(f"{role} {os.getpid()} {signal.Signals(signum).name}\n")
    stopping.append(time.monotonic())

for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
    signal.signal(sig, record)
with open(log, "a") as f:
    f.write(f"{role} {os.getpid()} started\n")
if role == "main":
    # Same process group: what a stop must not signal before the main pid is done.
    subprocess.Popen([sys.executable, __file__, log, "grandchild", "0"])
    print("ready", flush=True)
# The main pid "finishes its tasks" for `linger` seconds after SIGTERM, then exits;
# the grandchild never exits by itself.
while not (role == "main" and stopping and time.monotonic() - stopping[0] >= linger):
    time.sleep(0.02)
"""
FAST = Backoff(first=0.1, limit=0.4, stable=30.0, give_up_after=4)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _lines(log: Path) -> list[tuple[str, int, str]]:
    if not log.exists():
        return []
    return [
        (role, int(pid), what)
        for role, pid, what in (line.split() for line in log.read_text().splitlines())
    ]


def _grandchildren(log: Path) -> list[int]:
    return [pid for role, pid, what in _lines(log) if role == "grandchild" and what == "started"]


@pytest.fixture
def child_script(tmp_path: Path) -> Path:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return script


@pytest.fixture
def supervisors() -> Iterator[list[Supervisor]]:
    made: list[Supervisor] = []
    yield made
    for sup in made:  # nothing outlives a failed test
        sup.stop()


def _start(
    sup: Supervisor, script: Path, tmp_path: Path, names: tuple[str, ...], linger: float
) -> dict[str, Path]:
    logs = {name: tmp_path / f"{name}.log" for name in names}
    argv = {
        name: [sys.executable, str(script), str(logs[name]), "main", str(linger)] for name in names
    }
    ready = [sup.start(name, argv[name], "ready") for name in names]
    for name, event in zip(names, ready, strict=True):
        assert event.wait(30), f"{name} did not start"
        wait_for(lambda name=name: _grandchildren(logs[name]), what=f"{name}'s grandchild")
    return logs


def test_a_child_killed_with_9_is_restarted_and_the_others_keep_running(
    child_script: Path, tmp_path: Path, supervisors: list[Supervisor]
) -> None:
    sup = Supervisor(dict(os.environ), backoff=FAST, grace=5.0)
    supervisors.append(sup)
    logs = _start(sup, child_script, tmp_path, ("a", "b", "c"), linger=0.0)
    before = sup.pids()
    orphan = _grandchildren(logs["b"])[0]

    os.kill(before["b"], signal.SIGKILL)

    def restarted() -> bool:
        sup.check_alive()  # must not raise: a death is not the end of the run
        return sup.pids().get("b", before["b"]) != before["b"]

    wait_for(restarted, timeout=30, what="b to be restarted")
    after = sup.pids()
    assert after["a"] == before["a"] and after["c"] == before["c"]
    assert _alive(after["a"]) and _alive(after["c"]) and _alive(after["b"])
    # The dead leader's group is cleared before the new one starts; the new one has its own.
    wait_for(lambda: not _alive(orphan), timeout=10, what="b's orphaned grandchild to go")
    wait_for(lambda: len(_grandchildren(logs["b"])) == 2, what="b's new grandchild")
    assert all(what == "started" for _, _, what in _lines(logs["a"]) + _lines(logs["c"]))


def test_stop_sends_one_sigterm_to_each_main_pid_and_spares_the_group_until_it_exits(
    child_script: Path, tmp_path: Path, supervisors: list[Supervisor]
) -> None:
    sup = Supervisor(dict(os.environ), backoff=FAST, grace=30.0)
    supervisors.append(sup)
    logs = _start(sup, child_script, tmp_path, ("worker-a", "worker-b"), linger=1.0)
    mains = sup.pids()
    grandchildren = {name: _grandchildren(log)[0] for name, log in logs.items()}

    sup.stop()

    for name, log in logs.items():
        signals = [(role, pid, what) for role, pid, what in _lines(log) if what != "started"]
        # Exactly one SIGTERM, to the main pid; the grandchild (a pool process finishing its
        # task) got nothing while the main pid did its warm shutdown.
        assert signals == [("main", mains[name], "SIGTERM")], signals
        assert not _alive(mains[name])
        # SIGKILLed with the group once the main exited; a kill is delivered asynchronously.
        wait_for(lambda pid=grandchildren[name]: not _alive(pid), timeout=10, what="grandchild")


def test_a_main_pid_that_does_not_stop_is_killed_with_its_group_after_the_grace(
    child_script: Path, tmp_path: Path, supervisors: list[Supervisor]
) -> None:
    grace = 2.0
    sup = Supervisor(dict(os.environ), backoff=FAST, grace=grace)
    supervisors.append(sup)
    logs = _start(sup, child_script, tmp_path, ("stubborn",), linger=3600.0)
    main = sup.pids()["stubborn"]
    grandchild = _grandchildren(logs["stubborn"])[0]
    seen_during_grace: list[bool] = []

    def watch() -> None:
        wait_for(lambda: ("main", main, "SIGTERM") in _lines(logs["stubborn"]), what="SIGTERM")
        seen_during_grace.append(_alive(grandchild))

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.monotonic()
    sup.stop()
    took = time.monotonic() - started
    watcher.join(timeout=10)

    assert seen_during_grace == [True]
    assert took >= grace
    assert [what for _, _, what in _lines(logs["stubborn"])] == ["started", "started", "SIGTERM"]
    assert not _alive(main) and not _alive(grandchild)


def test_a_child_that_keeps_dying_quickly_is_given_up_on_loudly(
    tmp_path: Path, supervisors: list[Supervisor]
) -> None:
    sup = Supervisor(dict(os.environ), backoff=FAST, grace=5.0)
    supervisors.append(sup)
    sup.start("crashy", [sys.executable, "-c", "import sys; sys.exit(3)"])
    deadline = time.monotonic() + 60
    with pytest.raises(RunError, match="crashy died 4 times in a row"):
        while time.monotonic() < deadline:
            sup.check_alive()
            time.sleep(0.02)
