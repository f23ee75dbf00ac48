"""Crash points: the runner of a job dies at each named point of the job's
life, and the job still ends as the Guarantees promise: re-run or done,
never lost, never stuck.

litejobs reads ``LITEJOBS_TEST_CRASH_POINT`` when it is imported.  The
process that reaches the point of that name dies there with ``os._exit(70)``,
as a kill -9 would leave it: no ``finally``, no rollback but SQLite's own.
With ``LITEJOBS_TEST_CRASH_ONCE`` naming a file, only the process that creates
the file dies; every other goes on.  The variables are set for the processes
that are to die, never for this one.

The seven points fall into four groups, and each group leaves the job in a
state of its own (`AFTER_CRASH`), from which another runner ends it
(`RECOVERED`):

- ``before-claim``, ``in-claim``: the claim never committed.  The job is
  still pending with no attempt counted, and the next runner takes it at
  once: it ends with one attempt and no interruption.
- ``after-claim``, ``in-job``: the claim committed, the job function never
  ran.  The job is active under a lease nobody renews.  Once the lease has
  run out the next runner records an interruption (a claim that never reached
  the function looks like any run that died) and runs it: two attempts, one
  interruption, one run of the function.
- ``after-job``, ``in-finish``: the function ran, its outcome never
  committed.  As above, but the function has run twice.
- ``after-finish``: the outcome committed.  There is nothing to recover.

A pool claims ahead of running, and records that a run began only once it
has gone on for a moment: a whole pool that dies at a supervisor's point
leaves a claim whose quick run it never recorded, which the next pool takes
back as not started rather than as an interruption
(`RECOVERED_FROM_A_DEAD_POOL`).

How the tests run the jobs:

- ``run_pending`` runs in a ``python -c`` subprocess that dies at the point;
  this process then recovers with ``run_pending(now=...)`` past the dead
  runner's lease (`DEFAULT_LEASE`, counted on the real clock, since a
  ``run_pending`` with no ``now`` claims on it); the plain-job test first
  checks that a ``run_pending`` on the real clock leaves the job alone.
- A pool is a ``python -m litejobs worker DB -p 1`` process in a session of
  its own.  At a supervisor's point (claims and finishes) the whole pool
  dies: its children must then exit by themselves, and a second pool,
  started without the variables, recovers the jobs once the dead pool's
  leases (1 s) have run out.  At a child's point (``in-job``, ``after-job``) one worker
  process dies: its pool records the interruption and runs the job again in
  a new worker process.
- Every job function appends a line per run to a run log (see
  ``crash_jobs``), with its tag, job id, attempt and pid, so the tests count
  and order the runs.
- Where a job's end sets the next step off (a composite's part, a job with a
  callback), the crash is armed by that job: the ``LITEJOBS_TEST_CRASH_ONCE``
  file exists from the start, which holds the point back, and the job
  removes it (``crash_jobs.arm_once``).  The next process to reach the point
  then dies: at that job's end, or at the start of the step it set off.
- Every wait polls against a deadline (``waiting.wait_until``); every pool is
  killed with its process group at teardown, and every subprocess has a
  timeout.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys

import pytest

import crash_jobs
import litejobs
from litejobs import ACTIVE, COMPLETED, FAILED, PENDING, WAITING, Job, parallel, serial
from waiting import WAIT, live_in_session, process_ended, wait_until

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS_DIR)
ENV = {name: value for name, value in os.environ.items()
       if not name.startswith("LITEJOBS_TEST_CRASH")}
ENV["PYTHONPATH"] = os.pathsep.join(
    [TESTS_DIR, ROOT] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
CRASH_STATUS = 70  # what _crash_point exits with
EXIT = 20.0  # seconds a pool gets to exit when it should

NEVER_CLAIMED = ("before-claim", "in-claim")  # the claim did not commit
CLAIMED_NEVER_RAN = ("after-claim", "in-job")  # committed; the function was not called
RAN_NO_OUTCOME = ("after-job", "in-finish")  # the function returned; no outcome committed
OUTCOME_COMMITTED = ("after-finish",)
POINTS = NEVER_CLAIMED + CLAIMED_NEVER_RAN + RAN_NO_OUTCOME + OUTCOME_COMMITTED
CHILD_POINTS = ("in-job", "after-job")  # in a pool, reached in a worker process
SUPERVISOR_POINTS = tuple(point for point in POINTS if point not in CHILD_POINTS)

# The crashed job, right after the crash: (status, attempts, interruptions,
# runs of its function).
AFTER_CRASH = {
    **{point: (PENDING, 0, 0, 0) for point in NEVER_CLAIMED},
    **{point: (ACTIVE, 1, 0, 0) for point in CLAIMED_NEVER_RAN},
    **{point: (ACTIVE, 1, 0, 1) for point in RAN_NO_OUTCOME},
    "after-finish": (COMPLETED, 1, 0, 1),
}
# The same job once another runner has ended it: (attempts, interruptions, runs).
RECOVERED = {
    **{point: (1, 0, 1) for point in NEVER_CLAIMED},
    **{point: (2, 1, 1) for point in CLAIMED_NEVER_RAN},
    **{point: (2, 1, 2) for point in RAN_NO_OUTCOME},
    "after-finish": (1, 0, 1),
}


# The same job once another pool has ended it, its own pool having died at a
# supervisor's point: (attempts, interruptions, claims taken back as not
# started, runs of its function).
RECOVERED_FROM_A_DEAD_POOL = {
    **{point: (1, 0, 0, 1) for point in NEVER_CLAIMED},
    "after-claim": (2, 0, 1, 1),
    "in-finish": (2, 0, 1, 2),
    "after-finish": (1, 0, 0, 1),
}


def test_every_crash_point_litejobs_has_is_covered_here():
    assert sorted(POINTS) == sorted(litejobs._CRASH_POINTS)
    assert litejobs._CRASH_POINT is None  # this process never dies at one


# -- helpers -----------------------------------------------------------------------------


def crash_env(point, once):
    return dict(ENV, LITEJOBS_TEST_CRASH_POINT=point, LITEJOBS_TEST_CRASH_ONCE=str(once))


RUN_PENDING = "import sys, litejobs; litejobs.Queue(sys.argv[1]).run_pending()"


def run_pending_until_the_crash(db, point, once):
    """``run_pending`` in a subprocess that dies at ``point``; return its pid."""
    proc = subprocess.Popen([sys.executable, "-c", RUN_PENDING, str(db)],
                            env=crash_env(point, once), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == CRASH_STATUS, f"exit status {proc.returncode}\n{out}{err}"
    assert os.path.exists(once)  # the process that died made it
    return proc.pid


def past_the_lease():
    """A clock for ``run_pending`` by which the lease of a runner that claimed
    just now, with the default lease, has run out."""
    return (datetime.datetime.now(datetime.timezone.utc)
            + datetime.timedelta(seconds=litejobs.DEFAULT_LEASE + 10))


def read_runs(log):
    try:
        with open(log) as handle:
            return [json.loads(line) for line in handle]
    except FileNotFoundError:
        return []


def runs_of(log, job_id):
    """The runs of one job, in order; each later run is a later attempt, in
    another process."""
    runs = [run for run in read_runs(log) if run["job"] == job_id]
    attempts = [run["attempt"] for run in runs]
    assert attempts == sorted(set(attempts)), runs
    assert len({run["pid"] for run in runs}) == len(runs), runs
    return runs


def state(job):
    job.refresh()
    return job.status, job.attempts, job.interruptions


def assert_settled(q):
    """Nothing left pending, waiting or active, and the file is sound."""
    counts = q.counts()
    assert (counts[PENDING], counts[WAITING], counts[ACTIVE]) == (0, 0, 0), counts
    with contextlib.closing(sqlite3.connect(q.path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


@pytest.fixture
def start_pool(cli_pools):
    """``start_pool(db, env, lease)``: a pool of one worker process
    (`conftest.CliPool`); every pool's process group is killed at teardown.

    A pool that is to die gets a lease of 1 s, so that its jobs are
    recovered soon after.  Any other gets 10 s, so that a slow machine never
    makes it lose a lease of its own and run a job once more than the test
    expects."""
    def start(db, env, lease):
        return cli_pools.start(db, "-p", "1", "--lease", lease, "--poll", "100ms",
                               "--grace", "5s", "--log-level", "debug", env=env)
    return start


def assert_pool_died_alone(pool):
    """The supervisor died at the point; its worker processes, no longer
    anyone's to stop, exit by themselves."""
    assert pool.wait_exit() == CRASH_STATUS, pool.log()
    children = pool.child_pids()
    assert children, pool.log()
    wait_until(lambda: all(process_ended(pid) for pid in children), 10,
               f"the dead pool's worker processes {children} to exit")
    if os.path.isdir("/proc"):
        wait_until(lambda: not live_in_session(pool.pid), 10,
                   "every process of the dead pool to exit",
                   lambda: f"still there: {live_in_session(pool.pid)}")


