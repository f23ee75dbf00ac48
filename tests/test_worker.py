"""The worker pool used in-process: `Worker(...).start()` and `Queue.worker`.

The supervisor runs in a thread of this test process; its children are real
processes (``spawn`` unless a test says otherwise) on a real database file.
Jobs are module-level functions, of ``sample_jobs`` or of this module, stored
by name: ``spawn`` children import them from the ``sys.path`` they inherit
from pytest.

Every pool a test starts goes through the ``pool`` fixture, which stops it at
teardown with no grace, so a failing test never leaks processes.  Nothing
sleeps to wait: tests poll an observable condition (a marker file a job
writes, a row, a counter) with `wait_until`, under a deadline.  Where a test
must let time pass on purpose (to outlive a lease), it says so.

Some tests need several jobs in one message to one child (a "batch"): a pool
sends jobs one at a time until it has seen that they are quick, so those tests
first run a few hundred quick jobs (`warm_up`).  Tests of a failing database
patch the storage class's ``finish``, which the supervisor, a thread of
this process, calls to record outcomes.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time

import pytest

import litejobs
import sample_jobs
from backends import change, outsider, row_of, write_lock_held
from waiting import (WAIT, assert_finished, child_pids, pid_alive, process_ended,
                     wait_for_pid, wait_until)
from litejobs import ACTIVE, CANCELLED, COMPLETED, FAILED, PENDING, Job



# -- jobs (resolved by name in the children) ------------------------------------


def log_run(log_path, seconds=0.0):
    """Append "job_id pid" with O_APPEND, then take ``seconds``: a job run
    twice shows as a duplicate line, a lost one as a missing line."""
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{litejobs.current_job().id} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    if seconds:
        time.sleep(seconds)


def mark_then_sleep(marker, seconds, value=None):
    """Write this process's pid to ``marker`` (so the test knows the job has
    really started in a child), then sleep ``seconds``."""
    with open(marker + ".tmp", "w") as handle:
        handle.write(str(os.getpid()))
    os.rename(marker + ".tmp", marker)  # appears with its content, never empty
    time.sleep(seconds)
    return value


def mark_then_wait(marker, go):
    """Write this process's pid to ``marker``, then block until the file
    ``go`` exists (the test creates it); return the attempt."""
    with open(marker + ".tmp", "w") as handle:
        handle.write(str(os.getpid()))
    os.rename(marker + ".tmp", marker)
    return sample_jobs.wait_for_file(go)


# -- helpers ----------------------------------------------------------------------








def live_children(worker):
    """The pids of the pool's children that are up, ready and alive."""
    return [child.process.pid for child in list(worker._supervisor.children.all)
            if child.ready and child.process.is_alive()]


def warm_up(q, worker, count=300):
    """Run ``count`` quick jobs, so that the pool has seen its jobs are quick
    and hands them out in chunks: from then on several jobs claimed together
    go to one child in one message (its "batch"), and their outcomes come back
    and are written together.  Returns ``count``."""
    q.put_many(Job(sample_jobs.add, i, 0) for i in range(count))
    wait_until(lambda: q.counts()["completed"] >= count, WAIT, "the warm-up jobs")
    chunk, _ = worker._supervisor.dispatcher.chunk()
    assert chunk > 1, "the pool still sends one job at a time: the test proves nothing"
    return count


def stop_in_thread(worker, grace):
    """Call ``worker.stop(grace)``, which blocks, in a thread; returns the
    thread and the list that will hold what it raised, if anything."""
    errors = []

    def stop():
        try:
            worker.stop(grace=grace, timeout=WAIT + grace)
        except Exception as exc:
            errors.append(exc)

    thread = threading.Thread(target=stop, daemon=True, name="test-stop")
    thread.start()
    return thread, errors


def expected_counts(**expected):
    """The queue's counts, all zero but those given."""
    return dict({status: 0 for status in litejobs.STATUSES}, **expected)


@pytest.fixture
def q(each_backend):
    """Every test here holds on each backend, but for those of SQLite's own
    behaviour (its write lock, its file), which take ``sqlite_q``."""
    return each_backend


# -- 1. many quick jobs ------------------------------------------------------------


def test_many_quick_jobs_all_complete_with_their_results(q, pool):
    count = 500
    jobs = q.put_many(Job(sample_jobs.add, i, i) for i in range(count))
    worker = pool(processes=2)

    wait_until(lambda: q.counts()["completed"] == count, WAIT, f"{count} completed jobs")

    assert q.counts() == expected_counts(completed=count)
    assert [job.wait(timeout=5) for job in jobs] == [2 * i for i in range(count)]
    assert all(job.attempts == 1 and job.interruptions == 0 for job in jobs)
    assert_finished(worker, completed=count)
    assert worker.crashes == []
    assert worker._supervisor.flight.jobs == {}


def test_queue_worker_is_a_started_pool_that_stops_at_exit(q):
    with q.worker(processes=1) as worker:
        assert worker.alive
        assert worker.path == q.path
        assert q.put(Job(sample_jobs.add, 2, 3)).wait(timeout=WAIT) == 5
    assert not worker.alive
    assert_finished(worker, completed=1)


# -- 2. two pools on one file -------------------------------------------------------


