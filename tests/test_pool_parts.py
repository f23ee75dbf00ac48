"""The parts of a pool, one at a time: the dispatcher (pure logic, fake
processes, an injected clock), the recorder (a real temporary database, no
processes), the budget of INFO lines, and the supervisor loop stepped on an
injected clock.  How whole pools behave is in test_worker.py and
test_worker_cli.py."""

from __future__ import annotations

import collections
import os
import logging
import sqlite3
import time

import pytest

import litejobs
from litejobs import (COMPLETED, FAILED, PENDING, Job, _Assignment, _Child, _Dispatcher,
                      _Outcome, _Recorder, _RunningSlot, _WriteKind)

import sample_jobs
from waiting import WAIT, wait_until

STEAL = litejobs._STEAL_AFTER


class FakePipe:
    """The supervisor's end of a pipe to a process that is not there."""

    def __init__(self):
        self.sent = []

    def fileno(self):
        return -1

    def send(self, message):
        self.sent.append(message)


def IDLE():
    """The load average of an idle machine: stealing after `_STEAL_AFTER`."""
    return 0.0


def child(number=1, *, ready=True, holding=(), now=0.0, threads=1):
    """A worker process as the supervisor sees it, with no process behind it:
    ready, holding assignments of the job ids ``holding``, heard from at ``now``."""
    slot = _RunningSlot([0.0] * _RunningSlot.size(threads))
    fake = _Child(None, FakePipe(), number, slot, now)
    fake.ready = ready
    for job_id in holding:
        fake.assigned.append(_Assignment(job_id, "token", {"id": job_id}, fake))
    fake.sent = len(holding)
    return fake


def rows(*ids):
    return [{"id": job_id} for job_id in ids]


def quick(dispatcher, jobs=300, seconds=50e-6):
    for _ in range(jobs):
        dispatcher.note_duration(seconds)
    return dispatcher


# -- the dispatcher ---------------------------------------------------------------------------


def test_until_jobs_are_known_to_be_quick_the_dispatcher_sends_one_at_a_time():
    dispatcher = _Dispatcher(None, load=IDLE)
    assert dispatcher.chunk() == (1, 1)
    quick(dispatcher, jobs=litejobs._FAST_EVIDENCE - 1)
    assert dispatcher.chunk() == (1, 1)


def test_a_cold_pools_chunks_grow_with_the_jobs_timed_until_they_hold_their_share_of_work():
    dispatcher = _Dispatcher(None, load=IDLE)
    full = min(litejobs._MAX_CHUNK, int(litejobs._CHUNK_SECONDS / 50e-6))
    chunks = []
    while dispatcher.chunk()[0] < full:
        chunk, most = dispatcher.chunk()
        chunks.append(chunk)
        assert chunk <= max(1, dispatcher.timed_jobs)
        assert most == 2 * chunk or (chunk, most) == (1, 1)
        quick(dispatcher, jobs=most)  # the round: what the process held, done
        assert len(chunks) < 20, chunks
    assert chunks == [1, 1, 2, 6, 18, 54]  # each round's jobs are the next chunk's evidence
    assert dispatcher.chunk() == (full, 2 * full)


def test_quick_jobs_go_ahead_in_chunks_and_slow_ones_one_at_a_time():
    dispatcher = quick(_Dispatcher(None, load=IDLE))
    chunk, most = dispatcher.chunk()
    assert chunk == min(litejobs._MAX_CHUNK, int(litejobs._CHUNK_SECONDS / 50e-6))
    assert most == 2 * chunk
    for _ in range(10):
        dispatcher.note_duration(2.0)
    assert dispatcher.chunk() == (1, 1)
    quick(dispatcher, jobs=60)
    assert dispatcher.chunk()[0] > 1  # quick again: it goes back to chunks


def test_rows_are_dealt_one_by_one_to_the_processes_holding_least():
    dispatcher = quick(_Dispatcher(None, load=IDLE), seconds=0.001)  # a chunk of 5, at most 10 held
    assert dispatcher.chunk() == (5, 10)
    idle, busy = child(1), child(2, holding=[100, 101, 102, 103, 104])
    plan, left = dispatcher.plan(rows(*range(1, 15)), [busy, idle], now=0.0)
    assert [row["id"] for row in plan[idle]] == [1, 3, 5, 7, 9, 11, 12, 13, 14]
    assert [row["id"] for row in plan[busy]] == [2, 4, 6, 8, 10]
    assert left == []
    plan, left = dispatcher.plan(rows(15, 16), [], now=0.0)
    assert plan == {} and [row["id"] for row in left] == [15, 16]  # never loses a row