def lease_of_a_pool_dying_at(point):
    return "1s" if point in SUPERVISOR_POINTS else "10s"


def run_pools_through_the_crash(start_pool, db, point, once, done):
    """Start a pool that dies at ``point``; if the whole pool died, start
    another without the crash variables.  Wait until ``done()``, stop the
    live pool, and return the pools (the first, and the one that recovered)."""
    first = start_pool(db, crash_env(point, once), lease_of_a_pool_dying_at(point))
    if point in SUPERVISOR_POINTS:
        assert_pool_died_alone(first)
        recovering = start_pool(db, ENV, "10s")
    else:
        recovering = first
    wait_until(done, WAIT, "the jobs to end",
               lambda: f"first pool:\n{first.log()}\nrecovering pool:\n{recovering.log()}")
    recovering.stop()
    if point in CHILD_POINTS:
        assert f"exited with status {CRASH_STATUS} while running job" in first.log()
        assert first.proc.returncode == 0
    return first, recovering


# -- a plain job through run_pending -----------------------------------------------------


@pytest.mark.parametrize("point", POINTS)
def test_run_pending_dies_at_the_point_and_the_next_runner_ends_the_job(q, tmp_path, point):
    """The job is left as `AFTER_CRASH` says; the next runner ends it as
    `RECOVERED` says, once the dead runner's lease has run out (a job the
    claim never took is due at once)."""
    log, once = tmp_path / "runs.jsonl", tmp_path / "crash-once"
    job = q.put(Job(crash_jobs.step, str(log), "plain"))

    crashed_pid = run_pending_until_the_crash(q.path, point, once)

    status, attempts, interruptions, runs = AFTER_CRASH[point]
    assert state(job) == (status, attempts, interruptions)
    assert [run["pid"] for run in runs_of(log, job.id)] == [crashed_pid] * runs
    if status == ACTIVE:
        # The dead runner's lease holds until it runs out: nobody takes the job early.
        assert q.run_pending() == 0
        assert state(job) == (ACTIVE, 1, 0)
    assert q.run_pending(now=past_the_lease()) == (0 if status == COMPLETED else 1)

    attempts, interruptions, runs = RECOVERED[point]
    assert state(job) == (COMPLETED, attempts, interruptions)
    assert job.result == "plain"
    done = runs_of(log, job.id)
    assert len(done) == runs
    assert done[-1]["pid"] == (crashed_pid if point == "after-finish" else os.getpid())
    assert [entry["event"] for entry in job.history] == ["interrupted"] * interruptions
    assert_settled(q)