def test_two_pools_share_one_file_and_run_each_job_exactly_once(q, pool, tmp_path):
    log_path = str(tmp_path / "runs.log")
    count = 400
    # Both pools are up before any job exists, so both compete for all of
    # them; each job takes a few ms, so neither can drain the queue alone
    # before the other claims.
    first = pool(q, through_queue=True)
    second = pool(litejobs.Queue(q.path))
    assert first.id != second.id
    jobs = q.put_many(Job(log_run, log_path, 0.003) for _ in range(count))

    wait_until(lambda: q.counts()["completed"] == count, WAIT, f"{count} completed jobs")

    with open(log_path) as handle:
        lines = handle.read().splitlines()
    runs = collections.Counter(int(line.split()[0]) for line in lines)
    assert {job_id: n for job_id, n in runs.items() if n != 1} == {}, "jobs run twice"
    assert set(runs) == {job.id for job in jobs}, "jobs lost"
    assert len(lines) == count
    ran_in = {int(line.split()[1]) for line in lines}
    assert ran_in <= set(child_pids(first)) | set(child_pids(second))
    wait_until(lambda: first.finished[COMPLETED] + second.finished[COMPLETED] == count, WAIT,
               "the pools to count every outcome")
    assert first.finished[COMPLETED] > 0 and second.finished[COMPLETED] > 0
    assert first.crashes == second.crashes == []
    assert q.counts() == expected_counts(completed=count)


# -- 3. a child killed mid-job --------------------------------------------------------


def test_kill_9_of_a_child_interrupts_its_job_which_runs_again(q, pool, tmp_path):
    worker = pool(processes=2)
    job = q.put(Job(sample_jobs.block_first_attempt, str(tmp_path)))
    victim = wait_for_pid(str(tmp_path / "started-1"))
    assert victim in child_pids(worker)

    os.kill(victim, signal.SIGKILL)

    attempt, rerun_pid = job.wait(timeout=WAIT)
    assert attempt == 2
    assert rerun_pid != victim
    assert job.status == COMPLETED
    assert job.attempts == 2 and job.interruptions == 1
    assert len(worker.crashes) == 1
    assert f"pid {victim}" in worker.crashes[0]
    assert "SIGKILL" in worker.crashes[0]
    assert f"job {job.id}" in worker.crashes[0]
    # A replacement took the dead child's place.
    wait_until(lambda: len(live_children(worker)) == worker.processes, WAIT,
               "a replacement child")
    assert victim not in child_pids(worker)


def segfault_on_first_attempt():
    """Attempt 1 crashes the interpreter with SIGSEGV; later attempts return."""
    if litejobs.current_job().attempt == 1:
        import ctypes

        ctypes.string_at(0)  # reads address 0
    return os.getpid()


def test_a_segfault_in_a_job_is_an_interruption_and_the_job_runs_again(q, pool):
    worker = pool(processes=1)
    job = q.put(Job(segfault_on_first_attempt))
    assert job.wait(timeout=WAIT) in child_pids(worker)
    assert job.attempts == 2 and job.interruptions == 1
    assert len(worker.crashes) == 1 and "SIGSEGV" in worker.crashes[0]


# -- 4. hard timeout ---------------------------------------------------------------------


def test_hard_timeout_kills_the_run_and_fails_the_job(q, pool):
    worker = pool(processes=2)
    once = q.put(Job(sample_jobs.sleep_then, 60), timeout=0.5)
    twice = q.put(Job(sample_jobs.sleep_then, 60), timeout=0.5,
                  retry=litejobs.Retry(attempts=2, delay=0))
    started = time.monotonic()

    for job in (once, twice):
        with pytest.raises(litejobs.JobFailed) as failure:
            job.wait(timeout=WAIT)
        assert not isinstance(failure.value, litejobs.JobCancelled)
        assert failure.value.exc_type == "litejobs.JobTimeout"
        assert "timeout of 0.5s" in failure.value.traceback
        assert job.status == FAILED
        assert job.error_type == "litejobs.JobTimeout"
        assert job.interruptions == 0
    assert once.attempts == 1
    assert twice.attempts == 2
    assert time.monotonic() - started < 20  # killed, not slept out

    # The pool carries on, and a kill it decided on is no crash.
    assert q.put(Job(sample_jobs.add, 1, 2)).wait(timeout=WAIT) == 3
    assert worker.crashes == []
    assert worker.finished[FAILED] == 2


# -- 5. cancel of a running job --------------------------------------------------------------


def test_cancel_of_a_running_job_kills_its_process(q, pool, tmp_path):
    worker = pool()
    job = q.put(Job(sample_jobs.block_first_attempt, str(tmp_path)))
    litejobs.wait_for_start(job, timeout=WAIT)
    runner = wait_for_pid(str(tmp_path / "started-1"))
    assert runner in child_pids(worker)

    asked = time.monotonic()
    assert job.cancel() is True
    with pytest.raises(litejobs.JobCancelled):
        job.wait(timeout=10)
    assert time.monotonic() - asked < 5

    assert job.status == CANCELLED
    assert job.result is None
    assert not pid_alive(runner), "the cancelled job's process is still running"
    assert runner not in child_pids(worker)
    assert worker.crashes == []
    assert q.put(Job(sample_jobs.add, 4, 5)).wait(timeout=WAIT) == 9
    assert not (tmp_path / "started-2").exists()  # the cancelled job never ran again


# -- 6. poison jobs ---------------------------------------------------------------------------


def test_a_job_that_kills_its_process_every_time_fails_as_interrupted(q, pool):
    worker = pool()
    job = q.put(Job(sample_jobs.kill_myself), max_interruptions=2)

    with pytest.raises(litejobs.JobFailed) as failure:
        job.wait(timeout=WAIT)

    assert failure.value.exc_type == "litejobs.Interrupted"
    assert job.status == FAILED
    assert job.error_type == "litejobs.Interrupted"
    assert job.attempts == 3 and job.interruptions == 3
    assert "SIGKILL" in job.error
    # Each death was unexpected, so each is a crash; the pool survives them.
    assert len(worker.crashes) == 3
    assert all(f"job {job.id}" in line for line in worker.crashes)
    assert q.put(Job(sample_jobs.add, 1, 1)).wait(timeout=WAIT) == 2
    assert worker.alive


