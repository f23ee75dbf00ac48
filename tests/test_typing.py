"""The library's type hints hold: mypy checks litejobs.py (settings in pyproject.toml)."""

import os
import subprocess
import sys

import litejobs

ROOT = os.path.dirname(os.path.abspath(litejobs.__file__))


def test_mypy_is_clean(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy-cache")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success" in done.stdout
