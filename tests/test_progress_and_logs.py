"""Progress and meta of running jobs, and logging: in-process (``run_pending``),
on real pools (``q.worker``), and from ``python -m litejobs worker --log-format json``.

Progress is written through ``_SQLiteStorage.report`` (in-process, straight
from the job's thread and its throttling timer; in pools, by the supervisor,
fenced by the lease, in its batch transaction).  In-process tests spy on
``q._storage.report`` and monkeypatch ``litejobs._PROGRESS_INTERVAL``; pool
children are spawned, so they keep the real interval (1 s) and the tests wait
for what they expect under a deadline.  Jobs are in ``sample_jobs``.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid

import pytest

import litejobs
import sample_jobs
from litejobs import ACTIVE, COMPLETED, FAILED, Job, Retry
from waiting import WAIT, wait_until

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS_DIR)
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [TESTS_DIR, ROOT] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))


# -- helpers ---------------------------------------------------------------------------


def raw_row(path, job_id):
    """The job's row read with plain sqlite3, outside litejobs."""
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        row = conn.execute("SELECT * FROM litejobs_jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else dict(row)
    finally:
        conn.close()


def steal(path, job_id, token):
    """Give an active job's lease to another (imaginary) attempt."""
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        changed = conn.execute(
            "UPDATE litejobs_jobs SET lease_token = ?, lease_owner = 'thief',"
            " lease_expires = ? WHERE id = ? AND status = 'active'",
            (token, time.time() + 600, job_id)).rowcount
    finally:
        conn.close()
    assert changed == 1


class ReportSpy:
    """Stands in for ``q._storage.report``: counts the writes, with the
    monotonic time and the fields of each, and passes them on."""

    def __init__(self, real):
        self.real = real
        self.calls = []
        self.lock = threading.Lock()

    def __call__(self, reports):
        reports = list(reports)
        with self.lock:
            self.calls.append((time.monotonic(), [dict(fields) for _, _, fields in reports]))
        return self.real(reports)


@pytest.fixture
def pool(q):
    """``pool(**options)`` starts ``q.worker(...)``; every pool is stopped at
    teardown with no grace, so a test that fails while a job waits on a gate
    does not hang."""
    started = []

    def start(processes=1, **options):
        worker = q.worker(processes=processes, **options)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop(grace=0, timeout=30)
        assert not worker.alive


def records_for(caplog, job_id, logger="litejobs"):
    return [r for r in list(caplog.records)
            if r.name == logger and getattr(r, "job_id", None) == job_id]


# -- 1. progress and meta through run_pending ---------------------------------------------


def test_progress_and_meta_are_none_and_empty_before_any_report(q):
    job = q.put(Job(sample_jobs.add, 1, 2))
    assert job.progress is None and job.progress_message is None and job.meta == {}
    q.run_pending()
    job.refresh()
    assert job.status == COMPLETED
    assert job.progress is None and job.progress_message is None and job.meta == {}


def test_progress_and_meta_are_visible_after_refresh(q):
    job = q.put(Job(sample_jobs.report_progress, 4, note="counted"))
    assert q.run_pending() == 1
    assert job.progress is None  # not refreshed yet
    job.refresh()
    assert job.status == COMPLETED and job.result == 4
    assert job.progress == 1.0
    assert job.progress_message == "step 4 of 4"
    assert job.meta == {"note": "counted", "steps": 4}
    # A second handle on the row reads the same.
    again = q.get(job.id)
    assert (again.progress, again.progress_message, again.meta) == (
        1.0, "step 4 of 4", {"note": "counted", "steps": 4})


def test_the_running_job_reads_its_own_latest_values(q):
    job = q.put(Job(sample_jobs.call_on_current_job, "set_progress", 0.25, "a quarter"))
    q.run_pending()
    assert job.wait(timeout=5) == {"progress": 0.25, "message": "a quarter", "meta": {}}
    assert (job.progress, job.progress_message) == (0.25, "a quarter")


def test_update_meta_merges_and_keeps_json_values(q):
    first = q.put(Job(sample_jobs.call_on_current_job, "update_meta",
                      rows=3, name="ünïcode", ratio=0.5, ok=True, nothing=None,
                      nested={"a": [1, 2, {"b": "c"}]}))
    q.run_pending()
    expected = {"rows": 3, "name": "ünïcode", "ratio": 0.5, "ok": True, "nothing": None,
                "nested": {"a": [1, 2, {"b": "c"}]}}
    assert first.wait(timeout=5)["meta"] == expected
    assert first.meta == expected
    # Integers and 0 / 1 are fractions too; meta of exactly the limit is accepted.
    for fraction in (0, 1, 0.0, 1.0):
        job = q.put(Job(sample_jobs.call_on_current_job, "set_progress", fraction))
        q.run_pending()
        assert job.wait(timeout=5)["progress"] == fraction
        assert job.progress == float(fraction) and job.progress_message is None
    filler = "x" * (litejobs._META_MOST - len('{"x":""}'))
    at_limit = q.put(Job(sample_jobs.call_on_current_job, "update_meta", x=filler))
    q.run_pending()
    at_limit.wait(timeout=5)
    assert at_limit.meta == {"x": filler}


@pytest.mark.parametrize("method, args, kwargs, error_type", [
    ("set_progress", (1.5,), {}, "builtins.ValueError"),
    ("set_progress", (-0.01,), {}, "builtins.ValueError"),
    ("set_progress", (float("nan"),), {}, "builtins.ValueError"),
    ("set_progress", (float("inf"),), {}, "builtins.ValueError"),
    ("set_progress", (True,), {}, "builtins.ValueError"),
    ("set_progress", (False,), {}, "builtins.ValueError"),
    ("set_progress", ("0.5",), {}, "builtins.ValueError"),
    ("set_progress", (None,), {}, "builtins.ValueError"),
    ("set_progress", (0.5, 7), {}, "builtins.TypeError"),
    ("set_progress", (0.5, b"bytes"), {}, "builtins.TypeError"),
    ("update_meta", (), {"items": {1, 2}}, "builtins.TypeError"),
    ("update_meta", (), {"when": datetime.date(2024, 1, 1)}, "builtins.TypeError"),
    ("update_meta", (), {"ratio": float("nan")}, "builtins.TypeError"),
    ("update_meta", (), {"big": "x" * (64 * 1024)}, "builtins.ValueError"),
    ("update_meta", (), {"x": "x" * (64 * 1024 - len('{"x":""}') + 1)}, "builtins.ValueError"),
], ids=["above-1", "below-0", "nan", "inf", "true", "false", "str", "none",
        "int-message", "bytes-message", "set-meta", "date-meta", "nan-meta",
        "meta-over-64KiB", "meta-one-byte-over"])
def test_bad_progress_or_meta_fails_the_job_with_the_right_error(q, method, args, kwargs,
                                                                 error_type):
    job = q.put(Job(sample_jobs.call_on_current_job, method, *args, **kwargs))
    assert q.run_pending() == 1
    job.refresh()
    assert job.status == FAILED
    assert job.error_type == error_type, job.error
    # Nothing of the refused call was kept.
    assert job.progress is None and job.progress_message is None and job.meta == {}


def test_meta_over_the_limit_counts_what_is_already_there(q):
    half = "y" * (40 * 1024)
    one = q.put(Job(sample_jobs.update_meta_twice, {"a": half}, {"c": 1}))
    both = q.put(Job(sample_jobs.update_meta_twice, {"a": half}, {"b": half}))
    q.run_pending()
    assert one.wait(timeout=5) == {"a": half, "c": 1}
    both.refresh()
    assert both.status == FAILED and both.error_type == "builtins.ValueError", both.error
    # What the first update wrote stays.
    assert both.meta == {"a": half}


def test_set_progress_outside_the_running_job_raises(q):
    unbound = Job(sample_jobs.add, 1, 2)
    with pytest.raises(litejobs.LitejobsError):
        unbound.set_progress(0.5)
    with pytest.raises(litejobs.LitejobsError):
        unbound.update_meta(a=1)  # not put yet: there is no row to write
    pending = q.put(Job(sample_jobs.add, 1, 2))
    with pytest.raises(litejobs.LitejobsError):
        pending.set_progress(0.5)
    # Claimed (active), but not running in this thread.
    token, claimed = q._storage.claim(owner="elsewhere", queues=None, now=time.time() + 1,
                                      expires=time.time() + 60, limit=1)
    assert [row["id"] for row in claimed] == [pending.id]
    assert pending.refresh().status == ACTIVE
    with pytest.raises(litejobs.LitejobsError):
        pending.set_progress(0.5, "from outside")
    assert raw_row(q.path, pending.id)["progress"] is None
    # Ended.
    done = q.put(Job(sample_jobs.add, 3, 4))
    q.run_pending()
    assert done.wait(timeout=5) == 7
    with pytest.raises(litejobs.LitejobsError):
        done.set_progress(1.0)
    # Inside the running job, but on another Job object for the same row.
    other = q.put(Job(sample_jobs.set_progress_on_another_handle))
    q.run_pending()
    assert other.wait(timeout=5) == "LitejobsError"
    assert other.progress is None


# -- 2. throttling ---------------------------------------------------------------------------


def test_a_tight_loop_of_set_progress_is_throttled_and_ends_on_the_last_value(q, monkeypatch):
    interval = 0.1
    monkeypatch.setattr(litejobs, "_PROGRESS_INTERVAL", interval)
    spy = ReportSpy(q._storage.report)
    monkeypatch.setattr(q._storage, "report", spy)
    job = q.put(Job(sample_jobs.spin_progress, 1.0))

    started = time.monotonic()
    assert q.run_pending() == 1
    elapsed = time.monotonic() - started

    calls = job.wait(timeout=5)
    assert calls >= 2000, f"only {calls} set_progress calls: the test proves little"
    writes = len(spy.calls)
    assert 2 <= writes <= elapsed / interval + 2, (
        f"{writes} writes for {calls} calls in {elapsed:.3f}s at one per {interval}s")
    # One write per interval at most, but for the last, made as the job ends.
    times = [at for at, _ in spy.calls]
    gaps = [later - earlier for earlier, later in zip(times[:-2], times[1:-1])]
    assert min(gaps, default=interval) >= interval - 0.01, gaps
    # The last value was written, and before the outcome (the fenced write
    # would have changed nothing after it).
    assert spy.calls[-1][1] == [{"progress": 1.0, "message": "done", "meta": {}}]
    assert (job.progress, job.progress_message) == (1.0, "done")


def test_the_latest_value_reaches_the_database_within_the_interval_while_running(
        q, monkeypatch, tmp_path):
    interval = 0.3
    monkeypatch.setattr(litejobs, "_PROGRESS_INTERVAL", interval)
    go = str(tmp_path / "go")
    job = q.put(Job(sample_jobs.progress_then_wait, go,
                    [[0.1, "first"], [0.2, "second"]], {"phase": "copying"}))
    errors = []

    def run():
        try:
            q.run_pending()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    runner = threading.Thread(target=run, daemon=True, name="test-run-pending")
    runner.start()
    try:
        # The first value is written at once; the rest (set right after it)
        # by the timer, within the interval.
        first = wait_until(lambda: (raw_row(q.path, job.id) or {}).get("progress") is not None,
                           WAIT, "the first progress write")
        seen_first = time.monotonic()
        row = wait_until(
            lambda: (lambda r: r if r["progress"] == 0.2 else None)(raw_row(q.path, job.id)),
            interval + 2.0, "the latest progress, written by the timer")
        waited = time.monotonic() - seen_first
        assert first is True
        assert waited <= interval + 0.5, f"the latest value took {waited:.3f}s"
        assert row["status"] == ACTIVE
        assert row["progress_message"] == "second"
        assert json.loads(row["meta"]) == {"phase": "copying"}
    finally:
        open(go, "w").close()
        runner.join(timeout=WAIT)
    assert not runner.is_alive() and errors == []
    assert job.wait(timeout=5) == "through"


# -- 3. real pools ---------------------------------------------------------------------------


def test_a_childs_progress_and_meta_are_visible_while_it_runs_and_after(q, pool, tmp_path):
    go = str(tmp_path / "go")
    worker = pool(processes=1)
    job = q.put(Job(sample_jobs.progress_then_wait, go, [[0.5, "half way"]],
                    {"stage": "copy", "files": 3}, [[0.9, "almost"], [1.0, "all done"]]))

    def reported():
        job.refresh()
        return job.meta == {"stage": "copy", "files": 3} and job.progress == 0.5

    wait_until(reported, WAIT, "the child's progress and meta in the database",
               lambda: f"{job!r}: {job.progress} {job.progress_message} {job.meta}")
    assert job.status == ACTIVE
    assert job.progress_message == "half way"

    open(go, "w").close()
    assert job.wait(timeout=WAIT) == "through"
    assert (job.progress, job.progress_message) == (1.0, "all done")
    assert job.meta == {"stage": "copy", "files": 3}
    assert job.ran_by == worker.id
    assert worker.crashes == []


def test_the_report_of_a_run_that_lost_its_lease_changes_nothing(q, pool, tmp_path):
    go = str(tmp_path / "go")
    worker = pool(processes=1, lease=30)  # renewed every 10 s: nothing notices the theft
    job = q.put(Job(sample_jobs.progress_then_wait, go, [[0.25, "before"]], {"k": 1},
                    [[0.75, "after"]]))
    wait_until(lambda: job.refresh().progress == 0.25 and job.meta == {"k": 1}, WAIT,
               "the first report")
    real_token = raw_row(q.path, job.id)["lease_token"]
    assert real_token

    # Straight through the storage: a wrong token changes nothing ...
    q._storage.report([(job.id, "wrong-token",
                        {"progress": 0.99, "message": "forged", "meta": {"forged": True}})])
    row = raw_row(q.path, job.id)
    assert (row["progress"], row["progress_message"], json.loads(row["meta"])) == (
        0.25, "before", {"k": 1})

    # ... and the pool's own report, once another attempt holds the lease.
    steal(q.path, job.id, "another-attempt")
    open(go, "w").close()
    wait_until(lambda: worker.finished["lease lost"] == 1, WAIT, "the discarded outcome")
    row = raw_row(q.path, job.id)
    assert row["status"] == ACTIVE and row["lease_token"] == "another-attempt"
    assert (row["progress"], row["progress_message"], json.loads(row["meta"])) == (
        0.25, "before", {"k": 1})

    # The token that does hold the lease is let through (the fence is the token).
    q._storage.report([(job.id, "another-attempt",
                        {"progress": 0.5, "message": "thief", "meta": {"thief": 1}})])
    row = raw_row(q.path, job.id)
    assert (row["progress"], row["progress_message"], json.loads(row["meta"])) == (
        0.5, "thief", {"k": 1, "thief": 1})
    # And a report for a job that has ended changes nothing either.
    done = q.put(Job(sample_jobs.report_progress, 2))
    assert done.wait(timeout=WAIT) == 2
    before = raw_row(q.path, done.id)
    q._storage.report([(done.id, before["lease_token"] or "any",
                        {"progress": 0.1, "message": "late", "meta": None})])
    assert raw_row(q.path, done.id) == before


def test_a_report_with_a_stale_token_changes_nothing_in_process(q, now):
    job = q.put(Job(sample_jobs.add, 1, 1))
    stale, _ = q._storage.claim(owner="slow", queues=None, now=now.timestamp(),
                                expires=now.timestamp() + 5, limit=1)
    q._storage.report([(job.id, stale, {"progress": 0.3, "message": "mine", "meta": None})])
    assert raw_row(q.path, job.id)["progress"] == 0.3
    later = now.timestamp() + 6  # the stale lease ran out; another attempt claims it
    fresh, claimed = q._storage.claim(owner="fast", queues=None, now=later,
                                      expires=later + 5, limit=1)
    assert [row["id"] for row in claimed] == [job.id] and fresh != stale
    q._storage.report([(job.id, stale, {"progress": 0.9, "message": "stale", "meta": None})])
    row = raw_row(q.path, job.id)
    assert (row["progress"], row["progress_message"]) == (0.3, "mine")
    q._storage.report([(job.id, fresh, {"progress": 0.6, "message": "fresh", "meta": None})])
    assert raw_row(q.path, job.id)["progress"] == 0.6


# -- 4. logging --------------------------------------------------------------------------------


def assert_job_fields(record, job, attempt, with_duration=True):
    assert record.job_id == job.id
    assert record.job == job.name
    assert record.attempt == attempt
    if with_duration:
        assert isinstance(record.duration, float) and 0 <= record.duration < 60


def test_run_pending_logs_completed_failed_and_retried_with_job_fields(q, caplog):
    caplog.set_level(logging.DEBUG, logger="litejobs")
    good = q.put(Job(sample_jobs.add, 2, 3))
    bad = q.put(Job(sample_jobs.fail, "logged boom"))
    flaky = q.put(Job(sample_jobs.flaky, 1), retry=Retry(attempts=2, delay=0))
    assert q.run_pending() == 4

    put = [r for r in records_for(caplog, good.id) if r.levelno == logging.DEBUG
           and "put" in r.getMessage()]
    assert put, [r.getMessage() for r in records_for(caplog, good.id)]

    completed = [r for r in records_for(caplog, good.id) if r.levelno == logging.INFO]
    assert len(completed) == 1 and "completed" in completed[0].getMessage()
    assert_job_fields(completed[0], good, 1)

    failed = [r for r in records_for(caplog, bad.id) if r.levelno >= logging.WARNING]
    assert len(failed) == 1
    assert failed[0].levelno == logging.ERROR and "failed" in failed[0].getMessage()
    text = failed[0].getMessage()
    assert "Traceback (most recent call last)" in text
    assert "ValueError: logged boom" in text
    assert_job_fields(failed[0], bad, 1)

    flaky_records = [r for r in records_for(caplog, flaky.id) if r.levelno >= logging.INFO]
    assert [r.levelno for r in flaky_records] == [logging.WARNING, logging.INFO]
    retried, done = flaky_records
    assert "retried" in retried.getMessage() and "ConnectionError: attempt 1" in \
        retried.getMessage()
    assert_job_fields(retried, flaky, 1)
    assert "completed" in done.getMessage()
    assert_job_fields(done, flaky, 2)

    started = [r for r in records_for(caplog, good.id) if r.levelno == logging.DEBUG
               and "started" in r.getMessage()]
    assert len(started) == 1 and started[0].attempt == 1


def test_an_interrupted_run_is_logged_as_a_warning_with_its_job_id(q, now, caplog):
    caplog.set_level(logging.DEBUG, logger="litejobs")
    job = q.put(Job(sample_jobs.add, 1, 1))
    q._storage.claim(owner="crashed", queues=None, now=now.timestamp(),
                     expires=now.timestamp() + 1, limit=1)
    assert q.run_pending(now=now + datetime.timedelta(minutes=1)) == 1
    assert job.wait(timeout=5) == 2
    interrupted = [r for r in caplog.records if r.name == "litejobs"
                   and r.levelno == logging.WARNING and "interrupted" in r.getMessage()]
    assert len(interrupted) == 1, [r.getMessage() for r in caplog.records]
    assert getattr(interrupted[0], "job_id", None) == job.id
    assert getattr(interrupted[0], "job", None) == job.name
    assert getattr(interrupted[0], "attempt", None) == 1


def test_a_jobs_own_log_line_reaches_the_pool_log_with_its_job_id(q, pool, caplog):
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="litejobs")
    worker = pool(processes=1)
    text = f"hello from the job {uuid.uuid4().hex}"
    job = q.put(Job(sample_jobs.log_a_line, text))
    assert job.wait(timeout=WAIT) == text

    def line():
        found = [r for r in list(caplog.records)
                 if r.name == "sample_jobs.app" and r.getMessage() == text]
        return found or None

    found = wait_until(line, WAIT, "the job's log line in the test's logging",
                       lambda: "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records))
    assert len(found) == 1
    record = found[0]
    assert record.levelno == logging.WARNING
    assert record.job_id == job.id
    assert record.processName.startswith("litejobs-child"), record.processName
    assert record.process != os.getpid()

    # litejobs's own records: the child's "started" (DEBUG) is forwarded the
    # same way; the supervisor's "completed" carries the job's fields.
    started = wait_until(lambda: [r for r in records_for(caplog, job.id)
                                  if "started" in r.getMessage()], WAIT,
                         "the child's started record")
    assert started[0].processName.startswith("litejobs-child")
    assert started[0].process == record.process
    completed = wait_until(lambda: [r for r in records_for(caplog, job.id)
                                    if r.levelno == logging.INFO
                                    and "completed" in r.getMessage()], WAIT,
                           "the completed record")
    assert_job_fields(completed[0], job, 1)
    assert completed[0].process == os.getpid()
    assert worker.crashes == []


def logging_state():
    def of(logger):
        return (list(logger.handlers), logger.level, logger.propagate, logger.disabled,
                list(logger.filters))

    return {"root": of(logging.getLogger()), "litejobs": of(logging.getLogger("litejobs")),
            "app": of(logging.getLogger("sample_jobs.app")),
            "disable": logging.root.manager.disable,
            "last_resort": logging.lastResort}


def test_a_pool_configures_nothing_globally(q):
    before = logging_state()
    worker = q.worker(processes=1)
    try:
        assert logging_state() == before
        text = f"a line {uuid.uuid4().hex}"
        assert q.put(Job(sample_jobs.log_a_line, text)).wait(timeout=WAIT) == text
        assert logging_state() == before
    finally:
        worker.stop(grace=0, timeout=30)
    assert not worker.alive
    assert logging_state() == before


# -- 5. python -m litejobs worker --log-format json -------------------------------------------


def run_json_worker(q, tmp_path):
    """Put a completing, a failing and a logging job, run ``python -m litejobs
    worker DB --burst --log-format json --log-level info``; return the jobs,
    the parsed stderr lines and the stderr text."""
    good = q.put(Job(sample_jobs.add, 2, 3))
    bad = q.put(Job(sample_jobs.fail, "json boom"))
    text = f"the job speaks {uuid.uuid4().hex}"
    talker = q.put(Job(sample_jobs.log_a_line, text))
    q.close()

    done = subprocess.run(
        [sys.executable, "-m", "litejobs", "worker", q.path, "--burst", "-p", "1",
         "--log-format", "json", "--log-level", "info"],
        cwd=tmp_path, env=ENV, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            pytest.fail(f"a stderr line is not JSON: {line!r}\n{done.stderr}")
        assert isinstance(entry, dict), line
        entries.append(entry)
    return (good, bad, talker, text), entries, done.stderr


def test_the_worker_command_logs_one_json_object_per_line(q, tmp_path):
    (good, bad, talker, text), entries, stderr = run_json_worker(q, tmp_path)
    for entry in entries:
        assert {"time", "level", "logger", "process", "pid", "message"} <= set(entry), entry
        assert entry["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
        assert isinstance(entry["pid"], int) and isinstance(entry["message"], str)
        assert entry["time"].endswith("Z"), entry  # ISO 8601 UTC
        datetime.datetime.fromisoformat(entry["time"][:-1])
    # --log-level info: no DEBUG lines.
    assert not [e for e in entries if e["level"] == "DEBUG"], stderr

    # Every line of litejobs's about a job names it in job_id.
    for job in (good, bad, talker):
        about = [e for e in entries if e["logger"] == "litejobs"
                 and f"job {job.id} " in e["message"] + " "]
        assert about, f"no line about job {job.id}:\n{stderr}"
        for entry in about:
            assert entry.get("job_id") == job.id, entry
            assert entry.get("job") == job.name, entry
            assert entry.get("attempt") == 1, entry

    completed = [e for e in entries if e.get("job_id") == good.id and e["level"] == "INFO"]
    assert len(completed) == 1 and "completed" in completed[0]["message"], stderr
    assert isinstance(completed[0].get("duration"), (int, float))

    failed = [e for e in entries if e.get("job_id") == bad.id and e["level"] == "ERROR"]
    assert len(failed) == 1, stderr
    assert "failed" in failed[0]["message"]
    assert "Traceback (most recent call last)" in failed[0]["traceback"]
    assert "ValueError: json boom" in failed[0]["traceback"]
    assert "Traceback" not in failed[0]["message"]  # the message is the summary line

    own = [e for e in entries if e["message"] == text]
    assert len(own) == 1, stderr
    assert own[0]["logger"] == "sample_jobs.app"
    assert own[0]["level"] == "WARNING"
    assert own[0]["job_id"] == talker.id
    assert own[0]["process"].startswith("litejobs-child")
    supervisor_pids = {e["pid"] for e in entries if e["process"] == "MainProcess"}
    assert supervisor_pids and own[0]["pid"] not in supervisor_pids


def test_the_json_line_of_a_failed_job_has_its_traceback_in_the_traceback_key(q, tmp_path):
    # The README: JSON lines have "when known ... traceback".  A failed job's
    # traceback is known when its failure is logged.
    (_, bad, _, _), entries, stderr = run_json_worker(q, tmp_path)
    failed = [e for e in entries if e.get("job_id") == bad.id and e["level"] == "ERROR"]
    assert len(failed) == 1, stderr
    assert "traceback" in failed[0], failed[0]
    assert "Traceback (most recent call last)" in failed[0]["traceback"]
    assert "ValueError: json boom" in failed[0]["traceback"]


def test_a_log_record_with_an_extra_that_does_not_pickle_costs_nothing(q, caplog):
    """Such a record used to sink the batch with the job's outcome in it."""
    caplog.set_level(logging.INFO)
    with q.worker(processes=1):
        job = q.put(Job(sample_jobs.log_with_unpicklable_extra))
        assert job.wait(timeout=WAIT) == "logged"
    assert job.attempts == 1
    (record,) = [r for r in caplog.records if r.getMessage() == "odd extra"]
    assert record.job_id == job.id and "lock" in str(record.ctx).lower()


# -- steering a running job from outside: stop requests and meta -----------------------------


def test_a_running_job_sees_a_stop_request_and_returns_early(q, pool, tmp_path):
    worker = pool()
    started = tmp_path / "started"
    job = q.put(Job(sample_jobs.stop_when_asked, str(started)))
    wait_until(started.exists, WAIT, "the job to start")
    assert job.refresh().stop_requested is False
    asked = time.monotonic()
    assert job.request_stop(grace=30) is True
    assert (job.status, job.stop_requested) == (ACTIVE, True)
    assert job.wait(timeout=WAIT) == "stopped early"  # its own outcome, completed
    assert time.monotonic() - asked < 5  # seen within about a second, not the grace
    assert job.meta["steps"] > 0
    assert worker.crashes == []


def test_a_job_that_ignores_a_stop_request_is_stopped_after_its_grace(q, pool, tmp_path):
    worker = pool()
    started = tmp_path / "started"
    job = q.put(Job(sample_jobs.ignore_stop_requests, str(started)))
    runner = int(wait_until(lambda: started.exists() and started.read_text(), WAIT,
                            "the job to start"))
    job.request_stop(grace=0.5)
    with pytest.raises(litejobs.JobCancelled) as stopped:
        job.wait(timeout=WAIT)
    assert "asked to stop" in stopped.value.traceback
    wait_until(lambda: not os.path.exists(f"/proc/{runner}"), WAIT, "the process to be killed")
    assert q.put(Job(sample_jobs.add, 1, 1)).wait(timeout=WAIT) == 2  # the pool goes on
    assert worker.crashes == []


def test_a_stop_request_cancels_a_job_not_running_and_stops_a_composites_parts_gently(
        q, pool, tmp_path):
    pending = q.put(Job(sample_jobs.add, 1, 1), begin_after=600)
    assert pending.request_stop() is True and pending.status == litejobs.CANCELLED
    assert pending.request_stop() is False  # it had ended
    pool()
    started = tmp_path / "started"
    comp = q.put(litejobs.serial(Job(sample_jobs.stop_when_asked, str(started)),
                                 Job(sample_jobs.add, 2, 2)))
    wait_until(started.exists, WAIT, "the first part to start")
    comp.request_stop(grace=30)
    assert comp.status == litejobs.CANCELLED
    first, second = comp.children()
    assert first.wait(timeout=WAIT) == "stopped early"  # it had time to wrap up
    assert second.refresh().status == litejobs.CANCELLED  # never started
    with pytest.raises(litejobs.JobCancelled):
        comp.wait(timeout=WAIT)


def test_a_stopped_job_is_not_retried_and_run_pending_shows_the_request_too(q, now):
    job = q.put(Job(sample_jobs.stop_when_asked, os.devnull, 30),
                retry=Retry(attempts=3, delay=0))
    asker = threading.Timer(0.3, job.request_stop)
    asker.start()
    try:
        assert q.run_pending(now=now) == 1
    finally:
        asker.join()
    assert job.wait(timeout=1) == "stopped early"
    failing = q.put(Job(sample_jobs.fail), retry=Retry(attempts=3, delay=0))
    token, [row] = q._storage.claim(owner="elsewhere", queues=None, now=now.timestamp(),
                                    expires=now.timestamp() + 60, limit=1)
    failing.request_stop()
    assert q._storage.finish(row["id"], token, status=litejobs.PENDING, now=now.timestamp(),
                             error="ValueError: boom\n") == litejobs.CANCELLED


def test_meta_set_from_outside_reaches_the_running_job(q, pool):
    pool()
    job = q.put(Job(sample_jobs.wait_for_meta, "batch"))
    wait_until(lambda: job.refresh().meta.get("waiting"), WAIT, "the job to start")
    job.update_meta(batch=50, note="from outside")
    seen = job.wait(timeout=WAIT)
    assert seen == {"waiting": True, "batch": 50, "note": "from outside"}
    assert job.meta == seen


def test_meta_set_from_outside_and_by_the_job_merge_key_by_key(q, now):
    job = q.put(Job(sample_jobs.update_meta_twice, {"mine": 1}, {"mine": 2}))
    job.update_meta(theirs="x")
    q.run_pending(now=now)
    job.wait(timeout=1)
    assert job.meta == {"theirs": "x", "mine": 2}
    job.update_meta(after="done")  # on a job that has ended, too
    assert job.refresh().meta == {"theirs": "x", "mine": 2, "after": "done"}
    with pytest.raises(TypeError, match="JSON"):
        job.update_meta(bad=object())
    with pytest.raises(ValueError, match="limit"):
        job.update_meta(big="x" * 70_000)
    assert job.refresh().meta == {"theirs": "x", "mine": 2, "after": "done"}
    with pytest.raises(litejobs.JobNotFound):
        litejobs.Job._bound(q, {"id": 999, "created_at": 1.0}).update_meta(a=1)
