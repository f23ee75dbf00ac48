"""Hostile conditions: greedy jobs, a database file swapped or damaged under
litejobs, a file it may not write, and many threads putting at once.

What is already covered elsewhere is not repeated here: kill -9 of a child
or of a supervisor (whose orphaned children exit by themselves), a deleted
database, read-only files and directories opened by `Queue`, a full disk,
and corrupt files given to the inspection commands.

Pools are real ``python -m litejobs worker`` processes, each in a session
of its own that teardown kills whole, or ``q.worker()`` pools of spawned
processes; every wait is bounded, and what happened is read back from the
file (through copies, where opening the file itself would change it).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

import hostile_jobs
import litejobs
import sample_jobs
from hostile_jobs import run_cli
from litejobs import Job
from waiting import WAIT, child_pids, wait_until

GIB = 2 ** 30


@pytest.fixture(autouse=True)
def no_secret_in_the_environment(monkeypatch):
    monkeypatch.delenv("LITEJOBS_SECRET", raising=False)


def sha256(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def side_files(path):
    return [name for name in (f"{path}-wal", f"{path}-shm", f"{path}-journal")
            if os.path.exists(name)]


def error_lines(text):
    return [line for line in text.splitlines() if line.startswith("litejobs: error:")]


# == 4. the memory limit ====================================================================


def test_a_job_past_the_memory_limit_fails_and_its_child_is_replaced(q):
    with q.worker(processes=1, memory_limit=GIB) as pool:
        first_pid = q.put(Job(hostile_jobs.pid)).wait(timeout=WAIT)
        assert child_pids(pool) == [first_pid]
        greedy = q.put(Job(hostile_jobs.allocate, 2048))
        at_once = q.put(Job(hostile_jobs.allocate_at_once, 2048))
        for job in (greedy, at_once):
            with pytest.raises(litejobs.JobFailed) as caught:
                job.wait(timeout=WAIT)
            assert job.refresh().error_type == "builtins.MemoryError"
            assert caught.value.traceback.rstrip().endswith("MemoryError")
            assert "hostile_jobs.py" in caught.value.traceback
        # The pool goes on, in a fresh child, and jobs within the limit run.
        after_pid = q.put(Job(hostile_jobs.pid)).wait(timeout=WAIT)
        assert after_pid != first_pid
        wait_until(lambda: child_pids(pool) == [after_pid], what="the retired child to go",
                   details=lambda: str(child_pids(pool)))
        assert q.put(Job(hostile_jobs.allocate, 256)).wait(timeout=WAIT) == 256 * 2 ** 20
        assert pool.alive and pool.crashes == []
    assert q.counts()["failed"] == 2 and q.counts()["completed"] == 3


def test_a_memory_error_is_retried_as_its_retry_policy_says(q):
    with q.worker(processes=1, memory_limit=GIB):
        job = q.put(Job(hostile_jobs.allocate_at_once, 2048),
                    retry=litejobs.Retry(attempts=2, delay=0, on=MemoryError))
        with pytest.raises(litejobs.JobFailed):
            job.wait(timeout=WAIT)
        job.refresh()
        assert (job.attempts, job.interruptions) == (2, 0)
        assert job.error_type == "builtins.MemoryError"


def test_the_cli_worker_memory_limit(q, cli_pools):
    before = q.put(Job(hostile_jobs.pid))
    greedy = q.put(Job(hostile_jobs.allocate, 2048))
    after = q.put(Job(hostile_jobs.pid))
    fits = q.put(Job(hostile_jobs.allocate, 256))
    pool = cli_pools.start(q.path, "-p", "1", "--memory-limit", "1G")
    wait_until(lambda: pool.proc.poll() is not None
               or q.get(fits.id).status in (litejobs.COMPLETED, litejobs.FAILED),
               what="the jobs to run", details=pool.log)
    assert pool.proc.poll() is None, pool.log()
    greedy.refresh()
    assert greedy.status == litejobs.FAILED
    assert greedy.error_type == "builtins.MemoryError", greedy.error
    assert q.get(before.id).result != q.get(after.id).result  # a fresh child
    assert q.get(fits.id).result == 256 * 2 ** 20

    pool.proc.send_signal(signal.SIGTERM)
    assert pool.wait_exit() == 0, pool.log()
    assert "Traceback (most recent call last)" in pool.log()  # the job's, logged as ERROR
    assert "MemoryError" in pool.log()


@pytest.mark.parametrize("value, error", [
    (0, ValueError), (-GIB, ValueError), ("1G", TypeError), (1.5, TypeError),
    (True, TypeError),
])
def test_bad_memory_limits_are_refused(q, value, error):
    with pytest.raises(error, match="memory_limit"):
        litejobs.Worker(q, memory_limit=value)


@pytest.mark.parametrize("value", ["0", "lots", "-1G", "1Q"])
def test_a_bad_memory_limit_is_a_usage_error_for_the_cli_worker(q, tmp_path, value):
    q.put(Job(sample_jobs.add, 1, 2))
    done = run_cli("worker", q.path, "--memory-limit", value, "--burst", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "memory-limit" in done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr
    assert q.counts()["pending"] == 1


# == 5. the database file replaced under a running pool ====================================


def a_replacement(path):
    """A valid litejobs database at ``path`` with one pending job, closed:
    its main file is the whole of it.  Returns that job's id."""
    with litejobs.Queue(path) as other:
        job = other.put(Job(sample_jobs.add, 5, 5))
    assert side_files(path) == []
    return job.id


