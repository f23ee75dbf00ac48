"""Tests of litejobs' storage layer: the database file, its schema, and its connections.

Every test works on a real SQLite file.  Where litejobs' own view could hide
something, the file is inspected through a plain ``sqlite3`` connection.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import pickle
import random
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

import litejobs

# Generous bounds for waits on other processes; a healthy run takes a fraction.
PROCESS_TIMEOUT = 60.0

APP_TABLE_ROWS = [(1, "ada"), (2, "grace"), (3, "barbara")]


# -- helpers -------------------------------------------------------------------


def file_mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def plain_connection(path: Path) -> Iterator[sqlite3.Connection]:
    """A sqlite3 connection that bypasses litejobs, in autocommit mode."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def schema_rows(path: Path) -> list[tuple[int, float]]:
    with plain_connection(path) as conn:
        return conn.execute(
            "SELECT version, applied_at FROM litejobs_schema ORDER BY version"
        ).fetchall()


def schema_objects(path: Path) -> dict[str, str]:
    """Name -> type of every table and index in the file, SQLite's own excluded."""
    with plain_connection(path) as conn:
        rows = conn.execute(
            "SELECT name, type FROM sqlite_master"
            " WHERE type IN ('table', 'index') AND name NOT LIKE 'sqlite_%'"
        ).fetchall()
    return dict(rows)


