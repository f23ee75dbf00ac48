"""Composition (parallel, serial, returned jobs, callbacks) on real worker pools.

Every test here runs composites on real pools on a real database file: a
`litejobs.Worker` whose supervisor is a thread of this process and whose
children are ``spawn`` processes, or ``python -m litejobs worker`` processes
started with ``subprocess``.  The job functions are module-level functions of
``sample_jobs`` (the ``pool_*`` ones were written for this file), stored by
name and imported by the children.

What these tests are after is what only real processes show:

- that a composite waiting on its parts holds no process: a 1,000-part
  parallel, a tree 5 composites deep and a job that returns a job all
  complete on a pool of ONE process;
- that a serial's parts never overlap, even with a spare process;
- that the end of a composite is decided once, even when its last two parts
  end at the same instant in two processes of one pool, or in two pools
  (threads of this process, then separate OS processes) racing to record
  their outcomes; the postprocess appends a line per run, and the test
  counts the lines;
- that a part whose process is killed with SIGKILL runs again and the
  composite still completes exactly once;
- that cancelling a composite kills its running parts' processes.

Nothing sleeps to wait: the tests poll an observable condition (a marker file
a job writes, a row) with `wait_until` under a deadline, and every wait and
join has a timeout.  The parts that must end together hold each other at a
gate (each waits until its sibling has started), rather than sleeping.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

import litejobs
from backends import is_postgres, outsider
import sample_jobs
from waiting import (WAIT, child_pids, process_ended, read_pid, stop_all, wait_for_pid,
                     wait_until)
from litejobs import ACTIVE, CANCELLED, COMPLETED, FAILED, PENDING, Job

FINISHED = (COMPLETED, FAILED, CANCELLED)



# -- helpers ----------------------------------------------------------------------







def log_lines(path):
    """The lines of a log the jobs append to; [] if nothing wrote it."""
    try:
        with open(path) as handle:
            return handle.read().splitlines()
    except FileNotFoundError:
        return []


def unfinished_counts(q):
    """The counts of the jobs that have not ended (waiting included)."""
    return {status: count for status, count in q.counts().items()
            if status not in FINISHED and count}


def descendants(job):
    """``job``'s children, their children, and so on (depth first)."""
    found = []
    for child in job.children():
        found.append(child)
        found.extend(descendants(child))
    return found


def round_root(q, gate_dir, log_path, tag):
    """A 2-part parallel whose parts end together (each waits until the other
    has started), and a postprocess that appends ``tag`` to ``log_path``."""
    return q.put(litejobs.parallel(
        Job(sample_jobs.pool_part_waiting_for_sibling, gate_dir, tag, 0),
        Job(sample_jobs.pool_part_waiting_for_sibling, gate_dir, tag, 1),
        postprocess=Job(sample_jobs.pool_postprocess_log, log_path, tag)))


def run_rounds_of_parts_ending_together(q, tmp_path, rounds, prefix):
    """Run ``rounds`` such parallels one after another (each needs two free
    processes at once, so they cannot overlap); check each completed with
    both parts completed.  Returns (tags, log path)."""
    gate_dir = tmp_path / "gates"
    gate_dir.mkdir(exist_ok=True)
    log_path = str(tmp_path / f"{prefix}postprocess.log")
    tags = []
    for number in range(rounds):
        tag = f"{prefix}{number}"
        root = round_root(q, str(gate_dir), log_path, tag)
        seen = root.wait(timeout=WAIT)
        assert root.status == COMPLETED, f"round {number}: {root.status} {root.error}"
        assert seen["statuses"] == [COMPLETED, COMPLETED], f"round {number}: {seen}"
        assert seen["results"] == [[tag, 0], [tag, 1]], f"round {number}: {seen}"
        assert root.result == seen
        tags.append(tag)
    return tags, log_path


def assert_each_postprocess_ran_once(tags, log_path):
    runs = collections.Counter(log_lines(log_path))
    assert {tag: n for tag, n in runs.items() if n != 1} == {}, "postprocess ran twice"
    assert sorted(runs) == sorted(tags), "a postprocess never ran, or a stray line"


@pytest.fixture
def q(each_backend):
    """Every test here holds on each backend."""
    return each_backend