def read_copy(path, wal=None, into=None):
    """Open a copy of ``path`` (with ``wal`` as its WAL, if given), so that
    neither the file nor any -wal beside it is touched; return a plain
    read-only connection."""
    into = Path(into)
    shutil.copyfile(path, into)
    if wal is not None and os.path.exists(wal):
        shutil.copyfile(wal, f"{into}-wal")
    conn = sqlite3.connect(into, timeout=10)
    conn.row_factory = sqlite3.Row
    return conn


def replace_under_a_cli_pool(tmp_path, cli_pools):
    """Run a CLI pool on jobs.db, replace the file with another litejobs
    database, and wait for the pool to exit; return what a test checks."""
    db = str(tmp_path / "jobs.db")
    q = litejobs.Queue(db)
    ran = q.put(Job(sample_jobs.add, 1, 2))
    pool = cli_pools.start(db, "-p", "1", "--lease", "3s")  # a file check every second
    wait_until(lambda: q.get(ran.id).status == litejobs.COMPLETED, what="the first job",
               details=pool.log)
    q.close()
    os.link(db, tmp_path / "old-inode.db")  # keeps the pool's file reachable
    waiting = a_replacement(tmp_path / "other.db")
    replacement = sha256(tmp_path / "other.db")

    os.replace(tmp_path / "other.db", db)
    replaced = time.monotonic()
    status = pool.wait_exit(timeout=20)
    return {"db": db, "pool": pool, "status": status, "seconds": time.monotonic() - replaced,
            "ran": ran.id, "waiting": waiting, "replacement": replacement}


def test_replacing_the_database_under_a_cli_pool_stops_it_and_writes_into_neither_file(
        tmp_path, cli_pools):
    seen = replace_under_a_cli_pool(tmp_path, cli_pools)
    db, pool = seen["db"], seen["pool"]

    assert seen["status"] == 1, pool.log()
    assert seen["seconds"] < 10
    log = pool.log()
    errors = error_lines(log)
    assert len(errors) == 1, log
    assert "replaced" in errors[0] and db in errors[0]
    assert "Traceback" not in log

    # The file now in place: not one byte changed, and its job was not claimed.
    assert sha256(db) == seen["replacement"]
    with contextlib.closing(read_copy(db, into=tmp_path / "check-new.db")) as conn:
        rows = conn.execute("SELECT id, status, attempts, lease_owner FROM litejobs_jobs"
                            ).fetchall()
        assert [tuple(row) for row in rows] == [(seen["waiting"], "pending", 0, None)]
        assert conn.execute("SELECT count(*) FROM litejobs_workers").fetchone()[0] == 0

    # The pool's own file, as it left it (with the -wal it left, if any):
    # nothing claimed from it, and no record of the stop written into a file
    # nobody sees any more.
    with contextlib.closing(read_copy(tmp_path / "old-inode.db", wal=f"{db}-wal",
                                      into=tmp_path / "check-old.db")) as conn:
        assert [row[0] for row in conn.execute("SELECT id FROM litejobs_jobs")] == [seen["ran"]]
        assert conn.execute("SELECT count(*) FROM litejobs_workers "
                            "WHERE stopped_at IS NOT NULL").fetchone()[0] == 0