def test_os_exit_0_in_a_job_counts_as_an_interruption(q, pool):
    worker = pool()
    job = q.put(Job(sample_jobs.hard_exit, 0), max_interruptions=0)

    with pytest.raises(litejobs.JobFailed) as failure:
        job.wait(timeout=WAIT)

    assert failure.value.exc_type == "litejobs.Interrupted"
    assert job.attempts == 1 and job.interruptions == 1
    assert "exited with status 0" in job.error
    assert len(worker.crashes) == 1 and "exited with status 0" in worker.crashes[0]
    assert q.put(Job(sample_jobs.add, 2, 2)).wait(timeout=WAIT) == 4


# -- 7. a function missing at run time -----------------------------------------------------------


def test_a_function_missing_at_run_time_is_left_pending_not_failed(q, pool, tmp_path,
                                                                   monkeypatch, caplog):
    module_name = "litejobs_vanishing_mod"
    source = tmp_path / f"{module_name}.py"
    source.write_text("def f():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module_name, raising=False)
    module = __import__(module_name)
    job = q.put(Job(module.f))
    assert job.name == f"{module_name}:f"
    # Gone before any child exists: spawn children get this sys.path, but the
    # file is no longer there to import.
    source.unlink()
    shutil.rmtree(tmp_path / "__pycache__", ignore_errors=True)
    del sys.modules[module_name]

    worker = pool()
    wait_until(lambda: job.refresh().history, WAIT, "the pool to give the job back")
    assert (job.status, job.attempts, job.interruptions) == (PENDING, 0, 0)
    [entry] = job.history
    assert entry["event"] == "refused" and entry["by"] == worker.id
    assert entry["error"] == f"ModuleNotFoundError: No module named '{module_name}'"
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(f"cannot import {module_name}:f" in text and "Traceback" in text
               for text in logged), logged
    # The pool goes on with other work, and leaves that function alone for now.
    assert q.put(Job(sample_jobs.add, 3, 3)).wait(timeout=WAIT) == 6
    assert len(job.refresh().history) == 1 and job.status == PENDING
    assert worker.crashes == []
    assert_finished(worker, pending=1, completed=1)


# -- 8. recycling children ------------------------------------------------------------------------


def test_max_jobs_per_child_recycles_children(q, pool):
    worker = pool(processes=1, max_jobs_per_child=3)
    jobs = q.put_many(Job(sample_jobs.pid) for _ in range(10))

    pids = collections.Counter(job.wait(timeout=WAIT) for job in jobs)

    assert os.getpid() not in pids
    assert len(pids) >= 4, pids
    assert max(pids.values()) <= 3, pids
    assert worker.crashes == []
    assert_finished(worker, completed=10)


# -- 9. start methods -----------------------------------------------------------------------------

PROCESS_CLASSES = {"spawn": "SpawnProcess", "forkserver": "ForkServerProcess",
                   "fork": "ForkProcess"}


@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_start_methods(q, pool, method):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"{method} is not available on this platform")
    worker = pool(processes=1, start_method=method)
    assert all(type(child.process).__name__ == PROCESS_CLASSES[method]
               for child in worker._supervisor.children.all)
    jobs = q.put_many([Job(sample_jobs.pid), Job(sample_jobs.add, 20, 22),
                       Job(sample_jobs.pid)])

    results = [job.wait(timeout=WAIT) for job in jobs]

    assert results[1] == 42
    assert results[0] != os.getpid() and results[2] != os.getpid()
    assert {results[0], results[2]} <= set(child_pids(worker))
    assert worker.crashes == []


# -- 10. lease renewal ----------------------------------------------------------------------------


def test_the_supervisor_renews_the_lease_of_a_sleeping_job(q, pool, tmp_path):
    pool(processes=1, lease=1)
    marker = str(tmp_path / "started")
    job = q.put(Job(mark_then_sleep, marker, 2.5, "slept"))
    wait_for_pid(marker)

    # Play the thief: each claim on the file puts back active jobs whose lease
    # ran out.  Claiming from a queue with no jobs claims nothing else.  The
    # job sleeps 2.5 s, well past its 1 s lease, so only renewal keeps it.
    deadline = time.monotonic() + WAIT
    while job.refresh().status == ACTIVE:
        assert time.monotonic() < deadline, "the job never ended"
        assert q.run_pending(queues=["no-jobs-here"]) == 0
        time.sleep(0.05)  # paces the thief; nothing to wait for here
    assert job.wait(timeout=WAIT) == "slept"

    assert job.attempts == 1 and job.interruptions == 0


def test_lease_expiry_moves_forward_while_a_job_runs(q, pool, tmp_path):
    pool(processes=1, lease=1)
    job = q.put(Job(sample_jobs.block_first_attempt, str(tmp_path)))
    wait_for_pid(str(tmp_path / "started-1"))
    first = job.refresh()._row["lease_expires"]
    assert first is not None
    later = wait_until(lambda: (job.refresh()._row["lease_expires"] or 0) > first + 0.2,
                       10, "a renewed lease")
    assert later
    assert job.status == ACTIVE and job.interruptions == 0


# -- 11. queues and priority ---------------------------------------------------------------------