@pytest.fixture
def cli_pool(cli_pools):
    """``cli_pool(db, *options)``: a ``python -m litejobs worker`` process
    (`conftest.CliPool`); every such pool is killed at teardown."""
    return cli_pools.start


# -- 1. parallel with postprocess; serial order ---------------------------------------


def test_a_parallel_with_postprocess_completes_on_a_2_process_pool(q, pool, tmp_path):
    log_path = str(tmp_path / "postprocess.log")
    worker = pool(processes=2)
    parts = [Job(sample_jobs.add, i, 10 * i) for i in range(6)] + [Job(sample_jobs.pid)]
    root = q.put(litejobs.parallel(
        *parts, postprocess=Job(sample_jobs.pool_postprocess_log, log_path, "all-good")))
    assert root.composite == "parallel"

    seen = root.wait(timeout=WAIT)

    assert root.status == COMPLETED
    part_jobs = root.children()[:7]
    assert [child.role for child in part_jobs] == ["part"] * 7
    assert seen["all_jobs"] is True  # the postprocess got Job objects
    assert seen["statuses"] == [COMPLETED] * 7
    assert seen["ids"] == [child.id for child in part_jobs]
    assert seen["results"][:6] == [11 * i for i in range(6)]
    assert seen["results"][6] in child_pids(worker)  # a part ran in the pool
    assert log_lines(log_path) == ["all-good"]

    # A failed part is an ended part: the postprocess runs and sees it.
    mixed = q.put(litejobs.parallel(
        Job(sample_jobs.add, 1, 2), Job(sample_jobs.fail, "part broke"),
        postprocess=Job(sample_jobs.pool_postprocess_log, log_path, "mixed")))
    seen = mixed.wait(timeout=WAIT)
    assert mixed.status == COMPLETED
    assert seen["statuses"] == [COMPLETED, FAILED]
    assert seen["results"] == [3, None]
    assert log_lines(log_path) == ["all-good", "mixed"]
    assert worker.crashes == []


def test_a_serial_runs_its_parts_strictly_in_order_on_a_2_process_pool(q, pool, tmp_path):
    spans = str(tmp_path / "spans.log")
    go = str(tmp_path / "go")
    pool(processes=2)
    count = 5
    # Part 0 blocks until the test says go, so the test can look at the chain
    # while it runs; the others take a little time each, so that a part
    # started before its predecessor ended would show as overlapping spans.
    root = q.put(litejobs.serial(
        Job(sample_jobs.pool_span, spans, 0, 0.0, go),
        *[Job(sample_jobs.pool_span, spans, i, 0.05) for i in range(1, count)]))
    assert root.composite == "serial"
    part_jobs = root.children()

    wait_until(lambda: log_lines(spans) == ["start 0"], WAIT, "part 0 to start")
    statuses = [part.refresh().status for part in part_jobs]
    # A spare process is idle, yet part 1's turn has not come.
    assert statuses == [ACTIVE] + [litejobs.WAITING] * (count - 1)
    assert root.refresh().status == litejobs.WAITING
    assert log_lines(spans) == ["start 0"]
    open(go, "w").close()

    assert root.wait(timeout=WAIT) == list(range(count))
    expected = []
    for i in range(count):
        expected += [f"start {i}", f"end {i}"]
    assert log_lines(spans) == expected  # in order, one at a time
    assert all(part.refresh().status == COMPLETED for part in part_jobs)
    # Each part started only after the previous one had finished.
    for before, after in zip(part_jobs, part_jobs[1:]):
        assert after.started_at >= before.finished_at


def test_a_retried_part_is_not_an_ended_part(q, pool, tmp_path):
    log_path = str(tmp_path / "postprocess.log")
    worker = pool(processes=2)
    # Retry applies to every part: flaky(1) fails once, flaky(2) twice.
    root = q.put(litejobs.parallel(
        Job(sample_jobs.flaky, 1), Job(sample_jobs.flaky, 2),
        postprocess=Job(sample_jobs.pool_postprocess_log, log_path, "retried")),
        retry=litejobs.Retry(attempts=3, delay=0))

    seen = root.wait(timeout=WAIT)

    assert seen["statuses"] == [COMPLETED, COMPLETED]
    assert seen["results"] == [2, 3]  # the attempt each part completed on
    assert [part.refresh().attempts for part in root.children()] == [2, 3]
    assert log_lines(log_path) == ["retried"]
    assert worker.crashes == []


