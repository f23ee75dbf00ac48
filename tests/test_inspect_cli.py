"""The inspection command line: status, list, show, retry, cancel, purge, put,
watch and workers.

Every command runs in-process through ``litejobs.main([...])`` (output read
with ``capsys``) and at least once as ``python -m litejobs ...`` in a
subprocess, with ``PYTHONPATH`` naming the tests folder (for ``sample_jobs``)
and the repository root, and a timeout on every run and every wait.

JSON output is checked against the key sets the README documents, written out
here rather than taken from the library, so that a key added, renamed or
dropped fails a test.  Jobs that must look old get their ``created_at`` or
``finished_at`` moved back with plain SQL: nothing sleeps to make time pass.
"""

from __future__ import annotations

import argparse
import builtins
import datetime
import json
import os
import queue as queue_module
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

import litejobs
import sample_jobs
from litejobs import COMPLETED, PENDING, Job
from pool_rows import finished_pid, insert_pool_row
from waiting import WAIT, wait_until

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS_DIR)
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [TESTS_DIR, ROOT] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
UTC = datetime.timezone.utc

# -- the documented key sets -----------------------------------------------------------

JOB_KEYS = frozenset({
    "id", "status", "name", "queue", "priority", "key", "attempts", "attempts_counted",
    "max_attempts", "interruptions", "max_interruptions", "handbacks", "not_started", "timeout",
    "created_at", "begin_after", "begin_by", "started_at", "finished_at", "ran_by",
    "lease_owner", "lease_expires", "stop_requested", "parent_id", "role", "position",
    "composite", "waiting_for", "progress", "progress_message", "meta", "error_type",
})
JOB_TIME_KEYS = ("created_at", "begin_after", "begin_by", "started_at", "finished_at",
                 "lease_expires", "stop_requested")
SHOW_KEYS = JOB_KEYS | {"call", "result", "error", "history", "parent", "children"}
HISTORY_KEYS = frozenset({"at", "event", "attempt", "by", "error"})
PARENT_KEYS = frozenset({"id", "name", "status", "composite"})
CHILD_KEYS = frozenset({"id", "role", "name", "status"})
STATUS_KEYS = frozenset({"database", "now", "counts", "totals", "oldest_pending",
                         "throughput", "workers"})
OLDEST_KEYS = frozenset({"id", "name", "queue", "due_at", "age"})
THROUGHPUT_KEYS = frozenset({"last_minute", "last_hour"})
POOL_KEYS = frozenset({"id", "state", "alive", "host", "pid", "processes", "queues", "lease",
                       "jobs", "started_at", "heartbeat_at", "heartbeat_age", "stopped_at",
                       "stop_reason"})
RETRY_KEYS = frozenset({"id", "status", "error"})
CANCEL_KEYS = frozenset({"id", "status", "error", "cancelled", "stop_requested"})
CANCEL_MISSING_KEYS = frozenset({"id", "status", "error"})
PURGE_KEYS = frozenset({"deleted", "before"})
ALL_STATUSES = ("pending", "waiting", "active", "completed", "failed", "cancelled")

# "2026-11-27T22:46:15.192Z": ISO 8601 in UTC, to the millisecond.
ISO_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")
# The first line of a block `watch` prints when stdout is not a terminal.
WATCH_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z  ")


# -- helpers -----------------------------------------------------------------------------


def cli(capsys, *args):
    """Run ``litejobs.main`` in-process; return (exit status, stdout, stderr)."""
    status = litejobs.main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return status, out, err


def cli_json(capsys, *args):
    status, out, err = cli(capsys, *args, "--json")
    assert status == 0, err
    return json.loads(out)


def run_cli(*args, cwd, timeout=60):
    """``python -m litejobs ARGS`` with stdin not a terminal."""
    return subprocess.run([sys.executable, "-m", "litejobs", *map(str, args)], cwd=cwd,
                          env=ENV, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)


def parse_z(text):
    """A job time as the JSON shows it: "2026-11-27T22:46:15.192Z"."""
    assert isinstance(text, str) and ISO_Z.match(text), text
    moment = datetime.datetime.fromisoformat(text)
    assert moment.utcoffset() == datetime.timedelta(0)
    return moment


def parse_iso_utc(text):
    """Any ISO 8601 time with a UTC offset of zero."""
    moment = datetime.datetime.fromisoformat(text)
    assert moment.tzinfo is not None and moment.utcoffset() == datetime.timedelta(0), text
    return moment


def close_to_now(moment, seconds=10.0):
    return abs((moment - datetime.datetime.now(UTC)).total_seconds()) < seconds


def same_ms(moment, when):
    """A JSON time against a job's aware datetime (the JSON rounds to ms)."""
    return abs((moment - when).total_seconds()) <= 0.001


def set_column(path, column, seconds_ago, *ids):
    """Move ``column`` (created_at or finished_at) of jobs back in time."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.executemany(f"UPDATE litejobs_jobs SET {column} = ? WHERE id = ?",
                         [(time.time() - seconds_ago, job_id) for job_id in ids])
    finally:
        conn.close()


def job_ids(q):
    return {job.id for job in q.jobs(limit=10_000)}


def assert_one_line_error(status, out, err, *, exit_status=1):
    assert status == exit_status, (out, err)
    assert err.startswith("litejobs: error: "), err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err and "Traceback" not in out
    assert out == ""


def watch_blocks(out):
    """The blocks of non-terminal `watch` output, each a list of lines."""
    blocks = []
    for line in out.splitlines():
        if WATCH_STAMP.match(line):
            blocks.append([line[len("2026-11-27T22:46:15.192Z  "):]])
        else:
            assert blocks and line.startswith(" "), f"a stray line: {line!r}\n{out}"
            blocks[-1].append(line.strip())
    return blocks


def _sigint_default():
    # A shell that starts a background job may leave SIGINT ignored, and a
    # child inherits that, which would keep Python from raising
    # KeyboardInterrupt; restore the default before exec.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def db(q):
    return q.path


@pytest.fixture
def keep_sys_path(monkeypatch, tmp_path):
    """`put` makes the current directory importable, as python -m does: keep
    that out of the rest of the test session."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)


# == every command has --help and a description ==========================================


def _subcommand_action():
    parser = litejobs._build_parser()
    actions = [action for action in parser._actions
               if isinstance(action, argparse._SubParsersAction)]
    assert len(actions) == 1, actions
    return actions[0]


SUBCOMMANDS = sorted(_subcommand_action().choices)


def test_the_documented_commands_are_all_there():
    assert {"status", "list", "show", "retry", "cancel", "purge", "put", "watch", "workers",
            "worker", "demo"} <= set(SUBCOMMANDS)


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_help_and_a_description(name, capsys):
    action = _subcommand_action()
    command = action.choices[name]
    description = " ".join((command.description or "").split())
    assert description, f"{name} has no description"
    summary = {choice.dest: choice.help for choice in action._choices_actions}
    assert summary.get(name), f"{name} has no one-line help in 'litejobs --help'"
    with pytest.raises(SystemExit) as exit_:
        litejobs.main([name, "--help"])
    assert exit_.value.code == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"usage: litejobs {name}"), out
    assert description in " ".join(out.split())  # argparse rewraps it
    assert err == ""


# == status ===============================================================================


def _status_database(q):
    """Jobs in three queues, in every status but active; returns them by name."""
    jobs = {"other": q.put(Job(sample_jobs.add, 0, 0), queue="other")}  # the oldest due
    jobs["done"] = q.put(Job(sample_jobs.add, 1, 2))
    jobs["failed"] = q.put(Job(sample_jobs.fail, "x"))
    jobs["cancelled"] = q.put(Job(sample_jobs.add, 3, 4))
    jobs["cancelled"].cancel()
    jobs["later"] = q.put(Job(sample_jobs.add, 5, 6), begin_after=3600)
    jobs["comp"] = q.put(litejobs.parallel(Job(sample_jobs.add, 1, 1), Job(sample_jobs.add, 2, 2)),
                         queue="comp")
    assert q.run_pending(queues=["default"]) == 2
    # Ended 30 minutes ago, 2 hours ago, and just now.
    set_column(q.path, "finished_at", 1800, jobs["done"].id)
    set_column(q.path, "finished_at", 7200, jobs["failed"].id)
    return jobs


def test_status_json_has_the_documented_keys_and_the_right_counts(q, db, capsys):
    jobs = _status_database(q)
    status = cli_json(capsys, "status", db)
    assert set(status) == STATUS_KEYS
    assert status["database"] == db
    assert close_to_now(parse_z(status["now"]))
    zero = dict.fromkeys(ALL_STATUSES, 0)
    assert status["counts"] == {
        "default": {**zero, "pending": 1, "completed": 1, "failed": 1, "cancelled": 1},
        "other": {**zero, "pending": 1},
        "comp": {**zero, "waiting": 1, "pending": 2},
    }
    assert status["totals"] == {**zero, "pending": 4, "waiting": 1, "completed": 1,
                                "failed": 1, "cancelled": 1}
    oldest = status["oldest_pending"]
    assert set(oldest) == OLDEST_KEYS
    assert (oldest["id"], oldest["name"], oldest["queue"]) == \
        (jobs["other"].id, "sample_jobs:add", "other")
    assert same_ms(parse_z(oldest["due_at"]), jobs["other"].refresh().begin_after)
    assert 0 <= oldest["age"] < 60
    assert set(status["throughput"]) == THROUGHPUT_KEYS
    assert status["throughput"] == {"last_minute": 1, "last_hour": 2}
    assert status["workers"] == []