def test_a_pool_serves_only_its_queues(q, pool):
    other = q.put(Job(sample_jobs.add, 0, 0), queue="b", priority=10)
    mine = q.put_many([Job(sample_jobs.add, 1, 1), Job(sample_jobs.add, 2, 2)], queue="a")
    worker = pool(processes=1, queues=["a"])
    assert worker.queues == ["a"]

    assert [job.wait(timeout=WAIT) for job in mine] == [2, 4]
    # Another job after those: the pool has claimed again since, and still
    # not the higher-priority job of queue "b".
    assert q.put(Job(sample_jobs.add, 3, 3), queue="a").wait(timeout=WAIT) == 6

    other.refresh()
    assert other.status == PENDING
    assert other.attempts == 0
    assert q.counts("b") == expected_counts(pending=1)
    assert_finished(worker, completed=3)


def test_higher_priority_runs_first(q, pool, tmp_path):
    log_path = str(tmp_path / "order.log")
    priorities = [0, 5, 1, 9, 3, 5]
    jobs = [q.put(Job(sample_jobs.append_line, log_path, f"{p}-{i}"), priority=p)
            for i, p in enumerate(priorities)]
    pool(processes=1)

    for job in jobs:
        job.wait(timeout=WAIT)

    with open(log_path) as handle:
        order = handle.read().split()
    # Highest priority first; equal priorities in the order they were put.
    assert order == ["9-3", "5-1", "5-5", "3-4", "1-2", "0-0"]


# -- 12. graceful stop -----------------------------------------------------------------------------


def test_stop_with_grace_lets_a_running_job_finish(q, pool, tmp_path):
    worker = pool()
    marker = str(tmp_path / "started")
    job = q.put(Job(mark_then_sleep, marker, 0.5, "finished"))
    wait_for_pid(marker)

    worker.stop(grace=5)

    assert not worker.alive
    assert job.refresh().status == COMPLETED
    assert job.result == "finished"
    assert q.counts() == expected_counts(completed=1)
    row = row_of(q, "litejobs_workers", worker.id)
    assert row["stopped_at"] is not None


def test_stop_after_grace_kills_and_hands_back_the_running_job(q, pool, tmp_path):
    worker = pool()
    job = q.put(Job(sample_jobs.block_first_attempt, str(tmp_path)))
    runner = wait_for_pid(str(tmp_path / "started-1"))

    asked = time.monotonic()
    worker.stop(grace=0.2)
    assert time.monotonic() - asked < 10

    assert not worker.alive
    job.refresh()
    assert job.status == PENDING
    # A stop is not the job's fault: no interruption, and no attempt counted.
    assert (job.attempts, job.interruptions, job.handbacks) == (1, 0, 1)
    assert [entry["event"] for entry in job.history] == ["handed back"]
    assert job._row["lease_owner"] is None
    assert q.counts() == expected_counts(pending=1)
    assert not pid_alive(runner)
    assert worker.crashes == []


def test_stop_releases_jobs_claimed_but_not_started(q, pool, tmp_path):
    worker = pool()
    # Quick jobs first, so that the pool hands work out in chunks ahead of time.
    warmup = q.put_many(Job(sample_jobs.add, i, 0) for i in range(200))
    wait_until(lambda: q.counts()["completed"] == len(warmup), WAIT, "the warm-up jobs")
    # One blocking job, then quick ones: claimed with it, queued behind it.
    blocker, *queued = q.put_many(
        [Job(sample_jobs.block_first_attempt, str(tmp_path))]
        + [Job(sample_jobs.add, i, 1) for i in range(50)])
    wait_for_pid(str(tmp_path / "started-1"))
    assert q.counts()["active"] > 1, "no job claimed ahead: the test proves nothing"

    worker.stop(grace=0.2)

    assert q.counts() == expected_counts(pending=1 + len(queued), completed=len(warmup))
    blocker.refresh()
    assert (blocker.attempts, blocker.interruptions, blocker.handbacks) == (1, 0, 1)
    for job in queued:
        job.refresh()
        assert (job.status, job.attempts, job.interruptions) == (PENDING, 0, 0)
        assert job._row["lease_owner"] is None
    assert worker.crashes == []


# -- 13. the fence ------------------------------------------------------------------------------------


def steal(q, job_id, token, expires=None):
    """Give the job's row to another (imaginary) attempt, as a newer claim would."""
    assert change(q, "UPDATE litejobs_jobs SET lease_token = ?, lease_owner = 'thief',"
                     " lease_expires = coalesce(?, lease_expires)"
                     " WHERE id = ? AND status = 'active'", (token, expires, job_id)) == 1


def test_an_outcome_whose_lease_was_lost_is_discarded(q, pool, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="litejobs")
    # A long lease: nothing renews (and so nothing notices the theft) before
    # the job returns; the fence on the outcome is what must catch it.
    worker = pool(lease=30)
    release = str(tmp_path / "go")
    job = q.put(Job(sample_jobs.wait_for_file, release))
    litejobs.wait_for_start(job, timeout=WAIT)
    steal(q, job.id, "another-attempt", expires=time.time() + 600)

    open(release, "w").close()
    wait_until(lambda: worker.finished["lease lost"] == 1, WAIT, "the discarded outcome")

    row = row_of(q, "litejobs_jobs", job.id)
    assert row["status"] == ACTIVE
    assert row["lease_token"] == "another-attempt"
    assert row["lease_owner"] == "thief"
    assert row["result"] is None and row["error"] is None
    assert worker.finished[COMPLETED] == 0
    discarded = [r for r in caplog.records if r.name == "litejobs"
                 and r.levelno == logging.WARNING and "discarded" in r.getMessage()]
    assert len(discarded) == 1
    assert f"job {job.id}" in discarded[0].getMessage()
    assert worker.crashes == []
    # The pool goes on with other work.
    assert q.put(Job(sample_jobs.add, 5, 5)).wait(timeout=WAIT) == 10