def test_a_process_not_ready_retiring_stopping_or_being_killed_gets_nothing():
    dispatcher = _Dispatcher(None, load=IDLE)
    starting = child(1, ready=False)
    retiring, stopping, killed = child(2), child(3), child(4)
    retiring.retiring, stopping.stop_sent = True, True
    killed.kill_reason = ("timeout", 7)
    ready = child(5)
    assert dispatcher.rooms([starting, retiring, stopping, killed, ready], now=0.0) == {
        starting: 0, retiring: 0, stopping: 0, killed: 0, ready: 1}


def test_a_process_is_refilled_only_once_a_chunk_of_its_work_is_done():
    dispatcher = quick(_Dispatcher(None, load=IDLE))
    chunk, most = dispatcher.chunk()
    full = child(1, holding=range(most - chunk + 1))
    half = child(2, holding=range(1000, 1000 + most - chunk))
    rooms = dispatcher.rooms([full, half], now=0.0)
    assert rooms == {full: 0, half: chunk}


def test_a_process_with_threads_gets_a_job_for_each_and_is_stuck_only_when_all_are():
    dispatcher = _Dispatcher(None, load=IDLE)
    four = child(1, threads=4)
    assert dispatcher.rooms([four], now=0.0) == {four: 4}  # slow jobs: one a thread
    for lane, job_id in enumerate((1, 2, 3)):
        four.assigned.append(_Assignment(job_id, "token", {"id": job_id}, four))
        four.slot.start(job_id, 10.0, lane)
    assert not dispatcher.stuck(four, now=10.0 + 10 * STEAL)  # a thread is free
    assert dispatcher.rooms([four], now=10.0 + 10 * STEAL) == {four: 1}
    four.assigned.append(_Assignment(4, "token", {"id": 4}, four))
    four.slot.start(4, 10.0 + STEAL, 3)
    assert not dispatcher.stuck(four, now=10.0 + 1.5 * STEAL)
    assert dispatcher.stuck(four, now=10.0 + 2.5 * STEAL)  # every thread busy that long
    four.slot.clear(0)
    assert four.runs() == [(four.assigned[1], 10.0), (four.assigned[2], 10.0),
                           (four.assigned[3], 10.0 + STEAL)]


def test_async_jobs_go_to_the_event_loops_once_their_function_is_known_to_be_async():
    dispatcher = _Dispatcher(None, load=IDLE, async_concurrency=3)
    first, second = child(1), child(2, holding=[50])
    second.assigned[0].on_loop = True  # one async job runs there already
    named = [{"id": n, "name": "app:fetch" if n % 2 else "app:render"} for n in range(1, 9)]
    plan, rest = dispatcher.plan_light(named, [first, second])
    assert plan == {} and rest == named  # no function known to be async yet
    dispatcher.async_names.add("app:fetch")
    assert dispatcher.light_room(first) == 3 and dispatcher.light_room(second) == 2
    plan, rest = dispatcher.plan_light(named, [first, second])
    assert [row["id"] for row in rest] == [2, 4, 6, 8]
    assert sorted(row["id"] for rows_ in plan.values() for row in rows_) == [1, 3, 5, 7]
    assert len(plan[first]) + len(first.assigned) <= 3  # the emptiest loop first
    # A loop over its concurrency takes no synchronous jobs either: its
    # process is full until they start.
    for job_id in range(60, 64):
        first.assigned.append(_Assignment(job_id, "token", {"id": job_id}, first,
                                          light_seq=job_id - 60))
    assert dispatcher.light_room(first) == 0
    assert dispatcher.rooms([first], now=0.0) == {first: 0}
    # Async jobs never make a process stuck, and are never asked back.
    assert not dispatcher.stuck(first, now=100.0)
    assert dispatcher.steals([first, second], now=100.0) == []


def test_max_jobs_per_child_caps_what_a_process_is_given_over_its_life():
    dispatcher = quick(_Dispatcher(max_jobs_per_child=5, load=IDLE))
    fresh = child(1)
    fresh.sent = 3  # three ran already
    assert dispatcher.rooms([fresh], now=0.0) == {fresh: 2}