def test_status_on_an_empty_database(db, capsys):
    status = cli_json(capsys, "status", db)
    assert set(status) == STATUS_KEYS
    assert status["counts"] == {}
    assert status["totals"] == dict.fromkeys(ALL_STATUSES, 0)
    assert status["oldest_pending"] is None
    assert status["throughput"] == {"last_minute": 0, "last_hour": 0}
    assert status["workers"] == []
    code, out, err = cli(capsys, "status", db)
    assert code == 0 and err == ""
    assert "oldest due job: none waiting" in out
    assert "pools: none has run on this file" in out


def test_status_text(q, db, capsys):
    jobs = _status_database(q)
    code, out, err = cli(capsys, "status", db)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith(f"{db} at ")
    header = next(line.split() for line in lines if line.split()[:1] == ["queue"])
    assert header == ["queue", *ALL_STATUSES]
    rows = {line.split()[0]: line.split()[1:] for line in lines
            if line.split()[:1] and line.split()[0] in ("default", "other", "comp", "(all)")}
    assert rows == {"default": ["1", "0", "0", "1", "1", "1"],
                    "other": ["1", "0", "0", "0", "0", "0"],
                    "comp": ["2", "1", "0", "0", "0", "0"],
                    "(all)": ["4", "1", "0", "1", "1", "1"]}
    assert f"oldest due job: {jobs['other'].id} (sample_jobs:add, queue other), due " in out
    assert "ended: 1 in the last minute" in out and "2 in the last hour" in out
    assert "pools: none has run on this file" in out


# == workers, and status with a live pool ================================================


def test_a_live_pool_then_a_stopped_one_in_workers_status_list_and_cancel(q, db, tmp_path,
                                                                          capsys):
    marker = tmp_path / "go"
    try:
        with q.worker(processes=1) as worker:
            job = q.put(Job(sample_jobs.wait_for_file, str(marker)))
            litejobs.wait_for_start(job, timeout=WAIT)

            (pool,) = cli_json(capsys, "workers", db)
            assert set(pool) == POOL_KEYS
            assert (pool["id"], pool["state"], pool["alive"], pool["host"], pool["pid"],
                    pool["processes"], pool["queues"], pool["jobs"]) == \
                (worker.id, "alive", True, socket.gethostname(), os.getpid(), 1, None, 1)
            assert pool["lease"] == litejobs.DEFAULT_LEASE
            started, beat = parse_iso_utc(pool["started_at"]), parse_iso_utc(pool["heartbeat_at"])
            assert started <= beat and close_to_now(beat, 60)
            assert 0 <= pool["heartbeat_age"] < pool["lease"]
            assert pool["stopped_at"] is None and pool["stop_reason"] is None

            status = cli_json(capsys, "status", db)
            assert status["counts"]["default"]["active"] == 1
            assert status["totals"]["active"] == 1
            (seen,) = status["workers"]
            assert set(seen) == POOL_KEYS
            assert (seen["id"], seen["state"], seen["jobs"]) == (worker.id, "alive", 1)
            code, out, _ = cli(capsys, "status", db)
            assert code == 0 and "pools: 1 alive of 1 listed" in out and worker.id in out

            code, out, _ = cli(capsys, "list", db, "--status", "active")
            assert code == 0
            (line,) = out.splitlines()
            assert line.split()[:3] == [str(job.id), "active", "sample_jobs:wait_for_file"]
            assert re.search(r"  running \d", line), line

            code, out, err = cli(capsys, "cancel", db, job.id)
            assert (code, err) == (0, "")
            assert out == f"job {job.id}: running; its pool stops it and it ends cancelled\n"
            wait_until(lambda: job.refresh().status == litejobs.CANCELLED,
                       what="the pool to stop the cancelled job")
    finally:
        marker.write_text("")  # whatever happened, let the job end so the pool can stop

    (pool,) = cli_json(capsys, "workers", db)
    assert set(pool) == POOL_KEYS
    assert (pool["state"], pool["alive"], pool["stop_reason"], pool["jobs"]) == \
        ("stopped", False, "stopped", 0)
    assert parse_iso_utc(pool["stopped_at"]) >= parse_iso_utc(pool["started_at"])
    code, out, _ = cli(capsys, "workers", db)
    assert code == 0 and out.startswith(f"{worker.id}  stopped")


def test_pools_whose_process_is_gone_or_silent_are_gone(q, db, capsys):
    pool_row = {"processes": 2, "queues": '["a", "b"]'}
    now = time.time()
    insert_pool_row(db, "pool@gone", pid=finished_pid(), heartbeat_at=now, started_at=now - 5,
                    **pool_row)
    # On another host, only the heartbeat tells: silent past its lease, it is gone.
    insert_pool_row(db, "pool@silent", pid=1, heartbeat_at=now - 60, started_at=now - 65,
                    host="far", **pool_row)
    pools = {pool["id"]: pool for pool in cli_json(capsys, "workers", db)}
    assert set(pools) == {"pool@gone", "pool@silent"}
    for pool in pools.values():
        assert set(pool) == POOL_KEYS
        assert (pool["state"], pool["alive"], pool["stopped_at"], pool["stop_reason"],
                pool["processes"], pool["queues"], pool["lease"]) == \
            ("gone", False, None, None, 2, ["a", "b"], 30)
        assert (parse_iso_utc(pool["heartbeat_at"]) - parse_iso_utc(pool["started_at"])
                ).total_seconds() == pytest.approx(5, abs=0.01)
    assert 0 <= pools["pool@gone"]["heartbeat_age"] < 30
    assert pools["pool@silent"]["heartbeat_age"] == pytest.approx(60, abs=30)
    status = cli_json(capsys, "status", db)
    assert sorted(pool["id"] for pool in status["workers"]) == ["pool@gone", "pool@silent"]
    assert all(pool["state"] == "gone" for pool in status["workers"])
    code, out, _ = cli(capsys, "status", db)
    assert code == 0 and "pools: 0 alive of 2 listed" in out
    code, out, _ = cli(capsys, "workers", db)
    assert code == 0
    assert sorted(line.split()[:2] for line in out.splitlines()) == \
        [["pool@gone", "gone"], ["pool@silent", "gone"]]


def test_workers_json_on_a_database_no_pool_has_served(db, capsys):
    assert cli_json(capsys, "workers", db) == []


# == list =================================================================================


def test_list_json_gives_job_objects_newest_first(q, db, capsys):
    plain = q.put(Job(sample_jobs.report_progress, 2, note="hello"), key="k-1", priority=3)
    failed = q.put(Job(sample_jobs.fail, "no"))
    comp = q.put(litejobs.parallel(Job(sample_jobs.add, 1, 1), Job(sample_jobs.add, 2, 2)))
    later = q.put(Job(sample_jobs.add, 0, 0), begin_after=600)
    assert q.run_pending() == 5  # report_progress, fail, 2 parts; the composite has no postprocess
    listed = cli_json(capsys, "list", db)
    assert [row["id"] for row in listed] == sorted(job_ids(q), reverse=True)
    for row in listed:
        assert set(row) == JOB_KEYS, set(row) ^ JOB_KEYS
        assert row["status"] in ALL_STATUSES
        assert isinstance(row["meta"], dict)
        for key in JOB_TIME_KEYS:
            if row[key] is not None:
                parse_z(row[key])
        assert close_to_now(parse_z(row["created_at"]), 60)
    by_id = {row["id"]: row for row in listed}

    row = by_id[plain.id]
    plain.refresh()
    assert (row["status"], row["name"], row["queue"], row["priority"], row["key"],
            row["attempts"], row["max_attempts"], row["interruptions"]) == \
        ("completed", "sample_jobs:report_progress", "default", 3, "k-1", 1, 1, 0)
    assert (row["progress"], row["progress_message"]) == (1.0, "step 2 of 2")
    assert row["meta"] == {"note": "hello", "steps": 2}
    assert row["ran_by"] == plain.ran_by and row["ran_by"]
    assert row["lease_owner"] is None and row["lease_expires"] is None
    assert row["error_type"] is None and row["composite"] is None
    assert same_ms(parse_z(row["started_at"]), plain.started_at)
    assert same_ms(parse_z(row["finished_at"]), plain.finished_at)
    assert parse_z(row["created_at"]) <= parse_z(row["started_at"]) \
        <= parse_z(row["finished_at"])

    assert (by_id[failed.id]["status"], by_id[failed.id]["error_type"]) == \
        ("failed", "builtins.ValueError")
    assert by_id[comp.id]["composite"] == "parallel"
    assert by_id[comp.id]["status"] == "completed"
    parts = [row for row in listed if row["parent_id"] == comp.id]
    assert sorted((row["role"], row["position"]) for row in parts) == [("part", 0), ("part", 1)]
    assert by_id[later.id]["status"] == "pending" and by_id[later.id]["started_at"] is None
    assert (parse_z(by_id[later.id]["begin_after"])
            - parse_z(by_id[later.id]["created_at"])).total_seconds() == \
        pytest.approx(600, abs=0.002)


