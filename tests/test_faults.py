"""Faults tried from outside: a pool that starts or runs while another
connection holds the write lock, deadlines of jobs a dead pool had claimed,
data the pool's own bookkeeping chokes on, a job that logs without end, and
small ones (names SQLite cannot store, job ids running out, a supervisor
killed while its worker processes start).

Pools here are real ``python -m litejobs worker`` processes (`cli_pools`) or
`Worker` threads of this process, on a real database file.  Where a test
holds the write lock for a while, the hold is the fault under test, not a
wait for something: every wait for an outcome polls with a bound.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time

import pytest

import hostile_jobs
import litejobs
import sample_jobs
from litejobs import FAILED, PENDING, Job
from waiting import WAIT, live_in_session, process_state, wait_until


def hold_write_lock(path):
    """An application's connection holding the write lock of ``path``."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def runs(path):
    """The lines a job appended to ``path`` (one per run)."""
    try:
        return path.read_text().split()
    except FileNotFoundError:
        return []


def recorded_as_begun(q, job, runs_path):
    """Whether the job's run began (it wrote to ``runs_path``), and its pool
    has recorded that it did."""
    return bool(runs(runs_path)) and not q.get(job.id)._row.get("unstarted")


# -- 1. a pool that starts while the write lock is held ----------------------------------


def test_a_pool_started_while_the_write_lock_is_held_waits_for_it(q, cli_pools):
    job = q.put(Job(sample_jobs.add, 2, 3))
    app = hold_write_lock(q.path)
    try:
        pool = cli_pools.start(q.path, "--burst", "-p", "1")
        wait_until(lambda: "waits for the write lock to start" in pool.log(), WAIT,
                   "the pool to meet the lock", pool.log)
        time.sleep(1.5)  # the fault: the application holds its transaction on
        assert pool.proc.poll() is None, pool.log()
    finally:
        app.execute("COMMIT")
        app.close()
    assert pool.wait_exit(timeout=WAIT) == 0, pool.log()
    assert job.wait(timeout=5) == 5


def test_a_pool_whose_connection_drops_while_it_opens_and_registers_waits_and_starts(
        q, pool, monkeypatch, caplog):
    """A connection cut while a pool opens its database (a server restarting)
    is tried again a few times; one cut while it registers, for as long as it
    takes, as a running pool waits out an outage."""
    real_open, real_register = litejobs._open_storage, type(q._storage).register_worker
    opens, registers = [], []

    def flaky_open(*args, **options):
        opens.append(1)
        if len(opens) == 1:
            raise litejobs.DatabaseUnreachable("terminating connection (simulated)")
        return real_open(*args, **options)

    def flaky_register(self, *args, **options):
        registers.append(1)
        if len(registers) <= 3:
            raise litejobs.DatabaseUnreachable("terminating connection (simulated)")
        return real_register(self, *args, **options)

    monkeypatch.setattr(litejobs, "_open_storage", flaky_open)
    monkeypatch.setattr(type(q._storage), "register_worker", flaky_register)
    caplog.set_level("WARNING", logger="litejobs")
    pool()
    assert q.put(Job(sample_jobs.add, 2, 3)).wait(timeout=WAIT) == 5
    assert (len(opens), len(registers)) == (2, 4)
    assert sum("waits for its database to start" in r.getMessage() for r in caplog.records) == 3


def test_a_pool_that_cannot_open_its_database_gives_up_after_a_few_tries(q, monkeypatch):
    tries = []

    def unreachable(*args, **options):
        tries.append(1)
        raise litejobs.DatabaseUnreachable("connection refused (simulated)")

    monkeypatch.setattr(litejobs, "_open_storage", unreachable)
    with pytest.raises(litejobs.DatabaseUnreachable, match="refused"):
        litejobs.Worker(q.path)
    assert len(tries) == litejobs._OPEN_TRIES  # a wrong address is not waited on for ever


# -- 2. begin_by after a dead pool -------------------------------------------------------


def test_a_job_a_dead_pool_claimed_but_never_started_still_fails_its_deadline(
        q, tmp_path, cli_pools):
    ran = tmp_path / "ran"
    job = q.put(Job(sample_jobs.append_line, str(ran), "ran"), begin_by=1.0)
    # The supervisor dies right after its claim commits: the job is active,
    # claimed, and no run of it ever began.
    dead = cli_pools.start(q.path, "-p", "1", "--lease", "0.5s",
                           env=hostile_jobs.cli_env(LITEJOBS_TEST_CRASH_POINT="after-claim"))
    assert dead.wait_exit(timeout=WAIT) == 70, dead.log()
    assert job.refresh().status == litejobs.ACTIVE
    wait_until(lambda: time.time() > job.begin_by.timestamp() + 0.1, WAIT, "the deadline")

    assert q.run_pending() == 0
    job.refresh()
    assert (job.status, job.error_type) == (FAILED, "litejobs.DeadlineExceeded")
    assert (job.attempts, job.interruptions) == (1, 0)  # not blamed for a run it never had
    assert [entry["event"] for entry in job.history] == ["not started"]
    assert runs(ran) == []


