"""The short chaos suite (bench/chaos.py --short) against its own stack: one scenario of each
kind, every accepted notification accounted for from the database and the provider fakes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.chaos import KINDS, RECOVER_TARGET_SECONDS

ROOT = Path(__file__).resolve().parent.parent.parent
# Bounded: the short suite takes about 5 minutes here; a hung stack must not hold the run.
TIMEOUT_SECONDS = 900
# The recovery target plus what a 2-core machine shared with other test runs adds to a drain.
RECOVER_MARGIN_SECONDS = 10.0
# Ports of its own (below the ephemeral range), apart from a `make chaos` run's defaults.
PORTS = ["--api-port", "18320", "--redis-port", "16392", "--pg-port", "15433"]


@pytest.fixture(scope="module")
def chaos_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("chaos") / "chaos.json"
    runner = subprocess.Popen(
        [sys.executable, "bench/chaos.py", "--short", *PORTS, "--out", str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = runner.communicate(timeout=TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        runner.terminate()  # the runner stops its whole stack on SIGTERM
        output, _ = runner.communicate(timeout=60)
    assert out.exists(), f"no report (exit {runner.returncode}):\n{output[-4000:]}"
    report = json.loads(out.read_text())
    report["output"] = output[-4000:]
    return report


def _scenario(report: dict[str, Any], kind: str) -> dict[str, Any]:
    found = [s for s in report["scenarios"] if s["kind"] == kind]
    assert found, f"no {kind} scenario ran:\n{report['output']}"
    return found[0]


@pytest.mark.integration
@pytest.mark.parametrize("kind", KINDS)
def test_nothing_is_lost_and_duplicates_stay_within_the_crash_windows(
    chaos_report: dict[str, Any], kind: str
) -> None:
    scenario = _scenario(chaos_report, kind)
    assert scenario["accepted"] >= 100, scenario
    assert scenario["unanswered"] == 0, scenario  # every request is in the books
    assert scenario["settled"], f"{kind}: deliveries still pending at the deadline: {scenario}"
    assert scenario["lost"] == 0, scenario["lost_examples"]
    # Only a task stopped between the provider's acceptance and its commit sends twice: a
    # killed pool process, or one whose database connection a restart cut.
    bound = scenario["kills"] if kind in ("kill", "postgres") else 0
    assert scenario["duplicated"] <= bound, scenario["duplicate_examples"]
    assert (
        scenario["delivered"] + scenario["dead_lettered"] + scenario["skipped"]
        == (scenario["deliveries"])
    )


@pytest.mark.integration
def test_each_scenario_injected_its_fault(chaos_report: dict[str, Any]) -> None:
    kill = _scenario(chaos_report, "kill")["evidence"]
    assert kill["poolProcessesKilled"] > 0 and kill["workersKilled"] > 0
    run_ids = _scenario(chaos_report, "redis")["evidence"]["runIds"]
    assert run_ids and all(before != after for before, after in run_ids)
    pids = _scenario(chaos_report, "postgres")["evidence"]["postmasterPids"]
    assert len(set(pids)) == len(pids) >= 2
    for kind in ("outage", "throttle", "hang"):
        answers = _scenario(chaos_report, kind)["evidence"]["faultAnswers"]
        assert sum(answers.values()) > 0, f"no fake answered {kind}: {answers}"
    assert _scenario(chaos_report, "redis")["broadcasts"], "the broadcast is not covered"
    flush = _scenario(chaos_report, "flush")["evidence"]
    assert flush["keysBefore"] > 0, flush  # the queues held messages, and lost them


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["redis", "flush"])
def test_what_the_broker_lost_is_out_again_within_the_recovery_target(
    chaos_report: dict[str, Any], kind: str
) -> None:
    """Queued deliveries, a broadcast's among them, go out within 30 s of the broker losing
    their messages: not after their lease (45 s here; an hour for the broadcast's)."""
    scenario = _scenario(chaos_report, kind)
    assert scenario["settled"], scenario
    assert scenario["inFlightAtFault"] > 0, scenario  # the fault hit deliveries in flight
    bound = RECOVER_TARGET_SECONDS + RECOVER_MARGIN_SECONDS
    assert scenario["recoverSeconds"] is not None, scenario
    assert scenario["recoverSeconds"] < bound, scenario