def test_list_text_has_one_line_per_job(q, db, capsys):
    shown = q.put(Job(sample_jobs.report_progress, 4))
    par = q.put(litejobs.parallel(Job(sample_jobs.add, 1, 1),
                                  postprocess=sample_jobs.describe_parts))
    ser = q.put(litejobs.serial(Job(sample_jobs.add, 1, 1),
                                postprocess=sample_jobs.describe_parts))
    q.run_pending()
    due_later = q.put(Job(sample_jobs.add, 0, 0), begin_after=300)
    waiting = q.put(Job(sample_jobs.add, 0, 0), queue="idle")
    code, out, err = cli(capsys, "list", db)
    assert code == 0 and err == ""
    lines = {int(line.split()[0]): line for line in out.splitlines()}
    assert list(lines) == sorted(lines, reverse=True)
    assert lines[shown.id].split()[:5] == [str(shown.id), "completed",
                                          "sample_jobs:report_progress", "default", "attempt"]
    assert re.search(r"  attempt 1  took \d+(\.\d)?m?s  100% step 4 of 4$", lines[shown.id])
    assert "sample_jobs:describe_parts (parallel)  default" in lines[par.id]
    assert "sample_jobs:describe_parts (serial)  default" in lines[ser.id]
    assert re.search(r"  attempt 0  due in (4m5\d|5m00)s$", lines[due_later.id]), \
        lines[due_later.id]
    assert re.search(r"  idle  attempt 0  age (\d+ms|\d+\.\ds)$", lines[waiting.id]), \
        lines[waiting.id]


def _four_ages(q):
    """Four jobs put 3 days, 2 hours, 5 minutes and no time ago."""
    old, hours, minutes, new = (q.put(Job(sample_jobs.add, i, i)) for i in range(4))
    set_column(q.path, "created_at", 3 * 86400, old.id)
    set_column(q.path, "created_at", 2 * 3600, hours.id)
    set_column(q.path, "created_at", 5 * 60, minutes.id)
    return old.id, hours.id, minutes.id, new.id


def _listed_ids(capsys, db, *options):
    return [row["id"] for row in cli_json(capsys, "list", db, *options)]


def test_list_since_and_before_take_durations(q, db, capsys):
    old, hours, minutes, new = _four_ages(q)
    assert _listed_ids(capsys, db, "--since", "1h") == [new, minutes]
    assert _listed_ids(capsys, db, "--since", "600s") == [new, minutes]
    assert _listed_ids(capsys, db, "--since", "2d") == [new, minutes, hours]
    assert _listed_ids(capsys, db, "--since", "7d") == [new, minutes, hours, old]
    assert _listed_ids(capsys, db, "--before", "1h") == [hours, old]
    assert _listed_ids(capsys, db, "--before", "90m") == [hours, old]
    assert _listed_ids(capsys, db, "--since", "3h", "--before", "10m") == [hours]
    assert _listed_ids(capsys, db, "--before", "4d") == []


def test_list_since_and_before_take_iso_times(q, db, capsys):
    old, hours, minutes, new = _four_ages(q)
    now = datetime.datetime.now(UTC)
    day_ago_z = (now - datetime.timedelta(days=1)).isoformat().replace("+00:00", "Z")
    assert _listed_ids(capsys, db, "--since", day_ago_z) == [new, minutes, hours]
    hour_ago = (now - datetime.timedelta(hours=1)).isoformat()  # +00:00
    assert _listed_ids(capsys, db, "--before", hour_ago) == [hours, old]
    ten_ago_plus_2 = (now - datetime.timedelta(minutes=10)).astimezone(
        datetime.timezone(datetime.timedelta(hours=2))).isoformat()
    assert _listed_ids(capsys, db, "--before", ten_ago_plus_2) == [hours, old]
    assert _listed_ids(capsys, db, "--since", day_ago_z, "--before", hour_ago) == [hours]