def test_the_database_put_in_place_under_a_pool_reads_as_it_was_written(tmp_path,
                                                                        cli_pools):
    """Whoever opens the path next, once the pool has stopped, must see the
    replacement's jobs, not pages the stopped pool left in a -wal file
    beside it."""
    seen = replace_under_a_cli_pool(tmp_path, cli_pools)
    assert seen["status"] == 1, seen["pool"].log()
    left = {name: os.path.getsize(name) for name in side_files(seen["db"])}

    with litejobs.Queue(seen["db"]) as q:
        job = q.get(seen["waiting"])
        assert (job.status, job.args, job.attempts) == ("pending", (5, 5), 0), (
            f"the replacement reads as {job.status} {job.name}; files left beside it by "
            f"the stopped pool: {left}")
        assert q.counts() == {**{status: 0 for status in litejobs.STATUSES}, "pending": 1}


def test_replacing_the_database_under_a_queue_worker_stops_it_with_an_error(q, tmp_path):
    first = q.put(Job(sample_jobs.add, 1, 2))
    pool = litejobs.Worker(q, processes=1, lease=3).start()
    try:
        assert first.wait(timeout=WAIT) == 3
        waiting = a_replacement(tmp_path / "other.db")
        replacement = sha256(tmp_path / "other.db")
        q.close()
        os.replace(tmp_path / "other.db", q.path)
        wait_until(lambda: not pool.alive, timeout=15, what="the pool to stop")
        with pytest.raises(litejobs.DatabaseError, match="replaced by another file"):
            pool.stop(grace=0, timeout=30)
    finally:
        with contextlib.suppress(litejobs.LitejobsError):
            pool.stop(grace=0, timeout=30)
    assert sha256(q.path) == replacement
    with contextlib.closing(read_copy(q.path, into=tmp_path / "check.db")) as conn:
        rows = conn.execute("SELECT id, status FROM litejobs_jobs").fetchall()
        assert [tuple(row) for row in rows] == [(waiting, "pending")]


# == 5. corrupt and read-only files given to the command line =============================


def make_litejobs_db(path, jobs):
    """A closed litejobs database holding ``jobs`` pending jobs, its WAL
    checkpointed into the main file."""
    with litejobs.Queue(path, durable=False) as q:
        q.put_many([Job(pow, 2, n) for n in range(jobs)])
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    for name in side_files(path):
        os.remove(name)
    return path


def random_header(path):
    make_litejobs_db(path, 10)
    with open(path, "r+b") as handle:
        handle.write(random.Random(4321).randbytes(100))


def truncated(path):
    make_litejobs_db(path, 2000)
    size = os.path.getsize(path)
    assert size > 100 * 1024
    os.truncate(path, size // 2)


@pytest.mark.parametrize("command", [["worker", "-p", "1"], ["worker", "--burst"],
                                     ["status"], ["status", "--json"]], ids=" ".join)
@pytest.mark.parametrize("damage", [random_header, truncated], ids=["random-header",
                                                                    "truncated"])
def test_a_corrupt_database_given_to_the_cli_is_a_one_line_error_and_left_alone(
        tmp_path, damage, command):
    db = str(tmp_path / "jobs.db")
    damage(db)
    before = sha256(db)
    started = time.monotonic()
    done = run_cli(command[0], db, *command[1:], cwd=tmp_path, timeout=60)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert time.monotonic() - started < 20
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("litejobs: error: "), \
        done.stderr
    assert db in done.stderr
    assert "Traceback" not in done.stderr
    assert sha256(db) == before
    if command[0] == "worker":
        assert side_files(db) == []
    else:  # a read-only connection leaves SQLite's side files behind, empty of pages
        assert not os.path.exists(f"{db}-journal")
        assert not os.path.exists(f"{db}-wal") or os.path.getsize(f"{db}-wal") == 0


# Runs in a fresh interpreter.  As root, it drops to ``nobody`` (for whom
# file modes apply) once litejobs is imported: the interpreter may live
# where nobody cannot read.
_AS_NOBODY = r"""
import os, pwd, sys
sys.path.insert(0, sys.argv[1])
import litejobs
if os.geteuid() == 0:
    nobody = pwd.getpwnam("nobody")
    os.setgroups([])
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)
sys.exit(litejobs.main(sys.argv[2:]))
"""


@pytest.fixture
def shared_dir():
    """A directory anyone may write to (tmp_path is 0700 under root)."""
    directory = Path(tempfile.mkdtemp(prefix="litejobs-hostile-"))
    directory.chmod(0o777)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def test_a_read_only_database_given_to_the_cli_worker_is_refused_and_nothing_claimed(
        shared_dir):
    db = str(shared_dir / "jobs.db")
    with litejobs.Queue(db) as q:
        job = q.put(Job(sample_jobs.add, 1, 2))
    assert side_files(db) == []
    os.chmod(db, 0o444)
    before = sha256(db)

    def as_nobody(*words):
        return subprocess.run(
            [sys.executable, "-c", _AS_NOBODY, os.path.dirname(os.path.abspath(
                litejobs.__file__)), *words],
            cwd=shared_dir, capture_output=True, text=True, timeout=60,
            stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})

    done = as_nobody("worker", db, "-p", "1", "--burst")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("litejobs: error: "), \
        done.stderr
    assert "read-only" in done.stderr and db in done.stderr
    assert sha256(db) == before
    # Reading is still allowed, and shows the job never claimed.
    done = as_nobody("status", db, "--json")
    assert done.returncode == 0, done.stderr
    assert '"pending": 1' in done.stdout
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        assert conn.execute("SELECT status, attempts, lease_owner FROM litejobs_jobs "
                            "WHERE id = ?", (job.id,)).fetchone() == ("pending", 0, None)


