"""The benchmark script runs (a smoke test: it checks the table, never timings)."""

import os
import subprocess
import sys

import litejobs

BENCH = os.path.join(os.path.dirname(os.path.abspath(litejobs.__file__)), "bench", "run.py")


def test_quick_benchmark_prints_its_table(tmp_path):
    """What CI runs: ``python bench/run.py --quick --litejobs-only``."""
    done = subprocess.run([sys.executable, BENCH, "--quick", "--litejobs-only", "--dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].split("|")[1].strip() == "measure"
    measures = [row.split("|")[1].strip() for row in rows[2:]]
    for expected in ("put, durable", "put, durable=False", "put_many", "pool drain, no-op "
                     "jobs, 1 process", "pool drain, no-op jobs, 2 processes",
                     "pool drain, 2 processes, 50,000 finished rows", "parallel of 2,000",
                     "pickup latency p50", "pickup latency p99", "WAL size, steady load",
                     "idle pool CPU", "RSS of the supervisor", "RSS of the child",
                     "raw claim+complete, 1 a transaction"):
        assert any(m.startswith(expected) for m in measures), (expected, measures)
    assert not any("huey" in row for row in rows)  # --litejobs-only
    assert all(row.rstrip(" |").endswith(("%", "x")) for row in rows[2:])
    assert list(tmp_path.iterdir()) == []  # it cleans up after itself
