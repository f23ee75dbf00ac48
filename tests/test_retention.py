"""Retention: ``Queue.purge``, retries by hand (``Job.retry``) and job
history, and a pool's pruning and WAL checkpoints under a steady load.

Old jobs are made by running them on a clock two hours back:
``q.put(..., begin_after=OLD)`` then ``q.run_pending(now=OLD + ...)``, so
their ``finished_at`` is two hours ago while ``purge`` counts from the real
clock.  Lease expiry is simulated as in tests/test_queue.py: a claim by an
owner that never finishes, then ``run_pending(now=later)``.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import os
import sqlite3
import time

import pytest

import litejobs
import sample_jobs
from litejobs import (ACTIVE, CANCELLED, COMPLETED, FAILED, PENDING, WAITING, Job, Retry,
                      parallel, serial)
from waiting import WAIT, wait_until

HOUR = datetime.timedelta(hours=1)


@pytest.fixture
def old():
    """Two hours ago, an aware UTC datetime."""
    return datetime.datetime.now(datetime.timezone.utc) - 2 * HOUR


@contextlib.contextmanager
def clock_at(moment):
    """Put (and cancel, add callbacks) as if it were ``moment``: the clock
    ``run_pending(now=...)`` sets for the jobs it runs."""
    token = litejobs._CLOCK.set(lambda: moment.timestamp())
    try:
        yield
    finally:
        litejobs._CLOCK.reset(token)


def run_old(q, old, *items, **options):
    """Put ``items`` at ``old`` and run them on that clock; return the jobs."""
    with clock_at(old):
        jobs = [q.put(item, **options) for item in items]
    q.run_pending(now=old + datetime.timedelta(minutes=1))
    for job in jobs:
        job.refresh()
    return jobs


def all_ids(path):
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        return {job_id for job_id, in conn.execute("SELECT id FROM litejobs_jobs")}
    finally:
        conn.close()


def tree_ids(q, job):
    """The job's id and those of everything under it (parts, callbacks)."""
    ids, todo = set(), [job.id]
    while todo:
        job_id = todo.pop()
        ids.add(job_id)
        todo.extend(child.id for child in q.get(job_id).children())
    return ids


def lines_of(path):
    try:
        with open(path) as handle:
            return handle.read().splitlines()
    except FileNotFoundError:
        return []


# -- 1. Queue.purge -----------------------------------------------------------------------------


def test_purge_deletes_only_jobs_ended_before_the_cutoff_with_everything_under_them(
        q, old, tmp_path):
    done, failed = run_old(q, old, Job(sample_jobs.add, 1, 2), Job(sample_jobs.fail))
    assert (done.status, failed.status) == (COMPLETED, FAILED)
    composite, = run_old(q, old, parallel(Job(sample_jobs.add, 1, 1), Job(sample_jobs.add, 2, 2),
                                          Job(sample_jobs.fail)))
    assert composite.status == FAILED
    with_callback, = run_old(q, old, Job(sample_jobs.add, 5, 5))
    with clock_at(old + datetime.timedelta(minutes=1)):
        with_callback.add_callback(Job(sample_jobs.echo))
    q.run_pending(now=old + datetime.timedelta(minutes=2))  # the callback runs, long ago too
    old_ids = set()
    for job in (done, failed, composite, with_callback):
        old_ids |= tree_ids(q, job)
    assert len(old_ids) == 1 + 1 + (1 + 3) + (1 + 1)
    assert len(tree_ids(q, composite)) == 4 and len(tree_ids(q, with_callback)) == 2

    # Recent ends, and jobs that have not ended.
    recent = q.put(Job(sample_jobs.add, 3, 4))
    q.run_pending()
    assert recent.refresh().status == COMPLETED
    pending = q.put(Job(sample_jobs.add, 0, 0), begin_after=HOUR)
    active = q.put(Job(sample_jobs.add, 0, 1))
    q._storage.claim(owner="busy", queues=None, now=time.time() + 1,
                     expires=time.time() + 600, limit=1)
    assert active.refresh().status == ACTIVE
    before = all_ids(q.path)

    deleted = q.purge(HOUR)

    after = all_ids(q.path)
    assert deleted == len(old_ids) == len(before - after)
    assert before - after == old_ids
    assert {recent.id, pending.id, active.id} <= after
    with pytest.raises(litejobs.JobNotFound):
        done.refresh()
    # Nothing more is that old.
    assert q.purge(datetime.timedelta(minutes=30)) == 0
    assert q.purge(1800.0) == 0
    assert all_ids(q.path) == after