# -- 2. a 1,000-part parallel on one process ------------------------------------------


def test_a_1000_part_parallel_completes_on_a_1_process_pool(q, pool):
    count = 1000
    worker = pool(processes=1)
    root = q.put(litejobs.parallel(*[Job(sample_jobs.add, i, i) for i in range(count)]))
    part_ids = [child.id for child in root.children()]
    assert len(part_ids) == count

    # Watch the root and its parts in one read snapshot at a time (one
    # statement): while any part has not ended, the root must be WAITING
    # (holding no process).
    observations = []
    look = ("SELECT (SELECT status FROM litejobs_jobs WHERE id = ?), (SELECT count(*)"
            " FROM litejobs_jobs WHERE parent_id = ? AND status NOT IN (?, ?, ?))")
    if is_postgres(q):
        look = look.replace("?", "%s")
    with outsider(q) as conn:
        deadline = time.monotonic() + WAIT
        while True:
            status, unfinished = conn.execute(look, (root.id, root.id, *FINISHED)).fetchone()
            observations.append((status, unfinished))
            if status in FINISHED:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"the 1000-part parallel did not end in {WAIT}s: root "
                            f"{status}, {unfinished} parts not ended, {q.counts()}")
            time.sleep(0.01)

    assert observations[0][1] > 0  # the watch began while parts were left
    assert [obs for obs in observations if obs[1] > 0 and obs[0] != litejobs.WAITING] == []
    assert root.wait(timeout=WAIT) == [2 * i for i in range(count)]
    assert root.status == COMPLETED
    assert q.counts()["completed"] >= count + 1
    assert unfinished_counts(q) == {}
    assert worker.crashes == []


# -- 3. nested composites ----------------------------------------------------------------


def test_composites_nested_5_deep_complete_on_a_1_process_pool(q, pool):
    # Level 1 is a parallel with a postprocess (the sum of its two parts:
    # 101); each level above alternates serial and parallel and holds
    # [its own add part, the level below], so the result nests likewise.
    tree = litejobs.parallel(Job(sample_jobs.add, 1, 0), Job(sample_jobs.add, 100, 0),
                             postprocess=sample_jobs.pool_sum_parts)
    expected = 101
    for depth in range(2, 6):
        kind = litejobs.serial if depth % 2 == 0 else litejobs.parallel
        tree = kind(Job(sample_jobs.add, depth, 0), tree)
        expected = [depth, expected]
    assert expected == [5, [4, [3, [2, 101]]]]
    worker = pool(processes=1)

    root = q.put(tree)

    assert root.wait(timeout=WAIT) == expected
    assert root.status == COMPLETED
    everything = descendants(root)
    composites = [job for job in [root] + everything if job.composite]
    assert len(composites) == 5
    assert [job.composite for job in composites] == [
        "parallel", "serial", "parallel", "serial", "parallel"]
    assert {job.refresh().status for job in everything} == {COMPLETED}
    assert composites[-1].result == 101
    assert unfinished_counts(q) == {}
    assert worker.crashes == []


# -- 4. a job that returns a job ------------------------------------------------------------


def test_a_job_returning_a_job_frees_the_only_process(q, pool, tmp_path):
    go = str(tmp_path / "go")
    root = q.put(Job(sample_jobs.pool_return_gated_job, go))
    worker = pool(processes=1)

    returned = wait_until(
        lambda: next((c for c in root.children() if c.role == "result"), None),
        WAIT, "the returned job to be stored")
    # The returned job runs, so the returning one gave back the only process.
    litejobs.wait_for_start(returned, timeout=WAIT)
    assert root.refresh().status == litejobs.WAITING
    assert returned.parent() == root
    open(go, "w").close()

    assert root.wait(timeout=WAIT) == 1  # wait_for_file returns its attempt
    assert root.status == COMPLETED
    assert returned.refresh().status == COMPLETED
    assert root.attempts == 1
    assert worker.crashes == []


