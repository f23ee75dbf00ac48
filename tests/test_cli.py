"""The command line: in-process through main(), and as ``python -m litejobs``."""

import json
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
from litejobs import Job
from pool_rows import finished_pid, insert_pool_row

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
    """On this host a pool's process tells whether it is alive: one that
    runs is alive even when it could not heartbeat for a while (another
    connection held the write lock), unless that lasted 5 minutes.  A pool
    on another host is alive while it heartbeats within its lease."""
    now = time.time()
    insert_pool_row(q.path, "pool@gone", pid=finished_pid(), heartbeat_at=now)
    # (Registered by this process, which started moments ago.)
    insert_pool_row(q.path, "pool@starved", pid=os.getpid(), heartbeat_at=now - 60,
                     started_at=now)
    insert_pool_row(q.path, "pool@hung", pid=os.getpid(), heartbeat_at=now - 400,
                     started_at=now)
    insert_pool_row(q.path, "pool@me", pid=os.getpid(), heartbeat_at=now)
    insert_pool_row(q.path, "pool@far", pid=1, heartbeat_at=now, host="elsewhere")
    insert_pool_row(q.path, "pool@silent", pid=1, heartbeat_at=now - 60, host="elsewhere")
    alive = {pool["id"]: pool["alive"] for pool in q.workers()}
    assert alive == {"pool@gone": False, "pool@starved": True, "pool@hung": False,
                     "pool@me": True, "pool@far": True, "pool@silent": False}


def test_starting_a_pool_forgets_pools_stopped_over_a_week_ago(q):
    old = time.time() - 8 * 86400
    insert_pool_row(q.path, "pool@old", pid=1, heartbeat_at=old, stopped_at=old)
    insert_pool_row(q.path, "pool@recent", pid=1, heartbeat_at=old, stopped_at=time.time())
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


# -- where pools find job modules: the installed command as python -m -----------------


CONSOLE_SCRIPT = """\
import re
import sys
from litejobs import main
if __name__ == "__main__":
    sys.argv[0] = re.sub(r"(-script\\.pyw|\\.exe)?$", "", sys.argv[0])
    sys.exit(main())
"""


@pytest.fixture
def litejobs_command(tmp_path):
    """The ``litejobs`` command as installed: pip's console script, run by its
    path, so that its own directory, not the current one, heads sys.path.
    The installed one when there is one; else the same script, written here."""
    installed = shutil.which("litejobs", path=os.path.dirname(sys.executable))
    if installed is None:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        installed = bin_dir / "litejobs"
        installed.write_text(CONSOLE_SCRIPT)

    def run(*args, cwd, timeout=60):
        env = {key: value for key, value in os.environ.items() if key != "LITEJOBS_SECRET"}
        env["PYTHONPATH"] = ROOT  # litejobs, and not the application
        return subprocess.run([sys.executable, str(installed), *map(str, args)], cwd=cwd,
                              env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout)
    return run


def write_package(directory, name="shop"):
    """A package ``name`` with a module ``tasks`` whose ``double`` job doubles."""
    package = directory / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "tasks.py").write_text("def double(x):\n    return 2 * x\n")


def test_the_installed_command_finds_job_modules_where_python_m_does(tmp_path,
                                                                     litejobs_command):
    app = tmp_path / "app"
    write_package(app)
    for args in (["init", "r.db"], ["put", "r.db", "shop.tasks:double", "[21]"],
                 ["worker", "r.db", "--burst", "-p", "1"]):
        done = litejobs_command(*args, cwd=app)
        assert done.returncode == 0, done.stderr
    shown = json.loads(litejobs_command("show", "r.db", "1", "--json", cwd=app).stdout)
    assert (shown["status"], shown["result"]) == ("completed", "42"), shown


