"""How an idle pool notices new jobs: inotify on the WAL where the platform
has it, polling ``PRAGMA data_version`` where it does not.

The pool tests pin the other ways a job could be noticed far out of reach
(``poll=60``, a 60 s safety check, and heartbeats a minute apart: each
heartbeat ends the idle wait, and the pool then looks for work), so a job that
starts within the wait's timeout was noticed by the mechanism under test.
Nothing here asserts a speed; bench/run.py measures the latency.
"""

from __future__ import annotations

import os
import select
import sys
import time

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
    """Only the mechanism under test can notice a job within the test's wait.

    Worker options, with the module's timers patched: the heartbeat comes
    every min(_HEARTBEAT_INTERVAL, lease / 3) seconds, 2 s by default, and
    would otherwise wake an idle pool that often."""
    monkeypatch.setattr(litejobs, "_SAFETY_CHECK_INTERVAL", 60.0)
    monkeypatch.setattr(litejobs, "_HEARTBEAT_INTERVAL", 60.0)
    return {"poll": 60.0, "lease": 300.0}


def _record_claims_and_checks(worker):
    """Record, in order, the pool's claims and its idle checks for changes
    (with the ``data_version`` each read): ``[("claim", None), ("check", 7), ...]``."""
    events = []
    storage = worker._storage
    claim, data_version = storage.claim, storage.data_version

    def recorded_claim(**options):
        claimed = claim(**options)
        events.append(("claim", None))
        return claimed

    def recorded_data_version():
        version = data_version()
        events.append(("check", version))
        return version

    storage.claim, storage.data_version = recorded_claim, recorded_data_version
    return events


def _waiting_idle(events):
    """Whether the pool's last act was an idle check that found no change
    since the check before: it then waits for the mechanism under test."""
    events = list(events)
    checks = [version for kind, version in events if kind == "check"]
    return (bool(events) and events[-1][0] == "check" and len(checks) >= 2
            and checks[-1] == checks[-2])


def _wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def _put_on_an_idle_pool(q, worker):
    assert worker._supervisor.keeper.heartbeat_interval >= WAIT  # no heartbeat within the wait
    events = _record_claims_and_checks(worker)
    # The pool has claimed and run a first job, so it is idle and drained.
    assert q.put(Job(sample_jobs.add, 1, 1)).wait(timeout=WAIT) == 2
    assert not worker._supervisor.flight.jobs
    # An idle wait begins with a check for changes, which would find a job
    # put before it whatever the mechanism under test does: put the job only
    # once the pool has made that check, found nothing new, and waits.
    _wait_until(lambda: _waiting_idle(events), WAIT, "the pool to wait idle")
    return q.put(Job(sample_jobs.add, 20, 22))


@linux_only
def test_an_idle_pool_is_woken_by_inotify(q, slow_fallbacks):
    with litejobs.Worker(q, processes=1, **slow_fallbacks) as worker:
        assert worker._supervisor.idle.watch is not None
        job = _put_on_an_idle_pool(q, worker)
        assert job.wait(timeout=WAIT) == 42


def test_without_inotify_an_idle_pool_polls_data_version(q, monkeypatch, slow_fallbacks):
    monkeypatch.setattr(litejobs._WalWatch, "open", classmethod(lambda cls, path: None))
    with litejobs.Worker(q, processes=1, **slow_fallbacks) as worker:
        assert worker._supervisor.idle.watch is None
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
    fd = worker._supervisor.idle.watch.fd
    worker.stop()
    with pytest.raises(OSError):
        os.fstat(fd)