def test_a_lease_lost_on_renewal_stops_the_run(q, pool, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="litejobs")
    worker = pool(lease=1)  # renewed every 1/3 s: the theft is noticed at once
    job = q.put(Job(sample_jobs.block_first_attempt, str(tmp_path)))
    runner = wait_for_pid(str(tmp_path / "started-1"))
    steal(q, job.id, "another-attempt", expires=time.time() + 600)

    wait_until(lambda: not pid_alive(runner), 10, "the run that lost its lease to stop")

    wait_until(lambda: len(live_children(worker)) == 1, WAIT, "a replacement child")
    row = row_of(q, "litejobs_jobs", job.id)
    assert (row["status"], row["lease_token"], row["lease_owner"]) == (
        ACTIVE, "another-attempt", "thief")
    assert row["interruptions"] == 0  # the row is the other attempt's: untouched
    assert worker.crashes == []
    assert any("lease was lost" in r.getMessage() for r in caplog.records)
    assert q.put(Job(sample_jobs.add, 6, 6)).wait(timeout=WAIT) == 12


# -- 14. retries ------------------------------------------------------------------------------------


def test_retry_through_the_pool(q, pool):
    worker = pool()
    job = q.put(Job(sample_jobs.flaky, 2), retry=litejobs.Retry(attempts=3, delay=0))

    assert job.wait(timeout=WAIT) == 3

    assert job.attempts == 3 and job.interruptions == 0
    assert_finished(worker, pending=2, completed=1)
    assert worker.crashes == []


# -- 15. the worker row --------------------------------------------------------------------------------


def test_the_pool_registers_and_heartbeats_in_the_workers_table(q, pool):
    worker = pool(processes=2, lease=1.5, queues=["a", "b"])  # heartbeat every 0.5 s
    row = row_of(q, "litejobs_workers", worker.id)
    assert row is not None
    assert row["pid"] == os.getpid()
    assert row["processes"] == 2
    assert row["lease"] == 1.5
    assert row["queues"] == '["a", "b"]'
    assert row["stopped_at"] is None and row["stop_reason"] is None
    assert worker.id.startswith("pool@")

    first = row["heartbeat_at"]
    wait_until(lambda: row_of(q, "litejobs_workers", worker.id)["heartbeat_at"] > first, 10,
               "a second heartbeat")

    worker.stop(grace=1)
    row = row_of(q, "litejobs_workers", worker.id)
    assert row["stopped_at"] is not None
    assert row["stopped_at"] >= row["heartbeat_at"]
    assert row["stop_reason"] == "stopped"


# -- 16. bad arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "error"), [
    ({"processes": 0}, ValueError),
    ({"processes": -1}, ValueError),
    ({"processes": "2"}, TypeError),
    ({"lease": -1}, ValueError),
    ({"lease": 0.01}, ValueError),
    ({"poll": 0}, ValueError),
    ({"grace": -1}, ValueError),
    ({"queues": []}, ValueError),
    ({"queues": ["a", ""]}, ValueError),
    ({"max_jobs_per_child": 0}, ValueError),
    ({"start_method": "bogus"}, ValueError),
])
def test_bad_arguments_are_refused(q, options, error):
    with pytest.raises(error):
        litejobs.Worker(q.path, **options)
    assert q.counts() == expected_counts()


def test_a_pool_on_a_missing_file_with_create_false(tmp_path):
    missing = tmp_path / "missing.db"
    with pytest.raises(litejobs.DatabaseError):
        litejobs.Worker(missing, processes=1, create=False)
    assert not missing.exists()


# -- 17. pools one after another in one process ---------------------------------------------


def test_a_second_pool_starts_and_runs_jobs_after_the_first_stopped(q, pool):
    """The pattern a script uses twice: ``with q.worker(): ...`` then again."""
    with q.worker(processes=1) as first:
        assert q.put(Job(sample_jobs.add, 1, 1)).wait(timeout=WAIT) == 2
    assert not first.alive

    second = pool(q, through_queue=True)
    assert q.put(Job(sample_jobs.add, 2, 2)).wait(timeout=WAIT) == 4
    second.stop(grace=1)

    # Every connection, old or new, in this process or not, sees both jobs.
    with outsider(q) as conn:
        assert conn.execute("SELECT count(*) FROM litejobs_jobs"
                            " WHERE status = 'completed'").fetchone() == (2,)
    assert q.counts() == expected_counts(completed=2)


# -- 18. jobs sent to one child together ----------------------------------------------------
#
# Once warmed up (see `warm_up`), a pool sends a child several jobs in one
# message.  The child publishes the job it runs in shared memory, so the
# supervisor knows which of them is running, whatever order outcomes come in.