# -- what a crash counts: an attempt, an interruption ---------------------------------------


@pytest.mark.parametrize("point", NEVER_CLAIMED)
def test_dying_before_the_claim_commits_counts_no_attempt_and_no_interruption(
        q, tmp_path, point):
    """The claim's transaction rolled back, so the job was never claimed: not
    one attempt, not one interruption.  Even a job that allows no
    interruption at all then runs and completes."""
    log, once = tmp_path / "runs.jsonl", tmp_path / "crash-once"
    job = q.put(Job(crash_jobs.step, str(log), "plain"), max_interruptions=0)

    run_pending_until_the_crash(q.path, point, once)
    assert state(job) == (PENDING, 0, 0)
    assert job._row["lease_owner"] is None and job.started_at is None
    assert job.history == []

    assert q.run_pending() == 1  # due now: no lease to wait for
    assert state(job) == (COMPLETED, 1, 0)
    assert len(runs_of(log, job.id)) == 1
    assert_settled(q)


@pytest.mark.parametrize("point", CLAIMED_NEVER_RAN)
def test_dying_after_the_claim_commits_counts_an_interruption_though_the_job_never_ran(
        q, tmp_path, point):
    """Once the claim has committed, a runner that dies before calling the
    function cannot be told apart from one that died in it: the lease runs
    out and the attempt counts as an interruption.  So a job that allows no
    interruption fails with `Interrupted` without its function ever having
    run; with the default allowance it runs on the next attempt (see the
    run_pending test above)."""
    log, once = tmp_path / "runs.jsonl", tmp_path / "crash-once"
    job = q.put(Job(crash_jobs.step, str(log), "plain"), max_interruptions=0)

    run_pending_until_the_crash(q.path, point, once)
    assert state(job) == (ACTIVE, 1, 0)
    assert q.run_pending(now=past_the_lease()) == 0

    assert state(job) == (FAILED, 1, 1)
    assert job.error_type == "litejobs.Interrupted"
    assert "the lease of inline@" in job.error and "ran out" in job.error
    assert runs_of(log, job.id) == []
    assert_settled(q)