def test_purge_keeps_unfinished_jobs_and_trees_with_anything_unfinished(q):
    plain = q.put(Job(sample_jobs.add, 0, 0))
    later = q.put(Job(sample_jobs.add, 0, 0), begin_after=HOUR)
    pipeline = q.put(serial(Job(sample_jobs.add, 1, 1), Job(sample_jobs.add, 2, 2)))
    assert q.run_pending(limit=2) == 2  # `plain` and the first part
    first, second = pipeline.children()[:2]
    assert first.refresh().status == COMPLETED
    assert second.refresh().status == PENDING and pipeline.refresh().status == WAITING
    before = all_ids(q.path)
    assert plain.refresh().status == COMPLETED
    time.sleep(0.01)  # ended strictly before the purge's "now"

    # Everything not ended stays, and so does the part that ended, under its
    # unfinished composite; only the plain completed job goes.
    assert q.purge(0) == 1
    assert all_ids(q.path) == before - {plain.id}
    assert later.refresh().status == PENDING
    assert first.refresh().status == COMPLETED


def test_purge_keeps_a_finished_parent_while_its_callback_is_pending(q, old):
    parent, = run_old(q, old, Job(sample_jobs.add, 1, 2))
    callback = parent.add_callback(Job(sample_jobs.echo))
    assert callback.refresh().status == PENDING
    assert q.purge(HOUR) == 0
    assert parent.refresh().status == COMPLETED

    assert q.run_pending() == 1
    assert callback.refresh().status == COMPLETED
    assert q.purge(HOUR) == 2
    assert not all_ids(q.path) & {parent.id, callback.id}


def test_purge_by_status(q, old):
    done, failed = run_old(q, old, Job(sample_jobs.add, 1, 2), Job(sample_jobs.fail))
    cancelled = q.put(Job(sample_jobs.add, 0, 0))
    assert cancelled.cancel()
    time.sleep(0.01)
    assert q.purge(HOUR, status=FAILED) == 1
    assert all_ids(q.path) == {done.id, cancelled.id}
    assert q.purge(0, status=CANCELLED) == 1
    assert all_ids(q.path) == {done.id}
    assert q.purge(HOUR, status=CANCELLED) == 0
    assert q.purge(HOUR, status=COMPLETED) == 1
    assert all_ids(q.path) == set()


@pytest.mark.parametrize("status", [PENDING, ACTIVE, WAITING, "done", "", 5])
def test_purge_refuses_a_status_that_is_not_finished(q, old, status):
    run_old(q, old, Job(sample_jobs.add, 1, 2))
    with pytest.raises(ValueError):
        q.purge(HOUR, status=status)
    assert len(all_ids(q.path)) == 1


@pytest.mark.parametrize("older_than, error", [(-1, ValueError), (float("nan"), ValueError),
                                               ("1h", TypeError), (None, TypeError)])
def test_purge_refuses_a_bad_age(q, older_than, error):
    with pytest.raises(error):
        q.purge(older_than)


def test_purge_works_in_batches(q, old, monkeypatch):
    jobs = run_old(q, old, *[Job(sample_jobs.add, i, i) for i in range(7)])
    keep = q.put(Job(sample_jobs.add, 0, 0))
    assert {job.status for job in jobs} == {COMPLETED}
    limits = []
    real = q._storage.purge

    def spy(before, **options):
        limits.append(options.get("limit"))
        return real(before, **options)

    monkeypatch.setattr(q._storage, "purge", spy)
    assert q.purge(HOUR, batch=2) == 7
    assert limits == [2, 2, 2, 2]  # 2 + 2 + 2 + 1
    assert all_ids(q.path) == {keep.id}
    for bad in (0, -1, 1.5, True):
        with pytest.raises((TypeError, ValueError)):
            q.purge(HOUR, batch=bad)


def test_purge_batches_count_trees_whole(q, old):
    trees = run_old(q, old, *[parallel(Job(sample_jobs.add, i, 1), Job(sample_jobs.add, i, 2))
                              for i in range(3)])
    assert {tree.status for tree in trees} == {COMPLETED}
    assert q.purge(HOUR, batch=1) == 9
    assert all_ids(q.path) == set()


# -- 2. Job.retry and history ----------------------------------------------------------------


def history_events(job):
    return [(entry["event"], entry["attempt"]) for entry in job.history]