def test_a_poison_job_is_blamed_not_the_quick_jobs_sent_before_it(q, pool, tmp_path):
    worker = pool(processes=1)
    warm_up(q, worker)
    runs = tmp_path / "runs"
    # One put_many, so the six are claimed together and sent to the one child
    # in one batch: it runs the quick ones (its outcomes still held, a few ms)
    # and then dies on the poison job.
    *quick, poison = q.put_many([Job(sample_jobs.append_line, runs, f"quick {i}")
                                 for i in range(5)]
                                + [Job(sample_jobs.kill_myself)], max_interruptions=2)

    with pytest.raises(litejobs.JobFailed) as failure:
        poison.wait(timeout=WAIT)

    assert failure.value.exc_type == "litejobs.Interrupted"
    assert (poison.status, poison.attempts, poison.interruptions) == (FAILED, 3, 3)
    assert [job.wait(timeout=WAIT) for job in quick] == [f"quick {i}" for i in range(5)]
    ran = runs.read_text().splitlines()
    for i, job in enumerate(quick):
        # An outcome that died with the child is a run all the same: it
        # counts as an attempt, and the history says so; but the poison job
        # is blamed with the interruptions, not these.
        assert (job.status, job.interruptions) == (COMPLETED, 0)
        assert ran.count(f"quick {i}") == job.attempts, (ran, job)
        assert [entry["event"] for entry in job.history] == \
            ["outcome lost"] * (job.attempts - 1)
    assert len(worker.crashes) == 3, worker.crashes
    assert all(f"while running job {poison.id} (" in line for line in worker.crashes), \
        worker.crashes


def test_a_run_whose_outcome_died_with_its_process_counts_as_an_attempt(q, pool, tmp_path):
    """A job that ran, but whose outcome was still held by its process when a
    later job killed it, runs again as the next attempt: never twice as the
    same attempt, unrecorded."""
    worker = pool(processes=1)
    warm_up(q, worker)
    runs = tmp_path / "runs"
    with q.transaction():
        ran = q.put(Job(sample_jobs.append_line, runs, "ran"))
        killer = q.put(Job(sample_jobs.kill_myself), max_interruptions=0)

    assert ran.wait(timeout=WAIT) == "ran"
    with pytest.raises(litejobs.JobFailed):
        killer.wait(timeout=WAIT)
    assert runs.read_text().splitlines().count("ran") == ran.attempts
    assert ran.interruptions == 0
    assert [(entry["event"], entry["attempt"]) for entry in ran.history] == \
        [("outcome lost", attempt) for attempt in range(1, ran.attempts)]


def test_a_quick_result_is_not_held_behind_a_slow_job_of_the_same_batch(q, pool):
    worker = pool(processes=1)
    warm_up(q, worker)
    quick, slow = q.put_many([Job(sample_jobs.add, 20, 22),
                              Job(sample_jobs.sleep_then, 6, "slow")])

    # The child finishes the quick job first, then starts the slow one: the
    # quick result must reach the database well before the slow job's 6 s.
    assert quick.wait(timeout=3) == 42
    assert slow.refresh().status == ACTIVE
    assert (quick.attempts, quick.interruptions) == (1, 0)

    worker.stop(grace=0)
    assert slow.refresh().status == PENDING
    assert worker.crashes == []


@pytest.fixture
def no_stealing(monkeypatch):
    """Jobs queued in a worker process behind a running one stay there: a pool
    asks them back after `_STEAL_AFTER` (0.1 s), which a test waiting to see
    them queued could miss on a loaded machine."""
    monkeypatch.setattr(litejobs, "_STEAL_AFTER", 3600.0)


def test_cancel_of_a_job_queued_behind_a_running_one_takes_effect_at_once(q, pool, tmp_path,
                                                                          no_stealing):
    worker = pool(processes=1)
    warm_up(q, worker)
    marker, go = str(tmp_path / "started"), str(tmp_path / "go")
    blocker, victim = q.put_many([Job(mark_then_wait, marker, go),
                                  Job(sample_jobs.add, 1, 1)])
    try:
        wait_for_pid(marker)
        # Claimed and sent to the child with the blocker: queued in the child.
        wait_until(lambda: victim.refresh().status == ACTIVE, WAIT, "the victim's claim")

        assert victim.cancel() is True
        # The child's reader thread drops it from its queue at once, while
        # the blocker runs on; the supervisor checks for cancels every 0.5 s.
        wait_until(lambda: victim.refresh().status == CANCELLED, 3, "the victim's cancel")
        assert blocker.refresh().status == ACTIVE
    finally:
        open(go, "w").close()

    assert blocker.wait(timeout=WAIT) == 1
    assert victim.refresh().status == CANCELLED
    assert victim.attempts == 0 and victim.result is None  # it never ran
    assert worker.crashes == []


# -- 19. stopping, further --------------------------------------------------------------------


def test_a_graceful_stop_releases_queued_jobs_at_once_and_waits_for_the_running_one(
        q, pool, tmp_path, no_stealing):
    worker = pool(processes=1)
    warmed = warm_up(q, worker)
    marker, go = str(tmp_path / "started"), str(tmp_path / "go")
    blocker, *queued = q.put_many([Job(mark_then_wait, marker, go)]
                                  + [Job(sample_jobs.add, i, 1) for i in range(5)])
    try:
        wait_for_pid(marker)
        wait_until(lambda: q.counts()["active"] == 6, WAIT, "all six jobs claimed")

        stopper, errors = stop_in_thread(worker, grace=30)
        # Within the 30 s grace, the jobs queued behind the blocker go back
        # now, not when the blocker ends: another pool may run them meanwhile.
        wait_until(lambda: all(job.refresh().status == PENDING for job in queued), 3,
                   "the queued jobs to be released")
        assert blocker.refresh().status == ACTIVE
        assert stopper.is_alive()
        for job in queued:
            assert (job.attempts, job.interruptions) == (0, 0)
            assert job._row["lease_owner"] is None
    finally:
        open(go, "w").close()

    stopper.join(timeout=WAIT)
    assert not stopper.is_alive() and errors == []
    assert not worker.alive
    blocker.refresh()
    assert (blocker.status, blocker.result, blocker.interruptions) == (COMPLETED, 1, 0)
    assert q.counts() == expected_counts(completed=warmed + 1, pending=5)
    assert worker.crashes == []


