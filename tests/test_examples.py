"""Every script in examples/ runs as-is, so the examples cannot rot."""

import os
import subprocess
import sys

import pytest

import litejobs

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(litejobs.__file__)), "examples")


@pytest.mark.parametrize("script", sorted(
    name for name in os.listdir(EXAMPLES) if name.endswith(".py")))
def test_example_runs(script, tmp_path):
    done = subprocess.run([sys.executable, os.path.join(EXAMPLES, script)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip(), f"{script} printed nothing"


def test_quickstart_shows_results_and_a_failure(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(EXAMPLES, "quickstart.py")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "slow_square(12) -> 144" in done.stdout
    assert "ValueError: invalid literal" in done.stdout
    assert "an hour later: slow_square(3) -> 9" in done.stdout
