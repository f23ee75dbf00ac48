"""Async jobs and awaiting jobs from asyncio.

An ``async def`` function is a job like any other: a pool runs it on each
worker process's event loop, up to ``async_concurrency`` at once, beside
the synchronous jobs of the main thread; its timeout and a cancel cancel its
task; a process killed under it gives it back to run again.  `Job.await_result`,
``await job``, `wait_all` and `as_completed` wait without polling, the
database read off the event loop.  Every test holds on both backends."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import signal
import threading

import pytest

import litejobs
import sample_jobs
from litejobs import CANCELLED, COMPLETED, FAILED, Job
from waiting import WAIT, child_pids, overlap, wait_until


@pytest.fixture
def q(each_backend):
    return each_backend


# -- in the pool ------------------------------------------------------------------------


def test_an_async_job_runs_on_the_event_loop_of_a_worker_process_and_sees_itself(q, pool):
    pool()
    job = q.put(Job(sample_jobs.async_whoami))
    seen, again, pid = job.wait(timeout=WAIT)
    assert (seen, again) == (job.id, job.id)
    assert pid != os.getpid()
    assert job.attempts == 1


def test_many_async_jobs_run_at_once_on_one_process(q, pool):
    pool(processes=1)
    jobs = q.put_many(Job(sample_jobs.async_span, 0.3) for _ in range(60))
    spans = [job.wait(timeout=WAIT) for job in jobs]
    assert {pid for _, _, pid in spans} == {spans[0][2]}  # one process ran them all
    assert overlap([(start, end) for start, end, _ in spans]) >= 30


def test_async_concurrency_bounds_the_jobs_running_at_once_in_a_process(q, pool):
    pool(processes=1, async_concurrency=3)
    jobs = q.put_many(Job(sample_jobs.async_span, 0.05) for _ in range(15))
    spans = [job.wait(timeout=WAIT) for job in jobs]
    assert overlap([(start, end) for start, end, _ in spans]) == 3


def test_a_synchronous_job_runs_in_the_main_thread_while_async_jobs_run_on_the_loop(q, pool):
    pool(processes=1)
    slow = q.put_many(Job(sample_jobs.async_sleep, 0.5, n) for n in range(20))
    thread = q.put(Job(sample_jobs.thread_name)).wait(timeout=WAIT)
    assert thread == "MainThread"
    assert [job.wait(timeout=WAIT) for job in slow] == list(range(20))


def test_an_async_jobs_failure_keeps_its_traceback(q, pool):
    pool()
    job = q.put(Job(sample_jobs.async_fail, "bad input"))
    with pytest.raises(litejobs.JobFailed) as failed:
        job.wait(timeout=WAIT)
    assert failed.value.exc_type == "builtins.ValueError"
    assert "in async_fail" in job.error and "ValueError: bad input" in job.error


def test_a_timeout_cancels_the_task_and_the_process_goes_on(q, pool):
    worker = pool(processes=1)
    pid = q.put(Job(sample_jobs.pid)).wait(timeout=WAIT)
    late = q.put(Job(sample_jobs.async_sleep, 30), timeout=0.2)
    beside = q.put(Job(sample_jobs.async_sleep, 0.5, "beside"))
    with pytest.raises(litejobs.JobFailed):
        late.wait(timeout=WAIT)
    assert late.error_type == "litejobs.JobTimeout"
    assert "so its task was cancelled" in late.error
    assert beside.wait(timeout=WAIT) == "beside"
    assert q.put(Job(sample_jobs.pid)).wait(timeout=WAIT) == pid  # not killed
    assert worker.crashes == []


def test_cancelling_a_running_async_job_cancels_its_task_only(q, pool):
    worker = pool(processes=1)
    running = q.put(Job(sample_jobs.async_sleep, 30))
    beside = q.put(Job(sample_jobs.async_sleep, 1.0, "beside"))
    litejobs.wait_for_start(running, timeout=WAIT)
    pids = child_pids(worker)
    assert running.cancel()
    with pytest.raises(litejobs.JobCancelled):
        running.wait(timeout=WAIT)
    assert running.status == CANCELLED
    assert "so its task was cancelled" in running.error
    assert beside.wait(timeout=WAIT) == "beside"
    assert child_pids(worker) == pids  # the process was not killed


def test_a_process_killed_under_running_async_jobs_runs_them_again(q, pool):
    worker = pool(processes=1)
    marker = q.put(Job(sample_jobs.pid)).wait(timeout=WAIT)
    jobs = q.put_many(Job(sample_jobs.async_sleep_once, n, 1.0)
                      for n in range(5))
    wait_until(lambda: all(job.refresh().status == litejobs.ACTIVE for job in jobs), WAIT,
               "the jobs to start")
    wait_until(lambda: all(not job._row["unstarted"] for job in q.jobs(litejobs.ACTIVE)),
               WAIT, "the pool to record that they began")
    os.kill(marker, signal.SIGKILL)
    assert [job.wait(timeout=WAIT) for job in jobs] == list(range(5))
    assert all(job.attempts == 2 and job.interruptions == 1 for job in jobs)
    assert len(worker.crashes) == 1


def test_an_async_job_that_blocks_the_loop_is_logged_with_its_id(q, pool, caplog):
    caplog.set_level(logging.WARNING, logger="litejobs")
    pool(processes=1)
    job = q.put(Job(sample_jobs.async_block, 1.5))
    assert job.wait(timeout=WAIT) == "blocked"
    wait_until(lambda: any(f"job {job.id} " in r.getMessage() and "blocked" in r.getMessage()
                           for r in caplog.records), WAIT, "the warning")


def test_an_async_job_reports_progress_and_meta(q, pool):
    pool()
    job = q.put(Job(sample_jobs.async_progress, 5))
    assert job.wait(timeout=WAIT) == 5
    assert (job.progress, job.progress_message) == (1.0, "step 5 of 5")
    assert job.meta == {"steps": 5}


def test_retries_of_an_async_job_follow_its_retry_policy(q, pool):
    pool()
    job = q.put(Job(sample_jobs.async_fail, "again"), retry=litejobs.Retry(attempts=3, delay=0))
    with pytest.raises(litejobs.JobFailed):
        job.wait(timeout=WAIT)
    assert job.attempts == 3 and [entry["event"] for entry in job.history] == ["retried"] * 2


def test_async_parts_compose_with_a_postprocess_and_callbacks(q, pool):
    pool()
    root = q.put(litejobs.parallel(*(Job(sample_jobs.async_sleep, 0.05, n) for n in range(4)),
                                   postprocess=sample_jobs.pool_sum_parts))
    callback = root.add_callback(sample_jobs.async_describe)
    assert root.wait(timeout=WAIT) == 6
    assert callback.wait(timeout=WAIT) == "got 6"


# -- run_pending ----------------------------------------------------------------------------


def test_run_pending_runs_an_async_job_and_its_timeout(q):
    done = q.put(Job(sample_jobs.async_sleep, 0, "here"))
    late = q.put(Job(sample_jobs.async_sleep, 30), timeout=0.05)
    assert q.run_pending() == 2
    assert done.wait(timeout=0) == "here"
    assert late.refresh().status == FAILED and late.error_type == "litejobs.JobTimeout"


def test_run_pending_gives_an_async_job_its_clock(q):
    now = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
    job = q.put(Job(sample_jobs.async_put_later, 60))

    async def test_body():  # from a running loop: the job runs in a thread of its own
        return q.run_pending(now=now)

    assert asyncio.run(test_body()) == 1
    later = q.get(job.wait(timeout=0))
    assert abs(later.begin_after - (now + datetime.timedelta(seconds=60))) < \
        datetime.timedelta(seconds=1)


def test_run_pending_runs_async_jobs_from_inside_a_running_event_loop(q):
    job = q.put(Job(sample_jobs.async_whoami))

    async def test_body():
        return q.run_pending()

    assert asyncio.run(test_body()) == 1
    assert job.wait(timeout=0)[:2] == (job.id, job.id)


@pytest.mark.asyncio
async def test_the_queue_fixture_in_a_pytest_asyncio_test(litejobs_queue):
    job = await litejobs_queue.aput(Job(sample_jobs.async_sleep, 0, 7))
    assert litejobs_queue.run_pending() == 1
    assert await job == 7


@pytest.mark.anyio
async def test_the_queue_fixture_in_an_anyio_test(litejobs_queue):
    job = await litejobs_queue.aput(Job(sample_jobs.add, 2, 2))
    assert litejobs_queue.run_pending() == 1
    assert await job.await_result(timeout=5) == 4


@pytest.fixture
def anyio_backend():
    return "asyncio"


# -- awaiting from asyncio --------------------------------------------------------------


def test_await_a_job_put_from_a_coroutine(q, pool):
    pool()

    async def main():
        job = await q.aput(Job(sample_jobs.add, 2, 3))
        return await job, await job.await_result(timeout=WAIT), (await q.aget(job.id)).status

    assert asyncio.run(main()) == (5, 5, COMPLETED)


def test_awaiting_a_failed_or_cancelled_job_raises_as_wait_does(q):
    failed = q.put(Job(sample_jobs.fail, "broken"))
    cancelled = q.put(Job(sample_jobs.add, 1, 1), begin_after=3600)
    q.run_pending()

    async def main():
        assert await cancelled.acancel()
        with pytest.raises(litejobs.JobFailed, match="broken"):
            await failed
        with pytest.raises(litejobs.JobCancelled):
            await cancelled

    asyncio.run(main())


def test_await_result_times_out_saying_what_the_job_is(q):
    job = q.put(Job(sample_jobs.add, 1, 1), begin_after=3600)

    async def main():
        with pytest.raises(litejobs.WaitTimeout, match=f"job {job.id} .* it is pending"):
            await job.await_result(timeout=0.2)

    asyncio.run(main())


def test_wait_all_and_as_completed_wake_on_commits_from_one_thread(q, pool):
    pool()
    seen_threads = []

    async def main():
        jobs = await q.aput_many([Job(sample_jobs.add, n, n) for n in range(100)])
        seen_threads.append(sum(t.name == "litejobs-awaits" for t in threading.enumerate()))
        done = await litejobs.wait_all(jobs, timeout=WAIT)
        assert [job.result for job in done] == [2 * n for n in range(100)]
        gated = [await q.aput(Job(sample_jobs.async_sleep, 0.3 * (3 - n), n)) for n in range(3)]
        order = [job.result async for job in litejobs.as_completed(gated, timeout=WAIT)]
        return order

    assert asyncio.run(main()) == [2, 1, 0]
    assert seen_threads == [0] or seen_threads == [1]
    wait_until(lambda: not any(t.name == "litejobs-awaits" for t in threading.enumerate()),
               WAIT, "the watching thread to end once nothing is awaited")


def test_closing_the_queue_ends_the_watching_thread_and_an_awaiter_goes_on_waking(q):
    async def main():
        job = await q.aput(Job(sample_jobs.add, 2, 2))  # nothing runs it yet
        waiting = asyncio.ensure_future(job.await_result(timeout=WAIT))
        await asyncio.sleep(0.3)  # the thread watches
        await asyncio.to_thread(q.close)  # it ends before the connections close, and resumes
        await asyncio.to_thread(q.run_pending)
        return await waiting

    assert asyncio.run(main()) == 4
    q.close()  # nothing awaited: the thread ends, and stays ended
    assert not any(t.name == "litejobs-awaits" for t in threading.enumerate())


def test_as_completed_times_out_with_the_jobs_left(q):
    jobs = q.put_many([Job(sample_jobs.add, 1, 1), Job(sample_jobs.add, 2, 2)])
    q.run_pending()
    late = q.put(Job(sample_jobs.add, 1, 1), begin_after=3600)

    async def main():
        got = []
        with pytest.raises(litejobs.WaitTimeout, match="1 of the jobs"):
            async for job in litejobs.as_completed([*jobs, late], timeout=0.3):
                got.append(job.id)
        return got

    assert sorted(asyncio.run(main())) == [job.id for job in jobs]
