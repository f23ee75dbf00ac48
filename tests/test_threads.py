"""Threads in worker processes (``Worker(threads=N)``, ``worker --threads N``):
synchronous jobs that wait on I/O run N at a time in each process, with the
same leases and fencing.  A thread cannot be stopped: a run past its timeout,
or cancelled, ends at once in the database, its late outcome is refused, and
its process is retired once its other jobs end.  Every test holds on both
backends."""

from __future__ import annotations

import os
import signal

import pytest

import litejobs
import sample_jobs
from hostile_jobs import run_cli
from litejobs import ACTIVE, CANCELLED, FAILED, Job
from waiting import WAIT, child_pids, overlap, wait_until


@pytest.fixture
def q(each_backend):
    return each_backend


def test_a_process_runs_as_many_synchronous_jobs_at_once_as_it_has_threads(q, pool):
    pool(processes=1, threads=5)
    jobs = q.put_many(Job(sample_jobs.thread_span, 0.3) for _ in range(15))
    spans = [job.wait(timeout=WAIT) for job in jobs]
    assert len({pid for _, _, pid, _ in spans}) == 1
    assert len({thread for *_, thread in spans}) == 5
    assert overlap([(start, end) for start, end, _, _ in spans]) == 5


def test_a_run_past_its_timeout_in_a_thread_fails_at_once_and_its_process_retires(q, pool):
    worker = pool(processes=1, threads=3)
    first_pid = q.put(Job(sample_jobs.pid)).wait(timeout=WAIT)
    late = q.put(Job(sample_jobs.thread_span, 2.0), timeout=0.3)
    beside = q.put(Job(sample_jobs.thread_span, 0.8))
    with pytest.raises(litejobs.JobFailed):
        late.wait(timeout=WAIT)
    assert late.error_type == "litejobs.JobTimeout"
    assert "a thread cannot be stopped" in late.error
    assert beside.wait(timeout=WAIT)[2] == first_pid  # the job beside it ended well
    wait_until(lambda: first_pid not in child_pids(worker), WAIT, "the process to retire")
    assert q.put(Job(sample_jobs.pid)).wait(timeout=WAIT) != first_pid
    assert worker.crashes == []
    # The abandoned thread's outcome never lands.
    assert late.refresh().status == FAILED and late.result is None


def test_cancelling_a_run_in_a_thread_ends_it_cancelled_at_once(q, pool):
    worker = pool(processes=1, threads=2)
    running = q.put(Job(sample_jobs.thread_span, 3.0))
    beside = q.put(Job(sample_jobs.thread_span, 0.5))
    litejobs.wait_for_start(running, timeout=WAIT)
    assert running.cancel()
    with pytest.raises(litejobs.JobCancelled):
        running.wait(timeout=2.0)
    assert running.status == CANCELLED and "a thread cannot be stopped" in running.error
    assert beside.wait(timeout=WAIT)[3].startswith(("MainThread", "litejobs-lane-"))
    assert worker.crashes == []


def test_a_process_killed_under_its_threads_runs_each_of_their_jobs_again(q, pool):
    worker = pool(processes=1, threads=4)
    pid = q.put(Job(sample_jobs.pid)).wait(timeout=WAIT)
    jobs = q.put_many(Job(sample_jobs.sleep_first_attempt, 60, n) for n in range(4))
    wait_until(lambda: all(job.refresh().status == ACTIVE for job in jobs), WAIT, "the runs")
    wait_until(lambda: all(not job._row["unstarted"] for job in q.jobs(ACTIVE)), WAIT,
               "the pool to record that they began")
    os.kill(pid, signal.SIGKILL)
    assert [job.wait(timeout=WAIT) for job in jobs] == list(range(4))
    assert all((job.attempts, job.interruptions) == (2, 1) for job in jobs)
    assert len(worker.crashes) == 1


def test_bad_thread_counts_are_refused(q, tmp_path):
    for bad in (0, -1, "2"):
        with pytest.raises((ValueError, TypeError)):
            litejobs.Worker(q, threads=bad)
    done = run_cli("worker", q.path, "--threads", "0", cwd=tmp_path)
    assert done.returncode == 2 and "--threads" in done.stderr