def test_a_job_waiting_behind_a_slow_one_does_not_start_past_its_deadline(
        q, tmp_path, pool):
    worker = pool()
    q.put_many(Job(sample_jobs.add, i, 0) for i in range(300))  # jobs are quick: sent ahead
    wait_until(lambda: q.counts()["completed"] >= 300, WAIT, "the warm-up jobs")
    assert worker._supervisor.dispatcher.chunk()[0] > 1, \
        "the pool sends one job at a time: the test proves nothing"
    ran = tmp_path / "ran"
    # Handed to the one worker process behind the slow job, the late one is
    # either reached there past its deadline, or taken back from there (the
    # slow job holds it up) and found past its deadline at the next claim.
    slow, late = q.put_many([Job(sample_jobs.sleep_then, 1.5),
                             Job(sample_jobs.append_line, str(ran), "late")], begin_by=0.5)
    with pytest.raises(litejobs.JobFailed) as failed:
        late.wait(timeout=WAIT)
    assert failed.value.exc_type == "litejobs.DeadlineExceeded"
    assert slow.wait(timeout=WAIT) is None
    assert runs(ran) == []


def test_a_worker_process_does_not_start_a_job_it_reaches_past_its_deadline():
    now = 1_000_000.0  # the database's clock, which the worker process is given
    row = {"id": 7, "name": "app:job", "begin_by": now - 1, "attempts": 1, "not_started": 0}
    outcome = litejobs._too_late(row, now)
    assert outcome is not None and outcome.error_type == "litejobs.DeadlineExceeded"
    assert "its worker process reached it" in outcome.error
    assert litejobs._too_late({**row, "begin_by": now + 60}, now) is None
    # A run of it began before, and died: it goes on past the deadline.
    assert litejobs._too_late({**row, "attempts": 2}, now) is None
    assert litejobs._too_late({**row, "attempts": 2, "not_started": 1}, now) is not None


# -- 3. data the pool's own steps choke on -----------------------------------------------


def test_composites_nest_at_most_the_limit_and_put_says_so(q):
    with pytest.raises(ValueError, match=f"nest at most {litejobs._MAX_NESTING} deep"):
        q.put(sample_jobs.nested_parallel(1000))
    with pytest.raises(ValueError, match="nest at most"):
        q.put(sample_jobs.nested_parallel(litejobs._MAX_NESTING + 1))
    assert q.counts() == dict.fromkeys(litejobs.STATUSES, 0)  # nothing was written
    deepest = q.put(sample_jobs.nested_parallel(litejobs._MAX_NESTING))
    assert q.run_pending() == litejobs._MAX_NESTING + 1
    result = deepest.wait(timeout=5)
    for _ in range(litejobs._MAX_NESTING):
        [result] = result
    assert result == 2


def test_a_job_returning_a_composite_too_deep_fails_alone(q, pool):
    pool()
    deep = q.put(Job(sample_jobs.return_nested_parallel, 1000))
    fine = q.put(Job(sample_jobs.return_nested_parallel, 3))
    with pytest.raises(litejobs.JobFailed, match="nest at most"):
        deep.wait(timeout=WAIT)
    assert fine.wait(timeout=WAIT) == [[[2]]]


def test_an_end_whose_steps_raise_fails_its_job_alone_and_the_pool_goes_on(
        q, pool, monkeypatch):
    """Whatever litejobs' own steps after a job's end raise for that job (a
    RecursionError, say), that job fails with it; the pool and every other
    job go on."""
    real_after_end = litejobs._SQLiteStorage._after_end
    poison: set[int] = set()

    def after_end(self, conn, ended, now, counted=()):
        if any(row["id"] in poison for row in ended):
            raise RecursionError("maximum recursion depth exceeded (simulated)")
        return real_after_end(self, conn, ended, now, counted)

    monkeypatch.setattr(litejobs._SQLiteStorage, "_after_end", after_end)
    worker = pool()
    bad, *others = q.put_many([Job(sample_jobs.add, i, 100) for i in range(21)],
                              begin_after=0.5)
    poison.add(bad.id)
    assert [job.wait(timeout=WAIT) for job in others] == [i + 100 for i in range(1, 21)]
    with pytest.raises(litejobs.JobFailed) as failed:
        bad.wait(timeout=WAIT)
    assert failed.value.exc_type == "builtins.RecursionError"
    assert worker.alive and worker.crashes == []
    assert q.put(Job(sample_jobs.add, 1, 1)).wait(timeout=WAIT) == 2