def test_a_process_running_one_job_past_the_steal_time_is_stuck_and_gets_nothing():
    dispatcher = _Dispatcher(None, load=IDLE)
    slow = child(1, holding=[1, 2, 3])
    slow.slot.start(1, 100.0)
    assert not dispatcher.stuck(slow, 100.0 + STEAL / 2)
    assert dispatcher.stuck(slow, 100.0 + 2 * STEAL)
    assert dispatcher.rooms([slow], 100.0 + 2 * STEAL) == {slow: 0}


def test_a_silent_process_holding_jobs_it_has_not_started_is_stuck():
    dispatcher = _Dispatcher(None, load=IDLE)
    stopped = child(1, holding=[5, 6], now=50.0)  # sent work at 50.0, and never heard of since
    idle = child(2, now=50.0)
    assert not dispatcher.stuck(stopped, 50.0 + STEAL / 2)
    assert dispatcher.stuck(stopped, 50.0 + 2 * STEAL)
    assert not dispatcher.stuck(idle, 50.0 + 100 * STEAL)  # holding nothing, it waits


def test_on_a_machine_with_more_runnable_processes_than_cores_stealing_waits_longer():
    cores = os.cpu_count() or 1
    slow = child(1, holding=[7, 8])
    slow.slot.start(7, 100.0)
    loaded = _Dispatcher(None, load=lambda: 10.0 * cores)  # ten runnable per core
    assert loaded.steal_after == STEAL and not loaded.stuck(slow, 100.0 + 2 * STEAL)
    assert loaded.steal_after == pytest.approx(10 * STEAL)
    assert loaded.stuck(slow, 100.0 + 11 * STEAL)
    assert _Dispatcher(None, load=IDLE).stuck(slow, 100.0 + 2 * STEAL)


def test_the_unstarted_jobs_of_a_stuck_process_are_asked_back_once():
    dispatcher = _Dispatcher(None, load=IDLE)
    slow, other = child(1, holding=[1, 2, 3]), child(2, holding=[4, 5])
    slow.slot.start(1, 10.0)
    other.slot.start(4, 10.0 + 2 * STEAL)
    now = 10.0 + 2 * STEAL
    taken = dispatcher.steals([slow, other], now)
    assert [a.job_id for a in taken] == [2, 3]  # not the running job, not the other's
    for assignment in taken:
        assignment.skip_sent = True
    assert dispatcher.steals([slow, other], now) == []


def test_the_pool_wakes_when_a_process_would_become_stuck_and_not_after():
    dispatcher = _Dispatcher(None, load=IDLE)
    slow, idle = child(1, holding=[1, 2]), child(2)
    slow.slot.start(1, 20.0)
    assert dispatcher.next_steal([slow, idle], 20.0) == pytest.approx(20.0 + STEAL)
    assert dispatcher.next_steal([slow, idle], 20.0 + 2 * STEAL) is None  # stuck already
    alone = child(3, holding=[7])
    alone.slot.start(7, 20.0)
    assert dispatcher.next_steal([alone], 20.0) is None  # nothing behind its job


# -- the recorder -----------------------------------------------------------------------------


@pytest.fixture
def storage(tmp_path):
    """A pool's storage on a fresh database, with a pool's short wait for locks."""
    path = str(tmp_path / "recorder.db")
    litejobs.Queue(path).close()
    storage = litejobs._SQLiteStorage(path, durable=False, create=False, busy_timeout=5,
                                      secrets=(), size_limit=1000)
    storage.wait_for_locks(0.05)
    yield storage
    storage.close()


def claimed(storage, count, *, owner="pool-test"):
    """Put ``count`` jobs and claim them: their assignments, in id order."""
    with litejobs.Queue(storage.path) as q:
        q.put_many([Job(sample_jobs.add, i, i) for i in range(count)])
    now = time.time()
    token, found = storage.claim(owner=owner, queues=None, now=now, expires=now + 60,
                                 limit=count, started=False)
    return [_Assignment(row["id"], token, row, None) for row in found]


def recorder(storage, clock=lambda: 0.0):
    return _Recorder(storage, "pool-test", collections.Counter(), lambda: None,
                     litejobs._Outage("pool-test", clock), clock)