def test_retry_of_a_failed_job_runs_it_again_from_a_fresh_start(q, tmp_path):
    gate = str(tmp_path / "gate")
    job = q.put(Job(sample_jobs.log_step, str(tmp_path / "log"), "x", gate))
    q.run_pending()
    job.refresh()
    assert job.status == FAILED and job.attempts == 1
    first_runner = job.ran_by
    assert first_runner and first_runner.startswith("inline@")
    assert job.history == []

    assert job.retry() == PENDING
    assert job.status == PENDING  # retry() refreshes
    assert job.attempts == 0 and job.interruptions == 0
    assert job.finished_at is None and job.started_at is None
    entry, = job.history
    assert entry["event"] == "retried by hand"
    assert entry["attempt"] == 1
    assert entry["by"] == first_runner
    assert entry["error"] == "RuntimeError: x: gate is not there yet"
    assert isinstance(entry["at"], datetime.datetime) and entry["at"].tzinfo is not None
    assert abs((datetime.datetime.now(datetime.timezone.utc) - entry["at"]).total_seconds()) < 60

    open(gate, "w").close()
    assert q.run_pending() == 1
    assert job.wait(timeout=5) == "x"
    assert job.attempts == 1
    assert history_events(job) == [("retried by hand", 1)]
    assert lines_of(str(tmp_path / "log")) == ["x", "x"]


def test_retry_of_a_cancelled_job(q):
    job = q.put(Job(sample_jobs.add, 2, 2))
    assert job.cancel()
    assert job.status == CANCELLED
    assert job.retry() == PENDING
    entry, = job.history
    assert (entry["event"], entry["attempt"], entry["by"]) == ("retried by hand", 0, None)
    assert q.run_pending() == 1
    assert job.wait(timeout=5) == 4


def test_retry_resets_interruptions_and_keeps_the_whole_history(q, now):
    job = q.put(Job(sample_jobs.fail, "after the crash"), max_interruptions=5)
    q._storage.claim(owner="crashed", queues=None, now=now.timestamp(),
                     expires=now.timestamp() + 1, limit=1)
    later = now + datetime.timedelta(minutes=1)  # the crashed owner's lease ran out
    assert q.run_pending(now=later) == 1
    job.refresh()
    assert job.status == FAILED and job.attempts == 2 and job.interruptions == 1
    interrupted, = job.history
    assert interrupted["event"] == "interrupted"
    assert interrupted["attempt"] == 1 and interrupted["by"] == "crashed"
    assert "crashed" in interrupted["error"] and "ran out" in interrupted["error"]
    assert abs(interrupted["at"] - later) < datetime.timedelta(milliseconds=1)

    assert job.retry() == PENDING
    assert job.attempts == 0 and job.interruptions == 0
    assert history_events(job) == [("interrupted", 1), ("retried by hand", 2)]
    assert job.history[1]["error"] == "ValueError: after the crash"
    assert job.history[1]["by"].startswith("inline@")


def test_history_records_retries_of_the_retry_policy(q):
    job = q.put(Job(sample_jobs.flaky, 2), retry=Retry(attempts=3, delay=0))
    assert q.run_pending() == 3
    assert job.wait(timeout=5) == 3
    assert history_events(job) == [("retried", 1), ("retried", 2)]
    assert [entry["error"] for entry in job.history] == ["ConnectionError: attempt 1",
                                                          "ConnectionError: attempt 2"]
    assert {entry["by"] for entry in job.history} == {job.ran_by}
    assert job.history[0]["at"] <= job.history[1]["at"]


def test_retry_refuses_jobs_not_failed_or_cancelled(q, tmp_path):
    done = q.put(Job(sample_jobs.add, 1, 1))
    q.run_pending()
    assert done.refresh().status == COMPLETED
    with pytest.raises(ValueError, match="completed"):
        done.retry()
    pending = q.put(Job(sample_jobs.add, 1, 1), begin_after=HOUR)
    with pytest.raises(ValueError, match="pending"):
        pending.retry()
    assert done.refresh().history == [] and pending.refresh().status == PENDING