# == 5. many threads putting while two pools drain ==========================================


THREADS = 32
EACH = 10  # jobs each thread puts through its own Queue, and as many through the shared one


def test_32_threads_put_while_two_cli_pools_drain(tmp_path, cli_pools):
    db = str(tmp_path / "jobs.db")
    shared = litejobs.Queue(db)
    pools = [cli_pools.start(db, "-p", "1", "--lease", "5s", "-q", "default", "-q", f"ready-{n}")
             for n in range(2)]
    # Both pools' worker processes up before the puts (each has run a job of
    # its own queue): a pool that warms up quickly would otherwise drain it
    # all alone on a busy machine.
    for n in range(2):
        shared.put(Job(sample_jobs.add, n, n), queue=f"ready-{n}").wait(timeout=WAIT)
    barrier = threading.Barrier(THREADS)
    put = {}
    problems = []

    def putter(number):
        try:
            own = litejobs.Queue(db)
            barrier.wait(timeout=60)
            ids = []
            for i in range(EACH):
                ids.append((own.put(Job(sample_jobs.add, number, i)).id, number + i))
                ids.append((shared.put(Job(sample_jobs.add, number, 1000 + i)).id,
                            number + 1000 + i))
            ids += [(job.id, number + 2000 + i) for i, job in enumerate(own.put_many(
                [Job(sample_jobs.add, number, 2000 + i) for i in range(3)]))]
            put[number] = ids
            own.close()
        except BaseException as exc:  # every failure is reported, not just the first
            problems.append(f"thread {number}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=putter, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert problems == []
    expected = dict(pair for ids in put.values() for pair in ids)
    assert len(expected) == THREADS * (2 * EACH + 3)

    def unfinished():
        counts = shared.counts()
        return counts["pending"] + counts["active"]

    wait_until(lambda: unfinished() == 0 or any(p.proc.poll() is not None for p in pools),
               timeout=90, what="the pools to drain every job",
               details=lambda: f"{shared.counts()}\n" + "\n".join(p.log() for p in pools))
    assert all(pool.proc.poll() is None for pool in pools), [p.log() for p in pools]
    assert shared.counts("default")["completed"] == len(expected), shared.counts()
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        results = dict(conn.execute("SELECT id, ran_by FROM litejobs_jobs").fetchall())
    assert {job_id: shared.get(job_id).result for job_id in expected} == expected
    assert len({results[job_id] for job_id in expected}) == 2  # both pools took part

    for pool in pools:
        pool.proc.send_signal(signal.SIGTERM)
    for pool in pools:
        assert pool.wait_exit() == 0, pool.log()
        log = pool.log()
        assert "Traceback" not in log and "database is locked" not in log, log
        assert " ERROR " not in log and " CRITICAL " not in log, log
