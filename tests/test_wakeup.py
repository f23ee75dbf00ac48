"""How an idle pool notices new jobs: inotify on the WAL where the platform
has it, polling ``PRAGMA data_version`` where it does not.

The pool tests pin the other ways a job could be noticed far out of reach
(``poll=60``, and a 60 s safety check), so a job that starts within the wait's
timeout was noticed by the mechanism under test.  Nothing here asserts a
speed; bench/run.py measures the latency.
"""

from __future__ import annotations

import os
import select
import sys

import pytest

import litejobs
from litejobs import Job

import sample_jobs

WAIT = 30.0

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="inotify is Linux's")


def _events_within(watch, timeout):
    readable, _, _ = select.select([watch.fd], [], [], timeout)
    return bool(readable) and watch.written()


@linux_only
def test_the_watch_sees_a_commit_to_the_wal_and_ignores_other_files(q, tmp_path):
    watch = litejobs._WalWatch.open(q.path)
    assert watch is not None
    try:
        (tmp_path / "unrelated.log").write_text("a write to another file\n")
        assert not _events_within(watch, 0.2)
        q.put(Job(sample_jobs.add, 1, 2))
        assert _events_within(watch, WAIT)
        assert not watch.written()  # read once, the events are gone
    finally:
        watch.close()


def test_no_watch_off_linux(monkeypatch, q):
    monkeypatch.setattr(litejobs.sys, "platform", "darwin")
    assert litejobs._WalWatch.open(q.path) is None


@pytest.fixture
def slow_fallbacks(monkeypatch):
    """Only the mechanism under test can notice a job within the test's wait."""
    monkeypatch.setattr(litejobs, "_SAFETY_CHECK_INTERVAL", 60.0)
    return {"poll": 60.0}


def _put_on_an_idle_pool(q, worker):
    # The pool has claimed and run a first job, so it is idle and drained.
    assert q.put(Job(sample_jobs.add, 1, 1)).wait(timeout=WAIT) == 2
    assert not worker._in_flight
    return q.put(Job(sample_jobs.add, 20, 22))


@linux_only
def test_an_idle_pool_is_woken_by_inotify(q, slow_fallbacks):
    with litejobs.Worker(q, processes=1, **slow_fallbacks) as worker:
        assert worker._wal_watch is not None
        job = _put_on_an_idle_pool(q, worker)
        assert job.wait(timeout=WAIT) == 42


def test_without_inotify_an_idle_pool_polls_data_version(q, monkeypatch, slow_fallbacks):
    monkeypatch.setattr(litejobs._WalWatch, "open", classmethod(lambda cls, path: None))
    with litejobs.Worker(q, processes=1, **slow_fallbacks) as worker:
        assert worker._wal_watch is None
        job = _put_on_an_idle_pool(q, worker)
        assert job.wait(timeout=WAIT) == 42


def test_a_delayed_job_starts_when_due_without_any_write(q, slow_fallbacks):
    """Nothing writes when a delayed job falls due: the pool's timer does it."""
    with litejobs.Worker(q, processes=1, **slow_fallbacks):
        job = q.put(Job(sample_jobs.add, 2, 3), begin_after=1.0)
        assert job.wait(timeout=WAIT) == 5
        assert job.started_at >= job.begin_after


@linux_only
def test_the_watch_is_closed_when_the_pool_stops(q):
    worker = litejobs.Worker(q, processes=1).start()
    fd = worker._wal_watch.fd
    worker.stop()
    with pytest.raises(OSError):
        os.fstat(fd)
