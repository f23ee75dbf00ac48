"""The benchmark script runs (a smoke test: it checks the table, never timings)."""

import os
import subprocess
import sys

import litejobs

BENCH = os.path.join(os.path.dirname(os.path.abspath(litejobs.__file__)), "bench", "run.py")


def test_quick_benchmark_prints_its_table(tmp_path):
    done = subprocess.run([sys.executable, BENCH, "--quick", "--dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].split("|")[1].strip() == "measure"
    measures = [row.split("|")[1].strip() for row in rows[2:]]
    assert len(measures) == 14
    assert any(m.startswith("WAL size, steady load") for m in measures)
    assert any(m.startswith("pool drain") for m in measures)
    assert any(m.startswith("parallel of 2,000 no-op parts") for m in measures)
    assert any(m.startswith("pickup latency p99") for m in measures)
    assert all(row.rstrip(" |").endswith("%") for row in rows[2:])
    assert list(tmp_path.iterdir()) == []  # it cleans up after itself
