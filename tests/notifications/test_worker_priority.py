"""A worker serving a bulk lane runs at a lower CPU priority than the transactional-only and
maintenance workers (config/worker_priority.py), read from the real processes' scheduling
state in /proc."""

from __future__ import annotations

from pathlib import Path

import pytest

from channels.lanes import PUSH, serves_bulk
from tests.workers import running_workers

pytestmark = pytest.mark.integration


def _nice(pid: int) -> int:
    # /proc/<pid>/stat: the command is in parentheses and may hold spaces; nice is field 19.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[16])


def _autogroup_nice(pid: int) -> int | None:
    path = Path(f"/proc/{pid}/autogroup")
    if not path.exists():
        return None
    return int(path.read_text().split("nice")[1])


@pytest.mark.django_db
def test_a_worker_on_a_bulk_lane_yields_the_cpu_and_the_others_do_not(tmp_path):
    queues = [PUSH.bulk_queue, PUSH.worker_queues, PUSH.queue, "maintenance"]
    with running_workers(queues, tmp_path) as workers:
        nice = {queue: _nice(worker.process.pid) for queue, worker in workers.items()}
        groups = {queue: _autogroup_nice(worker.process.pid) for queue, worker in workers.items()}

    assert nice == {PUSH.bulk_queue: 10, PUSH.worker_queues: 10, PUSH.queue: 0, "maintenance": 0}
    if groups[PUSH.queue] is not None:  # the kernel groups sessions: the groups are lowered too
        assert groups == {
            PUSH.bulk_queue: 10,
            PUSH.worker_queues: 10,
            PUSH.queue: 0,
            "maintenance": 0,
        }


@pytest.mark.django_db
def test_zero_keeps_every_worker_at_its_priority(tmp_path):
    with running_workers([PUSH.bulk_queue], tmp_path, NOTIFY_BULK_WORKER_NICE="0") as workers:
        assert _nice(workers[PUSH.bulk_queue].process.pid) == 0


def test_which_queues_are_bulk_work():
    assert serves_bulk({PUSH.bulk_queue})
    assert serves_bulk({PUSH.queue, PUSH.bulk_queue})
    assert not serves_bulk({PUSH.queue, "maintenance"})
    assert not serves_bulk(set())
