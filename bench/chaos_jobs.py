"""The job of the chaos soak (``bench/chaos.py``), imported by name by the
pools' worker processes (``bench/`` is on their PYTHONPATH).

Each run appends ``(job_id, attempt, pid, at)`` to the ``audit`` table of a
SQLite database of its own, separate from the litejobs file, then works for
``work`` seconds and returns its id.  The row is committed before the work,
so a run killed during the work is still on record.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time

import litejobs

AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    job_id  INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    pid     INTEGER NOT NULL,
    at      REAL NOT NULL
)
"""

# Generous: a worker process stopped (SIGSTOP) while it holds the audit
# file's write lock holds up the others for the length of the pause.
AUDIT_BUSY_TIMEOUT = 60.0

_local = threading.local()  # this thread's connection, and the (pid, path) it is for


def open_audit(path: str) -> sqlite3.Connection:
    """A connection on the audit database, in autocommit mode, WAL journal."""
    conn = sqlite3.connect(path, timeout=AUDIT_BUSY_TIMEOUT, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")  # a process crash loses no commit
    return conn


def _audit(path: str) -> sqlite3.Connection:
    """This thread's connection on ``path``, opened on first use (a worker
    process with threads runs jobs in several)."""
    key = (os.getpid(), path)
    if getattr(_local, "key", None) != key:
        _local.connection = open_audit(path)
        _local.key = key
    return _local.connection


def _record_run(audit_path: str, job_id: int, attempt: int) -> None:
    conn = _audit(audit_path)
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("INSERT INTO audit (job_id, attempt, pid, at) VALUES (?, ?, ?, ?)",
                     (job_id, attempt, os.getpid(), time.time()))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def audited(audit_path: str, work: float) -> int:
    """Record this run in the audit table, work ``work`` seconds, return the job's id."""
    job = litejobs.current_job()
    assert job is not None and job.id is not None
    _record_run(audit_path, job.id, job.attempt)
    if work > 0:
        time.sleep(work)
    return job.id


async def audited_async(audit_path: str, work: float) -> int:
    """`audited`, as an async job: the audit row is written off the event loop
    (a stopped process may hold the audit file's lock), then it awaits ``work``."""
    import asyncio
    job = litejobs.current_job()
    assert job is not None and job.id is not None
    await asyncio.to_thread(_record_run, audit_path, job.id, job.attempt)
    if work > 0:
        await asyncio.sleep(work)
    return job.id
