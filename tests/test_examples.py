"""Every script in examples/ runs as-is, so the examples cannot rot."""

import ast
import datetime
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request

import pytest

import litejobs

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(litejobs.__file__)), "examples")

# How the tests run each script, and lines its output must contain to show it
# did its job.  Every examples/*.py must be listed (test_every_example_is_run).
RUNS = {
    "quickstart.py": ([], ["slow_square(12) -> 144"]),
    "worker_pool.py": ([], ["'completed': 4"]),
    "parallel_map_reduce.py": ([], ["primes below 1000000: 78498",
                                    "the direct count agrees: 78498"]),
    "serial_pipeline.py": ([], ["readings table: 4 rows",
                                "with stop_on_failure=True is completed"]),
    "web_app_pdf.py": (["--self-test"], ["POST /pdf -> 202", "status completed",
                                         "PDF ready after"]),
    "transactional_enqueue.py": ([], ["never existed",
                                      "orders: [(1, 'ada', 1), (2, 'cy', 1)]"]),
    "recurring.py": ([], ["the mail server did not answer", "'failed': 1"]),
    "async_web_app.py": (["--self-test"], ["all answered [200]", "GET /nowhere -> 404"]),
}
TIMEOUT = 90  # below pytest-timeout's 120 s, so a hung script fails with its output


def _run(script, cwd, *args):
    try:
        return subprocess.run([sys.executable, os.path.join(EXAMPLES, script), *args],
                              cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{script} {' '.join(args)} ran over {TIMEOUT} s; it printed:\n"
                    f"{exc.stdout}\n{exc.stderr}")


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """Run a script of RUNS once per module, in its own empty directory, and
    return the finished process; the tests below share that run."""
    done = {}

    def run(script):
        if script not in done:
            cwd = tmp_path_factory.mktemp(script.removesuffix(".py"))
            done[script] = _run(script, cwd, *RUNS[script][0])
        return done[script]
    return run


def test_every_example_is_run():
    scripts = {name for name in os.listdir(EXAMPLES) if name.endswith(".py")}
    assert scripts - set(RUNS) == set(), "add these scripts to RUNS in test_examples.py"
    assert set(RUNS) - scripts == set(), "these scripts in RUNS are gone"


@pytest.mark.parametrize("script", sorted(RUNS))
def test_example_runs(script, example):
    done = example(script)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip(), f"{script} printed nothing"
    for line in RUNS[script][1]:
        assert line in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize("script", sorted(RUNS))
def test_example_uses_only_the_standard_library(script):
    with open(os.path.join(EXAMPLES, script)) as handle:
        tree = ast.parse(handle.read())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported - set(sys.stdlib_module_names) == {"litejobs"}


def test_quickstart_shows_results_and_a_failure(example):
    done = example("quickstart.py")
    assert "slow_square(12) -> 144" in done.stdout
    assert "ValueError: invalid literal" in done.stdout
    assert "an hour later: slow_square(3) -> 9" in done.stdout


UNIT = os.path.join(EXAMPLES, "litejobs-worker.service")
POSTGRES_UNIT = os.path.join(EXAMPLES, "litejobs-worker-postgres.service")


def _unit_settings(unit=UNIT):
    settings = {}
    with open(unit) as handle:
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


def test_the_postgresql_unit_starts_a_pool_on_a_url_that_can_stop_gracefully():
    settings = _unit_settings(POSTGRES_UNIT)
    command = settings["ExecStart"].split()
    args = litejobs._build_parser().parse_args(command[3:])
    assert args.command == "worker" and args.database.startswith("postgresql://")
    assert ":" not in args.database.split("//", 1)[1].split("@", 1)[0]  # no password
    assert settings["KillMode"] == "mixed"
    assert float(settings["TimeoutStopSec"]) > args.grace


@pytest.mark.parametrize("unit_file", [UNIT, POSTGRES_UNIT])
def test_the_systemd_units_pass_systemd_analyze(tmp_path, unit_file):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed here")
    with open(unit_file) as handle:
        text = handle.read().replace("/srv/myapp/venv/bin/python", sys.executable)
    unit = tmp_path / "litejobs-worker.service"
    unit.write_text(text)
    done = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True,
                          timeout=60)
    # verify exits 0 even for settings it ignores; it reports them on stderr.
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stderr