def make_litejobs_db(path: Path, jobs: int = 0) -> Path:
    """A closed litejobs database holding ``jobs`` pending jobs, with its WAL
    checkpointed into the main file, so the main file is the whole database."""
    queue = litejobs.Queue(path, durable=False)
    try:
        if jobs:
            queue.put_many([litejobs.Job(pow, 2, n) for n in range(jobs)])
    finally:
        queue.close()
    with plain_connection(path) as conn:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0
    wal = Path(f"{path}-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    return path


def join_all(processes, timeout: float = PROCESS_TIMEOUT) -> None:
    """Join every process, all within one overall ``timeout``; kill stragglers."""
    deadline = time.monotonic() + timeout
    try:
        for process in processes:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join(timeout=timeout)


def side_files(path: Path) -> list[Path]:
    return [p for p in (Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]


def claim_plan(conn: sqlite3.Connection, queue_count: int | None,
               unsigned_only: bool = False, avoiding: bool = False) -> str:
    """The query plan of the whole claim statement (None: every queue)."""
    params = {"now": 1e12, "limit": 1, "owner": "o", "token": "t", "expires": 1e12,
              "unstarted": 1, "avoid": '["m:f"]'}
    params.update((f"queue{i}", f"q{i}") for i in range(queue_count or 0))
    sql = litejobs._claim_statement(queue_count, unsigned_only, avoiding)
    rows = conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
    return "\n".join(row[-1] for row in rows)


def assert_indexed_claim(plan: str, queue_count: int | None) -> None:
    # Pending rows are read in claim order from a ready index: no scan of the
    # table, and no sort but the final merge of at most LIMIT rows per range.
    lines = plan.splitlines()
    assert "SCAN litejobs_jobs" not in lines, plan
    assert plan.count("USE TEMP B-TREE") <= 1, plan
    if queue_count is not None and queue_count <= litejobs._MAX_QUEUE_RANGES:
        ranges = [line for line in lines if "litejobs_jobs_ready_by_queue" in line]
        assert ranges == ["SEARCH litejobs_jobs USING INDEX "
                          "litejobs_jobs_ready_by_queue (queue=?)"] * queue_count, plan
    else:
        assert [line for line in lines if "litejobs_jobs_ready" in line] == [
            "SCAN litejobs_jobs USING INDEX litejobs_jobs_ready"], plan


# -- fixtures ------------------------------------------------------------------


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


# -- 1. file modes ---------------------------------------------------------------


def test_new_database_and_its_wal_and_shm_files_are_private(db_path, umask_022):
    queue = litejobs.Queue(db_path)
    try:
        assert file_mode(db_path) == 0o600
        queue.put("time:time")
        wal, shm = Path(f"{db_path}-wal"), Path(f"{db_path}-shm")
        assert wal.exists() and shm.exists()
        assert file_mode(wal) == 0o600
        assert file_mode(shm) == 0o600
    finally:
        queue.close()


# -- 2. pragmas ------------------------------------------------------------------


def test_database_is_in_wal_journal_mode(db_path):
    litejobs.Queue(db_path).close()
    with plain_connection(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_litejobs_connection_enforces_foreign_keys(litejobs_queue):
    conn = litejobs_queue._storage._connection()
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


@pytest.mark.parametrize(("durable", "synchronous"), [(True, 2), (False, 1)],
                         ids=["durable-FULL", "not-durable-NORMAL"])
def test_synchronous_follows_durable(db_path, durable, synchronous):
    queue = litejobs.Queue(db_path, durable=durable)
    try:
        conn = queue._storage._connection()
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == synchronous
    finally:
        queue.close()


def test_default_queue_is_durable(litejobs_queue):
    conn = litejobs_queue._storage._connection()
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2


# -- 3. migrations ---------------------------------------------------------------


def assert_fully_migrated(path: Path) -> None:
    rows = schema_rows(path)
    assert [version for version, _ in rows] == list(range(1, len(litejobs._MIGRATIONS) + 1))
    assert max(version for version, _ in rows) == litejobs._SCHEMA_VERSION


def test_empty_file_is_migrated(db_path):
    db_path.touch()
    assert db_path.stat().st_size == 0

    with litejobs.Queue(db_path) as queue:
        job = queue.put(litejobs.Job(pow, 2, 10))
        assert queue.run_pending() == 1
        assert job.refresh().result == 1024

    assert_fully_migrated(db_path)
    assert {"litejobs_jobs", "litejobs_workers", "litejobs_schema"} <= set(
        schema_objects(db_path))


def create_app_database(path: Path) -> None:
    with plain_connection(path) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        conn.execute("CREATE INDEX users_name ON users (name)")
        conn.executemany("INSERT INTO users VALUES (?, ?)", APP_TABLE_ROWS)
        conn.execute("PRAGMA user_version = 42")


def test_migration_leaves_application_tables_and_user_version_alone(db_path):
    create_app_database(db_path)
    app_objects = schema_objects(db_path)

    with litejobs.Queue(db_path) as queue:
        queue.put("time:time")

    with plain_connection(db_path) as conn:
        assert conn.execute("SELECT id, name FROM users ORDER BY id").fetchall() \
            == APP_TABLE_ROWS
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 42
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    objects = schema_objects(db_path)
    assert {name: objects[name] for name in app_objects} == app_objects
    added = set(objects) - set(app_objects)
    assert added, "litejobs created no tables"
    assert all(name.startswith("litejobs_") for name in added), sorted(added)
    assert_fully_migrated(db_path)


def test_opening_again_does_not_rerun_migrations(db_path):
    litejobs.Queue(db_path).close()
    first = schema_rows(db_path)

    litejobs.Queue(db_path).close()
    with litejobs.Queue(db_path) as queue:
        queue.put("time:time")

    assert schema_rows(db_path) == first  # same rows, same applied_at
    assert_fully_migrated(db_path)


def test_a_file_of_schema_version_1_is_upgraded_keeping_its_jobs(db_path):
    """A database written before migration 2 (no handbacks, no stop requests)
    is upgraded on open, in place, and its jobs run as before."""
    with plain_connection(db_path) as conn:
        conn.execute(litejobs._CREATE_VERSION_TABLE)
        for statement in litejobs._MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute(litejobs._RECORD_VERSION, (1, time.time()))
        conn.execute("INSERT INTO litejobs_jobs (queue, status, name, created_at, begin_after)"
                     " VALUES ('default', 'pending', 'time:time', 0, 0)")
    with pytest.raises(litejobs.DatabaseError, match="schema version 1"):
        litejobs.Queue(db_path, read_only=True)  # a reader never upgrades
    with litejobs.Queue(db_path) as queue:
        job = queue.get(1)
        assert (job.status, job.handbacks, job.stop_requested) == ("pending", 0, False)
        assert queue.run_pending() == 1
        assert isinstance(job.wait(timeout=1), float)
    assert_fully_migrated(db_path)


def test_a_file_of_schema_version_2_gets_exact_counts_of_the_jobs_it_already_held(db_path):
    """Migration 3 tallies the jobs that had ended; counts stay exact after."""
    with plain_connection(db_path) as conn:
        conn.execute(litejobs._CREATE_VERSION_TABLE)
        for version in (1, 2):
            for statement in litejobs._MIGRATIONS[version - 1]:
                conn.execute(statement)
            conn.execute(litejobs._RECORD_VERSION, (version, time.time()))
        for queue, status, finished in [("default", "completed", 1), ("default", "completed", 1),
                                        ("default", "failed", 1), ("other", "cancelled", 1),
                                        ("default", "pending", None)]:
            conn.execute("INSERT INTO litejobs_jobs (queue, status, name, created_at, "
                         "begin_after, finished_at) VALUES (?, ?, 'time:time', 0, 0, ?)",
                         (queue, status, finished))
    with litejobs.Queue(db_path) as queue:
        assert queue.counts() == {"pending": 1, "waiting": 0, "active": 0, "completed": 2,
                                  "failed": 1, "cancelled": 1}
        assert queue.counts("other")["cancelled"] == 1
        assert queue.run_pending() == 1
        assert queue.counts()["completed"] == 3
    assert_fully_migrated(db_path)


# -- 4. a file from a newer litejobs -----------------------------------------------


def test_file_from_newer_litejobs_is_refused_untouched(db_path):
    make_litejobs_db(db_path, jobs=3)
    newer = litejobs._SCHEMA_VERSION + 1
    with plain_connection(db_path) as conn:
        conn.execute("INSERT INTO litejobs_schema (version, applied_at) VALUES (?, 0)",
                     (newer,))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = sha256(db_path)

    with pytest.raises(litejobs.SchemaVersionError) as excinfo:
        litejobs.Queue(db_path)

    assert issubclass(litejobs.SchemaVersionError, litejobs.DatabaseError)
    message = str(excinfo.value)
    assert "upgrade litejobs" in message
    assert str(newer) in message
    assert sha256(db_path) == before


# -- 5. files that are not usable databases -----------------------------------------


def write_text_file(path: Path) -> None:
    path.write_text("name,email\nada,ada@example.com\n")


def overwrite_header_with_random_bytes(path: Path) -> None:
    make_litejobs_db(path, jobs=10)
    noise = random.Random(1234).randbytes(100)
    with open(path, "r+b") as handle:
        handle.write(noise)


def truncate_big_database_to_half(path: Path) -> None:
    make_litejobs_db(path, jobs=2000)
    size = path.stat().st_size
    assert size > 100 * 1024, "too few pages for a meaningful truncation"
    os.truncate(path, size // 2)


@pytest.mark.parametrize(("damage", "message"), [
    (write_text_file, "is not an SQLite database"),
    (overwrite_header_with_random_bytes, "is not an SQLite database"),
    (truncate_big_database_to_half, "is truncated"),
], ids=["text-file", "random-header", "truncated"])
def test_unusable_file_is_refused_untouched(db_path, damage, message):
    damage(db_path)
    before = sha256(db_path)

    with pytest.raises(litejobs.DatabaseError, match=message) as excinfo:
        litejobs.Queue(db_path)

    assert "untouched" in str(excinfo.value)
    assert sha256(db_path) == before
    assert side_files(db_path) == []


def test_directory_is_refused(tmp_path):
    directory = tmp_path / "jobs.db"
    directory.mkdir()
    with pytest.raises(litejobs.DatabaseError, match="is a directory"):
        litejobs.Queue(directory)
    assert list(directory.iterdir()) == []


def test_path_in_missing_directory_is_refused_and_nothing_is_created(tmp_path):
    with pytest.raises(litejobs.DatabaseError, match="does not exist"):
        litejobs.Queue(tmp_path / "missing" / "jobs.db")
    assert list(tmp_path.iterdir()) == []


def test_create_false_refuses_missing_file_and_creates_nothing(tmp_path):
    with pytest.raises(litejobs.DatabaseError, match="no database at"):
        litejobs.Queue(tmp_path / "jobs.db", create=False)
    assert list(tmp_path.iterdir()) == []


def test_create_false_opens_existing_database(db_path):
    litejobs.Queue(db_path).close()
    with litejobs.Queue(db_path, create=False) as queue:
        queue.put("time:time")
        assert queue.counts()["pending"] == 1


# -- 6. read-only files and directories --------------------------------------------

# Runs in a fresh interpreter.  As root, it drops to ``nobody`` (for whom file
# modes apply) only after importing litejobs: the interpreter itself may live
# where nobody cannot read, as under /root.
_OPEN_UNPRIVILEGED = r"""
import json, os, pwd, sys
module_dir, db_path = sys.argv[1], sys.argv[2]
sys.path.insert(0, module_dir)
import litejobs
if os.geteuid() == 0:
    nobody = pwd.getpwnam("nobody")
    os.setgroups([])
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)
try:
    litejobs.Queue(db_path).close()
except litejobs.DatabaseError as exc:
    outcome = {"raised": type(exc).__name__, "message": str(exc)}
else:
    outcome = {"raised": None, "message": ""}
print(json.dumps(outcome))
"""


def open_unprivileged(path: Path) -> dict[str, str | None]:
    """Open ``path`` with litejobs as a user the file modes apply to."""
    module_dir = os.path.dirname(os.path.abspath(litejobs.__file__))
    completed = subprocess.run(
        [sys.executable, "-c", _OPEN_UNPRIVILEGED, module_dir, str(path)],
        cwd=path.parent, capture_output=True, text=True, timeout=PROCESS_TIMEOUT,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the unprivileged user can reach (tmp_path is 0700 under root)."""
    directory = Path(tempfile.mkdtemp(prefix="litejobs-test-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        directory.chmod(0o755)
        shutil.rmtree(directory)


def test_read_only_file_is_refused_untouched(shared_dir):
    path = make_litejobs_db(shared_dir / "jobs.db", jobs=3)
    path.chmod(0o444)
    before = sha256(path)

    outcome = open_unprivileged(path)

    assert outcome["raised"] == "DatabaseError"
    assert "read-only" in outcome["message"]
    assert sha256(path) == before
    assert side_files(path) == []


def test_read_only_directory_without_database_is_refused(shared_dir):
    path = shared_dir / "jobs.db"
    shared_dir.chmod(0o555)

    outcome = open_unprivileged(path)

    assert outcome["raised"] == "DatabaseError"
    assert f"{shared_dir} is read-only" in outcome["message"]
    assert list(shared_dir.iterdir()) == []


def test_writable_file_in_read_only_directory_is_refused(shared_dir):
    # SQLite must create the -wal and -shm files next to the database.
    path = make_litejobs_db(shared_dir / "jobs.db")
    path.chmod(0o666)
    shared_dir.chmod(0o555)
    before = sha256(path)

    outcome = open_unprivileged(path)

    assert outcome["raised"] == "DatabaseError"
    assert "read-only" in outcome["message"]
    assert sha256(path) == before
    assert sorted(p.name for p in shared_dir.iterdir()) == ["jobs.db"]


# -- 7. SQLite version -------------------------------------------------------------


def test_old_sqlite_is_refused_before_touching_the_file(db_path, monkeypatch):
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 34, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.34.1")

    with pytest.raises(litejobs.DatabaseError, match=r"3\.35") as excinfo:
        litejobs.Queue(db_path)

    assert "3.34.1" in str(excinfo.value)
    assert not db_path.exists()


# -- 8. the partial index of ready jobs ------------------------------------------------


@pytest.mark.parametrize("queue_count", [None, 1, 2, 5, 16, 17, 600])
def test_claim_finds_ready_jobs_through_partial_index(litejobs_queue, queue_count):
    conn = litejobs_queue._storage._connection()
    assert_indexed_claim(claim_plan(conn, queue_count), queue_count)
    # A runner leaving signed jobs, or callables it cannot import, to others
    # filters them out of the same ordered ranges.
    assert_indexed_claim(claim_plan(conn, queue_count, True, True), queue_count)


def test_hundreds_of_queues_are_claimed_from(litejobs_queue):
    queues = [f"tenant-{n}" for n in range(600)]
    for name in queues:
        litejobs_queue.put(litejobs.Job(pow, 2, 2), queue=name)
    assert litejobs_queue.run_pending(queues=queues[:300], limit=10) == 10
    assert litejobs_queue.run_pending(queues=queues) == 590
    litejobs_queue.put_many([litejobs.Job(pow, 2, 3) for _ in range(5)], queue="tenant-7")
    assert litejobs_queue.run_pending() == 5


def insert_completed_jobs(path: Path, count: int) -> None:
    with plain_connection(path) as conn:
        conn.execute("BEGIN")
        conn.execute(
            """
            WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
            INSERT INTO litejobs_jobs
                (queue, status, name, attempts, created_at, begin_after,
                 started_at, finished_at)
            SELECT 'default', 'completed', 'builtins:pow', 1, i, i, i, i FROM n
            """,
            (count,),
        )
        conn.execute("DELETE FROM litejobs_ended_counts")  # as if they had ended by litejobs
        conn.execute(litejobs._COUNT_ALL_ENDED)
        conn.execute("COMMIT")
        conn.execute("ANALYZE")  # let the planner see how lopsided the table is


def test_many_finished_jobs_do_not_hide_a_ready_one(db_path):
    litejobs.Queue(db_path).close()
    insert_completed_jobs(db_path, 20_000)

    with litejobs.Queue(db_path) as queue:
        assert queue.counts()["completed"] == 20_000
        conn = queue._storage._connection()
        for queue_count in (None, 1, 3, 40):
            assert_indexed_claim(claim_plan(conn, queue_count), queue_count)

        job = queue.put(litejobs.Job(pow, 3, 4))
        assert queue.run_pending() == 1
        assert job.refresh().status == litejobs.COMPLETED
        assert job.result == 81
        assert queue.counts()["completed"] == 20_001


# -- 9. processes racing to create the file -------------------------------------------


def open_and_put_one_job(path: str, barrier) -> None:
    """Worker for a spawned process: start with the others, open, put one job."""
    barrier.wait(timeout=PROCESS_TIMEOUT)
    queue = litejobs.Queue(path)
    try:
        queue.put(litejobs.Job(pow, 2, 10))
    finally:
        queue.close()


def test_processes_creating_the_same_new_file_migrate_it_once(db_path):
    ctx = multiprocessing.get_context("spawn")
    workers = 4
    barrier = ctx.Barrier(workers)
    processes = [ctx.Process(target=open_and_put_one_job, args=(str(db_path), barrier))
                 for _ in range(workers)]
    for process in processes:
        process.start()
    join_all(processes)
    assert [p.exitcode for p in processes] == [0] * workers

    assert_fully_migrated(db_path)
    with litejobs.Queue(db_path, create=False) as queue:
        assert queue.counts()["pending"] == workers
        assert len(queue.jobs()) == workers


# -- 10. a Queue inherited across fork() ------------------------------------------------


def use_inherited_queue(queue: litejobs.Queue, parent_conn: sqlite3.Connection,
                        report) -> None:
    """Worker for a forked process: report whether the parent's connection
    would be reused, and put one job through the inherited Queue."""
    reused = queue._storage._connection() is parent_conn
    job = queue.put(litejobs.Job(pow, 5, 2))
    report.send({"reused_parent_connection": reused, "job_id": job.id})
    report.close()


def test_forked_child_opens_its_own_connection(litejobs_queue):
    queue = litejobs_queue
    parent_conn = queue._storage._connection()
    first = queue.put(litejobs.Job(pow, 2, 3))

    ctx = multiprocessing.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=use_inherited_queue, args=(queue, parent_conn, sender))
    child.start()
    sender.close()
    try:
        assert receiver.poll(PROCESS_TIMEOUT), "the child reported nothing"
        report = receiver.recv()
    finally:
        receiver.close()
        join_all([child])
    assert child.exitcode == 0

    assert report["reused_parent_connection"] is False
    # The parent goes on with the very connection it had, unharmed.
    assert queue._storage._connection() is parent_conn
    assert parent_conn.execute("SELECT count(*) FROM litejobs_jobs").fetchone()[0] == 2
    from_child = queue.get(report["job_id"])
    assert from_child.status == litejobs.PENDING
    last = queue.put(litejobs.Job(pow, 7, 2))
    assert queue.run_pending() == 3
    assert [first.wait(timeout=5), from_child.wait(timeout=5), last.wait(timeout=5)] \
        == [8, 25, 49]


# -- a full disk, damage past the header, a transaction left open ------------------------


def test_a_full_database_refuses_put_and_keeps_no_partial_row(litejobs_queue):
    import sample_jobs

    queue = litejobs_queue
    queue.put(litejobs.Job(pow, 2, 2))
    conn = queue._storage._connection()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    batch = [litejobs.Job(sample_jobs.echo, os.urandom(3000)) for _ in range(20)]
    with pytest.raises(litejobs.DatabaseError, match="full"):
        queue.put_many(batch)
    assert sum(queue.counts().values()) == 1
    assert queue.put(litejobs.Job(pow, 2, 3)).status == litejobs.PENDING  # small still fits


def test_an_outcome_that_cannot_be_written_runs_again_once_space_is_back(litejobs_queue):
    import datetime

    import sample_jobs

    queue = litejobs_queue
    job = queue.put(litejobs.Job(sample_jobs.big_result, 200_000))
    conn = queue._storage._connection()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    with pytest.raises(litejobs.DatabaseError, match="full"):
        queue.run_pending()
    assert job.refresh().status == litejobs.ACTIVE  # claimed, outcome unwritten
    conn.execute("PRAGMA max_page_count = 1073741823")  # space is back
    after_lease = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(
        seconds=litejobs.DEFAULT_LEASE + 5)
    assert queue.run_pending(now=after_lease) == 1
    assert job.wait(timeout=5) == b"x" * 200_000
    assert job.attempts == 2 and job.interruptions == 1


def test_damage_past_the_header_is_refused_before_any_change(tmp_path):
    path = tmp_path / "app.db"
    with plain_connection(path) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO notes VALUES (?)", (("n" * 100,) for _ in range(2000)))
        conn.execute("COMMIT")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    with open(path, "r+b") as handle:  # scribble over page 3
        handle.seek(2 * page_size)
        handle.write(random.Random(7).randbytes(page_size))
    before = sha256(path)
    with pytest.raises(litejobs.DatabaseError, match="corrupt"):
        litejobs.Queue(path)
    assert sha256(path) == before
    assert side_files(path) == []


def test_a_transaction_left_open_is_rolled_back_not_joined(litejobs_queue):
    queue = litejobs_queue
    conn = queue._storage._connection()
    conn.execute("BEGIN IMMEDIATE")  # as a write interrupted after BEGIN would leave it
    conn.execute("INSERT INTO litejobs_jobs (queue, status, name, created_at, begin_after)"
                 " VALUES ('default', 'pending', 'stale:write', 0, 0)")
    job = queue.put(litejobs.Job(pow, 2, 3))
    assert not conn.in_transaction  # the put committed and released the lock
    with plain_connection(Path(queue.path)) as other:
        other.execute("PRAGMA busy_timeout = 100")
        other.execute("BEGIN IMMEDIATE")
        names = [row[0] for row in other.execute("SELECT name FROM litejobs_jobs")]
        other.execute("ROLLBACK")
    assert names == ["builtins:pow"]
    assert queue.get(job.id).status == litejobs.PENDING


def test_an_application_schema_with_its_own_collation_is_not_refused(tmp_path):
    path = tmp_path / "app.db"
    with plain_connection(path) as conn:
        conn.create_collation("reverse", lambda a, b: (a < b) - (a > b))
        conn.execute("CREATE TABLE names (name TEXT)")
        conn.execute("CREATE INDEX names_reverse ON names (name COLLATE reverse)")
        conn.executemany("INSERT INTO names VALUES (?)", [("a",), ("b",)])
    with litejobs.Queue(path) as queue:
        assert queue.put(litejobs.Job(pow, 2, 5)).status == litejobs.PENDING
    with plain_connection(path) as conn:
        assert conn.execute("SELECT count(*) FROM names").fetchone()[0] == 2


# -- 9. POSIX locks: never dropped by opening the file a second time ----------------


def _put_in_another_process(path, count):
    code = ("import sys, litejobs\n"
            "q = litejobs.Queue(sys.argv[1])\n"
            "for _ in range(int(sys.argv[2])):\n"
            "    q.put('os:getpid')\n"
            "q.close()\n")
    done = subprocess.run([sys.executable, "-c", code, str(path), str(count)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_opening_a_second_queue_keeps_the_first_ones_locks(db_path):
    """Closing any descriptor of a file drops all of a process's POSIX locks on
    it.  If opening a second Queue did that, the next process to close its
    last connection would think it was alone, checkpoint, and delete the WAL
    under the first Queue, whose later puts would then be lost."""
    first = litejobs.Queue(db_path)
    first.put("os:getpid")
    second = litejobs.Queue(db_path)
    worker = litejobs.Worker(db_path, processes=1)  # opens the file too
    _put_in_another_process(db_path, 1)
    assert os.path.exists(f"{db_path}-wal"), "the WAL was deleted under live connections"
    for _ in range(3):
        first.put("os:getpid")
    _put_in_another_process(db_path, 1)
    assert first.counts()["pending"] == second.counts()["pending"] == 6
    first.close()
    second.close()
    worker._storage.close()
    fresh = sqlite3.connect(db_path)
    assert fresh.execute("SELECT count(*) FROM litejobs_jobs").fetchone()[0] == 6
    assert fresh.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    fresh.close()


# -- network filesystems --------------------------------------------------------------


MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
server:/export /mnt/shared nfs4 rw,relatime 0 0
//host/share /mnt/smb\\040share cifs rw 0 0
tmpfs /mnt/shared/local tmpfs rw 0 0
"""


@pytest.mark.parametrize(("directory", "found"), [
    ("/home/app", None),
    ("/mnt/shared", "nfs4"),
    ("/mnt/shared/jobs/deep", "nfs4"),
    ("/mnt/shared/local/jobs", None),  # a local filesystem mounted inside the share
    ("/mnt/sharedother", None),  # a sibling whose name starts the same
    ("/mnt/smb share/x", "cifs"),
])
def test_the_mount_table_tells_which_directories_are_on_a_network_filesystem(
        directory, found):
    assert litejobs._network_filesystem(directory, MOUNTS) == found


def test_a_file_on_a_network_filesystem_is_refused_unless_the_user_says_so(
        tmp_path, monkeypatch):
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/sda1 / ext4 rw 0 0\nserver:/x {tmp_path} nfs rw 0 0\n")
    monkeypatch.setattr(litejobs, "_MOUNTS", str(mounts))
    with pytest.raises(litejobs.DatabaseError, match=r"network filesystem \(nfs\).*PostgreSQL"):
        litejobs.Queue(tmp_path / "jobs.db")
    assert not (tmp_path / "jobs.db").exists()  # refused before anything was created
    with litejobs.Queue(tmp_path / "jobs.db", network_filesystem=True) as q:
        assert q.put(litejobs.Job(abs, -1)).status == "pending"
        assert pickle.loads(pickle.dumps(q)).counts()["pending"] == 1  # reopened as allowed
    monkeypatch.setenv("LITEJOBS_NETWORK_FILESYSTEM", "1")
    litejobs.Queue(tmp_path / "jobs.db").close()