def test_a_lease_whose_recovery_raises_fails_that_job_and_claims_go_on(q, now, monkeypatch):
    stale = q.put(Job(sample_jobs.add, 1, 1))
    q._storage.claim(owner="gone", queues=None, now=now.timestamp(),
                     expires=now.timestamp() - 1, limit=1)  # a lease that ran out
    fresh = q.put(Job(sample_jobs.add, 2, 2))
    real_interrupt = litejobs._SQLiteStorage._interrupt

    def interrupt(self, conn, job_id, *args):
        if job_id == stale.id:
            raise RecursionError("maximum recursion depth exceeded (simulated)")
        return real_interrupt(self, conn, job_id, *args)

    monkeypatch.setattr(litejobs._SQLiteStorage, "_interrupt", interrupt)
    assert q.run_pending(now=now) == 1
    assert fresh.wait(timeout=1) == 4
    stale.refresh()
    assert (stale.status, stale.error_type) == (FAILED, "builtins.RecursionError")


def test_an_error_message_sqlite_cannot_store_fails_only_its_job(q, pool):
    worker = pool()
    job = q.put(sample_jobs.raise_unstorable)
    with pytest.raises(litejobs.JobFailed) as failed:
        job.wait(timeout=WAIT)
    assert r"cannot read /data/caf\udce9.csv" in failed.value.traceback
    assert q.put(Job(sample_jobs.add, 1, 1)).wait(timeout=WAIT) == 2
    assert worker.alive


# -- 4. a pool kept from writing is not a dead pool --------------------------------------


def test_pools_kept_from_writing_by_a_long_transaction_keep_their_jobs(
        q, tmp_path, cli_pools):
    """Two pools run a job each, with leases of 1 s; an application holds the
    write lock for 3 s, so nobody renews a lease or heartbeats.  Once it
    commits, each pool renews its own leases: neither takes the other's jobs
    for a dead pool's, and no job is interrupted or run twice."""
    go = tmp_path / "go"
    paths = [tmp_path / f"runs-{n}" for n in range(2)]
    jobs = [q.put(Job(sample_jobs.count_runs_then_wait, str(path), str(go))) for path in paths]
    # A spare process each, so that each pool claims (and so looks at the
    # leases that ran out) as soon as it can write again.
    pools = [cli_pools.start(q.path, "-p", "2", "--lease", "1s") for _ in range(2)]
    wait_until(lambda: all(recorded_as_begun(q, job, path) for job, path in zip(jobs, paths)),
               WAIT, "both jobs to begin", lambda: "\n".join(p.log() for p in pools))
    app = hold_write_lock(q.path)
    time.sleep(3)  # the fault: every lease runs out while nobody can write
    app.execute("COMMIT")
    app.close()
    time.sleep(2)  # the pools write again: renewals, heartbeats, claims
    go.touch()
    assert [job.wait(timeout=WAIT) for job in jobs] == [1, 1]
    for job in jobs:
        assert (job.interruptions, job.history) == (0, [])
    assert all(pool["alive"] for pool in q.workers())
    assert all("interrupted" not in pool.log() for pool in pools)


def _write_lock_holder(path):
    """The pid holding the WAL write lock of ``path``, from /proc/locks; or None."""
    shm = os.stat(f"{path}-shm")
    device = f"{os.major(shm.st_dev):02x}:{os.minor(shm.st_dev):02x}:{shm.st_ino}"
    with open("/proc/locks") as handle:
        for line in handle:
            fields = line.split()
            if fields[1] != "->" and fields[3] == "WRITE" and fields[5] == device \
                    and fields[6] == "120":
                return int(fields[4])
    return None


