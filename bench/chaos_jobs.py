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

_connection: sqlite3.Connection | None = None
_connection_key: tuple[int, str] | None = None


def open_audit(path: str) -> sqlite3.Connection:
    """A connection on the audit database, in autocommit mode, WAL journal."""
    conn = sqlite3.connect(path, timeout=AUDIT_BUSY_TIMEOUT, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")  # a process crash loses no commit
    return conn


def _audit(path: str) -> sqlite3.Connection:
    """This process's connection on ``path``, opened on first use."""
    global _connection, _connection_key
    key = (os.getpid(), path)
    if _connection is None or _connection_key != key:
        _connection = open_audit(path)
        _connection_key = key
    return _connection


def audited(audit_path: str, work: float) -> int:
    """Record this run in the audit table, work ``work`` seconds, return the job's id."""
    job = litejobs.current_job()
    assert job is not None and job.id is not None
    conn = _audit(audit_path)
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("INSERT INTO audit (job_id, attempt, pid, at) VALUES (?, ?, ?, ?)",
                     (job.id, job.attempt, os.getpid(), time.time()))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if work > 0:
        time.sleep(work)
    return job.id