def test_returned_composites_and_jobs_complete_on_a_1_process_pool(q, pool):
    worker = pool(processes=1)
    returns_parallel = q.put(Job(sample_jobs.pool_return_parallel_of_adds, 20))
    returns_put_job = q.put(Job(sample_jobs.pool_put_and_return_add, 20, 22))
    returns_twice = q.put(Job(sample_jobs.pool_return_job_returning_job, 3, 4))

    assert returns_parallel.wait(timeout=WAIT) == [2 * i for i in range(20)]
    assert returns_put_job.wait(timeout=WAIT) == 42
    assert returns_twice.wait(timeout=WAIT) == 7
    for job in (returns_parallel, returns_put_job, returns_twice):
        assert job.status == COMPLETED
    [inner] = [c for c in returns_parallel.children() if c.role == "result"]
    assert inner.composite == "parallel" and inner.status == COMPLETED
    assert unfinished_counts(q) == {}
    assert worker.crashes == []


# -- 5. callbacks ----------------------------------------------------------------------------


def test_callbacks_run_on_a_pool(q, pool, tmp_path):
    log_path = str(tmp_path / "callbacks.log")

    def describe(tag):
        return Job(sample_jobs.pool_describe_callback_value, log_path, tag)

    ok = q.put(Job(sample_jobs.add, 2, 3))
    bad = q.put(Job(sample_jobs.fail, "nope"))
    root = q.put(litejobs.parallel(Job(sample_jobs.add, 1, 1), Job(sample_jobs.add, 2, 2)))
    # All added before any pool runs, so every parent ends after its callbacks exist.
    on_ok = ok.add_callback(describe("ok"))
    chained = on_ok.add_callback(describe("chained"))
    on_bad = bad.add_callback(describe("bad"))
    on_root = root.add_callback(describe("root"))
    both_on_ok = ok.add_callbacks(success=describe("success-ok"), failure=describe("failure-ok"))
    both_on_bad = bad.add_callbacks(success=describe("success-bad"),
                                    failure=describe("failure-bad"))
    only_success_on_bad = bad.add_callbacks(success=describe("never"))
    assert on_ok.status == litejobs.WAITING and on_ok.role == "callback"
    assert on_ok.parent() == ok

    worker = pool(processes=2)

    assert on_ok.wait(timeout=WAIT) == ["result", 5]
    assert chained.wait(timeout=WAIT) == ["result", ["result", 5]]
    failure = ["failure", FAILED, "builtins.ValueError", bad.id]
    assert on_bad.wait(timeout=WAIT) == failure
    assert on_root.wait(timeout=WAIT) == ["result", [2, 4]]
    assert both_on_ok.wait(timeout=WAIT) == ["result", 5]
    assert both_on_bad.wait(timeout=WAIT) == failure
    with pytest.raises(litejobs.JobCancelled):
        only_success_on_bad.wait(timeout=WAIT)
    assert only_success_on_bad.status == CANCELLED

    # Added to a job that has already ended: pending at once, and run.
    late = ok.add_callback(describe("late"))
    assert late.wait(timeout=WAIT) == ["result", 5]
    assert [child.id for child in ok.children()] == [on_ok.id, both_on_ok.id, late.id]

    runs = collections.Counter(log_lines(log_path))
    assert runs == collections.Counter(
        ["ok", "chained", "bad", "root", "success-ok", "failure-bad", "late"])
    assert unfinished_counts(q) == {}
    assert worker.crashes == []


# -- 6. two parts ending at the same instant ------------------------------------------------


def test_two_parts_ending_together_on_one_pool_run_the_postprocess_once(q, pool, tmp_path):
    worker = pool(processes=2)

    tags, log_path = run_rounds_of_parts_ending_together(q, tmp_path, 50, "one-pool-")

    # Let anything still due run before counting: a graceful stop waits for
    # running jobs; then nothing may be left unfinished.
    worker.stop(grace=10, timeout=WAIT)
    assert unfinished_counts(q) == {}
    assert_each_postprocess_ran_once(tags, log_path)
    assert worker.crashes == []


