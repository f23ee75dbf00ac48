"""The worker pool as a separate OS process: ``python -m litejobs worker DB``.

Each pool here is a real ``python -m litejobs worker`` process started with
``subprocess.Popen``, as an operator or systemd would start it, and driven
with real signals: SIGTERM and SIGINT (graceful, then at once), SIGKILL of
the supervisor, SIGSTOP/SIGCONT past the lease, and the database file
deleted under it.  What the pool did is read back from the database (job rows
and the ``litejobs_workers`` heartbeat table) and from its log.  One test runs
``Worker.run`` from a small script instead, whose children cannot start.

How the processes are handled:

- Every pool is started in a session of its own (``start_new_session``), so
  its process group holds the supervisor and its children.  The ``start_pool``
  fixture kills each group with SIGKILL at teardown (after a SIGCONT, for a
  supervisor a test left stopped) and reaps the supervisor, so no process
  outlives its test, even one that fails half way.
- A pool's stdout and stderr go to a log file under ``tmp_path`` rather than
  a pipe: nobody reads a pipe while the pool runs, and a full pipe would block
  the pool's logging.  Tests read the file when they need to.
- The pools' children are started with ``spawn`` and import job functions by
  name, so ``PYTHONPATH`` names the tests folder (for ``sample_jobs`` and this
  module, ``test_worker_cli``) and the repository root (for ``litejobs``).
- Nothing sleeps to wait for something observable: ``wait_until`` polls a
  condition (a marker file a job writes, a row, a log line, a process state)
  against a deadline.  The one deliberate pause is explained where it is.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import pytest

import litejobs
import sample_jobs
from hostile_jobs import cli_env, run_cli
from pool_rows import the_row_of, worker_rows
from waiting import WAIT, process_ended, process_state, wait_for_pid, wait_until
from litejobs import Job



# -- jobs (run in the pools' children, which import this module by name) -----------------


def started_then_wait(started_path, go_path):
    """Say it started (its pid in ``started_path``), then block until
    ``go_path`` exists; return the attempt."""
    with open(started_path, "w") as handle:
        handle.write(str(os.getpid()))
    return sample_jobs.wait_for_file(go_path, timeout=60)


def started_then_sleep(started_path, seconds):
    """Say it started, then sleep: a job longer than any grace given here."""
    with open(started_path, "w") as handle:
        handle.write(str(os.getpid()))
    time.sleep(seconds)
    return "slept"


def stale_then_fresh(marker_dir):
    """Attempt 1 says it started, waits for ``go``, says it finished and
    returns "A"; any later attempt returns "B" at once."""
    attempt = litejobs.current_job().attempt
    if attempt >= 2:
        return "B"
    with open(os.path.join(marker_dir, "started-1"), "w") as handle:
        handle.write(str(os.getpid()))
    sample_jobs.wait_for_file(os.path.join(marker_dir, "go"), timeout=60)
    with open(os.path.join(marker_dir, "finished-1"), "w") as handle:
        handle.write(str(os.getpid()))
    return "A"


# -- helpers -----------------------------------------------------------------------------


@pytest.fixture
def start_pool(cli_pools):
    """``start_pool(db, *options)``: a ``python -m litejobs worker`` process
    (`conftest.CliPool`); every pool is killed at teardown."""
    return cli_pools.start


@pytest.fixture
def db(q):
    return q.path


def status_of(q, job):
    return q.get(job.id).status


def wait_until_recorded_as_begun(q, job, pool):
    """Wait until the pool has recorded that the job's run began: killed
    then, the run is an interruption (a run not yet recorded as begun is
    taken back as not started)."""
    wait_until(lambda: not q.get(job.id)._row["unstarted"], WAIT,
               "the pool to record that the run began", pool.log)


# -- 1. --burst --------------------------------------------------------------------------


def test_burst_runs_what_is_due_then_exits_0(q, db, start_pool):
    due = q.put_many([Job(sample_jobs.add, i, i) for i in range(50)])
    delayed = q.put(Job(sample_jobs.add, 1, 1), begin_after=3600)

    pool = start_pool(db, "--burst", "-p", "2")

    assert pool.wait_exit(timeout=60) == 0, pool.log()
    assert q.counts() == {"pending": 1, "waiting": 0, "active": 0, "completed": 50, "failed": 0,
                          "cancelled": 0}
    assert [q.get(job.id).result for job in due] == [2 * i for i in range(50)]
    delayed.refresh()
    assert delayed.status == litejobs.PENDING and delayed.attempts == 0
    assert "Traceback" not in pool.log()


# -- 2. graceful SIGTERM, running jobs finish within the grace ---------------------------


def test_sigterm_lets_running_jobs_finish_and_claims_nothing_more(q, db, tmp_path,
                                                                   start_pool):
    go = tmp_path / "go"
    jobs = [q.put(Job(started_then_wait, str(tmp_path / f"started-{n}"), str(go)))
            for n in (1, 2)]
    pool = start_pool(db, "-p", "2", "--grace", "10s")
    # Both jobs have started in a child: a job only claimed when the stop
    # begins would be released, not finished.
    wait_until(lambda: all((tmp_path / f"started-{n}").exists() for n in (1, 2)), WAIT,
               "both jobs to start", pool.log)
    assert q.counts()["active"] == 2

    pool.send(signal.SIGTERM)
    pool.wait_log("stopping: 2 jobs running")
    late = q.put(Job(sample_jobs.add, 2, 3))  # put while the pool is stopping
    go.touch()

    assert pool.wait_exit() == 0, pool.log()
    for job in jobs:
        job.refresh()
        assert job.status == litejobs.COMPLETED, pool.log()
        assert (job.result, job.attempts, job.interruptions) == (1, 1, 0)
    late.refresh()
    assert late.status == litejobs.PENDING and late.attempts == 0, pool.log()
    assert q.counts()["active"] == 0


# -- 3. SIGTERM, a job longer than the grace ---------------------------------------------


def test_sigterm_hands_back_a_job_longer_than_the_grace(q, db, tmp_path, start_pool):
    started = tmp_path / "started"
    job = q.put(Job(started_then_sleep, str(started), 60))
    pool = start_pool(db, "-p", "1", "--grace", "0.5s")
    wait_until(started.exists, WAIT, "the job to start", pool.log)

    signalled = time.monotonic()
    pool.send(signal.SIGTERM)
    assert pool.wait_exit() == 0, pool.log()

    assert time.monotonic() - signalled < 15  # the grace, not the job's 60 s
    job.refresh()
    assert job.status == litejobs.PENDING, pool.log()
    assert (job.attempts, job.interruptions, job.handbacks) == (1, 0, 1)
    assert job._row["lease_owner"] is None
    assert q.counts()["active"] == 0
    assert f"job {job.id} ({job.name}) attempt 1 was handed back" in pool.log()
    assert process_ended(wait_for_pid(started))  # the child running it was killed


# -- 4. a second signal stops at once ----------------------------------------------------


def test_a_second_signal_stops_at_once(q, db, tmp_path, start_pool):
    started = tmp_path / "started"
    job = q.put(Job(started_then_sleep, str(started), 60))
    pool = start_pool(db, "-p", "1", "--grace", "60s")
    wait_until(started.exists, WAIT, "the job to start", pool.log)

    pool.send(signal.SIGTERM)
    pool.wait_log("received SIGTERM")
    signalled = time.monotonic()
    pool.send(signal.SIGINT)
    assert pool.wait_exit() == 0, pool.log()

    assert time.monotonic() - signalled < 10  # not the 60 s grace
    assert "received SIGINT again: stopping at once" in pool.log()
    job.refresh()
    assert job.status == litejobs.PENDING, pool.log()
    assert (job.interruptions, job.handbacks) == (0, 1)
    assert q.counts()["active"] == 0


# -- 5. kill -9 of the supervisor --------------------------------------------------------


def test_kill_9_of_the_supervisor_then_another_pool_recovers(q, db, tmp_path, start_pool):
    markers = tmp_path / "markers"
    markers.mkdir()
    job = q.put(Job(sample_jobs.block_first_attempt, str(markers)))
    pool_a = start_pool(db, "-p", "1", "--lease", "2s")
    wait_until((markers / "started-1").exists, WAIT, "attempt 1 to start", pool_a.log)
    child_pid = wait_for_pid(markers / "started-1")
    row_a = wait_until(lambda: the_row_of(db, pool_a.pid), WAIT, "pool A's row")
    wait_until_recorded_as_begun(q, job, pool_a)

    pool_a.send(signal.SIGKILL)
    assert pool_a.wait_exit() == -signal.SIGKILL
    # The child is no longer ours to reap: it was reparented.  It must exit
    # by itself, having noticed its supervisor is gone.
    wait_until(lambda: process_ended(child_pid), 10, f"orphaned child {child_pid} to exit",
               lambda: f"state {process_state(child_pid)}")

    pool_b = start_pool(db, "-p", "1", "--lease", "2s")
    wait_until(lambda: status_of(q, job) == litejobs.COMPLETED, WAIT,
               "pool B to run the job again", pool_b.log)
    job.refresh()
    assert (job.attempts, job.interruptions) == (2, 1)
    assert job.result[0] == 2 and job.result[1] != child_pid
    assert (markers / "started-2").exists()

    # Pool B declares pool A gone once A has missed 3 heartbeats (about 6 s).
    stopped = wait_until(
        lambda: (lambda row: row if row["stopped_at"] is not None else None)(
            the_row_of(db, pool_a.pid)),
        15, "pool A's row to be marked stopped", pool_b.log)
    assert stopped["id"] == row_a["id"]
    assert f"(pid {pool_a.pid} on " in stopped["stop_reason"]
    assert stopped["stop_reason"] != "stopped"

    pool_b.send(signal.SIGTERM)
    assert pool_b.wait_exit() == 0, pool_b.log()
    assert the_row_of(db, pool_b.pid)["stop_reason"] == "stopped"


# -- 6. SIGSTOP past the lease: the stale outcome is rejected ----------------------------


def stop_outside_a_write(pool, db):
    """SIGSTOP the supervisor at a moment it holds no write lock (else every
    other writer would wait for it), retrying if it was caught in one."""
    for _ in range(20):
        pool.send(signal.SIGSTOP)
        wait_until(lambda: process_state(pool.pid) in ("T", "t"), WAIT,
                   "the supervisor to stop")
        with contextlib.closing(sqlite3.connect(db, timeout=0.5,
                                                isolation_level=None)) as conn:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:  # locked: caught mid-transaction
                pool.send(signal.SIGCONT)
                continue
            conn.execute("ROLLBACK")
            return
    raise AssertionError("the supervisor held the write lock at every SIGSTOP")


def test_sigstop_past_the_lease_rejects_the_stale_outcome(q, db, tmp_path, start_pool):
    markers = tmp_path / "markers"
    markers.mkdir()
    job = q.put(Job(stale_then_fresh, str(markers)))
    pool_a = start_pool(db, "-p", "1", "--lease", "1s")
    wait_until((markers / "started-1").exists, WAIT, "attempt 1 to start", pool_a.log)
    assert status_of(q, job) == litejobs.ACTIVE
    wait_until_recorded_as_begun(q, job, pool_a)

    # Only the supervisor stops; its child keeps running attempt 1.
    stop_outside_a_write(pool_a, db)
    wait_until(lambda: q.get(job.id)._row["lease_expires"] < time.time(), WAIT,
               "pool A's lease to run out")

    pool_b = start_pool(db, "--burst", "-p", "1", "--lease", "1s")
    assert pool_b.wait_exit(timeout=60) == 0, pool_b.log()
    after_b = q.get(job.id)
    assert after_b.status == litejobs.COMPLETED, pool_b.log()
    assert after_b.result == "B"
    assert (after_b.attempts, after_b.interruptions) == (2, 1)

    (markers / "go").touch()
    wait_until((markers / "finished-1").exists, WAIT, "the stale attempt to return")
    # Deliberate pause: the child sends its outcome to the (stopped)
    # supervisor right after writing finished-1, and nothing outside the
    # process marks that send.  Without this pause the supervisor could
    # resume first, and kill the run instead of discarding its outcome.
    time.sleep(0.3)
    assert process_state(pool_a.pid) in ("T", "t")
    pool_a.send(signal.SIGCONT)
    pool_a.wait_log("lease was lost")
    pool_a.send(signal.SIGTERM)
    assert pool_a.wait_exit() == 0, pool_a.log()

    log = pool_a.log()
    assert (f"job {job.id} ({job.name}) attempt 1: the lease was lost before its outcome "
            "was written") in log
    assert "this outcome was discarded" in log
    final = q.get(job.id)
    assert final.result == "B"
    assert final._row == after_b._row  # pool A changed nothing, finished_at included
    assert final.finished_at == after_b.finished_at


def test_a_paused_pool_whose_job_was_recovered_stops_the_old_run_and_carries_on(
        q, db, tmp_path, start_pool):
    """While the supervisor is stopped past its lease, the job is put back to
    pending, as another pool's claim would.  On SIGCONT the pool may claim the
    job again itself while the old run still goes on in a child, or find its
    lease lost on renewal: either way the old run is stopped, the new one
    completes, and the pool keeps serving."""
    job = q.put(Job(sample_jobs.block_first_attempt, str(tmp_path)))
    pool = start_pool(db, "-p", "2", "--lease", "1s", "--poll", "100ms")
    wait_until((tmp_path / "started-1").exists, WAIT, "attempt 1 to start", pool.log)
    old_run = wait_for_pid(tmp_path / "started-1")
    stop_outside_a_write(pool, db)
    with contextlib.closing(sqlite3.connect(db, timeout=30, isolation_level=None)) as conn:
        recovered = conn.execute(
            "UPDATE litejobs_jobs SET status = 'pending', interruptions = interruptions + 1,"
            " lease_owner = NULL, lease_token = NULL, lease_expires = NULL"
            " WHERE id = ? AND status = 'active'", (job.id,)).rowcount
    assert recovered == 1
    pool.send(signal.SIGCONT)

    wait_until(lambda: status_of(q, job) == litejobs.COMPLETED, WAIT,
               "attempt 2 to complete", pool.log)
    final = q.get(job.id)
    assert final.result[0] == 2 and (final.attempts, final.interruptions) == (2, 1)
    wait_until(lambda: process_ended(old_run), WAIT, "the stale run to be stopped")
    assert "lease was lost" in pool.log()
    assert q.put(Job(sample_jobs.add, 2, 2)).wait(timeout=WAIT) == 4  # still serving
    pool.send(signal.SIGTERM)
    assert pool.wait_exit() == 0, pool.log()


# -- 7. the database deleted under a running pool ----------------------------------------


def test_deleting_the_database_stops_the_pool_with_an_error(q, db, start_pool):
    pool = start_pool(db, "-p", "1", "--lease", "3s")  # heartbeats, and file checks, every 1 s
    # A job the pool has run: its children are up and it has used the file.
    job = q.put(Job(sample_jobs.add, 1, 2))
    wait_until(lambda: status_of(q, job) == litejobs.COMPLETED, WAIT, "the first job",
               pool.log)
    q.close()  # this process keeps no connection to the file

    files = [db, db + "-wal", db + "-shm"]
    for path in files:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    deleted = time.monotonic()

    status = pool.wait_exit(timeout=15)
    assert status == 1, pool.log()
    assert time.monotonic() - deleted < 10
    log = pool.log()
    errors = [line for line in log.splitlines() if line.startswith("litejobs: error:")]
    assert len(errors) == 1, log
    assert "deleted" in errors[0] and db in errors[0]
    assert "Traceback" not in log
    assert [path for path in files if os.path.exists(path)] == []  # nothing re-created


# -- 8. argument errors and help ---------------------------------------------------------


@pytest.mark.parametrize("option, value", [
    ("--processes", "0"),
    ("--lease", "abc"),
    ("--grace", "-1"),
    ("--start-method", "nope"),
    ("--lease", "0"),
    ("--poll", "0"),
])
def test_a_bad_option_is_a_usage_error(db, tmp_path, option, value):
    done = run_cli("worker", db, option, value, "--burst", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "usage: litejobs worker" in done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("litejobs worker: error:"), done.stderr
    assert option.lstrip("-") in error
    assert litejobs.Queue(db).counts() == {status: 0 for status in litejobs.STATUSES}


def test_a_missing_database_is_a_one_line_error(tmp_path):
    done = run_cli("worker", "missing.db", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr == (f"litejobs: error: no database at {tmp_path / 'missing.db'}: "
                           f"check the path, or create it with: python -m litejobs init "
                           f"{tmp_path / 'missing.db'}\n")
    assert [p for p in os.listdir(tmp_path) if p.startswith("missing.db")] == []


def test_worker_help_lists_its_options(tmp_path):
    done = run_cli("worker", "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: litejobs worker")
    for option in ("--processes", "--queue", "--burst", "--grace", "--lease", "--poll",
                   "--max-jobs-per-child", "--log-level", "--start-method"):
        assert option in done.stdout


# -- 9. the heartbeat row of a CLI pool --------------------------------------------------


def test_a_running_pool_has_a_heartbeat_row_and_a_stopped_one_says_so(db, start_pool):
    pool = start_pool(db, "-p", "2", "--lease", "3s")  # a heartbeat every second
    row = wait_until(lambda: the_row_of(db, pool.pid), WAIT, "the pool's row", pool.log)
    assert row["host"] == socket.gethostname()
    assert row["processes"] == 2 and row["lease"] == 3.0
    assert row["stopped_at"] is None and row["stop_reason"] is None
    assert f"{row['id']} serving {db}" in pool.log()
    wait_until(lambda: the_row_of(db, pool.pid)["heartbeat_at"] > row["heartbeat_at"], 10,
               "a second heartbeat", pool.log)

    pool.send(signal.SIGTERM)
    assert pool.wait_exit() == 0, pool.log()
    stopped = the_row_of(db, pool.pid)
    assert stopped["id"] == row["id"]
    assert stopped["stopped_at"] is not None and stopped["stopped_at"] >= row["started_at"]
    assert stopped["stop_reason"] == "stopped"


# -- 10. SIGINT first is graceful too ----------------------------------------------------


def test_sigint_as_the_first_signal_is_graceful_too(q, db, tmp_path, start_pool):
    started, go = tmp_path / "started", tmp_path / "go"
    job = q.put(Job(started_then_wait, str(started), str(go)))
    pool = start_pool(db, "-p", "1", "--grace", "10s")
    wait_until(started.exists, WAIT, "the job to start", pool.log)

    pool.send(signal.SIGINT)  # a Ctrl-C: the pool's handler, not KeyboardInterrupt
    pool.wait_log("received SIGINT: stopping; running jobs get 10.0s to finish")
    pool.wait_log("stopping: 1 jobs running")
    late = q.put(Job(sample_jobs.add, 2, 3))  # put while the pool is stopping
    go.touch()

    assert pool.wait_exit() == 0, pool.log()
    job.refresh()
    assert job.status == litejobs.COMPLETED, pool.log()
    assert (job.result, job.attempts, job.interruptions) == (1, 1, 0)
    late.refresh()
    assert late.status == litejobs.PENDING and late.attempts == 0
    assert q.counts()["active"] == 0
    assert "Traceback" not in pool.log()
    assert the_row_of(db, pool.pid)["stop_reason"] == "stopped"


# -- 11. --queue and --max-jobs-per-child --------------------------------------------------


def test_queue_and_max_jobs_per_child_options(q, db, start_pool):
    mine = q.put_many([Job(sample_jobs.pid) for _ in range(6)], queue="a")
    other = q.put_many([Job(sample_jobs.pid) for _ in range(3)], queue="b", priority=10)

    pool = start_pool(db, "--burst", "-p", "1", "--queue", "a", "--max-jobs-per-child", "2")

    assert pool.wait_exit(timeout=60) == 0, pool.log()
    assert q.counts("a") == {"pending": 0, "waiting": 0, "active": 0, "completed": 6, "failed": 0,
                             "cancelled": 0}
    for job in other:
        job.refresh()
        assert (job.status, job.attempts) == (litejobs.PENDING, 0)
    runs_per_pid = collections.Counter(q.get(job.id).result for job in mine)
    assert pool.pid not in runs_per_pid  # children ran them, not the supervisor
    assert max(runs_per_pid.values()) <= 2, runs_per_pid
    assert len(runs_per_pid) >= 3, runs_per_pid
    assert the_row_of(db, pool.pid)["queues"] == '["a"]'


# -- 12. a dead pool on this host: its pid is gone -------------------------------------------


def test_a_dead_pool_on_this_host_is_recovered_by_its_missing_pid_not_its_lease(
        q, db, tmp_path, start_pool):
    markers = tmp_path / "markers"
    markers.mkdir()
    job = q.put(Job(sample_jobs.block_first_attempt, str(markers)))
    # Leases of 60 s: a recovery within the test's 20 s cannot be a lease's.
    pool_a = start_pool(db, "-p", "1", "--lease", "60s")
    wait_until(lambda: (markers / "started-1").exists()
               and (markers / "started-1").read_text(), WAIT, "attempt 1 to start",
               pool_a.log)
    wait_until(lambda: the_row_of(db, pool_a.pid), WAIT, "pool A's row", pool_a.log)
    wait_until_recorded_as_begun(q, job, pool_a)

    pool_a.send(signal.SIGKILL)
    assert pool_a.wait_exit() == -signal.SIGKILL  # reaped: no process has its pid now
    killed = time.monotonic()
    pool_b = start_pool(db, "-p", "1", "--lease", "60s")

    # Pool B checks on pool A once A has missed 3 heartbeats (about 6 s).
    wait_until(lambda: status_of(q, job) == litejobs.COMPLETED, 20,
               "pool B to recover the job and run it again", pool_b.log)
    assert time.monotonic() - killed < 20
    job.refresh()
    assert (job.attempts, job.interruptions) == (2, 1)
    assert job.result[0] == 2
    row_a = the_row_of(db, pool_a.pid)
    assert row_a["stopped_at"] is not None
    assert "its process is not running" in row_a["stop_reason"], row_a


# -- 13. children that cannot start ----------------------------------------------------------

UNSTARTABLE_POOL = '''\
"""A pool whose children cannot start: under spawn, each child runs this
script again as __mp_main__, and that dies at once."""
if __name__ == "__mp_main__":
    raise SystemExit("this child cannot start")

import sys

import litejobs

if __name__ == "__main__":
    try:
        litejobs.Worker(sys.argv[1], processes=1, burst=True).run()
    except litejobs.LitejobsError as exc:
        print(f"pool failed: {exc}", file=sys.stderr)
        sys.exit(1)
'''


def test_a_pool_whose_children_cannot_start_fails_instead_of_looping(q, db, tmp_path, cli_pools):
    job = q.put(Job(sample_jobs.add, 1, 2))
    script = tmp_path / "unstartable_pool.py"
    script.write_text(UNSTARTABLE_POOL)
    pool = cli_pools.run([sys.executable, str(script), db])
    # Restarts back off, 0.1 s doubling up to 5 s: about 12 s in all.
    assert pool.wait_exit(timeout=60) == 1, pool.log()

    log = pool.log()
    assert "this child cannot start" in log
    assert "pool failed: worker processes keep dying before they are ready" in log, log
    assert "8 in a row" in log
    job.refresh()
    assert (job.status, job.attempts) == (litejobs.PENDING, 0)  # never claimed
    row = the_row_of(db, pool.pid)
    assert row["stopped_at"] is not None
    assert row["stop_reason"].startswith("failed: LitejobsError: worker processes keep dying")


# -- deploys: a graceful stop is not the job's fault -------------------------------------


def test_four_deploys_hand_a_long_job_back_without_using_its_interruptions(
        q, db, tmp_path, start_pool):
    """A healthy job longer than --grace, its pool stopped by SIGTERM four
    times (four deploys): each run is handed back, not counted against its
    interruptions (3 allowed) nor its attempts, and the job completes."""
    runs, go = tmp_path / "runs", tmp_path / "go"
    job = q.put(Job(sample_jobs.count_runs_then_wait, str(runs), str(go)))
    for deploy in range(1, 5):
        pool = start_pool(db, "-p", "1", "--grace", "0.2s")
        wait_until(lambda: runs.exists() and len(runs.read_text().split()) == deploy, WAIT,
                   f"run {deploy} to start", pool.log)
        pool.send(signal.SIGTERM)
        assert pool.wait_exit() == 0, pool.log()
        assert f"attempt {deploy} was handed back" in pool.log()
        job.refresh()
        assert (job.status, job.interruptions, job.handbacks) == ("pending", 0, deploy)
    open(go, "w").close()
    pool = start_pool(db, "-p", "1", "--burst")
    assert pool.wait_exit() == 0, pool.log()
    assert job.wait(timeout=5) == 5
    assert (job.attempts, job.interruptions, job.handbacks) == (5, 0, 4)
    assert [entry["event"] for entry in job.history] == ["handed back"] * 4
    assert all("stopped before it ended" in entry["error"] for entry in job.history)
    shown = run_cli("show", db, str(job.id), cwd=tmp_path).stdout
    assert "attempts   1 of 1, interruptions 0 of 3, handed back 4" in shown, shown


# -- 14. a script without the __main__ guard ---------------------------------------------

UNGUARDED_SCRIPT = '''\
import sys

import litejobs

q = litejobs.Queue(sys.argv[1])
try:
    with q.worker(processes=2):
        print(q.put(litejobs.Job(pow, 2, 8)).wait(timeout=60))
except litejobs.LitejobsError as exc:
    print(f"pool failed: {exc}", file=sys.stderr)
    sys.exit(1)
'''


def test_a_script_that_starts_a_pool_without_the_main_guard_is_told_so_at_once(db, tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED_SCRIPT)
    done = subprocess.run([sys.executable, str(script), db], capture_output=True, text=True,
                          timeout=60, env=cli_env(), cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done.stderr
    # One line, naming the guard: no traceback, no restarts.
    assert done.stderr.splitlines() == [
        f"pool failed: worker processes cannot start: {litejobs._NO_MAIN_GUARD}"]
    assert 'if __name__ == "__main__":' in done.stderr