def test_retrying_a_part_of_an_ended_composite_runs_its_postprocess_again(
        q, now, tmp_path):
    """The composite's result reflects the retried part: it re-opens around
    that part alone, and once the part has run again, so does the
    postprocess (the other parts keep their outcomes).  Nested, every
    composite around the part re-opens."""
    fixed = tmp_path / "fixed"
    inner = parallel(Job(sample_jobs.fail_unless_exists, str(fixed)),
                     Job(sample_jobs.add, 1, 1), postprocess=sample_jobs.describe_parts)
    outer = q.put(serial(inner, Job(sample_jobs.add, 2, 2)))
    q.run_pending(now=now)
    composite, last = outer.refresh().children()
    failing, fine = composite.children()
    assert (outer.status, composite.status, failing.status, fine.status, last.status) == (
        COMPLETED, COMPLETED, FAILED, COMPLETED, COMPLETED)  # postprocesses saw the failure
    fixed.touch()
    assert failing.retry() == PENDING
    assert (composite.refresh().status, outer.refresh().status) == (WAITING, WAITING)
    assert q.run_pending(now=now) == 3  # the part, the postprocess, the outer gathering
    assert composite.wait(timeout=1) == [
        (failing.id, COMPLETED, "found", None), (fine.id, COMPLETED, 2, None)]
    assert outer.wait(timeout=1) == [composite.result, 4]
    assert (fine.refresh().attempts, last.refresh().attempts) == (1, 1)  # not run again
    assert [entry["event"] for entry in composite.history] == ["retried by hand"]


def test_a_part_of_a_composite_that_has_not_ended_is_not_retried_alone(q, now):
    composite = q.put(serial(Job(sample_jobs.fail), Job(sample_jobs.add, 1, 1)))
    assert q.run_pending(now=now, limit=1) == 1
    part = composite.children()[0]
    assert part.refresh().status == FAILED and composite.refresh().status == WAITING
    with pytest.raises(ValueError, match=rf"part of job {composite.id}, which has not ended"):
        part.retry()
    assert part.refresh().status == FAILED and part.history == []


def test_retry_refuses_a_key_held_by_an_unfinished_job(q):
    first = q.put(Job(sample_jobs.fail), key="nightly")
    q.run_pending()
    assert first.refresh().status == FAILED
    second = q.put(Job(sample_jobs.add, 1, 1), key="nightly", begin_after=HOUR)
    assert second.id != first.id
    with pytest.raises(ValueError, match="nightly"):
        first.retry()
    assert first.refresh().status == FAILED and first.history == []


def test_retry_of_a_failed_parallel_reruns_only_its_failed_parts_then_the_postprocess(
        q, tmp_path):
    log, gate = str(tmp_path / "log"), str(tmp_path / "gate")
    composite = q.put(parallel(Job(sample_jobs.log_step, log, "a"),
                               Job(sample_jobs.log_step, log, "b", gate),
                               Job(sample_jobs.log_step, log, "c"),
                               postprocess=Job(sample_jobs.log_post, log)))
    q.run_pending()
    composite.refresh()
    assert composite.status == FAILED
    first_run = lines_of(log)
    assert sorted(first_run[:3]) == ["a", "b", "c"] and first_run[3:] == ["post"]
    a, b, c = composite.children()[:3]
    assert [part.refresh().status for part in (a, b, c)] == [COMPLETED, FAILED, COMPLETED]

    open(gate, "w").close()
    assert composite.retry() == WAITING
    assert history_events(composite) == [("retried by hand", 1)]
    assert history_events(b.refresh()) == [("retried by hand", 1)]
    assert b.status != FAILED and b.attempts == 0
    q.run_pending()

    assert composite.wait(timeout=5) == ["a", "b", "c"]
    assert lines_of(log)[len(first_run):] == ["b", "post"]
    for part in (a, c):
        part.refresh()
        assert part.status == COMPLETED and part.attempts == 1 and part.history == []
    assert b.refresh().status == COMPLETED and b.attempts == 1
    assert b.finished_at <= composite.finished_at


def test_retry_of_a_serial_that_stopped_on_failure_reruns_from_the_failed_part(q, tmp_path):
    log, gate = str(tmp_path / "log"), str(tmp_path / "gate")
    pipeline = q.put(serial(Job(sample_jobs.log_step, log, "a"),
                            Job(sample_jobs.log_step, log, "b", gate),
                            Job(sample_jobs.log_step, log, "c"),
                            postprocess=Job(sample_jobs.log_post, log),
                            stop_on_failure=True))
    q.run_pending()
    pipeline.refresh()
    assert pipeline.status == FAILED
    assert lines_of(log) == ["a", "b", "post"]
    a, b, c = pipeline.children()[:3]
    assert [part.refresh().status for part in (a, b, c)] == [COMPLETED, FAILED, CANCELLED]

    open(gate, "w").close()
    assert pipeline.retry() == WAITING
    q.run_pending()

    assert pipeline.wait(timeout=5) == ["a", "b", "c"]
    assert lines_of(log) == ["a", "b", "post", "b", "c", "post"]
    assert a.refresh().attempts == 1 and a.history == []
    assert [part.refresh().status for part in (a, b, c)] == [COMPLETED] * 3
    assert b.finished_at <= c.finished_at <= pipeline.finished_at