def test_worker_pool_example_builds_every_report_in_the_pool(example):
    done = example("worker_pool.py")
    assert done.returncode == 0, done.stderr
    pool_pids = done.stdout.split("worker processes [", 1)[1].split("]", 1)[0].split(", ")
    builders = {line.rsplit(" ", 1)[1] for line in done.stdout.splitlines()
                if "built by process" in line}
    assert len(builders) >= 1 and builders <= set(pool_pids)
    assert "'completed': 4" in done.stdout


def test_parallel_map_reduce_counts_each_range_in_the_pool(example):
    done = example("parallel_map_reduce.py")
    assert done.returncode == 0, done.stdout + done.stderr
    parts = re.findall(r"part \d+: \[ *(\d+), *(\d+)\) has +(\d+) primes, counted in "
                       r"process (\d+)", done.stdout)
    assert len(parts) == 8
    # The ranges tile [0, 1000000) in order, and their counts add up.
    assert [int(low) for low, _, _, _ in parts[1:]] == [int(high) for _, high, _, _ in parts[:-1]]
    assert (parts[0][0], parts[-1][1]) == ("0", "1000000")
    assert sum(int(count) for _, _, count, _ in parts) == 78498
    # Worker processes counted them, not the script.
    script_pid = re.search(r"not in this one \((\d+)\)", done.stdout).group(1)
    assert script_pid not in {pid for _, _, _, pid in parts}
    # The root and its eight parts; the postprocess runs as the root.
    assert "'completed': 9" in done.stdout and "'failed': 0" in done.stdout


def test_serial_pipeline_runs_steps_in_order_and_stops_on_failure(example):
    done = example("serial_pipeline.py")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    # Before anything runs, only the first step is pending.
    assert "fetch pending, clean waiting, load waiting" in out
    ok, stopped, unstopped = out.split("pipeline ")[1:4]
    assert "fetch: completed {'rows': 6}" in ok
    assert "clean: completed {'kept': 4, 'dropped': 2}" in ok
    assert "load: completed {'loaded': 4}" in ok
    # stop_on_failure: the rest is cancelled, and report still sees every step.
    assert "is completed" in stopped
    assert "fetch: failed, ConnectionError: offline-station: no route to host" in stopped
    assert "clean: cancelled" in stopped and "load: cancelled" in stopped
    # By default the chain goes on, and without a postprocess the root fails
    # naming every failed step and its last error line.
    assert "failed, litejobs.PartsFailed" in unstopped
    for text in ("fetch", "clean", "load", "ConnectionError", "FileNotFoundError"):
        assert text in unstopped, unstopped


def test_web_app_serves_a_pdf_built_by_the_pool(example):
    done = example("web_app_pdf.py")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert re.search(r"POST /pdf -> 202 \{'id': \d+, 'status': 'pending'", out), out
    assert "status completed" in out and "starts %PDF-" in out
    assert "GET /jobs/999999 -> 404" in out
    builder, script = re.search(r"built by worker process (\d+) \(this is process (\d+)\)",
                                out).groups()
    assert builder != script