@pytest.fixture
def five_hours_west_of_utc():
    """Local time is UTC-5 (a POSIX TZ rule: no tz database needed)."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "XST+05"
    time.tzset()
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()


def test_list_an_iso_time_without_an_offset_is_local_time(q, db, capsys,
                                                         five_hours_west_of_utc):
    old, hours, minutes, new = _four_ages(q)
    local_now = datetime.datetime.now()
    assert local_now.astimezone().utcoffset() == datetime.timedelta(hours=-5)
    half_hour_ago = (local_now - datetime.timedelta(minutes=30)).isoformat()
    assert _listed_ids(capsys, db, "--since", half_hour_ago) == [new, minutes]
    hour_ago = (local_now - datetime.timedelta(hours=1)).isoformat()
    assert _listed_ids(capsys, db, "--before", hour_ago) == [hours, old]


def test_list_status_filter_repeats(q, db, capsys):
    done = q.put(Job(sample_jobs.add, 1, 1))
    failed = q.put(Job(sample_jobs.fail))
    cancelled = q.put(Job(sample_jobs.add, 2, 2))
    cancelled.cancel()
    q.run_pending()
    pending = q.put(Job(sample_jobs.add, 3, 3))
    assert _listed_ids(capsys, db, "--status", "failed") == [failed.id]
    assert _listed_ids(capsys, db, "--status", "failed", "--status", "pending") == \
        [pending.id, failed.id]
    assert _listed_ids(capsys, db, "-s", "completed", "-s", "cancelled", "-s", "pending") == \
        [pending.id, cancelled.id, done.id]
    assert _listed_ids(capsys, db, "--status", "waiting") == []


def test_list_unknown_status_is_a_usage_error(db, capsys):
    with pytest.raises(SystemExit) as exit_:
        litejobs.main(["list", db, "--status", "running"])
    assert exit_.value.code == 2
    assert "usage: litejobs list" in capsys.readouterr().err


def test_list_queue_and_callable_glob(q, db, capsys):
    add = q.put(Job(sample_jobs.add, 1, 1))
    fail = q.put(Job(sample_jobs.fail))
    echo = q.put(Job(sample_jobs.echo, 1), queue="reports")
    double = q.put(Job(sample_jobs.double, 1), queue="reports")
    assert _listed_ids(capsys, db, "--queue", "reports") == [double.id, echo.id]
    assert _listed_ids(capsys, db, "-q", "default") == [fail.id, add.id]
    assert _listed_ids(capsys, db, "--queue", "nothing") == []
    assert _listed_ids(capsys, db, "--callable", "sample_jobs:f*") == [fail.id]
    assert _listed_ids(capsys, db, "--callable", "*:add") == [add.id]
    assert _listed_ids(capsys, db, "-c", "sample_jobs:[ad]*") == [double.id, add.id]
    assert _listed_ids(capsys, db, "--callable", "sample_jobs:*", "--queue", "reports") == \
        [double.id, echo.id]
    assert _listed_ids(capsys, db, "--callable", "other_module:*") == []
    code, out, err = cli(capsys, "list", db, "--callable", "nothing*")
    assert (code, out, err) == (0, "no job matches\n", "")


def test_list_limit(q, db, capsys):
    jobs = q.put_many([Job(sample_jobs.add, i, i) for i in range(55)])
    ids = [job.id for job in jobs]
    assert _listed_ids(capsys, db) == sorted(ids, reverse=True)[:50]  # the default limit
    assert _listed_ids(capsys, db, "--limit", "2") == sorted(ids, reverse=True)[:2]
    assert _listed_ids(capsys, db, "-n", "100") == sorted(ids, reverse=True)
    code, out, err = cli(capsys, "list", db, "--limit", "3")
    assert code == 0 and [int(line.split()[0]) for line in out.splitlines()] == \
        sorted(ids, reverse=True)[:3]


@pytest.mark.parametrize("options", [["--limit", "0"], ["--limit", "many"],
                                     ["--since", "yesterday"], ["--before=-5m"],
                                     ["--since", "2026-13-45T00:00:00"]])
def test_list_bad_arguments_are_usage_errors(db, capsys, options):
    with pytest.raises(SystemExit) as exit_:
        litejobs.main(["list", db, *options])
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert "usage: litejobs list" in err and "Traceback" not in err


# == show =================================================================================


def test_show_json_has_the_documented_keys_and_the_call_with_its_arguments(q, db, capsys):
    job = q.put(Job(sample_jobs.echo, 1, "two", [3.5], flag=True, none=None))
    pending = cli_json(capsys, "show", db, job.id)
    assert set(pending) == SHOW_KEYS, set(pending) ^ SHOW_KEYS
    assert pending["call"] == "sample_jobs:echo(1, 'two', [3.5], flag=True, none=None)"
    assert pending["result"] is None and pending["error"] is None
    assert pending["history"] == [] and pending["parent"] is None and pending["children"] == []
    assert pending["status"] == "pending"
    q.run_pending()
    shown = cli_json(capsys, "show", db, job.id)
    assert set(shown) == SHOW_KEYS
    assert shown["status"] == "completed"
    assert shown["result"] == "((1, 'two', [3.5]), {'flag': True, 'none': None})"
    listed = {row["id"]: row for row in cli_json(capsys, "list", db)}[job.id]
    assert {key: shown[key] for key in JOB_KEYS} == listed
    code, out, err = cli(capsys, "show", db, job.id)
    assert code == 0 and err == ""
    assert out.splitlines()[0] == f"job {job.id}  completed  sample_jobs:echo"
    assert "  call       sample_jobs:echo(1, 'two', [3.5], flag=True, none=None)\n" in out
    assert "  result     ((1, 'two', [3.5]), {'flag': True, 'none': None})\n" in out


def test_show_shortens_a_huge_result_and_a_huge_call(q, db, capsys):
    big = q.put(Job(sample_jobs.big_result, 100_000))
    long_call = q.put(Job(sample_jobs.echo, "y" * 10_000))
    q.run_pending()
    assert len(big.refresh().result) == 100_000  # the stored result is whole
    shown = cli_json(capsys, "show", db, big.id)
    assert shown["result"].startswith("b'xxxxxxxx") and shown["result"].endswith("...")
    assert len(shown["result"]) <= 500
    shown = cli_json(capsys, "show", db, long_call.id)
    assert shown["call"].startswith("sample_jobs:echo('yyyy") and shown["call"].endswith("...")
    assert len(shown["call"]) <= 500
    assert "..." in shown["result"] and len(shown["result"]) <= 500
    code, out, err = cli(capsys, "show", db, big.id)
    assert code == 0 and err == ""
    (result_line,) = [line for line in out.splitlines() if line.startswith("  result ")]
    assert len(result_line) <= len("  result     ") + 500 and result_line.endswith("...")


def test_show_gives_the_full_traceback(q, db, capsys):
    job = q.put(Job(sample_jobs.fail, "kaput"))
    q.run_pending()
    traceback_text = job.refresh().error
    shown = cli_json(capsys, "show", db, job.id)
    assert shown["error"] == traceback_text
    assert shown["error"].startswith("Traceback (most recent call last):")
    assert "raise ValueError(message)" in shown["error"]
    assert shown["error"].rstrip().endswith("ValueError: kaput")
    assert shown["error_type"] == "builtins.ValueError" and shown["result"] is None
    code, out, err = cli(capsys, "show", db, job.id)
    assert code == 0 and err == ""
    lines = out.splitlines()
    start = lines.index("  error")
    assert lines[start + 1:] == [f"    {line}" for line in traceback_text.rstrip().splitlines()]


def test_show_history_after_retries(q, db, capsys):
    job = q.put(Job(sample_jobs.fail, "again"))
    q.run_pending()
    first_runner = job.refresh().ran_by
    assert cli(capsys, "retry", db, job.id)[0] == 0
    q.run_pending()
    assert cli(capsys, "retry", db, job.id)[0] == 0
    shown = cli_json(capsys, "show", db, job.id)
    assert shown["status"] == "pending" and shown["attempts"] == 0
    assert len(shown["history"]) == 2
    for entry in shown["history"]:
        assert set(entry) == HISTORY_KEYS | {"traceback"}  # a failed attempt keeps its own
        assert (entry["event"], entry["attempt"], entry["error"]) == \
            ("retried by hand", 1, "ValueError: again")
        assert entry["traceback"].startswith("Traceback (most recent call last)")
        assert entry["traceback"].rstrip().endswith("ValueError: again")
        assert close_to_now(parse_z(entry["at"]), 60)
    assert shown["history"][0]["by"] == first_runner
    assert parse_z(shown["history"][0]["at"]) <= parse_z(shown["history"][1]["at"])
    code, out, err = cli(capsys, "show", db, job.id)
    assert code == 0 and err == ""
    lines = out.splitlines()
    start = lines.index("  history")
    for offset, entry in enumerate(shown["history"], 1):
        assert lines[start + offset] == (f"    {entry['at']}  attempt 1 retried by hand: "
                                         f"ValueError: again (ran by {entry['by']})")


def test_show_parent_and_children_of_a_composite(q, db, capsys):
    comp = q.put(litejobs.parallel(Job(sample_jobs.add, 1, 2), Job(sample_jobs.fail, "p"),
                                   postprocess=sample_jobs.describe_parts))
    q.run_pending()
    first, second = comp.children()
    shown = cli_json(capsys, "show", db, comp.id)
    assert (shown["status"], shown["composite"], shown["parent"]) == ("completed", "parallel", None)
    for child in shown["children"]:
        assert set(child) == CHILD_KEYS
    assert shown["children"] == [
        {"id": first.id, "role": "part", "name": "sample_jobs:add", "status": "completed"},
        {"id": second.id, "role": "part", "name": "sample_jobs:fail", "status": "failed"}]
    part = cli_json(capsys, "show", db, second.id)
    assert set(part["parent"]) == PARENT_KEYS
    assert part["parent"] == {"id": comp.id, "name": "sample_jobs:describe_parts",
                              "status": "completed", "composite": "parallel"}
    assert (part["parent_id"], part["role"], part["position"], part["children"]) == \
        (comp.id, "part", 1, [])
    code, out, _ = cli(capsys, "show", db, comp.id)
    assert code == 0
    assert out.splitlines()[0] == \
        f"job {comp.id}  completed  sample_jobs:describe_parts (parallel)"
    assert "  children\n" in out
    assert re.search(rf"\n    job {first.id} +part +completed +sample_jobs:add\n", out)
    assert re.search(rf"\n    job {second.id} +part +failed +sample_jobs:fail\n", out)
    code, out, _ = cli(capsys, "show", db, second.id)
    assert code == 0
    assert (f"  parent     job {comp.id} (sample_jobs:describe_parts) completed, "
            f"this is its part\n") in out


def test_show_callbacks_as_children_and_their_parent(q, db, capsys):
    job = q.put(Job(sample_jobs.add, 1, 2))
    callback = job.add_callback(Job(sample_jobs.describe_outcome))
    both = job.add_callbacks(success=Job(sample_jobs.double), failure=Job(sample_jobs.fail))
    assert q.run_pending() == 3
    shown = cli_json(capsys, "show", db, job.id)
    assert shown["children"] == [
        {"id": callback.id, "role": "callback", "name": "sample_jobs:describe_outcome",
         "status": "completed"},
        {"id": both.id, "role": "callbacks", "name": both.name, "status": "completed"}]
    seen = cli_json(capsys, "show", db, callback.id)
    assert seen["parent"] == {"id": job.id, "name": "sample_jobs:add", "status": "completed",
                              "composite": None}
    assert (seen["role"], seen["parent_id"]) == ("callback", job.id)
    assert seen["result"] == "{'failure': False, 'result': 3}"
    assert cli_json(capsys, "show", db, both.id)["result"] == "6"
    code, out, _ = cli(capsys, "show", db, callback.id)
    assert code == 0
    assert f"  parent     job {job.id} (sample_jobs:add) completed, this is its callback\n" in out


def test_show_an_unknown_job_is_a_one_line_error(q, db, capsys):
    q.put(Job(sample_jobs.add, 1, 1))
    status, out, err = cli(capsys, "show", db, 99)
    assert_one_line_error(status, out, err)
    assert "99" in err
    status, out, err = cli(capsys, "show", db, 99, "--json")
    assert_one_line_error(status, out, err)


@pytest.mark.parametrize("job_id", ["0", "abc", "-3"])
def test_show_a_bad_id_is_a_usage_error(db, capsys, job_id):
    with pytest.raises(SystemExit) as exit_:
        litejobs.main(["show", db, job_id])
    assert exit_.value.code == 2
    assert "usage: litejobs show" in capsys.readouterr().err


# == retry ================================================================================


def test_retry_puts_failed_and_cancelled_jobs_back(q, db, capsys):
    failed = q.put(Job(sample_jobs.fail, "x"))
    cancelled = q.put(Job(sample_jobs.add, 1, 1))
    cancelled.cancel()
    q.run_pending()
    code, out, err = cli(capsys, "retry", db, failed.id, cancelled.id)
    assert (code, err) == (0, "")
    assert out == f"job {failed.id}: pending again\njob {cancelled.id}: pending again\n"
    failed.refresh()
    assert (failed.status, failed.attempts, failed.interruptions) == ("pending", 0, 0)
    assert [entry["event"] for entry in failed.history] == ["retried by hand"]
    assert q.run_pending() == 2
    assert cancelled.refresh().result == 2 and failed.refresh().status == "failed"
    assert failed.attempts == 1


def test_retry_json(q, db, capsys):
    failed = q.put(Job(sample_jobs.fail))
    done = q.put(Job(sample_jobs.add, 1, 1))
    q.run_pending()
    code, out, err = cli(capsys, "retry", db, failed.id, done.id, 99, "--json")
    assert code == 1
    assert err == (f"litejobs: error: job {done.id} is completed: only failed and cancelled "
                   f"jobs are retried\nlitejobs: error: no job 99 in {db}\n")
    results = json.loads(out)
    for result in results:
        assert set(result) == RETRY_KEYS
    assert [(r["id"], r["status"]) for r in results] == \
        [(failed.id, "pending"), (done.id, None), (99, None)]
    assert results[0]["error"] is None
    assert "completed" in results[1]["error"] and "no job 99" in results[2]["error"]


def test_retry_refuses_a_completed_job_and_an_unknown_one(q, db, capsys):
    done = q.put(Job(sample_jobs.add, 1, 1))
    comp = q.put(litejobs.parallel(Job(sample_jobs.add, 1, 1), Job(sample_jobs.fail)))
    failed = q.put(Job(sample_jobs.fail))
    q.run_pending()
    part = comp.children()[1]
    assert (part.status, comp.refresh().status) == ("failed", "failed")
    # What could not be done is an error, on stderr, as for every command.
    code, out, err = cli(capsys, "retry", db, done.id)
    assert (code, out) == (1, "")
    assert err == (f"litejobs: error: job {done.id} is completed: only failed and cancelled "
                   f"jobs are retried\n")
    code, out, err = cli(capsys, "retry", db, 99)
    assert (code, out, err) == (1, "", f"litejobs: error: no job 99 in {db}\n")
    # The others of a mixed list are retried; the exit status says one was not.
    code, out, err = cli(capsys, "retry", db, done.id, failed.id)
    assert code == 1
    assert out.splitlines() == [f"job {failed.id}: pending again"]
    assert err.count("litejobs: error: ") == 1
    assert done.refresh().status == "completed" and part.refresh().status == "failed"
    assert failed.refresh().status == "pending"
    # A part of a composite that has ended runs again, and the composite after it.
    code, out, err = cli(capsys, "retry", db, part.id)
    assert (code, out, err) == (0, f"job {part.id}: pending again\n", "")
    assert comp.refresh().status == "waiting"


@pytest.mark.parametrize("arguments", [[], ["1", "--failed"], ["1", "--queue", "default"],
                                       ["--queue", "default"]])
def test_retry_usage_errors_exit_2(q, db, capsys, arguments):
    failed = q.put(Job(sample_jobs.fail))
    q.run_pending()
    code, out, err = cli(capsys, "retry", db, *arguments)
    assert code == 2
    assert err.startswith("litejobs retry: error: ") and "Traceback" not in err
    assert failed.refresh().status == "failed"


def test_retry_failed_with_and_without_a_queue(q, db, capsys):
    mine = q.put(Job(sample_jobs.fail))
    theirs = q.put(Job(sample_jobs.fail), queue="other")
    comp = q.put(litejobs.parallel(Job(sample_jobs.add, 1, 1), Job(sample_jobs.fail)))
    done = q.put(Job(sample_jobs.add, 1, 1))
    q.run_pending()
    part = comp.children()[1]
    results = cli_json(capsys, "retry", db, "--failed", "--queue", "other")
    assert results == [{"id": theirs.id, "status": "pending", "error": None}]
    assert mine.refresh().status == "failed"
    code, out, err = cli(capsys, "retry", db, "--failed")
    assert (code, err) == (0, "")
    assert sorted(out.splitlines()) == sorted([f"job {comp.id}: waiting again",
                                               f"job {mine.id}: pending again"])
    assert part.refresh().status == "pending"  # through its composite, not by itself
    assert done.refresh().status == "completed"
    code, out, err = cli(capsys, "retry", db, "--failed")
    assert (code, out) == (0, "no failed job to retry\n")


def test_retry_a_parallel_composite_runs_only_its_failed_parts_then_its_postprocess(
        q, db, tmp_path, capsys):
    marker = tmp_path / "ready"  # the second part fails until this exists
    comp = q.put(litejobs.parallel(Job(sample_jobs.add, 1, 2),
                                   Job(sample_jobs.wait_for_file, str(marker), 0),
                                   postprocess=sample_jobs.pool_sum_parts))
    assert q.run_pending() == 3
    done, failed = comp.children()
    assert (done.status, failed.status, comp.refresh().status) == \
        ("completed", "failed", "failed")
    done_finished = done.finished_at
    marker.write_text("")
    code, out, err = cli(capsys, "retry", db, comp.id)
    assert (code, out, err) == (0, f"job {comp.id}: waiting again\n", "")
    assert failed.refresh().status == "pending"
    assert q.run_pending() == 2  # the failed part, then the postprocess
    assert comp.refresh().status == "completed" and comp.result == 3 + 1
    done.refresh()
    assert (done.attempts, done.history, done.finished_at) == (1, [], done_finished)
    assert [entry["event"] for entry in failed.refresh().history] == ["retried by hand"]
    assert [entry["event"] for entry in comp.history] == ["retried by hand"]
    assert comp.started_at >= failed.finished_at


def test_retry_a_serial_composite_runs_its_undone_parts_in_order(q, db, tmp_path, capsys):
    marker = tmp_path / "ready"
    comp = q.put(litejobs.serial(Job(sample_jobs.add, 1, 2),
                                 Job(sample_jobs.wait_for_file, str(marker), 0),
                                 Job(sample_jobs.add, 10, 20), stop_on_failure=True,
                                 postprocess=sample_jobs.pool_sum_parts))
    assert q.run_pending() == 3  # the first two parts, then the postprocess
    first, second, third = comp.children()
    assert [part.status for part in (first, second, third)] == \
        ["completed", "failed", "cancelled"]
    first_finished = first.finished_at
    marker.write_text("")
    code, out, _ = cli(capsys, "retry", db, comp.id)
    assert (code, out) == (0, f"job {comp.id}: waiting again\n")
    assert q.run_pending() == 3  # the second and third parts, then the postprocess
    assert comp.refresh().result == 3 + 1 + 30
    assert (first.refresh().attempts, first.finished_at) == (1, first_finished)
    assert second.refresh().finished_at <= third.refresh().started_at
    assert third.finished_at <= comp.started_at


# == cancel ===============================================================================


def test_cancel_a_pending_job_an_ended_one_and_an_unknown_id(q, db, capsys):
    pending = q.put(Job(sample_jobs.add, 1, 1), begin_after=600)
    done = q.put(Job(sample_jobs.add, 2, 2))
    q.run_pending()
    code, out, err = cli(capsys, "cancel", db, pending.id)
    assert (code, out, err) == (0, f"job {pending.id}: cancelled\n", "")
    assert pending.refresh().status == "cancelled"
    code, out, err = cli(capsys, "cancel", db, done.id)
    assert (code, out, err) == (0, f"job {done.id}: had already ended, completed\n", "")
    code, out, err = cli(capsys, "cancel", db, pending.id)
    assert (code, out) == (0, f"job {pending.id}: had already ended, cancelled\n")
    code, out, err = cli(capsys, "cancel", db, 99)
    assert (code, out, err) == (1, "", f"litejobs: error: no job 99 in {db}\n")
    assert done.refresh().status == "completed"


def test_cancel_json(q, db, capsys):
    done = q.put(Job(sample_jobs.add, 1, 1))
    q.run_pending()
    pending = q.put(Job(sample_jobs.add, 2, 2))
    code, out, err = cli(capsys, "cancel", db, pending.id, done.id, 99, "--json")
    assert (code, err) == (1, f"litejobs: error: no job 99 in {db}\n")
    results = json.loads(out)
    assert [set(result) for result in results] == [CANCEL_KEYS, CANCEL_KEYS,
                                                   CANCEL_MISSING_KEYS]
    assert results[0] == {"id": pending.id, "status": "cancelled", "error": None,
                          "cancelled": True, "stop_requested": False}
    assert results[1] == {"id": done.id, "status": "completed", "error": None,
                          "cancelled": False, "stop_requested": False}
    assert results[2] == {"id": 99, "status": None, "error": f"no job 99 in {db}"}
    assert pending.refresh().status == "cancelled" and done.refresh().status == "completed"


def test_cancel_a_composite_cancels_what_is_under_it(q, db, capsys):
    comp = q.put(litejobs.parallel(Job(sample_jobs.add, 1, 1), Job(sample_jobs.add, 2, 2)))
    code, out, _ = cli(capsys, "cancel", db, comp.id)
    assert (code, out) == (0, f"job {comp.id}: cancelled\n")
    assert comp.refresh().status == "cancelled"
    assert [part.status for part in comp.children()] == ["cancelled", "cancelled"]
    assert q.run_pending() == 0


def test_cancel_needs_an_id(db, capsys):
    with pytest.raises(SystemExit) as exit_:
        litejobs.main(["cancel", db])
    assert exit_.value.code == 2


# == purge ================================================================================


def _ended(q, *jobs, seconds_ago=2 * 86400):
    set_column(q.path, "finished_at", seconds_ago, *(job.id for job in jobs))


def test_purge_yes_deletes_what_ended_long_enough_ago_with_what_is_under_it(q, db, capsys):
    old_done = q.put(Job(sample_jobs.add, 1, 1))
    old_failed = q.put(Job(sample_jobs.fail))
    old_comp = q.put(litejobs.parallel(Job(sample_jobs.add, 1, 1), Job(sample_jobs.add, 2, 2)))
    recent = q.put(Job(sample_jobs.add, 3, 3))
    q.run_pending()
    pending = q.put(Job(sample_jobs.add, 4, 4), begin_after=600)
    _ended(q, old_done, old_failed, old_comp)
    code, out, err = cli(capsys, "purge", db, "--older-than", "1d", "--yes")
    assert (code, out, err) == (0, "deleted 5 jobs\n", "")  # 3 roots, 2 parts
    assert job_ids(q) == {recent.id, pending.id}
    code, out, err = cli(capsys, "purge", db, "--older-than", "1d", "--yes")
    assert code == 0 and out.startswith("no job ended before ")


def test_purge_json(q, db, capsys):
    old = q.put(Job(sample_jobs.add, 1, 1))
    q.run_pending()
    _ended(q, old)
    code, out, err = cli(capsys, "purge", db, "--older-than", "1d", "--yes", "--json")
    assert code == 0 and err == ""
    result = json.loads(out)
    assert set(result) == PURGE_KEYS
    assert result["deleted"] == 1
    before = parse_z(result["before"])
    assert close_to_now(before + datetime.timedelta(days=1))
    assert cli_json(capsys, "purge", db, "--older-than", "1d", "--yes")["deleted"] == 0


class _Terminal:
    """A stdin that says it is a terminal."""

    def isatty(self):
        return True

    def readline(self):
        raise AssertionError("purge read stdin directly instead of asking with input()")


@pytest.mark.parametrize("answer, deletes", [("n", False), ("", False), ("no", False),
                                              ("y", True), ("yes", True)])
def test_purge_asks_on_a_terminal(q, db, capsys, monkeypatch, answer, deletes):
    old = q.put(Job(sample_jobs.add, 1, 1))
    q.run_pending()
    _ended(q, old)
    prompts = []

    def ask(prompt=""):
        prompts.append(prompt)
        return answer

    monkeypatch.setattr(sys, "stdin", _Terminal())
    monkeypatch.setattr(builtins, "input", ask)
    code, out, err = cli(capsys, "purge", db, "--older-than", "1d")
    (prompt,) = prompts
    assert prompt.startswith("delete 1 ") and prompt.endswith("? [y/N] "), prompt
    if deletes:
        assert (code, out) == (0, "deleted 1 jobs\n")
        assert job_ids(q) == set()
    else:
        assert (code, out) == (1, "nothing deleted\n")
        assert job_ids(q) == {old.id}


def test_purge_yes_on_a_terminal_does_not_ask(q, db, capsys, monkeypatch):
    old = q.put(Job(sample_jobs.add, 1, 1))
    q.run_pending()
    _ended(q, old)

    def ask(prompt=""):
        raise AssertionError(f"purge --yes asked {prompt!r}")

    monkeypatch.setattr(sys, "stdin", _Terminal())
    monkeypatch.setattr(builtins, "input", ask)
    assert cli(capsys, "purge", db, "--older-than", "1d", "--yes")[:2] == (0, "deleted 1 jobs\n")


def test_purge_not_on_a_terminal_does_not_ask(q, db, capsys, monkeypatch):
    old = q.put(Job(sample_jobs.add, 1, 1))
    q.run_pending()
    _ended(q, old)

    def ask(prompt=""):
        raise AssertionError(f"purge asked {prompt!r} with stdin not a terminal")

    monkeypatch.setattr(builtins, "input", ask)
    assert not sys.stdin.isatty()
    assert cli(capsys, "purge", db, "--older-than", "1d")[:2] == (0, "deleted 1 jobs\n")


def test_purge_keeps_a_finished_job_while_its_callback_is_pending(q, db, capsys):
    job = q.put(Job(sample_jobs.add, 1, 2))
    q.run_pending()
    callback = job.add_callback(Job(sample_jobs.describe_outcome))
    assert callback.refresh().status == "pending"
    _ended(q, job)
    code, out, _ = cli(capsys, "purge", db, "--older-than", "1d", "--yes")
    assert code == 0 and out.startswith("no job ended before ")
    assert job_ids(q) == {job.id, callback.id}
    assert q.run_pending() == 1
    assert cli(capsys, "purge", db, "--older-than", "1d", "--yes")[:2] == (0, "deleted 2 jobs\n")
    assert job_ids(q) == set()


def test_purge_status_filter(q, db, capsys):
    done = q.put(Job(sample_jobs.add, 1, 1))
    failed = q.put(Job(sample_jobs.fail))
    cancelled = q.put(Job(sample_jobs.add, 2, 2))
    cancelled.cancel()
    q.run_pending()
    _ended(q, done, failed, cancelled)
    code, out, _ = cli(capsys, "purge", db, "--older-than", "1d", "--status", "failed", "--yes")
    assert (code, out) == (0, "deleted 1 jobs\n")
    assert job_ids(q) == {done.id, cancelled.id}
    code, out, _ = cli(capsys, "purge", db, "--older-than", "1d", "--status", "failed", "--yes")
    assert code == 0 and out.startswith("no job ended before ") and "failed" in out
    with pytest.raises(SystemExit) as exit_:
        litejobs.main(["purge", db, "--older-than", "1d", "--status", "pending", "--yes"])
    assert exit_.value.code == 2
    capsys.readouterr()


def test_purge_needs_older_than(db, capsys):
    with pytest.raises(SystemExit) as exit_:
        litejobs.main(["purge", db, "--yes"])
    assert exit_.value.code == 2
    assert "--older-than" in capsys.readouterr().err


def test_purge_deletes_in_batches(q, db, capsys, monkeypatch):
    old = q.put_many([Job(sample_jobs.add, i, i) for i in range(10)])
    recent = q.put(Job(sample_jobs.add, 0, 0))
    q.run_pending()
    _ended(q, *old)
    monkeypatch.setattr(litejobs, "_PRUNE_BATCH", 3)
    calls = []
    purge = litejobs._SQLiteStorage.purge

    def spy(self, before, **options):
        found = purge(self, before, **options)
        calls.append((options, found))
        return found

    monkeypatch.setattr(litejobs._SQLiteStorage, "purge", spy)
    assert cli(capsys, "purge", db, "--older-than", "1d", "--yes")[:2] == (0, "deleted 10 jobs\n")
    assert job_ids(q) == {recent.id}
    deleting = [(options["limit"], found) for options, found in calls
                if not options.get("dry_run")]
    assert deleting == [(3, (3, 0)), (3, (3, 0)), (3, (3, 0)), (3, (1, 0))]


# == put ==================================================================================

PUT_LINE = re.compile(r"job (\d+) put: (\S+) in queue (\S+), due (\S+)\n\Z")


def test_put_a_positional_array(q, db, capsys, keep_sys_path):
    code, out, err = cli(capsys, "put", db, "sample_jobs:add", "[2, 3]")
    assert code == 0 and err == ""
    found = PUT_LINE.match(out)
    assert found, out
    job_id, name, queue, due = found.groups()
    assert (name, queue) == ("sample_jobs:add", "default")
    assert close_to_now(parse_z(due))
    job = q.get(int(job_id))
    assert (job.status, job.args, job.kwargs) == ("pending", (2, 3), {})
    assert q.run_pending() == 1 and job.refresh().result == 5


def test_put_a_keyword_object(q, db, capsys, keep_sys_path):
    code, out, _ = cli(capsys, "put", db, "sample_jobs:echo",
                       '{"a": 1, "b": [2, "x"], "c": null}')
    assert code == 0
    job = q.get(int(PUT_LINE.match(out).group(1)))
    assert q.run_pending() == 1
    assert job.refresh().result == ((), {"a": 1, "b": [2, "x"], "c": None})


def test_put_without_arguments(q, db, capsys, keep_sys_path):
    code, out, _ = cli(capsys, "put", db, "sample_jobs:pid")
    assert code == 0
    job = q.get(int(PUT_LINE.match(out).group(1)))
    assert (job.args, job.kwargs) == ((), {})


def test_put_delay_queue_priority_json(q, db, capsys, keep_sys_path):
    row = cli_json(capsys, "put", db, "sample_jobs:add", "[1, 1]", "--delay", "10m",
                   "--queue", "reports", "--priority", "5")
    assert set(row) == JOB_KEYS, set(row) ^ JOB_KEYS
    assert (row["status"], row["name"], row["queue"], row["priority"], row["key"],
            row["attempts"], row["meta"], row["parent_id"]) == \
        ("pending", "sample_jobs:add", "reports", 5, None, 0, {}, None)
    created, due = parse_z(row["created_at"]), parse_z(row["begin_after"])
    assert close_to_now(created)
    assert (due - created).total_seconds() == pytest.approx(600, abs=0.002)
    assert q.run_pending() == 0  # not due for ten minutes
    code, out, _ = cli(capsys, "put", db, "sample_jobs:add", "[1, 1]", "--delay", "2h",
                       "-q", "reports")
    assert code == 0
    _, _, queue, due_text = PUT_LINE.match(out).groups()
    assert queue == "reports"
    assert (parse_z(due_text) - datetime.datetime.now(UTC)).total_seconds() == \
        pytest.approx(7200, abs=10)


def test_put_with_a_key_puts_nothing_while_the_key_is_taken(q, db, capsys, keep_sys_path):
    first = cli_json(capsys, "put", db, "sample_jobs:add", "[1, 1]", "--key", "nightly")
    again = cli_json(capsys, "put", db, "sample_jobs:add", "[2, 2]", "--key", "nightly")
    assert first["key"] == "nightly" and again["id"] == first["id"]
    assert job_ids(q) == {first["id"]}
    assert q.get(first["id"]).args == (1, 1)
    q.run_pending()
    later = cli_json(capsys, "put", db, "sample_jobs:add", "[3, 3]", "--key", "nightly")
    assert later["id"] != first["id"]  # the key is free once its job has ended


@pytest.mark.parametrize("arguments", ["[1,", "{'a': 1}", "3", '"text"', "null", "nope"])
def test_put_bad_json_is_a_usage_error(q, db, capsys, keep_sys_path, arguments):
    code, out, err = cli(capsys, "put", db, "sample_jobs:add", arguments)
    assert code == 2 and out == ""
    assert err.startswith("litejobs put: error: ") and err.count("\n") == 1
    assert "Traceback" not in err
    assert job_ids(q) == set()


@pytest.mark.parametrize("function", ["no_such_module_xyz:run", "sample_jobs:no_such_function",
                                      "sample_jobs", "not a name"])
def test_put_a_function_that_cannot_be_imported_is_a_usage_error(q, db, capsys, keep_sys_path,
                                                                 function):
    code, out, err = cli(capsys, "put", db, function, "[1]")
    assert code == 2 and out == ""
    assert err.startswith("litejobs put: error: ") and err.count("\n") == 1
    assert "Traceback" not in err
    assert job_ids(q) == set()


# == watch ================================================================================


def _block_state(block):
    """What a watch block shows, less the passing time: status and progress."""
    status = block[0].split()[1]
    progress = [line for line in block[1:] if "%" in line]
    return status, tuple(progress)


def test_watch_a_job_a_pool_runs_prints_only_changes(q, db, capsys):
    with q.worker(processes=1):
        job = q.put(Job(sample_jobs.report_progress, 3, pause=0.6))
        started = time.monotonic()
        code, out, err = cli(capsys, "watch", db, job.id, "--interval", "20ms")
        took = time.monotonic() - started
        assert (code, err) == (0, ""), out
        assert job.refresh().status == "completed"
        blocks = watch_blocks(out)
        states = [_block_state(block) for block in blocks]
        # About 100 looks over the job's ~2 s; a block only for each change.
        assert took > 1.0
        assert 2 <= len(blocks) <= 6, out
        for before, after in zip(states, states[1:]):
            assert before != after, f"a block repeated what the one before showed:\n{out}"
        for block in blocks:  # the job's line as list prints it, then its progress
            assert block[0].split()[0] == str(job.id)
            assert block[0].split()[2:4] == ["sample_jobs:report_progress", "default"]
        assert states[0][0] in ("pending", "active")
        assert states[-1] == ("completed", ("[" + "#" * 40 + "] 100% step 3 of 3",))
        percents = [int(re.search(r"(\d+)%", line).group(1)) for _, lines in states
                    for line in lines]
        assert percents == sorted(percents)
        assert {33, 67} & set(percents), f"no progress on the way:\n{out}"

        failing = q.put(Job(sample_jobs.fail, "watched"))
        code, out, err = cli(capsys, "watch", db, failing.id, "--interval", "20ms")
        assert (code, err) == (1, ""), out
        last = watch_blocks(out)[-1]
        assert last[0].split()[1] == "failed" and last[-1] == "ValueError: watched"


def test_watch_a_cancelled_job_exits_1(q, db, capsys):
    job = q.put(Job(sample_jobs.add, 1, 1))
    job.cancel()
    code, out, err = cli(capsys, "watch", db, job.id, "--interval", "20ms")
    assert (code, err) == (1, "")
    (block,) = watch_blocks(out)
    assert block[0].split()[1] == "cancelled"


def test_watch_a_composite_shows_its_children(q, db, capsys):
    comp = q.put(litejobs.parallel(Job(sample_jobs.add, 1, 1), Job(sample_jobs.fail),
                                   Job(sample_jobs.add, 2, 2),
                                   postprocess=sample_jobs.describe_parts))
    q.run_pending()
    code, out, err = cli(capsys, "watch", db, comp.id, "--interval", "20ms")
    assert (code, err) == (0, "")
    (block,) = watch_blocks(out)
    assert block[0].split()[:4] == [str(comp.id), "completed", "sample_jobs:describe_parts",
                                    "(parallel)"]
    assert "children: 2 completed, 1 failed" in block


def test_watch_on_a_terminal_redraws_with_a_progress_bar(q, db, capsys, monkeypatch):
    job = q.put(Job(sample_jobs.report_progress, 2))
    q.run_pending()
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, out, err = cli(capsys, "watch", db, job.id, "--interval", "20ms")
    assert (code, err) == (0, "")
    assert out.startswith("\x1b[H\x1b[2J")
    assert "[" + "#" * 40 + "] 100% step 2 of 2" in out
    assert not WATCH_STAMP.match(out.replace("\x1b[H\x1b[2J", ""))


def test_watch_an_unknown_job_is_a_one_line_error(q, db, capsys):
    assert_one_line_error(*cli(capsys, "watch", db, 99, "--interval", "20ms"))


def _read_lines(stream, into):
    for line in stream:
        into.put(line)
    into.put(None)


def test_watching_the_whole_database_runs_until_sigint_then_exits_130(q, db, tmp_path):
    q.put(Job(sample_jobs.add, 1, 1))
    proc = subprocess.Popen(
        [sys.executable, "-m", "litejobs", "watch", db, "--interval", "50ms"],
        cwd=tmp_path, env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, preexec_fn=_sigint_default)
    lines = queue_module.Queue()
    reader = threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True)
    reader.start()
    seen = []

    def next_block_starts():
        """Read lines until one starts a block; return it (None at the end)."""
        deadline = time.monotonic() + WAIT
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue_module.Empty:
                pytest.fail(f"watch printed no new block in {WAIT}s:\n{''.join(seen)}")
            if line is None:
                return None
            seen.append(line)
            if WATCH_STAMP.match(line):
                return line

    try:
        first = next_block_starts()
        assert first is not None and f"{db} at " in first, "".join(seen)
        q.put(Job(sample_jobs.add, 2, 2))  # a change: a second block
        second = next_block_starts()
        assert second is not None, "".join(seen)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=WAIT)
        reader.join(timeout=WAIT)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    while not lines.empty():
        line = lines.get_nowait()
        if line is not None:
            seen.append(line)
    out = "".join(seen)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "Traceback" not in out
    blocks = watch_blocks(out)
    assert len(blocks) == 2, f"a block printed with nothing changed:\n{out}"
    assert any(line.split()[:2] == ["default", "1"] for line in blocks[0]), out
    assert any(line.split()[:2] == ["default", "2"] for line in blocks[1]), out


# == errors and read-only =================================================================

READING = [["status"], ["status", "--json"], ["list"], ["show", "1"], ["watch", "1"],
           ["watch"], ["workers"]]
WRITING = [["retry", "1"], ["retry", "--failed"], ["cancel", "1"],
           ["purge", "--older-than", "1d", "--yes"], ["put", "sample_jobs:add", "[1, 2]"]]


def _command(words, path):
    return [words[0], str(path), *words[1:]]


def _wal_files(path):
    return [f"{path}-wal", f"{path}-shm", f"{path}-journal"]


@pytest.mark.parametrize("words", READING + WRITING, ids=" ".join)
def test_a_missing_database_is_a_one_line_error_and_is_not_created(tmp_path, capsys,
                                                                   keep_sys_path, words):
    missing = tmp_path / "missing.db"
    status, out, err = cli(capsys, *_command(words, missing))
    assert_one_line_error(status, out, err)
    assert str(missing) in err
    assert not missing.exists()
    assert not any(os.path.exists(name) for name in _wal_files(missing))


@pytest.mark.parametrize("words", READING + WRITING, ids=" ".join)
def test_a_corrupt_database_is_a_one_line_error_and_is_left_alone(tmp_path, capsys,
                                                                  keep_sys_path, words):
    corrupt = tmp_path / "corrupt.db"
    garbage = random.Random(7).randbytes(8192)
    corrupt.write_bytes(garbage)
    status, out, err = cli(capsys, *_command(words, corrupt))
    assert_one_line_error(status, out, err)
    assert str(corrupt) in err
    assert corrupt.read_bytes() == garbage


@pytest.mark.parametrize("words", READING, ids=" ".join)
def test_read_only_commands_refuse_a_sqlite_file_without_the_litejobs_schema(tmp_path, capsys,
                                                                            words):
    # Opened for writing, such a file would get the litejobs tables.
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL)")
    conn.execute("INSERT INTO orders (total) VALUES (9.5)")
    conn.commit()
    conn.close()
    content = path.read_bytes()
    status, out, err = cli(capsys, *_command(words, path))
    assert_one_line_error(status, out, err)
    assert "not a litejobs database" in err
    assert path.read_bytes() == content


def test_errors_as_a_subprocess_are_one_line_without_a_traceback(tmp_path):
    missing = tmp_path / "missing.db"
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(random.Random(8).randbytes(8192))
    for words, path in ((["status"], missing), (["show", "1"], missing),
                        (["put", "sample_jobs:add", "[1]"], missing),
                        (["list"], corrupt), (["cancel", "1"], corrupt)):
        done = run_cli(*_command(words, path), cwd=tmp_path)
        assert_one_line_error(done.returncode, done.stdout, done.stderr)
    assert not missing.exists()


def test_read_only_commands_change_nothing_in_the_file(tmp_path, capsys):
    path = tmp_path / "app.db"
    with litejobs.Queue(path) as q:
        done = q.put(Job(sample_jobs.report_progress, 2, note="n"))
        failed = q.put(Job(sample_jobs.fail))
        q.put(litejobs.parallel(Job(sample_jobs.add, 1, 1), Job(sample_jobs.add, 2, 2)))
        q.run_pending()
        q.put(Job(sample_jobs.add, 3, 3))
    assert not os.path.exists(f"{path}-wal"), "closing the queue should leave no -wal file"
    content, mtime = path.read_bytes(), path.stat().st_mtime_ns
    for words in (["status"], ["status", "--json"], ["list"], ["list", "--json"],
                  ["list", "--status", "failed"], ["show", str(done.id)],
                  ["show", str(failed.id), "--json"], ["workers"], ["workers", "--json"],
                  ["watch", str(done.id), "--interval", "20ms"]):
        code, out, err = cli(capsys, *_command(words, path))
        assert code == 0 and err == "", (words, err)
    done_proc = run_cli("status", path, cwd=tmp_path)
    assert done_proc.returncode == 0, done_proc.stderr
    assert path.read_bytes() == content
    assert path.stat().st_mtime_ns == mtime


# == every command as python -m litejobs ==================================================


def test_put_list_show_as_subprocesses(q, db, tmp_path):
    (tmp_path / "my_tasks.py").write_text("def triple(x):\n    return 3 * x\n")
    # The current directory is importable: my_tasks is found there.
    done = run_cli("put", db, "my_tasks:triple", "[7]", "--queue", "scripts", "--json",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout)
    assert set(row) == JOB_KEYS
    assert (row["name"], row["queue"], row["status"]) == ("my_tasks:triple", "scripts", "pending")
    done = run_cli("put", db, "sample_jobs:fail", '{"message": "sub"}', cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    failed_id = int(PUT_LINE.match(done.stdout).group(1))
    assert q.run_pending(queues=["default"]) == 1
    assert q.get(failed_id).status == "failed"
    done = run_cli("list", db, "--status", "failed", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [row["id"] for row in json.loads(done.stdout)] == [failed_id]
    done = run_cli("show", db, failed_id, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "  call       sample_jobs:fail(message='sub')" in done.stdout
    assert "    ValueError: sub" in done.stdout


def test_status_workers_retry_cancel_purge_watch_as_subprocesses(q, db, tmp_path):
    failed = q.put(Job(sample_jobs.fail, "sub"))
    old = q.put(Job(sample_jobs.add, 1, 1))
    q.run_pending()
    _ended(q, old)
    pending = q.put(Job(sample_jobs.add, 2, 2), begin_after=600)

    done = run_cli("status", db, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert set(status) == STATUS_KEYS and status["totals"]["failed"] == 1

    done = run_cli("workers", db, "--json", cwd=tmp_path)
    assert (done.returncode, json.loads(done.stdout)) == (0, [])

    done = run_cli("watch", db, failed.id, "--interval", "20ms", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "ValueError: sub" in done.stdout

    done = run_cli("watch", db, old.id, "--interval", "20ms", cwd=tmp_path)
    assert done.returncode == 0, done.stderr

    done = run_cli("retry", db, failed.id, cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, f"job {failed.id}: pending again\n")

    done = run_cli("cancel", db, pending.id, 999, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [f"job {pending.id}: cancelled"]
    assert done.stderr == f"litejobs: error: no job 999 in {db}\n"

    # stdin is /dev/null, not a terminal: no question, no --yes needed.
    done = run_cli("purge", db, "--older-than", "1d", cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, "deleted 1 jobs\n", "")
    assert job_ids(q) == {failed.id, pending.id}


# -- decisions made after review ---------------------------------------------------


def test_a_retried_job_starts_afresh_and_its_old_error_is_in_its_history(q, db, capsys):
    job = q.put(Job(sample_jobs.fail, "first run"))
    q.run_pending()
    assert cli(capsys, "retry", db, job.id)[0] == 0
    job.refresh()
    assert (job.status, job.error, job.error_type, job.ran_by) == (PENDING, None, None, None)
    (entry,) = job.history
    assert entry["event"] == "retried by hand" and entry["error"] == "ValueError: first run"
    assert "error" not in cli(capsys, "show", db, job.id)[1].split("history", 1)[1]


@pytest.mark.parametrize("command", [["cancel", "1"], ["retry", "1"],
                                     ["purge", "--older-than", "1d", "--yes"]])
def test_commands_that_change_jobs_refuse_a_file_without_litejobs(tmp_path, capsys, command):
    app = tmp_path / "app.db"
    with sqlite3.connect(app) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    before = app.read_bytes()
    code, out, err = cli(capsys, command[0], app, *command[1:])
    assert code == 1 and err.startswith("litejobs: error:") and "not a litejobs database" in err
    assert app.read_bytes() == before


def test_purge_with_json_still_asks_on_a_terminal_but_on_stderr(q, db, capsys, monkeypatch):
    old = q.put(Job(sample_jobs.add, 1, 1))
    q.run_pending()
    _ended(q, old)
    prompts = []
    monkeypatch.setattr(sys, "stdin", _Terminal())
    monkeypatch.setattr(builtins, "input", lambda prompt="": prompts.append(prompt) or "n")
    code, out, err = cli(capsys, "purge", db, "--older-than", "1d", "--json")
    assert code == 1 and prompts == [""]
    assert "delete 1 " in err and "? [y/N] " in err
    assert q.get(old.id).status == COMPLETED


def test_show_counts_attempts_as_the_retry_policy_does(q, db, capsys, now):
    """Interruptions and handed-back runs do not use up Retry attempts, and
    show says so: 3 runs failed, 1 was interrupted, 1 handed back."""
    job = q.put(Job(sample_jobs.fail), retry=litejobs.Retry(attempts=8, delay=0))
    for _ in range(3):
        assert q.run_pending(now=now, limit=1) == 1
    stamp = now.timestamp()
    token, _ = q._storage.claim(owner="elsewhere", queues=None, now=stamp, expires=stamp + 60,
                                limit=1)
    q._storage.interrupt(job.id, token, stamp, "killed")
    token, _ = q._storage.claim(owner="elsewhere", queues=None, now=stamp, expires=stamp + 60,
                                limit=1)
    q._storage.hand_back(job.id, token, stamp, "the pool stopped before it ended")
    code, out, _ = cli(capsys, "show", db, job.id)
    assert code == 0
    assert "  attempts   3 of 8, interruptions 1 of 3, handed back 1\n" in out, out
    code, out, _ = cli(capsys, "show", db, job.id, "--json")
    shown = json.loads(out)
    assert (shown["attempts"], shown["attempts_counted"], shown["interruptions"],
            shown["handbacks"]) == (5, 3, 1, 1)
    assert [entry["event"] for entry in shown["history"]] == [
        "retried", "retried", "retried", "interrupted", "handed back"]
    callback = q.put(Job(sample_jobs.add, 1, 1)).add_callback(sample_jobs.describe_outcome)
    code, out, _ = cli(capsys, "show", db, callback.id)
    assert "interruptions 0 of no limit" in out
    assert json.loads(cli(capsys, "show", db, callback.id, "--json")[1])[
        "max_interruptions"] is None


def test_watch_json_prints_a_job_object_per_change(q, db, capsys):
    job = q.put(Job(sample_jobs.add, 1, 1))
    q.run_pending()
    code, out, err = cli(capsys, "watch", db, job.id, "--json", "--interval", "20ms")
    assert (code, err) == (0, "")
    [line] = out.splitlines()
    shown = json.loads(line)
    assert set(shown) == JOB_KEYS | {"time", "children"}
    assert (shown["id"], shown["status"], shown["children"]) == (job.id, "completed", {})