def test_a_second_stop_with_a_shorter_grace_wins(q, pool, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="litejobs")
    worker = pool(processes=1)
    marker = str(tmp_path / "started")
    job = q.put(Job(mark_then_sleep, marker, 60))
    runner = wait_for_pid(marker)

    first, errors = stop_in_thread(worker, grace=30)
    wait_until(lambda: any("stopping: 1 jobs running, 30s grace" in record.getMessage()
                           for record in list(caplog.records)), WAIT,
               "the first stop to begin its 30 s grace")
    asked = time.monotonic()
    worker.stop(grace=0, timeout=10)  # raises if the pool is still waiting out the 30 s

    assert time.monotonic() - asked < 10
    assert not worker.alive
    first.join(timeout=10)
    assert not first.is_alive() and errors == []
    job.refresh()
    assert (job.status, job.attempts, job.interruptions, job.handbacks) == (PENDING, 1, 0, 1)
    assert process_ended(runner)
    assert worker.crashes == []


# -- 20. a failing or busy database ---------------------------------------------------------------


def test_an_outcome_that_cannot_be_written_fails_its_job_not_the_batch(q, pool, monkeypatch):
    worker = pool(processes=1)
    warmed = warm_up(q, worker)
    real_finish = type(q._storage).finish

    def finish(self, job_id, token, *, result=None, **options):
        # The supervisor runs in a thread of this process: it uses this.
        if isinstance(result, bytes) and len(result) > 100_000:
            raise litejobs.DatabaseError("disk I/O error (simulated)")
        return real_finish(self, job_id, token, result=result, **options)

    monkeypatch.setattr(type(q._storage), "finish", finish)
    # Claimed together, run by one child in one batch, so the big result is
    # written in the same transaction as (some of) the quick ones.
    *quick, big = q.put_many([Job(sample_jobs.add, i, 1) for i in range(20)]
                             + [Job(sample_jobs.big_result, 200_000)])

    with pytest.raises(litejobs.JobFailed) as failure:
        big.wait(timeout=WAIT)

    assert failure.value.exc_type == "litejobs.LitejobsError"
    assert big.error_type == "litejobs.LitejobsError"
    assert "could not be stored" in big.error
    assert "disk I/O error (simulated)" in big.error
    assert (big.attempts, big.interruptions) == (1, 0)
    assert [job.wait(timeout=WAIT) for job in quick] == [i + 1 for i in range(20)]
    assert all(job.attempts == 1 for job in quick)
    assert worker.dropped == 0
    assert_finished(worker, completed=warmed + 20, failed=1)
    assert q.counts() == expected_counts(completed=warmed + 20, failed=1)


def test_a_busy_lock_while_writing_one_by_one_keeps_good_outcomes_for_later(
        q, pool, monkeypatch):
    """After a batch fails on one bad record, the rest are written alone; a
    lock held by another connection then must not turn a good result into a
    failure: it is kept and written once the lock is free."""
    worker = pool(processes=1)
    warmed = warm_up(q, worker)
    real_finish = type(q._storage).finish
    calls = collections.Counter()
    # Due in a second, so both are claimed, run and recorded together.
    good, bad = q.put_many([Job(sample_jobs.add, 2, 3), Job(sample_jobs.add, 0, 0)],
                           begin_after=1.0)

    def finish(self, job_id, token, **options):
        calls[job_id] += 1
        if job_id == bad.id and options["status"] == COMPLETED:
            raise litejobs.DatabaseError("disk I/O error (simulated)")
        if job_id == good.id and calls[job_id] == 2:  # written alone, the lock is busy
            raise litejobs.DatabaseBusy("database is locked (simulated)")
        return real_finish(self, job_id, token, **options)

    monkeypatch.setattr(type(q._storage), "finish", finish)

    assert good.wait(timeout=WAIT) == 5
    with pytest.raises(litejobs.JobFailed):
        bad.wait(timeout=WAIT)
    assert "could not be stored" in bad.error
    assert calls[good.id] >= 3  # in the batch, alone while busy, then again
    assert (good.attempts, good.interruptions) == (1, 0)
    assert worker.dropped == 0
    assert_finished(worker, completed=warmed + 1, failed=1)


def test_a_record_that_cannot_be_written_at_all_is_dropped_and_its_job_runs_again(
        q, pool, monkeypatch):
    worker = pool(processes=1, lease=1)  # a dropped job comes back after 1 s
    warmed = warm_up(q, worker)
    real_finish = type(q._storage).finish
    failing = set()  # ids of jobs whose every finish() fails, result or failure alike

    def finish(self, job_id, token, **options):
        if job_id in failing:
            raise litejobs.DatabaseError("disk I/O error (simulated)")
        return real_finish(self, job_id, token, **options)

    monkeypatch.setattr(type(q._storage), "finish", finish)
    # Due in a second, so that the test knows the target's id before it runs.
    jobs = q.put_many([Job(sample_jobs.add, i, 1000) for i in range(20)], begin_after=1.0)
    target = jobs[7]
    failing.add(target.id)

    wait_until(lambda: worker.dropped >= 1, WAIT, "the target's record to be dropped")
    assert target.refresh().status == ACTIVE  # nothing was written about it
    failing.clear()  # the database works again

    assert target.wait(timeout=WAIT) == 1007
    # Its lease ran out; the next claim took it back and ran it.  The pool had
    # not recorded that its run began (it was quick, and nothing could be
    # written): it is not blamed with an interruption, nor is the run counted.
    assert (target.attempts, target.interruptions, target._row["not_started"]) == (2, 0, 1)
    assert [entry["event"] for entry in target.history] == ["not started"]
    assert worker.dropped == 1
    others = [job for job in jobs if job is not target]
    assert [job.wait(timeout=WAIT) for job in others] == [
        i + 1000 for i in range(20) if i != 7]
    assert all((job.attempts, job.interruptions) == (1, 0) for job in others)
    assert q.counts() == expected_counts(completed=warmed + 20)
    assert worker.crashes == []