def test_web_app_without_self_test_serves_until_interrupted(tmp_path):
    """The serving mode starts, answers, and stops cleanly on Ctrl-C."""
    server = subprocess.Popen(
        [sys.executable, os.path.join(EXAMPLES, "web_app_pdf.py"), str(tmp_path / "app.db"),
         "--port", "0"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        first = server.stdout.readline()
        if "serving on" not in first:
            server.kill()
            pytest.fail(first + server.communicate()[1])
        base = re.search(r"serving on (http://\S+)", first).group(1)
        request = urllib.request.Request(f"{base}/pdf", method="POST",
                                         data=json.dumps({"pages": 3}).encode())
        with urllib.request.urlopen(request, timeout=10) as response:
            job_id = json.load(response)["id"]
        deadline = time.monotonic() + 60
        while True:
            with urllib.request.urlopen(f"{base}/jobs/{job_id}", timeout=10) as response:
                status = json.load(response)
            if status["status"] == litejobs.COMPLETED or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert status["status"] == litejobs.COMPLETED, status
        assert os.path.dirname(status["result"]["path"]) == str(tmp_path / "pdfs")
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == 0, err
    assert "stopping" in out


def test_transactional_enqueue_commits_jobs_with_orders(example):
    done = example("transactional_enqueue.py")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "order 1 committed with its job 1 (pending)" in out
    assert "card declined: rolled back" in out
    assert "card expired: the block raised" in out
    assert "emailed ada about order 1" in out and "emailed cy about order 2" in out
    assert "emailed bob" not in out and "dee" not in out.split("orders:")[1]
    assert "'completed': 2" in out and "'failed': 0" in out
    assert "user_version 1 is the application's" in out


def test_transactional_enqueue_leaves_both_schemas_in_the_given_file(tmp_path):
    path = tmp_path / "shop.db"
    done = _run("transactional_enqueue.py", tmp_path, str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    conn = sqlite3.connect(path)
    try:
        tables = {name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "orders" in tables and any(name.startswith("litejobs_") for name in tables)
        assert conn.execute("PRAGMA user_version").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (2,)
    finally:
        conn.close()
    assert litejobs.Queue(path).counts()[litejobs.COMPLETED] == 2


def test_recurring_fires_each_tick_once_and_a_failed_run_does_not_stop_it(example):
    done = example("recurring.py")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    # Declared twice, as by two starts: one schedule, its first tick kept.
    declared = re.search(r"first tick (\S+) UTC; declared again, next tick (\S+) UTC; "
                         r"1 schedule", out)
    assert declared and declared.group(1) == declared.group(2), out
    # Ticks 0 to 3 on time (2 fails), 4 to 6 missed, 7 for the latest of them, then 8.
    runs = re.findall(r"tick (\d) \(\S+\): (digest sent|the mail server did not answer)", out)
    assert [number for number, _ in runs] == ["0", "1", "2", "3", "7", "8"], out
    assert [number for number, what in runs if what != "digest sent"] == ["2"], out


def test_recurring_leaves_one_job_per_tick_each_knowing_its_tick(tmp_path):
    """Read the schedule and its jobs back from the database the script leaves."""
    path = tmp_path / "recurring.db"
    done = _run("recurring.py", tmp_path, str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    queue = litejobs.Queue(path)
    try:
        schedule = queue.get_schedule("digest")
        runs = sorted(queue.jobs(limit=None), key=lambda job: job.id)
        ticks = [datetime.datetime.fromisoformat(run.meta["tick"].replace("Z", "+00:00"))
                 for run in runs]
        first = ticks[0]
        assert [(tick - first) // datetime.timedelta(minutes=10) for tick in ticks] == [
            0, 1, 2, 3, 7, 8]
        assert [run.status for run in runs] == [
            litejobs.COMPLETED, litejobs.COMPLETED, litejobs.FAILED, litejobs.COMPLETED,
            litejobs.COMPLETED, litejobs.COMPLETED]
        assert {run.meta["schedule"] for run in runs} == {"digest"}
        assert (schedule.last_tick, schedule.last_job_id) == (ticks[-1], runs[-1].id)
        assert schedule.next_tick == ticks[-1] + datetime.timedelta(minutes=10)
        assert (schedule.tz, schedule.overlap) == ("Europe/Berlin", "skip")
    finally:
        queue.close()


def test_async_web_app_awaits_jobs_run_by_the_pools_event_loops(example):
    done = example("async_web_app.py")
    assert done.returncode == 0, done.stdout + done.stderr
    first = re.search(r"GET /forecast/city-0 -> 200 (\{.*\})", done.stdout)
    assert first and "'city': 'city-0'" in first.group(1), done.stdout
    pids, script = re.search(r"run by worker processes \[([\d, ]+)\] \(this is process (\d+)\)",
                             done.stdout).groups()
    assert script not in pids.split(", ")