def status_of(storage, job_id):
    return storage.fetch(job_id)["status"]


def test_records_are_written_fenced_together_with_the_next_claim(storage):
    first, second, third = claimed(storage, 3)
    with litejobs.Queue(storage.path) as q:
        fourth = q.put(Job(sample_jobs.add, 2, 2))
    writer = recorder(storage)
    writer.add(_WriteKind.REPORT, third, {"progress": 0.5, "progress_message": "half",
                                          "meta": None})
    writer.add(_WriteKind.OUTCOME, first, _Outcome(ok=True))
    writer.add(_WriteKind.RELEASE, second)
    now = time.time()
    written, token, rows_claimed = writer.write(
        writer.take(), [third], now,
        lambda: storage.claim(owner="pool-test", queues=None, now=now, expires=now + 60,
                              limit=10, started=False), clock=0.0)
    assert [(w.kind, w.status) for w in written] == [
        (_WriteKind.REPORT, None), (_WriteKind.OUTCOME, COMPLETED),
        (_WriteKind.RELEASE, PENDING)]
    assert sorted(row["id"] for row in rows_claimed) == sorted([second.job_id, fourth.id])
    assert third.start_marked and not writer.unwritten()
    assert storage.fetch(third.job_id)["progress"] == 0.5
    assert writer.log(written) is True  # a job went back to pending: claim again
    assert writer.finished == {COMPLETED: 1}


def test_a_write_whose_lease_was_lost_is_fenced_off_and_counted(storage):
    (run,) = claimed(storage, 1)
    stale = _Assignment(run.job_id, "a token of an older claim", run.row, None)
    writer = recorder(storage)
    writer.add(_WriteKind.OUTCOME, stale, _Outcome(ok=True))
    written, _, _ = writer.write(writer.take(), [], time.time(), None, clock=0.0)
    assert [w.status for w in written] == [None]
    assert status_of(storage, run.job_id) == "active"
    writer.log(written)
    assert writer.finished == {"lease lost": 1}


def test_runs_that_completed_with_no_result_are_written_together_without_a_record_each(
        storage, caplog):
    caplog.set_level(logging.WARNING, logger="litejobs")  # completions are not logged
    first, second, third = claimed(storage, 3)
    stale = _Assignment(third.job_id, "a token of an older claim", third.row, None)
    writer = recorder(storage)
    for assignment in (first, second, stale):
        writer.completed(assignment)
    written, _, _ = writer.write(writer.take(), [], time.time(), None, clock=0.0)
    assert [(w.assignment, w.status) for w in written] == [(stale, None)]
    assert [status_of(storage, a.job_id) for a in (first, second, third)] == [
        COMPLETED, COMPLETED, "active"]
    assert writer.log(written) is False
    assert writer.finished == {COMPLETED: 2, "lease lost": 1}
    assert "lease was lost" in caplog.text


def test_a_busy_database_keeps_every_record_for_a_retry_soon(storage):
    first, second = claimed(storage, 2)
    writer = recorder(storage)
    writer.completed(first)
    writer.add(_WriteKind.REPORT, second, {"progress": 0.1, "progress_message": None,
                                           "meta": None})
    blocker = sqlite3.connect(storage.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        assert writer.write(writer.take(), [], time.time(), None, clock=7.0) is None
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert writer.retry_at == 7.0 + litejobs._BUSY_BACKOFF
    kept = writer.take()
    assert [r.kind for r in kept.records] == [_WriteKind.REPORT]
    assert kept.completions == [first]
    assert status_of(storage, first.job_id) == "active"


def test_an_unreachable_database_keeps_every_record_backs_off_and_logs_once(
        storage, monkeypatch, caplog):
    first, second = claimed(storage, 2)
    now = [10.0]
    writer = recorder(storage, clock=lambda: now[0])
    real_write = storage.write
    down = [True]

    def write(**options):
        if down[0]:
            raise litejobs.DatabaseUnreachable("cannot reach PostgreSQL (simulated)")
        return real_write(**options)

    monkeypatch.setattr(storage, "write", write)
    writer.completed(first)
    writer.completed(second)
    retries = []
    for _ in range(8):
        assert writer.write(writer.take(), [], time.time(), None, clock=now[0]) is None
        retries.append(writer.retry_at - now[0])
        now[0] = writer.retry_at
    assert retries == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])  # doubling, to 5 s
    assert writer.take().completions == [first, second]
    writer.completed(first)
    writer.completed(second)
    down[0] = False
    assert writer.write(writer.take(), [], time.time(), None, clock=now[0]) is not None
    assert [status_of(storage, a.job_id) for a in (first, second)] == [COMPLETED, COMPLETED]
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 2, lines
    assert "lost its database" in lines[0] and "reached its database again after" in lines[1]