def test_two_parts_ending_together_in_two_pools_run_the_postprocess_once(q, pool, tmp_path):
    # One process each: the two parts of a round run in different pools, whose
    # supervisors (threads of this process, each on its own connection) race
    # to record the last part's end.
    first = pool(processes=1, poll=0.05)
    second = pool(processes=1, target=litejobs.Queue(q.path), poll=0.05)

    tags, log_path = run_rounds_of_parts_ending_together(q, tmp_path, 30, "two-pools-")

    first.stop(grace=10, timeout=WAIT)
    second.stop(grace=10, timeout=WAIT)
    assert unfinished_counts(q) == {}
    assert_each_postprocess_ran_once(tags, log_path)
    assert first.finished[COMPLETED] > 0 and second.finished[COMPLETED] > 0
    assert first.crashes == second.crashes == []


def test_two_parts_ending_together_in_two_cli_pools_run_the_postprocess_once(
        q, cli_pool, tmp_path):
    # The same race between two separate OS processes.
    pools = [cli_pool(q.path, "--processes", "1", "--lease", "2s", "--poll", "50ms")
             for _ in range(2)]

    tags, log_path = run_rounds_of_parts_ending_together(q, tmp_path, 20, "cli-pools-")

    for started in pools:
        assert started.terminate_and_wait() == 0, started.log()
        assert "Traceback" not in started.log()
    assert unfinished_counts(q) == {}
    assert_each_postprocess_ran_once(tags, log_path)


def test_a_cancel_racing_the_last_parts_end_settles_the_composite_once(q, pool, tmp_path):
    gate_dir = tmp_path / "gates"
    gate_dir.mkdir()
    postprocess_log = str(tmp_path / "postprocess.log")
    callback_log = str(tmp_path / "callback.log")
    worker = pool(processes=2)
    rounds = []
    for number in range(30):
        tag = f"race-{number}"
        root = round_root(q, str(gate_dir), postprocess_log, tag)
        callback = root.add_callback(
            Job(sample_jobs.pool_describe_callback_value, callback_log, tag))
        wait_until(lambda: all((gate_dir / f"{tag}-{k}").exists() for k in (0, 1)),
                   WAIT, f"both parts of {tag} to start")
        # Deliberate: the parts hold 20 ms once both have started; the cancel
        # comes 15 to 25 ms after that, sweeping across the moment they end.
        time.sleep(0.015 + 0.0025 * (number % 5))
        cancelled = root.cancel()
        with contextlib.suppress(litejobs.JobCancelled):
            root.wait(timeout=WAIT)
        received = callback.wait(timeout=WAIT)
        if cancelled:
            assert root.status == CANCELLED, tag
            assert (received[0], received[1], received[3]) == ("failure", CANCELLED, root.id)
        else:  # it had ended already: completed, postprocess and all
            assert root.status == COMPLETED, tag
            assert received == ["result", root.result], tag
        rounds.append((tag, root.status))

    worker.stop(grace=10, timeout=WAIT)
    assert unfinished_counts(q) == {}
    callbacks = collections.Counter(log_lines(callback_log))
    assert callbacks == collections.Counter(tag for tag, _ in rounds)  # once each
    postprocesses = collections.Counter(log_lines(postprocess_log))
    assert max(postprocesses.values(), default=1) == 1, postprocesses
    completed = {tag for tag, status in rounds if status == COMPLETED}
    assert completed <= set(postprocesses)
    assert worker.crashes == []


# -- 7. kill -9 of a part's process -----------------------------------------------------------