# -- a plain job through a pool ----------------------------------------------------------


@pytest.mark.parametrize("point", SUPERVISOR_POINTS)
def test_a_pool_dies_at_the_point_and_a_second_pool_ends_the_job(
        q, tmp_path, start_pool, point):
    """The supervisor dies (exit status 70) and its worker process exits by
    itself.  The job is left as after a ``run_pending`` crash; a second pool
    ends it, in a worker process of its own, as `RECOVERED` says."""
    log, once = tmp_path / "runs.jsonl", tmp_path / "crash-once"
    job = q.put(Job(crash_jobs.step, str(log), "plain"))

    first = start_pool(q.path, crash_env(point, once), "1s")
    assert_pool_died_alone(first)
    status, attempts, interruptions, runs = AFTER_CRASH[point]
    assert state(job) == (status, attempts, interruptions)
    assert [run["pid"] for run in runs_of(log, job.id)] == first.child_pids()[:1] * runs

    canary = q.put(Job(crash_jobs.step, str(log), "canary"))  # seen: the pool has claimed
    second = start_pool(q.path, ENV, "10s")
    wait_until(lambda: all(q.get(j.id).status == COMPLETED for j in (job, canary)), WAIT,
               "the second pool to end the jobs", second.log)
    second.stop()

    attempts, interruptions, not_started, runs = RECOVERED_FROM_A_DEAD_POOL[point]
    assert state(job) == (COMPLETED, attempts, interruptions)
    assert job._row["not_started"] == not_started
    assert job.result == "plain"
    done = runs_of(log, job.id)
    assert len(done) == runs
    if point != "after-finish":
        assert f":{second.pid}:" in job.ran_by
        assert done[-1]["pid"] in second.child_pids()
    assert_settled(q)


@pytest.mark.parametrize("point", CHILD_POINTS)
def test_a_worker_process_dies_at_the_point_and_its_pool_runs_the_job_again(
        q, tmp_path, start_pool, point):
    """Only the worker process dies; its supervisor sees it exit, records the
    interruption at once (no lease to wait for) and runs the job again in a
    new worker process, which the once-file lets live."""
    log, once = tmp_path / "runs.jsonl", tmp_path / "crash-once"
    job = q.put(Job(crash_jobs.step, str(log), "plain"))

    pool = start_pool(q.path, crash_env(point, once), "10s")
    wait_until(lambda: q.get(job.id).status == COMPLETED, WAIT, "the pool to end the job",
               pool.log)
    pool.stop()

    attempts, interruptions, runs = RECOVERED[point]
    assert state(job) == (COMPLETED, attempts, interruptions)
    assert job.result == "plain"
    assert f"exited with status {CRASH_STATUS} while running job {job.id}" in pool.log()
    children = pool.child_pids()
    assert len(children) == 2, pool.log()  # the one that died, and its replacement
    assert [run["pid"] for run in runs_of(log, job.id)] == children[-runs:]
    assert_settled(q)


