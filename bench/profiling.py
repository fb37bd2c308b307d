"""Where the time goes during a benchmark: py-spy on our processes, pg_stat_statements on
PostgreSQL. Used by ``bench/broadcast.py --profile DIR``.

py-spy samples each process from outside (no change to the code measured, a few per cent of
one core for the sampler itself); its raw output is one line per distinct stack with a sample
count, which ``summarize`` folds into the functions with the most samples, on their own and
with what they call. pg_stat_statements needs ``shared_preload_libraries`` to name it and a
restart of the server (bench/README.md has the two commands); without it the PostgreSQL
part is left out, with a word why.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg2

ROOT = str(Path(__file__).resolve().parent.parent) + "/"
RATE_HZ = 67  # samples per second and process: enough for 30 s runs, cheap for the sampler


class Profiler:
    """py-spy recording each named process (and its children) until ``stop``."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.recorders: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, pids: dict[str, int]) -> None:
        beside = Path(sys.executable).with_name("py-spy")  # the virtualenv's, unactivated
        py_spy = str(beside) if beside.exists() else shutil.which("py-spy")
        if py_spy is None:
            raise RuntimeError("py-spy is not installed: pip install -r requirements-bench.txt")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in pids.items():
            self.recorders[name] = subprocess.Popen(
                [py_spy, "record", "--pid", str(pid), "--subprocesses", "--nonblocking", "--gil",
                 "--rate", str(RATE_HZ), "--format", "raw", "--output",
                 str(self.out_dir / f"{name}.txt")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip

    def stop(self) -> dict[str, Any]:
        """Stop every recorder (once) and fold what each wrote."""
        if not self.recorders:
            return {}
        for recorder in self.recorders.values():
            if recorder.poll() is None:
                recorder.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for recorder in self.recorders.values():
            try:
                recorder.wait(timeout=60)
            except subprocess.TimeoutExpired:
                recorder.kill()
        summary = {name: summarize(self.out_dir / f"{name}.txt") for name in self.recorders}
        (self.out_dir / "python.json").write_text(json.dumps(summary, indent=1) + "\n")
        self.recorders = {}
        return summary


def summarize(raw: Path, top: int = 25) -> dict[str, Any]:
    """The functions with the most samples in a py-spy raw file: ``self`` (samples where it
    was running) and ``total`` (samples where it was on the stack), as shares of all."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    if not raw.exists():
        return {"samples": 0, "self": [], "total": []}
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")[1:]]  # the first is the process/thread
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100.0 * n / samples, 1)) for name, n in counter.most_common(top)]

    return {"samples": samples, "self": share(own), "total": share(total)}


def _frame(frame: str) -> str:
    """``func (path/to/module.py:123)`` without the line: one entry per function."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", ROOT, "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


def statements_reset(dsn: str) -> str | None:
    """Start counting from zero; the reason it cannot, or None."""
    try:
        with psycopg2.connect(dsn) as conn, conn.cursor() as cursor:
            cursor.execute("SHOW shared_preload_libraries")
            row = cursor.fetchone()
            if "pg_stat_statements" not in (row[0] if row else ""):
                return "pg_stat_statements is not in shared_preload_libraries"
            cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            cursor.execute("SELECT pg_stat_statements_reset()")
    except psycopg2.Error as exc:
        return f"pg_stat_statements: {exc}".strip()
    return None


def statements_top(dsn: str, database: str, top: int = 20) -> list[dict[str, Any]]:
    """The statements of ``database`` that took the most time since the reset."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cursor:
        cursor.execute(
            """
            SELECT s.calls, s.rows, round(s.total_exec_time::numeric, 1),
                   round((s.total_exec_time / greatest(s.calls, 1))::numeric, 3),
                   s.shared_blks_dirtied, s.wal_bytes,
                   left(regexp_replace(s.query, '\\s+', ' ', 'g'), 300)
            FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
            WHERE d.datname = %s ORDER BY s.total_exec_time DESC LIMIT %s
            """,
            [database, top],
        )
        keys = ("calls", "rows", "total_ms", "mean_ms", "blocks_dirtied", "wal_bytes", "query")
        return [dict(zip(keys, (_plain(v) for v in row), strict=True)) for row in cursor]


def _plain(value: Any) -> Any:
    return (
        float(value) if hasattr(value, "as_integer_ratio") and not isinstance(value, int) else value
    )