def test_kill_9_of_a_running_part_reruns_it_and_the_composite_completes_once(
        q, pool, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    go = str(tmp_path / "go")
    log_path = str(tmp_path / "postprocess.log")
    worker = pool(processes=2, lease=2)
    root = q.put(litejobs.parallel(
        Job(sample_jobs.pool_pid_then_wait, str(markers), "victim", go),
        Job(sample_jobs.add, 1, 2),
        postprocess=Job(sample_jobs.pool_postprocess_log, log_path, "killed")))
    victim_part, sibling = root.children()[:2]

    victim = wait_for_pid(str(markers / "victim-1"))
    assert victim in child_pids(worker)
    # The sibling ends first, so the victim's part is the last one left.
    wait_until(lambda: sibling.refresh().status == COMPLETED, WAIT, "the other part")
    assert root.refresh().status == litejobs.WAITING
    os.kill(victim, signal.SIGKILL)

    # The part runs again (in another process); meanwhile the composite still
    # waits, and its postprocess has not run on a part that never ended.
    rerun = wait_for_pid(str(markers / "victim-2"))
    assert rerun != victim
    assert root.refresh().status == litejobs.WAITING
    assert log_lines(log_path) == []
    open(go, "w").close()

    seen = root.wait(timeout=WAIT)
    assert root.status == COMPLETED
    assert seen["statuses"] == [COMPLETED, COMPLETED]
    assert seen["results"] == [[2, rerun], 3]
    victim_part.refresh()
    assert (victim_part.attempts, victim_part.interruptions) == (2, 1)
    assert len(worker.crashes) == 1 and f"pid {victim}" in worker.crashes[0]

    worker.stop(grace=10, timeout=WAIT)
    assert log_lines(log_path) == ["killed"]  # the postprocess ran exactly once
    assert not (markers / "victim-3").exists()
    assert unfinished_counts(q) == {}


def test_kill_9_during_the_postprocess_runs_it_again_and_not_the_parts(q, pool, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    go = str(tmp_path / "go")
    worker = pool(processes=1, lease=2)
    root = q.put(litejobs.parallel(
        Job(sample_jobs.add, 1, 2), Job(sample_jobs.add, 3, 4),
        postprocess=Job(sample_jobs.pool_postprocess_pid_then_wait, str(markers), go)))
    parts = root.children()

    victim = wait_for_pid(str(markers / "post-1"))
    assert victim in child_pids(worker)
    assert root.refresh().status == ACTIVE  # the root runs its postprocess
    os.kill(victim, signal.SIGKILL)
    rerun = wait_for_pid(str(markers / "post-2"))
    open(go, "w").close()

    assert root.wait(timeout=WAIT) == [2, [COMPLETED, COMPLETED], [3, 7]]
    assert (root.attempts, root.interruptions) == (2, 1)
    assert rerun != victim
    for part in parts:  # the parts ran once; only the postprocess ran again
        part.refresh()
        assert (part.status, part.attempts, part.interruptions) == (COMPLETED, 1, 0)
    assert len(worker.crashes) == 1 and f"pid {victim}" in worker.crashes[0]
    assert unfinished_counts(q) == {}


def test_kill_9_of_a_cli_pool_supervisor_leaves_the_composite_to_another_pool(
        q, cli_pool, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    go = str(tmp_path / "go")
    log_path = str(tmp_path / "postprocess.log")
    root = q.put(litejobs.parallel(
        Job(sample_jobs.pool_pid_then_wait, str(markers), "a", go),
        Job(sample_jobs.pool_pid_then_wait, str(markers), "b", go),
        postprocess=Job(sample_jobs.pool_postprocess_log, log_path, "recovered")))
    parts = root.children()
    pool_a = cli_pool(q.path, "--processes", "2", "--lease", "1s")
    first_runs = [wait_until(lambda: read_pid(str(markers / f"{label}-1")), WAIT,
                             f"part {label} to start", pool_a.log) for label in ("a", "b")]
    # Killed once the pool has recorded that the runs began: they are then
    # interruptions (a run not yet recorded as begun is taken back as not started).
    wait_until(lambda: all(not part.refresh()._row["unstarted"] for part in parts), WAIT,
               "the pool to record that the parts began", pool_a.log)

    pool_a.proc.send_signal(signal.SIGKILL)  # the supervisor only
    assert pool_a.proc.wait(timeout=WAIT) == -signal.SIGKILL
    # Its children notice their supervisor is gone and exit without an outcome.
    for pid in first_runs:
        wait_until(lambda: process_ended(pid), WAIT, f"orphaned child {pid} to exit")
    assert root.refresh().status == litejobs.WAITING
    assert log_lines(log_path) == []
    open(go, "w").close()

    pool_b = cli_pool(q.path, "--processes", "2", "--lease", "1s")
    seen = root.wait(timeout=WAIT)

    assert root.status == COMPLETED
    assert seen["statuses"] == [COMPLETED, COMPLETED]
    reruns = [read_pid(str(markers / f"{label}-2")) for label in ("a", "b")]
    assert seen["results"] == [[2, reruns[0]], [2, reruns[1]]]
    for part in parts:
        part.refresh()
        assert (part.attempts, part.interruptions) == (2, 1)
    assert pool_b.terminate_and_wait() == 0, pool_b.log()
    assert log_lines(log_path) == ["recovered"]  # the postprocess ran exactly once
    assert sorted(os.listdir(markers)) == ["a-1", "a-2", "b-1", "b-2"]
    assert unfinished_counts(q) == {}


# -- 8. cancel of a composite while its parts run -----------------------------------------------


def test_cancel_of_a_parallel_kills_its_running_parts(q, pool, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    go = str(tmp_path / "go")
    ran = str(tmp_path / "ran.log")
    postprocess_log = str(tmp_path / "postprocess.log")
    callback_log = str(tmp_path / "callback.log")
    worker = pool(processes=2, lease=2)
    root = q.put(litejobs.parallel(
        Job(sample_jobs.pool_pid_then_wait, str(markers), "a", go),
        Job(sample_jobs.pool_pid_then_wait, str(markers), "b", go),
        *[Job(sample_jobs.append_line, ran, f"pending {i}") for i in range(3)],
        postprocess=Job(sample_jobs.pool_postprocess_log, postprocess_log, "never")))
    callback = root.add_callback(
        Job(sample_jobs.pool_describe_callback_value, callback_log, "root"))
    parts = root.children()[:5]
    running = [wait_for_pid(str(markers / f"{label}-1")) for label in ("a", "b")]
    assert set(running) <= set(child_pids(worker))

    asked = time.monotonic()
    assert root.cancel() is True

    assert root.refresh().status == CANCELLED  # at once
    for part in parts[2:]:  # never started: cancelled at once
        assert part.refresh().status == CANCELLED
    for part in parts[:2]:
        wait_until(lambda: part.refresh().status == CANCELLED, 5,
                   f"running part {part.id} to end cancelled")
    for pid in running:
        wait_until(lambda: process_ended(pid), 5, f"the process {pid} of a cancelled part")
    assert time.monotonic() - asked < 5
    with pytest.raises(litejobs.JobCancelled):
        root.wait(timeout=WAIT)

    received = callback.wait(timeout=WAIT)
    assert (received[0], received[1], received[3]) == ("failure", CANCELLED, root.id)
    assert log_lines(callback_log) == ["root"]

    # The pool carries on; the cancelled parts never run again.
    open(go, "w").close()
    assert q.put(Job(sample_jobs.add, 4, 5)).wait(timeout=WAIT) == 9
    worker.stop(grace=10, timeout=WAIT)
    assert sorted(os.listdir(markers)) == ["a-1", "b-1"]
    assert log_lines(ran) == [] and log_lines(postprocess_log) == []
    assert all(part.refresh().status == CANCELLED for part in parts)
    assert unfinished_counts(q) == {}
    assert worker.crashes == []


def test_cancel_of_a_job_waiting_on_its_returned_job_kills_that_job(q, pool, tmp_path):
    go = str(tmp_path / "go")
    callback_log = str(tmp_path / "callback.log")
    root = q.put(Job(sample_jobs.pool_return_gated_job, go))
    callback = root.add_callback(
        Job(sample_jobs.pool_describe_callback_value, callback_log, "root"))
    worker = pool(processes=1, lease=2)
    returned = wait_until(
        lambda: next((c for c in root.children() if c.role == "result"), None),
        WAIT, "the returned job to be stored")
    litejobs.wait_for_start(returned, timeout=WAIT)
    [runner] = child_pids(worker)  # the only process runs the returned job

    assert root.cancel() is True

    assert root.refresh().status == CANCELLED
    wait_until(lambda: returned.refresh().status == CANCELLED, 5, "the returned job to end")
    wait_until(lambda: process_ended(runner), 5, "the returned job's process to end")
    received = callback.wait(timeout=WAIT)
    assert (received[0], received[1], received[3]) == ("failure", CANCELLED, root.id)
    open(go, "w").close()
    assert q.put(Job(sample_jobs.add, 2, 2)).wait(timeout=WAIT) == 4
    assert returned.refresh().attempts == 1  # never run again
    assert unfinished_counts(q) == {}
    assert worker.crashes == []


def test_cancel_of_a_serial_kills_its_running_part_and_cancels_the_rest(q, pool, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    go = str(tmp_path / "go")
    ran = str(tmp_path / "ran.log")
    worker = pool(processes=1, lease=2)
    root = q.put(litejobs.serial(
        Job(sample_jobs.pool_pid_then_wait, str(markers), "first", go),
        Job(sample_jobs.append_line, ran, "second"),
        Job(sample_jobs.append_line, ran, "third")))
    parts = root.children()
    runner = wait_for_pid(str(markers / "first-1"))
    assert [part.refresh().status for part in parts] == [
        ACTIVE, litejobs.WAITING, litejobs.WAITING]

    assert root.cancel() is True

    assert root.refresh().status == CANCELLED
    assert [part.refresh().status for part in parts[1:]] == [CANCELLED, CANCELLED]
    wait_until(lambda: parts[0].refresh().status == CANCELLED, 5, "the running part to end")
    wait_until(lambda: process_ended(runner), 5, "the running part's process to end")
    open(go, "w").close()
    assert q.put(Job(sample_jobs.add, 1, 1)).wait(timeout=WAIT) == 2
    worker.stop(grace=10, timeout=WAIT)
    assert log_lines(ran) == []
    assert sorted(os.listdir(markers)) == ["first-1"]
    assert q.counts()[PENDING] == 0 and unfinished_counts(q) == {}
    assert worker.crashes == []


# -- callbacks and postprocesses retry interruptions for ever -------------------------------


def test_a_callback_retries_interruptions_past_the_limit_of_jobs_waiting_longer_each_time(
        q, pool, tmp_path, monkeypatch, caplog):
    """zc.async retries a callback's interruptions for ever: it is the
    clean-up that must run.  Here a callback kills its process 5 times (a
    plain job fails after 3) and still runs; each retry after the first
    waits twice as long as the one before, up to the cap, and says so."""
    monkeypatch.setattr(litejobs, "_INTERRUPTION_BACKOFF", (0.05, 0.2))
    caplog.set_level(logging.WARNING, logger="litejobs")
    worker = pool(processes=1)
    job = q.put(Job(sample_jobs.add, 1, 1))
    forever = job.add_callback(Job(sample_jobs.count_runs_then_kill, str(tmp_path / "a"), 5))
    limited = job.add_callback(Job(sample_jobs.count_runs_then_kill, str(tmp_path / "b"), 5),
                               max_interruptions=1)
    plain = q.put(Job(sample_jobs.count_runs_then_kill, str(tmp_path / "c"), 5))

    assert forever.wait(timeout=WAIT) == 6
    assert (forever.interruptions, forever.max_interruptions) == (5, None)
    with pytest.raises(litejobs.JobFailed, match="Interrupted"):
        limited.wait(timeout=WAIT)
    assert limited.interruptions == 2
    with pytest.raises(litejobs.JobFailed, match="Interrupted"):
        plain.wait(timeout=WAIT)
    assert plain.interruptions == 4
    waits = [record.getMessage().rsplit("runs again ", 1)[1] for record in caplog.records
             if f"job {forever.id} " in record.getMessage()
             and "retries interruptions for ever" in record.getMessage()]
    assert waits == ["at once", "in 50ms", "in 100ms", "in 200ms", "in 200ms"], waits
    stop_all([worker])


def test_a_postprocess_retries_interruptions_for_ever_unless_told_otherwise(q):
    comp = q.put(litejobs.parallel(Job(sample_jobs.add, 1, 1)))
    assert comp.max_interruptions is None and comp.children()[0].max_interruptions == 3
    told = q.put(litejobs.parallel(Job(sample_jobs.add, 1, 1)), max_interruptions=2)
    assert told.max_interruptions == 2 and told.children()[0].max_interruptions == 2