# -- parallel: the postprocess runs once, after every part ---------------------------------
#
# A composite's postprocess is no job of its own: once the last part has
# ended, in the same transaction, the composite job itself becomes due, and
# running it runs the postprocess.  So "the postprocess" below is the
# composite's own row, and its attempts and interruptions are the
# postprocess's.


def put_parallel(q, log, arm=None):
    """Three parts and a postprocess; part 3 (the last to run) arms the crash
    if ``arm`` is given."""
    parts = [Job(crash_jobs.step, str(log), tag, arm=str(arm) if arm and tag == "part-3" else None)
             for tag in PARALLEL_TAGS]
    return q.put(parallel(*parts, postprocess=Job(crash_jobs.gather, str(log), "post")))


PARALLEL_TAGS = ("part-1", "part-2", "part-3")


def assert_postprocess_ran_once_after_every_part(log, composite, tags):
    """The composite completed with its postprocess's result; the postprocess
    ran once, after every part's runs, and saw every part completed, in
    order.  Returns the parts, refreshed."""
    parts = composite.children()
    assert [part._row["role"] for part in parts] == ["part"] * len(tags)
    seen = [[part.id, COMPLETED, tag] for part, tag in zip(parts, tags)]
    assert state(composite)[0] == COMPLETED
    assert composite.result == seen
    post_runs = runs_of(log, composite.id)
    assert [run["tag"] for run in post_runs] == ["post"], read_runs(log)
    assert post_runs[0]["parts"] == seen
    every = [run["tag"] for run in read_runs(log)]
    assert every[-1] == "post" and every.count("post") == 1, every
    for part in parts:
        part.refresh()
        assert composite.started_at >= part.finished_at, (part, composite)
    return parts


@pytest.mark.parametrize("where", ["first part", "last part"])
@pytest.mark.parametrize("point", POINTS)
def test_run_pending_dies_in_a_parallel_and_its_postprocess_runs_once(
        q, tmp_path, point, where):
    """Dying on the first part, or on the last: there, after the part's run
    (``after-job``, ``in-finish``, ``after-finish``) the crash falls on the
    end of the part that sets the postprocess off, and before a run, on the
    postprocess itself.  The postprocess runs once, given every part
    completed."""
    log, once = tmp_path / "runs.jsonl", tmp_path / "crash-once"
    if where == "last part":
        once.touch()  # held back until part 3 runs
        composite = put_parallel(q, log, arm=once)
    else:
        composite = put_parallel(q, log)
    parts = composite.children()

    run_pending_until_the_crash(q.path, point, once)

    if where == "first part":
        crashed = parts[0]
    elif point in RAN_NO_OUTCOME + OUTCOME_COMMITTED:
        crashed = parts[2]
    else:
        crashed = composite  # the last part's end, committed, made the postprocess due
    status, attempts, interruptions, runs = AFTER_CRASH[point]
    assert state(crashed) == (status, attempts, interruptions)
    assert len(runs_of(log, crashed.id)) == runs
    if crashed is not composite:
        due = where == "last part" and point == "after-finish"
        assert state(composite) == ((PENDING, 0, 0) if due else (WAITING, 0, 0))
    assert "post" not in [run["tag"] for run in read_runs(log)]

    q.run_pending(now=past_the_lease())

    parts = assert_postprocess_ran_once_after_every_part(log, composite, PARALLEL_TAGS)
    for job in parts + [composite]:
        attempts, interruptions, runs = RECOVERED[point] if job.id == crashed.id else (1, 0, 1)
        assert state(job) == (COMPLETED, attempts, interruptions), job
        assert len(runs_of(log, job.id)) == runs
    assert_settled(q)


