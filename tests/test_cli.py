"""The command line: in-process through main(), and as ``python -m litejobs``."""

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

import litejobs
import sample_jobs

ROOT = os.path.dirname(os.path.abspath(litejobs.__file__))


def run_module(*args, cwd, timeout=60):
    # -S: no site-packages, so nothing installed can help; -m finds litejobs in cwd.
    return subprocess.run([sys.executable, "-S", "-m", "litejobs", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def fresh_clone(tmp_path):
    """A folder holding only litejobs.py, as a clone without installing."""
    shutil.copy(os.path.join(ROOT, "litejobs.py"), tmp_path)
    return tmp_path


def test_help_works_without_installing(fresh_clone):
    done = run_module("--help", cwd=fresh_clone)
    assert done.returncode == 0, done.stderr
    assert "usage: litejobs" in done.stdout and "demo" in done.stdout
    assert done.stderr == ""


def test_every_command_has_help(capsys):
    parser = litejobs._build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001
    assert commands
    for name, command in commands.items():
        assert command.description, f"{name} has no description"
        with pytest.raises(SystemExit) as exit_:
            litejobs.main([name, "--help"])
        assert exit_.value.code == 0
        assert f"usage: litejobs {name}" in capsys.readouterr().out


def test_no_command_prints_help_and_fails(capsys):
    assert litejobs.main([]) == 2
    assert "usage: litejobs" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        litejobs.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"litejobs {litejobs.__version__}"


def test_demo_in_process(capsys):
    assert litejobs.main(["demo"]) == 0
    out = capsys.readouterr().out
    for step in ("1. A simple job", "2. A job with arguments", "3. A delayed job",
                 "4. A failing job", "5. Parallel parts", "6. A serial pipeline"):
        assert step in out
    assert "ZeroDivisionError: division by zero" in out
    assert "Traceback (most recent call last):" in out
    # 4 plain jobs, 4 parallel parts and their postprocess, 3 serial parts and theirs.
    assert "'completed': 12, 'failed': 1" in out
    assert "-> '148933 primes below 2000000'" in out
    assert "-> 'fetch completed; clean completed; load completed'" in out
    lines = out.splitlines()
    ended = {name: max(i for i, line in enumerate(lines) if f"{name} completed" in line)
             for name in ("_demo_count_primes", "_demo_add_up", "_demo_step", "_demo_report")}
    assert ended["_demo_count_primes"] < ended["_demo_add_up"]
    assert ended["_demo_step"] < ended["_demo_report"]
    assert [line.split("done by")[0].split("-> '")[1] for line in lines
            if "done by process" in line] == ["fetch ", "clean ", "load "]
    # On a real pool: two worker processes, not this one, ran the jobs.
    pids = out.split("its worker processes are ", 1)[1].split("\n", 1)[0].split(", ")
    assert len(pids) == 2 and str(os.getpid()) not in pids


def test_demo_as_a_module_without_installing(fresh_clone):
    done = run_module("demo", cwd=fresh_clone, timeout=120)
    assert done.returncode == 0, done.stderr
    # Jobs defined in the module are named litejobs:..., not __main__:...
    assert "litejobs:_demo_divide failed" in done.stdout
    assert "__main__" not in done.stdout


def test_running_as_main_and_importing_share_one_module(fresh_clone):
    code = (
        "import runpy, sys\n"
        "sys.argv = ['litejobs', '--version']\n"
        "try:\n"
        "    runpy.run_module('litejobs', run_name='__main__', alter_sys=True)\n"
        "except SystemExit:\n"
        "    pass\n"
        "import litejobs\n"
        "print(litejobs._RUN_AS_SCRIPT, litejobs.Queue.__module__,"
        " litejobs.JobFailed.__module__)\n"
    )
    done = subprocess.run([sys.executable, "-S", "-c", code], cwd=fresh_clone,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-3:] == ["True", "litejobs", "litejobs"]


def test_an_error_is_one_line_and_a_non_zero_exit(monkeypatch, capsys):
    def broken(args):
        raise litejobs.DatabaseError("no database at /nowhere/app.db: check the path")

    monkeypatch.setattr(litejobs, "_command_demo", broken)
    assert litejobs.main(["demo"]) == 1
    err = capsys.readouterr().err
    assert err == "litejobs: error: no database at /nowhere/app.db: check the path\n"


def test_the_module_docstring_quickstart_runs(tmp_path, monkeypatch, capsys):
    block = litejobs.__doc__.split("Quickstart::\n", 1)[1].split("\nRun ", 1)[0]
    code = textwrap.dedent(block)
    assert "import datetime, litejobs" in code
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "litejobs quickstart", "exec"), {})
    assert capsys.readouterr().out.split() == ["1024", "pending"]
    assert (tmp_path / "app.db").exists()


