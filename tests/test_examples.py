"""Every script in examples/ runs as-is, so the examples cannot rot."""

import os
import shutil
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


UNIT = os.path.join(EXAMPLES, "litejobs-worker.service")


def _unit_settings():
    settings = {}
    with open(UNIT) as handle:
        for line in handle:
            line = line.strip()
            if line and not line.startswith(("#", "[")):
                key, _, value = line.partition("=")
                settings[key] = value
    return settings


def test_the_systemd_unit_starts_a_valid_pool_that_can_stop_gracefully():
    settings = _unit_settings()
    command = settings["ExecStart"].split()
    assert command[1:3] == ["-m", "litejobs"]
    args = litejobs._build_parser().parse_args(command[3:])
    assert args.command == "worker"
    # SIGTERM reaches the supervisor alone, and systemd waits out the grace.
    assert settings["KillMode"] == "mixed"
    assert float(settings["TimeoutStopSec"]) > args.grace
    # SQLite writes -wal and -shm files beside the database.
    assert os.path.dirname(args.database) in settings["ReadWritePaths"].split()


def test_the_systemd_unit_passes_systemd_analyze(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed here")
    with open(UNIT) as handle:
        text = handle.read().replace("/srv/myapp/venv/bin/python", sys.executable)
    unit = tmp_path / "litejobs-worker.service"
    unit.write_text(text)
    done = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True,
                          timeout=60)
    # verify exits 0 even for settings it ignores; it reports them on stderr.
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stderr


def test_worker_pool_example_builds_every_report_in_the_pool(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(EXAMPLES, "worker_pool.py")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    pool_pids = done.stdout.split("worker processes [", 1)[1].split("]", 1)[0].split(", ")
    builders = {line.rsplit(" ", 1)[1] for line in done.stdout.splitlines()
                if "built by process" in line}
    assert len(builders) >= 1 and builders <= set(pool_pids)
    assert "'completed': 4" in done.stdout