# -- 3. pruning and checkpoints in a pool under load --------------------------------------------


def test_a_pool_prunes_finished_jobs_under_load_and_keeps_the_wal_bounded(
        q, tmp_path, monkeypatch):
    monkeypatch.setattr(litejobs, "_UPKEEP_INTERVAL", 0.2)
    ran_log = str(tmp_path / "ran")
    wal = q.path + "-wal"
    put_ids = []
    rows_seen, wal_seen = [], []
    conn = sqlite3.connect(q.path, timeout=30, isolation_level=None)

    def sample():
        rows_seen.append(conn.execute("SELECT count(*) FROM litejobs_jobs").fetchone()[0])
        try:
            wal_seen.append(os.path.getsize(wal))
        except FileNotFoundError:
            wal_seen.append(0)

    worker = q.worker(processes=2, retention=0.5)
    try:
        load_until = time.monotonic() + 3.0
        while time.monotonic() < load_until:
            jobs = q.put_many(Job(sample_jobs.append_own_id, ran_log) for _ in range(25))
            put_ids.extend(job.id for job in jobs)
            sample()
            time.sleep(0.01)
        total = len(put_ids)

        def drained():
            sample()
            counts = q.counts()
            return (len(lines_of(ran_log)) >= total
                    and counts[PENDING] + counts[ACTIVE] + counts[WAITING] == 0)

        wait_until(drained, WAIT, f"the {total} jobs to run",
                   lambda: f"{len(lines_of(ran_log))} ran; {q.counts()}")
        left = all_ids(q.path)
        assert {q.get(job_id).status for job_id in left} <= {COMPLETED}
        # Once the load stops, everything is pruned within the retention and
        # an upkeep round or two.
        wait_until(lambda: (sample(), rows_seen[-1] == 0)[1], WAIT,
                   "the pool to prune every job", lambda: f"{q.counts()}")
        assert worker.crashes == []
    finally:
        worker.stop(grace=0, timeout=30)
        conn.close()

    ran = [int(line) for line in lines_of(ran_log)]
    # Every job put ran (none was deleted before it finished), and once.
    assert set(ran) == set(put_ids)
    assert [job_id for job_id, n in collections.Counter(ran).items() if n > 1] == []
    assert total >= 1000, f"only {total} jobs put: the load proves little"
    assert max(rows_seen) < total / 2, (
        f"at most {max(rows_seen)} rows at a time for {total} jobs put")
    margin = 4 * 2 ** 20
    assert max(wal_seen) <= litejobs._WAL_SIZE_LIMIT + margin, max(wal_seen)
    print(f"\n{total} jobs put; rows at most {max(rows_seen)}; "
          f"WAL at most {max(wal_seen):,} bytes over {len(wal_seen)} samples")


# -- regressions ---------------------------------------------------------------------


def test_a_chain_of_returned_jobs_deeper_than_sqlites_cascade_limit_is_purged(q):
    root = q.put(Job(sample_jobs.chain, 1100))
    q.run_pending()
    assert root.refresh().status == COMPLETED and root.result == "bottom"
    assert q.purge(0) == 1101
    assert q.jobs(limit=None) == []


def test_a_composite_with_a_part_still_being_cancelled_is_not_retried(q, now):
    part = Job(sample_jobs.add, 1, 2)
    root = q.put(litejobs.parallel(part, Job(sample_jobs.add, 3, 4)))
    q._storage.claim(owner="test", queues=None, now=now.timestamp(),
                     expires=now.timestamp() + 60, limit=1)
    root.cancel()
    assert (root.refresh().status, part.refresh().status) == (CANCELLED, ACTIVE)
    with pytest.raises(ValueError, match="still has parts running"):
        root.retry()


def test_a_callback_is_not_retried_before_its_job_has_ended(q):
    parent = q.put(Job(sample_jobs.add, 1, 2), begin_after=3600)
    callback = parent.add_callback(sample_jobs.double)
    callback.cancel()
    with pytest.raises(ValueError, match="has not ended"):
        callback.retry()


def test_a_retry_by_hand_drops_the_deadline_that_failed_the_job(q, now):
    job = q.put(Job(sample_jobs.add, 1, 2), begin_by=1)
    q.run_pending(now=now + datetime.timedelta(minutes=5))
    assert job.refresh().error_type == "litejobs.DeadlineExceeded"
    assert job.retry() == PENDING
    assert job.begin_by is None
    q.run_pending(now=now + datetime.timedelta(minutes=6))
    assert job.refresh().result == 3