@pytest.mark.parametrize("point", POINTS)
def test_a_pool_dies_in_a_parallel_and_its_postprocess_runs_once(
        q, tmp_path, start_pool, point):
    """In a pool the crash is armed by the last part.  The supervisor records
    several outcomes and claims in one transaction, so a crash may take
    other parts' outcomes with it, and they run again.  Either way each part
    runs at most twice, and the postprocess exactly once, after them all."""
    log, once = tmp_path / "runs.jsonl", tmp_path / "crash-once"
    once.touch()
    composite = put_parallel(q, log, arm=once)

    run_pools_through_the_crash(start_pool, q.path, point, once,
                                lambda: q.get(composite.id).status == COMPLETED)

    parts = assert_postprocess_ran_once_after_every_part(log, composite, PARALLEL_TAGS)
    for part in parts:
        assert 1 <= len(runs_of(log, part.id)) <= 2
    if point in RAN_NO_OUTCOME:
        assert len(runs_of(log, parts[2].id)) == 2  # its outcome never committed
    assert_settled(q)


# -- a callback: set off once, by the end that committed ---------------------------------


@pytest.mark.parametrize("point", POINTS)
def test_run_pending_dies_around_a_job_with_a_callback_and_the_callback_runs_once(
        q, tmp_path, point):
    """The job arms the crash, so it falls on the job's end (after its run) or
    on the callback's start.  The callback is set off in the transaction that
    records the end, so it runs once, with the job's result."""
    log, once = tmp_path / "runs.jsonl", tmp_path / "crash-once"
    once.touch()
    job = q.put(Job(crash_jobs.step, str(log), "main", arm=str(once)))
    callback = job.add_callback(Job(crash_jobs.note, str(log), "callback"))

    run_pending_until_the_crash(q.path, point, once)

    crashed = job if point in RAN_NO_OUTCOME + OUTCOME_COMMITTED else callback
    status, attempts, interruptions, runs = AFTER_CRASH[point]
    assert state(crashed) == (status, attempts, interruptions)
    if crashed is job and point != "after-finish":
        assert state(callback)[0] == WAITING  # not before the job has ended
    assert [run["tag"] for run in read_runs(log)] == ["main"] * (runs if crashed is job else 1)

    q.run_pending(now=past_the_lease())

    runs = [run["tag"] for run in read_runs(log)]
    assert runs == ["main"] * runs.count("main") + ["callback"], runs
    assert runs_of(log, callback.id)[0]["value"] == "main"
    for each in (job, callback):
        attempts, interruptions, runs = RECOVERED[point] if each is crashed else (1, 0, 1)
        assert state(each) == (COMPLETED, attempts, interruptions), each
        assert len(runs_of(log, each.id)) == runs
    assert callback.result == "main"
    assert_settled(q)


# -- a job that returns a job: the returned job is stored once -------------------------------


@pytest.mark.parametrize("point", POINTS)
def test_run_pending_dies_around_a_job_that_returns_a_job_and_one_returned_job_runs(
        q, tmp_path, point):
    """The returned job is stored in the transaction that records the run, so
    a crash before that commits, ``in-finish`` included, leaves none behind,
    and the re-run stores the one there is.  ``after-finish`` falls right
    after the parent's record, with the parent waiting on a returned job
    that is due."""
    log, once = tmp_path / "runs.jsonl", tmp_path / "crash-once"
    job = q.put(Job(crash_jobs.hand_on, str(log), "main"))

    run_pending_until_the_crash(q.path, point, once)

    returned = job.children()
    assert len(returned) == (0 if point != "after-finish" else 1)
    if point == "after-finish":
        crashed = None
        assert state(job) == (WAITING, 1, 0)
        assert state(returned[0]) == (PENDING, 0, 0)
    else:
        crashed = job
    if crashed is not None:
        status, attempts, interruptions, runs = AFTER_CRASH[point]
        assert state(crashed) == (status, attempts, interruptions)
        assert len(runs_of(log, crashed.id)) == runs

    q.run_pending(now=past_the_lease())

    returned = job.children()
    assert [child._row["role"] for child in returned] == ["result"]
    assert state(job)[0] == COMPLETED and job.result == "main-returned"
    tags = [run["tag"] for run in read_runs(log)]
    assert tags == (["main"] * tags.count("main")
                    + ["main-returned"] * tags.count("main-returned")), tags
    for each in (job, returned[0]):
        attempts, interruptions, runs = (RECOVERED[point] if crashed is not None
                                         and each.id == crashed.id else (1, 0, 1))
        assert state(each) == (COMPLETED, attempts, interruptions), each
        assert len(runs_of(log, each.id)) == runs
    assert_settled(q)