def test_after_a_batch_fails_each_record_is_written_alone(storage):
    good, bad = claimed(storage, 2)
    writer = recorder(storage)
    writer.completed(good)
    # A job it returned that litejobs' own steps choke on: it fails that job alone.
    writer.add(_WriteKind.OUTCOME, bad, _Outcome(ok=True, follow=[{"not": "a row"}]))
    written, token, rows_claimed = writer.write(writer.take(), [], time.time(), None,
                                                clock=3.0)
    assert (token, rows_claimed) == ("", [])
    assert {w.assignment.job_id: w.status for w in written} == {good.job_id: COMPLETED,
                                                              bad.job_id: FAILED}
    assert storage.fetch(bad.job_id)["error_type"] == "builtins.KeyError"
    assert writer.retry_at == 4.0  # claims wait a second after such an error


# -- the INFO budget ------------------------------------------------------------------------


def test_runs_that_end_well_are_logged_one_by_one_up_to_a_budget_then_counted(caplog):
    now = [0.0]
    budget = litejobs._InfoBudget("pool-test", lambda: now[0])
    caplog.set_level(logging.INFO, logger="litejobs")
    allowed = [budget.take(COMPLETED) for _ in range(litejobs._INFO_LINES + 250)]
    assert allowed == [True] * litejobs._INFO_LINES + [False] * 250
    assert caplog.records == []
    now[0] = 0.5
    budget.take_turn(now[0])
    assert caplog.records == []  # the second is not over
    now[0] = 1.0
    budget.take_turn(now[0])
    (summary,) = caplog.records
    assert "250 more jobs completed in the last 1.0s" in summary.getMessage()
    assert budget.take(COMPLETED) is True  # a new second


def test_a_pool_logs_failures_one_by_one_beyond_the_budget(caplog):
    budget = litejobs._InfoBudget("pool-test", lambda: 0.0)
    caplog.set_level(logging.INFO, logger="litejobs")
    for _ in range(litejobs._INFO_LINES):
        budget.take(COMPLETED)
    row = {"id": 7, "name": "app:job", "attempts": 1}
    litejobs._log_outcome(row, _Outcome(ok=True), COMPLETED, 0.001, budget)
    litejobs._log_outcome(row, _Outcome.failure(ValueError("no")), FAILED, 0.001, budget)
    assert [r.levelno for r in caplog.records] == [logging.ERROR]


# -- the supervisor loop, stepped ----------------------------------------------------------


class Clock:
    """The monotonic clock, plus a jump a test makes."""

    def __init__(self):
        self.ahead = 0.0

    def __call__(self):
        return time.monotonic() + self.ahead


@pytest.fixture
def stepped(q):
    """A pool's supervisor that the test steps, on a clock it can move on."""
    clock = Clock()
    worker = litejobs.Worker(q, processes=1, lease=600)
    supervisor = litejobs._Supervisor(worker, clock=clock)
    assert supervisor._register()
    supervisor.children.fill()
    yield supervisor, clock
    supervisor._abandon(release=True)
    supervisor.selector.close()
    supervisor.idle.close()
    worker._storage.close()


def step_until(supervisor, predicate, what):
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {WAIT}s")
        supervisor.step()


def test_a_stepped_supervisor_kills_a_job_once_its_clock_passes_the_timeout(q, stepped):
    supervisor, clock = stepped
    job = q.put(Job(sample_jobs.sleep_then, 600), timeout=300)
    step_until(supervisor, lambda: supervisor.children.all
               and supervisor.children.all[0].running(job.id), "start of the job")
    supervisor.step()
    assert job.refresh().status == "active"
    clock.ahead = 301.0  # five minutes on, in no time
    step_until(supervisor, lambda: job.refresh().status != "active", "end of the job")
    assert job.status == FAILED and job.error_type == "litejobs.JobTimeout"
