"""The profile summary of bench/broadcast.py --profile: py-spy's raw stacks folded into the
functions that took the samples."""

from __future__ import annotations

from pathlib import Path

from bench import profiling


def test_summary_counts_each_function_once_per_stack_and_shares_of_all_samples(tmp_path: Path):
    raw = tmp_path / "worker.txt"
    root = profiling.ROOT
    raw.write_text(
        # process;caller;...;callee count   (py-spy's raw format)
        f"process 1;main ({root}manage.py:3);send ({root}channels/aio.py:10);"
        f"encode (/x/site-packages/h2/connection.py:5) 3\n"
        f"process 1;main ({root}manage.py:3);send ({root}channels/aio.py:12) 1\n"
        f"process 1;main ({root}manage.py:3);claim ({root}engine.py:7);"
        f"claim ({root}engine.py:9) 4\n"
        "a line py-spy did not write\n"
    )

    summary = profiling.summarize(raw)

    assert summary["samples"] == 8
    assert dict(summary["self"]) == {
        "encode (h2/connection.py)": 37.5,
        "send (channels/aio.py)": 12.5,
        "claim (engine.py)": 50.0,
    }
    # On the stack: a recursive function counts once per sample, the root in all of them.
    assert dict(summary["total"])["claim (engine.py)"] == 50.0
    assert dict(summary["total"])["send (channels/aio.py)"] == 50.0
    assert dict(summary["total"])["main (manage.py)"] == 100.0


def test_a_missing_recording_is_an_empty_summary(tmp_path: Path):
    assert profiling.summarize(tmp_path / "none.txt") == {"samples": 0, "self": [], "total": []}