def test_all_is_sorted_and_public_names_have_docstrings():
    assert litejobs.__all__ == sorted(litejobs.__all__)
    for name in litejobs.__all__:
        obj = getattr(litejobs, name)
        if callable(obj):
            assert obj.__doc__, f"{name} has no docstring"


def test_demo_without_openssl_makes_the_key_in_python(monkeypatch, capsys):
    monkeypatch.setattr(litejobs.shutil, "which", lambda name: None)
    assert litejobs.main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "openssl not found" in out
    assert "'bits': 1024" in out and "litejobs:_demo_rsa_key completed" in out


def test_the_demo_key_always_has_the_bits_asked_for():
    assert {litejobs._demo_rsa_key(256)["bits"] for _ in range(40)} == {256}


# -- which pools are alive -------------------------------------------------------


def _finished_pid():
    """The pid of a process that has exited (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, timeout=60)
    return int(done.stdout)


def _insert_pool_row(path, pool_id, *, pid, heartbeat_at, stopped_at=None):
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(
        "INSERT INTO litejobs_workers (id, host, pid, processes, queues, lease, started_at,"
        " heartbeat_at, stopped_at) VALUES (?, ?, ?, 1, NULL, 30, ?, ?, ?)",
        (pool_id, socket.gethostname(), pid, heartbeat_at, heartbeat_at, stopped_at))
    conn.close()


def test_workers_lists_a_running_pool_then_says_it_stopped(q, tmp_path, capsys):
    marker = tmp_path / "go"
    with litejobs.Worker(q, processes=1) as worker:
        job = q.put(litejobs.Job(sample_jobs.wait_for_file, str(marker)))
        litejobs.wait_for_start(job, timeout=30)
        (pool,) = q.workers()
        assert pool["id"] == worker.id and pool["alive"] is True
        assert (pool["pid"], pool["processes"], pool["queues"], pool["jobs"]) == \
            (os.getpid(), 1, None, 1)
        assert pool["stopped_at"] is None
        assert litejobs.main(["workers", q.path]) == 0
        line = capsys.readouterr().out.splitlines()[0]
        assert line.startswith(f"{worker.id}  alive") and "1 jobs running" in line
        marker.write_text("")
        assert job.wait(timeout=30) == 1
    (pool,) = q.workers()
    assert pool["alive"] is False and pool["stop_reason"] == "stopped"
    assert pool["stopped_at"] is not None and pool["jobs"] == 0
    assert litejobs.main(["workers", q.path]) == 0
    out = capsys.readouterr().out
    assert f"{worker.id}  stopped" in out and ": stopped" in out


def test_a_pool_whose_process_is_gone_is_not_alive(q):
    _insert_pool_row(q.path, "pool@gone", pid=_finished_pid(), heartbeat_at=time.time())
    _insert_pool_row(q.path, "pool@silent", pid=os.getpid(), heartbeat_at=time.time() - 60)
    _insert_pool_row(q.path, "pool@me", pid=os.getpid(), heartbeat_at=time.time())
    alive = {pool["id"]: pool["alive"] for pool in q.workers()}
    assert alive == {"pool@gone": False, "pool@silent": False, "pool@me": True}


def test_starting_a_pool_forgets_pools_stopped_over_a_week_ago(q):
    old = time.time() - 8 * 86400
    _insert_pool_row(q.path, "pool@old", pid=1, heartbeat_at=old, stopped_at=old)
    _insert_pool_row(q.path, "pool@recent", pid=1, heartbeat_at=old, stopped_at=time.time())
    with litejobs.Worker(q, processes=1) as worker:
        ids = {pool["id"] for pool in q.workers()}
    assert ids == {"pool@recent", worker.id}


def test_workers_on_a_database_no_pool_has_served(q, capsys):
    assert litejobs.main(["workers", q.path]) == 0
    assert capsys.readouterr().out.startswith("no worker pool has run on")


def test_workers_on_a_missing_database_is_a_one_line_error(tmp_path, capsys):
    missing = tmp_path / "missing.db"
    assert litejobs.main(["workers", str(missing)]) == 1
    assert capsys.readouterr().err.startswith("litejobs: error: no database at")
    assert not missing.exists()