def test_path_points_put_and_pools_at_the_job_modules(tmp_path, litejobs_command):
    write_package(tmp_path / "src")
    done = litejobs_command("put", "r.db", "shop.tasks:double", "[4]", cwd=tmp_path)
    assert done.returncode == 1 and "no database" in done.stderr and "init" in done.stderr
    litejobs_command("init", "r.db", cwd=tmp_path)
    done = litejobs_command("put", "r.db", "shop.tasks:double", "[4]", cwd=tmp_path)
    assert done.returncode == 2 and "No module named 'shop'" in done.stderr
    done = litejobs_command("put", "r.db", "shop.tasks:double", "[4]", "--path", "src",
                            cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # A pool that cannot import it leaves it pending, saying so; one with --path runs it.
    done = litejobs_command("worker", "r.db", "--burst", "-p", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "cannot import shop.tasks:double" in done.stderr
    assert "No module named 'shop'" in done.stderr
    job = litejobs.Queue(tmp_path / "r.db").get(1)
    assert (job.status, job.attempts) == ("pending", 0)
    done = litejobs_command("worker", "r.db", "--burst", "-p", "1", "--path", "src",
                            cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert job.wait(timeout=5) == 8
    done = litejobs_command("worker", "r.db", "--path", "nowhere", cwd=tmp_path)
    assert done.returncode == 2 and "nowhere is not a directory" in done.stderr


# -- init and worker --create --------------------------------------------------------------


def test_init_creates_a_database_and_says_what_it_did(tmp_path, capsys):
    path = tmp_path / "new.db"
    assert litejobs.main(["init", str(path)]) == 0
    assert capsys.readouterr().out == (f"created {path}: a litejobs database (mode 0600, WAL "
                                       f"journal, schema version {litejobs._SCHEMA_VERSION})\n")
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert litejobs.main(["init", str(path)]) == 0
    assert "is a litejobs database already" in capsys.readouterr().out
    app = tmp_path / "app.db"
    with sqlite3.connect(app) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
        conn.execute("INSERT INTO orders VALUES (7)")
    conn.close()
    assert litejobs.main(["init", str(app), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "database": str(app), "created": False, "changed": True,
        "schema_version": litejobs._SCHEMA_VERSION}
    with sqlite3.connect(app) as conn:
        assert conn.execute("SELECT id FROM orders").fetchall() == [(7,)]
    conn.close()
    assert litejobs.main(["init", str(tmp_path / "no-such-dir" / "x.db")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_worker_create_starts_on_a_missing_database(tmp_path):
    shutil.copy(os.path.join(ROOT, "litejobs.py"), tmp_path)
    done = run_module("worker", "fresh.db", "--create", "--burst", "-p", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert litejobs.Queue(tmp_path / "fresh.db", create=False).counts()["pending"] == 0


# -- a closed pipe ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["status"], ["list"], ["workers"], ["show", "1"],
                                     ["list", "--json"]])
def test_a_closed_pipe_ends_a_command_quietly(tmp_path, command):
    q = litejobs.Queue(tmp_path / "r.db")
    q.put_many(Job(sample_jobs.add, n, n) for n in range(2000))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.dirname(__file__)]))
    for _ in range(3):
        reader, writer = os.pipe()
        os.close(reader)  # gone before the command writes a byte
        with open(tmp_path / "err", "w+") as err:
            code = subprocess.call([sys.executable, "-m", "litejobs", command[0], q.path,
                                    *command[1:]], stdout=writer, stderr=err,
                                   stdin=subprocess.DEVNULL, env=env, timeout=60)
            os.close(writer)
            err.seek(0)
            assert (code, err.read()) == (141, "")


def test_list_piped_into_head_prints_no_traceback(tmp_path):
    q = litejobs.Queue(tmp_path / "r.db")
    q.put_many(Job(sample_jobs.add, n, n) for n in range(3000))
    script = (f"for i in 1 2 3 4 5 6 7 8 9 10; do {sys.executable} -m litejobs list {q.path} "
              f"--limit 3000 | head -1; {sys.executable} -m litejobs status {q.path} | head -1;"
              f" done")
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
    assert done.stderr == ""
    assert len(done.stdout.splitlines()) == 20


# -- cancel --graceful ---------------------------------------------------------------------


def test_cancel_graceful_asks_a_running_job_to_stop(q, tmp_path, capsys):
    started = tmp_path / "started"
    job = q.put(Job(sample_jobs.stop_when_asked, str(started)))
    waiting = q.put(Job(sample_jobs.add, 1, 1), begin_after=600)
    with q.worker(processes=1, grace=1):
        deadline = time.monotonic() + 30
        while not started.exists():
            assert time.monotonic() < deadline, "the job did not start"
            time.sleep(0.01)
        code = litejobs.main(["cancel", q.path, str(job.id), str(waiting.id), "--graceful",
                              "--grace", "20s"])
        assert code == 0
        assert capsys.readouterr().out == (
            f"job {job.id}: running; asked to stop, it has 20s before its pool stops it "
            f"and it ends cancelled\njob {waiting.id}: cancelled\n")
        assert job.wait(timeout=30) == "stopped early"
    assert litejobs.main(["cancel", q.path, str(job.id), "--grace", "5s"]) == 2
    assert "--grace goes with --graceful" in capsys.readouterr().err