def pause_inside_its_write_transaction(pool, path):
    """SIGSTOP ``pool``'s supervisor at a moment it holds the write lock:
    watch /proc/locks closely, stop it when it holds the lock, and let it go
    on at once, to try again, if it let go in between."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if _write_lock_holder(path) != pool.pid:
            continue
        os.kill(pool.pid, signal.SIGSTOP)
        wait_until(lambda: process_state(pool.pid) in ("T", "t"), WAIT, "the pool to stop")
        if _write_lock_holder(path) == pool.pid:
            return
        os.kill(pool.pid, signal.SIGCONT)
    pytest.fail(f"pool {pool.pid} was never caught holding the write lock:\n{pool.log()}")


@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="needs Linux's /proc/locks")
def test_a_pool_paused_inside_its_write_transaction_costs_no_other_pool_a_job(
        q, tmp_path, cli_pools):
    """A supervisor stopped (SIGSTOP) while it holds the write lock keeps every
    other pool from writing.  When it resumes, the others' runs go on: their
    leases ran out while nobody could write, but their pools are running."""
    go, path = tmp_path / "go", tmp_path / "runs"
    long_job = q.put(Job(sample_jobs.count_runs_then_wait, str(path), str(go)), queue="long")
    steady = cli_pools.start(q.path, "-p", "1", "--lease", "1s", "-q", "long")
    wait_until(lambda: recorded_as_begun(q, long_job, path), WAIT, "the long job to begin",
               steady.log)
    busy = cli_pools.start(q.path, "-p", "1", "--lease", "1s", "-q", "quick")
    q.put_many([Job(sample_jobs.add, i, i) for i in range(20_000)], queue="quick")
    for _ in range(3):
        pause_inside_its_write_transaction(busy, q.path)
        try:
            time.sleep(2.5)  # the fault: past every lease, nobody can write
        finally:
            os.kill(busy.pid, signal.SIGCONT)
        time.sleep(1)
    go.touch()
    assert long_job.wait(timeout=WAIT) == 1
    assert (long_job.interruptions, long_job.history) == (0, [])
    assert "interrupted" not in steady.log()
    assert all(pool["alive"] for pool in q.workers())


# -- 5. a job that logs without end -------------------------------------------------------


def test_jobs_logging_without_end_do_not_starve_their_pool(q, tmp_path, cli_pools):
    """Two jobs log as fast as they can for 4 s while a third runs on leases
    of 0.5 s: the pool keeps renewing them, and says how many records it
    dropped."""
    go = tmp_path / "go"
    floods = [q.put(Job(sample_jobs.log_flood, 4.0)) for _ in range(2)]
    steady = q.put(Job(sample_jobs.count_runs_then_wait, str(tmp_path / "runs"), str(go)))
    pool = cli_pools.start(q.path, "-p", "3", "--lease", "0.5s", "--log-format", "json")
    logged = sum(flood.wait(timeout=WAIT) for flood in floods)
    go.touch()
    assert steady.wait(timeout=WAIT) == 1
    assert (steady.interruptions, steady.history) == (0, [])
    log = pool.log()
    for flood in floods:
        assert f"log records of job {flood.id} were dropped" in log, log[-2000:]
    assert log.count("flood ") < logged
    assert "interrupted" not in log and "lease was lost" not in log


# -- 6. small ones ------------------------------------------------------------------------


@pytest.mark.parametrize("options", [{"queue": "q\udc80"}, {"key": "k\udc80"}])
def test_a_name_sqlite_cannot_store_is_refused_clearly(q, options):
    with pytest.raises(ValueError, match="not valid Unicode"):
        q.put(Job(sample_jobs.add, 1, 1), **options)
    with pytest.raises(ValueError, match="not valid Unicode"):
        q.put(litejobs.parallel(Job(sample_jobs.add, 1, 1)), **options)
    assert q.counts() == dict.fromkeys(litejobs.STATUSES, 0)


def test_job_ids_running_out_is_a_clear_error(q):
    q.put(Job(sample_jobs.add, 1, 1))
    conn = sqlite3.connect(q.path, isolation_level=None)
    conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'litejobs_jobs'",
                 (2 ** 63 - 1,))
    conn.close()
    for item in (Job(sample_jobs.add, 1, 1), litejobs.parallel(Job(sample_jobs.add, 1, 1))):
        with pytest.raises(litejobs.DatabaseError, match="no job ids left"):
            q.put(item)
    with pytest.raises(litejobs.DatabaseError, match="no job ids left"):
        q.put_many([Job(sample_jobs.add, 1, 1), Job(sample_jobs.add, 2, 2)])
    assert q.counts()[PENDING] == 1


SLOW_START = """\
import sys, time
if sys.argv[:1] == ["-c"]:  # a worker process being spawned: it starts slowly
    time.sleep(1.0)
"""


def test_worker_processes_of_a_supervisor_killed_as_they_start_exit_quietly(
        q, tmp_path, cli_pools):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_START)
    pool = cli_pools.start(q.path, "-p", "2", "--log-level", "debug",
                           env=hostile_jobs.cli_env(site))
    # Both started, and handed what they need to start up: then the kill.
    wait_until(lambda: "started child 2" in pool.log(), WAIT, "the worker processes",
               pool.log)
    os.kill(pool.pid, signal.SIGKILL)  # while its worker processes still start
    assert pool.wait_exit(timeout=WAIT) == -signal.SIGKILL
    wait_until(lambda: not live_in_session(pool.pid), WAIT,
               "the worker processes to find no supervisor and exit", pool.log)
    assert "Traceback" not in pool.log(), pool.log()