# -- serial: the next part starts once, in order ---------------------------------------------


def put_serial(q, log, arm):
    """Three parts a, b, c and a postprocess; a arms the crash."""
    parts = [Job(crash_jobs.step, str(log), "a", arm=str(arm)),
             Job(crash_jobs.step, str(log), "b"), Job(crash_jobs.step, str(log), "c")]
    return q.put(serial(*parts, postprocess=Job(crash_jobs.gather, str(log), "post")))


def assert_the_parts_ran_in_order(log, composite, a_runs):
    """a ran ``a_runs`` times (or any of them, given several), then b, c and
    the postprocess once each, each starting after the one before had ended."""
    parts = assert_postprocess_ran_once_after_every_part(log, composite, "abc")
    tags = [run["tag"] for run in read_runs(log)]
    assert tags.count("a") in ({a_runs} if isinstance(a_runs, int) else a_runs), tags
    assert tags == ["a"] * tags.count("a") + ["b", "c", "post"], tags
    for before, after in zip(parts, parts[1:] + [composite]):
        assert after.started_at >= before.finished_at, (before, after)
    return parts


@pytest.mark.parametrize("point", POINTS)
def test_run_pending_dies_stepping_through_a_serial_and_the_next_part_starts_once(
        q, tmp_path, point):
    """Part a arms the crash, so it falls on a's end (after its run) or on the
    start of b (before a run).  b starts once, after a has ended, then c,
    then the postprocess."""
    log, once = tmp_path / "runs.jsonl", tmp_path / "crash-once"
    once.touch()
    composite = put_serial(q, log, arm=once)
    a, b, c = composite.children()

    run_pending_until_the_crash(q.path, point, once)

    crashed = a if point in RAN_NO_OUTCOME + OUTCOME_COMMITTED else b
    status, attempts, interruptions, runs = AFTER_CRASH[point]
    assert state(crashed) == (status, attempts, interruptions)
    assert state(c) == (WAITING, 0, 0)
    if crashed is a and point != "after-finish":
        assert state(b) == (WAITING, 0, 0)  # not before a has ended
    assert [run["tag"] for run in read_runs(log)] == ["a"] * (runs if crashed is a else 1)

    q.run_pending(now=past_the_lease())

    parts = assert_the_parts_ran_in_order(
        log, composite, a_runs=RECOVERED[point][2] if crashed is a else 1)
    for job in parts + [composite]:
        attempts, interruptions, runs = RECOVERED[point] if job.id == crashed.id else (1, 0, 1)
        assert state(job) == (COMPLETED, attempts, interruptions), job
    assert_settled(q)


# How often a runs in a pool.  The supervisor writes outcomes and claims in
# one transaction, so a crash in a claim (before-claim, in-claim) may roll
# back a's outcome, or come before a's outcome reached the supervisor: a runs
# again, or not.  A crash after a claim that took b committed with a's
# outcome.  A worker process dying after a returned (after-job) loses a's
# outcome; one dying in b's start (in-job) does not.
POOL_SERIAL_A_RUNS = {"before-claim": (1, 2), "in-claim": (1, 2), "after-claim": 1,
                      "in-job": 1, "after-job": 2, "in-finish": 2, "after-finish": 1}


@pytest.mark.parametrize("point", POINTS)
def test_a_pool_dies_stepping_through_a_serial_and_the_next_part_starts_once(
        q, tmp_path, start_pool, point):
    """Part a arms the crash; the pool (or one of its worker processes) dies
    at the point, and a second pool takes over where the whole pool died.
    b starts once, after a has ended, then c, then the postprocess."""
    log, once = tmp_path / "runs.jsonl", tmp_path / "crash-once"
    once.touch()
    composite = put_serial(q, log, arm=once)

    run_pools_through_the_crash(start_pool, q.path, point, once,
                                lambda: q.get(composite.id).status == COMPLETED)

    assert_the_parts_ran_in_order(log, composite, a_runs=POOL_SERIAL_A_RUNS[point])
    assert_settled(q)