def test_a_timeout_is_enforced_while_another_connection_holds_the_write_lock(
        q, pool, tmp_path):
    # Lease 6 s: heartbeats and renewals, which write, come every 2 s.
    worker = pool(processes=1, lease=6)
    marker = str(tmp_path / "started")
    job = q.put(Job(mark_then_sleep, marker, 60), timeout=3)
    runner = wait_for_pid(marker)

    with write_lock_held(q):
        # Before the job's 3 s are up, the pool's next heartbeat comes due
        # and finds the database locked.  The kill must come anyway.
        wait_until(lambda: process_ended(runner), 8,
                   "the timed-out job's process to be killed")
        # The failure cannot have been written: the lock is still held.
        assert job.refresh().status == ACTIVE

    with pytest.raises(litejobs.JobFailed) as failure:
        job.wait(timeout=WAIT)
    assert failure.value.exc_type == "litejobs.JobTimeout"
    assert (job.status, job.attempts, job.interruptions) == (FAILED, 1, 0)
    assert worker.crashes == []


# -- 21. defaults ----------------------------------------------------------------------------------


def test_the_default_number_of_processes_is_the_cpu_count(q, monkeypatch):
    assert litejobs.Worker(q.path).processes == os.cpu_count()
    # Not a constant that happens to match this machine:
    monkeypatch.setattr(os, "cpu_count", lambda: 7)
    assert litejobs.Worker(q.path).processes == 7
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # "undeterminable"
    assert litejobs.Worker(q.path).processes == 1


def test_a_timed_job_is_killed_even_when_it_starts_while_the_pool_waits(q, pool):
    """A timed job tells the supervisor it started, so its timeout is counted
    from then and not from the supervisor's next wake-up (up to 0.5 s later,
    which let a 0.1 s timeout be overrun by a job that then completed)."""
    pool(processes=1)
    jobs = [q.put(Job(sample_jobs.sleep_then, 0.6, "overran"), timeout=0.1)
            for _ in range(4)]
    for job in jobs:
        with pytest.raises(litejobs.JobFailed):
            job.wait(timeout=WAIT)
        assert job.error_type == "litejobs.JobTimeout"


def test_a_busy_database_on_a_read_does_not_stop_the_pool(q, pool, monkeypatch):
    """SQLite readers can get SQLITE_BUSY (during WAL recovery); the
    supervisor's reads then look again later, as its writes do."""
    real = type(q._storage).data_version
    calls = collections.Counter()

    def data_version(self):
        calls["all"] += 1
        if calls["all"] in (2, 3):
            raise litejobs.DatabaseBusy("database is locked (simulated)")
        return real(self)

    monkeypatch.setattr(type(q._storage), "data_version", data_version)
    worker = pool(processes=1)
    wait_until(lambda: calls["all"] >= 5, WAIT, "the idle pool to check for changes")
    assert worker.alive
    assert q.put(Job(sample_jobs.add, 3, 4)).wait(timeout=WAIT) == 7


# -- no job waits behind a slow one -------------------------------------------------------


def test_quick_jobs_handed_out_behind_a_slow_one_are_taken_back_for_a_free_process(
        q, pool, tmp_path):
    worker = pool(processes=2)
    warm_up(q, worker)
    gate = tmp_path / "gate"
    around = q.put_many([Job(sample_jobs.add, i, 1) for i in range(400)]
                        + [Job(sample_jobs.wait_for_file, str(gate))]
                        + [Job(sample_jobs.add, i, 2) for i in range(400)])
    slow = around[400]
    quick_ones = around[:400] + around[401:]
    # Every quick job ends while the slow one still runs: none waits behind it.
    wait_until(lambda: all(job.refresh().status == COMPLETED for job in quick_ones), WAIT,
               "the quick jobs")
    assert slow.refresh().status == "active"
    gate.write_text("go")
    assert slow.wait(timeout=WAIT) == 1
    assert all(job.attempts == 1 for job in quick_ones)  # taken back unstarted: no attempt used
    assert all(job.history is None or "interrupted" not in job.history for job in quick_ones)


def test_a_stopped_process_is_sent_no_more_work_and_its_jobs_run_once_it_goes_on(
        q, pool):
    worker = pool(processes=2)
    warm_up(q, worker)
    stopped = worker._supervisor.children.all[0]
    os.kill(stopped.process.pid, signal.SIGSTOP)
    try:
        sent_before = stopped.sent
        jobs = q.put_many([Job(sample_jobs.add, i, 3) for i in range(1000)])
        held = wait_until(lambda: (len([j for j in jobs if j.refresh().status != COMPLETED])
                                   == len(stopped.assigned)) and stopped.assigned,
                          WAIT, "the other process to run all it can")
        # One fill at most reached the stopped process: once stuck, it got nothing more.
        assert stopped.sent - sent_before <= 2 * litejobs._MAX_CHUNK
        assert held
    finally:
        os.kill(stopped.process.pid, signal.SIGCONT)
    wait_until(lambda: all(job.refresh().status == COMPLETED for job in jobs), WAIT,
               "the jobs it held")
