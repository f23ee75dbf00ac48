"""Rows of ``litejobs_workers``, the pools' registry, read and written
outside litejobs: pools that look gone, silent or stopped, for the tests of
what the registry shows."""

import contextlib
import socket
import sqlite3
import subprocess
import sys


def finished_pid():
    """The pid of a process that has exited (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, timeout=60)
    return int(done.stdout)


def insert_pool_row(path, pool_id, *, pid, heartbeat_at, stopped_at=None, host=None,
                    started_at=None, processes=1, queues=None):
    """Register a pool as litejobs would, with the registry's columns given."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute(
            "INSERT INTO litejobs_workers (id, host, pid, processes, queues, lease, started_at,"
            " heartbeat_at, stopped_at) VALUES (?, ?, ?, ?, ?, 30, ?, ?, ?)",
            (pool_id, host or socket.gethostname(), pid, processes, queues,
             heartbeat_at if started_at is None else started_at, heartbeat_at, stopped_at))


def worker_rows(db):
    """The ``litejobs_workers`` rows, read on a connection of their own."""
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute("SELECT * FROM litejobs_workers")]


def the_row_of(db, pid):
    """The registry row of the pool whose process is ``pid``, or None."""
    rows = [row for row in worker_rows(db) if row["pid"] == pid]
    assert len(rows) <= 1, rows
    return rows[0] if rows else None
