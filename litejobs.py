"""litejobs: durable background jobs in one SQLite file, for scripts, tests and pools.

A job is a call to a module-level function, stored in a SQLite database (WAL
mode) the moment ``put`` returns.  Any process on the same host that opens the
same file can run it.

Quickstart::

    import datetime, litejobs

    q = litejobs.Queue("app.db")                  # created 0600, WAL mode
    job = q.put(litejobs.Job(pow, 2, 10))         # durable once put() returns
    later = q.put("time:time", begin_after=datetime.timedelta(minutes=5))
    q.run_pending()                               # run what is due, in this process
    print(job.wait(timeout=5))                    # 1024
    print(later.status)                           # pending, for five more minutes

Run ``python -m litejobs --help`` for the command line and
``python -m litejobs demo`` for a tour.
"""

from __future__ import annotations

import sys

if __name__ in ("__main__", "__mp_main__"):
    # ``python -m litejobs`` runs this file as __main__.  Register it as
    # ``litejobs`` and define everything under that name, so that
    # ``import litejobs`` elsewhere returns this very module, and functions and
    # exceptions pickle as ``litejobs.X`` rather than ``__main__.X``.
    sys.modules.setdefault("litejobs", sys.modules[__name__])
    _RUN_AS_SCRIPT = __name__ == "__main__"
    globals()["__name__"] = "litejobs"
else:
    _RUN_AS_SCRIPT = False

__version__ = "0.1.0.dev0"

__all__ = [
    "ACTIVE",
    "CANCELLED",
    "COMPLETED",
    "Composite",
    "CronError",
    "DEFAULT_BUSY_TIMEOUT",
    "DEFAULT_GRACE",
    "DEFAULT_LEASE",
    "DEFAULT_MAX_INTERRUPTIONS",
    "DEFAULT_POLL",
    "DEFAULT_QUEUE",
    "DEFAULT_RETENTION",
    "DEFAULT_SIZE_LIMIT",
    "DEFAULT_STOP_GRACE",
    "DatabaseBusy",
    "DatabaseError",
    "DatabaseUnreachable",
    "DeadlineExceeded",
    "FAILED",
    "Failure",
    "Interrupted",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobNotFound",
    "JobTimeout",
    "LeaseLost",
    "LitejobsError",
    "PENDING",
    "PartsFailed",
    "PayloadTooLarge",
    "Queue",
    "Retry",
    "STATUSES",
    "Schedule",
    "ScheduleNotFound",
    "SchemaVersionError",
    "SignatureError",
    "WAITING",
    "WaitTimeout",
    "Worker",
    "as_completed",
    "current_job",
    "current_queue",
    "job",
    "main",
    "parallel",
    "serial",
    "wait_all",
    "wait_for_result",
    "wait_for_start",
    "web_app",
]

import argparse
import atexit
import base64
import calendar
import collections
import contextlib
import contextvars
import dataclasses
import datetime
import enum
import fnmatch
import functools
import hashlib
import hmac
import html
import importlib
import inspect
import io
import itertools
import json
import logging
import math
import multiprocessing
import multiprocessing.connection
import operator
import os
import pickle
import random
import re
import reprlib
import select
import selectors
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import tempfile
import threading
import time
import traceback
import types
import urllib.parse
import uuid
import zoneinfo
from typing import (TYPE_CHECKING, Any, AsyncIterator, Callable, Collection, ContextManager,
                    Coroutine, Generic, cast, Iterable, Iterator, Mapping, NamedTuple, overload,
                    Protocol, Sequence, TypeVar, Union)

if TYPE_CHECKING:  # imported where used: asyncio takes 40 ms to import, and every
    import asyncio  # worker process and command imports this module

###############################################################################
# Constants and exceptions
###############################################################################

PENDING = "pending"
WAITING = "waiting"
ACTIVE = "active"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
STATUSES = (PENDING, WAITING, ACTIVE, COMPLETED, FAILED, CANCELLED)
_FINISHED = frozenset((COMPLETED, FAILED, CANCELLED))

DEFAULT_QUEUE = "default"
DEFAULT_LEASE = 30.0  # seconds a claim holds a job before others may take it
DEFAULT_BUSY_TIMEOUT = 30.0  # seconds SQLite waits for the write lock
DEFAULT_MAX_INTERRUPTIONS = 3
DEFAULT_GRACE = 30.0  # seconds running jobs get to finish when a pool stops
DEFAULT_POLL = 1.0  # the longest an idle pool waits before looking for due jobs
DEFAULT_RETENTION = 7 * 86400.0  # seconds pools keep finished jobs
DEFAULT_STOP_GRACE = 30.0  # seconds a job asked to stop gets before its pool stops it

_MIN_SQLITE = (3, 35, 0)  # RETURNING
_INT64 = 2 ** 63  # SQLite's INTEGER range is [-2**63, 2**63)
_ID_MOST = _INT64 - 1  # the largest job id: AUTOINCREMENT never goes past it
_MAX_NESTING = 100  # composites in composites, at most: put refuses deeper trees
_PICKLE_PROTOCOL = pickle.HIGHEST_PROTOCOL
_SQLITE_MAGIC = b"SQLite format 3\x00"
_QUICK_CHECK_LIMIT = 256 * 2 ** 20  # bytes; larger files get only the header checks
_WAL_SIZE_LIMIT = 64 * 2 ** 20  # bytes a WAL file keeps after a checkpoint
_MOUNTS = "/proc/self/mounts"  # Linux: what is mounted where, and its filesystem type
# Filesystems whose files other hosts may open too: SQLite's WAL, which keeps
# its index in shared memory, cannot work there, and its locks may not either.
_NETWORK_FILESYSTEMS = frozenset((
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "ceph", "glusterfs",
    "lustre", "gpfs", "beegfs", "fuse.sshfs", "fuse.glusterfs", "fuse.cephfs", "davfs",
    "fuse.s3fs", "fuse.gcsfuse", "fuse.rclone",
))
_NETWORK_FILESYSTEM_ENV = "LITEJOBS_NETWORK_FILESYSTEM"  # "1": open such files anyway
# The name pools register their host under (default: the host name), for
# hosts that share one (containers): a pool checks only the pids of its host.
_HOST_ENV = "LITEJOBS_HOST"
_TEST_POSTGRES_ENV = "LITEJOBS_TEST_POSTGRES"  # the pytest fixtures' queue on this URL
_PROGRESS_INTERVAL = 1.0  # seconds between a job's progress writes, at most
_META_MOST = 64 * 2 ** 10  # bytes of JSON a job's meta may take
_MESSAGE_MOST = 1000  # characters of a progress message kept
_UPKEEP_INTERVAL = 10.0  # seconds between a pool's retention and checkpoint rounds
_PRUNE_BATCH = 1000  # finished jobs deleted per transaction
_PRUNE_PAUSE = 0.05  # seconds between batches while more are due
DEFAULT_SIZE_LIMIT = 4 * 2 ** 20  # bytes a job's pickled call, or its pickled result, may take
_SECRET_ENV = "LITEJOBS_SECRET"  # comma-separated; the first signs, any verifies
_SHORTEST_SECRET = 16  # bytes: the shortest secret accepted
_SIGNED_CALL = b"litejobs call"  # what a signature covers is kept apart by kind
_SIGNED_RESULT = b"litejobs result"
_SIGNED_SCHEDULE = b"litejobs schedule"
# Tests of the failure model make a process die at one named point of a
# job's life (see _crash_point); unset in normal use.
_CRASH_POINT = os.environ.get("LITEJOBS_TEST_CRASH_POINT")
_CRASH_POINTS = ("before-claim", "in-claim", "after-claim", "in-job", "after-job",
                 "in-finish", "after-finish")
_ABANDONED_CONNECTIONS: list[Any] = []
# max_interruptions as stored for "retry interruptions for ever", the default
# of callbacks and postprocesses; such a job waits longer after each one.
_UNLIMITED = -1
_INTERRUPTION_BACKOFF = (1.0, 300.0)  # seconds: the first wait, and the longest
_REFUSAL_PAUSE = 60.0  # seconds a runner leaves a callable it could not import to others
_NEWS_INTERVAL = 0.5  # seconds between looks at a running job's stop request and meta
# Seconds a live runner on this host may go without renewing its leases before
# its jobs are taken back: by then it is hung, not starved of the write lock.
_STARVED_MOST = 300.0
_OPTIONS_ATTRIBUTE = "__litejobs_options__"  # a function's defaults, set by `job`
# The worker pool: a supervisor claims jobs, hands them to worker processes and
# records their outcomes.
_HEARTBEAT_INTERVAL = 2.0  # seconds between a pool's heartbeats (at most lease/3)
_SILENT_HEARTBEATS = 3  # heartbeats a pool may miss before others check on it
_IDLE_CHECK_INTERVAL = 0.004  # seconds between change checks while idle, without inotify
_POSTGRES_POLL_INTERVAL = 0.05  # the same on PostgreSQL without LISTEN: a query each
_SETTLE_CHECKS = (0.001, 0.025)  # after a WAL write: check every ms, for this long
_SAFETY_CHECK_INTERVAL = 0.25  # with inotify, still check this often
_AWAITED_RECHECK = 1.0  # seconds between full reads of the jobs awaited from event loops
_ENDS_LAG = 0.5  # seconds an end may commit after its finished_at and be seen at once
_OTHERS_CHANGES_CHECK = 0.01  # while others' commits bring nothing, check this often
_CANCEL_CHECK_INTERVAL = 0.5  # seconds between checks for cancels of running jobs
_MAX_CHUNK = 128  # jobs per message to a child, and outcomes per message back
_CHUNK_SECONDS = 0.005  # a chunk holds about this much work
_FLUSH_AFTER = 0.005  # seconds a child may hold finished outcomes before sending
_FAST_JOB = 0.01  # below this many seconds per job, children get work ahead
_FAST_EVIDENCE = 2  # ... once this many jobs have shown it, a chunk no more than were timed
_CHILD_START_BACKOFF = (0.1, 5.0)  # restart delay after a child dies young
_ORPHANED_EXIT = 75  # exit status of a child whose supervisor is gone
_NO_MAIN_GUARD_EXIT = 76  # exit status of a child whose main script starts a pool as imported
_NO_MAIN_GUARD = (
    "the script that starts this pool starts one again each time it is imported, and "
    "worker processes import it (spawn, forkserver): put the code that starts it under "
    '`if __name__ == "__main__":`')
_MIN_LEASE = 0.1  # seconds; renewals come every lease / 3
_CRASHES_KEPT = 1000  # Worker.crashes keeps the latest this many
_SUPERVISOR_BUSY_TIMEOUT = 1.0  # seconds a supervisor waits for the write lock
_BUSY_BACKOFF = 0.05  # seconds before a supervisor retries after a busy database
_DEADLOCK_RETRIES = 5  # PostgreSQL: times a user's cancel (and the like) is tried again
_RECONNECT_BACKOFF = (0.1, 5.0)  # seconds: the first wait for an unreachable database, the longest
_OPEN_TRIES = 4  # a pool opening its database tries this often if the connection drops
_MAX_YOUNG_DEATHS = 8  # children dying before they are ready, in a row, stop a pool
_START_MARK_AFTER = 0.05  # seconds a run goes before its pool records that it began
_LOG_RATE = 1000  # log records a second a worker process forwards, at most ...
_LOG_BURST = 2000  # ... after a burst of this many; the rest are counted and dropped
_INFO_LINES = 100  # runs that end well a pool logs one by one at INFO, a second at most
_RECEIVE_MOST = 32  # messages a supervisor takes from one child before it looks around
_ASYNC_CONCURRENCY = 100  # async jobs a worker process runs at once on its event loop
_LOOP_BLOCKED = 0.5  # seconds an async job may hold its event loop before it is logged
_STEAL_AFTER = 0.1  # seconds a worker process's work may stand still before others take it
_ESTIMATE_WEIGHT = 0.25  # how much a quick job moves a pool's estimate of job durations
_WAL_WRITE_LOCK_BYTE = 120  # in the -shm file: https://sqlite.org/walformat.html, 2.3.1
_PARTS_NAMED = 20  # a PartsFailed error names this many failed parts at most
_WORKER_ROWS_KEPT = 7 * 86400.0  # seconds a stopped pool's row is kept
_SCHEDULE_POLL = 1.0  # seconds between a pool's looks for schedules added or changed
_SCHEDULE_ON_TIME = 60.0  # seconds late a tick may fire and still be on time, not missed
_CATCHUP_LIMIT = 100  # missed ticks catchup="all" fires, the latest ones, unless told
_MOST_MISSED = 100_000  # missed ticks of a schedule read in one firing, at most
_TICKS_KEPT = 7 * 86400.0  # seconds a fired tick's row is kept (next_tick never goes back)
_CATCHUPS = ("latest", "all", "skip")
_QUOTA_READS = 8  # reads of due jobs a claim under quotas makes, at most
_OVERLAPS = ("allow", "skip")
# Above this many named queues, one filtered scan beats a seek per queue (and
# SQLite allows at most 500 terms in a compound SELECT).
_MAX_QUEUE_RANGES = 16
_REPR_MOST = 500  # characters of an argument or result shown
_LOG_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


class _Default(enum.Enum):
    """The value of an option of `Queue.put` that was not given: the job
    function's own default (see `job`), or else litejobs'."""

    DEFAULT = "default"

    def __repr__(self) -> str:
        return "<default>"


_DEFAULT = _Default.DEFAULT

_T = TypeVar("_T")
_log = logging.getLogger("litejobs")
_log.addHandler(logging.NullHandler())  # the application decides where logs go


class LitejobsError(Exception):
    """Base class of every error litejobs raises on its own account."""


class DatabaseError(LitejobsError):
    """The database file cannot be used: missing, read-only, corrupt, not SQLite, or full."""


class DatabaseBusy(DatabaseError):
    """Another connection held the database's write lock for longer than the
    queue's ``busy_timeout``.  The message names the process holding it, where
    the system tells (Linux)."""


class DatabaseUnreachable(DatabaseError):
    """The database server could not be reached, or the connection to it was
    lost (a restart, a network cut).  Nothing of the call was written, unless
    the connection was lost while it committed (the message then says the
    commit's outcome is unknown: look before doing it again).  A pool keeps
    what it must write and tries again: at-least-once covers a write that
    had gone through."""


class SchemaVersionError(DatabaseError):
    """The database was written by a newer litejobs than this one."""


class JobNotFound(LitejobsError, KeyError):
    """No job has the given id."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class WaitTimeout(LitejobsError, TimeoutError):
    """A wait for a job ended before the job did."""


class LeaseLost(LitejobsError):
    """A write about a job was rejected because another attempt now owns it."""


class DeadlineExceeded(LitejobsError):
    """A job had not started by its ``begin_by`` deadline, so it never ran."""


class Interrupted(LitejobsError):
    """A run ended without an outcome: its process died, or its lease ran out.

    It is the recorded error of a job that was interrupted more often than its
    ``max_interruptions`` allowed.
    """


class JobTimeout(LitejobsError, TimeoutError):
    """A job ran longer than its ``timeout``: the pool killed its process
    (an async job: its task was cancelled).  It counts as an exception for
    the job's `Retry` policy."""


class JobFailed(LitejobsError):
    """A job ended in failure; ``traceback`` holds the full text of the error.

    Attributes: ``job`` (the `Job`), ``exc_type`` (the qualified name of the
    exception, such as ``"builtins.ValueError"``) and ``traceback``.
    """

    def __init__(self, job: Job, exc_type: str | None, traceback_text: str | None):
        self.job = job
        self.exc_type = exc_type
        self.traceback = traceback_text
        super().__init__(job, exc_type, traceback_text)

    def __str__(self) -> str:
        head = f"job {self.job.id} ({self.job.name}) {self.job.status}"
        if self.exc_type:
            head += f" with {self.exc_type}"
        return f"{head}\n\n{self.traceback}" if self.traceback else head


class JobCancelled(JobFailed):
    """A job was cancelled, so it has no result."""


class PartsFailed(LitejobsError):
    """The error of a `parallel` or `serial` job without a postprocess when
    some of its parts did not complete; the message names each of them."""


class PayloadTooLarge(LitejobsError, ValueError):
    """A job's pickled call, or its pickled result, is over the queue's
    ``size_limit``.  `Queue.put` raises it, writing nothing; a result over the
    limit fails its job with it."""


class CronError(LitejobsError, ValueError):
    """A cron expression that cannot be parsed, or can never fire; the
    message names the field at fault."""


class ScheduleNotFound(LitejobsError, KeyError):
    """No schedule has the given name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class SignatureError(LitejobsError):
    """A job or a result is not signed with any of the queue's secrets.

    A runner with a secret fails such a job with this error, without
    importing or unpickling anything of it; reading such a result raises it.
    """


def _qualified_type_name(cls: type) -> str:
    """How an exception's type is named in a job's error_type column."""
    return f"{cls.__module__}.{cls.__qualname__}"


_DEADLINE_TYPE = _qualified_type_name(DeadlineExceeded)
_INTERRUPTED_TYPE = _qualified_type_name(Interrupted)
_JOB_TIMEOUT_TYPE = _qualified_type_name(JobTimeout)


###############################################################################
# SQL and schema
###############################################################################

# The tallies of ended jobs (migration 3), counted from the rows: a full scan.
_COUNT_ALL_ENDED = """
INSERT INTO litejobs_ended_counts (queue, status, jobs)
SELECT queue, status, count(*) FROM litejobs_jobs
WHERE status IN ('completed', 'failed', 'cancelled')
GROUP BY queue, status
"""

# Each migration is a tuple of single statements, run one by one inside one
# BEGIN IMMEDIATE transaction.  executescript() is never used: it commits any
# open transaction first.  Append only; never edit a released migration.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE litejobs_jobs (
            id                INTEGER PRIMARY KEY AUTOINCREMENT,
            queue             TEXT    NOT NULL,
            priority          INTEGER NOT NULL DEFAULT 0,
            status            TEXT    NOT NULL,
            name              TEXT    NOT NULL,
            payload           BLOB,
            signature         BLOB,
            key               TEXT,
            attempts          INTEGER NOT NULL DEFAULT 0,
            max_attempts      INTEGER NOT NULL DEFAULT 1,
            retry_policy      TEXT,
            interruptions     INTEGER NOT NULL DEFAULT 0,
            max_interruptions INTEGER NOT NULL DEFAULT 3,
            timeout           REAL,
            created_at        REAL    NOT NULL,
            begin_after       REAL    NOT NULL,
            begin_by          REAL,
            started_at        REAL,
            finished_at       REAL,
            lease_owner       TEXT,
            lease_token       TEXT,
            lease_expires     REAL,
            cancel_requested  INTEGER NOT NULL DEFAULT 0,
            parent_id         INTEGER REFERENCES litejobs_jobs (id) ON DELETE CASCADE,
            role              TEXT,
            position          INTEGER,
            composite         TEXT,
            waiting_on        INTEGER NOT NULL DEFAULT 0,
            waiting_for       INTEGER,
            followers         INTEGER NOT NULL DEFAULT 0,
            result            BLOB,
            result_signature  BLOB,
            error             TEXT,
            error_type        TEXT,
            progress          REAL,
            progress_message  TEXT,
            meta              TEXT,
            ran_by            TEXT,
            history           TEXT
        )
        """,
        # Only pending rows are in the two ready indexes, so finished rows,
        # however many, never slow a claim.  The literal 'pending' lets the
        # planner use them.  One serves claims from every queue, the other
        # claims from named queues, one ordered range per queue.
        """
        CREATE INDEX litejobs_jobs_ready
            ON litejobs_jobs (priority DESC, begin_after, id)
            WHERE status = 'pending'
        """,
        """
        CREATE INDEX litejobs_jobs_ready_by_queue
            ON litejobs_jobs (queue, priority DESC, begin_after, id)
            WHERE status = 'pending'
        """,
        """
        CREATE INDEX litejobs_jobs_deadline
            ON litejobs_jobs (begin_by)
            WHERE status = 'pending' AND begin_by IS NOT NULL
        """,
        """
        CREATE INDEX litejobs_jobs_lease
            ON litejobs_jobs (lease_expires)
            WHERE status = 'active'
        """,
        # For retention, purges and throughput figures.
        """
        CREATE INDEX litejobs_jobs_finished
            ON litejobs_jobs (finished_at)
            WHERE finished_at IS NOT NULL
        """,
        """
        CREATE UNIQUE INDEX litejobs_jobs_live_key
            ON litejobs_jobs (key)
            WHERE key IS NOT NULL AND status IN ('pending', 'waiting', 'active')
        """,
        """
        CREATE INDEX litejobs_jobs_parent
            ON litejobs_jobs (parent_id, position)
            WHERE parent_id IS NOT NULL
        """,
        """
        CREATE INDEX litejobs_jobs_waiting_for
            ON litejobs_jobs (waiting_for)
            WHERE waiting_for IS NOT NULL
        """,
        """
        CREATE TABLE litejobs_workers (
            id           TEXT PRIMARY KEY,
            host         TEXT    NOT NULL,
            pid          INTEGER NOT NULL,
            processes    INTEGER NOT NULL,
            queues       TEXT,
            lease        REAL    NOT NULL,
            started_at   REAL    NOT NULL,
            heartbeat_at REAL    NOT NULL,
            stopped_at   REAL,
            stop_reason  TEXT
        )
        """,
    ),
    (
        # Runs a stopping pool handed back: they count neither as attempts
        # for the Retry policy nor as interruptions.
        "ALTER TABLE litejobs_jobs ADD COLUMN handbacks INTEGER NOT NULL DEFAULT 0",
        # When a job asked to stop (request_stop) must have stopped by, in Unix
        # seconds: the running job sees the request, and its pool stops it then.
        "ALTER TABLE litejobs_jobs ADD COLUMN stop_requested REAL",
        # 1 while a pool's claim of an active job has not been recorded as
        # begun: if the pool dies, the claim is taken back as not started.
        "ALTER TABLE litejobs_jobs ADD COLUMN unstarted INTEGER NOT NULL DEFAULT 0",
        # Claims taken back so: they count neither as attempts for the Retry
        # policy nor as interruptions, and a begin_by deadline still holds.
        "ALTER TABLE litejobs_jobs ADD COLUMN not_started INTEGER NOT NULL DEFAULT 0",
    ),
    (
        # How many ended jobs each queue holds in each final status, kept
        # exact in the transaction of every change (`_after_end` counts the
        # jobs that end, `_UNCOUNT_ENDED` those re-opened, a trigger those
        # deleted), so that counts never scan the rows that ended: a million,
        # on a busy queue.  Unfinished rows are counted through their indexes
        # (`_COUNT_JOBS`).  Ends are counted in code, once per statement: a
        # trigger on updates costs every claim and every end, a quarter of a
        # pool's drain.
        """
        CREATE TABLE litejobs_ended_counts (
            queue  TEXT    NOT NULL,
            status TEXT    NOT NULL,
            jobs   INTEGER NOT NULL,
            PRIMARY KEY (queue, status)
        ) WITHOUT ROWID
        """,
        _COUNT_ALL_ENDED,
        # Deletes are rare (purges, retention) and may come from anywhere, a
        # hand-written DELETE included: a trigger counts them.
        """
        CREATE TRIGGER litejobs_jobs_uncount_deleted AFTER DELETE ON litejobs_jobs
        WHEN OLD.status IN ('completed', 'failed', 'cancelled')
        BEGIN
            UPDATE litejobs_ended_counts SET jobs = jobs - 1
            WHERE queue = OLD.queue AND status = OLD.status;
        END
        """,
        # Waiting rows (composites, their parts, callbacks) by queue, for counts.
        """
        CREATE INDEX litejobs_jobs_waiting
            ON litejobs_jobs (queue)
            WHERE status = 'waiting'
        """,
    ),
    (
        # Schedules (see "schedules" below): the job each tick puts, as the
        # rows of a put, in JSON (payloads in base64), signed with the
        # queue's secret if it has one; next_tick only ever moves forward.
        """
        CREATE TABLE litejobs_schedules (
            name               TEXT PRIMARY KEY,
            cron               TEXT    NOT NULL,
            tz                 TEXT    NOT NULL,
            job_name           TEXT    NOT NULL,
            template           TEXT    NOT NULL,
            template_signature BLOB,
            catchup            TEXT    NOT NULL,
            catchup_limit      INTEGER NOT NULL,
            max_lag            REAL,
            overlap            TEXT    NOT NULL,
            paused             INTEGER NOT NULL DEFAULT 0,
            next_tick          REAL,
            last_tick          REAL,
            last_job_id        INTEGER,
            last_fired_at      REAL,
            created_at         REAL    NOT NULL,
            updated_at         REAL    NOT NULL
        )
        """,
        # The ticks that fired, apart from the jobs they put: purging jobs
        # never makes a tick look unfired.
        """
        CREATE TABLE litejobs_ticks (
            schedule TEXT    NOT NULL,
            tick     REAL    NOT NULL,
            job_id   INTEGER,
            fired_at REAL    NOT NULL,
            PRIMARY KEY (schedule, tick)
        ) WITHOUT ROWID
        """,
        # Paused queues (`Queue.pause`): their jobs are not claimed until
        # resumed, or until ``until`` (NULL: until resumed).
        """
        CREATE TABLE litejobs_paused (
            queue     TEXT PRIMARY KEY,
            until     REAL,
            paused_at REAL NOT NULL
        ) WITHOUT ROWID
        """,
        # Quotas (`Queue.set_quota`): the names a job counts against, as a
        # JSON list (NULL: none), and the limits set on names or patterns.
        "ALTER TABLE litejobs_jobs ADD COLUMN quotas TEXT",
        """
        CREATE TABLE litejobs_quotas (
            pattern TEXT PRIMARY KEY,
            running INTEGER,
            rate    INTEGER,
            per     REAL,
            set_at  REAL    NOT NULL
        ) WITHOUT ROWID
        """,
        # The claims of jobs naming a rate-limited quota, for its window.
        """
        CREATE TABLE litejobs_starts (
            name TEXT NOT NULL,
            at   REAL NOT NULL
        )
        """,
        "CREATE INDEX litejobs_starts_at ON litejobs_starts (at)",
        # Running jobs that count against a quota, for the claim's count.
        """
        CREATE INDEX litejobs_jobs_quota_running ON litejobs_jobs (id)
            WHERE status = 'active' AND quotas IS NOT NULL
        """,
    ),
)

_SCHEMA_VERSION = len(_MIGRATIONS)

_CREATE_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS litejobs_schema (
    version    INTEGER PRIMARY KEY,
    applied_at REAL NOT NULL
)
"""
_VERSION_TABLE_EXISTS = (
    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'litejobs_schema'"
)
_READ_VERSION = "SELECT coalesce(max(version), 0) FROM litejobs_schema"
_RECORD_VERSION = "INSERT INTO litejobs_schema (version, applied_at) VALUES (?, ?)"

# Every column but payload and result, which are read only when asked for.
_JOB_COLUMNS = (
    "id, queue, priority, status, name, key, attempts, max_attempts, retry_policy,"
    " interruptions, max_interruptions, handbacks, timeout, created_at, begin_after, begin_by,"
    " started_at, finished_at, lease_owner, lease_expires, cancel_requested, stop_requested,"
    " unstarted, not_started,"
    " parent_id, role, position, composite, waiting_on, waiting_for, followers,"
    " error, error_type, progress, progress_message, meta, ran_by, history, quotas"
)

# Ids are given explicitly, so that a whole tree of jobs (a composite and its
# parts) can be linked and inserted with one executemany.  AUTOINCREMENT keeps
# the high-water mark in sqlite_sequence: an id is never given to a second job,
# even after the newest jobs were purged.
_NEXT_JOB_ID = """
SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'litejobs_jobs'), 0),
           coalesce((SELECT max(id) FROM litejobs_jobs), 0)) + 1
"""

_INSERT_COLUMNS = (
    "id", "queue", "priority", "status", "name", "payload", "signature", "key", "max_attempts",
    "retry_policy", "max_interruptions", "timeout", "created_at", "begin_after", "begin_by",
    "parent_id", "role", "position", "composite", "waiting_on", "followers", "quotas",
)
_PAYLOAD_OF = operator.itemgetter("payload")
# The columns a new row may leave NULL.  An INSERT names only those of them
# that have a value: sqlite3 binds None through its adapter lookup, about a
# third of a microsecond each, which was most of the cost of binding a plain
# row (10 of its 21 values are None).  A NULL id lets SQLite give the next one.
_NULLABLE_COLUMNS = (
    "id", "payload", "signature", "key", "retry_policy", "timeout", "begin_by", "parent_id",
    "role", "position", "composite", "quotas",
)


def _null_columns(row: Mapping[str, Any]) -> tuple[bool, ...]:
    """Which of `_NULLABLE_COLUMNS` are None in ``row``, in that order.  Spelled
    out: twice as quick as a loop, and put_many asks for every row."""
    return (row["id"] is None, row["payload"] is None, row["signature"] is None,
            row["key"] is None, row["retry_policy"] is None, row["timeout"] is None,
            row["begin_by"] is None, row["parent_id"] is None, row["role"] is None,
            row["position"] is None, row["composite"] is None, row["quotas"] is None)


assert all(_null_columns({**dict.fromkeys(_NULLABLE_COLUMNS, 0), column: None})
           == tuple(other == column for other in _NULLABLE_COLUMNS)
           for column in _NULLABLE_COLUMNS), "_null_columns must follow _NULLABLE_COLUMNS"


@functools.lru_cache(maxsize=64)
def _insert_statement(nulls: tuple[bool, ...]) -> tuple[str, Callable[[Mapping[str, Any]],
                                                                       tuple[Any, ...]]]:
    """The INSERT for rows whose NULL columns are ``nulls`` (see `_null_columns`),
    and what gives its values from a row: positional, since binding from tuples
    is a quarter faster than from dicts."""
    left_out = {column for column, null in zip(_NULLABLE_COLUMNS, nulls) if null}
    columns = [column for column in _INSERT_COLUMNS if column not in left_out]
    return (f"INSERT INTO litejobs_jobs ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' * len(columns))})", operator.itemgetter(*columns))

_FIND_LIVE_KEY = f"""
SELECT {_JOB_COLUMNS} FROM litejobs_jobs
WHERE key = ? AND status IN ('pending', 'waiting', 'active')
"""

_SELECT_JOB_RANGE = f"SELECT {_JOB_COLUMNS} FROM litejobs_jobs WHERE id BETWEEN ? AND ? ORDER BY id"

_SELECT_JOB = f"SELECT {_JOB_COLUMNS} FROM litejobs_jobs WHERE id = ?"
_SELECT_PAYLOAD = "SELECT payload, signature FROM litejobs_jobs WHERE id = ?"
_SELECT_RESULT = "SELECT result, result_signature FROM litejobs_jobs WHERE id = ?"
# The jobs awaited from event loops (`_AsyncWaits`): after each commit, the
# ends since the last look, through the index of ends, so that a look costs
# what ended, not what is awaited; ...
_ENDED_SINCE = """
SELECT id, status FROM litejobs_jobs INDEXED BY litejobs_jobs_finished
WHERE finished_at IS NOT NULL AND finished_at >= :since
"""
# ... and the statuses of awaited jobs (:ids, a JSON list) in one read: when
# they begin to be awaited, and now and then in case an end came late.
_STATUSES_AMONG = """
SELECT id, status FROM litejobs_jobs WHERE id IN (SELECT value FROM json_each(:ids))
"""

# Jobs by queue and status, exact, in one read: unfinished ones counted
# through the indexes that hold only them (pending rows through the ready
# index, active ones through the lease index, waiting ones through theirs),
# ended ones read from litejobs_ended_counts, which triggers keep.  Its cost
# follows the unfinished jobs, however many have ended.
# {queue} is "" (every queue) or " AND queue = :queue".
_COUNT_JOBS = """
SELECT queue, 'pending', count(*) FROM litejobs_jobs INDEXED BY litejobs_jobs_ready_by_queue
WHERE status = 'pending'{queue} GROUP BY queue
UNION ALL
SELECT queue, 'active', count(*) FROM litejobs_jobs INDEXED BY litejobs_jobs_lease
WHERE status = 'active'{queue} GROUP BY queue
UNION ALL
SELECT queue, 'waiting', count(*) FROM litejobs_jobs INDEXED BY litejobs_jobs_waiting
WHERE status = 'waiting'{queue} GROUP BY queue
UNION ALL
SELECT queue, status, jobs FROM litejobs_ended_counts WHERE jobs > 0{queue}
"""
_COUNT_ALL_JOBS = _COUNT_JOBS.format(queue="")
_COUNT_QUEUE_JOBS = _COUNT_JOBS.format(queue=" AND queue = :queue")

# Claims read due jobs in (priority DESC, begin_after, id) order.  {source} is
# either one ordered range of litejobs_jobs_ready, optionally filtered by queue,
# or, for a few named queues, one range of litejobs_jobs_ready_by_queue per
# queue merged under the LIMIT: a plain "queue IN (...)" on that index would
# make SQLite sort every pending row of those queues on each claim.
# A pool's claim is unstarted (:unstarted 1) until it records that the job's
# run began (`_MARK_STARTED`), or its outcome; run_pending runs what it claims
# at once, and claims it started.
_CLAIM_JOBS = """
UPDATE litejobs_jobs
SET status = 'active', attempts = attempts + 1, started_at = :now, ran_by = :owner,
    lease_owner = :owner, lease_token = :token, lease_expires = :expires,
    unstarted = :unstarted
WHERE status = 'pending' AND id IN (
    SELECT id FROM ({source})
    ORDER BY priority DESC, begin_after, id
    LIMIT :limit)
RETURNING {columns}, payload, signature
"""

# A job past its begin_by is still due if a run of it has begun: more claims
# than those taken back as not started.
_DUE = ("begin_after <= :now AND (begin_by IS NULL OR begin_by >= :now"
        " OR attempts > not_started)")

_CLAIM_ANY_QUEUE = f"""
SELECT id, priority, begin_after FROM litejobs_jobs INDEXED BY litejobs_jobs_ready
WHERE status = 'pending' AND {_DUE}{{queues}}{{filters}}
ORDER BY priority DESC, begin_after, id
LIMIT :limit
"""

_CLAIM_ONE_QUEUE = f"""
SELECT * FROM (
    SELECT id, priority, begin_after FROM litejobs_jobs INDEXED BY litejobs_jobs_ready_by_queue
    WHERE status = 'pending' AND queue = :queue{{index}} AND {_DUE}{{filters}}
    ORDER BY priority DESC, begin_after, id
    LIMIT :limit)
"""


# What a runner leaves to others (see `_claim_filters`): signed jobs, when it
# has no secret to check them with, and callables it could not import.
_UNSIGNED_ONLY = " AND signature IS NULL"
_AVOIDING_NAMES = " AND name NOT IN (SELECT value FROM json_each(:avoid))"
# A paused queue's jobs wait (`Queue.pause`).  The list is read once per
# statement, and is empty but while an operator pauses a queue.
_NOT_PAUSED = (" AND queue NOT IN (SELECT queue FROM litejobs_paused"
               " WHERE until IS NULL OR until > :now)")
# A plain claim leaves jobs that name quotas to a claim under quotas, while
# any limit is set (read once per statement: nothing, with none set).
_OUTSIDE_QUOTAS = " AND (quotas IS NULL OR NOT EXISTS (SELECT 1 FROM litejobs_quotas))"


# What a statement that may end jobs returns, for `_SQLiteStorage._after_end`.
_ENDED = "id, queue, status, parent_id, role, position, composite, waiting_on, followers"

# The tallies of `_COUNT_JOBS`: jobs that ended, by queue and status, added
# once per statement's worth of ends ...
_COUNT_ENDED = """
INSERT INTO litejobs_ended_counts (queue, status, jobs) VALUES (?, ?, ?)
ON CONFLICT (queue, status) DO UPDATE SET jobs = litejobs_ended_counts.jobs + excluded.jobs
"""
# ... and a job about to be re-opened; nothing if it has not ended.  Deletes
# are counted by the trigger litejobs_jobs_uncount_deleted.
_UNCOUNT_ENDED = """
UPDATE litejobs_ended_counts SET jobs = jobs - 1
WHERE (queue, status) = (SELECT queue, status FROM litejobs_jobs WHERE id = ?)
"""

# Fails, in one statement, every job still pending past its begin_by deadline.
# The error reads like a formatted DeadlineExceeded; strftime's %f gives SS.SSS.
# {queues} is "" (every queue) or " AND queue IN (:queue0, ...)".
_DEADLINE_ERROR = """printf('%s: job %d (%s) was to start by %s but was still pending at %s' || char(10),
                   :error_type, id, name,
                   strftime('%Y-%m-%dT%H:%M:%fZ', begin_by, 'unixepoch'),
                   strftime('%Y-%m-%dT%H:%M:%fZ', :now, 'unixepoch'))"""
_EXPIRE_DEADLINES = """
UPDATE litejobs_jobs
SET status = 'failed', finished_at = :now, error_type = :error_type,
    error = """ + _DEADLINE_ERROR + """
WHERE status = 'pending' AND begin_by IS NOT NULL AND begin_by < :now
    AND attempts <= not_started{queues}
RETURNING """ + _ENDED

_EXPIRED_LEASES = """
SELECT id, lease_token, lease_owner, lease_expires, name, attempts, started_at, unstarted
FROM litejobs_jobs INDEXED BY litejobs_jobs_lease
WHERE status = 'active' AND lease_expires < :now
ORDER BY lease_expires
LIMIT 100
"""

# A job's history lists what its status alone no longer shows: attempts that
# ended without ending the job (retried, interrupted), and retries by hand.
# The normal path (created, started, finished) is in the timestamps.
_HISTORY_ENTRY = (
    "json_insert(coalesce(history, '[]'), '$[#]', json_object('at', :now, 'event', {event},"
    " 'attempt', attempts, 'by', ran_by, 'error', :error_line))"
)
# The same, keeping the attempt's whole traceback too (``{traceback}``: the
# parameter or column that holds it), where an attempt ends in an error and
# the job goes on: the job's error column then holds only the latest.
_HISTORY_ENTRY_WITH_TRACEBACK = _HISTORY_ENTRY.replace(
    "'error', :error_line))", "'error', :error_line, 'traceback', {traceback}))")
assert _HISTORY_ENTRY_WITH_TRACEBACK != _HISTORY_ENTRY

# A job asked to stop (request_stop) that still had to run again ends
# cancelled instead: it was asked not to go on.
_STOPPING = "(cancel_requested != 0 OR stop_requested IS NOT NULL)"

# The fence: a worker's write lands only while the job is still active under
# the token of its own claim.  A cancel requested meanwhile wins over the
# result; a stop requested meanwhile keeps the result, but ends retries.
_FINISH_JOB = f"""
UPDATE litejobs_jobs
SET status = CASE WHEN cancel_requested != 0 THEN 'cancelled'
                  WHEN :status = 'pending' AND stop_requested IS NOT NULL THEN 'cancelled'
                  ELSE :status END,
    result = CASE WHEN cancel_requested != 0 THEN NULL ELSE :result END,
    result_signature = CASE WHEN cancel_requested != 0 THEN NULL ELSE :result_signature END,
    error = :error, error_type = :error_type,
    history = CASE WHEN :status = 'pending' AND NOT {_STOPPING}
                   THEN {_HISTORY_ENTRY_WITH_TRACEBACK.format(event="'retried'",
                                                              traceback=":error")}
                   ELSE history END,
    begin_after = coalesce(:begin_after, begin_after),
    finished_at = CASE WHEN {_STOPPING} OR :status != 'pending' THEN :now END,
    lease_owner = NULL, lease_token = NULL, lease_expires = NULL
WHERE id = :id AND status = 'active' AND lease_token = :token
RETURNING {_ENDED}
"""

# `_FINISH_JOB` for many runs of one claim (one token), ``:ids`` a JSON array.
_FINISH_JOBS = _FINISH_JOB.replace("WHERE id = :id AND",
                                   "WHERE id IN (SELECT value FROM json_each(:ids)) AND")
assert _FINISH_JOBS != _FINISH_JOB

# Whether an interruption uses up the last one a job may have (a negative
# max_interruptions, _UNLIMITED, allows any number).
_LAST_INTERRUPTION = "(max_interruptions >= 0 AND interruptions + 1 > max_interruptions)"

# A job that retries interruptions for ever (callbacks, postprocesses) runs
# again at once after its first, like any job, then waits :backoff, twice as
# long after each further one, up to :backoff_most: one that kills its
# process every time cannot keep a pool busy restarting processes.
_INTERRUPT_JOB = f"""
UPDATE litejobs_jobs
SET interruptions = interruptions + 1,
    status = CASE WHEN {_STOPPING} THEN 'cancelled'
                  WHEN {_LAST_INTERRUPTION} THEN 'failed'
                  ELSE 'pending' END,
    error = CASE WHEN {_LAST_INTERRUPTION} THEN :error ELSE error END,
    error_type = CASE WHEN {_LAST_INTERRUPTION} THEN :error_type ELSE error_type END,
    finished_at = CASE WHEN {_STOPPING} OR {_LAST_INTERRUPTION} THEN :now END,
    begin_after = CASE WHEN max_interruptions < 0 AND interruptions > 0
                       THEN :now + min(:backoff_most,
                                       :backoff * (1 << min(interruptions - 1, 30)))
                       ELSE begin_after END,
    history = {_HISTORY_ENTRY.format(event="'interrupted'")},
    lease_owner = NULL, lease_token = NULL, lease_expires = NULL
WHERE id = :id AND status = 'active' AND lease_token = :token
RETURNING {_ENDED}, begin_after, name, max_interruptions
"""

_RENEW_LEASE = """
UPDATE litejobs_jobs SET lease_expires = :expires
WHERE id = :id AND status = 'active' AND lease_token = :token
"""


def _back_to_pending(also: str) -> str:
    """A fenced UPDATE that puts a claimed job back to pending (or ends it
    cancelled, if asked to end meanwhile), setting ``also`` too."""
    return f"""
UPDATE litejobs_jobs
SET status = CASE WHEN {_STOPPING} THEN 'cancelled' ELSE 'pending' END,
    finished_at = CASE WHEN {_STOPPING} THEN :now END,
    {also},
    lease_owner = NULL, lease_token = NULL, lease_expires = NULL
WHERE id = :id AND status = 'active' AND lease_token = :token
RETURNING {_ENDED}
"""


# A claimed job that a pool never started goes back as if never claimed: the
# claim's attempt is given back.  Fenced like every worker write.
_RELEASE_JOB = _back_to_pending("attempts = attempts - 1, started_at = NULL")

# `_RELEASE_JOB` for a job its runner could not run (it could not import the
# callable, or has no secret to check a signed job): that is the runner's
# problem, not the job's, so it is given back to run elsewhere or later, and
# its history says why.
_REFUSE_JOB = _back_to_pending(
    "attempts = attempts - 1, started_at = NULL, "
    f"history = {_HISTORY_ENTRY.format(event=repr('refused'))}")

# A run a stopping pool killed after its grace (a deploy, say) is not the
# job's fault: it runs again, and the run counts neither as an attempt for
# its Retry policy nor as an interruption.  Fenced like every worker write.
_HAND_BACK_JOB = _back_to_pending(
    f"handbacks = handbacks + 1, history = {_HISTORY_ENTRY.format(event=repr('handed back'))}")

# A claim whose run its runner never recorded as begun, taken back from a
# runner that died or lost its lease: counted neither as an attempt nor as an
# interruption (the job had no run, as far as anyone knows, to be blamed for),
# and its begin_by deadline still holds.  Its attempt number stays used: the
# run may have begun an instant before its runner died.
_NEVER_STARTED = _back_to_pending(
    "not_started = not_started + 1, "
    f"history = {_HISTORY_ENTRY.format(event=repr('not started'))}")

# A run that ended but whose outcome died with its process, killed by another
# job: the attempt counts and the history says so, but the job is not blamed
# with an interruption.  Fenced like every worker write.
_OUTCOME_LOST = _back_to_pending(
    f"history = {_HISTORY_ENTRY.format(event=repr('outcome lost'))}")

_ACTIVE_JOBS_OF = """
SELECT id, lease_token, lease_owner, name, attempts, unstarted
FROM litejobs_jobs INDEXED BY litejobs_jobs_lease
WHERE status = 'active' AND lease_owner = :owner
"""

# A pool's running jobs whose run has begun: if the pool dies now, they were
# interrupted rather than never started.  Fenced like every worker write.
_MARK_STARTED = """
UPDATE litejobs_jobs SET unstarted = 0, started_at = :now
WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'active'
    AND lease_token = :token AND unstarted != 0
"""

# The running jobs of a pool that were asked to end: cancelled (stopped at
# once) or asked to stop (stopped by stop_requested, if still running).
_STOPS_REQUESTED = """
SELECT id, cancel_requested, stop_requested FROM litejobs_jobs INDEXED BY litejobs_jobs_lease
WHERE status = 'active' AND lease_owner = :owner
    AND (cancel_requested != 0 OR stop_requested IS NOT NULL)
"""

# What a running job reads of itself while it runs: what others put in its
# meta, and whether it was asked to stop.
_NEWS_OF_JOB = "SELECT meta, stop_requested FROM litejobs_jobs WHERE id = ?"

_NEXT_DUE = """
SELECT min(begin_after) FROM litejobs_jobs INDEXED BY litejobs_jobs_ready
WHERE status = 'pending'{queues}{filters}
"""

_REGISTER_WORKER = """
INSERT INTO litejobs_workers (id, host, pid, processes, queues, lease, started_at,
                              heartbeat_at)
VALUES (:id, :host, :pid, :processes, :queues, :lease, :now, :now)
"""

_HEARTBEAT = """
UPDATE litejobs_workers SET heartbeat_at = :now
WHERE id = :id AND stopped_at IS NULL
"""

_SELECT_WORKERS = """
SELECT w.*, (SELECT count(*) FROM litejobs_jobs INDEXED BY litejobs_jobs_lease
             WHERE status = 'active' AND lease_owner = w.id) AS jobs
FROM litejobs_workers AS w
ORDER BY w.started_at DESC
"""

_PRUNE_WORKERS = "DELETE FROM litejobs_workers WHERE stopped_at < :before"

# Where a pool that has not stopped runs: its host, pid, and when it started.
_POOL_PROCESS = """
SELECT host, pid, started_at FROM litejobs_workers WHERE id = ? AND stopped_at IS NULL
"""

# A pool that others took for dead, but that was only slow, is alive again.
_REVIVE_WORKER = """
UPDATE litejobs_workers SET heartbeat_at = :now, stopped_at = NULL, stop_reason = NULL
WHERE id = :id
"""

_STOP_WORKER = """
UPDATE litejobs_workers SET stopped_at = :now, stop_reason = :reason
WHERE id = :id AND stopped_at IS NULL
"""

# Pools that have missed a few heartbeats; the caller decides which are gone.
_SILENT_WORKERS = """
SELECT id, host, pid, started_at, heartbeat_at, lease FROM litejobs_workers
WHERE stopped_at IS NULL AND id != :id AND heartbeat_at < :silent_since
"""

# A job not running ends at once; a running one is flagged, and its pool
# stops the run.  waiting_on is left as it was: it tells `_after_end` whether
# a serial part had had its turn.
_CANCEL_JOB = f"""
UPDATE litejobs_jobs
SET status = CASE WHEN status = 'active' THEN status ELSE 'cancelled' END,
    finished_at = CASE WHEN status = 'active' THEN finished_at ELSE :now END,
    cancel_requested = 1
WHERE id = :id AND status IN ('pending', 'waiting', 'active')
    AND (:created_at IS NULL OR created_at = :created_at)
RETURNING {_ENDED}
"""

# Asks a running job to stop by :deadline (it sees stop_requested and may
# return early; its pool stops it then); a job not running is cancelled at once.
_STOP_JOB = f"""
UPDATE litejobs_jobs
SET status = CASE WHEN status = 'active' THEN status ELSE 'cancelled' END,
    finished_at = CASE WHEN status = 'active' THEN finished_at ELSE :now END,
    cancel_requested = CASE WHEN status = 'active' THEN cancel_requested ELSE 1 END,
    stop_requested = CASE WHEN status = 'active'
                          THEN coalesce(min(stop_requested, :deadline), :deadline)
                          ELSE stop_requested END
WHERE id = :id AND status IN ('pending', 'waiting', 'active')
    AND (:created_at IS NULL OR created_at = :created_at)
RETURNING {_ENDED}
"""

# -- composition ---------------------------------------------------------------
#
# A composite (parallel or serial) is a row of its own whose parts are rows
# with parent_id pointing at it and role 'part'; a callback is a row with
# parent_id pointing at the job it follows and a callback role; a job that
# returned another job waits with waiting_for pointing at it.  Rows that wait
# have status 'waiting' and are never claimed.  waiting_on counts what a
# waiting row still waits for: the parts not yet ended, or 1 for a returned
# job; _DORMANT (-1) means its turn has not come (a later serial part, a
# callback whose job has not ended, a part of a composite not yet started).
# followers counts the callbacks and waiting jobs ever added: while it is 0,
# the end of the row needs no search for them.
# Every step below runs inside the transaction that ended the job before it.

_CALLBACK_ROLES = ("callback", "success", "failure", "callbacks")
_DORMANT = -1  # waiting_on of a job whose turn has not come

_MAKE_READY = """
UPDATE litejobs_jobs
SET status = 'pending', waiting_on = 0, begin_after = max(begin_after, :now)
WHERE id = :id AND status = 'waiting'
"""

_MAKE_PLAIN_PARTS_READY = """
UPDATE litejobs_jobs
SET status = 'pending', waiting_on = 0, begin_after = max(begin_after, :now)
WHERE parent_id = :id AND role = 'part' AND status = 'waiting' AND composite IS NULL
"""

_WAITING_PARTS = """
SELECT id, composite FROM litejobs_jobs
WHERE parent_id = :id AND role = 'part' AND status = 'waiting'
ORDER BY position
"""

_SET_WAITING_ON = "UPDATE litejobs_jobs SET waiting_on = :count WHERE id = :id"

_COMPOSITE_OF = "SELECT composite FROM litejobs_jobs WHERE id = ?"

# Two parts ending at the same instant are serialised by the write lock, so
# exactly one of them sees the count reach zero.
_PART_ENDED = """
UPDATE litejobs_jobs SET waiting_on = waiting_on - 1
WHERE id = :parent AND status = 'waiting' AND waiting_on > 0
RETURNING waiting_on, composite
"""

# `_PART_ENDED` for ``:count`` parts of a parallel at once: never below 0, as
# that many decrements one by one would leave it.
_PARTS_ENDED = """
UPDATE litejobs_jobs SET waiting_on = max(waiting_on - :count, 0)
WHERE id = :parent AND status = 'waiting' AND waiting_on > 0
RETURNING waiting_on
"""

_NEXT_SERIAL_PART = """
SELECT id FROM litejobs_jobs
WHERE parent_id = :parent AND role = 'part' AND status = 'waiting' AND waiting_on = -1
    AND position > :position
ORDER BY position
LIMIT 1
"""

_CANCEL_REST_OF_SERIAL = f"""
UPDATE litejobs_jobs
SET status = 'cancelled', finished_at = :now, cancel_requested = 1, error = :error
WHERE parent_id = :parent AND role = 'part' AND status = 'waiting' AND waiting_on = -1
RETURNING {_ENDED}
"""

# Everything under a cancelled job that has not ended: its parts, theirs, and
# a job it returned.  Callbacks are not included: they run, told of the cancel.
# A running job under it that was asked to stop (`_STOP_DESCENDANTS`) keeps
# its time to stop.
_WORK_UNDER = """
WITH RECURSIVE tree (id) AS (
    SELECT id FROM litejobs_jobs
    WHERE parent_id = :id AND role IN ('part', 'result')
    UNION ALL
    SELECT child.id FROM litejobs_jobs AS child JOIN tree ON child.parent_id = tree.id
    WHERE child.role IN ('part', 'result'))
"""
_CANCEL_DESCENDANTS = _WORK_UNDER + f"""
UPDATE litejobs_jobs
SET status = CASE WHEN status = 'active' THEN status ELSE 'cancelled' END,
    finished_at = CASE WHEN status = 'active' THEN finished_at ELSE :now END,
    cancel_requested = CASE WHEN status = 'active' AND stop_requested IS NOT NULL
                            THEN cancel_requested ELSE 1 END
WHERE id IN (SELECT id FROM tree) AND status IN ('pending', 'waiting', 'active')
RETURNING {_ENDED}
"""

# Before a composite stopped by `_STOP_JOB` is cancelled: its running parts
# are asked to stop by :deadline rather than stopped at once.
_STOP_DESCENDANTS = _WORK_UNDER + """
UPDATE litejobs_jobs
SET stop_requested = coalesce(min(stop_requested, :deadline), :deadline)
WHERE id IN (SELECT id FROM tree) AND status = 'active'
"""

_DORMANT_CALLBACKS = f"""
SELECT id, role FROM litejobs_jobs
WHERE parent_id = :id AND status = 'waiting' AND waiting_on = -1
    AND role IN {_CALLBACK_ROLES!r}
ORDER BY id
"""

_SKIP_CALLBACK = f"""
UPDATE litejobs_jobs SET status = 'cancelled', finished_at = :now, error = :error
WHERE id = :id AND status = 'waiting'
RETURNING {_ENDED}
"""

# A job that waited on a job it returned ends as that job ended.
_TAKE_OUTCOME = f"""
UPDATE litejobs_jobs
SET (status, result, result_signature, error, error_type) = (
        SELECT status, result, result_signature, error, error_type
        FROM litejobs_jobs WHERE id = :source),
    finished_at = :now, waiting_on = 0
WHERE waiting_for = :source AND status = 'waiting'
RETURNING {_ENDED}
"""

_WAIT_FOR_JOB = f"""
UPDATE litejobs_jobs
SET status = CASE WHEN cancel_requested != 0 THEN 'cancelled' ELSE 'waiting' END,
    finished_at = CASE WHEN cancel_requested != 0 THEN :now END,
    waiting_on = 1, waiting_for = :target,
    lease_owner = NULL, lease_token = NULL, lease_expires = NULL
WHERE id = :id AND status = 'active' AND lease_token = :token
RETURNING {_ENDED}
"""

# created_at tells a job from a later one given the same id after the first
# was rolled back: a stale Job object then finds nothing.
_ADD_FOLLOWER = """
UPDATE litejobs_jobs SET followers = followers + 1
WHERE id = :id AND (:created_at IS NULL OR created_at = :created_at)
RETURNING status
"""

_JOB_EXISTS = "SELECT 1 FROM litejobs_jobs WHERE id = ?"

_BLOCKERS_OF = """
SELECT status, waiting_on, waiting_for, parent_id, role, position, composite
FROM litejobs_jobs WHERE id = ?
"""

# The parts of a composite that have not ended; with a position, only those before it.
_UNFINISHED_PARTS = """
SELECT id FROM litejobs_jobs
WHERE parent_id = :parent AND role = 'part' AND status IN ('pending', 'waiting', 'active')
    AND (:position IS NULL OR position < :position)
"""

_SELECT_CHILDREN = f"""
SELECT {_JOB_COLUMNS} FROM litejobs_jobs
WHERE parent_id = :id AND (:role IS NULL OR role = :role)
ORDER BY role != 'part', role != 'result', position, id
"""


# -- progress, inspection and retention ---------------------------------------

_REPORT = """
UPDATE litejobs_jobs SET progress = :progress, progress_message = :message
WHERE id = :id AND status = 'active' AND lease_token = :token
"""

# Meta is merged, key by key, inside the write transaction: a running job and
# others (`Job.update_meta` from outside) may each set keys of it.  The fenced
# read fences the write after it.
_META_OF_RUN = """
SELECT meta FROM litejobs_jobs WHERE id = ? AND status = 'active' AND lease_token = ?
"""
_META_OF_JOB = """
SELECT meta FROM litejobs_jobs WHERE id = :id AND (:created_at IS NULL OR created_at = :created_at)
"""
_SET_META = "UPDATE litejobs_jobs SET meta = ? WHERE id = ?"


_OLDEST_DUE = """
SELECT id, name, queue, begin_after FROM litejobs_jobs INDEXED BY litejobs_jobs_ready
WHERE status = 'pending' AND begin_after <= :now
ORDER BY begin_after, id
LIMIT 1
"""

# finished_at is set exactly while a job has ended.
_FINISHED_SINCE = """
SELECT count(*) FROM litejobs_jobs INDEXED BY litejobs_jobs_finished
WHERE finished_at IS NOT NULL AND finished_at >= :since
"""

# {where} is built from the filters given, in _SQLiteStorage.search.
_SEARCH_JOBS = f"""
SELECT {_JOB_COLUMNS} FROM litejobs_jobs
WHERE {{where}}
ORDER BY id DESC
LIMIT :limit
"""

# A finished job is deleted with everything under it (ON DELETE CASCADE), and
# only once nothing under it is unfinished: a callback may still be due.
_PURGEABLE = """
SELECT id FROM litejobs_jobs AS root INDEXED BY litejobs_jobs_finished
WHERE finished_at IS NOT NULL AND finished_at < :before
    AND (:status IS NULL OR status = :status) AND parent_id IS NULL
    AND NOT EXISTS (
        WITH RECURSIVE tree (id, status) AS (
            SELECT id, status FROM litejobs_jobs WHERE parent_id = root.id
            UNION ALL
            SELECT child.id, child.status FROM litejobs_jobs AS child
            JOIN tree ON child.parent_id = tree.id)
        SELECT 1 FROM tree WHERE status IN ('pending', 'waiting', 'active'))
ORDER BY finished_at
LIMIT :limit
"""

# The jobs under one, deepest first: deleting them in this order needs no
# cascade, which SQLite would stop at 1000 levels (a long chain of returned jobs).
_TREE_DEEPEST_FIRST = """
WITH RECURSIVE tree (id, depth) AS (
    SELECT id, 1 FROM litejobs_jobs WHERE parent_id = :id
    UNION ALL
    SELECT child.id, tree.depth + 1 FROM litejobs_jobs AS child
    JOIN tree ON child.parent_id = tree.id)
SELECT id FROM tree ORDER BY depth DESC
"""

_DELETE_JOB = "DELETE FROM litejobs_jobs WHERE id = ?"
# A job to delete by hand (the dashboard's purge), read under its lock on
# PostgreSQL: a callback added meanwhile waits, then finds it gone.
_ROOT_TO_DELETE = "SELECT status, parent_id FROM litejobs_jobs AS root WHERE id = ?"

# Jobs under one that have not ended, at any depth, callbacks included: a
# purge checks it again once it holds the root (PostgreSQL: a callback may
# have been added meanwhile, under the snapshot `_PURGEABLE` read).
_UNFINISHED_IN_TREE = """
WITH RECURSIVE tree (id, status) AS (
    SELECT id, status FROM litejobs_jobs WHERE parent_id = :id
    UNION ALL
    SELECT child.id, child.status FROM litejobs_jobs AS child
    JOIN tree ON child.parent_id = tree.id)
SELECT count(*) FROM tree WHERE status IN ('pending', 'waiting', 'active')
"""

# Back to its start, for a retry by hand; what it went through stays in history.
_REOPEN = f"""
UPDATE litejobs_jobs
SET history = {_HISTORY_ENTRY_WITH_TRACEBACK.format(event="'retried by hand'",
                                                   traceback="error")},
    status = 'waiting', waiting_on = -1, waiting_for = NULL, attempts = 0,
    interruptions = 0, handbacks = 0, not_started = 0, cancel_requested = 0,
    stop_requested = NULL,
    result = NULL, result_signature = NULL,
    error = NULL, error_type = NULL,
    ran_by = NULL, started_at = NULL, finished_at = NULL, begin_after = :now, begin_by = NULL,
    progress = NULL, progress_message = NULL
WHERE id = :id AND status IN ('failed', 'cancelled')
"""

# `_REOPEN` for a composite around a part retried by hand, whatever its end:
# it waits again for that part, then runs its postprocess again.
_REOPEN_AROUND_PART = _REOPEN.replace("status IN ('failed', 'cancelled')",
                                      "status IN ('completed', 'failed', 'cancelled')")
assert _REOPEN_AROUND_PART != _REOPEN

# Work of a job's own still going on: its parts, or the job it returned, and theirs.
_UNFINISHED_WORK_UNDER = _WORK_UNDER + """
SELECT count(*) FROM litejobs_jobs
WHERE id IN (SELECT id FROM tree) AND status IN ('pending', 'waiting', 'active')
"""

_STATUS_OF = "SELECT status FROM litejobs_jobs WHERE id = ?"

# -- schedules ---------------------------------------------------------------------
#
# A tick fires in the transaction that moves its schedule's next_tick past
# it: under SQLite's write lock, or the schedule's row lock on PostgreSQL,
# where pools skip the schedules another is firing.  Each fired tick also
# leaves a row in litejobs_ticks, whose key refuses a second.
_SCHEDULE_COLUMNS = ("name, cron, tz, job_name, template, template_signature, catchup, "
                     "catchup_limit, max_lag, overlap, paused, next_tick, last_tick, "
                     "last_job_id, last_fired_at, created_at, updated_at")
_SCHEDULES = f"SELECT {_SCHEDULE_COLUMNS} FROM litejobs_schedules ORDER BY name"
_SCHEDULE_NAMED = f"SELECT {_SCHEDULE_COLUMNS} FROM litejobs_schedules WHERE name = :name"
# The same, read to be changed (PostgreSQL: locked as it is read, see
# _POSTGRES_REWRITES; the alias keeps the two statements apart there).
_SCHEDULE_TO_CHANGE = (f"SELECT {_SCHEDULE_COLUMNS} FROM litejobs_schedules AS changing "
                       f"WHERE name = :name")
_INSERT_SCHEDULE = (
    f"INSERT INTO litejobs_schedules ({_SCHEDULE_COLUMNS}) VALUES ("
    + ", ".join(":" + name.strip() for name in _SCHEDULE_COLUMNS.split(",")) + ")")
# Declared again (a program starting): what it says changes, but for what
# only the schedule knows: whether it is paused, and its last fire.
_UPDATE_SCHEDULE = """
UPDATE litejobs_schedules
SET cron = :cron, tz = :tz, job_name = :job_name, template = :template,
    template_signature = :template_signature, catchup = :catchup,
    catchup_limit = :catchup_limit, max_lag = :max_lag, overlap = :overlap,
    next_tick = :next_tick, updated_at = :updated_at
WHERE name = :name
"""
# Due schedules, the most overdue first; a pool takes a few at a time.
_DUE_SCHEDULES = f"""
SELECT {_SCHEDULE_COLUMNS} FROM litejobs_schedules
WHERE paused = 0 AND next_tick <= :now
ORDER BY next_tick
LIMIT 20
"""
_NEXT_SCHEDULE_TICK = "SELECT min(next_tick) FROM litejobs_schedules WHERE paused = 0"
# Nothing, if the tick has a row already: it fired.
_RECORD_TICK = """
INSERT INTO litejobs_ticks (schedule, tick, job_id, fired_at) VALUES (?, ?, NULL, ?)
ON CONFLICT (schedule, tick) DO NOTHING
"""
_TICK_JOB = "UPDATE litejobs_ticks SET job_id = ? WHERE schedule = ? AND tick = ?"
_SCHEDULE_MOVED = """
UPDATE litejobs_schedules
SET next_tick = :next_tick, last_tick = coalesce(:last_tick, last_tick),
    last_job_id = coalesce(:last_job_id, last_job_id),
    last_fired_at = coalesce(:last_fired_at, last_fired_at)
WHERE name = :name
"""
_PAUSE_SCHEDULE = """
UPDATE litejobs_schedules SET paused = :paused, next_tick = :next_tick, updated_at = :now
WHERE name = :name
"""
_PRUNE_TICKS = "DELETE FROM litejobs_ticks WHERE schedule = ? AND tick < ?"
# The job of a tick knows it: in its meta, before any run could change it.
_TICK_META = "UPDATE litejobs_jobs SET meta = ? WHERE id = ?"
_DELETE_SCHEDULE = "DELETE FROM litejobs_schedules WHERE name = ?"
_DELETE_TICKS = "DELETE FROM litejobs_ticks WHERE schedule = ?"

# -- paused queues -----------------------------------------------------------------
_PAUSE_QUEUE = """
INSERT INTO litejobs_paused (queue, until, paused_at) VALUES (?, ?, ?)
ON CONFLICT (queue) DO UPDATE SET until = excluded.until, paused_at = excluded.paused_at
"""
_RESUME_QUEUE = "DELETE FROM litejobs_paused WHERE queue = ?"
# Pauses that have run out stay until the next pause or resume of their queue.
_PAUSED_QUEUES = """
SELECT queue, until, paused_at FROM litejobs_paused
WHERE until IS NULL OR until > :now
ORDER BY queue
"""

# -- quotas ---------------------------------------------------------------------------
#
# A job names the quotas it counts against (its column quotas, a JSON list).
# While any limit is set, claims count the running jobs of each name, in the
# claim's own transaction (`_Claims._claim_under_quotas`): the count comes
# from the rows of running jobs, never from a counter, so a dead runner's
# slot frees when its lease runs out and its job is taken back, and no
# write of a stale runner can free a slot twice.
_SET_QUOTA = """
INSERT INTO litejobs_quotas (pattern, running, rate, per, set_at) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (pattern) DO UPDATE SET running = excluded.running, rate = excluded.rate,
    per = excluded.per, set_at = excluded.set_at
"""
_REMOVE_QUOTA = "DELETE FROM litejobs_quotas WHERE pattern = ?"
_QUOTAS = "SELECT pattern, running, rate, per FROM litejobs_quotas ORDER BY pattern"
# Rate limits count the claims of the last :since seconds (a sliding window).
_STARTS_SINCE = "SELECT name, at FROM litejobs_starts WHERE at > :since"
_RECORD_START = "INSERT INTO litejobs_starts (name, at) VALUES (?, ?)"
_PRUNE_STARTS = "DELETE FROM litejobs_starts WHERE at <= :since"
_RUNNING_QUOTAS = """
SELECT quotas FROM litejobs_jobs INDEXED BY litejobs_jobs_quota_running
WHERE status = 'active' AND quotas IS NOT NULL
"""
# A claim of the jobs chosen under quotas, by id (:ids, a JSON list); one
# another runner took meanwhile (PostgreSQL) is not pending any more.
_CLAIM_CHOSEN = f"""
UPDATE litejobs_jobs
SET status = 'active', attempts = attempts + 1, started_at = :now, ran_by = :owner,
    lease_owner = :owner, lease_token = :token, lease_expires = :expires,
    unstarted = :unstarted
WHERE status = 'pending' AND id IN (SELECT value FROM json_each(:ids))
RETURNING {_JOB_COLUMNS}, payload, signature
"""
# Ends by minute, for the dashboard's chart of the last hour.
_FINISHED_PER_MINUTE = """
SELECT CAST((finished_at - :since) / 60 AS INTEGER) AS minute, status, count(*)
FROM litejobs_jobs INDEXED BY litejobs_jobs_finished
WHERE finished_at IS NOT NULL AND finished_at >= :since
GROUP BY minute, status
"""
# Who holds a quota's slots, for `explain`.
_RUNNING_WITH_QUOTAS = """
SELECT id, quotas, lease_owner FROM litejobs_jobs INDEXED BY litejobs_jobs_quota_running
WHERE status = 'active' AND quotas IS NOT NULL
ORDER BY id
"""
# The due jobs a claim under quotas looks at, in claim order, but those that
# name a quota that is full (:full, a JSON list): so that a full quota's
# backlog does not hide the jobs behind it.
_QUOTA_CANDIDATES = f"""
SELECT id, quotas FROM litejobs_jobs INDEXED BY litejobs_jobs_ready
WHERE status = 'pending' AND {_DUE}{{queues}}{{filters}}
    AND (quotas IS NULL OR NOT EXISTS (
        SELECT 1 FROM json_each(quotas) AS named
        WHERE named.value IN (SELECT value FROM json_each(:full))))
ORDER BY priority DESC, begin_after, id
LIMIT :scan
"""

# -- copying unfinished jobs to another database --------------------------------------
#
# Whole trees, so that composites, their parts (ended ones included) and
# callbacks go together: the trees that hold a pending or waiting job.
_UNFINISHED_TREES = f"""
WITH RECURSIVE up (id, parent_id) AS (
    SELECT id, parent_id FROM litejobs_jobs WHERE status IN ('pending', 'waiting')
    UNION
    SELECT job.id, job.parent_id FROM litejobs_jobs AS job JOIN up ON job.id = up.parent_id),
down (id) AS (
    SELECT id FROM up WHERE parent_id IS NULL
    UNION
    SELECT job.id FROM litejobs_jobs AS job JOIN down ON job.parent_id = down.id)
SELECT {_JOB_COLUMNS}, payload, signature, result, result_signature, lease_token
FROM litejobs_jobs WHERE id IN (SELECT id FROM down)
ORDER BY id
"""
# Every column a copied row keeps (leases are never copied: no job running).
_COPIED_COLUMNS = tuple(name.strip() for name in _JOB_COLUMNS.split(",")
                        if name.strip() not in ("lease_owner", "lease_expires")) + (
    "payload", "signature", "result", "result_signature")
_INSERT_COPY = (f"INSERT INTO litejobs_jobs ({', '.join(_COPIED_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(_COPIED_COLUMNS))})")
# A copied job, once those under it are gone: one with a job under it that was
# not copied (added since) stays, or that job would go with it.
_DELETE_CHILDLESS = """
DELETE FROM litejobs_jobs
WHERE id = ? AND NOT EXISTS (SELECT 1 FROM litejobs_jobs AS child WHERE child.parent_id = ?)
"""

_UNDONE_PARTS = """
SELECT id, error FROM litejobs_jobs
WHERE parent_id = :id AND role = 'part' AND status IN ('failed', 'cancelled')
ORDER BY position
"""


# -- PostgreSQL's dialect -------------------------------------------------------
#
# The storage layers run the statements above on both backends.  On
# PostgreSQL, `_postgres_sql` rewrites each once into its dialect (the
# rewrites below, then psycopg's placeholders); what only PostgreSQL runs is
# here, written with SQLite's placeholders like the rest.  Columns keep
# SQLite's types: times are Unix seconds in double precision, flags are
# integers, so that both backends give the layers the same plain values.

_POSTGRES_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE SEQUENCE litejobs_jobs_id_seq",
        # Ids come in consecutive runs (a composite and its parts are linked
        # before they are inserted): a run is reserved under a short lock of
        # its own, so that no other reservation falls inside it.  Held for two
        # statements, not for the transaction, which may be long; neither can
        # fail short of the 2**63 ids running out.
        """
        CREATE FUNCTION litejobs_reserve_ids(wanted bigint) RETURNS bigint
        LANGUAGE plpgsql AS $$
        DECLARE
            lock_key constant bigint := hashtext(current_schema() || '.litejobs_jobs_id_seq');
            first bigint;
        BEGIN
            PERFORM pg_advisory_lock(lock_key);
            first := nextval('litejobs_jobs_id_seq');
            IF wanted > 1 THEN
                PERFORM setval('litejobs_jobs_id_seq', first + wanted - 1);
            END IF;
            PERFORM pg_advisory_unlock(lock_key);
            RETURN first;
        END
        $$
        """,
        """
        CREATE TABLE litejobs_jobs (
            id                bigint PRIMARY KEY DEFAULT litejobs_reserve_ids(1),
            queue             text    NOT NULL,
            priority          bigint  NOT NULL DEFAULT 0,
            status            text    NOT NULL,
            name              text    NOT NULL,
            payload           bytea,
            signature         bytea,
            key               text,
            attempts          bigint  NOT NULL DEFAULT 0,
            max_attempts      bigint  NOT NULL DEFAULT 1,
            retry_policy      text,
            interruptions     bigint  NOT NULL DEFAULT 0,
            max_interruptions bigint  NOT NULL DEFAULT 3,
            timeout           double precision,
            created_at        double precision NOT NULL,
            begin_after       double precision NOT NULL,
            begin_by          double precision,
            started_at        double precision,
            finished_at       double precision,
            lease_owner       text,
            lease_token       text,
            lease_expires     double precision,
            cancel_requested  bigint  NOT NULL DEFAULT 0,
            parent_id         bigint REFERENCES litejobs_jobs (id) ON DELETE CASCADE,
            role              text,
            position          bigint,
            composite         text,
            waiting_on        bigint  NOT NULL DEFAULT 0,
            waiting_for       bigint,
            followers         bigint  NOT NULL DEFAULT 0,
            result            bytea,
            result_signature  bytea,
            error             text,
            error_type        text,
            progress          double precision,
            progress_message  text,
            meta              text,
            ran_by            text,
            history           text,
            handbacks         bigint  NOT NULL DEFAULT 0,
            stop_requested    double precision,
            unstarted         bigint  NOT NULL DEFAULT 0,
            not_started       bigint  NOT NULL DEFAULT 0
        )
        """,
        "ALTER SEQUENCE litejobs_jobs_id_seq OWNED BY litejobs_jobs.id",
        # The same partial indexes as on SQLite, for the same reasons.
        """
        CREATE INDEX litejobs_jobs_ready
            ON litejobs_jobs (priority DESC, begin_after, id) WHERE status = 'pending'
        """,
        """
        CREATE INDEX litejobs_jobs_ready_by_queue
            ON litejobs_jobs (queue, priority DESC, begin_after, id) WHERE status = 'pending'
        """,
        """
        CREATE INDEX litejobs_jobs_deadline
            ON litejobs_jobs (begin_by) WHERE status = 'pending' AND begin_by IS NOT NULL
        """,
        """
        CREATE INDEX litejobs_jobs_lease
            ON litejobs_jobs (lease_expires) WHERE status = 'active'
        """,
        "CREATE INDEX litejobs_jobs_owner ON litejobs_jobs (lease_owner) WHERE status = 'active'",
        """
        CREATE INDEX litejobs_jobs_finished
            ON litejobs_jobs (finished_at) WHERE finished_at IS NOT NULL
        """,
        """
        CREATE UNIQUE INDEX litejobs_jobs_live_key
            ON litejobs_jobs (key)
            WHERE key IS NOT NULL AND status IN ('pending', 'waiting', 'active')
        """,
        """
        CREATE INDEX litejobs_jobs_parent
            ON litejobs_jobs (parent_id, position) WHERE parent_id IS NOT NULL
        """,
        """
        CREATE INDEX litejobs_jobs_waiting_for
            ON litejobs_jobs (waiting_for) WHERE waiting_for IS NOT NULL
        """,
        "CREATE INDEX litejobs_jobs_waiting ON litejobs_jobs (queue) WHERE status = 'waiting'",
        """
        CREATE TABLE litejobs_workers (
            id           text PRIMARY KEY,
            host         text    NOT NULL,
            pid          bigint  NOT NULL,
            processes    bigint  NOT NULL,
            queues       text,
            lease        double precision NOT NULL,
            started_at   double precision NOT NULL,
            heartbeat_at double precision NOT NULL,
            stopped_at   double precision,
            stop_reason  text
        )
        """,
        # The tallies of ended jobs, as on SQLite, but each (queue, status)
        # in 16 slots, one picked by the writing connection: every end counts
        # in the transaction that records it, and with one row for all,
        # pools on many hosts would queue on that row's lock.  Counts add
        # the slots up (`_POSTGRES_SUM_ENDED`); a slot may go below zero.
        """
        CREATE TABLE litejobs_ended_counts (
            queue  text    NOT NULL,
            status text    NOT NULL,
            slot   integer NOT NULL,
            jobs   bigint  NOT NULL,
            PRIMARY KEY (queue, status, slot)
        )
        """,
        """
        CREATE FUNCTION litejobs_uncount_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO litejobs_ended_counts (queue, status, slot, jobs)
            VALUES (OLD.queue, OLD.status, pg_backend_pid() % 16, -1)
            ON CONFLICT (queue, status, slot)
            DO UPDATE SET jobs = litejobs_ended_counts.jobs - 1;
            RETURN NULL;
        END
        $$
        """,
        """
        CREATE TRIGGER litejobs_jobs_uncount_deleted AFTER DELETE ON litejobs_jobs
        FOR EACH ROW WHEN (OLD.status IN ('completed', 'failed', 'cancelled'))
        EXECUTE FUNCTION litejobs_uncount_deleted()
        """,
        # Wakes those that LISTEN, at commit (NOTIFY is delivered then, and
        # repeats within a transaction fold into one): pools on
        # litejobs_due when jobs became pending; Job.wait, wait_for_start
        # and the like on litejobs_changed when jobs that are not pending
        # changed (claimed, started, ended, asked to stop).  Pools hear
        # nothing of claims, renewals and progress, so that many pools on one
        # server do not wake one another for nothing.  Statement triggers: a
        # batch notifies once.  Inserted jobs are new, and most are due: an
        # insert notifies pools without looking at its rows.
        """
        CREATE FUNCTION litejobs_notify_due() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('litejobs_due', '');
            RETURN NULL;
        END
        $$
        """,
        """
        CREATE FUNCTION litejobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF EXISTS (SELECT 1 FROM changed WHERE status = 'pending') THEN
                PERFORM pg_notify('litejobs_due', '');
            END IF;
            IF EXISTS (SELECT 1 FROM changed WHERE status != 'pending') THEN
                PERFORM pg_notify('litejobs_changed', '');
            END IF;
            RETURN NULL;
        END
        $$
        """,
        """
        CREATE TRIGGER litejobs_jobs_notify_insert AFTER INSERT ON litejobs_jobs
        FOR EACH STATEMENT EXECUTE FUNCTION litejobs_notify_due()
        """,
        """
        CREATE TRIGGER litejobs_jobs_notify_update AFTER UPDATE ON litejobs_jobs
        REFERENCING NEW TABLE AS changed
        FOR EACH STATEMENT EXECUTE FUNCTION litejobs_notify()
        """,
    ),
    (
        # As on SQLite (its migration 4).
        """
        CREATE TABLE litejobs_schedules (
            name               text PRIMARY KEY,
            cron               text   NOT NULL,
            tz                 text   NOT NULL,
            job_name           text   NOT NULL,
            template           text   NOT NULL,
            template_signature bytea,
            catchup            text   NOT NULL,
            catchup_limit      bigint NOT NULL,
            max_lag            double precision,
            overlap            text   NOT NULL,
            paused             bigint NOT NULL DEFAULT 0,
            next_tick          double precision,
            last_tick          double precision,
            last_job_id        bigint,
            last_fired_at      double precision,
            created_at         double precision NOT NULL,
            updated_at         double precision NOT NULL
        )
        """,
        """
        CREATE TABLE litejobs_ticks (
            schedule text   NOT NULL,
            tick     double precision NOT NULL,
            job_id   bigint,
            fired_at double precision NOT NULL,
            PRIMARY KEY (schedule, tick)
        )
        """,
        """
        CREATE TABLE litejobs_paused (
            queue     text PRIMARY KEY,
            until     double precision,
            paused_at double precision NOT NULL
        )
        """,
        "ALTER TABLE litejobs_jobs ADD COLUMN quotas text",
        """
        CREATE TABLE litejobs_quotas (
            pattern text PRIMARY KEY,
            running bigint,
            rate    bigint,
            per     double precision,
            set_at  double precision NOT NULL
        )
        """,
        """
        CREATE TABLE litejobs_starts (
            name text NOT NULL,
            at   double precision NOT NULL
        )
        """,
        "CREATE INDEX litejobs_starts_at ON litejobs_starts (at)",
        # As before, and the end of a run that held quota slots wakes the
        # pools: a job held back by a full quota may run now.
        """
        CREATE OR REPLACE FUNCTION litejobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF EXISTS (SELECT 1 FROM changed WHERE status = 'pending'
                       OR (quotas IS NOT NULL AND status != 'active')) THEN
                PERFORM pg_notify('litejobs_due', '');
            END IF;
            IF EXISTS (SELECT 1 FROM changed WHERE status != 'pending') THEN
                PERFORM pg_notify('litejobs_changed', '');
            END IF;
            RETURN NULL;
        END
        $$
        """,
        """
        CREATE INDEX litejobs_jobs_quota_running ON litejobs_jobs (id)
            WHERE status = 'active' AND quotas IS NOT NULL
        """,
    ),
)
_POSTGRES_SCHEMA_VERSION = len(_POSTGRES_MIGRATIONS)
_POSTGRES_DUE = "litejobs_due"  # the channel of jobs that became pending
_POSTGRES_CHANGED = "litejobs_changed"  # the channel of jobs that changed otherwise

_POSTGRES_CREATE_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS litejobs_schema (
    version    bigint PRIMARY KEY,
    applied_at double precision NOT NULL
)
"""
# Two processes opening a new database at once: one migrates, the other
# waits, then finds the schema current.
_POSTGRES_MIGRATION_LOCK = """
SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.litejobs migrations'))
"""
_POSTGRES_RESERVE_IDS = "SELECT litejobs_reserve_ids(?)"
# Two puts with one key at once: the second waits for the first's commit
# (the lock is the transaction's), then finds its job (`_FIND_LIVE_KEY`, a
# statement of its own, so that its snapshot is taken after the wait).
_POSTGRES_LOCK_KEY = """
SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.litejobs key'), hashtext(?))
"""
# Changes with every commit anywhere on the server: how a pool that does
# not LISTEN (PgBouncer in transaction mode) sees that something changed.
_POSTGRES_SNAPSHOT = "SELECT pg_current_snapshot()::text"
# Claims under quotas, one at a time: each counts the running jobs that the
# commits of those before it left (READ COMMITTED reads them, once the lock
# is ours), so that two pools never both take a quota's last slot.
_POSTGRES_LOCK_QUOTAS = """
SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.litejobs quotas'))
"""
# What the triggers send when jobs become pending, for jobs that became due
# otherwise (a queue resumed): delivered at commit.
_POSTGRES_ANNOUNCE_DUE = "SELECT pg_notify('litejobs_due', '')"
_POSTGRES_NOW = "SELECT extract(epoch FROM clock_timestamp())::float8"

# The tallies of ended jobs, in the slot of the writing connection.
_POSTGRES_COUNT_ENDED = """
INSERT INTO litejobs_ended_counts (queue, status, slot, jobs)
VALUES (?, ?, pg_backend_pid() % 16, ?)
ON CONFLICT (queue, status, slot) DO UPDATE SET jobs = litejobs_ended_counts.jobs + excluded.jobs
"""
_POSTGRES_UNCOUNT_ENDED = """
INSERT INTO litejobs_ended_counts (queue, status, slot, jobs)
SELECT queue, status, pg_backend_pid() % 16, -1 FROM litejobs_jobs
WHERE id = ? AND status IN ('completed', 'failed', 'cancelled')
ON CONFLICT (queue, status, slot) DO UPDATE SET jobs = litejobs_ended_counts.jobs - 1
"""

# Claims lock the due rows they take with SKIP LOCKED, so that claims from
# many pools at once never wait on one another nor take the same job.  The
# ready indexes serve the ORDER BY; named queues are one IN list.
_POSTGRES_CLAIM_JOBS = f"""
WITH due AS (
    SELECT id FROM litejobs_jobs
    WHERE status = 'pending' AND {_DUE}{{queues}}{{filters}}
    ORDER BY priority DESC, begin_after, id
    LIMIT :limit
    FOR UPDATE SKIP LOCKED)
UPDATE litejobs_jobs
SET status = 'active', attempts = attempts + 1, started_at = :now, ran_by = :owner,
    lease_owner = :owner, lease_token = :token, lease_expires = :expires,
    unstarted = :unstarted
WHERE id IN (SELECT id FROM due)
RETURNING {_JOB_COLUMNS}, payload, signature
"""

# SQLite's text, and PostgreSQL's for it, in the order applied.
_POSTGRES_REWRITES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.DOTALL), replacement) for pattern, replacement in (
        # Rows read to be changed in the same transaction are locked as they
        # are read: SQLite's single writer made that so; PostgreSQL's READ
        # COMMITTED does not.  Meta is merged under the lock (a run's report
        # and an update from outside); a purge skips roots others hold (a
        # callback being added); expired leases one pool is taking back are
        # left to it.
        (re.escape(_META_OF_RUN), _META_OF_RUN.rstrip() + " FOR UPDATE"),
        (re.escape(_META_OF_JOB), _META_OF_JOB.rstrip() + " FOR UPDATE"),
        (re.escape(_PURGEABLE), _PURGEABLE.rstrip() + " FOR UPDATE OF root SKIP LOCKED"),
        (re.escape(_EXPIRED_LEASES), _EXPIRED_LEASES.rstrip() + " FOR UPDATE SKIP LOCKED"),
        (re.escape(_DUE_SCHEDULES), _DUE_SCHEDULES.rstrip() + " FOR UPDATE SKIP LOCKED"),
        (re.escape(_ROOT_TO_DELETE), _ROOT_TO_DELETE + " FOR UPDATE"),
        (re.escape(_SCHEDULE_TO_CHANGE), _SCHEDULE_TO_CHANGE + " FOR UPDATE"),
        (r"\s+INDEXED BY \w+", ""),
        (r"\bIN \(\)", "IN (NULL)"),  # an empty list of queues
        # One array, built once: a subquery of the JSON would be scanned
        # again for every row the statement looks at.
        (r"id IN \(SELECT value FROM json_each\(:ids\)\)",
         "id = ANY(ARRAY(SELECT json_array_elements_text(:ids::json)::bigint))"),
        (r"SELECT value FROM json_each\(:avoid\)", "SELECT json_array_elements_text(:avoid::json)"),
        (r"SELECT value FROM json_each\(:full\)", "SELECT json_array_elements_text(:full::json)"),
        # PostgreSQL's cast rounds; SQLite's truncates, as a minute's index must.
        (r"CAST\(\(finished_at - :since\) / 60 AS INTEGER\)",
         "floor((finished_at - :since) / 60)::bigint"),
        (r"FROM json_each\(quotas\) AS named",
         "FROM json_array_elements_text(quotas::json) AS named(value)"),
        (r"json_insert\(coalesce\(history, '\[\]'\), '\$\[#\]', json_object\((.*?)\)\)",
         r"(coalesce(history, '[]')::jsonb || jsonb_build_array(jsonb_build_object(\1)))::text"),
        (re.escape(_DEADLINE_ERROR),
         "format('%s: job %s (%s) was to start by %s but was still pending at %s' || chr(10),"
         " :error_type, id, name,"
         """ to_char(to_timestamp(begin_by) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),"""
         """ to_char(to_timestamp(:now) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))"""),
        # bigint shifts take an int count; NULL results of a CASE need a type
        (r"\(1 << min\(interruptions - 1, 30\)\)",
         "(1::bigint << min(interruptions - 1, 30)::integer)"),
        (r"ELSE :(result|result_signature) END", r"ELSE CAST(:\1 AS bytea) END"),
        # The tallies' slots (see litejobs_ended_counts in the migrations).
        (re.escape(_COUNT_ENDED), _POSTGRES_COUNT_ENDED),
        (re.escape(_UNCOUNT_ENDED), _POSTGRES_UNCOUNT_ENDED),
        (re.escape("SELECT queue, status, jobs FROM litejobs_ended_counts WHERE jobs > 0"),
         "SELECT queue, status, sum(jobs)::bigint FROM litejobs_ended_counts"
         " WHERE TRUE"),
        (r"(WHERE TRUE(?: AND queue = :queue)?)$", r"\1 GROUP BY queue, status HAVING sum(jobs) > 0"),
        (r"FROM sqlite_master WHERE type = 'table' AND name = 'litejobs_schema'",
         "FROM pg_tables WHERE schemaname = current_schema() AND tablename = 'litejobs_schema'"),
    ))


###############################################################################
# Connections and transactions
###############################################################################


def _check_sqlite_version() -> None:
    if sqlite3.sqlite_version_info < _MIN_SQLITE:
        need = ".".join(map(str, _MIN_SQLITE))
        raise DatabaseError(
            f"litejobs needs SQLite {need} or newer (for RETURNING), but Python is "
            f"linked against SQLite {sqlite3.sqlite_version}; upgrade Python or "
            f"the system's libsqlite3"
        )


def _unreadable_file(path: str, exc: sqlite3.DatabaseError) -> DatabaseError:
    """Say why SQLite refused to read the file at ``path``: not SQLite, or
    shorter than its header says, or otherwise corrupt.

    Only a file being refused is read outside SQLite.  On POSIX, closing any
    descriptor of a file drops every lock the process holds on it, SQLite's
    included, and another process may then delete the WAL under live
    connections (https://sqlite.org/howtocorrupt.html, 2.2).  The layout read
    here is in https://sqlite.org/fileformat2.html: a 16-byte magic string, the
    page size at offset 16, and the page count at offset 28, valid when the
    counter at 92 equals the change counter at 24.
    """
    try:
        with open(path, "rb") as handle:
            header = handle.read(100)
            size = os.fstat(handle.fileno()).st_size
    except OSError:
        return _translate_sqlite_error(exc, path)
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        return DatabaseError(
            f"{path} is not an SQLite database (or its header is corrupt); "
            f"litejobs leaves it untouched: check the path"
        )
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    if header[24:28] == header[92:96] and size < pages * page_size:
        return DatabaseError(
            f"{path} is truncated: its header promises {pages * page_size} bytes but "
            f"the file has {size}; litejobs leaves it untouched: restore it from a backup"
        )
    return _translate_sqlite_error(exc, path)




def _network_filesystem(directory: str, mounts: str | None = None) -> str | None:
    """The type of the network filesystem ``directory`` is on (per the mount
    table, ``mounts`` or Linux's own), or None: local, or unknown."""
    if mounts is None:
        try:
            with open(_MOUNTS) as handle:
                mounts = handle.read()
        except OSError:
            return None  # not Linux: nothing to read it from
    directory = os.path.realpath(directory)
    best, found = "", None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = directory == point or directory.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, found = point, fields[2]
    return found if found in _NETWORK_FILESYSTEMS else None


def _write_lock_holder(path: str) -> str:
    """Who holds the write lock of the database at ``path``, as a clause for an
    error message, where Linux's /proc/locks tells (the WAL write lock is a
    POSIX lock on one byte of the -shm file); else "".  Nothing is opened
    on the database's files: closing a descriptor of them would drop
    SQLite's own locks (see `_unreadable_file`)."""
    try:
        shm = os.stat(path + "-shm")
        with open("/proc/locks") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return ""
    device = f"{os.major(shm.st_dev):02x}:{os.minor(shm.st_dev):02x}:{shm.st_ino}"
    for line in lines:
        fields = line.split()
        if len(fields) < 8 or fields[1] == "->" or fields[3] != "WRITE" or fields[5] != device:
            continue
        end = math.inf if fields[7] == "EOF" else int(fields[7])
        if not int(fields[6]) <= _WAL_WRITE_LOCK_BYTE <= end:
            continue
        pid = int(fields[4])
        if pid == os.getpid():
            return (f"; the lock is held by this very process (pid {pid}): if this thread "
                    f"has a transaction open on a connection of its own to the file, "
                    f"commit it first, or pass that connection as conn= so that litejobs "
                    f"writes inside it")
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            command = ""
        return f"; the lock is held by process {pid}" + (f" ({_shortened(command, 120)})"
                                                         if command else "")
    return ""


def _translate_sqlite_error(exc: sqlite3.Error, path: str) -> DatabaseError:
    text = str(exc)
    lowered = text.lower()
    if "locked" in lowered or "busy" in lowered:
        return DatabaseBusy(
            f"{path} stayed locked by another connection for longer than the busy timeout "
            f"({text}){_write_lock_holder(path)}; keep write transactions short, or give "
            f"the queue a longer busy_timeout"
        )
    if "readonly" in lowered or "read-only" in lowered:
        return DatabaseError(
            f"{path} is read-only ({text}); litejobs needs write access to the file "
            f"and to its directory, where SQLite keeps the -wal and -shm files"
        )
    if "not a database" in lowered or "malformed" in lowered or "corrupt" in lowered:
        return DatabaseError(
            f"{path} is corrupt or not an SQLite database ({text}); litejobs leaves it "
            f"untouched: restore it from a backup"
        )
    if "full" in lowered:
        return DatabaseError(f"{path}: {text}; free some disk space and retry")
    if "unable to open" in lowered:
        return DatabaseError(
            f"cannot open {path} ({text}); check that the file and its directory "
            f"exist and are readable and writable"
        )
    return DatabaseError(f"{path}: {text}")


def _queue_names_filter(queue_count: int | None) -> str:
    if queue_count is None:
        return ""
    names = ", ".join(f":queue{i}" for i in range(queue_count))
    return f" AND queue IN ({names})"


def _claim_filters(unsigned_only: bool, avoiding: bool) -> str:
    """The terms that leave jobs to other runners: signed ones, for a runner
    without a secret, and those whose callable is in ``:avoid`` (a JSON array);
    and those no runner claims now: jobs of paused queues."""
    return (_UNSIGNED_ONLY if unsigned_only else "") + (_AVOIDING_NAMES if avoiding else "") \
        + _NOT_PAUSED


@functools.lru_cache(maxsize=64)
def _claim_statement(queue_count: int | None, unsigned_only: bool = False,
                     avoiding: bool = False) -> str:
    """The claim for every queue (None) or for ``queue_count`` named ones,
    with `_claim_filters`."""
    filters = _claim_filters(unsigned_only, avoiding) + _OUTSIDE_QUOTAS
    if queue_count is not None and 0 < queue_count <= _MAX_QUEUE_RANGES:
        source = " UNION ALL ".join(_CLAIM_ONE_QUEUE.format(index=i, filters=filters)
                                    for i in range(queue_count))
    else:
        source = _CLAIM_ANY_QUEUE.format(queues=_queue_names_filter(queue_count),
                                         filters=filters)
    return _CLAIM_JOBS.format(source=source, columns=_JOB_COLUMNS)


@functools.lru_cache(maxsize=64)
def _quota_candidates_statement(queue_count: int | None, unsigned_only: bool,
                                avoiding: bool) -> str:
    return _QUOTA_CANDIDATES.format(queues=_queue_names_filter(queue_count),
                                    filters=_claim_filters(unsigned_only, avoiding))


@functools.lru_cache(maxsize=64)
def _deadline_statement(queue_count: int | None) -> str:
    return _EXPIRE_DEADLINES.format(queues=_queue_names_filter(queue_count))


# A new row's columns that planning leaves alone.
_NEW_ROW: dict[str, Any] = {
    "status": "pending", "key": None, "attempts": 0, "interruptions": 0,
    "started_at": None, "finished_at": None, "lease_owner": None, "lease_expires": None,
    "signature": None, "cancel_requested": 0, "parent_id": None, "role": None, "position": None,
    "composite": None, "waiting_on": 0, "waiting_for": None, "followers": 0,
    "error": None, "error_type": None, "progress": None, "progress_message": None,
    "meta": None, "ran_by": None, "history": None, "handbacks": 0, "stop_requested": None,
    "unstarted": 0, "not_started": 0, "quotas": None,
}


def _number_tree(tree: list[dict[str, Any]], first_id: int | None, now: float, *,
                 parent_id: int | None = None, role: str | None = None) -> list[dict[str, Any]]:
    """Complete the planned rows of one tree for insertion, in place: ids
    from ``first_id`` on, links between them, and the root under
    ``parent_id`` with ``role``, if given.  Planned rows have every column
    (see `Queue._row_options`).  A tree of one row may have ``first_id``
    None: SQLite gives the id as it inserts the row.  Returns ``tree``."""
    for index, row in enumerate(tree):
        row["id"], row["created_at"] = None if first_id is None else first_id + index, now
        parent = row.pop("parent", None)
        if parent is not None:
            row["parent_id"] = first_id + parent
        else:
            row["parent_id"] = parent_id
            if role is not None:
                row["role"] = role
    return tree


@contextlib.contextmanager
def _plain_rows(conn: sqlite3.Connection) -> Iterator[None]:
    """Rows as tuples and text as str while litejobs uses ``conn``, whatever
    factories the application set on it."""
    factories = conn.row_factory, conn.text_factory
    if factories == (None, str):
        yield
        return
    conn.row_factory, conn.text_factory = None, str
    try:
        yield
    finally:
        conn.row_factory, conn.text_factory = factories


@contextlib.contextmanager
def _savepoint(conn: _DBConnection) -> Iterator[None]:
    """Inside an open transaction: what the block writes, or nothing if it raises."""
    conn.execute("SAVEPOINT litejobs_step")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK TO litejobs_step")
            conn.execute("RELEASE litejobs_step")
        raise
    conn.execute("RELEASE litejobs_step")


def _as_dict(cursor: sqlite3.Cursor, row: Sequence[Any]) -> dict[str, Any]:
    return dict(zip([d[0] for d in cursor.description], row))


def _as_dicts(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    """Every row ``cursor`` has left, as dicts (column names read once)."""
    rows = cursor.fetchall()
    names = [d[0] for d in cursor.description or ()]
    return [dict(zip(names, row)) for row in rows]


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _check_sizes(rows: Sequence[dict[str, Any]], limit: int | None) -> None:
    """Raise `PayloadTooLarge` if a planned row's pickled call is over ``limit``."""
    if limit is None:
        return
    largest = max(map(len, filter(None, map(_PAYLOAD_OF, rows))), default=0)
    if largest > limit:
        row = next(row for row in rows if len(row["payload"] or b"") == largest)
        raise PayloadTooLarge(
            f"job {row['name']} takes {largest:,} bytes pickled, over the size limit of "
            f"{limit:,}: pass a path or an id, and let the job load the data itself (or "
            f"raise the queue's size_limit)")


def _lease_lost_text(job_id: int, token: str, consequence: str = "") -> str:
    """The message of a `LeaseLost`: a write of a run that no longer owns its job."""
    return (f"job {job_id}: lease {token[:8]} no longer owns the job"
            + (f"; {consequence}" if consequence else ""))


def _merged_meta(text: str | None, items: Mapping[str, Any]) -> str:
    """A job's meta (JSON ``text``, or None) with ``items`` merged in, as JSON.
    Raises TypeError for a value that is not JSON, and ValueError when the
    result is over ``_META_MOST``."""
    merged = {**(json.loads(text) if text else {}), **items}
    try:
        merged_text = json.dumps(merged, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"meta values must be JSON: {exc}") from None
    if len(merged_text) > _META_MOST:
        raise ValueError(f"meta would take {len(merged_text):,} bytes as JSON; the limit is "
                         f"{_META_MOST:,}: keep larger data in the result or a file")
    return merged_text


def _crash_point(point: str) -> None:
    """Die here, as a crash or kill -9 would, when the failure-model tests ask
    for this point (``LITEJOBS_TEST_CRASH_POINT``).  With
    ``LITEJOBS_TEST_CRASH_ONCE`` naming a file, only the process that creates
    that file dies, so the run after the crash goes through."""
    if _CRASH_POINT != point:
        return
    once = os.environ.get("LITEJOBS_TEST_CRASH_ONCE")
    if once:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            return
    os._exit(70)


# -- runners on this host ---------------------------------------------------------
#
# Every process using a SQLite file is on this host, so whether a runner that
# holds jobs is alive is best asked of the system: a pool whose leases ran out
# while another connection held the write lock for long (a paused pool, an
# application's long transaction) is starved, not dead, and keeps its jobs.


def _host_name() -> str:
    """This host's name, as pools register it (``LITEJOBS_HOST``, or the
    host name)."""
    return os.environ.get(_HOST_ENV) or socket.gethostname()


def _owner_id(kind: str) -> str:
    """The id of a runner (a pool, or a run_pending call): kind@host:pid:random."""
    return f"{kind}@{_host_name()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


@functools.lru_cache(maxsize=1)
def _boot_time() -> float:
    """When this host booted, in Unix seconds (/proc/stat's btime)."""
    with open("/proc/stat") as handle:
        for line in handle:
            if line.startswith("btime "):
                return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


def _process_state(pid: int) -> tuple[str, float] | None:
    """The state of process ``pid`` (``R``, ``S``, ``D``; ``T`` stopped, ``Z``
    a zombie) and when it started, in Unix seconds, read from /proc; None if
    no process has the pid.  Without /proc: ``("?", 0.0)`` if it exists."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        started = _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, IndexError):  # no /proc here
        return ("?", 0.0) if _pid_alive(pid) else None
    return fields[0], started


def _runner_alive_here(host: str | None, pid: int | None, since: float | None) -> bool | None:
    """Whether the runner with process ``pid`` is alive and running, if it is
    on this host: its process exists, is neither stopped nor a zombie, and
    started before ``since`` (a process that started later got the pid of a
    dead one).  None for a runner elsewhere: only its heartbeat can tell."""
    if host != _host_name() or pid is None:
        return None
    state = _process_state(pid)
    if state is None or state[0] in "TtZXx":
        return False
    return since is None or state[1] <= since + 1.0


# -- secrets -----------------------------------------------------------------------


# The secrets given in code, by database path, in this process.  A Queue
# rebuilt from a pickle (a job's argument, a pool's child's queue) uses them:
# a pickle never carries a secret, and the environment may hold none.
_SECRETS_BY_PATH: dict[str, tuple[bytes, ...]] = {}


class _Keys(tuple):
    """Secrets already checked, perhaps none: given as ``secret``, they are
    used as they are, and the environment is not read."""


def _secrets_for(path: str, secret: str | bytes | Sequence[str | bytes] | None
                 ) -> tuple[bytes, ...]:
    """The signing keys of a queue on ``path`` (absolute): those given, which
    this process's rebuilt queues on the file then use, or else
    ``LITEJOBS_SECRET``'s."""
    if secret is None:
        return _secrets_from(None)
    keys = tuple(secret) if isinstance(secret, _Keys) else _secrets_from(secret)
    _SECRETS_BY_PATH[path] = keys
    return keys


def _secrets_from(secret: str | bytes | Sequence[str | bytes] | None) -> tuple[bytes, ...]:
    """The signing keys from a ``secret`` option, or from ``LITEJOBS_SECRET``
    (comma-separated) when it is None; the first key signs.  An empty or unset
    variable means no signing; a given secret that holds no key is refused."""
    if secret is None:
        text = os.environ.get(_SECRET_ENV, "").strip()
        if not text:
            return ()
        keys = [part.strip().encode() for part in text.split(",") if part.strip()]
        if not keys or not all(len(key) >= _SHORTEST_SECRET for key in keys):
            raise LitejobsError(
                f"{_SECRET_ENV} must hold secrets of at least {_SHORTEST_SECRET} bytes "
                f"each, separated by commas; " + ("it holds none" if not keys else
                                                  "one of them is shorter"))
        return tuple(keys)
    given = [secret] if isinstance(secret, (str, bytes, bytearray)) else secret
    if not isinstance(given, (list, tuple)) or not given:
        raise TypeError(f"secret must be a str or bytes of at least {_SHORTEST_SECRET} "
                        f"bytes, or a non-empty list of them, not {_describe(secret)}")
    keys = []
    for key in given:
        if isinstance(key, str):
            key = key.encode()
        if not isinstance(key, (bytes, bytearray)):
            raise TypeError(f"a secret is a str or bytes, not {_describe(key)}")
        if len(key) < _SHORTEST_SECRET:
            raise ValueError(f"a secret must be at least {_SHORTEST_SECRET} bytes long")
        keys.append(bytes(key))
    return tuple(keys)


def _sign(keys: Sequence[bytes], *parts: bytes) -> bytes:
    return hmac.new(keys[0], b"\x00".join(parts), hashlib.sha256).digest()


def _signed_by_one_of(keys: Sequence[bytes], signature: bytes | None, *parts: bytes) -> bool:
    if signature is None:
        return False
    message = b"\x00".join(parts)
    return any(hmac.compare_digest(hmac.new(key, message, hashlib.sha256).digest(), signature)
               for key in keys)


# -- waking on commits -------------------------------------------------------------


class _WalWatch:
    """Tells an idle pool that the database's WAL file was written to, without
    polling: Linux inotify on the file's directory, through ctypes.  Where
    that is not available, `open` returns None and the pool polls instead.

    A write is seen before it commits (SQLite syncs, then publishes the commit
    in shared memory, which raises no event), so after an event the pool
    checks ``PRAGMA data_version`` for a short while.
    """

    _IN_MODIFY = 0x002
    _IN_CREATE = 0x100
    _IN_Q_OVERFLOW = 0x4000
    _IN_NONBLOCK = 0o4000
    _IN_CLOEXEC = 0o2000000
    _EVENT = struct.Struct("iIII")  # wd, mask, cookie, length of the name that follows

    def __init__(self, fd: int, wal_name: bytes):
        self.fd = fd
        self.broken = False  # inotify's descriptor does not break
        self.exact = True  # confirmed by data_version, which misses nothing
        self.means_due = False  # any commit, a pool's own included
        self._wal_name = wal_name

    def reopen(self) -> None:
        """Nothing to do (see `broken`)."""

    @classmethod
    def open(cls, database: str) -> _WalWatch | None:
        if not sys.platform.startswith("linux"):
            return None
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(cls._IN_NONBLOCK | cls._IN_CLOEXEC)
            if fd < 0:
                return None
            directory = os.fsencode(os.path.dirname(database))
            if libc.inotify_add_watch(fd, directory, cls._IN_MODIFY | cls._IN_CREATE) < 0:
                os.close(fd)
                return None
        except (OSError, AttributeError) as exc:
            _log.debug("no inotify (%s); an idle pool polls for changes", exc)
            return None
        return cls(fd, os.fsencode(os.path.basename(database)) + b"-wal")

    def written(self) -> bool:
        """Read the pending events; whether any was a write to the WAL."""
        seen = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return seen
            offset = 0
            while offset < len(data):
                _, mask, _, length = self._EVENT.unpack_from(data, offset)
                start = offset + self._EVENT.size
                seen = (seen or mask & self._IN_Q_OVERFLOW != 0  # events were lost
                        or data[start:start + length].rstrip(b"\0") == self._wal_name)
                offset = start + length

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class _CommitWatch:
    """Wakes a thread that waits on the database (`Job.wait`) soon after
    another connection commits, rather than on a fixed poll.

    It owns an inotify watch of the WAL (`_WalWatch`) and the last
    ``data_version`` it saw.  A write to the WAL shows before its commit
    does, so after one it checks ``data_version`` every millisecond for a
    short while; it also checks every `_SAFETY_CHECK_INTERVAL`, and polls
    with a growing pause where inotify is not available.
    """

    def __init__(self, storage: _Connections):
        self._storage = storage
        self._wal = storage.change_watch(changes=True)
        self._version = storage.data_version()
        self._settle_until = -math.inf
        self._pause = _SETTLE_CHECKS[0]
        self._looked = time.monotonic()  # when the caller last looked, for a watch not exact

    def wait(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds for another connection's commit;
        whether one came."""
        deadline = time.monotonic() + timeout
        while True:
            if self._wal is not None and self._wal.broken:
                self._wal.reopen()  # its loss was reported (a version change) already
            version = self._storage.data_version()
            if version != self._version:
                self._version = version
                self._pause = _SETTLE_CHECKS[0]
                self._looked = time.monotonic()
                return True
            now = time.monotonic()
            if now >= deadline:
                return False
            if self._wal is None or self._wal.fd < 0:  # poll: soon at first, then less often
                time.sleep(min(self._pause, deadline - now))
                self._pause = min(self._pause * 2, _SAFETY_CHECK_INTERVAL / 5)
            elif now < self._settle_until:
                time.sleep(min(_SETTLE_CHECKS[0], deadline - now))
            else:
                ready, _, _ = select.select([self._wal.fd], [], [],
                                            min(_SAFETY_CHECK_INTERVAL, deadline - now))
                if ready and self._wal.written():
                    self._settle_until = time.monotonic() + _SETTLE_CHECKS[1]
                elif not ready and not self._wal.exact and \
                        time.monotonic() - self._looked >= _SAFETY_CHECK_INTERVAL:
                    self._looked = time.monotonic()
                    return True  # a notification may be lost unseen: the caller looks

    def close(self) -> None:
        if self._wal is not None:
            self._wal.close()


# -- cron expressions, for schedules -----------------------------------------------
#
# Parsed here, so that the core needs nothing beyond the standard library.
# A schedule's ticks are local wall-clock times in its time zone; `_Cron`
# turns them into instants (Unix seconds), through the daylight saving
# rules below.

# Fields in expression order: (name, lowest, highest accepted value).
# Day-of-week accepts 7 as a second spelling of Sunday (0).
_CRON_FIELDS: tuple[tuple[str, int, int], ...] = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 7),
    ("second", 0, 59),
)
# Positions (0-based) of the fields that get special treatment.
_CRON_DOM, _CRON_MONTH, _CRON_DOW = 2, 3, 4
# `*` and open-ended `a/n` in day-of-week stop at Saturday, so `1/2` means
# Mon, Wed, Fri rather than also picking up Sunday as 7.
_CRON_DOW_OPEN_MAX = 6
_CRON_MONTH_NAMES: dict[str, int] = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun",
         "jul", "aug", "sep", "oct", "nov", "dec"),
        start=1,
    )
}
_CRON_DOW_NAMES: dict[str, int] = {
    name: number
    for number, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))
}
_CRON_ALIASES: dict[str, str] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# Longest possible length of each month (index 1-12); February counts 29 so
# a leap-day expression is valid.
_CRON_MONTH_MAX_DAYS = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
# next_after gives up (returns None) when no tick falls within this many
# years after `after`; 10 covers the longest leap-day wait (2096 -> 2104).
_CRON_HORIZON_YEARS = 10
# A wall time and its instant differ by at most about a day (UTC-12 to
# UTC+14, plus gaps), so ticks_between scans walls this far past `end`.
_CRON_WALL_MARGIN = datetime.timedelta(days=3)
# Latest wall time datetime can represent; searches stop there.
_CRON_WALL_MAX = (9999, 12, 31, 23, 59, 59)
_CRON_NUMBER = re.compile(r"[0-9]+")  # ASCII digits only, unlike str.isdigit
_CRON_EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()

# A local wall time as (year, month, day, hour, minute, second).  Search
# cursors may hold one-past-the-end values (second 60, hour 24, month 13);
# the search carries them over, so incrementing is just "+1 on the last".
_CronWall = tuple[int, int, int, int, int, int]


def _cron_fail(text: str, message: str) -> CronError:
    return CronError(f"cron expression '{text}': {message}")


def _cron_parse_value(text: str, pos: int, token: str, item: str) -> int:
    name, low, high = _CRON_FIELDS[pos]
    where = f"field {pos + 1} ({name})"
    if _CRON_NUMBER.fullmatch(token):
        value = int(token)
        if not low <= value <= high:
            raise _cron_fail(text, f"{where} has {token}, outside {low}-{high}")
        return value
    if not token:
        raise _cron_fail(text, f"{where} has an empty value in '{item}'")
    if pos == _CRON_MONTH and token.lower() in _CRON_MONTH_NAMES:
        return _CRON_MONTH_NAMES[token.lower()]
    if pos == _CRON_DOW and token.lower() in _CRON_DOW_NAMES:
        return _CRON_DOW_NAMES[token.lower()]
    expected = {
        _CRON_MONTH: "a number or month name (jan-dec)",
        _CRON_DOW: "a number or weekday name (sun-sat)",
    }.get(pos, "a number")
    raise _cron_fail(text, f"{where} has '{token}', expected {expected}")


def _cron_parse_field(text: str, pos: int, raw: str) -> frozenset[int]:
    name, low, high = _CRON_FIELDS[pos]
    where = f"field {pos + 1} ({name})"
    open_high = _CRON_DOW_OPEN_MAX if pos == _CRON_DOW else high
    values: set[int] = set()
    for item in raw.split(","):
        if not item:
            raise _cron_fail(text, f"{where} has an empty list item in '{raw}'")
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not _CRON_NUMBER.fullmatch(step_text) or int(step_text) == 0:
                raise _cron_fail(
                    text,
                    f"{where} has step '{step_text}' in '{item}', "
                    "expected a whole number of 1 or more",
                )
            step = int(step_text)
        if base == "*":
            first, last = low, open_high
        elif "-" in base:
            start_text, _, end_text = base.partition("-")
            first = _cron_parse_value(text, pos, start_text, item)
            last = _cron_parse_value(text, pos, end_text, item)
            if first > last:
                hint = ""
                if pos == _CRON_DOW and last == 0:
                    hint = " (write 7 for Sunday at the end of a range)"
                raise _cron_fail(
                    text,
                    f"{where} has range '{base}' whose start {first} "
                    f"is after its end {last}{hint}",
                )
        else:
            first = _cron_parse_value(text, pos, base, item)
            # `a/n` runs from a to the top of the field.
            last = max(first, open_high) if slash else first
        values.update(range(first, last + 1, step))
    if pos == _CRON_DOW and 7 in values:
        values.discard(7)
        values.add(0)
    return frozenset(values)


def _cron_check_fires(
    text: str, days: frozenset[int], months: frozenset[int], either_day: bool
) -> None:
    # With the OR day rule a restricted weekday matches in every month, so
    # only the AND rule can leave day-of-month and month incompatible.
    if either_day:
        return
    longest = max(_CRON_MONTH_MAX_DAYS[month] for month in months)
    if min(days) > longest:
        listed = ", ".join(str(day) for day in sorted(days))
        noun = "day" if len(days) == 1 else "any of days"
        month_list = ", ".join(str(month) for month in sorted(months))
        raise CronError(
            f"cron expression '{text}' never fires: no month in it "
            f"({month_list}) has {noun} {listed}"
        )


def _cron_next_table(allowed: frozenset[int], top: int) -> tuple[int, ...]:
    # table[v] is the smallest allowed value >= v, or -1; index top + 1 is
    # always -1 so a carried-over cursor value finds nothing.
    table = [-1] * (top + 2)
    following = -1
    for value in range(top, -1, -1):
        if value in allowed:
            following = value
        table[value] = following
    return tuple(table)


def _cron_offset(tz: datetime.tzinfo, naive: datetime.datetime) -> int:
    delta = tz.utcoffset(naive)
    if delta is None:
        raise ValueError(f"time zone {tz!r} gives no UTC offset")
    return delta // datetime.timedelta(seconds=1)


def _cron_wall(instant: int, tz: datetime.tzinfo) -> _CronWall:
    local = datetime.datetime.fromtimestamp(instant, tz)
    return (local.year, local.month, local.day, local.hour, local.minute, local.second)


def _cron_offset_change(low: int, high: int, tz: datetime.tzinfo) -> int:
    # First instant in (low, high] whose UTC offset differs from low's.  A
    # bisection needs nothing from the zone beyond fromtimestamp, so no zone
    # rules are assumed (transitions need not fall on whole hours).
    before = datetime.datetime.fromtimestamp(low, tz).utcoffset()
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.datetime.fromtimestamp(middle, tz).utcoffset() == before:
            low = middle
        else:
            high = middle
    return high


class _Cron:
    """A parsed cron expression.

    Owns the allowed values of each field (second, minute, hour,
    day-of-month, month, day-of-week), the day rule (Vixie: OR when both day
    fields are restricted, else AND), and lookup tables for finding the next
    matching local wall time.  It maps those wall times to instants in a
    given zone: a repeated wall time fires on its first pass only, a skipped
    one fires when the gap ends, and equal instants count once.
    """

    def __init__(
        self,
        text: str,
        fields: tuple[frozenset[int], ...],
        dom_star: bool,
        dow_star: bool,
    ) -> None:
        # `fields` holds the allowed values in expression order, with the
        # second last (just {0} for a 5-field expression).
        minutes, hours, days, months, weekdays, seconds = fields
        self.text: str = text
        self._seconds: frozenset[int] = seconds
        self._minutes: frozenset[int] = minutes
        self._hours: frozenset[int] = hours
        self._days: frozenset[int] = days
        self._months: frozenset[int] = months
        self._weekdays: frozenset[int] = weekdays  # 0 = Sunday
        # Vixie cron's rule: a day field counts as unrestricted when its text
        # starts with '*', so `*/2` is unrestricted too.  If either day field
        # is unrestricted a day must match both (each field's own values
        # still apply, so `*/2` keeps meaning odd days); if both are
        # restricted, matching either is enough.
        self._day_either: bool = not (dom_star or dow_star)
        self._all_weekdays: bool = len(weekdays) == 7
        self._next_second: tuple[int, ...] = _cron_next_table(seconds, 59)
        self._next_minute: tuple[int, ...] = _cron_next_table(minutes, 59)
        self._next_hour: tuple[int, ...] = _cron_next_table(hours, 23)
        self._next_dom: tuple[int, ...] = _cron_next_table(days, 31)
        self._next_month: tuple[int, ...] = _cron_next_table(months, 12)

    @classmethod
    def parse(cls, text: str) -> _Cron:
        """Parse a 5-field (minute hour day-of-month month day-of-week),
        6-field (the same plus second last) or @alias expression.

        Raises CronError for anything malformed or never firing.
        """
        if not isinstance(text, str):
            raise CronError(
                f"cron expression must be a string, got {type(text).__name__}"
            )
        stripped = text.strip()
        if not stripped:
            raise _cron_fail(stripped, "empty, expected 5 or 6 fields or an @alias")
        fields = stripped.split()
        if fields[0].startswith("@"):
            if len(fields) > 1:
                raise _cron_fail(stripped, f"alias '{fields[0]}' takes no other fields")
            expanded = _CRON_ALIASES.get(fields[0].lower())
            if expanded is None:
                known = ", ".join(_CRON_ALIASES)
                raise _cron_fail(stripped, f"unknown alias '{fields[0]}', known: {known}")
            fields = expanded.split()
        if len(fields) not in (5, 6):
            five = " ".join(name for name, _, _ in _CRON_FIELDS[:5])
            plural = "field" if len(fields) == 1 else "fields"
            raise _cron_fail(
                stripped,
                f"{len(fields)} {plural}, expected 5 ({five}) or 6 ({five} second)",
            )
        sets = [_cron_parse_field(stripped, pos, raw) for pos, raw in enumerate(fields)]
        if len(sets) == 5:
            sets.append(frozenset({0}))
        dom_star = fields[_CRON_DOM].startswith("*")
        dow_star = fields[_CRON_DOW].startswith("*")
        _cron_check_fires(
            stripped, sets[_CRON_DOM], sets[_CRON_MONTH], not (dom_star or dow_star)
        )
        return cls(stripped, tuple(sets), dom_star, dow_star)

    def __repr__(self) -> str:
        return f"_Cron({self.text!r})"

    def matches(self, local: datetime.datetime) -> bool:
        """Whether a naive local wall time is a tick.

        Only the wall-clock fields count: microseconds and any tzinfo are
        ignored, and a wall time that a DST gap skips still matches.
        """
        if (
            local.second not in self._seconds
            or local.minute not in self._minutes
            or local.hour not in self._hours
            or local.month not in self._months
        ):
            return False
        dom_ok = local.day in self._days
        dow_ok = local.isoweekday() % 7 in self._weekdays
        return (dom_ok or dow_ok) if self._day_either else (dom_ok and dow_ok)

    def next_after(self, after: float, tz: datetime.tzinfo) -> float | None:
        """First tick instant strictly after `after` (Unix seconds), or None
        if there is none within the search horizon of 10 years."""
        now = datetime.datetime.fromtimestamp(int(after // 1), tz)
        limit = (now.year + _CRON_HORIZON_YEARS, now.month, now.day,
                 now.hour, now.minute, now.second)
        for instant in self._instants(after, tz, min(limit, _CRON_WALL_MAX)):
            return float(instant)
        return None

    def ticks_between(
        self, start: float, end: float, tz: datetime.tzinfo, limit: int
    ) -> list[float]:
        """Tick instants t with start < t <= end, ascending, at most the
        first `limit` of them."""
        ticks: list[float] = []
        if limit <= 0 or end <= start:
            return ticks
        try:
            last = datetime.datetime.fromtimestamp(end, tz) + _CRON_WALL_MARGIN
            wall_limit = (last.year, last.month, last.day, last.hour, last.minute, last.second)
        except (OverflowError, ValueError, OSError):
            # `end` past what datetime can hold (even inf): no wall bound.
            wall_limit = _CRON_WALL_MAX
        for instant in self._instants(start, tz, wall_limit):
            if instant > end:
                break
            ticks.append(float(instant))
            if len(ticks) >= limit:
                break
        return ticks

    def _instants(
        self, after: float, tz: datetime.tzinfo, wall_limit: _CronWall
    ) -> Iterator[int]:
        # Walk matching wall times upwards from the wall time of `after` and
        # map each to its instant.  Those instants never decrease, so one
        # "latest so far" value both enforces "strictly after" and drops
        # duplicates (several skipped wall times landing on one gap end).
        latest: float = after
        cursor = _cron_wall(int(after // 1), tz)
        cursor = cursor[:5] + (cursor[5] + 1,)
        while True:
            wall = self._next_wall(cursor, wall_limit)
            if wall is None:
                return
            naive = datetime.datetime(*wall)
            offset = _cron_offset(tz, naive)
            other = _cron_offset(tz, naive.replace(fold=1))
            wall_seconds = (naive.toordinal() - _CRON_EPOCH_ORDINAL) * 86400 + (
                wall[3] * 3600 + wall[4] * 60 + wall[5]
            )
            instant = wall_seconds - offset
            cursor = wall[:5] + (wall[5] + 1,)
            if offset != other:
                # The two folds disagree: a repeated or a skipped wall time.
                # Either way the transition lies between these two instants.
                early = wall_seconds - max(offset, other)
                late = wall_seconds - min(offset, other)
                if _cron_wall(early, tz) == wall:
                    # Repeated: fire on the first pass only.  If `after` is in
                    # the second pass, every repeated wall time still ahead
                    # maps to the past, so jump to the end of the repetition.
                    instant = early
                    if instant <= latest:
                        change = _cron_offset_change(early, late, tz)
                        if change <= latest:
                            cursor = _cron_wall(change + (late - early), tz)
                else:
                    # Skipped: fire when the gap ends, once for the whole gap,
                    # and resume at the first wall time after it (which, if it
                    # matches, maps to that same instant).
                    instant = _cron_offset_change(early, late, tz)
                    cursor = _cron_wall(instant, tz)
            if instant > latest:
                latest = instant
                yield instant

    def _next_wall(self, start: _CronWall, limit: _CronWall) -> _CronWall | None:
        # Smallest matching wall time >= start and <= limit.  Each level
        # jumps straight to its next allowed value via the tables; when a
        # level runs out it carries into the level above and resets below.
        year, month, day, hour, minute, second = start
        limit_month = limit[:2]
        while True:
            if (year, month) > limit_month:
                return None
            found = self._next_month[month]
            if found < 0:
                year, month, day, hour, minute, second = year + 1, 1, 1, 0, 0, 0
                continue
            if found != month:
                month, day, hour, minute, second = found, 1, 0, 0, 0
                continue  # re-check the limit for the new month
            found = self._next_day(year, month, day)
            if found == 0:
                month, day, hour, minute, second = month + 1, 1, 0, 0, 0
                continue
            if found != day:
                day, hour, minute, second = found, 0, 0, 0
            found = self._next_hour[hour]
            if found < 0:
                day, hour, minute, second = day + 1, 0, 0, 0
                continue
            if found != hour:
                hour, minute, second = found, 0, 0
            found = self._next_minute[minute]
            if found < 0:
                hour, minute, second = hour + 1, 0, 0
                continue
            if found != minute:
                minute, second = found, 0
            found = self._next_second[second]
            if found < 0:
                minute, second = minute + 1, 0
                continue
            wall = (year, month, day, hour, minute, found)
            return wall if wall <= limit else None

    def _next_day(self, year: int, month: int, day: int) -> int:
        # Smallest day >= `day` in this month passing the day rule, or 0.
        last = 28 + calendar.isleap(year) if month == 2 else _CRON_MONTH_MAX_DAYS[month]
        if day > last:
            return 0
        if self._all_weekdays and not self._day_either:
            found = self._next_dom[day]
            return found if 0 < found <= last else 0
        weekday = datetime.date(year, month, day).isoweekday() % 7
        for candidate in range(day, last + 1):
            dom_ok = candidate in self._days
            dow_ok = weekday in self._weekdays
            if (dom_ok or dow_ok) if self._day_either else (dom_ok and dow_ok):
                return candidate
            weekday = (weekday + 1) % 7
        return 0


# -- quota limits ------------------------------------------------------------------


class _QuotaLimits:
    """The limits set on quotas (`Queue.set_quota`, `Queue.set_rate`), by
    name or by glob pattern ("customer:*": a limit for each customer): a
    name's limits are those of its own entry, else of the longest pattern
    matching it; a name without one has none.  ``running`` counts the
    running jobs by name, ``started`` the claims of rate-limited names in
    their windows; both grow as a claim admits jobs."""

    def __init__(self, rows: Iterable[Mapping[str, Any]]):
        self.exact: dict[str, Mapping[str, Any]] = {}
        self.patterns: list[Mapping[str, Any]] = []
        for row in rows:
            if any(char in row["pattern"] for char in "*?["):
                self.patterns.append(row)
            else:
                self.exact[row["pattern"]] = row
        self.patterns.sort(key=lambda entry: -len(entry["pattern"]))
        self.running: collections.Counter[str] = collections.Counter()
        self.started: collections.Counter[str] = collections.Counter()
        self.windows = [float(row["per"]) for row in self.exact.values()
                        if row["rate"] is not None] + [
            float(row["per"]) for row in self.patterns if row["rate"] is not None]

    def _entry(self, name: str) -> Mapping[str, Any] | None:
        if name in self.exact:
            return self.exact[name]
        for entry in self.patterns:
            if fnmatch.fnmatchcase(name, entry["pattern"]):
                return entry
        return None

    def limit(self, name: str) -> int | None:
        """The running jobs ``name`` may have at once, or None."""
        entry = self._entry(name)
        return None if entry is None or entry["running"] is None else int(entry["running"])

    def rate(self, name: str) -> tuple[int, float] | None:
        """(claims, seconds) of ``name``'s rate limit, or None."""
        entry = self._entry(name)
        return None if entry is None or entry["rate"] is None else (
            int(entry["rate"]), float(entry["per"]))

    def count_starts(self, starts: Iterable[tuple[str, float]], now: float) -> None:
        """Count the claims ``starts`` (name, when) within each name's window."""
        for name, at in starts:
            rate = self.rate(name)
            if rate is not None and at > now - rate[1]:
                self.started[name] += 1

    def _full(self, name: str) -> bool:
        most, rate = self.limit(name), self.rate(name)
        return (most is not None and self.running[name] >= most) or (
            rate is not None and self.started[name] >= rate[0])

    def full(self) -> list[str]:
        """The names at one of their limits now."""
        return sorted(name for name in set(self.running) | set(self.started)
                      if self._full(name))

    def admit(self, names: Sequence[str]) -> bool:
        """Whether a job naming ``names`` may start now; if so, count it."""
        if any(self._full(name) for name in names):
            return False
        self.running.update(names)
        self.started.update(name for name in names if self.rate(name) is not None)
        return True


def _running_limits(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """{pattern: running jobs at most} of the quota rows (`_QUOTAS`) that set one."""
    return {row["pattern"]: int(row["running"]) for row in rows if row["running"] is not None}


def _rate_limits(rows: Iterable[Mapping[str, Any]]) -> dict[str, tuple[int, float]]:
    """{pattern: (claims, per seconds)} of the quota rows that set a rate."""
    return {row["pattern"]: (int(row["rate"]), float(row["per"]))
            for row in rows if row["rate"] is not None}


# -- what a due schedule fires ------------------------------------------------------


def _zone(name: str) -> datetime.tzinfo:
    """The time zone named ``name`` ("UTC", or an IANA name such as
    "Europe/Berlin"); raises ValueError naming it if this host has no such zone."""
    if name == "UTC":
        return datetime.timezone.utc
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise ValueError(f"unknown time zone {name!r}: give an IANA name such as "
                         f"'Europe/Berlin' or 'UTC' (on a system without time zone data, "
                         f"install the tzdata package)") from exc


def _template_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows of a put, as a schedule keeps them: JSON, bytes in base64."""
    return json.dumps([{name: {"$bytes": base64.b64encode(value).decode()}
                        if isinstance(value, bytes) else value
                        for name, value in row.items()} for row in rows], sort_keys=True)


def _template_rows(text: str) -> list[dict[str, Any]]:
    return [{name: base64.b64decode(value["$bytes"])
             if isinstance(value, dict) and "$bytes" in value else value
             for name, value in row.items()} for row in json.loads(text)]


def _due_ticks(cron: _Cron, zone: datetime.tzinfo, first: float, now: float,
               keep: int) -> tuple[list[float], int]:
    """The latest ``keep`` ticks from ``first`` (a tick) to ``now``, oldest
    first, and how many there are in all.  Read in runs of `_MOST_MISSED`,
    keeping only the latest, so that a long outage of a schedule that ticks
    every second costs time, not memory."""
    latest: collections.deque[float] = collections.deque([first], maxlen=max(1, keep))
    total, start = 1, first
    while True:
        found = cron.ticks_between(start, now, zone, _MOST_MISSED)
        latest.extend(found)
        total += len(found)
        if len(found) < _MOST_MISSED:
            return list(latest), total
        start = found[-1]


class _SkippedTicks(NamedTuple):
    """Ticks a firing left unfired, for one reason: how many (``ticks``),
    and the first and last of them (the first is None when only counted)."""
    reason: str
    ticks: int
    first: float | None
    last: float


def _plan_ticks(latest: list[float], total: int, now: float, *, catchup: str,
                catchup_limit: int, max_lag: float | None, overlap: str,
                running: int | None) -> tuple[list[float], list[_SkippedTicks]]:
    """Which of a schedule's due ticks fire (``latest``, the latest of
    ``total``), and which are skipped and why.  ``running`` is the job of
    its previous run that has not ended, if any."""
    skipped: list[_SkippedTicks] = []

    def skip(ticks: Sequence[float], reason: str, uncounted: int = 0) -> None:
        if ticks or uncounted:
            skipped.append(_SkippedTicks(reason, len(ticks) + uncounted,
                                         ticks[0] if ticks and not uncounted else None,
                                         ticks[-1] if ticks else latest[0]))

    older = total - len(latest)  # read, but not kept: older than all of latest
    candidates = latest
    if max_lag is not None:
        skip([t for t in candidates if now - t > max_lag],
             f"more than max_lag ({max_lag:g}s) late", older)
        older = 0
        candidates = [t for t in candidates if now - t <= max_lag]
    if catchup == "all":
        fire, missed = candidates[-catchup_limit:], candidates[:-catchup_limit]
        skip(missed, f"missed, beyond catchup_limit ({catchup_limit})", older)
    elif catchup == "latest":
        fire, missed = candidates[-1:], candidates[:-1]
        skip(missed, "missed (catchup='latest' fires the latest only)", older)
    else:
        fire = [t for t in candidates[-1:] if now - t <= _SCHEDULE_ON_TIME]
        skip([t for t in candidates if t not in fire], "missed (catchup='skip')", older)
    if overlap == "skip" and fire:
        if running is not None:
            skip(fire, f"its previous run, job {running}, has not ended (overlap='skip')")
            fire = []
        else:
            skip(fire[:-1], "would run alongside the next (overlap='skip')")
            fire = fire[-1:]
    return fire, skipped


class _Firing(NamedTuple):
    """What firing one due schedule did: the ticks that fired, each with
    the id of the job it put; those skipped; or why this runner could not
    fire it at all (``trouble``: it stays due, for another)."""
    schedule: str
    fired: list[tuple[float, int]]
    skipped: list[_SkippedTicks]
    trouble: str | None = None


# -- the storage contract, and its SQLite layers -----------------------------------


class _Commits(Protocol):
    """What `_Storage.watch_commits` returns: a wait for others' commits that
    change jobs past pending (on SQLite, for any commit of others)."""

    def wait(self, timeout: float) -> bool: ...
    def close(self) -> None: ...


class _ChangeWatch(Protocol):
    """What `_Storage.change_watch` returns: a file descriptor that becomes
    readable when the database may have changed, and `written`, which reads
    what made it so and says whether it was news."""

    fd: int
    broken: bool  # the watch must be reopened, once out of any selector
    exact: bool  # whether what it reports can be trusted not to miss a change
    means_due: bool  # whether its news is that jobs became pending: claim, no need to look

    def written(self) -> bool: ...
    def reopen(self) -> None: ...
    def close(self) -> None: ...


class _Storage(Protocol):
    """What ``Job``, ``Queue`` and the workers need from a database.

    The contract is in plain values: times are Unix seconds, rows are dicts
    keyed by the column names in ``_JOB_COLUMNS``, statuses are the module's
    constants.  Every method that writes is one transaction, and every write
    on behalf of a run is fenced by that run's lease ``token``.  A ``conn``
    is the application's own connection, of the backend's kind, with a
    transaction open: the write joins it.  `write` groups the writes of a
    thread in one transaction (what it yields is that backend's connection,
    for the application's `Queue.transaction`).  Whether a runner is alive
    is the backend's to tell (`recover_silent_workers`, expired leases).
    `_SQLiteStorage` is the implementation; tests/test_storage_contract.py
    says what every implementation must do.
    """

    path: str
    secrets: tuple[bytes, ...]
    size_limit: int | None
    woken: int
    quotas_set: bool

    idle_check_interval: float

    def clock(self) -> float: ...
    def write(self, *, atomic_steps: bool = False) -> ContextManager[Any]: ...
    def own_connection(self, conn: Any) -> Any: ...
    def insert(self, trees: Sequence[list[dict[str, Any]]], now: float,
               conn: Any = None) -> list[tuple[list[dict[str, Any]], bool]]: ...
    def wait_for(self, job_id: int, token: str, now: float,
                 follow: int | list[dict[str, Any]]) -> str: ...
    def add_callback(self, job_id: int, tree: list[dict[str, Any]], now: float, *,
                     created_at: float | None = None, conn: Any = None) -> dict[str, Any]: ...
    def children(self, job_id: int, role: str | None) -> list[dict[str, Any]]: ...
    def fetch(self, job_id: int) -> dict[str, Any] | None: ...
    def fetch_blob(self, job_id: int, column: str) -> tuple[bytes | None, bytes | None]: ...
    def counts(self, queue: str | None) -> dict[str, int]: ...
    def claim(self, *, owner: str, queues: Sequence[str] | None, now: float,
              expires: float, limit: int, unsigned_only: bool = False,
              avoid: Collection[str] = (), started: bool = True,
              holding: Collection[int] = ()) -> tuple[str, list[dict[str, Any]]]: ...
    def mark_started(self, runs: Iterable[tuple[int, str]], now: float) -> None: ...
    def fail_alone(self, job_id: int, token: str, now: float, exc: BaseException) -> str: ...
    def finish(self, job_id: int, token: str, *, status: str, now: float,
               result: bytes | None = None, error: str | None = None,
               error_type: str | None = None, begin_after: float | None = None) -> str: ...
    def complete(self, runs: Iterable[tuple[int, str]],
                 now: float) -> dict[tuple[int, str], str]: ...
    def interrupt(self, job_id: int, token: str, now: float, reason: str) -> str: ...
    def renew(self, leases: Iterable[tuple[int, str]], expires: float) -> list[int]: ...
    def cancel(self, job_id: int, now: float, *, created_at: float | None = None,
               conn: Any = None) -> str | None: ...
    def release(self, job_id: int, token: str, now: float) -> str: ...
    def refuse(self, job_id: int, token: str, now: float, reason: str) -> str: ...
    def hand_back(self, job_id: int, token: str, now: float, reason: str) -> str: ...
    def outcome_lost(self, job_id: int, token: str, now: float, reason: str) -> str: ...
    def request_stop(self, job_id: int, now: float, deadline: float, *,
                     created_at: float | None = None) -> str | None: ...
    def update_meta(self, job_id: int, items: Mapping[str, Any], *,
                    created_at: float | None = None) -> str: ...
    def news_of(self, job_id: int) -> tuple[str | None, float | None]: ...
    def stops_requested(self, owner: str) -> list[tuple[int, bool, float | None]]: ...
    def next_due(self, queues: Sequence[str] | None, *, unsigned_only: bool = False,
                 avoid: Collection[str] = ()) -> float | None: ...
    def data_version(self) -> int: ...
    def change_watch(self, *, changes: bool = False) -> _ChangeWatch | None: ...
    def watch_commits(self) -> _Commits: ...
    def identity(self) -> tuple[Any, ...]: ...
    def open_to(self) -> str | None: ...
    def register_worker(self, worker_id: str, *, host: str, pid: int, processes: int,
                        queues: Sequence[str] | None, lease: float, now: float) -> None: ...
    def heartbeat(self, worker_id: str, leases: Iterable[tuple[int, str]] | None,
                  expires: float, now: float) -> tuple[bool, list[int]]: ...
    def fetch_workers(self) -> list[dict[str, Any]]: ...
    def stop_worker(self, worker_id: str, now: float, reason: str) -> None: ...
    def recover_silent_workers(self, worker_id: str, now: float,
                               silent_for: float) -> list[str]: ...
    def report(self, reports: Iterable[tuple[int, str, Mapping[str, Any]]]) -> None: ...
    def overview(self, now: float) -> dict[str, Any]: ...
    def search(self, *, statuses: Sequence[str] | None = None, queue: str | None = None,
               name: str | None = None, since: float | None = None,
               before: float | None = None, limit: int = 50,
               below_id: int | None = None) -> list[dict[str, Any]]: ...
    def finished_per_minute(self, since: float) -> list[tuple[int, str, int]]: ...
    def delete_ended(self, job_id: int) -> str: ...
    def purge(self, before: float, *, status: str | None = None, limit: int = 500,
              dry_run: bool = False) -> tuple[int, int]: ...
    def unfinished_under(self, job_id: int) -> int: ...
    def ended_since(self, since: float) -> dict[int, str]: ...
    def statuses_among(self, ids: Sequence[int]) -> dict[int, str]: ...
    def unfinished_trees(self) -> list[dict[str, Any]]: ...
    def save_schedule(self, row: dict[str, Any], now: float) -> dict[str, Any]: ...
    def remove_schedule(self, name: str) -> bool: ...
    def fetch_schedules(self, name: str | None = None) -> list[dict[str, Any]]: ...
    def pause_schedule(self, name: str, paused: bool, now: float) -> bool: ...
    def next_schedule_tick(self) -> float | None: ...
    def fire_due(self, now: float) -> list[_Firing]: ...
    def trigger_schedule(self, name: str, now: float) -> int | None: ...
    def pause_queue(self, queue: str, until: float | None, now: float) -> None: ...
    def resume_queue(self, queue: str) -> bool: ...
    def paused_queues(self, now: float) -> dict[str, float | None]: ...
    def set_quota(self, pattern: str, running: int | None, rate: tuple[int, float] | None,
                  now: float) -> None: ...
    def fetch_quotas(self) -> list[dict[str, Any]]: ...
    def quota_holders(self) -> list[tuple[int, list[str], str | None]]: ...
    def recent_starts(self, since: float) -> list[tuple[str, float]]: ...
    def insert_copies(self, rows: Sequence[dict[str, Any]]) -> dict[int, int]: ...
    def delete_copied(self, ids: Iterable[int]) -> int: ...
    def reopen(self, job_id: int, now: float) -> str: ...
    def checkpoint(self, mode: str = "PASSIVE") -> tuple[int, int]: ...
    def wait_for_locks(self, seconds: float) -> None: ...
    def close(self) -> None: ...
    def close_thread_connection(self) -> None: ...


# Set by run_pending(now=...), so that jobs it runs put and cancel on its clock;
# None elsewhere: the database's clock (`_now`).
_CLOCK: contextvars.ContextVar[Callable[[], float] | None] = contextvars.ContextVar(
    "litejobs_clock", default=None)


def _now(storage: _Storage) -> float:
    """Now, by ``run_pending(now=)``'s clock inside it, else by the database's."""
    clock = _CLOCK.get()
    return clock() if clock is not None else storage.clock()


# A connection of the backend in use: a sqlite3.Connection, or a
# `_PostgresConnection`.  The layers use what both have: execute and
# executemany with SQLite's placeholders, cursors' fetchone, fetchall,
# description and rowcount.
_DBConnection = Any


class _Connections:
    """What the storage layers (`_FollowUps`, `_Runs`, `_Claims`, `_Jobs`)
    need of a backend, and the state every backend has: where it is (for
    messages), the secrets and the size limit its writes follow, and
    ``woken``, which counts the writes that may have made jobs due, so that
    a pool claims again.  `_SQLiteConnections` and `_PostgresConnections`
    are the backends."""

    # What the driver raises for a unique index refused, and for the
    # database's own trouble (as opposed to one job's data).
    _unique_violation: tuple[type[BaseException], ...] = ()
    _database_trouble: tuple[type[BaseException], ...] = (DatabaseError,)
    # Seconds between looks for changes of an idle pool that has no change_watch.
    idle_check_interval = _IDLE_CHECK_INTERVAL
    # What ``LIMIT :limit`` takes for no limit (SQLite: a negative number).
    _no_limit: int | None = -1
    # The backend's schema: its migrations, and its table of versions.
    _migrations = _MIGRATIONS
    _create_version_table = _CREATE_VERSION_TABLE

    def __init__(self, path: str, secrets: tuple[bytes, ...], size_limit: int | None):
        self.path = path
        self.secrets = secrets  # the first signs; any of them verifies
        self.size_limit = size_limit
        self.woken = 0
        # A connection per thread, of this process only: one inherited across
        # fork() is never used or closed (see `_forget_inherited_connections`).
        self._pid = os.getpid()
        # Keyed by the thread itself, not its ident: an ident is reused by a
        # thread started after another ended, which must not be handed the
        # ended one's connection while a prune closes it.
        self._connections: dict[threading.Thread, Any] = {}
        self._writing: dict[int, bool] = {}  # threads inside write(): atomic_steps
        self._lock = threading.Lock()
        # Whether the last claim found quota limits set: the next claims
        # under quotas (`_Claims.claim`), in claim order across every job.
        # Unknown before the first claim, which therefore claims so too.
        self.quotas_set = True

    def _register(self, conn: Any) -> None:
        """Keep ``conn`` as the calling thread's, closing those of threads
        that have ended."""
        with self._lock:
            alive = set(threading.enumerate())
            for thread in [thread for thread in self._connections if thread not in alive]:
                self._close_quietly(self._connections.pop(thread))
            self._connections[threading.current_thread()] = conn

    def _forget_inherited_connections(self) -> None:
        # Closing an inherited connection would end the parent's use of it
        # too (SQLite's locks, PostgreSQL's session); the references are kept
        # so that the garbage collector never closes them here either.
        _ABANDONED_CONNECTIONS.extend(self._connections.values())
        self._connections = {}
        self._writing = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()

    @staticmethod
    def _close_quietly(conn: Any) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Close this process's connections; the next use reopens lazily."""
        if self._pid != os.getpid():
            self._forget_inherited_connections()
            return
        with self._lock:
            connections, self._connections = self._connections, {}
        for conn in connections.values():
            self._close_quietly(conn)

    def close_thread_connection(self) -> None:
        """Close the calling thread's connection, if it has one."""
        if self._pid != os.getpid():
            return
        with self._lock:
            conn = self._connections.pop(threading.current_thread(), None)
        if conn is not None:
            self._close_quietly(conn)

    def clock(self) -> float:
        """Now, in Unix seconds, by the clock every user of the database
        shares: due times, leases and deadlines are compared on it."""
        return time.time()

    def write(self, *, atomic_steps: bool = False) -> ContextManager[_DBConnection]:
        raise NotImplementedError

    def read(self) -> ContextManager[_DBConnection]:
        raise NotImplementedError

    def own_connection(self, conn: _DBConnection) -> Any:
        """The driver's own connection behind ``conn``, for the application."""
        return conn

    def _transaction(self, conn: Any) -> ContextManager[_DBConnection]:
        """`write`, or, given the application's connection ``conn``, a write
        inside the transaction it has open."""
        raise NotImplementedError

    def _first_free_id(self, conn: _DBConnection, count: int) -> int:
        """The first of ``count`` consecutive ids no job has had, reserved."""
        raise NotImplementedError

    def _apply_migrations(self, conn: _DBConnection) -> None:
        """Bring litejobs' tables up to date, in the write transaction open on
        ``conn``; another process may have done it meanwhile."""
        current = self._schema_version(conn)
        latest = len(self._migrations)
        if current > latest:
            raise self._too_new(current)
        if current < latest:
            conn.execute(self._create_version_table)
            for version in range(current + 1, latest + 1):
                for statement in self._migrations[version - 1]:
                    conn.execute(statement)
                conn.execute(_RECORD_VERSION, (version, time.time()))

    def _rows_of_each(self, conn: _DBConnection, statements: Sequence[str],
                      params: Mapping[str, Any]) -> list[list[dict[str, Any]]]:
        """Run ``statements`` in turn with the same parameters, in one round
        trip where the backend can; the rows each gave."""
        return [_as_dicts(conn.execute(statement, params)) for statement in statements]

    @staticmethod
    def _schema_version(conn: _DBConnection) -> int:
        if conn.execute(_VERSION_TABLE_EXISTS).fetchone() is None:
            return 0
        return int(conn.execute(_READ_VERSION).fetchone()[0])

    def _too_new(self, version: int) -> SchemaVersionError:
        raise NotImplementedError

    def _insert_one(self, conn: _DBConnection, row: dict[str, Any], *,
                    last: bool = False) -> None:
        """Insert a lone planned row without an id, setting the one it got.
        ``last``: nothing follows it in its transaction, which a backend may
        commit with it."""
        raise NotImplementedError

    def _lock_key(self, conn: _DBConnection, key: str) -> None:
        """Keep others from putting a job with ``key`` until this transaction
        ends, where the write transaction does not already."""

    def _announce_due(self, conn: _DBConnection) -> None:
        """Wake the idle pools at commit, where jobs became due without a
        write to them (a queue resumed).  (SQLite: any commit wakes them.)"""

    def _claim_statement(self, queue_count: int | None, unsigned_only: bool,
                         avoiding: bool) -> str:
        return _claim_statement(queue_count, unsigned_only, avoiding)

    def _name_matches(self, pattern: str) -> tuple[str, str]:
        """A search term for names matching the glob ``pattern``, and the
        value it binds to ``:name``."""
        return "name GLOB :name", pattern

    def identity(self) -> tuple[Any, ...]:
        """What tells this database from another one found under its name
        later: a pool stops when it changes (a file replaced under it)."""
        raise NotImplementedError

    def open_to(self) -> str | None:
        """Who, besides its owner, may write the database, where that shows;
        None when nobody may, or it does not show."""
        return None

    def change_watch(self, *, changes: bool = False) -> _ChangeWatch | None:
        """What tells the calling thread, without polling, that the database
        may have changed: that jobs became due (for pools); with
        ``changes``, that jobs changed otherwise (claimed, started, ended:
        what waits look for).  None where nothing can (then it polls)."""
        raise NotImplementedError

    def data_version(self) -> int:
        """A number that changes when others commit (see `change_watch`)."""
        raise NotImplementedError


class _Write:
    """The context manager `_SQLiteStorage.write` returns.  A class: every put
    goes through one, and a generator-based one costs it a microsecond more."""

    __slots__ = ("storage", "atomic_steps", "conn", "thread", "joined")

    def __init__(self, storage: _SQLiteConnections, atomic_steps: bool):
        self.storage = storage
        self.atomic_steps = atomic_steps
        self.joined: ContextManager[sqlite3.Connection] | None = None

    def __enter__(self) -> sqlite3.Connection:
        storage = self.storage
        conn = self.conn = storage._connection()
        thread = self.thread = threading.get_ident()
        if thread in storage._writing:
            self.joined = storage._join(conn, thread)
            return self.joined.__enter__()
        try:
            storage._roll_back_leftover(conn)
            storage._writing[thread] = self.atomic_steps
            try:
                storage._begin(conn)
            except BaseException:
                del storage._writing[thread]
                conn.row_factory, conn.text_factory = None, str
                raise
        except sqlite3.Error as exc:
            raise _translate_sqlite_error(exc, storage.path) from exc
        return conn

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: types.TracebackType | None) -> bool | None:
        if self.joined is not None:
            return self.joined.__exit__(exc_type, exc, traceback)
        storage, conn = self.storage, self.conn
        try:
            try:
                if exc_type is None:
                    conn.execute("COMMIT")
                    return None
            except BaseException:
                storage._roll_back(conn)
                raise
            storage._roll_back(conn)  # what the block raised follows
        except sqlite3.Error as error:
            raise _translate_sqlite_error(error, storage.path) from error
        finally:
            del storage._writing[self.thread]
            conn.row_factory, conn.text_factory = None, str  # the application may have set them
        if isinstance(exc, sqlite3.Error):
            raise _translate_sqlite_error(exc, storage.path) from exc
        return None


class _SQLiteConnections(_Connections):
    """One SQLite file's connections and transactions, for the layers of
    `_SQLiteStorage` above it: opening and checking the file, the schema's
    migrations, reads, and BEGIN IMMEDIATE writes that a thread's nested
    writes join.

    Connections are opened lazily, one per thread and per process, and held
    in a registry keyed by thread id rather than in a ``threading.local``: a
    forked child clears other threads' locals, which would close inherited
    connections in the child.  A connection inherited across ``fork()`` is
    never used or closed there (https://sqlite.org/howtocorrupt.html, 2.6).
    Connections of threads that have ended are closed as new ones open.
    """

    _unique_violation = (sqlite3.IntegrityError,)
    _database_trouble = (sqlite3.OperationalError, DatabaseError)

    def __init__(self, path: str | os.PathLike[str], *, durable: bool = True,
                 create: bool = True, busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
                 read_only: bool = False,
                 secrets: tuple[bytes, ...] = (), size_limit: int | None = DEFAULT_SIZE_LIMIT,
                 network_filesystem: bool = False):
        super().__init__(os.path.abspath(os.fspath(path)), secrets, size_limit)
        self.network_filesystem = network_filesystem or \
            os.environ.get(_NETWORK_FILESYSTEM_ENV) == "1"
        self.durable = durable
        self.read_only = read_only
        self.create = create and not read_only
        self.busy_timeout = busy_timeout
        _check_sqlite_version()
        self._prepare_file()
        conn = self._connect(create=not os.path.exists(self.path))
        try:
            with self._errors():
                version = self._check_before_changing(conn)
                self._configure(conn)
        except BaseException:
            conn.close()
            raise
        self._connections[threading.current_thread()] = conn
        if version < _SCHEMA_VERSION:
            self._migrate(conn)

    def _prepare_file(self) -> None:
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            raise DatabaseError(
                f"cannot open {self.path}: directory {directory} does not exist"
            )
        remote = None if self.network_filesystem else _network_filesystem(directory)
        if remote is not None:
            raise DatabaseError(
                f"{self.path} is on a network filesystem ({remote}): SQLite's WAL keeps "
                f"its index in shared memory, which processes on other hosts cannot "
                f"see, and its locks may not hold there either, so jobs could be lost "
                f"or run twice.  Keep the file on a local disk, or, for pools on several "
                f"hosts, use PostgreSQL (Queue(\"postgresql://...\")).  If only this "
                f"host ever opens the file and you know the risk, pass "
                f"network_filesystem=True (or set {_NETWORK_FILESYSTEM_ENV}=1)")
        if os.path.isdir(self.path):
            raise DatabaseError(f"{self.path} is a directory, not a database file")
        if not os.path.exists(self.path) and not self.create:
            raise DatabaseError(f"no database at {self.path}: check the path, or create "
                                f"it with: python -m litejobs init {self.path}")
        if self.read_only:
            if not os.access(self.path, os.R_OK):
                raise DatabaseError(f"cannot read {self.path}: permission denied")
            return
        if not os.access(directory, os.W_OK):
            raise self._read_only(directory)
        if not os.path.exists(self.path):
            return  # SQLite creates it: the first connection passes create=True
        if not os.access(self.path, os.R_OK):
            raise DatabaseError(f"cannot read {self.path}: permission denied")
        if not os.access(self.path, os.W_OK):
            raise self._read_only(self.path)

    @staticmethod
    def _read_only(target: str) -> DatabaseError:
        return DatabaseError(
            f"{target} is read-only; litejobs needs write access to the database "
            f"file and to its directory, where SQLite keeps the -wal and -shm files"
        )

    def _check_before_changing(self, conn: sqlite3.Connection) -> int:
        """Refuse a newer or damaged file before anything writes to it; return
        its litejobs schema version.

        Opening switches the file to WAL and migrating adds tables, so a file
        that needs either is checked first with ``PRAGMA quick_check``
        (https://sqlite.org/pragma.html#pragma_quick_check), once: a current
        litejobs file is not scanned again.  Files larger than
        ``_QUICK_CHECK_LIMIT`` get only the header checks, since the scan reads
        every page.  A schema using collations or functions that only the
        application registers cannot be checked here, and is not refused.
        """
        try:
            version = self._schema_version(conn)
        except sqlite3.DatabaseError as exc:
            text = str(exc).lower()
            if "not a database" in text or "malformed" in text:
                raise _unreadable_file(self.path, exc) from exc
            raise
        if version > _SCHEMA_VERSION:
            raise self._too_new(version)
        if self.read_only and version < _SCHEMA_VERSION:
            raise DatabaseError(
                f"{self.path} is not a litejobs database" if version == 0 else
                f"{self.path} has litejobs schema version {version}; open it once with "
                f"write access (any litejobs command that writes) to upgrade it")
        size = os.path.getsize(self.path)
        if version < _SCHEMA_VERSION and 0 < size <= _QUICK_CHECK_LIMIT:
            problems = self._quick_check(conn)
            if problems != ["ok"]:
                raise DatabaseError(
                    f"{self.path} is corrupt ({'; '.join(problems)}); litejobs "
                    f"leaves it untouched: restore it from a backup")
        return version

    def _quick_check(self, conn: sqlite3.Connection) -> list[str]:
        try:
            return [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if not text.startswith(("no such collation", "no such function",
                                    "unknown function", "no such module")):
                raise
            _log.info("skipping the integrity check of %s: %s", self.path, text)
            return ["ok"]

    def _connection(self) -> sqlite3.Connection:
        if self._pid != os.getpid():
            self._forget_inherited_connections()
        conn = self._connections.get(threading.current_thread())  # (registers a foreign thread)
        if conn is None:
            conn = self._open()
            self._register(conn)
        return conn

    @staticmethod
    def _close_quietly(conn: sqlite3.Connection) -> None:
        with contextlib.suppress(sqlite3.Error):
            conn.close()

    def _open(self) -> sqlite3.Connection:
        conn = self._connect()
        try:
            with self._errors():
                self._configure(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _connect(self, create: bool = False) -> sqlite3.Connection:
        """A connection that has not written anything to the file yet.

        With ``create``, SQLite creates a missing file, which is then made
        0600 whatever the umask, before anything creates the -wal and -shm
        files: SQLite gives them the database file's mode.  The file is never
        opened outside SQLite (see `_unreadable_file`).
        """
        mode = "ro" if self.read_only else "rwc" if create else "rw"
        uri = "file:" + urllib.parse.quote(self.path) + f"?mode={mode}"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=self.busy_timeout,
                                   isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise _translate_sqlite_error(exc, self.path) from exc
        if create:
            with contextlib.suppress(PermissionError):  # created meanwhile by another user
                os.chmod(self.path, 0o600)
        return conn

    def _configure(self, conn: sqlite3.Connection) -> None:
        if self.read_only:
            return  # the file is in WAL mode already: litejobs made it
        self._enable_wal(conn)
        conn.execute("PRAGMA foreign_keys = ON")
        # A checkpoint that empties the WAL also shrinks the file to this size,
        # so a burst of writes does not leave a large WAL behind for good.
        conn.execute(f"PRAGMA journal_size_limit = {_WAL_SIZE_LIMIT}")
        # FULL: a commit is on disk before put() returns.  NORMAL in WAL mode
        # may lose the last commits on power loss, never corrupt the file.
        # https://sqlite.org/pragma.html#pragma_synchronous
        conn.execute(f"PRAGMA synchronous = {'FULL' if self.durable else 'NORMAL'}")

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        # Switching the journal mode needs a moment alone with the file; while
        # another process is creating the same database it may be refused.
        for _ in range(200):
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
            else:
                if str(mode).lower() == "wal":
                    return
            time.sleep(random.uniform(0.001, 0.02))
        raise DatabaseError(f"cannot switch {self.path} to WAL journal mode")

    def wait_for_locks(self, seconds: float) -> None:
        """Wait at most ``seconds`` for the write lock from now on: for the
        connections opened later, and this thread's (call it before other
        threads use the storage)."""
        self.busy_timeout = seconds
        conn = self._connections.get(threading.current_thread())
        if conn is not None and self._pid == os.getpid():
            conn.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")

    def data_version(self) -> int:
        """A number that changes whenever another connection commits.
        https://sqlite.org/pragma.html#pragma_data_version"""
        with self.read() as conn:
            return int(conn.execute("PRAGMA data_version").fetchone()[0])

    def watch_commits(self) -> _CommitWatch:
        """A watch that wakes its thread when another connection commits; the
        caller closes it."""
        return _CommitWatch(self)

    def change_watch(self, *, changes: bool = False) -> _WalWatch | None:
        """inotify on the WAL (see `_WalWatch`): any commit, whatever it changed."""
        return _WalWatch.open(self.path)

    def identity(self) -> tuple[Any, ...]:
        """The file's device and inode; raises FileNotFoundError once it is gone."""
        info = os.stat(self.path)
        return info.st_dev, info.st_ino

    def open_to(self) -> str | None:
        mode = os.stat(self.path).st_mode
        if not mode & 0o022:
            return None
        return f"{'everyone' if mode & 0o002 else 'its group'} (mode {mode & 0o777:o})"

    def checkpoint(self, mode: str = "PASSIVE") -> tuple[int, int]:
        """Copy what the WAL holds into the database, as far as readers allow,
        without waiting for anyone; the WAL then restarts from its beginning,
        cut to ``_WAL_SIZE_LIMIT``.  ``"TRUNCATE"`` waits for readers and
        empties the WAL file.  Returns the WAL's pages and those copied.
        https://sqlite.org/pragma.html#pragma_wal_checkpoint"""
        if mode not in ("PASSIVE", "TRUNCATE"):
            raise ValueError(f"unknown checkpoint mode {mode!r}")
        with self.read() as conn:
            _, pages, copied = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        return int(pages), int(copied)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise _translate_sqlite_error(exc, self.path) from exc

    def write(self, *, atomic_steps: bool = False) -> ContextManager[sqlite3.Connection]:
        """One short ``BEGIN IMMEDIATE`` transaction, committed or rolled back.

        A write opened inside another on the same thread joins it, and
        commits or rolls back with it.  With ``atomic_steps`` (an application's
        `Queue.transaction`), each write joined to it is also a savepoint: one
        that fails leaves nothing of its own behind, and the rest go on.

        IMMEDIATE takes the write lock up front.  A deferred transaction that
        reads and then writes fails with SQLITE_BUSY without waiting on the busy
        timeout (https://sqlite.org/lang_transaction.html).
        """
        return _Write(self, atomic_steps)

    @contextlib.contextmanager
    def _join(self, conn: sqlite3.Connection, thread: int) -> Iterator[sqlite3.Connection]:
        """A write inside the one open on this thread (see `write`)."""
        with self._errors(), _plain_rows(conn):
            if self._writing[thread]:
                with _savepoint(conn):
                    yield conn
            else:
                yield conn

    @staticmethod
    def _roll_back(conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    def _begin(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, waiting for the write lock ``busy_timeout`` seconds in
        all.  SQLite's busy handler waits within one try, but a try may also
        fail at once (while another connection recovers the WAL, say): it is
        tried again, with jitter, for what is left of the time."""
        deadline = time.monotonic() + self.busy_timeout
        shortened = False
        try:
            while True:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as exc:
                    left = deadline - time.monotonic()
                    if not _is_busy(exc) or left <= 0:
                        raise
                time.sleep(min(left, random.uniform(0.001, 0.05)))
                left = deadline - time.monotonic()
                conn.execute(f"PRAGMA busy_timeout = {max(1, int(left * 1000))}")
                shortened = True
        finally:
            if shortened:
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A connection for autocommit reads: each statement is its own short
        read transaction, so no reader holds back WAL checkpoints."""
        conn = self._connection()
        with self._errors(), _plain_rows(conn):
            if threading.get_ident() not in self._writing:  # else: read inside the write
                self._roll_back_leftover(conn)
            yield conn

    def _roll_back_leftover(self, conn: sqlite3.Connection) -> None:
        # Only a write interrupted mid-rollback can leave a transaction open, and
        # it was never acknowledged.  Joining it would leave later writes
        # uncommitted and the write lock held.
        if conn.in_transaction:
            _log.warning("rolling back a transaction left open on %s", self.path)
            conn.execute("ROLLBACK")

    def _transaction(self, conn: sqlite3.Connection | None) -> ContextManager[Any]:
        return self.write() if conn is None else self._joined(conn)

    @contextlib.contextmanager
    def _joined(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """Write through the caller's own connection, inside the transaction
        the caller has open: what is written commits or rolls back with it."""
        if not isinstance(conn, sqlite3.Connection):
            raise TypeError(f"conn must be a sqlite3.Connection, not {_describe(conn)}")
        if not conn.in_transaction:
            raise ValueError(
                "conn has no open transaction: begin one (BEGIN IMMEDIATE) before "
                "putting jobs through it, so they commit or roll back with your writes")
        with self._errors(), _plain_rows(conn):
            files = {row[1]: row[2] for row in conn.execute("PRAGMA database_list").fetchall()}
            main = files.get("main")
            if not main or not os.path.exists(main) or not os.path.samefile(main, self.path):
                raise ValueError(f"conn is open on {main or 'a memory database'}, "
                                 f"not on {self.path}")
            try:
                with _savepoint(conn):
                    yield conn
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                # A transaction that began deferred and has read cannot wait
                # for the write lock: SQLite fails it at once.
                raise DatabaseBusy(
                    f"conn's transaction on {self.path} could not take the write lock "
                    f"({exc}): it began as a read (BEGIN, or Python's default), and "
                    f"another connection wrote meanwhile, or holds the lock; begin your "
                    f"transaction with BEGIN IMMEDIATE before putting jobs through it") from exc

    def _first_free_id(self, conn: sqlite3.Connection, count: int) -> int:
        """The id of the first of ``count`` new jobs; raises `DatabaseError` if
        the ids SQLite can hold would run out."""
        first = conn.execute(_NEXT_JOB_ID).fetchone()[0]  # a REAL past 2**63 - 1
        if first + count - 1 > _ID_MOST:
            raise self._ids_used_up()
        return int(first)

    def _ids_used_up(self) -> DatabaseError:
        return DatabaseError(
            f"{self.path} has no job ids left: ids are never reused, and the largest "
            f"SQLite holds, {_ID_MOST:,}, is taken; put new jobs in a new database file")

    def _insert_one(self, conn: sqlite3.Connection, row: dict[str, Any], *,
                    last: bool = False) -> None:
        statement, values = _insert_statement(_null_columns(row))
        try:
            row["id"] = conn.execute(statement, values(row)).lastrowid
        except sqlite3.OperationalError as exc:  # SQLITE_FULL: no rowid left, or no disk
            if "full" in str(exc).lower() and conn.execute(_NEXT_JOB_ID).fetchone()[0] \
                    > _ID_MOST:
                raise self._ids_used_up() from None
            raise

    def _migrate(self, conn: sqlite3.Connection) -> None:
        with self.write():
            self._apply_migrations(conn)

    def _too_new(self, version: int) -> SchemaVersionError:
        return SchemaVersionError(
            f"{self.path} has litejobs schema version {version}, but this litejobs "
            f"({__version__}) knows only up to {_SCHEMA_VERSION}; upgrade litejobs"
        )


class _FollowUps(_Connections):
    """What follows the end of a job, in the transaction that ended it (see
    `_after_end`): cancels under a cancelled job, callbacks, jobs waiting on
    a returned job, the counts of composites, and the tallies `counts`
    reads.  It owns ``woken``, which counts the writes that may have made
    jobs due, so that a pool claims again."""

    def _after_end(self, conn: sqlite3.Connection, ended: Sequence[Mapping[str, Any]],
                   now: float, counted: Collection[int] = ()) -> None:
        """Take every step that follows the end of the ``ended`` rows (as
        selected by ``_ENDED``), in the transaction that ended them, so that no
        crash can fall between a job's end and what it sets off.

        - A cancelled job cancels what is under it that has not ended.
        - Its callbacks become due (or end, if they wait for the other outcome),
          and jobs waiting on it take its outcome.
        - The composite it is a part of counts it: a parallel becomes due once
          every part has ended; a serial starts its next part, or, with
          ``stop_on_failure`` after a part that did not complete, cancels the
          rest.  A composite becomes due to run its postprocess.
        - The tallies `counts` reads count it.

        Steps that end further jobs queue them here, so chains of any depth
        are followed without recursion.  Parts in ``counted`` were counted in
        their composite already (`_count_parallel_parts`).
        """
        todo = collections.deque(ended)
        tally: collections.Counter[tuple[str, str]] = collections.Counter()
        while todo:
            row = todo.popleft()
            if row["status"] not in _FINISHED:
                continue  # flagged for cancelling while it runs: it ends later
            tally[row["queue"], row["status"]] += 1
            if row["status"] == CANCELLED:
                todo.extend(self._rows(conn, _CANCEL_DESCENDANTS, {"id": row["id"], "now": now}))
            if row["followers"]:
                todo.extend(self._tell_followers(conn, row, now))
            if row["role"] == "part" and row["id"] not in counted:
                todo.extend(self._count_part(conn, row, now))
        self._count_ended(conn, tally)

    def _count_parallel_parts(self, conn: sqlite3.Connection,
                              ended: Sequence[Mapping[str, Any]], now: float) -> set[int]:
        """Count in their composite, together, the ``ended`` parts of each
        parallel that has more than one among them (a pool records a batch of
        runs at once): one UPDATE for the parallel, not one for each part.
        Returns the ids of the parts counted, which `_after_end` then skips."""
        by_parent: dict[int, list[int]] = {}
        for row in ended:
            if row["role"] == "part" and row["status"] in _FINISHED:
                by_parent.setdefault(row["parent_id"], []).append(row["id"])
        counted: set[int] = set()
        for parent_id, ids in by_parent.items():
            if len(ids) < 2:
                continue
            kind = conn.execute(_COMPOSITE_OF, (parent_id,)).fetchone()
            if kind is None or kind[0] != "parallel":
                continue  # a serial runs one part at a time: each is counted alone
            left = conn.execute(_PARTS_ENDED, {"parent": parent_id,
                                               "count": len(ids)}).fetchone()
            if left is not None and left[0] == 0:
                self._make_ready(conn, parent_id, now)
            counted.update(ids)
        return counted

    @staticmethod
    def _count_ended(conn: sqlite3.Connection,
                     tally: collections.Counter[tuple[str, str]]) -> None:
        """Add jobs that ended, ``{(queue, status): jobs}``, to what `counts` reads."""
        if tally:
            conn.executemany(_COUNT_ENDED, ((queue, status, jobs)
                                            for (queue, status), jobs in tally.items()))

    @staticmethod
    def _rows(conn: sqlite3.Connection, statement: str,
              params: Mapping[str, Any]) -> list[dict[str, Any]]:
        cursor = conn.execute(statement, params)
        return _as_dicts(cursor)

    def _tell_followers(self, conn: sqlite3.Connection, row: Mapping[str, Any],
                        now: float) -> list[dict[str, Any]]:
        ended = []
        for callback_id, role in conn.execute(_DORMANT_CALLBACKS, {"id": row["id"]}).fetchall():
            ended += self._start_callback(conn, callback_id, role, row, now)
        return ended + self._rows(conn, _TAKE_OUTCOME, {"source": row["id"], "now": now})

    def _start_callback(self, conn: sqlite3.Connection, callback_id: int, role: str,
                        parent: Mapping[str, Any], now: float) -> list[dict[str, Any]]:
        """Make a callback due, or end it unrun if it waits for the outcome
        its job did not have; return the rows this ended."""
        completed = parent["status"] == COMPLETED
        if role in ("callback", "callbacks") or completed == (role == "success"):
            self._make_ready(conn, callback_id, now)
            return []
        error = (f"not run: job {parent['id']} {parent['status']}, and this callback "
                 f"runs only on {role}\n")
        return self._rows(conn, _SKIP_CALLBACK, {"id": callback_id, "now": now,
                                                 "error": error})

    def _count_part(self, conn: sqlite3.Connection, part: Mapping[str, Any],
                    now: float) -> list[dict[str, Any]]:
        composite = conn.execute(_PART_ENDED, {"parent": part["parent_id"]}).fetchone()
        if composite is None:
            return []  # the composite ended already (cancelled)
        left, kind = composite
        if left == 0:
            self._make_ready(conn, part["parent_id"], now)
            return []
        if kind == "parallel" or part["waiting_on"] == _DORMANT:
            return []  # a serial part cancelled before its turn: the chain goes on
        if kind == "serial_stop" and part["status"] != COMPLETED:
            error = (f"not run: part {part['position']} of serial job {part['parent_id']} "
                     f"(job {part['id']}) {part['status']}, and the serial stops on "
                     f"failure\n")
            return self._rows(conn, _CANCEL_REST_OF_SERIAL, {
                "parent": part["parent_id"], "now": now, "error": error})
        following = conn.execute(_NEXT_SERIAL_PART, {"parent": part["parent_id"],
                                                     "position": part["position"]}).fetchone()
        if following is not None:
            self._activate(conn, following[0], now)
        return []

    def _activate(self, conn: sqlite3.Connection, job_id: int, now: float) -> None:
        """Start a dormant job: a plain one becomes due; a parallel starts every
        part, a serial its first part, and a composite with no parts left to
        wait for becomes due to run its postprocess.  Nested composites are
        followed without recursion."""
        todo = [job_id]
        while todo:
            node = todo.pop()
            kind = conn.execute(_COMPOSITE_OF, (node,)).fetchone()[0]
            if kind is None:
                self._make_ready(conn, node, now)
                continue
            parts = conn.execute(_WAITING_PARTS, {"id": node}).fetchall()
            conn.execute(_SET_WAITING_ON, {"id": node, "count": len(parts)})
            if not parts:
                self._make_ready(conn, node, now)
            elif kind == "parallel":
                conn.execute(_MAKE_PLAIN_PARTS_READY, {"id": node, "now": now})
                self.woken += 1
                todo += [part_id for part_id, part_kind in parts if part_kind is not None]
            else:
                todo.append(parts[0][0])

    def _make_ready(self, conn: sqlite3.Connection, job_id: int, now: float) -> None:
        conn.execute(_MAKE_READY, {"id": job_id, "now": now})
        self.woken += 1


class _Runs(_FollowUps):
    """The writes made on behalf of a run, each fenced by the lease token of
    its claim (outcomes, interruptions, hand-backs, releases, progress), and
    those that steer runs from outside (cancels, stop requests, meta)."""

    def finish(self, job_id: int, token: str, *, status: str, now: float,
               result: bytes | None = None, error: str | None = None,
               error_type: str | None = None,
               begin_after: float | None = None) -> str:
        """Record the end of an attempt: ``COMPLETED``, ``FAILED``, or
        ``PENDING`` again (a retry at ``begin_after``).  Fenced by ``token``:
        raises `LeaseLost` when the attempt no longer owns the job.  Returns the
        status written, which is ``CANCELLED`` when a cancel came meanwhile."""
        params = {"id": job_id, "token": token, "status": status, "now": now,
                  "result": result, "error": error, "error_type": error_type,
                  "result_signature": None if result is None or not self.secrets
                  else _sign(self.secrets, _SIGNED_RESULT, result),
                  "begin_after": begin_after, "error_line": _last_line(error)}
        with self.write() as conn:
            status = self._ended(conn, _FINISH_JOB, params, now,
                                 _lease_lost_text(job_id, token, "its result was discarded"))
            _crash_point("in-finish")
            return status

    def complete(self, runs: Iterable[tuple[int, str]],
                 now: float) -> dict[tuple[int, str], str]:
        """`finish` each run ``(job_id, token)`` as ``COMPLETED`` with no result,
        in one statement for the runs of each claim (each token), each one
        fenced by its token.  Returns the status written for each run that
        still owned its job; the others had lost their leases."""
        by_token: dict[str, list[int]] = {}
        for job_id, token in runs:
            by_token.setdefault(token, []).append(job_id)
        statuses: dict[tuple[int, str], str] = {}
        with self.write() as conn:
            for token, ids in by_token.items():
                cursor = conn.execute(_FINISH_JOBS, {
                    "ids": json.dumps(ids), "token": token, "status": COMPLETED, "now": now,
                    "result": None, "result_signature": None, "error": None,
                    "error_type": None, "begin_after": None, "error_line": None})
                ended = _as_dicts(cursor)
                self._after_end(conn, ended, now, counted=self._count_parallel_parts(
                    conn, ended, now))
                statuses.update(((row["id"], token), str(row["status"])) for row in ended)
            _crash_point("in-finish")
        return statuses

    def _ended(self, conn: sqlite3.Connection, statement: str, params: Mapping[str, Any],
               now: float, lost: str) -> str:
        """Run a fenced statement that may end a job, and what follows its end;
        return the job's status, or raise `LeaseLost` with ``lost``."""
        status = self._end(conn, statement, params, now)
        if status is None:
            raise LeaseLost(lost)
        return status

    def _end(self, conn: sqlite3.Connection, statement: str, params: Mapping[str, Any],
             now: float) -> str | None:
        """Run a statement that may end a job (returning ``_ENDED``) and what
        follows its end; return the job's status, or None if it matched nothing."""
        cursor = conn.execute(statement, params)
        row = cursor.fetchone()
        if row is None:
            return None
        ended = _as_dict(cursor, row)
        self._after_end(conn, [ended], now)
        return str(ended["status"])

    def _fail_alone(self, conn: sqlite3.Connection, job_id: int, token: str, now: float,
                    exc: BaseException) -> str:
        """Fail a job without the steps that follow its end (its callbacks, its
        composite's count), which raised ``exc``: the last resort that keeps
        one job's data from stopping a pool.  Fenced."""
        error = _storable("".join(traceback.format_exception(exc)))
        cursor = conn.execute(_FINISH_JOB, {
            "id": job_id, "token": token, "status": FAILED, "now": now, "result": None,
            "result_signature": None, "error": error, "error_type": _qualified_type_name(
                type(exc)), "begin_after": None, "error_line": _last_line(error)})
        found = cursor.fetchone()
        if found is None:
            raise LeaseLost(_lease_lost_text(job_id, token))
        self._count_ended(conn, collections.Counter([(_as_dict(cursor, found)["queue"],
                                                      FAILED)]))
        _log.error("job %s failed: what follows its end could not be recorded, and what "
                   "waits for it (its callbacks, its composite) waits on: cancel that by "
                   "hand\n%s", job_id, error.rstrip())
        return FAILED

    def fail_alone(self, job_id: int, token: str, now: float, exc: BaseException) -> str:
        """`_fail_alone` in a transaction of its own."""
        with self.write() as conn:
            return self._fail_alone(conn, job_id, token, now, exc)

    def mark_started(self, runs: Iterable[tuple[int, str]], now: float) -> None:
        """Record that these claimed runs ``(job_id, token)`` have begun
        (see `_MARK_STARTED`)."""
        by_token: dict[str, list[int]] = {}
        for job_id, token in runs:
            by_token.setdefault(token, []).append(job_id)
        with self.write() as conn:
            for token, ids in by_token.items():
                conn.execute(_MARK_STARTED, {"ids": json.dumps(ids), "token": token,
                                             "now": now})

    def interrupt(self, job_id: int, token: str, now: float, reason: str) -> str:
        """Record that an attempt died without an outcome.  Fenced like `finish`."""
        with self.write() as conn:
            return self._interrupt(conn, job_id, token, now, reason)

    def _interrupt(self, conn: sqlite3.Connection, job_id: int, token: str,
                   now: float, reason: str) -> str:
        error = _format_exception_only(Interrupted(reason))
        cursor = conn.execute(_INTERRUPT_JOB, {
            "id": job_id, "token": token, "now": now, "error": error,
            "error_type": _INTERRUPTED_TYPE, "error_line": reason,
            "backoff": _INTERRUPTION_BACKOFF[0], "backoff_most": _INTERRUPTION_BACKOFF[1]})
        found = cursor.fetchone()
        if found is None:
            raise LeaseLost(_lease_lost_text(job_id, token))
        row = _as_dict(cursor, found)
        self._after_end(conn, [row], now)
        if row["max_interruptions"] == _UNLIMITED and row["status"] == PENDING:
            wait = row["begin_after"] - now
            _log.warning("job %s (%s) was interrupted (%s); it retries interruptions for "
                         "ever, as callbacks and postprocesses do by default, and runs "
                         "again %s", job_id, row["name"], reason,
                         f"in {_format_duration(wait)}" if wait > 0 else "at once")
        return str(row["status"])

    def renew(self, leases: Iterable[tuple[int, str]], expires: float) -> list[int]:
        """Extend the given ``(job_id, token)`` leases; return the ids whose
        lease was lost."""
        lost = []
        with self.write() as conn:
            for job_id, token in leases:
                cursor = conn.execute(_RENEW_LEASE, {"id": job_id, "token": token,
                                                     "expires": expires})
                if cursor.rowcount == 0:
                    lost.append(job_id)
        return lost

    def release(self, job_id: int, token: str, now: float) -> str:
        """Give back a claimed job that never started: pending again (or
        cancelled, if that was asked), its attempt not counted.  Fenced."""
        return self._fenced_end(_RELEASE_JOB, job_id, token, now)

    def refuse(self, job_id: int, token: str, now: float, reason: str) -> str:
        """`release` a job its runner cannot run (see `_REFUSE_JOB`), saying
        why in its history."""
        return self._fenced_end(_REFUSE_JOB, job_id, token, now, reason)

    def hand_back(self, job_id: int, token: str, now: float, reason: str) -> str:
        """Record a run that a stopping pool ended after its grace: pending
        again, counted neither as an attempt nor as an interruption, and in
        the history.  Fenced."""
        return self._fenced_end(_HAND_BACK_JOB, job_id, token, now, reason)

    def outcome_lost(self, job_id: int, token: str, now: float, reason: str) -> str:
        """Record a run that ended, but whose outcome was lost with its
        process when another job killed it: pending again, the attempt
        counted and in the history, no interruption counted.  Fenced."""
        return self._fenced_end(_OUTCOME_LOST, job_id, token, now, reason)

    def _fenced_end(self, statement: str, job_id: int, token: str, now: float,
                    reason: str | None = None) -> str:
        with self.write() as conn:
            return self._ended(conn, statement, {"id": job_id, "token": token, "now": now,
                                                 "error_line": reason},
                               now, _lease_lost_text(job_id, token))

    def report(self, reports: Iterable[tuple[int, str, Mapping[str, Any]]]) -> None:
        """Write the progress and progress message of running jobs, and merge
        into their meta the keys they set, each as ``(job_id, token,
        {"progress", "message", "meta"})`` (``meta`` a dict of the keys set
        since the last report); fenced, so a report of a run that lost its
        lease changes nothing."""
        with self.write() as conn:
            for job_id, token, fields in reports:
                if fields.get("meta"):
                    found = conn.execute(_META_OF_RUN, (job_id, token)).fetchone()
                    if found is None:
                        continue  # the run lost its lease: fenced off
                    try:
                        conn.execute(_SET_META, (_merged_meta(found[0], fields["meta"]), job_id))
                    except (TypeError, ValueError) as exc:  # grown by others meanwhile
                        _log.warning("job %s: its meta was not updated: %s", job_id, exc)
                conn.execute(_REPORT, {"progress": fields.get("progress"),
                                       "message": fields.get("message"),
                                       "id": job_id, "token": token})

    def cancel(self, job_id: int, now: float, *, created_at: float | None = None,
               conn: sqlite3.Connection | None = None) -> str | None:
        """Cancel a job that has not ended, with everything under it (see
        `_after_end`); a running one is flagged for its pool to stop.  Returns
        the status after, or None if the job had already ended (or, given
        ``created_at``, is not the job created then)."""
        with self._transaction(conn) as conn:
            return self._end(conn, _CANCEL_JOB, {"id": job_id, "now": now,
                                                 "created_at": created_at}, now)

    def request_stop(self, job_id: int, now: float, deadline: float, *,
                     created_at: float | None = None) -> str | None:
        """Ask a running job to stop by ``deadline``: it sees `Job.stop_requested`
        and may return early, and its pool stops it at the deadline (it then
        ends cancelled).  A job not running is cancelled at once; the running
        jobs under a composite are asked to stop in the same way.  Returns the
        status after, or None if the job had already ended."""
        with self.write() as conn:
            conn.execute(_STOP_DESCENDANTS, {"id": job_id, "deadline": deadline})
            return self._end(conn, _STOP_JOB, {"id": job_id, "now": now, "deadline": deadline,
                                               "created_at": created_at}, now)

    def update_meta(self, job_id: int, items: Mapping[str, Any], *,
                    created_at: float | None = None) -> str:
        """Merge ``items`` into a job's meta, whatever its status; return the
        meta written, as JSON.  Raises `JobNotFound`, or ValueError when the
        meta would grow over its limit."""
        with self.write() as conn:
            found = conn.execute(_META_OF_JOB, {"id": job_id,
                                                "created_at": created_at}).fetchone()
            if found is None:
                raise JobNotFound(f"no job {job_id} in {self.path}")
            text = _merged_meta(found[0], items)
            conn.execute(_SET_META, (text, job_id))
        return text

    def news_of(self, job_id: int) -> tuple[str | None, float | None]:
        """What a running job reads of itself: its meta (JSON), and the time it
        was asked to stop by, if it was."""
        with self.read() as conn:
            found = conn.execute(_NEWS_OF_JOB, (job_id,)).fetchone()
        return (None, None) if found is None else (found[0], found[1])

    def stops_requested(self, owner: str) -> list[tuple[int, bool, float | None]]:
        """The jobs ``owner`` is running that were cancelled or asked to stop:
        ``(job_id, cancelled, stop_by)``."""
        with self.read() as conn:
            return [(job_id, bool(cancelled), stop_by) for job_id, cancelled, stop_by
                    in conn.execute(_STOPS_REQUESTED, {"owner": owner}).fetchall()]


class _Claims(_Runs):
    """Putting jobs (by `Queue.put`, as callbacks, or returned by a run to
    wait for), claiming them, and taking back the claims of runners that
    are gone: expired leases, and the pools of the registry that stopped
    beating (`_recover`)."""

    def insert(self, trees: Sequence[list[dict[str, Any]]], now: float,
               conn: sqlite3.Connection | None = None) -> list[tuple[list[dict[str, Any]], bool]]:
        """Insert jobs in one transaction; for each tree, return ``(rows, already_there)``:
        its rows in order, completed in place.

        A tree is a list of rows, its root first; a row's ``parent`` is the
        index of its parent row in the tree (see `_plan_tree`).  A root with a
        key that an unfinished job already holds is not inserted; that job's
        row comes back instead.  With ``conn``, the rows are written inside
        that connection's open transaction instead of one of litejobs's own.
        """
        with self._transaction(conn) as conn:
            # A lone row (a put of one plain job) takes the id SQLite gives it,
            # which AUTOINCREMENT chooses just as _NEXT_JOB_ID does.
            alone = len(trees) == 1 and len(trees[0]) == 1
            next_id = None if alone else self._first_free_id(conn, sum(map(len, trees)))
            out: list[tuple[list[dict[str, Any]], bool]] = []
            new_rows: list[dict[str, Any]] = []
            composites = []
            for tree in trees:
                key = tree[0]["key"]
                if key is not None:
                    self._lock_key(conn, key)
                    cursor = conn.execute(_FIND_LIVE_KEY, (key,))
                    found = cursor.fetchone()
                    if found is not None:
                        out.append(([_as_dict(cursor, found)], True))
                        continue
                rows = _number_tree(tree, next_id, now)
                if next_id is not None:
                    next_id += len(rows)
                new_rows += rows
                if rows[0]["status"] == WAITING:
                    composites.append((len(out), rows))
                out.append((rows, False))
            # A lone plain row is the transaction's last statement.
            self._insert_rows(conn, new_rows,
                              last=alone and not composites and trees[0][0]["key"] is None)
            for row in new_rows:
                del row["payload"]  # the returned rows are those of bound jobs
            for index, rows in composites:
                self._activate(conn, rows[0]["id"], now)
                cursor = conn.execute(_SELECT_JOB_RANGE, (rows[0]["id"], rows[-1]["id"]))
                out[index] = (_as_dicts(cursor), False)
        return out

    def _insert_rows(self, conn: sqlite3.Connection, rows: list[dict[str, Any]], *,
                     last: bool = False) -> None:
        """Insert numbered rows (a lone row may have no id: SQLite gives it one),
        each checked against the size limit and, with secrets, signed; raises
        `PayloadTooLarge` before writing any."""
        _check_sizes(rows, self.size_limit)
        if self.secrets:
            for row in rows:
                row["signature"] = _sign(self.secrets, _SIGNED_CALL, row["name"].encode(),
                                         row["payload"] or b"")
        if len(rows) == 1 and rows[0]["id"] is None:  # a lone row: the database gives its id
            self._insert_one(conn, rows[0], last=last)
            return
        # In order (a part's parent first, for its foreign key): one executemany
        # for each run of rows with the same NULL columns.
        for nulls, run in itertools.groupby(rows, key=_null_columns):
            statement, values = _insert_statement(nulls)
            conn.executemany(statement, map(values, run))


    def wait_for(self, job_id: int, token: str, now: float,
                 follow: int | list[dict[str, Any]]) -> str:
        """Record that a run returned a job instead of a value: the job waits,
        holding no worker, for ``follow`` (the id of a job already put, or a
        planned tree to insert under it), and will end as that job ends.
        Fenced like `finish`; returns the status written."""
        lost = _lease_lost_text(job_id, token, "the job it returned was not stored")
        with self.write() as conn:
            if isinstance(follow, int):
                target = follow
                problem = None
                if conn.execute(_JOB_EXISTS, (target,)).fetchone() is None:
                    problem = f"job {job_id} returned job {target}, which is not in {self.path}"
                elif self._blocked_by(conn, target, job_id):
                    problem = (f"job {job_id} returned job {target}, which cannot end before "
                               f"job {job_id} has ended, so waiting for it would never end")
                if problem is not None:
                    error = _format_exception_only(LitejobsError(problem))
                    return self._ended(conn, _FINISH_JOB, {
                        "id": job_id, "token": token, "status": FAILED, "now": now,
                        "result": None, "result_signature": None, "error": error,
                        "begin_after": None, "error_line": problem,
                        "error_type": _qualified_type_name(LitejobsError)}, now, lost)
            else:
                target = self._first_free_id(conn, len(follow))
            status = self._ended(conn, _WAIT_FOR_JOB, {"id": job_id, "token": token,
                                                       "now": now, "target": target},
                                 now, lost)
            if status != WAITING:
                return status  # cancelled meanwhile: nothing to wait for
            if isinstance(follow, int):
                target_status = conn.execute(_ADD_FOLLOWER, {"id": target,
                                                             "created_at": None}).fetchone()[0]
                if target_status in _FINISHED:
                    ended = self._rows(conn, _TAKE_OUTCOME, {"source": target, "now": now})
                    self._after_end(conn, ended, now)
                    return next(str(row["status"]) for row in ended if row["id"] == job_id)
            else:
                rows = _number_tree(follow, target, now, parent_id=job_id, role="result")
                rows[0]["followers"] = 1
                self._insert_rows(conn, rows)
                self._activate(conn, target, now)
            _crash_point("in-finish")
        return WAITING

    def add_callback(self, job_id: int, tree: list[dict[str, Any]], now: float, *,
                     created_at: float | None = None,
                     conn: sqlite3.Connection | None = None) -> dict[str, Any]:
        """Insert a callback row (a planned one-row tree whose root has its
        callback role) under ``job_id``: dormant until that job ends, or due at
        once if it has ended.  Returns the callback's row."""
        with self._transaction(conn) as conn:
            found = conn.execute(_ADD_FOLLOWER, {"id": job_id,
                                                 "created_at": created_at}).fetchone()
            if found is None:
                raise JobNotFound(f"no job {job_id} in {self.path}")
            first = self._first_free_id(conn, len(tree))
            rows = _number_tree(tree, first, now, parent_id=job_id)
            self._insert_rows(conn, rows)
            if found[0] in _FINISHED:
                parent = conn.execute(f"SELECT {_ENDED} FROM litejobs_jobs WHERE id = ?",
                                      (job_id,))
                ended = self._start_callback(conn, first, rows[0]["role"],
                                             _as_dict(parent, parent.fetchone()), now)
                self._after_end(conn, ended, now)
            cursor = conn.execute(_SELECT_JOB, (first,))
            return _as_dict(cursor, cursor.fetchone())

    @staticmethod
    def _blocked_by(conn: sqlite3.Connection, start: int, job_id: int) -> bool:
        """Whether job ``start`` cannot end before job ``job_id`` does: through
        what it waits for (a returned job, its parts) or, while its turn has
        not come, what must end first (the job a callback follows, the parts
        before a serial part, the composite it is a part of)."""
        seen: set[int] = set()
        todo = [start]
        while todo:
            node = todo.pop()
            if node == job_id:
                return True
            if node in seen:
                continue
            seen.add(node)
            cursor = conn.execute(_BLOCKERS_OF, (node,))
            found = cursor.fetchone()
            if found is None or found[0] != WAITING:
                continue
            row = _as_dict(cursor, found)
            if row["waiting_for"] is not None:
                todo.append(row["waiting_for"])
            if row["composite"] is not None:
                todo += [part for part, in conn.execute(_UNFINISHED_PARTS, {
                    "parent": node, "position": None}).fetchall()]
            if row["waiting_on"] == _DORMANT and row["parent_id"] is not None:
                todo.append(row["parent_id"])
                if row["role"] == "part":
                    todo += [part for part, in conn.execute(_UNFINISHED_PARTS, {
                        "parent": row["parent_id"], "position": row["position"]}).fetchall()]
        return False

    def claim(self, *, owner: str, queues: Sequence[str] | None, now: float,
              expires: float, limit: int, unsigned_only: bool = False,
              avoid: Collection[str] = (), started: bool = True,
              holding: Collection[int] = ()) -> tuple[str, list[dict[str, Any]]]:
        """Claim up to ``limit`` jobs due at ``now`` for ``owner``, leased until
        ``expires``; return the lease token and the claimed rows in claim order.
        With ``unsigned_only``, signed jobs are left to others, and so are
        jobs whose callable is named in ``avoid``.  A pool claims ahead of
        running, with ``started`` False, and says when each run begins
        (`mark_started`).

        In the same transaction, jobs still pending past their ``begin_by``
        deadline fail instead of being claimed, and active jobs whose lease
        ran out are taken back (`_recover_expired_leases`); ``holding`` are
        the ids of the jobs ``owner`` runs, whose leases it renews itself.
        """
        if queues is not None:
            queues = list(dict.fromkeys(queues))  # a repeated name would claim less
        token = uuid.uuid4().hex
        params: dict[str, Any] = {"now": now, "owner": owner, "token": token,
                                  "expires": expires, "limit": limit,
                                  "error_type": _DEADLINE_TYPE, "avoid": json.dumps(list(avoid)),
                                  "unstarted": 0 if started else 1}
        for index, name in enumerate(queues or ()):
            params[f"queue{index}"] = name
        queue_count = None if queues is None else len(queues)
        _crash_point("before-claim")
        claim = None if queue_count == 0 else \
            self._claim_statement(queue_count, unsigned_only, bool(avoid))
        with self.write() as conn:
            # The three in one round trip where the backend can.  Claims take
            # no job past its deadline, so the order does not matter, but for
            # what the first two change: jobs taken back (one taken back
            # unstarted may be past its deadline too), and jobs that the ends
            # of others make due.  After any, the rest of the batch is claimed
            # again, so that they are claimed in this transaction as well.
            # With quota limits set (as the last claim found), every job is
            # claimed under them, in claim order, after the first round trip.
            plain = claim if claim is not None and not self.quotas_set else None
            found = self._rows_of_each(
                conn, (_EXPIRED_LEASES, _deadline_statement(queue_count)) + (
                    (plain,) if plain is not None else ()) + (_QUOTAS,), params)
            expired, past_deadline, limits = found[0], found[1], found[-1]
            claimed = found[2] if plain is not None else []
            self.quotas_set = bool(limits)
            recovered = self._recover_expired_leases(conn, expired, now, owner, holding)
            if recovered:
                past_deadline += _as_dicts(conn.execute(_deadline_statement(queue_count),
                                                        params))
            self._after_end(conn, past_deadline, now)
            if claim is not None and len(claimed) < limit:
                if limits:
                    claimed += self._claim_under_quotas(
                        conn, _QuotaLimits(limits), params, limit - len(claimed),
                        _quota_candidates_statement(queue_count, unsigned_only, bool(avoid)))
                elif plain is None or recovered or past_deadline:
                    claimed += _as_dicts(conn.execute(claim, {**params,
                                                              "limit": limit - len(claimed)}))
            if claimed:
                _crash_point("in-claim")
        # RETURNING gives no order: https://sqlite.org/lang_returning.html
        claimed.sort(key=lambda r: (-r["priority"], r["begin_after"], r["id"]))
        return token, claimed

    def _claim_under_quotas(self, conn: sqlite3.Connection, limits: _QuotaLimits,
                            params: Mapping[str, Any], room: int,
                            candidates: str) -> list[dict[str, Any]]:
        """Claim up to ``room`` due jobs in claim order, each only while every
        quota it names has a free slot, counting the jobs running now and
        those claimed before it here.  A job held back does not hold back
        those behind it: the jobs of full quotas are left out of the read."""
        self._lock_quotas(conn)
        for (names,) in conn.execute(_RUNNING_QUOTAS).fetchall():
            limits.running.update(json.loads(names))
        now = params["now"]
        if limits.windows:
            since = now - max(limits.windows)
            conn.execute(_PRUNE_STARTS, {"since": since})
            limits.count_starts(conn.execute(_STARTS_SINCE, {"since": since}).fetchall(), now)
        chosen: list[int] = []
        scan = 2 * room + 100
        # A read ends early when the quotas its jobs name fill up here; the
        # next leaves those out too, until the room is used or all is read.
        for _ in range(_QUOTA_READS):
            found = conn.execute(candidates, {**params, "scan": scan,
                                              "full": json.dumps(limits.full())})
            rows = found.fetchall()
            for job_id, names in rows:
                if job_id not in chosen and limits.admit(json.loads(names) if names else []):
                    chosen.append(job_id)
                    if len(chosen) == room:
                        break
            if len(chosen) == room or len(rows) < scan:
                break
        if not chosen:
            return []
        claimed = _as_dicts(conn.execute(_CLAIM_CHOSEN, {**params, "ids": json.dumps(chosen)}))
        starts = [(name, now) for row in claimed for name in json.loads(row["quotas"] or "[]")
                  if limits.rate(name) is not None]
        if starts:
            conn.executemany(_RECORD_START, starts)
        return claimed

    def _lock_quotas(self, conn: sqlite3.Connection) -> None:
        """Keep other claims under quotas out until this transaction ends,
        where the write transaction does not already (SQLite's does)."""

    def next_due(self, queues: Sequence[str] | None, *, unsigned_only: bool = False,
                 avoid: Collection[str] = ()) -> float | None:
        """The earliest ``begin_after`` of pending jobs in ``queues`` (None: all),
        of those a `claim` with the same filters would take."""
        params: dict[str, Any] = {f"queue{i}": name for i, name in enumerate(queues or ())}
        params["avoid"] = json.dumps(list(avoid))
        params["now"] = self.clock()  # a queue paused until later is not due before
        statement = _NEXT_DUE.format(
            queues=_queue_names_filter(None if queues is None else len(queues)),
            filters=_claim_filters(unsigned_only, bool(avoid)))
        with self.read() as conn:
            found = conn.execute(statement, params).fetchone()[0]
        return None if found is None else float(found)

    def _recover_expired_leases(self, conn: sqlite3.Connection,
                                expired: list[dict[str, Any]], now: float, owner: str,
                                holding: Collection[int]) -> int:
        """Take back the ``expired`` jobs (read by `_EXPIRED_LEASES`), whose
        lease ran out, but for those ``owner`` (the claiming runner) is
        ``holding``, and those of another pool that is alive and running on
        this host: they could not be renewed while another connection held
        the write lock (a paused pool, a long transaction), and are renewed
        as soon as their pools can write.  Only after ``_STARVED_MOST`` is
        such a pool taken for hung.  Returns how many were taken back."""
        alive: dict[str, bool] = {}
        taken = 0
        for found in expired:
            holder = found["lease_owner"]
            if holder == owner:
                if found["id"] in holding:
                    continue
            elif now - found["lease_expires"] < _STARVED_MOST:
                if holder not in alive:
                    alive[holder] = self._pool_alive_here(conn, holder)
                if alive[holder]:
                    continue
            self._recover(conn, found, now, f"the lease of {holder} ran out at "
                                            f"{_format_time(found['lease_expires'])}")
            taken += 1
        return taken

    def _pool_alive_here(self, conn: sqlite3.Connection, pool_id: str) -> bool:
        """Whether ``pool_id`` is a registered pool, not stopped, whose process
        runs on this host (see `_runner_alive_here`)."""
        found = conn.execute(_POOL_PROCESS, (pool_id,)).fetchone()
        return found is not None and bool(_runner_alive_here(*found))

    def _recover(self, conn: sqlite3.Connection, found: Mapping[str, Any], now: float,
                 why: str) -> str:
        """Take back an active job from a runner that is gone or lost its
        lease: a claim whose run had not begun is given back, uncounted; a
        run that had begun was interrupted.  A job whose data breaks these
        steps is failed alone, rather than every runner's claims with it."""
        job_id, token = found["id"], found["lease_token"]
        log = _job_log({"id": job_id, "name": found["name"], "attempts": found["attempts"]})
        try:
            with _savepoint(conn):
                if found["unstarted"]:
                    status = self._ended(conn, _NEVER_STARTED, {
                        "id": job_id, "token": token, "now": now,
                        "error_line": f"its run was not recorded as begun, and {why}"},
                        now, _lease_lost_text(job_id, token))
                    _log.warning("job %s (%s) had not been started (%s); it is now %s",
                                 job_id, found["name"], why, status, extra=log)
                    return status
                status = self._interrupt(conn, job_id, token, now,
                                         f"job {job_id} was interrupted: {why}")
        except LeaseLost:
            # Another runner took it back first (its transaction committed
            # since this one read the expired leases): nothing to do.
            return ACTIVE
        except self._database_trouble:
            raise  # the database's trouble, not this job's
        except Exception as exc:
            return self._fail_alone(conn, job_id, token, now, exc)
        _log.warning("job %s (%s) was interrupted (%s); it is now %s", job_id,
                     found["name"], why, status, extra=log)
        return status

    def register_worker(self, worker_id: str, *, host: str, pid: int, processes: int,
                        queues: Sequence[str] | None, lease: float, now: float) -> None:
        """Add a pool to the table, and forget pools stopped over a week ago."""
        with self.write() as conn:
            conn.execute(_PRUNE_WORKERS, {"before": now - _WORKER_ROWS_KEPT})
            conn.execute(_REGISTER_WORKER, {
                "id": worker_id, "host": host, "pid": pid, "processes": processes,
                "queues": None if queues is None else json.dumps(list(queues)),
                "lease": lease, "now": now})

    def heartbeat(self, worker_id: str, leases: Iterable[tuple[int, str]] | None,
                  expires: float, now: float) -> tuple[bool, list[int]]:
        """Record that the pool is alive and, if ``leases`` is given, extend
        them.  Returns whether the pool was still registered as alive, and the
        ids of leases it had lost."""
        with self.write() as conn:
            alive = conn.execute(_HEARTBEAT, {"id": worker_id, "now": now}).rowcount == 1
            if not alive:
                conn.execute(_REVIVE_WORKER, {"id": worker_id, "now": now})
            lost = [] if leases is None else self.renew(leases, expires)
        return alive, lost

    def fetch_workers(self) -> list[dict[str, Any]]:
        """Every registered pool, newest first, with how many jobs it holds
        and whether it is ``alive``: not stopped, and not gone (`_gone`)."""
        with self.read() as conn:
            cursor = conn.execute(_SELECT_WORKERS)
            pools = _as_dicts(cursor)
        now = time.time()
        for pool in pools:
            pool["alive"] = pool["stopped_at"] is None and self._gone(pool, now) is None
        return pools

    def stop_worker(self, worker_id: str, now: float, reason: str) -> None:
        with self.write() as conn:
            conn.execute(_STOP_WORKER, {"id": worker_id, "now": now, "reason": reason})

    def recover_silent_workers(self, worker_id: str, now: float,
                               silent_for: float) -> list[str]:
        """Find pools that stopped heartbeating more than ``silent_for``
        seconds ago and are gone (`_gone`); mark them stopped and take back
        their active jobs (`_recover`).  Returns why each was taken for gone."""
        reasons = []
        with self.write() as conn:
            cursor = conn.execute(_SILENT_WORKERS, {"id": worker_id,
                                                    "silent_since": now - silent_for})
            for row in _as_dicts(cursor):
                reason = self._gone(row, now)
                if reason is None:
                    continue
                conn.execute(_STOP_WORKER, {"id": row["id"], "now": now, "reason": reason})
                for found in self._rows(conn, _ACTIVE_JOBS_OF, {"owner": row["id"]}):
                    self._recover(conn, found, now, reason)
                reasons.append(reason)
        return reasons

    @staticmethod
    def _gone(pool: Mapping[str, Any], now: float) -> str | None:
        """Why a silent pool is gone, or None if it is not.  On this host its
        process tells: gone, stopped (SIGSTOP, a debugger) or a zombie, it is
        gone; alive and running, it was only kept from writing, unless that
        has lasted ``_STARVED_MOST``.  Elsewhere, its heartbeat's age tells."""
        where = f"pool {pool['id']} (pid {pool['pid']} on {pool['host']})"
        alive = _runner_alive_here(pool["host"], pool["pid"], pool["started_at"])
        if alive is False:
            return f"{where} is gone: its process is not running"
        silent = now - pool["heartbeat_at"]
        if alive is None and silent > pool["lease"]:
            return f"{where} stopped heartbeating at {_format_time(pool['heartbeat_at'])}"
        if alive and silent > _STARVED_MOST:
            return (f"{where} has not heartbeated for {_format_duration(silent)} although "
                    f"its process runs: it is hung")
        return None


class _Jobs(_Claims):
    """The storage layers above, and reading jobs, counting them, retention,
    and retries by hand: all of `_Storage` but for what each backend's
    connections do.  Every SQL statement litejobs runs is one of the named
    ones at the top of this file, run by these layers (PostgreSQL's in its
    dialect: `_postgres_sql`)."""

    def fetch(self, job_id: int) -> dict[str, Any] | None:
        with self.read() as conn:
            cursor = conn.execute(_SELECT_JOB, (job_id,))
            row = cursor.fetchone()
            return None if row is None else _as_dict(cursor, row)

    def fetch_blob(self, job_id: int, column: str) -> tuple[bytes | None, bytes | None]:
        """A job's pickled ``"payload"`` or ``"result"``, and its signature."""
        statement = {"payload": _SELECT_PAYLOAD, "result": _SELECT_RESULT}[column]
        with self.read() as conn:
            row = conn.execute(statement, (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(f"no job {job_id} in {self.path}")
        return row[0], row[1]

    def children(self, job_id: int, role: str | None) -> list[dict[str, Any]]:
        """The rows whose parent is ``job_id``: parts in order, then the job it
        returned, then callbacks in the order added."""
        with self.read() as conn:
            cursor = conn.execute(_SELECT_CHILDREN, {"id": job_id, "role": role})
            return _as_dicts(cursor)

    def counts(self, queue: str | None) -> dict[str, int]:
        """Jobs by status, in every queue or in ``queue``; exact, and as
        quick with a million ended jobs as with none."""
        found: dict[str, int] = {}
        with self.read() as conn:
            for _, status, count in conn.execute(
                    _COUNT_ALL_JOBS if queue is None else _COUNT_QUEUE_JOBS, {"queue": queue}):
                found[status] = found.get(status, 0) + count
        return found

    def unfinished_under(self, job_id: int) -> int:
        """How many jobs under ``job_id`` (its parts, the job it returned, and
        theirs) have not ended."""
        with self.read() as conn:
            return int(conn.execute(_UNFINISHED_WORK_UNDER, {"id": job_id}).fetchone()[0])

    def ended_since(self, since: float) -> dict[int, str]:
        """{id: status} of the jobs that ended at ``since`` or later (`_ENDED_SINCE`)."""
        with self.read() as conn:
            return {int(job_id): status
                    for job_id, status in conn.execute(_ENDED_SINCE, {"since": since})}

    def statuses_among(self, ids: Sequence[int]) -> dict[int, str]:
        """{id: status} of the jobs among ``ids`` that exist."""
        with self.read() as conn:
            return {int(job_id): status for job_id, status in conn.execute(
                _STATUSES_AMONG, {"ids": json.dumps(list(ids))})}

    def overview(self, now: float) -> dict[str, Any]:
        """Counts by queue and status, the pending job due the longest, and
        how many jobs ended in the last minute and hour."""
        with self.read() as conn:
            counts: dict[str, dict[str, int]] = {}
            for queue, status, count in sorted(conn.execute(_COUNT_ALL_JOBS).fetchall()):
                counts.setdefault(queue, dict.fromkeys(STATUSES, 0))[status] = count
            cursor = conn.execute(_OLDEST_DUE, {"now": now})
            oldest = cursor.fetchone()
            finished = {span: conn.execute(_FINISHED_SINCE, {"since": now - seconds})
                        .fetchone()[0] for span, seconds in (("last_minute", 60),
                                                             ("last_hour", 3600))}
        return {"counts": counts, "finished": finished,
                "oldest_due": None if oldest is None else _as_dict(cursor, oldest)}

    def search(self, *, statuses: Sequence[str] | None = None, queue: str | None = None,
               name: str | None = None, since: float | None = None,
               before: float | None = None, limit: int = 50,
               below_id: int | None = None) -> list[dict[str, Any]]:
        """Jobs, newest first, matching every filter given: statuses, queue,
        a glob on the callable's name, and created at or after ``since`` and
        before ``before``; with ``below_id``, only older ones (the next page,
        read from the primary key whatever the table's size)."""
        terms = ["TRUE"] if below_id is None else ["id < :below_id"]
        params: dict[str, Any] = {"limit": limit if limit >= 0 else self._no_limit,
                                  "queue": queue, "name": name, "below_id": below_id,
                                  "since": since, "before": before}
        if statuses:
            terms.append(f"status IN ({', '.join(f':s{i}' for i in range(len(statuses)))})")
            params.update({f"s{i}": status for i, status in enumerate(statuses)})
        if name is not None:
            name_term, params["name"] = self._name_matches(name)
            terms.append(name_term)
        for value, term in ((queue, "queue = :queue"), (since, "created_at >= :since"),
                            (before, "created_at < :before")):
            if value is not None:
                terms.append(term)
        with self.read() as conn:
            cursor = conn.execute(_SEARCH_JOBS.format(where=" AND ".join(terms)), params)
            return _as_dicts(cursor)

    def purge(self, before: float, *, status: str | None = None, limit: int = 500,
              dry_run: bool = False) -> tuple[int, int]:
        """Delete, in one short transaction, up to ``limit`` jobs that ended
        before ``before`` (only those in ``status``, if given) with all the
        jobs under them, once none of those is unfinished.  Returns how many
        of each were deleted (or, with ``dry_run``, would be)."""
        with (self.read() if dry_run else self.write()) as conn:
            roots = [job_id for job_id, in conn.execute(_PURGEABLE, {
                "before": before, "status": status,
                "limit": limit if limit >= 0 else self._no_limit}).fetchall()]
            under = 0
            for root in list(roots):
                if conn.execute(_UNFINISHED_IN_TREE, {"id": root}).fetchone()[0]:
                    roots.remove(root)
                    continue
                tree = conn.execute(_TREE_DEEPEST_FIRST, {"id": root}).fetchall()
                under += len(tree)
                if not dry_run:
                    conn.executemany(_DELETE_JOB, tree + [(root,)])
        return len(roots), under

    def delete_ended(self, job_id: int) -> str:
        """Delete one job that ended, with the jobs under it, as purge would
        (not a part alone, nor one with anything under it unfinished); what
        was done, in words."""
        with self.write() as conn:
            found = conn.execute(_ROOT_TO_DELETE, (job_id,)).fetchone()
            if found is None:
                return "not found"
            status, parent_id = found
            if status not in _FINISHED:
                return f"not purged: {status}"
            if parent_id is not None:
                return f"not purged: it is under job {parent_id}, purge that one"
            if conn.execute(_UNFINISHED_IN_TREE, {"id": job_id}).fetchone()[0]:
                return "kept: something under it has not ended"
            tree = conn.execute(_TREE_DEEPEST_FIRST, {"id": job_id}).fetchall()
            conn.executemany(_DELETE_JOB, tree + [(job_id,)])
        return "purged"

    def reopen(self, job_id: int, now: float) -> str:
        """Run a failed or cancelled job again, keeping its history.  A
        composite runs its parts that did not complete, then its postprocess.
        Returns the status after (pending or waiting).  Raises ValueError when
        the job cannot be retried, saying why."""
        with self.write() as conn:
            cursor = conn.execute(_SELECT_JOB, (job_id,))
            found = cursor.fetchone()
            if found is None:
                raise JobNotFound(f"no job {job_id} in {self.path}")
            row = _as_dict(cursor, found)
            if row["status"] not in (FAILED, CANCELLED):
                raise ValueError(f"job {job_id} is {row['status']}: only failed and "
                                 f"cancelled jobs are retried")
            around = self._composites_around(conn, row) if row["role"] == "part" else []
            if row["role"] in _CALLBACK_ROLES:
                parent = conn.execute(_STATUS_OF, (row["parent_id"],)).fetchone()
                if parent is not None and parent[0] not in _FINISHED:
                    raise ValueError(f"job {job_id} is a callback of job {row['parent_id']}, "
                                     f"which has not ended: it runs once that job ends")
            if conn.execute(_UNFINISHED_WORK_UNDER, {"id": job_id}).fetchone()[0]:
                raise ValueError(f"job {job_id} still has parts running or being cancelled: "
                                 f"retry it once they have ended")
            try:
                self._reopen(conn, job_id, row["error"], now)
                for composite in around:  # each waits for the one part re-opened in it
                    conn.execute(_UNCOUNT_ENDED, (composite["id"],))
                    conn.execute(_REOPEN_AROUND_PART, {"id": composite["id"], "now": now,
                                                       "error_line": _last_line(
                                                           composite["error"])})
                self._activate(conn, around[-1]["id"] if around else job_id, now)
            except self._unique_violation:
                key = next(found["key"] for found in [row, *around] if found["key"])
                raise ValueError(f"job {job_id} (or a composite it is in) has the key "
                                 f"{key!r}, which an unfinished job holds now") from None
            return str(conn.execute(_STATUS_OF, (job_id,)).fetchone()[0])

    @staticmethod
    def _composites_around(conn: sqlite3.Connection, part: Mapping[str, Any]
                           ) -> list[dict[str, Any]]:
        """The composites a retried part is in, innermost first: each re-opens
        around it, so that its postprocess runs again once the part has.
        Raises ValueError while one of them has not ended."""
        around = []
        node = part
        while node["role"] == "part":
            cursor = conn.execute(_SELECT_JOB, (node["parent_id"],))
            node = _as_dict(cursor, cursor.fetchone())
            if node["status"] not in _FINISHED:
                raise ValueError(
                    f"job {part['id']} is a part of job {node['id']}, which has not ended: "
                    f"retry the part once it has, or that job, which runs again its "
                    f"parts that did not complete")
            around.append(node)
        return around

    def _reopen(self, conn: sqlite3.Connection, job_id: int, error: str | None,
                now: float) -> None:
        conn.execute(_UNCOUNT_ENDED, (job_id,))
        conn.execute(_REOPEN, {"id": job_id, "now": now, "error_line": _last_line(error)})
        for part_id, part_error in conn.execute(_UNDONE_PARTS, {"id": job_id}).fetchall():
            self._reopen(conn, part_id, part_error, now)


class _Copies(_Jobs):
    """Copying unfinished jobs from one database to another (`Queue.copy_to`):
    reading them out of the source, whole trees at a time, and writing them
    into the destination under new ids."""

    def unfinished_trees(self) -> list[dict[str, Any]]:
        """Every row of the trees that hold a pending or waiting job,
        payloads and results included, by id.  Raises ValueError if one of
        them runs, or waits for a job outside them."""
        with self.read() as conn:
            rows = _as_dicts(conn.execute(_UNFINISHED_TREES))
        ids = {row["id"] for row in rows}
        for row in rows:
            if row["status"] == ACTIVE or row.pop("lease_token") is not None:
                raise ValueError(f"job {row['id']} is running in {self.path}: stop its pools "
                                 f"first (a job copied while it runs may run twice)")
            if row["waiting_for"] is not None and row["waiting_for"] not in ids:
                raise ValueError(f"job {row['id']} waits for job {row['waiting_for']}, which "
                                 f"is not under it: end or cancel one of them first")
        return rows

    def insert_copies(self, rows: Sequence[dict[str, Any]]) -> dict[int, int]:
        """Insert ``rows`` (as `unfinished_trees` gives them, by id) under new
        ids, in one transaction, links rewritten; returns {old id: new id}."""
        with self.write() as conn:
            first = self._first_free_id(conn, len(rows)) if rows else 0
            new_ids = {row["id"]: first + index for index, row in enumerate(rows)}
            copies = []
            for row in rows:
                copy = {**row, "id": new_ids[row["id"]]}
                for link in ("parent_id", "waiting_for"):
                    if copy[link] is not None:
                        copy[link] = new_ids[copy[link]]
                copies.append(tuple(copy[column] for column in _COPIED_COLUMNS))
            conn.executemany(_INSERT_COPY, copies)
            self._count_ended(conn, collections.Counter(
                (row["queue"], row["status"]) for row in rows if row["status"] in _FINISHED))
        return new_ids

    def delete_copied(self, ids: Iterable[int]) -> int:
        """Delete the jobs ``ids`` (copied: see `unfinished_trees`), in one
        transaction, those under others first, and none that has a job under
        it that is not among them (one added since), which would go with it;
        returns how many were deleted."""
        deleted = 0
        with self.write() as conn:
            for job_id in sorted(ids, reverse=True):  # a job's id is above its parent's
                deleted += conn.execute(_DELETE_CHILDLESS, (job_id, job_id)).rowcount
        return deleted


class _Schedules(_Copies):
    """Schedules: storing them, and firing their due ticks (`fire_due`),
    each as a job put in the transaction that moves its schedule past the
    tick and records it in litejobs_ticks."""

    def save_schedule(self, row: dict[str, Any], now: float) -> dict[str, Any]:
        """Store the schedule ``row`` (its name, cron, tz, job_name, template
        and its signature, catchup, catchup_limit, max_lag, overlap and
        next_tick), in place of one of the same name, and return it as
        stored.  One whose cron and time zone stay keeps its next tick, so
        that a program declaring its schedules each time it starts neither
        skips nor repeats a tick; it stays paused if it was."""
        with self.write() as conn:
            found = self._rows(conn, _SCHEDULE_TO_CHANGE, {"name": row["name"]})
            if not found:
                conn.execute(_INSERT_SCHEDULE, {
                    **row, "paused": 0, "last_tick": None, "last_job_id": None,
                    "last_fired_at": None, "created_at": now, "updated_at": now})
            else:
                old = found[0]
                keep = (old["cron"], old["tz"]) == (row["cron"], row["tz"])
                conn.execute(_UPDATE_SCHEDULE, {
                    **row, "next_tick": old["next_tick"] if keep else row["next_tick"],
                    "updated_at": now})
            return self._rows(conn, _SCHEDULE_NAMED, {"name": row["name"]})[0]

    def remove_schedule(self, name: str) -> bool:
        """Remove a schedule and its record of ticks; whether there was one.
        The jobs it put stay."""
        with self.write() as conn:
            gone = conn.execute(_DELETE_SCHEDULE, (name,)).rowcount
            conn.execute(_DELETE_TICKS, (name,))
        return bool(gone)

    def fetch_schedules(self, name: str | None = None) -> list[dict[str, Any]]:
        """Every schedule by name, or the one named ``name`` (if any)."""
        with self.read() as conn:
            if name is None:
                return self._rows(conn, _SCHEDULES, {})
            return self._rows(conn, _SCHEDULE_NAMED, {"name": name})

    def pause_schedule(self, name: str, paused: bool, now: float) -> bool:
        """Pause or resume a schedule; whether there is one.  The ticks of a
        pause were not wanted: a resumed schedule ticks next after ``now``."""
        with self.write() as conn:
            found = self._rows(conn, _SCHEDULE_TO_CHANGE, {"name": name})
            if not found:
                return False
            row = found[0]
            next_tick = row["next_tick"]
            if row["paused"] and not paused:
                next_tick = _Cron.parse(row["cron"]).next_after(now, _zone(row["tz"]))
            conn.execute(_PAUSE_SCHEDULE, {"name": name, "paused": int(paused),
                                           "next_tick": next_tick, "now": now})
        return True

    def next_schedule_tick(self) -> float | None:
        """The earliest next tick of the schedules not paused."""
        with self.read() as conn:
            found = conn.execute(_NEXT_SCHEDULE_TICK).fetchone()[0]
        return None if found is None else float(found)

    def fire_due(self, now: float) -> list[_Firing]:
        """Fire the due ticks of the schedules due at ``now`` (a few at a
        time: call again while it fires some), in one transaction."""
        with self.write() as conn:
            return [self._fire(conn, schedule, now)
                    for schedule in self._rows(conn, _DUE_SCHEDULES, {"now": now})]

    def trigger_schedule(self, name: str, now: float) -> int | None:
        """Put the job of schedule ``name`` now, whatever its ticks, and
        return its id (None: no such schedule).  Not a tick: the next stays."""
        with self.write() as conn:
            found = self._rows(conn, _SCHEDULE_TO_CHANGE, {"name": name})
            if not found:
                return None
            self._check_template(found[0])
            job_id = self._put_tick(conn, found[0], now, now)
            conn.execute(_SCHEDULE_MOVED, {"name": name, "next_tick": found[0]["next_tick"],
                                           "last_tick": None, "last_job_id": job_id,
                                           "last_fired_at": now})
        return job_id

    def _check_template(self, schedule: Mapping[str, Any]) -> None:
        """A runner with secrets puts only what was scheduled with one of them."""
        if self.secrets and not _signed_by_one_of(
                self.secrets, schedule["template_signature"], _SIGNED_SCHEDULE,
                schedule["name"].encode(), schedule["template"].encode()):
            raise SignatureError(f"schedule {schedule['name']!r} is not signed with any "
                                 f"of this queue's secrets")

    def _fire(self, conn: _DBConnection, schedule: Mapping[str, Any], now: float) -> _Firing:
        name = schedule["name"]
        try:
            cron, zone = _Cron.parse(schedule["cron"]), _zone(schedule["tz"])
            self._check_template(schedule)
        except (ValueError, SignatureError) as exc:  # another runner may fire it
            return _Firing(name, [], [], str(exc))
        keep = schedule["catchup_limit"] if schedule["catchup"] == "all" else 1
        latest, total = _due_ticks(cron, zone, schedule["next_tick"], now, keep)
        running = None
        if schedule["overlap"] == "skip" and schedule["last_job_id"] is not None:
            status = conn.execute(_STATUS_OF, (schedule["last_job_id"],)).fetchone()
            if status is not None and status[0] in (PENDING, WAITING, ACTIVE):
                running = schedule["last_job_id"]
        fire, skipped = _plan_ticks(
            latest, total, now, catchup=schedule["catchup"],
            catchup_limit=schedule["catchup_limit"], max_lag=schedule["max_lag"],
            overlap=schedule["overlap"], running=running)
        fired = []
        for tick in fire:
            if conn.execute(_RECORD_TICK, (name, tick, now)).rowcount == 0:
                continue  # it fired already: its row says so
            job_id = self._put_tick(conn, schedule, tick, now)
            conn.execute(_TICK_JOB, (job_id, name, tick))
            fired.append((tick, job_id))
        conn.execute(_SCHEDULE_MOVED, {
            "name": name, "next_tick": cron.next_after(now, zone),
            "last_tick": fired[-1][0] if fired else None,
            "last_job_id": fired[-1][1] if fired else None,
            "last_fired_at": now if fired else None})
        conn.execute(_PRUNE_TICKS, (name, now - _TICKS_KEPT))
        return _Firing(name, fired, skipped)

    def _put_tick(self, conn: _DBConnection, schedule: Mapping[str, Any], tick: float,
                  now: float) -> int:
        """Put the schedule's job for ``tick``, due now; its id.  Its meta
        names the schedule and the tick."""
        rows = _template_rows(schedule["template"])
        for row in rows:
            row["begin_after"] = now
        (stored, _), = self.insert([rows], now)
        job_id = int(stored[0]["id"])
        conn.execute(_TICK_META, (json.dumps({"schedule": schedule["name"],
                                              "tick": _format_time(tick)}), job_id))
        return job_id


class _Pauses(_Schedules):
    """Paused queues: their jobs are not claimed (see `_NOT_PAUSED`) until
    they are resumed, or until the time a pause was given."""

    def pause_queue(self, queue: str, until: float | None, now: float) -> None:
        with self.write() as conn:
            conn.execute(_PAUSE_QUEUE, (queue, until, now))

    def resume_queue(self, queue: str) -> bool:
        """Resume ``queue``, and wake the pools that serve it; whether it was paused."""
        with self.write() as conn:
            resumed = conn.execute(_RESUME_QUEUE, (queue,)).rowcount
            if resumed:
                self._announce_due(conn)
        return bool(resumed)

    def paused_queues(self, now: float) -> dict[str, float | None]:
        """{queue: until (None: until resumed)} of the queues paused at ``now``."""
        with self.read() as conn:
            return {queue: until for queue, until, _ in
                    conn.execute(_PAUSED_QUEUES, {"now": now}).fetchall()}


class _Quotas(_Pauses):
    """Quota limits: setting and reading them (claims count against them,
    see `_Claims._claim_under_quotas`), and who holds their slots."""

    def set_quota(self, pattern: str, running: int | None, rate: tuple[int, float] | None,
                  now: float) -> None:
        """Set the limits of each name ``pattern`` matches: ``running`` jobs
        at once, ``rate`` (claims, seconds) in a sliding window; None for no
        such limit (both None: the entry goes)."""
        with self.write() as conn:
            if running is None and rate is None:
                conn.execute(_REMOVE_QUOTA, (pattern,))
            else:
                conn.execute(_SET_QUOTA, (pattern, running, None if rate is None else rate[0],
                                          None if rate is None else rate[1], now))
            self._announce_due(conn)  # a limit raised or removed frees slots

    def fetch_quotas(self) -> list[dict[str, Any]]:
        """The limits set: rows of pattern, running, rate and per."""
        with self.read() as conn:
            return self._rows(conn, _QUOTAS, {})

    def finished_per_minute(self, since: float) -> list[tuple[int, str, int]]:
        """Jobs that ended since ``since``: (minute from then, status, count)."""
        with self.read() as conn:
            return [(int(minute), status, int(count)) for minute, status, count in
                    conn.execute(_FINISHED_PER_MINUTE, {"since": since}).fetchall()]

    def recent_starts(self, since: float) -> list[tuple[str, float]]:
        """The claims of rate-limited names after ``since``: (name, when)."""
        with self.read() as conn:
            return [(name, float(at)) for name, at in
                    conn.execute(_STARTS_SINCE, {"since": since}).fetchall()]

    def quota_holders(self) -> list[tuple[int, list[str], str | None]]:
        """The running jobs that name quotas: (id, names, lease owner), by id."""
        with self.read() as conn:
            return [(int(job_id), json.loads(names), owner) for job_id, names, owner
                    in conn.execute(_RUNNING_WITH_QUOTAS).fetchall()]


class _SQLiteStorage(_SQLiteConnections, _Quotas):
    """The `_Storage` on an SQLite file."""


###############################################################################
# PostgreSQL
###############################################################################
#
# The same storage layers on PostgreSQL, for pools on many hosts: psycopg 3
# (the ``postgres`` extra) is imported only when a PostgreSQL URL is opened.

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")
# The full URLs (with a password, if one was given) of those opened in this
# process, by the URL shown (without it), so that a Queue rebuilt from a
# pickle, which carries only the latter, connects as the original did.
_URLS_BY_SHOWN: dict[str, str] = {}


def _is_postgres_url(target: Any) -> bool:
    return isinstance(target, str) and target.startswith(_POSTGRES_SCHEMES)


def _shown_url(url: str) -> str:
    """``url`` without its password (in the user part, or as a ``password``
    or ``sslpassword`` parameter), to show and to key by."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is not None:
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{parts.username or ''}@{host}" + (f":{parts.port}" if parts.port else "")
        parts = parts._replace(netloc=netloc)
    pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    if any(key in ("password", "sslpassword") for key, _ in pairs):
        parts = parts._replace(query="&".join(
            piece for piece in parts.query.split("&")
            if piece.split("=", 1)[0] not in ("password", "sslpassword")))
    return urllib.parse.urlunsplit(parts)


def _import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise DatabaseError(
            "a PostgreSQL URL needs psycopg 3, which litejobs installs with its "
            "postgres extra: python -m pip install 'litejobs[postgres]'") from None
    return psycopg


_PLACEHOLDERS = re.compile(r"'(?:[^']|'')*'|::|%|\?|(?<![\w:]):([A-Za-z_]\w*)")


def _psycopg_placeholders(statement: str) -> str:
    """SQLite's ``?`` and ``:name`` as psycopg's ``%s`` and ``%(name)s``, with
    every other ``%`` doubled; string literals and ``::`` casts kept."""
    def swap(found: re.Match[str]) -> str:
        text = found.group(0)
        if text.startswith("'"):
            return text.replace("%", "%%")
        if text == "::":
            return text
        if text == "%":
            return "%%"
        return "%s" if text == "?" else f"%({found.group(1)})s"
    return _PLACEHOLDERS.sub(swap, statement)


_MIN_MAX = re.compile(r"\b(min|max)\(", re.IGNORECASE)


def _least_greatest(statement: str) -> str:
    """SQLite's scalar min(a, b) and max(a, b) as LEAST and GREATEST; the
    aggregates, of one argument, stay."""
    out, start = [], 0
    for found in _MIN_MAX.finditer(statement):
        depth, commas, index = 0, 0, found.end()
        while depth >= 0 and index < len(statement):
            char = statement[index]
            depth += (char == "(") - (char == ")")
            commas += char == "," and depth == 0
            index += 1
        out.append(statement[start:found.start()])
        out.append(("LEAST(" if found.group(1).lower() == "min" else "GREATEST(")
                   if commas else found.group(0))
        start = found.end()
    out.append(statement[start:])
    return "".join(out)


@functools.lru_cache(maxsize=512)
def _postgres_sql(statement: str) -> str:
    """A statement written for SQLite (or in its placeholders), as psycopg
    runs it on PostgreSQL; once per statement."""
    for pattern, replacement in _POSTGRES_REWRITES:
        statement = pattern.sub(replacement, statement)
    return _psycopg_placeholders(_least_greatest(statement))


@functools.lru_cache(maxsize=64)
def _postgres_claim_statement(queue_count: int | None, unsigned_only: bool,
                              avoiding: bool) -> str:
    return _POSTGRES_CLAIM_JOBS.format(queues=_queue_names_filter(queue_count),
                                       filters=_claim_filters(unsigned_only, avoiding)
                                       + _OUTSIDE_QUOTAS)


def _glob_as_regex(pattern: str) -> str:
    """A shell glob (``*``, ``?``, ``[...]``) as a PostgreSQL regular
    expression matching the whole name, as SQLite's GLOB does."""
    out, index = ["^"], 0
    while index < len(pattern):
        char = pattern[index]
        index += 1
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[" and "]" in pattern[index + 1:] + pattern[index:index + 1]:
            end = pattern.index("]", index + 1 if pattern[index:index + 1] == "]" else index)
            body = pattern[index:end]
            body = "^" + body[1:] if body.startswith("^") else body
            out.append("[" + body.replace("\\", "\\\\") + "]")
            index = end + 1
        else:
            out.append(re.escape(char))
    return "".join(out) + "$"


class _PostgresConnection:
    """A psycopg connection as the storage layers use one (see
    `_DBConnection`): each statement in SQLite's text runs in PostgreSQL's
    (`_postgres_sql`), its parameters bound on the client, as literals whose
    type PostgreSQL infers from where they stand (a NULL anywhere included).

    A transaction's BEGIN is sent with its first statement (``begin_with``),
    in one round trip; a transaction of one statement sends its COMMIT with
    it too, or, where the connection may (``lone_prepared``), runs as one
    prepared statement (`execute_and_commit`): a lone put takes one round
    trip, as a plain INSERT does.  If that first statement finds the connection closed
    by the server since its last use (a restart, pg_terminate_backend),
    nothing of the transaction ran, and it runs again on a new connection
    from ``reopen``."""

    __slots__ = ("raw", "_cursor", "_psycopg", "_reopen", "begin_with", "begin",
                 "outermost", "committed", "lone_prepared", "lost", "_lone", "_idle_input")

    def __init__(self, raw: Any, psycopg: Any, reopen: Callable[[], Any] | None = None,
                 begin: str = "BEGIN;", *, lone_prepared: bool = False):
        self._psycopg = psycopg
        self._reopen = reopen
        self.begin_with = False  # a BEGIN is due with the next statement
        # BEGIN and the transaction's SET LOCALs: settings that hold for the
        # transaction alone, so that none stays on a server connection that
        # PgBouncer in transaction mode hands to another client.
        self.begin = begin
        # Set by the write transaction that owns the connection, while no
        # other is opened inside it: only that one may commit with a statement.
        self.outermost = False
        self.committed = False  # the transaction committed with its statement
        # The transaction's settings hold for the whole session, so that a
        # transaction of one statement may run as a prepared statement alone,
        # which saves the server parsing and planning it each time.
        self.lone_prepared = lone_prepared
        # An error said the server could not be reached through it: it is
        # replaced at its next use outside a transaction, even if psycopg does
        # not call it broken (a cut that left it in pipeline mode, say).
        self.lost = False
        self._bind(raw)

    def _bind(self, raw: Any) -> None:
        self.raw = raw
        self._cursor = functools.partial(self._psycopg.ClientCursor, raw,
                                         row_factory=self._psycopg.rows.tuple_row)
        # For `execute_and_commit`: a server-side cursor, kept, and a poller
        # on the socket, for what the server sends while the connection idles.
        self._lone = self._psycopg.Cursor(raw, row_factory=self._psycopg.rows.tuple_row)
        self._idle_input = select.poll()
        self._idle_input.register(raw.fileno(), select.POLLIN)

    def execute(self, statement: str, parameters: Any = ()) -> Any:
        return self._send(_postgres_sql(statement), parameters)

    def execute_each(self, statements: Sequence[str],
                     parameters: Mapping[str, Any]) -> list[list[dict[str, Any]]]:
        """Run ``statements`` in one round trip, with the same parameters;
        the rows each gave."""
        cursor = self._send(";".join(map(_postgres_sql, statements)), parameters)
        found = [_as_dicts(cursor)]
        while cursor.nextset():
            found.append(_as_dicts(cursor))
        return found

    def _send(self, sql: str, parameters: Any) -> Any:
        """Run ``sql`` (in PostgreSQL's text), after BEGIN if one is due;
        its cursor, at its first statement's result."""
        if self.committed:
            raise RuntimeError(f"litejobs: a statement after its transaction committed: "
                               f"{sql[:60]!r}")
        cursor = self._cursor()
        if not self.begin_with:
            cursor.execute(sql, parameters)
            return cursor
        try:
            cursor.execute(self.begin + sql, parameters)
        except self._psycopg.OperationalError:
            if self._reopen is None or not (self.raw.closed or self.raw.broken):
                raise
            self._bind(self._reopen())
            cursor = self._cursor()
            cursor.execute(self.begin + sql, parameters)
        self.begin_with = False
        for _ in range(self.begin.count(";")):
            cursor.nextset()  # the statement's result, after BEGIN's and the SETs'
        return cursor

    def execute_and_commit(self, statement: str, parameters: Any = ()) -> Any:
        """Run the statement of a transaction that has no other, with its
        BEGIN and its COMMIT, in one round trip, and return its cursor.
        Anywhere else (a transaction already under way or nested, the
        application's), it runs as `execute` does, and the commit stays
        the transaction's.  A connection whose server spoke while it was
        idle (a termination) takes the two round trips of `execute`, which
        can run again on a new connection; a connection lost during the
        round trip raises, since whether it committed is unknown."""
        if not (self.begin_with and self.outermost) or self.raw.closed or \
                self._idle_input.poll(0):
            return self.execute(statement, parameters)
        if self.lone_prepared:
            cursor = self._lone.execute(_postgres_sql(statement), parameters, prepare=True)
        else:
            cursor = self._cursor()
            cursor.execute(self.begin + _postgres_sql(statement) + ";COMMIT", parameters)
            for _ in range(self.begin.count(";")):
                cursor.nextset()
        self.begin_with = False
        self.committed = True
        return cursor

    def executemany(self, statement: str, rows: Iterable[Any]) -> Any:
        if self.begin_with:  # the transaction's first statement: BEGIN goes first
            self.execute("SELECT 1")
        cursor = self._cursor()
        cursor.executemany(_postgres_sql(statement), list(rows))
        return cursor

    @property
    def in_transaction(self) -> bool:
        return bool(self.raw.info.transaction_status != 0)  # 0: IDLE


class _PostgresListener:
    """What wakes a thread waiting on a PostgreSQL database (a pool's idle
    wait, `Job.wait`): a connection of its own that LISTENs on ``channel``,
    where the triggers litejobs_jobs_notify_* send at commit.  ``fd`` is its
    socket, for a selector; `written` reads what came.

    A lost connection (a restart, pg_terminate_backend) counts as news, since
    what happened meanwhile is unknown, and makes the listener ``broken``:
    its owner takes ``fd`` out of its selector, then calls `reopen`.
    ``fd`` is a duplicate of libpq's socket, which libpq closes as it finds
    the connection lost: the duplicate stays open until `reopen`, so that
    its number cannot be given to another file (a worker process's pipe)
    while a selector still holds it."""

    def __init__(self, storage: _PostgresConnections, channel: str):
        self._storage = storage
        self._channel = channel
        self._conn: Any = None
        self.fd = -1
        self.broken = False
        # A connection a firewall dropped without a word hears nothing: a
        # wait on it looks anyway at times (TCP keepalives find it out).
        self.exact = False
        # The channel of jobs that became pending: a pool hearing it claims
        # at once (a job put for later makes that claim come back empty).
        self.means_due = channel == _POSTGRES_DUE
        self.version = 0  # notifications seen, which `data_version` reports
        self._open()

    def _open(self) -> None:
        try:
            self._conn = self._storage._connect()
            self._conn.execute(f"LISTEN {self._channel}")
            self.fd = os.dup(self._conn.pgconn.socket)
        except (DatabaseError, self._storage._psycopg.Error) as exc:
            _log.debug("cannot LISTEN on %s yet: %s", self._storage.path, exc)
            self._close_connection()

    def written(self) -> bool:
        """Read the notifications that arrived; whether any did (or whether
        the connection was lost, which may hide some)."""
        if self._conn is None or self.broken:
            self.broken = True
            self.version += 1
            return True
        try:
            pgconn = self._conn.pgconn
            pgconn.consume_input()
            seen = 0
            while pgconn.notifies() is not None:
                seen += 1
        except self._storage._psycopg.Error:
            self.broken = True
            self.version += 1
            return True
        self.version += seen
        return seen > 0

    def reopen(self) -> None:
        """After `written` found the connection lost: a new one, if the
        server can be reached (else ``fd`` is -1, and this is tried again)."""
        self._close_connection()
        self.broken = False
        self._open()

    def _close_connection(self) -> None:
        if self._storage._pid == os.getpid():
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
            if self.fd >= 0:
                os.close(self.fd)
        self._conn, self.fd = None, -1

    def close(self) -> None:
        self._storage._listeners.pop(threading.get_ident(), None)
        self._close_connection()


class _Deadlocked(DatabaseBusy):
    """PostgreSQL took this transaction for one side of a deadlock and rolled
    it back: a cancel locks a composite, then its parts; a run's end locks
    its part, then the composite.  SQLite's single writer never sees one."""


class _PostgresConnections(_Connections):
    """One PostgreSQL database's connections and transactions, for the
    storage layers: opening and migrating, reads in autocommit, and write
    transactions that a thread's nested writes join, as on SQLite.

    A connection per thread and per process, opened lazily and opened again
    when lost (a restart, pg_terminate_backend): a write that finds its
    connection gone raises `DatabaseError`, and the next one reconnects.
    The database must exist: litejobs adds its own tables to the current
    schema (its migrations run under an advisory lock) and touches no
    others.  ``busy_timeout`` is the lock_timeout.
    """

    _database_trouble: tuple[type[BaseException], ...] = (DatabaseError,)
    idle_check_interval = _POSTGRES_POLL_INTERVAL
    _no_limit = None  # LIMIT NULL
    _migrations = _POSTGRES_MIGRATIONS
    _create_version_table = _POSTGRES_CREATE_VERSION_TABLE

    def __init__(self, url: str, *, durable: bool = True,
                 busy_timeout: float = DEFAULT_BUSY_TIMEOUT, read_only: bool = False,
                 secrets: tuple[bytes, ...] = (), size_limit: int | None = DEFAULT_SIZE_LIMIT,
                 listen: bool = True):
        psycopg = _import_psycopg()
        shown = _shown_url(url)
        url = _URLS_BY_SHOWN.get(url, url)
        _URLS_BY_SHOWN[shown] = url
        super().__init__(shown, secrets, size_limit)
        self._psycopg = psycopg
        self._unique_violation = (psycopg.errors.UniqueViolation,)
        # Raised inside a write before it is translated: a lock wait that
        # timed out, a deadlock, a lost connection; never one job's fault.
        self._database_trouble = (DatabaseError, psycopg.OperationalError,
                                  psycopg.errors.LockNotAvailable,
                                  psycopg.errors.DeadlockDetected,
                                  psycopg.errors.SerializationFailure)
        self._url = url
        self.busy_timeout = busy_timeout
        self.read_only = read_only
        self.listen = listen
        self.durable = durable
        self._listeners: dict[int, _PostgresListener] = {}
        self._clock_offset = 0.0
        with self.read() as conn:
            version = self._schema_version(conn)
        if version > _POSTGRES_SCHEMA_VERSION:
            raise self._too_new(version)
        if version < _POSTGRES_SCHEMA_VERSION:
            if self.read_only:
                raise DatabaseError(
                    f"{self.path} has no litejobs tables" if version == 0 else
                    f"{self.path} has litejobs schema version {version}: open it once "
                    f"with a queue that may write, to upgrade it")
            self._migrate()

    # -- connections -------------------------------------------------------

    def _connect(self) -> Any:
        """A new autocommit connection, set up for litejobs."""
        try:
            raw = self._psycopg.connect(self._url, autocommit=True, connect_timeout=10,
                                        application_name="litejobs", keepalives=1,
                                        keepalives_idle=30, keepalives_interval=10,
                                        keepalives_count=3)
            if self.listen:  # a session of its own (not PgBouncer in transaction mode)
                # Short statements only: compiling one (JIT) costs more than
                # it runs, and the planner's estimates of a purge asked for it.
                # The lock timeout is each transaction's too (`_begin_sql`); on
                # the session, it holds for a lone prepared put as well.
                raw.execute(f"SET jit = off;SET lock_timeout = {self._lock_timeout_ms()}")
            self._measure_clock(raw)
        except self._psycopg.Error as exc:
            raise self._translated(exc) from None
        return raw

    def _begin_sql(self) -> str:
        """What a write transaction begins with: BEGIN, the busy timeout as
        its lock_timeout, and, not durable (as SQLite's synchronous=NORMAL),
        commits not waited on to reach the disk: the last ones may be lost
        if the server crashes, never half of one.  Pools write so: a claim
        or an outcome lost is a job run again."""
        begin = f"BEGIN;SET LOCAL lock_timeout = {self._lock_timeout_ms()};"
        if not self.durable:
            begin += "SET LOCAL synchronous_commit = off;"
        if self.read_only:
            begin = begin.replace("BEGIN;", "BEGIN READ ONLY;")
        return begin

    def _lock_timeout_ms(self) -> int:
        return max(1, int(self.busy_timeout * 1000))

    def _measure_clock(self, raw: Any) -> None:
        """How far the server's clock is ahead of this host's: the host's
        clock read halfway through the round trip that read the server's."""
        sent = time.time()
        server = float(raw.execute(_POSTGRES_NOW).fetchone()[0])
        received = time.time()
        self._clock_offset = server - (sent + received) / 2

    def clock(self) -> float:
        """Now by the server's clock (see `_measure_clock`): hosts' clocks
        differ, and every pool compares due times, leases and deadlines on
        this one."""
        return time.time() + self._clock_offset

    def _connection(self) -> _PostgresConnection:
        if self._pid != os.getpid():
            self._forget_inherited_connections()
        thread = threading.current_thread()  # (registers a foreign thread)
        conn = self._connections.get(thread)
        if conn is not None and (conn.raw.closed or conn.raw.broken or conn.lost) \
                and threading.get_ident() not in self._writing:
            self._connections.pop(thread, None)
            if conn.lost:
                self._close_quietly(conn)
            conn = None
        if conn is None:
            conn = _PostgresConnection(
                self._connect(), self._psycopg, self._connect, self._begin_sql(),
                lone_prepared=self.listen and self.durable and not self.read_only)
            self._register(conn)
        return conn

    @staticmethod
    def _close_quietly(conn: _PostgresConnection) -> None:
        with contextlib.suppress(Exception):
            conn.raw.close()

    def _forget_inherited_connections(self) -> None:
        _ABANDONED_CONNECTIONS.extend(self._listeners.values())
        self._listeners = {}
        super()._forget_inherited_connections()

    def _translated(self, exc: BaseException) -> DatabaseError:
        errors = self._psycopg.errors
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, (errors.DeadlockDetected, errors.SerializationFailure)):
            return _Deadlocked(f"{self.path}: {text}")
        if isinstance(exc, errors.LockNotAvailable):
            return DatabaseBusy(f"{self.path}: a lock stayed held by another connection for "
                                f"longer than the busy timeout ({text}); keep transactions "
                                f"short, or give the queue a longer busy_timeout")
        if isinstance(exc, self._psycopg.OperationalError):
            return DatabaseUnreachable(f"cannot reach PostgreSQL at {self.path}: {text}")
        return DatabaseError(f"{self.path}: {text}")

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except self._psycopg.Error as exc:
            error = self._translated(exc)
            if isinstance(error, DatabaseUnreachable):
                conn = self._connections.get(threading.current_thread())
                if conn is not None:
                    conn.lost = True
            raise error from exc

    # -- transactions ------------------------------------------------------

    @contextlib.contextmanager
    def write(self, *, atomic_steps: bool = False) -> Iterator[_PostgresConnection]:
        """One transaction, committed or rolled back; a write opened inside
        another on the same thread joins it (see `_SQLiteConnections.write`)."""
        conn = self._connection()
        thread = threading.get_ident()
        if thread in self._writing:
            outermost, conn.outermost = conn.outermost, False
            try:
                with self._errors():
                    if self._writing[thread]:
                        with _savepoint(conn):
                            yield conn
                    else:
                        yield conn
            finally:
                conn.outermost = outermost
            return
        self._writing[thread] = atomic_steps
        try:
            with self._errors():
                conn.begin_with = True
                if atomic_steps:  # the application's: it may write through conn.raw first
                    conn.execute("SELECT 1")
                conn.outermost = True
                try:
                    yield conn
                except BaseException:
                    if not conn.committed:
                        self._roll_back(conn)
                    raise
                if conn.committed:
                    pass  # its one statement committed it
                elif conn.begin_with:
                    conn.begin_with = False  # nothing ran: nothing to commit
                else:
                    self._commit(conn)
        finally:
            conn.outermost = conn.committed = False
            del self._writing[thread]

    def _commit(self, conn: _PostgresConnection) -> None:
        with self._commit_errors(conn):
            conn.raw.execute("COMMIT")

    @contextlib.contextmanager
    def _commit_errors(self, conn: _DBConnection) -> Iterator[None]:
        """Around a COMMIT sent: a connection lost meanwhile leaves it unknown
        whether the transaction committed, and the error says so.  (An error
        the server answers with, such as a lock timeout, committed nothing.)"""
        try:
            yield
        except self._psycopg.OperationalError as exc:
            if not (conn.raw.closed or conn.raw.broken):
                raise
            raise DatabaseUnreachable(
                f"cannot reach PostgreSQL at {self.path}: the connection was lost while "
                f"committing, so whether the commit took is unknown ({exc})") from exc

    def _roll_back(self, conn: _PostgresConnection) -> None:
        conn.begin_with = False
        with contextlib.suppress(self._psycopg.Error):
            if not conn.raw.closed and conn.in_transaction:
                conn.raw.execute("ROLLBACK")

    @contextlib.contextmanager
    def read(self) -> Iterator[_PostgresConnection]:
        """A connection for reads: autocommit, each statement on its own."""
        conn = self._connection()
        with self._errors():
            yield conn

    def own_connection(self, conn: _DBConnection) -> Any:
        return conn.raw

    def _transaction(self, conn: Any) -> ContextManager[_PostgresConnection]:
        return self.write() if conn is None else self._joined(conn)

    @contextlib.contextmanager
    def _joined(self, conn: Any) -> Iterator[_PostgresConnection]:
        """Write through the application's own psycopg connection, inside its
        transaction: what is written commits or rolls back with it."""
        psycopg = self._psycopg
        if not isinstance(conn, psycopg.Connection):
            raise TypeError(f"conn must be a psycopg.Connection, not {_describe(conn)}")
        status = conn.info.transaction_status
        if status == psycopg.pq.TransactionStatus.IDLE and conn.autocommit:
            raise ValueError(
                "conn is in autocommit mode with no transaction open: begin one (with "
                "conn.transaction():) before putting jobs through it, so that they "
                "commit or roll back with your writes")
        if status not in (psycopg.pq.TransactionStatus.IDLE,
                          psycopg.pq.TransactionStatus.INTRANS):
            raise ValueError("conn's transaction has failed or its connection is gone: "
                             "roll it back first")
        if conn.info.dbname != urllib.parse.urlsplit(self._url).path.lstrip("/") \
                and urllib.parse.urlsplit(self._url).path.lstrip("/"):
            raise ValueError(f"conn is open on database {conn.info.dbname!r}, "
                             f"not on {self.path}")
        wrapped = _PostgresConnection(conn, psycopg)
        with self._errors(), _savepoint(wrapped):
            yield wrapped

    # -- the schema --------------------------------------------------------

    def _migrate(self) -> None:
        with self.write() as conn:
            conn.execute(_POSTGRES_MIGRATION_LOCK)
            self._apply_migrations(conn)

    def _too_new(self, version: int) -> SchemaVersionError:
        return SchemaVersionError(
            f"{self.path} has litejobs schema version {version}, but this litejobs "
            f"({__version__}) knows only up to {_POSTGRES_SCHEMA_VERSION} on PostgreSQL; "
            f"upgrade litejobs")

    # -- what the layers ask of a backend ----------------------------------

    def _first_free_id(self, conn: _DBConnection, count: int) -> int:
        return int(conn.execute(_POSTGRES_RESERVE_IDS, (count,)).fetchone()[0])

    def _insert_one(self, conn: _DBConnection, row: dict[str, Any], *,
                    last: bool = False) -> None:
        statement, values = _insert_statement(_null_columns(row))
        statement += " RETURNING id"
        if not last:
            row["id"] = conn.execute(statement, values(row)).fetchone()[0]
            return
        with self._commit_errors(conn):
            row["id"] = conn.execute_and_commit(statement, values(row)).fetchone()[0]

    def _rows_of_each(self, conn: _DBConnection, statements: Sequence[str],
                      params: Mapping[str, Any]) -> list[list[dict[str, Any]]]:
        return conn.execute_each(statements, params)

    def _lock_key(self, conn: _DBConnection, key: str) -> None:
        conn.execute(_POSTGRES_LOCK_KEY, (key,))

    def _announce_due(self, conn: _DBConnection) -> None:
        conn.execute(_POSTGRES_ANNOUNCE_DUE)

    def _lock_quotas(self, conn: _DBConnection) -> None:
        conn.execute(_POSTGRES_LOCK_QUOTAS)

    def _claim_statement(self, queue_count: int | None, unsigned_only: bool,
                         avoiding: bool) -> str:
        return _postgres_claim_statement(queue_count, unsigned_only, avoiding)

    def _name_matches(self, pattern: str) -> tuple[str, str]:
        return "name ~ :name", _glob_as_regex(pattern)

    # -- waking, and the rest of the contract ------------------------------

    def change_watch(self, *, changes: bool = False) -> _PostgresListener | None:
        """This thread's listener for commits that change jobs (None when
        LISTEN is off); `data_version` then counts what it heard."""
        if not self.listen:
            return None
        listener = _PostgresListener(self, _POSTGRES_CHANGED if changes else _POSTGRES_DUE)
        self._listeners[threading.get_ident()] = listener
        return listener

    def data_version(self) -> int:
        """A number that changes when jobs change: the notifications this
        thread's listener heard, or, without one, the server's snapshot."""
        listener = self._listeners.get(threading.get_ident())
        if listener is not None:
            listener.written()
            return listener.version
        with self.read() as conn:
            return hash(conn.execute(_POSTGRES_SNAPSHOT).fetchone()[0])

    def watch_commits(self) -> _CommitWatch:
        return _CommitWatch(self)

    def identity(self) -> tuple[Any, ...]:
        return ("postgresql", self.path)

    def checkpoint(self, mode: str = "PASSIVE") -> tuple[int, int]:
        """Nothing to do: PostgreSQL checkpoints by itself."""
        if mode not in ("PASSIVE", "TRUNCATE"):
            raise ValueError(f"unknown checkpoint mode {mode!r}")
        return 0, 0

    def wait_for_locks(self, seconds: float) -> None:
        self.busy_timeout = seconds
        conn = self._connections.get(threading.current_thread())
        if conn is not None and self._pid == os.getpid():
            conn.begin = self._begin_sql()
            if self.listen and not conn.in_transaction:
                with self._errors():
                    conn.raw.execute(f"SET lock_timeout = {self._lock_timeout_ms()}")

    def close(self) -> None:
        if self._pid == os.getpid():
            for listener in list(self._listeners.values()):
                listener.close()
        super().close()


def _retried_if_deadlocked(method: Callable[..., _T]) -> Callable[..., _T]:
    """``method`` of a storage, run again (up to `_DEADLOCK_RETRIES` times,
    after a short random pause) when its transaction was rolled back by a
    deadlock: nothing of it was written.  Inside a transaction of the
    caller's, the caller's to retry."""
    @functools.wraps(method)
    def retried(self: Any, *args: Any, **kwargs: Any) -> _T:
        for attempt in range(_DEADLOCK_RETRIES):
            if kwargs.get("conn") is not None or threading.get_ident() in self._writing:
                break
            try:
                return method(self, *args, **kwargs)
            except _Deadlocked as exc:
                _log.debug("%s; trying again", exc)
                time.sleep(random.uniform(0.001, 0.01) * (attempt + 1))
        return method(self, *args, **kwargs)
    return retried


class _PostgresStorage(_PostgresConnections, _Quotas):
    """The `_Storage` on a PostgreSQL database.  What users call to steer
    jobs from outside is retried after a deadlock (see `_Deadlocked`); a
    pool retries its own writes."""

    cancel = _retried_if_deadlocked(_Jobs.cancel)
    request_stop = _retried_if_deadlocked(_Jobs.request_stop)
    reopen = _retried_if_deadlocked(_Jobs.reopen)
    update_meta = _retried_if_deadlocked(_Jobs.update_meta)
    add_callback = _retried_if_deadlocked(_Jobs.add_callback)


def _storage_key(target: str | os.PathLike[str]) -> str:
    """How a database is named, shown and keyed: an absolute path, or a
    PostgreSQL URL without its password."""
    if _is_postgres_url(target):
        return _shown_url(cast(str, target))
    return os.path.abspath(os.fspath(target))


def _open_storage(target: str | os.PathLike[str], *, durable: bool, create: bool,
                  busy_timeout: float, secrets: tuple[bytes, ...], size_limit: int | None,
                  read_only: bool = False, listen: bool = True,
                  network_filesystem: bool = False) -> _Storage:
    """The storage for a path (SQLite) or a PostgreSQL URL."""
    if _is_postgres_url(target):
        return _PostgresStorage(cast(str, target), durable=durable, busy_timeout=busy_timeout,
                                read_only=read_only, secrets=secrets, size_limit=size_limit,
                                listen=listen)
    return _SQLiteStorage(target, durable=durable, create=create, busy_timeout=busy_timeout,
                          read_only=read_only, secrets=secrets, size_limit=size_limit,
                          network_filesystem=network_filesystem)


###############################################################################
# Job and Queue
###############################################################################

_CURRENT_JOB: contextvars.ContextVar[Job | None] = contextvars.ContextVar(
    "litejobs_current_job", default=None)

def _format_exception_only(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc))


def _format_time(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    try:
        moment = datetime.datetime.fromtimestamp(round(stamp, 3), datetime.timezone.utc)
    except (ValueError, OverflowError, OSError):
        return f"{stamp!r} (Unix seconds)"
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _format_duration(seconds: float) -> str:
    """A short human duration, in the units the command line takes: 850ms,
    42s, 3m12s, 5h04m, 2d03h."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    whole = int(seconds)
    for unit, size, small, small_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60),
                                          ("m", 60, "s", 1)):
        if whole >= size:
            return f"{whole // size}{unit}{whole % size // small_size:02d}{small}"
    return f"{whole}s"


def _to_datetime(stamp: float | None) -> datetime.datetime | None:
    if stamp is None:
        return None
    return datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc)


def current_job() -> Job | None:
    """The `Job` running in this thread, or None outside a job.

    Inside a job, ``current_job().id`` and ``current_job().attempt`` say which
    job and which run this is.
    """
    return _CURRENT_JOB.get()


# -- callables ---------------------------------------------------------------


def _resolve(name: str) -> Any:
    """Import ``"package.module:qualname"`` and return the object it names."""
    module_name, sep, qualname = name.partition(":")
    if not sep or not module_name or not qualname:
        raise ValueError(f"{name!r} is not of the form 'package.module:function'")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def _name_of(fn: Any) -> str:
    """A readable ``module:qualname`` for any callable, for people and the CLI."""
    if isinstance(fn, functools.partial):
        return f"functools.partial({_name_of(fn.func)})"
    if inspect.ismethod(fn):
        cls = fn.__self__ if isinstance(fn.__self__, type) else type(fn.__self__)
        return f"{cls.__module__}:{cls.__qualname__}.{fn.__func__.__name__}"
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    bound_to = getattr(fn, "__self__", None)
    if module is None and hasattr(fn, "__objclass__"):
        module = fn.__objclass__.__module__
    elif module is None and isinstance(bound_to, type):
        module = bound_to.__module__  # a builtin classmethod, such as dict.fromkeys
    elif module is None and bound_to is not None and not isinstance(bound_to, types.ModuleType):
        module = type(bound_to).__module__  # a bound builtin method, such as "abc".upper
    if isinstance(module, str) and isinstance(qualname, str):
        return f"{module}:{qualname}"
    cls = type(fn)
    return f"{cls.__module__}:{cls.__qualname__}"


def _describe(obj: Any) -> str:
    return _shortened(repr(obj), 80)


def _last_line(text: str | None) -> str | None:
    """The last line of a traceback: the exception and its message."""
    lines = (text or "").rstrip().splitlines()
    return lines[-1] if lines else None


def _shortened(text: str, most: int) -> str:
    return text if len(text) <= most else text[:most - 3] + "..."


def _storable(text: str) -> str:
    """``text`` as every backend can store it: UTF-8 without NUL
    (PostgreSQL's text holds none).  A lone surrogate (from a file name
    undecodable in the locale, say) or a NUL is written as its escape."""
    if "\0" in text:
        text = text.replace("\0", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _check_text(value: str, what: str) -> str:
    """Refuse a name a backend cannot store: a string with a lone surrogate,
    or with a NUL (PostgreSQL)."""
    if "\0" in value:
        raise ValueError(f"{what} {value!r} cannot be stored: it holds a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} {value!r} cannot be stored: it is not valid Unicode "
                         f"({exc.reason} at position {exc.start})") from None
    return value


def _by_name(fn: Any) -> str | None:
    """The name that finds ``fn`` again by import, if there is one.

    Functions, builtins and classes are stored as that name alone: no pickle,
    and a job whose function was renamed fails with a clear import error.
    """
    if not isinstance(fn, (types.FunctionType, types.BuiltinFunctionType, type)):
        return None
    return _importable_name(fn)


def _called(fn: Any) -> Any:
    """What calling ``fn`` runs: itself, or its class's ``__call__``."""
    return fn if inspect.isroutine(fn) or isinstance(fn, functools.partial) \
        else getattr(type(fn), "__call__", None)


def _refuse_async(fn: Any, name: str) -> None:
    """Raise TypeError for an async generator function (or a partial of one,
    or an object whose ``__call__`` is one): a job runs to one result, and a
    generator has none.  Coroutine functions are jobs like any other."""
    if inspect.isasyncgenfunction(_called(fn)):
        raise TypeError(
            f"cannot store {name}: it is an async generator function, which yields many "
            f"values; a job returns one: put an async function (async def ... return) "
            f"that collects what it needs")


@functools.lru_cache(maxsize=4096)
def _importable_name(fn: Any) -> str | None:
    """`_by_name` for hashable callables, cached: put resolves each function once."""
    if isinstance(fn, types.BuiltinFunctionType) and not isinstance(
            getattr(fn, "__self__", None), (types.ModuleType, type(None))):
        return None  # a bound builtin method, such as [].append: pickle it
    qualname = fn.__qualname__
    if "<lambda>" in qualname:
        raise TypeError(
            f"cannot store {_describe(fn)}: a lambda has no importable name, and "
            f"jobs must be module-level functions; define it with def in a module"
        )
    if "<locals>" in qualname:
        raise TypeError(
            f"cannot store {_describe(fn)}: it is defined inside another function "
            f"(a nested function or closure) and cannot be imported by a worker; "
            f"move it to module level and pass what it closed over as arguments"
        )
    name = f"{fn.__module__}:{qualname}"
    try:
        found = _resolve(name)
    except Exception:
        found = None
    if found is not fn:
        raise TypeError(
            f"cannot store {_describe(fn)}: {name} does not import back to it; "
            f"jobs must be module-level functions that a worker can import"
        )
    _refuse_async(fn, name)
    return name


@functools.lru_cache(maxsize=1024)
def _check_callable_name(name: str) -> None:
    """Raise ValueError unless ``name`` imports to a callable.  Only names
    that pass are cached: one that fails may import later."""
    try:
        target = _resolve(name)
    except Exception as exc:
        raise ValueError(
            f"cannot resolve {name!r}: {type(exc).__name__}: {exc}; give an "
            f"importable 'package.module:function'"
        ) from None
    if not callable(target):
        raise ValueError(f"{name!r} names {_describe(target)}, which is not callable")
    try:
        _refuse_async(target, name)
    except TypeError as exc:
        raise ValueError(str(exc)) from None


def _prepare_call(fn: Any, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> tuple[str, bytes | None]:
    """Return the readable name and the payload to store for a call.

    Raises TypeError or ValueError, naming the culprit, before anything is
    written.
    """
    if isinstance(fn, str):
        _check_callable_name(fn)
        name, stored = fn, None
    elif not callable(fn):
        raise TypeError(f"a job needs a callable, not {_describe(fn)}")
    else:
        if isinstance(fn, functools.partial):
            _by_name(fn.func)  # rejects a partial of a lambda with the clear message
        by_name = _by_name(fn)
        name = by_name or _name_of(fn)
        stored = None if by_name else fn
        if stored is not None:
            _refuse_async(fn, name)
            name = _storable(name)  # only for people: the callable itself is pickled
    if stored is None:
        _check_text(name, "the callable's name")  # a worker imports it by that name
    if stored is None and not args and not kwargs:
        return name, None
    try:
        return name, pickle.dumps((stored, args, kwargs), protocol=_PICKLE_PROTOCOL)
    except Exception as exc:
        culprit, what = _unpicklable_part(stored, args, kwargs)
        raise TypeError(
            f"cannot pickle {what} {_describe(culprit)} of job {name}: "
            f"{type(exc).__name__}: {exc}; job callables and arguments must be "
            f"picklable: pass plain data (numbers, strings, paths, ids) and let the "
            f"job open files or connections itself"
        ) from None


def _unpicklable_part(stored: Any, args: tuple[Any, ...],
                      kwargs: dict[str, Any]) -> tuple[Any, str]:
    parts: list[tuple[Any, str]] = [(stored, "the callable")]
    parts += [(arg, f"argument {i}") for i, arg in enumerate(args)]
    parts += [(value, f"keyword argument {key!r}") for key, value in kwargs.items()]
    for obj, what in parts:
        try:
            pickle.dumps(obj, protocol=_PICKLE_PROTOCOL)
        except Exception:
            return obj, what
    return (stored, args, kwargs), "the call"


def _load_call(name: str, payload: bytes | None, signature: bytes | None,
               keys: Sequence[bytes], job_id: int | None
               ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    """Import and unpickle a stored call; with ``keys``, only once its
    signature is checked."""
    _check_call_signature(name, payload, signature, keys, job_id)
    if payload is None:
        return _resolve(name), (), {}
    stored, args, kwargs = pickle.loads(payload)
    return (stored if stored is not None else _resolve(name)), args, kwargs


def _check_call_signature(name: str, payload: bytes | None, signature: bytes | None,
                          keys: Sequence[bytes], job_id: int | None) -> None:
    if keys and not _signed_by_one_of(keys, signature, _SIGNED_CALL, name.encode(),
                                      payload or b""):
        how = "has no signature" if signature is None else "has a signature that matches " \
            "none of the secrets"
        raise SignatureError(
            f"job {job_id} ({_shortened(name, 200)}) {how}: it was not put by a queue "
            f"holding this secret, or its row was changed since; nothing of it was "
            f"imported or unpickled")


def _check_result_signature(result: bytes, signature: bytes | None, keys: Sequence[bytes],
                            job_id: int | None) -> None:
    if keys and not _signed_by_one_of(keys, signature, _SIGNED_RESULT, result):
        raise SignatureError(
            f"the result of job {job_id} is not signed with any of the secrets: it was "
            f"written by a runner without this secret, or changed since; it was not "
            f"unpickled")


# -- options -------------------------------------------------------------------


def _seconds(value: Any, what: str) -> float:
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError(f"{what} is too large: {value!r}") from None
    else:
        raise TypeError(f"{what} must be a timedelta or a number of seconds, "
                        f"not {_describe(value)}")
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"{what} must be a finite duration, not {value!r}")
    if seconds < 0:
        raise ValueError(f"{what} must not be negative, got {value!r}")
    return seconds




def _int_in_range(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{what} must be between {low} and {high}, got {value}")
    return value


def _positive_int(value: Any, what: str) -> int:
    return _int_in_range(value, what, 1, _INT64 - 1)


# Moments well inside what a datetime holds, checked without making one.
_SURELY_REPRESENTABLE = (
    datetime.datetime(2, 1, 1, tzinfo=datetime.timezone.utc).timestamp(),
    datetime.datetime(9998, 1, 1, tzinfo=datetime.timezone.utc).timestamp(),
)


def _representable(stamp: float, what: str) -> float:
    """Refuse a moment a datetime cannot hold (before year 1, after 9999)."""
    low, high = _SURELY_REPRESENTABLE
    if low < stamp < high:
        return stamp
    try:
        datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc)
    except (ValueError, OverflowError, OSError):
        raise ValueError(f"{what} is out of range: it must fall between the years "
                         f"1 and 9999") from None
    return stamp


def _timestamp(when: datetime.datetime, what: str) -> float:
    if when.tzinfo is None or when.tzinfo.utcoffset(when) is None:
        raise ValueError(
            f"{what} {when!r} is a naive datetime, which is ambiguous; give an aware "
            f"one, such as datetime.now(timezone.utc) + timedelta(minutes=5)"
        )
    return when.timestamp()


def _begin_after(value: Any, now: float) -> float:
    if value is None:
        return now
    if isinstance(value, datetime.datetime):
        return _timestamp(value, "begin_after")
    return now + _seconds(value, "begin_after")


@dataclasses.dataclass(frozen=True)
class Retry:
    """How often to run a job that raises, and how long to wait between runs.

    ``attempts`` is the total number of runs allowed for exceptions the job
    raises (so ``attempts=1`` never retries).  Run *n* waits
    ``delay * backoff ** (n - 1)`` seconds, varied by up to ``jitter`` (a
    fraction) either way, and capped at ``max_delay``.  Only exceptions that
    are instances of a type in ``on`` are retried; others fail the job at once.

    >>> Retry(attempts=5, delay=2.0, on=(ConnectionError, TimeoutError))
    ... # doctest: +SKIP
    """

    attempts: int = 3
    delay: float = 1.0
    backoff: float = 2.0
    max_delay: float = 3600.0
    jitter: float = 0.1
    on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        _int_in_range(self.attempts, "Retry attempts", 1, 2 ** 31 - 1)
        object.__setattr__(self, "delay", _seconds(self.delay, "Retry delay"))
        object.__setattr__(self, "max_delay", _seconds(self.max_delay, "Retry max_delay"))
        if (not isinstance(self.backoff, (int, float)) or isinstance(self.backoff, bool)
                or not 1 <= self.backoff < math.inf):
            raise ValueError(f"Retry backoff must be a finite number >= 1, "
                             f"got {self.backoff!r}")
        if not isinstance(self.jitter, (int, float)) or not 0 <= self.jitter <= 1:
            raise ValueError(f"Retry jitter must be between 0 and 1, got {self.jitter!r}")
        on = self.on if isinstance(self.on, tuple) else (self.on,)
        for cls in on:
            if not (isinstance(cls, type) and issubclass(cls, BaseException)):
                raise TypeError(f"Retry on= takes exception classes, not {cls!r}")
        object.__setattr__(self, "on", on)

    def delay_before(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before run ``attempt + 1``, after run ``attempt`` failed."""
        try:
            base = self.delay * self.backoff ** max(attempt - 1, 0)
        except OverflowError:
            base = math.inf if self.delay else 0.0
        base = min(base, self.max_delay)  # cap first, so jitter still spreads capped retries
        spread = base * self.jitter
        varied = base + (rng or random).uniform(-spread, spread)
        return max(0.0, min(varied, self.max_delay))

    def _to_json(self) -> str:
        return json.dumps({"delay": self.delay, "backoff": self.backoff,
                           "max_delay": self.max_delay, "jitter": self.jitter,
                           "on": [_qualified_type_name(cls) for cls in self.on]})


def _retry_delay(policy_json: str | None, attempt: int, exc_mro: Sequence[str]) -> float | None:
    """Seconds until the retry, or None if this exception is not retried."""
    if policy_json is None:
        return None
    policy = json.loads(policy_json)
    if not set(policy["on"]) & set(exc_mro):
        return None
    # Compare by qualified name: the exception types need not import here.
    spec = Retry(attempts=1, delay=policy["delay"], backoff=policy["backoff"],
                 max_delay=policy["max_delay"], jitter=policy["jitter"])
    return spec.delay_before(attempt)


# -- the options of a put ---------------------------------------------------------

# What a put uses for an option given neither to it nor to the job's function.
_PUT_DEFAULTS: dict[str, Any] = {
    "quotas": None,
    "begin_after": None, "begin_by": None, "retry": None, "priority": 0,
    "queue": DEFAULT_QUEUE, "timeout": None, "max_interruptions": DEFAULT_MAX_INTERRUPTIONS,
}
# Callbacks and postprocesses are the clean-up that must run: by default they
# retry interruptions for ever, waiting longer each time (_INTERRUPT_JOB).
_FOLLOWER_DEFAULTS: dict[str, Any] = {"max_interruptions": None}


def _quota_keys(quotas: Any) -> str | None:
    """The quotas a job counts against, as stored: a JSON list of distinct
    names, or NULL for none."""
    if quotas is None:
        return None
    if isinstance(quotas, str) or not isinstance(quotas, Iterable):
        raise TypeError(f"quotas is a list of names, such as ['pdf', 'customer:7'], "
                        f"not {_describe(quotas)}")
    names = list(dict.fromkeys(quotas))
    for name in names:
        if not isinstance(name, str) or not name or len(name) > 200:
            raise ValueError(f"a quota's name is a string of 1 to 200 characters, not {name!r}")
        _check_text(name, "a quota's name")
    return json.dumps(names) if names else None


def _row_options(now: float, *, begin_after: Any, begin_by: Any, retry: Retry | None,
                 priority: int, queue: str, key: str | None, timeout: float | None,
                 max_interruptions: int | None, quotas: Any = None) -> dict[str, Any]:
    """The columns of a new job's row that follow from the options of a put,
    each checked; raises TypeError or ValueError naming a bad one."""
    start = _begin_after(begin_after, now)
    deadline = None
    if begin_by is not None:
        window = _seconds(begin_by, "begin_by")
        if window == 0:
            raise ValueError("begin_by must be positive: it is how long after "
                             "begin_after the job may still start")
        deadline = start + window
    _representable(start, "begin_after")
    if deadline is not None:
        _representable(deadline, "begin_after + begin_by")
    if retry is not None and not isinstance(retry, Retry):
        raise TypeError(f"retry must be a litejobs.Retry, not {_describe(retry)}")
    _int_in_range(priority, "priority", -_INT64, _INT64 - 1)
    if not isinstance(queue, str) or not queue:
        raise ValueError(f"queue must be a non-empty string, not {queue!r}")
    _check_text(queue, "queue")
    if key is not None and not isinstance(key, str):
        raise TypeError(f"key must be a string or None, not {key!r}")
    if timeout is not None:
        timeout = _seconds(timeout, "timeout")
        if timeout == 0:
            raise ValueError("timeout must be positive")
    if max_interruptions is not None:
        _int_in_range(max_interruptions, "max_interruptions", 0, 2 ** 31 - 1)
    return {**_NEW_ROW, "queue": queue, "priority": priority, "key": key,
            "quotas": _quota_keys(quotas),
            "max_attempts": retry.attempts if retry else 1,
            "retry_policy": retry._to_json() if retry else None,
            "max_interruptions": _UNLIMITED if max_interruptions is None else max_interruptions,
            "timeout": timeout, "begin_after": start, "begin_by": deadline}


def _given(**options: Any) -> dict[str, Any]:
    """The options of a call that were given, not left at `_DEFAULT`."""
    return {name: value for name, value in options.items() if value is not _DEFAULT}


@functools.lru_cache(maxsize=1024)
def _options_of_name(name: str) -> Mapping[str, Any] | None:
    try:
        return _function_options(_resolve(name))
    except Exception:  # put says what is wrong with the name
        return None


def _function_options(fn: Any) -> Mapping[str, Any] | None:
    """The defaults a job function was given with `job`, if any."""
    if isinstance(fn, str):
        return _options_of_name(fn)
    while isinstance(fn, functools.partial):
        fn = fn.func
    try:
        options = getattr(fn, _OPTIONS_ATTRIBUTE, None)
    except Exception:  # an object whose __getattr__ raises something else
        return None
    return options if isinstance(options, dict) else None


class _Options:
    """The options of the rows of one put (or callback, or returned job): those
    given to the call win over those of each job's function (see `job`),
    which win over what follows from its role (callbacks and postprocesses
    retry interruptions for ever), which win over ``base``: litejobs'
    defaults, or the queue and priority a follower takes from its job.

    Rows are built once per function defaults and role, and copied."""

    def __init__(self, now: float, given: Mapping[str, Any],
                 base: Mapping[str, Any] = _PUT_DEFAULTS):
        unknown = sorted(set(given) - set(_PUT_DEFAULTS))
        if unknown:
            raise TypeError(f"unexpected option {', '.join(unknown)}; use those of Queue.put: "
                            f"{', '.join(_PUT_DEFAULTS)}")
        self.now = now
        self.given = given
        self.base = base
        self._rows: dict[tuple[int, bool], tuple[Mapping[str, Any] | None, dict[str, Any]]] = {}
        self.row(None, follower=False)  # checks the options given, even for no job

    def row(self, fn: Any, follower: bool) -> dict[str, Any]:
        """The columns of a row for a call of ``fn``; a follower is a callback
        or a postprocess.  Shared: copy it before changing it."""
        own = _function_options(fn)
        found = self._rows.get((id(own), follower))
        if found is None or found[0] is not own:
            merged = {**self.base, **(_FOLLOWER_DEFAULTS if follower else {}), **(own or {}),
                      **self.given}
            found = (own, _row_options(self.now, key=None, **merged))
            self._rows[(id(own), follower)] = found
        return found[1]


def job(fn: Callable[..., Any] | None = None, /, *,
        queue: str | _Default = _DEFAULT, priority: int | _Default = _DEFAULT,
        retry: Retry | None | _Default = _DEFAULT,
        timeout: float | None | _Default = _DEFAULT,
        max_interruptions: int | None | _Default = _DEFAULT) -> Any:
    """Give a job function defaults for the options of `Queue.put`, where it
    is defined::

        @litejobs.job(queue="pdf", retry=litejobs.Retry(3), timeout=60)
        def render_pdf(order_id): ...

        q.put(Job(render_pdf, 7))                # in queue "pdf", with that retry and timeout
        q.put(Job(render_pdf, 8), queue="rush")  # an option given to put wins

    Every put of the function uses them unless told otherwise: as a plain
    job, a part of a composite, a postprocess, a callback (which otherwise
    runs in its job's queue and priority) or a job returned by a job.  The
    function itself is returned unchanged, still an ordinary function to
    call directly.  ``max_interruptions=None`` retries interruptions for
    ever.  Bad options raise here, at definition.
    """
    options = _given(queue=queue, priority=priority, retry=retry, timeout=timeout,
                     max_interruptions=max_interruptions)
    _row_options(0.0, key=None, **{**_PUT_DEFAULTS, **options})  # checked once, here

    def decorate(target: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(target):
            raise TypeError(f"litejobs.job decorates a function, not {_describe(target)}")
        _refuse_async(target, _name_of(target))
        setattr(target, _OPTIONS_ATTRIBUTE, dict(options))
        return target

    return decorate if fn is None else decorate(fn)


class _Column(Generic[_T]):
    """A read-only attribute of a `Job` (see `_JobRow`) that shows one column
    of its row: as stored, or through ``convert``; ``default`` before the
    job is put (or when the column is NULL, for a default given)."""

    def __init__(self, column: str, *, doc: str, default: Any = None,
                 convert: Callable[[Any], _T] | None = None):
        self.column = column
        self.default = default
        self.convert = convert
        self.__doc__ = doc

    @overload
    def __get__(self, job: None, owner: type) -> _Column[_T]: ...

    @overload
    def __get__(self, job: _JobRow, owner: type) -> _T: ...

    def __get__(self, job: _JobRow | None, owner: type) -> _Column[_T] | _T:
        if job is None:
            return self
        value = job._row.get(self.column)
        if value is None:
            value = self.default
        return value if self.convert is None else self.convert(value)

    def __set__(self, job: _JobRow, value: Any) -> None:
        raise AttributeError(f"a job's {self.column} is read-only: it shows its row")


def _time_column(column: str, doc: str) -> _Column[datetime.datetime | None]:
    """A `_Column` of Unix seconds, shown as an aware datetime in UTC."""
    return _Column[datetime.datetime | None](column, convert=_to_datetime, doc=doc)


class _JobRow:
    """Where a job stands, as its row last read shows it: the attributes of
    `Job` that only read a column (or a few).  It owns that row, which
    `Job.refresh` replaces."""

    def __init__(self, row: dict[str, Any]):
        self._row = row

    status = _Column[str | None](
        "status",
        doc="One of `PENDING`, `ACTIVE`, `COMPLETED`, `FAILED`, `CANCELLED`; None before put.")
    queue = _Column[str | None]("queue", doc="The name of the queue the job is in.")
    priority = _Column[int | None]("priority", doc="Larger runs first among due jobs.")
    key = _Column[str | None]("key", doc="The unique key given to `Queue.put`, if any.")
    quotas = _Column[list[str]](
        "quotas", default="[]", convert=json.loads,
        doc="The quotas the job counts against while it runs (`Queue.set_quota`).")
    attempts = _Column[int](
        "attempts", default=0, convert=int,
        doc="The number of the latest run, the current one included: every run gets the "
            "next number, but for a claim a stopping pool gave back before the run began.  "
            "Interruptions, runs handed back by a stopping pool and claims taken back as "
            "not started do not count against `Retry`.")

    attempt = attempts  # zc.async's name

    max_attempts = _Column[int](
        "max_attempts", default=1, convert=int,
        doc="How many runs its `Retry` policy allows for exceptions (1 without one).")
    interruptions = _Column[int](
        "interruptions", default=0, convert=int,
        doc="How many runs ended without an outcome (process killed, lease lost).")

    @property
    def max_interruptions(self) -> int | None:
        """How many interruptions the job may have before it fails as
        `Interrupted`; None for no limit (the default of callbacks and
        postprocesses)."""
        most = self._row.get("max_interruptions", DEFAULT_MAX_INTERRUPTIONS)
        return None if most == _UNLIMITED else int(most)

    handbacks = _Column[int](
        "handbacks", default=0, convert=int,
        doc="How many runs a stopping pool (a deploy, say) ended after its grace and "
            "handed back: they count neither as attempts nor as interruptions.")

    @property
    def stop_requested(self) -> bool:
        """Whether `request_stop` asked the job to stop.  Inside the running
        job, it turns True within about a second of the request: the job may
        then wrap up and return early, before its pool stops it."""
        return self._row.get("stop_requested") is not None

    timeout = _Column[float | None](
        "timeout", doc="The hard time limit of a run in seconds, enforced by worker pools.")
    created_at = _time_column("created_at", "When the job was put (aware, UTC).")
    begin_after = _time_column("begin_after",
                               "The job does not start before this moment (aware, UTC).")
    begin_by = _time_column("begin_by",
                            "The job fails instead of starting after this moment (aware, UTC).")
    started_at = _time_column("started_at", "When the latest run started (aware, UTC).")
    finished_at = _time_column("finished_at", "When the job ended (aware, UTC).")
    error = _Column[str | None]("error", doc="The full traceback text of the last failure.")
    error_type = _Column[str | None](
        "error_type", doc="The qualified name of the last failure's exception type.")
    progress = _Column[float | None](
        "progress", doc="The fraction done, from 0 to 1, as the job last reported it with "
                        "`set_progress`; None if it never did.")
    progress_message = _Column[str | None](
        "progress_message", doc="The message of the last `set_progress`, if any.")

    @property
    def meta(self) -> dict[str, Any]:
        """A copy of the small JSON dict the job keeps with `update_meta`."""
        text = self._row.get("meta")
        return {} if text is None else dict(json.loads(text))

    ran_by = _Column[str | None](
        "ran_by",
        doc="The pool (or ``run_pending`` caller) that ran the latest attempt.")

    @property
    def history(self) -> list[dict[str, Any]]:
        """What the status alone no longer shows: each attempt that ended
        without ending the job (``"retried"``, ``"interrupted"``, and
        ``"outcome lost"`` for a run whose outcome died with its process when
        another job killed it) and each ``"retried by hand"``, as dicts with
        ``at`` (an aware datetime), ``event``, ``attempt``, ``by`` and
        ``error`` (its last line)."""
        entries = json.loads(self._row.get("history") or "[]")
        return [{**entry, "at": _to_datetime(entry["at"])} for entry in entries]


# -- awaiting jobs from asyncio ----------------------------------------------------


class _AsyncWaits:
    """The jobs awaited from event loops on one queue, and the one thread
    that watches them, so that an event loop neither polls nor touches the
    database.  After each commit of another connection (the storage's
    `watch_commits`: the WAL's inotify on SQLite, LISTEN on PostgreSQL) the
    thread reads the ends since its last look (`_ENDED_SINCE`), and every
    `_AWAITED_RECHECK` the status of every awaited job (`_STATUSES_AMONG`);
    it wakes the awaiters of those that ended on their own loops.  It owns
    the awaiters, by job id, and the thread, which runs while any is left."""

    def __init__(self, storage: _Storage):
        self._storage = storage
        self._lock = threading.Lock()  # guards the three below
        self._awaiters: dict[int, list[tuple[asyncio.AbstractEventLoop,
                                             asyncio.Future[None]]]] = {}
        self._thread: threading.Thread | None = None
        self._closing = False  # the queue is closing: the thread ends at its next look

    def add(self, job_ids: Iterable[int]) -> dict[int, asyncio.Future[None]]:
        """A future for each job, set once it has ended (on the running loop)."""
        import asyncio
        loop = asyncio.get_running_loop()
        futures = {job_id: loop.create_future() for job_id in job_ids}
        with self._lock:
            for job_id, future in futures.items():
                self._awaiters.setdefault(job_id, []).append((loop, future))
            self._start_locked()
        return futures

    def _start_locked(self) -> None:
        self._closing = False
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, daemon=True,
                                            name="litejobs-awaits")
            self._thread.start()

    def pause(self) -> None:
        """End the thread, for `Queue.close` to close the connections it uses."""
        with self._lock:
            self._closing = True
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=_SAFETY_CHECK_INTERVAL * 4)

    def resume(self) -> None:
        """After `pause`: a thread again if jobs are still awaited (on new
        connections: a closed queue reopens them when used)."""
        with self._lock:
            if self._awaiters:
                self._start_locked()

    def remove(self, futures: Mapping[int, asyncio.Future[None]]) -> None:
        with self._lock:
            for job_id, future in futures.items():
                kept = [entry for entry in self._awaiters.get(job_id, ())
                        if entry[1] is not future]
                if kept:
                    self._awaiters[job_id] = kept
                else:
                    self._awaiters.pop(job_id, None)

    def check(self, job_ids: Sequence[int], statuses: Mapping[int, str] | None = None) -> None:
        """Wake the awaiters of those of ``job_ids`` that ended, or are gone
        (their awaiters then read `JobNotFound`), by ``statuses`` if given,
        else by their statuses read now."""
        if statuses is None:
            statuses = self._storage.statuses_among(job_ids)
        self._wake([job_id for job_id in job_ids
                    if job_id not in statuses or self._ended(job_id, statuses[job_id])])

    def _ended(self, job_id: int, status: str) -> bool:
        # As `Job.wait`: a cancelled job has ended once what ran under it has.
        return status in _FINISHED and (
            status != CANCELLED or not self._storage.unfinished_under(job_id))

    def _wake(self, job_ids: Iterable[int]) -> None:
        with self._lock:
            woken = [entry for job_id in job_ids for entry in self._awaiters.pop(job_id, ())]
        for loop, future in woken:
            with contextlib.suppress(RuntimeError):  # its loop has closed
                loop.call_soon_threadsafe(_set_awaited, future)

    def _watch(self) -> None:
        watch = self._storage.watch_commits()
        looked = self._storage.clock()
        rechecked = time.monotonic()
        try:
            while True:
                with self._lock:
                    awaited = list(self._awaiters)
                    if not awaited or self._closing:
                        self._thread = None
                        return
                try:
                    now = self._storage.clock()
                    if time.monotonic() - rechecked >= _AWAITED_RECHECK:
                        rechecked = time.monotonic()
                        self.check(awaited)
                    else:
                        ended = self._storage.ended_since(looked - _ENDS_LAG)
                        ended_here = [job_id for job_id in awaited if job_id in ended]
                        if ended_here:
                            self.check(ended_here, ended)
                    looked = now
                except LitejobsError as exc:
                    _log.warning("awaiting jobs: %s; trying again", exc)
                    time.sleep(_BUSY_BACKOFF)
                    continue
                watch.wait(_SAFETY_CHECK_INTERVAL)
        finally:
            watch.close()
            self._storage.close_thread_connection()


def _set_awaited(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


_Awaited = list[tuple[_AsyncWaits, dict[int, "asyncio.Future[None]"]]]


def _register(jobs: Iterable[Job]) -> _Awaited:
    """A future for each of ``jobs``, from its queue's `_AsyncWaits`; undo
    with `_unregister`."""
    groups: dict[int, tuple[_AsyncWaits, list[int]]] = {}
    for job in jobs:
        waits = job._require_queue()._async_waits
        groups.setdefault(id(waits), (waits, []))[1].append(job._require_id())
    return [(waits, waits.add(ids)) for waits, ids in groups.values()]


async def _check_registered(registered: _Awaited) -> None:
    """Wake the futures of the jobs that ended before they existed."""
    import asyncio
    for waits, futures in registered:
        await asyncio.to_thread(waits.check, list(futures))


def _unregister(registered: _Awaited) -> None:
    for waits, futures in registered:
        waits.remove(futures)


async def _await_ended(jobs: Sequence[Job], timeout: float | None,
                       refresh: bool = True) -> None:
    """Return once every one of ``jobs`` has ended (as `Job.wait` means it),
    each refreshed unless told not to; raise `WaitTimeout` after ``timeout``
    seconds."""
    import asyncio
    registered = _register(jobs)
    try:
        await _check_registered(registered)
        pending = [future for _, futures in registered for future in futures.values()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout)
            if late:
                await asyncio.to_thread(_refresh_all, jobs)
                left = [job for job in jobs if job.status not in _FINISHED]
                first = left[0] if left else jobs[0]
                raise WaitTimeout(
                    f"{len(left)} of {len(jobs)} jobs did not end within {timeout}s; job "
                    f"{first.id} ({first.name}) is {first.status}.  Is a worker serving "
                    f"queue {first.queue!r}?" if len(jobs) > 1 else
                    f"job {first.id} ({first.name}) did not end within {timeout}s; it is "
                    f"{first.status}.  Is a worker serving queue {first.queue!r}?  (In "
                    f"tests, Queue.run_pending() runs due jobs in-process.)")
    finally:
        _unregister(registered)
    if refresh:
        await asyncio.to_thread(_refresh_all, jobs)


def _refresh_all(jobs: Iterable[Job]) -> None:
    for job in jobs:
        job.refresh()


class Job(_JobRow):
    """A call to run later: ``Job(function, *args, **kwargs)``.

    Before `Queue.put` it is only a description.  ``put`` stores it and binds
    it to its row; from then on ``id``, ``status``, ``result``, ``error`` and
    the rest reflect the database as of the last `refresh` (``wait`` and
    ``cancel`` refresh too).

    >>> job = q.put(Job(render_pdf, 7, dpi=300))        # doctest: +SKIP
    >>> job.wait(timeout=30)                            # doctest: +SKIP
    """

    def __init__(self, fn: Callable[..., Any] | str, /, *args: Any, **kwargs: Any):
        super().__init__({})
        self._call: tuple[Any, tuple[Any, ...], dict[str, Any]] | None = (fn, args, kwargs)
        self._queue: Queue | None = None
        self._result_cache: tuple[Any] | None = None
        self._reporter: _Reporter | None = None  # set while the job runs here
        self._own_meta: dict[str, Any] = {}  # the meta keys the running job set here

    @classmethod
    def _bound(cls, queue: Queue, row: dict[str, Any]) -> Job:
        job = cls.__new__(cls)
        job._call = None
        job._queue = queue
        job._row = row
        job._result_cache = None
        job._reporter = None
        job._own_meta = {}
        return job

    def __getstate__(self) -> dict[str, Any]:
        # A reporter, and what the run set, stay in the process running it.
        return {**self.__dict__, "_reporter": None, "_own_meta": {}}

    def _require_queue(self) -> Queue:
        if self._queue is None:
            raise LitejobsError(f"{self!r} has not been put in a queue yet")
        return self._queue

    # -- what was asked ------------------------------------------------------

    id = _Column[int | None]("id", doc="The job's id in its queue, or None before it is put.")

    @property
    def name(self) -> str:
        """The readable name of the callable, such as ``package.module:function``."""
        if "name" in self._row:
            return str(self._row["name"])
        assert self._call is not None
        fn = self._call[0]
        return fn if isinstance(fn, str) else _name_of(fn)

    def _loaded_call(self) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
        if self._call is None:
            queue = self._require_queue()
            payload, signature = queue._storage.fetch_blob(self._require_id(), "payload")
            self._call = _load_call(self.name, payload, signature, queue._storage.secrets,
                                    self.id)
        return self._call

    @property
    def callable(self) -> Any:
        """The function to call (unpickled from the database on first use)."""
        fn = self._loaded_call()[0]
        return _resolve(fn) if isinstance(fn, str) else fn

    @property
    def args(self) -> tuple[Any, ...]:
        """Positional arguments of the call."""
        return self._loaded_call()[1]

    @property
    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the call."""
        return self._loaded_call()[2]

    # -- inside the running job -------------------------------------------------

    def set_progress(self, fraction: float, message: str | None = None) -> None:
        """Report how far the running job is, from 0 to 1, with an optional
        message.  Call it as often as you like: writes are throttled to one
        a second, and the latest value always reaches the database within
        about a second, and before the job's outcome.  Only inside the job,
        on ``current_job()``."""
        reporter = self._require_reporter("set_progress")
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
                or not 0 <= fraction <= 1:
            raise ValueError(f"progress is a fraction from 0 to 1, not {fraction!r}")
        if message is not None and not isinstance(message, str):
            raise TypeError(f"the progress message must be a string, not {_describe(message)}")
        self._row["progress"] = float(fraction)
        self._row["progress_message"] = None if message is None \
            else _storable(message[:_MESSAGE_MOST])
        reporter.changed(self._row)

    def update_meta(self, **items: Any) -> None:
        """Merge ``items`` into the job's meta, a small dict of JSON values that
        anyone can read (`meta`, ``show``) while the job runs and after.

        Inside the running job, on ``current_job()``, it is written like
        `set_progress`.  Anywhere else it is written at once, whatever the
        job's status, and a running job sees it in ``current_job().meta``
        within about a second: a way to steer a long job while it runs.  The
        keys a running job sets itself keep, in its own view, the values it
        gave them."""
        reporter = self._reporter
        if reporter is None or _CURRENT_JOB.get() is not self:
            queue = self._require_queue()
            self._row["meta"] = queue._storage.update_meta(
                self._require_id(), items, created_at=self._row.get("created_at"))
            return
        self._row["meta"] = _merged_meta(self._row.get("meta"), items)
        self._own_meta.update(items)
        reporter.changed(self._row, items)

    def request_stop(self, grace: float | datetime.timedelta = DEFAULT_STOP_GRACE) -> bool:
        """Ask the job to stop, giving it ``grace`` seconds to do so itself.

        A running job sees ``current_job().stop_requested`` turn True within
        about a second, and may return early at its next safe point; its
        outcome is then recorded as usual (a result it returns completes it),
        except that it is not retried.  A pool stops it once ``grace`` has
        passed, and it ends `CANCELLED`.  A job that is not running is
        cancelled at once, and the running parts of a composite are asked to
        stop in the same way.  Returns False if the job had already ended.
        (`Queue.run_pending` runs no pool: there, the job alone decides.)
        """
        queue = self._require_queue()
        now = _now(queue._storage)
        deadline = _representable(now + _seconds(grace, "grace"), "now + grace")
        status = queue._storage.request_stop(self._require_id(), now, deadline,
                                             created_at=self._row.get("created_at"))
        self.refresh()
        return status is not None

    def _require_reporter(self, what: str) -> _Reporter:
        if self._reporter is None or _CURRENT_JOB.get() is not self:
            raise LitejobsError(f"{what} works only inside the running job, on "
                                f"litejobs.current_job()")
        return self._reporter

    @property
    def result(self) -> Any:
        """The return value of a completed job; None otherwise."""
        if self.status != COMPLETED:
            return None
        if self._result_cache is None:
            data = self._signed_blob("result")
            self._result_cache = (None if data is None else pickle.loads(data),)
        return self._result_cache[0]

    def _signed_blob(self, column: str) -> bytes | None:
        """The job's pickled call (``"payload"``) or ``"result"`` as stored,
        once its signature holds, if the queue has secrets; raises
        `SignatureError` otherwise.  Nothing is unpickled here."""
        storage = self._require_queue()._storage
        data, signature = storage.fetch_blob(self._require_id(), column)
        if column == "payload":
            _check_call_signature(self.name, data, signature, storage.secrets, self.id)
        elif data is not None:
            _check_result_signature(data, signature, storage.secrets, self.id)
        return data

    def _require_id(self) -> int:
        job_id = self.id
        if job_id is None:
            raise LitejobsError(f"{self!r} has not been put in a queue yet")
        return job_id

    # -- actions -------------------------------------------------------------

    def refresh(self) -> Job:
        """Reload the job's state from the database; return the job."""
        queue = self._require_queue()
        row = queue._storage.fetch(self._require_id())
        if row is None or row["created_at"] != self._row.get("created_at", row["created_at"]):
            # A different created_at: this job's put was rolled back, and its
            # id now names another job.
            raise JobNotFound(f"job {self.id} is not in {queue.path}: it was purged, or "
                              f"the transaction that put it was rolled back")
        if (row["status"], row["finished_at"]) != (self._row.get("status"),
                                                   self._row.get("finished_at")):
            self._result_cache = None
        self._row = row
        return self

    def wait(self, timeout: float | None = None) -> Any:
        """Wait until the job ends; return its result.

        Raises `JobFailed` (with the traceback) if it failed, `JobCancelled`
        if it was cancelled, and `WaitTimeout` if ``timeout`` seconds pass
        first.  Nothing runs the job but a worker or `Queue.run_pending`.
        """
        self._wait_until(self._ended_with_all_under_it, timeout, "end")
        return self._outcome()

    def _outcome(self) -> Any:
        """The result of the job, which has ended; or its error, raised."""
        if self.status == COMPLETED:
            return self.result
        if self.status == CANCELLED:
            raise JobCancelled(self, self.error_type, self.error)
        raise JobFailed(self, self.error_type, self.error)

    # -- from asyncio ------------------------------------------------------------

    async def await_result(self, timeout: float | None = None) -> Any:
        """`wait`, for a coroutine: ``await job.await_result(30)``, or
        ``await job`` (no timeout).  The event loop never waits on the
        database: a thread of the queue's watches for commits, as `wait`
        does, for every job awaited, and reads run in the loop's executor."""
        import asyncio
        await _await_ended([self], timeout, refresh=False)
        return await asyncio.to_thread(self._refreshed_outcome)

    def _refreshed_outcome(self) -> Any:
        self.refresh()
        return self._outcome()

    def __await__(self) -> Any:
        return self.await_result().__await__()

    async def acancel(self) -> bool:
        """`cancel`, from a coroutine (the write runs off the event loop)."""
        import asyncio
        return await asyncio.to_thread(self.cancel)

    async def arefresh(self) -> Job:
        """`refresh`, from a coroutine."""
        import asyncio
        return await asyncio.to_thread(self.refresh)

    def _ended_with_all_under_it(self) -> bool:
        """Whether the job has ended, and, if it was cancelled, the parts (and
        the job it returned) that were still running then have ended too, so
        that it can be retried."""
        if self.status not in _FINISHED:
            return False
        return self.status != CANCELLED or not self._require_queue()._storage.unfinished_under(
            self._require_id())

    def _wait_until(self, done: Callable[[], bool], timeout: float | None, what: str) -> None:
        """Refresh until ``done()``: after each commit by another connection,
        which the storage's watch reports within a millisecond or so."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self.refresh()
        if done():
            return
        watch = self._require_queue()._storage.watch_commits()
        try:
            self.refresh()  # what committed before the watch began
            while not done():
                remaining = math.inf if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout(
                        f"job {self.id} ({self.name}) did not {what} within {timeout}s; it "
                        f"is {self.status}.  Is a worker serving queue {self.queue!r}?  "
                        f"(In tests, Queue.run_pending() runs due jobs in-process.)"
                    )
                if watch.wait(min(remaining, _SAFETY_CHECK_INTERVAL)):
                    self.refresh()
        finally:
            watch.close()

    def cancel(self, *, conn: sqlite3.Connection | None = None) -> bool:
        """Cancel the job.  A pending or waiting job is cancelled at once and
        never runs.

        An active job is flagged: its run's result is discarded and it ends
        `CANCELLED` (a worker pool also stops the run).  Cancelling a
        composite, or a job waiting on a job it returned, cancels in the same
        way everything under it that has not ended.  Callbacks still run, and
        get a `Failure`.  Returns False if the job had already ended.

        With ``conn``, the cancel is written in that open transaction of the
        application's, as with `Queue.put`.
        """
        queue = self._require_queue()
        status = queue._storage.cancel(self._require_id(), _now(queue._storage),
                                       created_at=self._row.get("created_at"), conn=conn)
        if conn is None:
            self.refresh()
        return status is not None

    def retry(self) -> str:
        """Run a failed or cancelled job again, from a fresh start, keeping
        what it went through in `history`.  A composite runs again the parts
        that did not complete, then its postprocess.  A part of a composite
        that has ended runs again, and the composite (and those around it)
        re-opens around it: its postprocess runs again after the part, so
        that its result reflects the part's new outcome.  Returns the status
        after; raises ValueError if the job is not failed or cancelled, or is
        a part of a composite that has not ended."""
        queue = self._require_queue()
        status = queue._storage.reopen(self._require_id(), _now(queue._storage))
        self.refresh()
        return status

    # -- composition ------------------------------------------------------------

    @property
    def composite(self) -> str | None:
        """``"parallel"`` or ``"serial"`` for a job put from `parallel` or
        `serial`, else None."""
        kind = self._row.get("composite")
        return None if kind is None else str(kind).partition("_")[0]

    @property
    def role(self) -> str | None:
        """How the job hangs under its `parent`: ``"part"`` of a composite,
        ``"result"`` (a job its parent returned), or the callback kinds
        ``"callback"``, ``"success"``, ``"failure"`` and ``"callbacks"``;
        None for a job put on its own."""
        return self._row.get("role")

    def parent(self) -> Job | None:
        """The composite this is a part of, the job this is a callback of, or
        the job that returned this one; None for a job put on its own."""
        parent_id = self._row.get("parent_id")
        return None if parent_id is None else self._require_queue().get(parent_id)

    def explain(self) -> list[str]:
        """Why the job is where it is, as of now: a line for each reason, for
        example ``due in 4m00s``, ``queue 'pdf' paused``, ``quota 'customer:7'
        full (1 of 1: job 812 on host-b)``, ``waiting for 3 of 10 parts``, ``no
        live pool serves queue 'io'``, ``deadline passed``.  Reads the job again."""
        queue = self._require_queue()
        return _explain(queue, self.refresh())

    def children(self) -> list[Job]:
        """The jobs under this one, read now: a composite's parts in order,
        then the job this one returned, then its callbacks in the order added.
        Each has its `role`, and ``status``, ``result`` and ``error``."""
        queue = self._require_queue()
        return [Job._bound(queue, row)
                for row in queue._storage.children(self._require_id(), None)]

    def add_callback(self, item: Job | Callable[..., Any] | str, *,
                     conn: sqlite3.Connection | None = None, **options: Any) -> Job:
        """Run ``item`` as a job of its own once this job ends, with one more
        argument after those it has: this job's result if it completed, or a
        `Failure` if it failed or was cancelled.  Returns the callback job.

        Added to a job that has already ended, the callback is due at once.
        Every callback of a job gets that job's result; to chain, add a
        callback to the callback.  ``options`` are those of `Queue.put`
        (``queue`` and ``priority`` default to this job's), ``conn`` too.
        """
        return self._add_callback("callback", [item], options, conn)

    def add_callbacks(self, success: Job | Callable[..., Any] | str | None = None,
                      failure: Job | Callable[..., Any] | str | None = None, *,
                      conn: sqlite3.Connection | None = None, **options: Any) -> Job:
        """Like `add_callback`, but run ``success(result)`` if this job
        completes and ``failure(Failure)`` if it fails or is cancelled: one
        callback job runs the side that matches.  If that side was not given,
        the callback job ends `CANCELLED` without running."""
        if success is None and failure is None:
            raise ValueError("add_callbacks needs success=, failure= or both")
        if failure is None:
            return self._add_callback("success", [success], options, conn)
        if success is None:
            return self._add_callback("failure", [failure], options, conn)
        return self._add_callback("callbacks", [success, failure], options, conn)

    def _add_callback(self, role: str, items: list[Any], options: dict[str, Any],
                      conn: sqlite3.Connection | None) -> Job:
        queue = self._require_queue()
        job_id = self._require_id()
        if "key" in options or "begin_by" in options:
            raise TypeError("a callback takes no key or begin_by")
        now = _now(queue._storage)
        common = _Options(now, _given(**options), base={
            **_PUT_DEFAULTS, "queue": self.queue, "priority": self.priority})
        planned = []
        for item in items:
            if isinstance(item, Composite):
                raise TypeError("a callback is a callable or a Job, not a composite; "
                                "to run a composite after a job, return it from a callback")
            planned.append(_plan_tree(item, common, set(), dormant=True, follower=True))
        tree = planned[0][0]
        tree[0]["role"] = role
        if role == "callbacks":
            sides = [(rows[0]["name"], rows[0]["payload"]) for rows, _ in planned]
            tree[0]["name"] = " | ".join(name for name, _ in sides)
            tree[0]["payload"] = pickle.dumps((_run_matching_side, tuple(sides), {}),
                                              protocol=_PICKLE_PROTOCOL)
        row = queue._storage.add_callback(job_id, tree, now, conn=conn,
                                          created_at=self._row.get("created_at"))
        bound = planned[0][1]
        if bound and role != "callbacks":
            bound[0][1]._queue, bound[0][1]._row = queue, row
            return bound[0][1]
        return Job._bound(queue, row)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Job) or self.id is None or other.id is None:
            return self is other
        return (self.id, self._require_queue().path) == (other.id, other._require_queue().path)

    def __hash__(self) -> int:
        return id(self) if self.id is None else hash(self.id)

    def __repr__(self) -> str:
        if self.id is None:
            return f"<litejobs.Job {self.name} (not put)>"
        kind = self.composite
        what = self.name if kind is None or self.name == f"litejobs:{kind}" \
            else f"{kind}, then {self.name}"
        return f"<litejobs.Job {self.id} {what} {self.status}>"


class Failure:
    """What a callback gets instead of a result when the job it follows did
    not complete: ``job`` (that `Job`), its ``status`` (`FAILED` or
    `CANCELLED`), ``error`` (the full traceback text) and ``error_type``."""

    def __init__(self, job: Job):
        self.job = job

    @property
    def status(self) -> str | None:
        return self.job.status

    @property
    def error(self) -> str | None:
        return self.job.error

    @property
    def error_type(self) -> str | None:
        return self.job.error_type

    def __repr__(self) -> str:
        return f"<litejobs.Failure of job {self.job.id}: {self.status} {self.error_type or ''}>"


async def wait_all(jobs: Iterable[Job], timeout: float | None = None) -> list[Job]:
    """Wait, from a coroutine, until every one of ``jobs`` has ended; return
    them, refreshed, in the order given (read each one's ``result``, or
    ``status`` and ``error``).  Raises `WaitTimeout` after ``timeout``
    seconds.  No polling: see `Job.await_result`."""
    jobs = list(jobs)
    await _await_ended(jobs, timeout)
    return jobs


async def as_completed(jobs: Iterable[Job],
                       timeout: float | None = None) -> AsyncIterator[Job]:
    """Yield each of ``jobs``, refreshed, as it ends (``async for job in
    litejobs.as_completed(jobs)``); raises `WaitTimeout` once ``timeout``
    seconds have passed with jobs left."""
    import asyncio
    left = {job._require_id(): job for job in jobs}
    deadline = None if timeout is None else time.monotonic() + timeout
    registered = _register(left.values())
    owner = {future: job_id for _, futures in registered for job_id, future in futures.items()}
    try:
        await _check_registered(registered)
        while owner:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = await asyncio.wait(owner, timeout=remaining,
                                         return_when=asyncio.FIRST_COMPLETED)
            if not done:
                raise WaitTimeout(f"{len(owner)} of the jobs did not end within {timeout}s")
            for future in sorted(done, key=owner.__getitem__):
                job = left.pop(owner.pop(future))
                await job.arefresh()
                yield job
    finally:
        _unregister(registered)


def wait_for_result(job: Job, timeout: float = 5.0) -> Any:
    """Wait for ``job`` to end and return its result, or, if it failed or was
    cancelled, a `Failure` describing that, as zc.async's helper of the same
    name returns the failure: for tests ported from it.  Raises `WaitTimeout`
    if the job has not ended within ``timeout`` seconds.  (`Job.wait` raises
    `JobFailed` instead.)"""
    try:
        return job.wait(timeout=timeout)
    except JobFailed:
        return Failure(job)


def wait_for_start(job: Job, timeout: float = 5.0) -> Job:
    """Wait until ``job`` has started (or ended); return it."""
    job._wait_until(lambda: job.started_at is not None or job.status in _FINISHED,
                    timeout, "start")
    return job


@dataclasses.dataclass
class _Outcome:
    """What one run of a job produced, in a form any process can record."""

    ok: bool
    result: bytes | None = None
    error: str | None = None
    error_type: str | None = None
    exc_mro: tuple[str, ...] = ()
    follow: int | list[dict[str, Any]] | None = None  # a returned job: see _follow_up
    refused: bool = False  # the runner could not load the call: see `_Refusals`

    @classmethod
    def failure(cls, exc: BaseException, *, refused: bool = False) -> _Outcome:
        return cls(ok=False, error=_storable("".join(traceback.format_exception(exc))),
                   error_type=_qualified_type_name(type(exc)),
                   exc_mro=tuple(_qualified_type_name(c) for c in type(exc).__mro__),
                   refused=refused)


# What most runs of quick jobs produce: completed, returning None.  Shared, never changed.
_PLAIN_COMPLETION = _Outcome(ok=True)


def _raised(error: BaseException, cause: BaseException | None = None) -> BaseException:
    """``error``, raised (from ``cause``) and caught here, so that its text
    has a traceback like any other failure."""
    try:
        raise error from cause
    except BaseException as caught:
        return caught


class _Reporter:
    """Carries a running job's progress and meta to the database: at most one
    write per ``interval``, and the latest state always within it (a timer
    writes what a quiet job left pending), and at `close`."""

    def __init__(self, write: Callable[[dict[str, Any]], None],
                 interval: float | None = None):
        self._write = write
        self._interval = _PROGRESS_INTERVAL if interval is None else interval
        self._lock = threading.Lock()
        self._pending: dict[str, Any] | None = None
        self._written_at = -math.inf
        self._timer: threading.Timer | None = None

    def changed(self, row: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> None:
        """The running job's progress changed, or it set the ``meta`` keys."""
        with self._lock:
            unsent = {} if self._pending is None else self._pending["meta"]
            self._pending = {"progress": row.get("progress"),
                             "message": row.get("progress_message"),
                             "meta": {**unsent, **(meta or {})}}
            if self._timer is not None:
                return  # the timer writes it, on time
            wait = self._written_at + self._interval - time.monotonic()
            if wait <= 0:
                self._flush()
            else:
                self._timer = threading.Timer(wait, self.flush)
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> None:
        with self._lock:
            self._timer = None
            self._flush()

    def _flush(self) -> None:
        if self._pending is None:
            return
        fields, self._pending = self._pending, None
        self._written_at = time.monotonic()
        try:
            self._write(fields)
        except LitejobsError as exc:  # progress is advisory: the job goes on
            _log.warning("could not write the progress of a job: %s", exc)

    def close(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._flush()


class _Call:
    """One run of a job in this process, from loading its call to its
    outcome, for `Queue.run_pending` and the worker processes alike.  It
    owns the job, the reporter of its progress and meta, and the context in
    which the job's code runs (where `current_job` finds it): a coroutine's
    task runs in that context too, so that many async jobs on one event loop
    each see their own.  ``stop_reason`` says why its task was cancelled, if
    it was: its timeout, or a cancel."""

    def __init__(self, job: Job, payload: bytes | None, signature: bytes | None,
                 report: Callable[[dict[str, Any]], None] | None = None):
        self.job = job
        self.payload = payload
        self.signature = signature
        self.reporter = job._reporter = None if report is None else _Reporter(report)
        self.context = contextvars.copy_context()
        self.context.run(_CURRENT_JOB.set, job)
        self.stop_reason: str | None = None
        self.task: asyncio.Task[Any] | None = None

    def start(self, only_async: bool = False) -> _Outcome | Coroutine[Any, Any, Any] | None:
        """Call the job's function: the outcome, or, for an async job, the
        coroutine to run (`run_coroutine`); with ``only_async``, None, not
        calling it, if it is not a coroutine function.  Only
        KeyboardInterrupt escapes; everything else the job raises, a
        function that no longer imports included, becomes a failure with
        its traceback."""
        job = self.job
        try:
            try:
                fn, args, kwargs = _load_call(job.name, self.payload, self.signature,
                                              job._require_queue()._storage.secrets, job.id)
            except (ImportError, AttributeError) as exc:
                # The callable, or a class its arguments need, does not import in
                # this process (a missing PYTHONPATH, a pool not yet deployed): the
                # runner's problem, not the job's.  See _Refusals.
                return self._ended(_Outcome.failure(exc, refused=True))
            if only_async and not inspect.iscoroutinefunction(_called(fn)):
                return None
            _crash_point("in-job")
            value = self.context.run(_call_with_inputs, fn, args, kwargs, job)
        except KeyboardInterrupt:
            self._ended(_PLAIN_COMPLETION)
            raise
        except BaseException as exc:
            return self._ended(_failed_call(exc, frames=2))
        if inspect.iscoroutine(value):
            return value
        return self.context.run(self._outcome_of, value)

    async def run_coroutine(self, coroutine: Coroutine[Any, Any, Any]) -> _Outcome:
        """Await the job's coroutine, in the job's context: its outcome.  Its
        timeout cancels it (`JobTimeout`), as may a cancel (`stop`)."""
        import asyncio
        loop = asyncio.get_running_loop()
        timeout = self.job._row.get("timeout")
        timer = None if timeout is None else loop.call_later(timeout, self.stop, "timeout")
        try:
            value = await coroutine
        except asyncio.CancelledError as exc:
            if self.stop_reason is None:
                raise  # the loop itself is closing
            return self._ended(_Outcome.failure(_raised(self._stopped_error(), exc)))
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            return self._ended(_failed_call(exc, frames=1))
        finally:
            if timer is not None:
                timer.cancel()
        return self._outcome_of(value)

    def stop(self, reason: str) -> None:
        """Cancel the running coroutine's task (on its loop's thread)."""
        if self.stop_reason is None and self.task is not None and not self.task.done():
            self.stop_reason = reason
            self.task.cancel()

    def _stopped_error(self) -> BaseException:
        job = self.job
        if self.stop_reason == "timeout":
            return JobTimeout(f"job {job.id} ({job.name}) ran longer than its timeout of "
                              f"{job._row['timeout']:g}s, so its task was cancelled")
        return LitejobsError(f"job {job.id} ({job.name}): its task was cancelled "
                             f"({self.stop_reason})")

    def _outcome_of(self, value: Any) -> _Outcome:
        job = self.job
        try:
            follow = _follow_up(job, value) if isinstance(value, (Job, Composite)) else None
        except BaseException as exc:
            return self._ended(_Outcome.failure(exc))
        self._ended(_PLAIN_COMPLETION)
        if follow is not None:
            return _Outcome(ok=True, follow=follow)
        if value is None:
            return _PLAIN_COMPLETION
        try:
            result = pickle.dumps(value, protocol=_PICKLE_PROTOCOL)
        except Exception as exc:
            return _Outcome.failure(_raised(TypeError(
                f"the result of job {job.id} ({job.name}), {_describe(value)}, cannot be "
                f"pickled: {type(exc).__name__}: {exc}; return plain data instead"), exc))
        size_limit = job._require_queue()._storage.size_limit
        if size_limit is not None and len(result) > size_limit:
            return _Outcome.failure(_raised(PayloadTooLarge(
                f"the result of job {job.id} ({job.name}), {_describe(value)}, takes "
                f"{len(result):,} bytes pickled, over the size limit of "
                f"{size_limit:,}: write large data to a file and return its path")))
        return _Outcome(ok=True, result=result)

    def _ended(self, outcome: _Outcome) -> _Outcome:
        if self.reporter is not None:
            self.reporter.close()  # the last progress lands before the outcome
        self.job._reporter = None
        return outcome


def _call_with_inputs(fn: Callable[..., Any], args: tuple[Any, ...],
                      kwargs: dict[str, Any], job: Job) -> Any:
    return fn(*args, *_inputs_from_the_database(job), **kwargs)


def _failed_call(exc: BaseException, frames: int) -> _Outcome:
    """The failure of a job's call, its traceback starting at the job, below
    the ``frames`` of ours.  An exception the call raised on entry (wrong
    arguments, say) has no frame below: ours, which show the call, stay."""
    for _ in range(frames):
        if exc.__traceback__ is not None and exc.__traceback__.tb_next is not None:
            exc.__traceback__ = exc.__traceback__.tb_next
    return _Outcome.failure(exc)


def _execute(job: Job, payload: bytes | None, signature: bytes | None,
             report: Callable[[dict[str, Any]], None] | None = None) -> _Outcome:
    """Run one claimed job in this thread, to its end, and capture its
    outcome (`_Call`).  An async job's coroutine runs on an event loop of
    its own, made for it: in a thread of its own when this thread already
    runs a loop (`run_pending` called from an async test, say)."""
    import asyncio
    call = _Call(job, payload, signature, report)
    started = call.start()
    if isinstance(started, _Outcome):
        return started
    assert started is not None  # (None only with only_async)
    coroutine = started

    def run() -> _Outcome:
        loop = asyncio.new_event_loop()
        try:
            call.task = call.context.run(loop.create_task, call.run_coroutine(coroutine))
            return loop.run_until_complete(call.task)
        finally:
            loop.close()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run()
    outcome: list[_Outcome] = []
    thread = threading.Thread(target=lambda: outcome.append(run()), name="litejobs-async-job")
    thread.start()
    thread.join()
    return outcome[0] if outcome else _Outcome.failure(_raised(LitejobsError(
        f"job {job.id} ({job.name}): its event loop ended without an outcome")))


def _counted_attempts(row: Mapping[str, Any]) -> int:
    """The runs of a job that count against its `Retry` policy: those that
    started, less interruptions, runs handed back by stopping pools, and
    claims taken back as not started."""
    return (int(row["attempts"]) - int(row["interruptions"])
            - int(row.get("handbacks") or 0) - int(row.get("not_started") or 0))


def _record(storage: _Storage, row: Mapping[str, Any], token: str,
            outcome: _Outcome, now: float) -> str:
    """Write an outcome, applying the job's retry policy; fenced by ``token``.

    ``row`` is the job as claimed (attempts counts the run that just ended).
    """
    if outcome.ok and outcome.follow is not None:
        return storage.wait_for(row["id"], token, now, outcome.follow)
    if outcome.ok:
        return storage.finish(row["id"], token, status=COMPLETED, now=now,
                              result=outcome.result)
    if outcome.refused:
        return storage.refuse(row["id"], token, now, _last_line(outcome.error) or "")
    exception_runs = _counted_attempts(row)
    delay = None
    if exception_runs < row["max_attempts"] and outcome.error_type != _DEADLINE_TYPE:
        delay = _retry_delay(row["retry_policy"], exception_runs, outcome.exc_mro)
    if delay is None:
        return storage.finish(row["id"], token, status=FAILED, now=now,
                              error=outcome.error, error_type=outcome.error_type)
    return storage.finish(row["id"], token, status=PENDING, now=now,
                          error=outcome.error, error_type=outcome.error_type,
                          begin_after=now + delay)


class _Periodic:
    """A daemon thread of this process that calls `_tick` every ``interval``
    seconds, from the first `_start` until `stop`, with a database connection
    of its own (closed as it ends)."""

    def __init__(self, storage: _Storage, interval: float, name: str):
        self._storage = storage
        self._interval = interval
        self._name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True, name=self._name)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._tick()
        self._storage.close_thread_connection()

    def _tick(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


class _LeaseKeeper(_Periodic):
    """Renews the leases of jobs running in this process, from a thread of its
    own, so a job stuck in C code or ``time.sleep`` keeps its claim."""

    def __init__(self, storage: _Storage, lease: float, expiry: Callable[[], float]):
        super().__init__(storage, lease / 3, "litejobs-lease-keeper")
        self._expiry = expiry
        self._held: dict[int, str] = {}
        self._lock = threading.Lock()

    def hold(self, job_id: int, token: str) -> None:
        with self._lock:
            self._held[job_id] = token
            self._start()

    def release(self, job_id: int) -> None:
        with self._lock:
            self._held.pop(job_id, None)

    def _tick(self) -> None:
        with self._lock:
            held = list(self._held.items())
        if not held:
            return
        try:
            lost = self._storage.renew(held, self._expiry())
        except LitejobsError as exc:
            _log.error("could not renew leases: %s", exc)
            return
        for job_id in lost:
            _log.warning("job %s: lease lost while running here", job_id)


class _NewsWatch(_Periodic):
    """Brings a running job the news others write about it: keys they set in
    its meta (`Job.update_meta` from outside) and a stop request
    (`Job.request_stop`).  Its thread reads the job's row every
    ``_NEWS_INTERVAL`` while a job is watched, and updates the `Job` the job
    holds; keys the job set itself keep the values it gave them."""

    def __init__(self, storage: _Storage):
        super().__init__(storage, _NEWS_INTERVAL, "litejobs-news")
        self._job: Job | None = None
        self._seen: tuple[int | None, str | None] = (None, None)  # the meta last applied

    def watch(self, job: Job | None) -> None:
        """Watch ``job`` from now on (None: no job)."""
        self._job = job
        if job is not None:
            self._start()

    def _tick(self) -> None:
        job = self._job
        if job is None or job.id is None:
            return
        try:
            meta, stop_by = self._storage.news_of(job.id)
        except LitejobsError as exc:  # looked for again at the next round
            _log.debug("job %s: could not read its news: %s", job.id, exc)
            return
        job._row["stop_requested"] = stop_by
        if (job.id, meta) != self._seen and job is self._job:
            self._seen = (job.id, meta)
            job._row["meta"] = json.dumps({**(json.loads(meta) if meta else {}),
                                           **job._own_meta}, separators=(",", ":"))


class _Refusals:
    """What a runner (a pool, or `Queue.run_pending`) leaves to others, and
    says so loudly: jobs whose callable it could not import, which it claims
    again only after ``_REFUSAL_PAUSE`` (its environment may be fixed, or a
    deploy may finish, meanwhile), and, when it has no secret, signed jobs,
    which it can never check.  Such jobs go back to pending with their
    attempt given back: that is the runner's problem, not the job's.
    ``clock`` is monotonic seconds, injectable for tests."""

    def __init__(self, runner: str, clock: Callable[[], float] = time.monotonic):
        self.runner = runner
        self.unsigned_only = False
        self._clock = clock
        self._until: dict[str, float] = {}  # callable name -> when to try it again

    def avoided(self) -> list[str]:
        """The callables left to others now."""
        now = self._clock()
        for name in [name for name, until in self._until.items() if until <= now]:
            del self._until[name]
        return sorted(self._until)

    def cannot_import(self, row: Mapping[str, Any], error: str | None) -> None:
        """Job ``row`` does not import here: leave its callable to others for
        a while, logging the first such job of each round with the traceback."""
        name = str(row["name"])
        if name in self.avoided():
            _log.debug("job %s (%s): given back again: it does not import here",
                       row["id"], name, extra=_job_log(row))
            return
        self._until[name] = self._clock() + _REFUSAL_PAUSE
        _log.error("%s cannot import %s, so job %s goes back to pending for another "
                   "runner, and this one leaves such jobs alone for %s before it tries "
                   "again.  Is the job's module on this pool's path (its current "
                   "directory, PYTHONPATH, --path, or an installed package)?\n%s",
                   self.runner, name, row["id"], _format_duration(_REFUSAL_PAUSE),
                   (error or "").rstrip(), extra=_job_log(row))

    def signed_without_secret(self, row: Mapping[str, Any]) -> str:
        """Job ``row`` is signed and this runner has no secret: leave every
        signed job to others from now on.  Returns the reason, for the
        job's history."""
        reason = (f"{self.runner} has no secret to check the signature of signed jobs "
                  f"with, so it leaves them to runners that have one")
        if not self.unsigned_only:
            self.unsigned_only = True
            _log.error("job %s (%s) is signed, but %s was given no secret: it leaves "
                       "signed jobs to pools that have one.  Give it the same secret as "
                       "the application (LITEJOBS_SECRET, or secret=)", row["id"],
                       row["name"], self.runner, extra=_job_log(row))
        return reason


class _InlineRun:
    """One `Queue.run_pending` call: it owns its runner's identity, its
    clock (``run_pending(now=)``'s, or the database's), the lease keeper,
    the watch for stop requests and meta of the running job, and what this
    process could not run.  Jobs run here one at a time, claimed and
    recorded as a pool's are."""

    def __init__(self, queue: Queue, clock: Callable[[], float],
                 queues: Sequence[str] | None, lease: float):
        self.queue = queue
        self.storage = queue._storage
        self.clock = clock
        self.queues = queues
        self.lease = lease
        self.owner = _owner_id("inline")
        self.keeper = _LeaseKeeper(self.storage, lease, self.expiry)
        self.news = _NewsWatch(self.storage)
        self.refusals = _Refusals(f"run_pending ({self.owner})")

    def expiry(self) -> float:
        """Leases run on the database's clock, however far ``clock`` is ahead."""
        return max(self.clock(), self.storage.clock()) + self.lease

    def run(self, limit: int | None) -> int:
        """Fire the schedules due by the clock, then claim and run due jobs
        until none is due or ``limit`` have run."""
        ran = 0
        reset = _CLOCK.set(self.clock)
        try:
            _fire_all_due(self.storage, self.clock(), self.owner, set())
            while limit is None or ran < limit:
                token, claimed = self.storage.claim(
                    owner=self.owner, queues=self.queues, now=self.clock(),
                    expires=self.expiry(), limit=1,
                    unsigned_only=self.refusals.unsigned_only, avoid=self.refusals.avoided())
                if not claimed:
                    break
                _crash_point("after-claim")
                for row in claimed:
                    if self._run_claimed(row, token):
                        ran += 1
        finally:
            _CLOCK.reset(reset)
            self.keeper.stop()
            self.news.stop()
        return ran

    def _run_claimed(self, claimed: dict[str, Any], token: str) -> bool:
        """Run one claimed job here and record its outcome; False if this
        process could not run it and gave it back (see `_Refusals`)."""
        payload, signature = claimed.pop("payload"), claimed.pop("signature")
        job = Job._bound(self.queue, claimed)
        job_id = job._require_id()
        if signature is not None and not self.storage.secrets:
            reason = self.refusals.signed_without_secret(claimed)
            with contextlib.suppress(LeaseLost):
                self.storage.refuse(job_id, token, self.clock(), reason)
            return False
        self.keeper.hold(job_id, token)
        self.news.watch(job)
        _log.debug("job %s (%s) attempt %d started in this process", job_id, job.name,
                   job.attempts, extra=_job_log(claimed))
        started = time.perf_counter()
        try:
            outcome = _execute(job, payload, signature, lambda fields: self.storage.report(
                [(job_id, token, fields)]))
            _crash_point("after-job")
        except KeyboardInterrupt:
            with contextlib.suppress(LeaseLost):
                self.storage.interrupt(job._require_id(), token, self.clock(),
                                       "interrupted by KeyboardInterrupt")
            raise
        finally:
            self.keeper.release(job._require_id())
            self.news.watch(None)
        duration = time.perf_counter() - started
        if outcome.refused:
            self.refusals.cannot_import(claimed, outcome.error)
        try:
            status: str | None = _record(self.storage, job._row, token, outcome, self.clock())
            _crash_point("after-finish")
        except LeaseLost:
            status = None
        except DatabaseError as exc:
            # At-least-once: with its outcome unwritten, the job stays claimed
            # until the lease runs out, then runs again.
            _log.error("job %s (%s): could not record its outcome, so it will run "
                       "again once its lease expires: %s", job.id, job.name, exc,
                       extra=_job_log(claimed, duration))
            raise
        _log_outcome(claimed, outcome, status, duration)
        return not outcome.refused


class Queue:
    """A job queue kept in the SQLite database at ``path``, or in the
    PostgreSQL database at a ``postgresql://`` URL (the ``postgres`` extra).

    The file is created if missing (mode 0600, WAL journal), and may be shared
    with the application's own tables: litejobs' tables are all prefixed
    ``litejobs_``, and it never touches ``PRAGMA user_version``.  Every process
    using it must be on this host: WAL needs shared memory, so a file on a
    network filesystem (NFS, SMB and the like, per Linux's mount table) is
    refused, unless ``network_filesystem=True`` says that only this host
    ever opens it.  Pools on several hosts need PostgreSQL, where litejobs
    adds its tables to the existing database; ``listen=False`` polls instead
    of LISTENing for changes (behind PgBouncer in transaction mode).

    ``durable=True`` (the default) commits each put with ``synchronous=FULL``:
    once ``put`` returns, the job survives power loss.  ``durable=False`` uses
    ``NORMAL``, much faster; the last puts may be lost on power loss, never on
    a process crash.  ``create=False`` refuses to create a missing file.
    ``busy_timeout`` is how many seconds, in all, a write waits for another
    connection's write lock before it raises `DatabaseBusy`.

    ``size_limit`` is how many bytes a job's pickled call, and its pickled
    result, may take (default `DEFAULT_SIZE_LIMIT`, 4 MiB; None for no limit):
    a larger put raises `PayloadTooLarge`, and a larger result fails its job.

    ``secret`` (a str or bytes of 16 bytes or more, or a list of them) signs
    every job put with an HMAC-SHA256, and makes this queue refuse, before
    unpickling anything, jobs and results not signed with one of them.  The
    first secret signs; the others still verify, so keys can be rotated.
    Without ``secret``, the ``LITEJOBS_SECRET`` environment variable is read
    (secrets separated by commas).  Give every process using the file the
    same secret.

    A Queue may be shared by threads, and pickles as its path and options
    (never its secret), so it can be passed to other processes; each process
    and thread opens its own connection.  Rebuilt from a pickle, it uses the
    secret given in code for the same file in that process, if any.

    >>> q = Queue("app.db")                             # doctest: +SKIP
    >>> job = q.put(Job(render_pdf, 7), queue="pdf")    # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike[str], *, durable: bool = True,
                 create: bool = True, busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
                 read_only: bool = False,
                 secret: str | bytes | Sequence[str | bytes] | None = None,
                 size_limit: int | None = DEFAULT_SIZE_LIMIT, listen: bool = True,
                 network_filesystem: bool = False):
        busy_timeout = _seconds(busy_timeout, "busy_timeout")
        if size_limit is not None:
            size_limit = _positive_int(size_limit, "size_limit")
        self._storage: _Storage = _open_storage(
            path, durable=durable, create=create, busy_timeout=busy_timeout,
            read_only=read_only, secrets=_secrets_for(_storage_key(path), secret),
            size_limit=size_limit, listen=listen, network_filesystem=network_filesystem)
        self.network_filesystem = network_filesystem
        self.read_only = read_only
        self.busy_timeout = busy_timeout
        self.create = create
        self.path = self._storage.path
        self.durable = durable
        self._async_waits = _AsyncWaits(self._storage)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen_queue, (self.path, self.durable, self.create, self.busy_timeout,
                                self.read_only, self._storage.size_limit,
                                self.network_filesystem))

    def __repr__(self) -> str:
        return f"<litejobs.Queue {self.path}>"

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close this process's connections.  Using the queue again reopens them."""
        self._async_waits.pause()
        self._storage.close()
        self._async_waits.resume()

    # -- putting -------------------------------------------------------------

    def put(self, item: Job | Composite | Callable[..., Any] | str, *,
            begin_after: datetime.datetime | datetime.timedelta | float | None = None,
            begin_by: datetime.timedelta | float | None = None,
            retry: Retry | None | _Default = _DEFAULT, priority: int | _Default = _DEFAULT,
            queue: str | _Default = _DEFAULT, key: str | None = None,
            timeout: float | None | _Default = _DEFAULT,
            max_interruptions: int | None | _Default = _DEFAULT,
            quotas: Sequence[str] | None = None,
            conn: sqlite3.Connection | None = None) -> Job:
        """Store a job and return it, bound to its row.  Once this returns, the
        job is in the database (on disk, with ``durable=True``).

        ``item`` is a `Job`, a callable taking no arguments, an importable
        ``"package.module:function"`` string, or a composite from `parallel`
        or `serial`, stored whole with all its parts.

        - ``begin_after``: an aware datetime, or a timedelta or seconds from now;
          the job does not start before it.
        - ``begin_by``: a timedelta or seconds after ``begin_after``; a job not
          started by then fails with `DeadlineExceeded` instead of running late.
          Not for composites.
        - ``retry``: a `Retry` policy for exceptions; without one an exception
          fails the job at once.
        - ``priority``: larger runs first (default 0); ``queue``: the named
          queue (default ``"default"``).
        - ``key``: if an unfinished job has this key, that job is returned and
          nothing is added.
        - ``timeout``: a hard limit on a run in seconds, enforced by worker pools.
        - ``max_interruptions``: runs that may die without an outcome (killed
          process, lost lease) before the job fails as interrupted (default
          3; None for no limit, the default of a composite's postprocess).
        - ``quotas``: names the job counts against while it runs (see
          `set_quota`), such as ``["pdf", f"customer:{cid}"]``.
        - ``conn``: a ``sqlite3`` connection of the application's, open on the
          same file with a transaction begun: the job is written in that
          transaction, so it exists if and only if the application commits.

        ``retry``, ``priority``, ``queue``, ``timeout`` and
        ``max_interruptions``, when not given, are those the job's function
        was given with `job`, if any, and else litejobs' defaults.

        A composite's options apply to each of its parts and to its
        postprocess; ``key`` applies to the composite itself.

        Raises TypeError or ValueError, writing nothing, for a callable or an
        argument that cannot be stored.

        >>> q.put(Job(render_pdf, 7), begin_after=timedelta(minutes=5),
        ...       retry=Retry(attempts=3))              # doctest: +SKIP
        """
        return self._put([item], key=key, conn=conn, given=_given(
            begin_after=begin_after, begin_by=begin_by, retry=retry, priority=priority,
            queue=queue, timeout=timeout, max_interruptions=max_interruptions,
            quotas=quotas if quotas is not None else _DEFAULT))[0]

    def put_many(self, items: Iterable[Job | Composite | Callable[..., Any] | str], *,
                 begin_after: datetime.datetime | datetime.timedelta | float | None = None,
                 begin_by: datetime.timedelta | float | None = None,
                 retry: Retry | None | _Default = _DEFAULT,
                 priority: int | _Default = _DEFAULT, queue: str | _Default = _DEFAULT,
                 timeout: float | None | _Default = _DEFAULT,
                 max_interruptions: int | None | _Default = _DEFAULT,
                 quotas: Sequence[str] | None = None,
                 conn: sqlite3.Connection | None = None) -> list[Job]:
        """Store many jobs in one transaction, with the options of `put`
        applied to each; all of them are stored, or none.

        >>> q.put_many(Job(render_pdf, n) for n in range(1000))   # doctest: +SKIP
        """
        return self._put(items, key=None, conn=conn, given=_given(
            begin_after=begin_after, begin_by=begin_by, retry=retry, priority=priority,
            queue=queue, timeout=timeout, max_interruptions=max_interruptions,
            quotas=quotas if quotas is not None else _DEFAULT))

    def _put(self, items: Iterable[Job | Composite | Callable[..., Any] | str], *,
             key: str | None, conn: sqlite3.Connection | None,
             given: dict[str, Any]) -> list[Job]:
        now = _now(self._storage)
        if key is not None and not isinstance(key, str):
            raise TypeError(f"key must be a string or None, not {key!r}")
        if key is not None:
            _check_text(key, "key")
        options = _Options(now, given)
        trees: list[list[dict[str, Any]]] = []
        bound: list[Sequence[tuple[int, Job]]] = []
        seen: set[int] = set()
        for item in items:
            tree, jobs = _plan_tree(item, options, seen)
            tree[0]["key"] = key
            trees.append(tree)
            bound.append(jobs)
        if not trees:
            return []
        out = []
        for (stored, existed), jobs in zip(self._storage.insert(trees, now, conn), bound):
            root = stored[0]
            if existed:
                out.append(Job._bound(self, root))
                continue
            for index, job in jobs:
                job._queue, job._row = self, stored[index]
            out.append(jobs[0][1] if jobs and jobs[0][0] == 0 else Job._bound(self, root))
            if _log.isEnabledFor(logging.DEBUG):
                _log.debug("job %s (%s) put in queue %s%s", root["id"], root["name"],
                           root["queue"], f" with {len(stored) - 1} jobs under it"
                           if len(stored) > 1 else "", extra=_job_log(root))
        return out

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """A block whose puts (and cancels and callbacks) on this queue, from
        this thread, commit together when it ends, or not at all if it raises::

            with q.transaction() as conn:
                conn.execute("UPDATE orders SET state = 'paid' WHERE id = ?", (7,))
                q.put(Job(send_receipt, 7))
                q.put(Job(ship, 7))

        ``conn`` is the connection the block writes through (a
        ``sqlite3.Connection``, or a ``psycopg.Connection`` on PostgreSQL),
        so the application's own tables in the same database change in the
        same transaction.  On SQLite it holds the write lock: keep the block
        short.
        """
        with self._storage.write(atomic_steps=True) as conn:
            yield self._storage.own_connection(conn)

    # -- reading -------------------------------------------------------------

    def get(self, job_id: int) -> Job:
        """The job with this id; raises `JobNotFound` if there is none."""
        row = self._storage.fetch(job_id)
        if row is None:
            raise JobNotFound(f"no job {job_id} in {self.path}")
        return Job._bound(self, row)

    # -- from asyncio: the same calls, run off the event loop ------------------

    async def aput(self, item: Job | Composite | Callable[..., Any] | str,
                   **options: Any) -> Job:
        """`put`, from a coroutine: the write runs in the loop's executor."""
        import asyncio
        return await asyncio.to_thread(functools.partial(self.put, item, **options))

    async def aput_many(self, items: Iterable[Job | Composite | Callable[..., Any] | str],
                        **options: Any) -> list[Job]:
        """`put_many`, from a coroutine."""
        import asyncio
        return await asyncio.to_thread(functools.partial(self.put_many, list(items), **options))

    async def aget(self, job_id: int) -> Job:
        """`get`, from a coroutine."""
        import asyncio
        return await asyncio.to_thread(self.get, job_id)

    def jobs(self, status: str | Sequence[str] | None = None, queue: str | None = None,
             limit: int | None = 100, *, name: str | None = None,
             since: datetime.datetime | None = None,
             before: datetime.datetime | None = None,
             below_id: int | None = None) -> list[Job]:
        """Jobs, newest first, optionally only those in ``status`` (one, or a
        list of them) and ``queue``, whose callable's name matches the glob
        ``name`` (``"myapp.*:render*"``), put at or after ``since`` and before
        ``before`` (aware datetimes); at most ``limit`` of them (None: all),
        and with ``below_id``, those with a smaller id only: the next page
        after the last id of this one, as quick on a page a million rows deep."""
        if limit is not None:
            limit = _positive_int(limit, "limit")
        statuses = None if status is None else [status] if isinstance(status, str) \
            else list(status)
        for one in statuses or ():
            if one not in STATUSES:
                raise ValueError(f"unknown status {one!r}; use one of {', '.join(STATUSES)}")
        if statuses == []:
            raise ValueError("status is a list of at least one status, or None for all")
        rows = self._storage.search(
            statuses=statuses, queue=queue, name=name,
            since=None if since is None else _timestamp(since, "since"),
            before=None if before is None else _timestamp(before, "before"),
            limit=-1 if limit is None else limit,
            below_id=None if below_id is None else _positive_int(below_id, "below_id"))
        return [Job._bound(self, row) for row in rows]

    def now(self) -> float:
        """Now, in Unix seconds, by the database's clock: this host's for
        SQLite; for PostgreSQL, the server's (hosts' clocks differ, and every
        pool compares due times, leases and deadlines on it)."""
        return self._storage.clock()

    def overview(self) -> dict[str, Any]:
        """What ``status`` shows, as of ``now`` (Unix seconds): ``counts`` by
        queue and status (each queue with every status), the pending job due
        the longest (``oldest_due``: its row, or None), and how many jobs
        ended in the ``last_minute`` and ``last_hour`` (``finished``)."""
        now = self._storage.clock()
        return {**self._storage.overview(now), "now": now}

    def counts(self, queue: str | None = None) -> dict[str, int]:
        """How many jobs are in each status (every status is present)."""
        found = self._storage.counts(queue)
        return {status: found.get(status, 0) for status in STATUSES}

    def copy_to(self, destination: Queue, *, move: bool = False) -> dict[int, int]:
        """Copy the jobs that have not run yet (pending and waiting ones,
        with the composites, parts and callbacks around them) to
        ``destination``, another database (from SQLite to PostgreSQL, say),
        under new ids; returns {id here: id there}.  With ``move``, they are
        then deleted here.

        Stop the pools on this database first: a tree with a running job is
        refused (ValueError).  The copy commits before the delete, so a crash
        between the two leaves the jobs in both, never in neither.
        Signatures are copied as they are: give the destination the same
        secret."""
        running = self._storage.counts(None).get(ACTIVE, 0)
        if running:
            raise ValueError(f"{running} jobs are running in {self.path}: stop its pools "
                             f"first (a job copied while it runs may run twice)")
        rows = self._storage.unfinished_trees()
        new_ids = destination._storage.insert_copies(rows)
        if move:
            deleted = self._storage.delete_copied(new_ids)
            if deleted < len(new_ids):
                _log.warning("%d of the %d jobs copied from %s to %s were kept in %s: jobs "
                             "were added under them meanwhile", len(new_ids) - deleted,
                             len(new_ids), self.path, destination.path, self.path)
        return new_ids

    # -- schedules -------------------------------------------------------------

    def schedule(self, name: str, cron: str,
                 job: Job | Composite | Callable[..., Any] | str, *, tz: str = "UTC",
                 catchup: str = "latest", catchup_limit: int = _CATCHUP_LIMIT,
                 max_lag: float | datetime.timedelta | None = None, overlap: str = "allow",
                 queue: str | _Default = _DEFAULT, priority: int | _Default = _DEFAULT,
                 retry: Retry | None | _Default = _DEFAULT,
                 timeout: float | None | _Default = _DEFAULT,
                 max_interruptions: int | None | _Default = _DEFAULT) -> Schedule:
        """Put ``job`` at each tick of the cron expression ``cron``, in the
        time zone ``tz``, from every pool on this database, once a tick::

            q.schedule("nightly-digest", "30 2 * * *", Job(send_digest), tz="Europe/Berlin")
            q.schedule("sync", "*/5 * * * *", "myapp.tasks:sync", overlap="skip", queue="io")

        The schedule is stored under ``name``, replacing one of that name:
        declare it each time the program starts; one whose cron and time
        zone stay keeps its next tick, so a restart neither skips nor
        repeats one.  Ticks missed while no pool ran fire by ``catchup``:
        "latest" (one run, for the latest), "all" (each, oldest first, the
        latest ``catchup_limit`` of them) or "skip" (none, but a tick less
        than a minute late).  A tick more than ``max_lag`` seconds late is
        skipped, and logged.  ``overlap="skip"`` puts no job while the
        previous run has not ended.  The other options are `put`'s; the
        job's meta holds ``schedule`` and ``tick`` (ISO 8601, UTC).

        See the README for cron's syntax and daylight saving.  Raises
        `CronError` for a bad expression, ValueError for an unknown zone.
        """
        row = _schedule_row(self, name, cron, job, tz=tz, catchup=catchup,
                            catchup_limit=catchup_limit, max_lag=max_lag, overlap=overlap,
                            given=_given(queue=queue, priority=priority, retry=retry,
                                         timeout=timeout, max_interruptions=max_interruptions))
        return Schedule(self, self._storage.save_schedule(row, _now(self._storage)))

    def unschedule(self, name: str) -> bool:
        """Remove the schedule ``name``; whether there was one.  Jobs it put stay."""
        return self._storage.remove_schedule(_check_text(name, "name"))

    def schedules(self) -> list[Schedule]:
        """Every schedule, by name."""
        return [Schedule(self, row) for row in self._storage.fetch_schedules()]

    def get_schedule(self, name: str) -> Schedule:
        """The schedule ``name``; raises `ScheduleNotFound` if there is none."""
        found = self._storage.fetch_schedules(_check_text(name, "name"))
        if not found:
            raise ScheduleNotFound(f"no schedule {name!r} in {self.path}")
        return Schedule(self, found[0])

    # -- pausing queues -----------------------------------------------------------

    def pause(self, queue: str, until: datetime.datetime | float | datetime.timedelta |
              None = None) -> None:
        """Claim no job of ``queue`` until `resume`, or until ``until`` (an
        aware datetime, or seconds or a timedelta from now); running jobs
        finish.  Pausing a paused queue sets its ``until`` anew."""
        now = _now(self._storage)
        end = None if until is None else _timestamp(until, "until") \
            if isinstance(until, datetime.datetime) else now + _seconds(until, "until")
        self._storage.pause_queue(_check_text(queue, "queue"), end, now)

    def resume(self, queue: str) -> bool:
        """Claim ``queue``'s jobs again, at once (idle pools wake); whether it
        was paused."""
        return self._storage.resume_queue(_check_text(queue, "queue"))

    def paused(self) -> dict[str, datetime.datetime | None]:
        """The paused queues: {queue: when the pause ends (None: at `resume`)}."""
        return {queue: _when(until)
                for queue, until in self._storage.paused_queues(_now(self._storage)).items()}

    # -- quotas --------------------------------------------------------------------

    def set_quota(self, name: str, running: int | None) -> None:
        """Let at most ``running`` jobs that name the quota ``name`` (see
        `put`'s ``quotas``) run at once, across every pool on every host::

            q.set_quota("pdf", 2)
            q.set_quota("customer:*", 1)      # a glob: one running job per customer
            q.put(Job(render_pdf, 7), quotas=["pdf", f"customer:{cid}"])

        A job is claimed only while each quota it names has a free slot,
        counted from the jobs running then; jobs held back keep their place
        and do not hold back others.  A name's own limit wins over a pattern's;
        of patterns, the longest.  ``None`` removes the limit."""
        if running is not None:
            _int_in_range(running, "running", 1, 2 ** 31 - 1)
        self._set_limits(name, running=running)

    def set_rate(self, name: str, count: int | None, per: float | datetime.timedelta = 1.0
                 ) -> None:
        """Let at most ``count`` jobs that name the quota ``name`` be claimed
        in any ``per`` seconds (a sliding window), across every pool::

            q.set_rate("smtp", 10, per=1.0)

        A name or a glob, as for `set_quota`, whose limit it keeps; ``None``
        removes the rate."""
        rate = None
        if count is not None:
            window = _seconds(per, "per")
            if window == 0:
                raise ValueError("per must be positive")
            rate = (_int_in_range(count, "count", 1, 2 ** 31 - 1), window)
        self._set_limits(name, rate=rate)

    def _set_limits(self, name: str, **change: Any) -> None:
        name = _check_text(name, "name")
        if not name or len(name) > 200:
            raise ValueError("a quota's name is 1 to 200 characters")
        found = {row["pattern"]: row for row in self._storage.fetch_quotas()}.get(name)
        limits = {"running": None if found is None else found["running"],
                  "rate": None if found is None or found["rate"] is None
                  else (int(found["rate"]), float(found["per"])), **change}
        self._storage.set_quota(name, limits["running"], limits["rate"], _now(self._storage))

    def quotas(self) -> dict[str, int]:
        """The running limits set: {name or pattern: running jobs at most}."""
        return _running_limits(self._storage.fetch_quotas())

    def rates(self) -> dict[str, tuple[int, float]]:
        """The rate limits set: {name or pattern: (claims, per seconds)}."""
        return _rate_limits(self._storage.fetch_quotas())

    def purge(self, older_than: float | datetime.timedelta | datetime.datetime, *,
              status: str | None = None, batch: int | None = None,
              dry_run: bool = False) -> int:
        """Delete jobs that ended more than ``older_than`` ago (seconds or a
        timedelta; a datetime: before that moment), only those in ``status``
        if given, with the jobs under them, in transactions of ``batch`` jobs
        so that pools are never held up for long (default 1,000).  A job with
        anything under it still unfinished is kept.  Returns how many jobs
        were deleted, or with ``dry_run`` would be."""
        before = _timestamp(older_than, "older_than") \
            if isinstance(older_than, datetime.datetime) \
            else _now(self._storage) - _seconds(older_than, "older_than")
        if status is not None and status not in _FINISHED:
            raise ValueError(f"only finished jobs are purged: status is one of "
                             f"{', '.join(sorted(_FINISHED))}, not {status!r}")
        batch = _positive_int(_PRUNE_BATCH if batch is None else batch, "batch")
        if dry_run:
            roots, under = self._storage.purge(before, status=status, limit=-1, dry_run=True)
            return roots + under
        total = 0
        while True:
            deleted, under = self._storage.purge(before, status=status, limit=batch)
            total += deleted + under
            if deleted < batch:
                return total

    def workers(self) -> list[dict[str, Any]]:
        """The worker pools registered on this file, newest first.

        Each is a dict: ``id``, ``host``, ``pid``, ``processes``, ``queues``
        (a list, or None for every queue), ``lease``, ``started_at``,
        ``heartbeat_at`` and ``stopped_at`` (aware datetimes; ``stopped_at``
        None while running), ``stop_reason``, ``jobs`` (the jobs it holds now),
        and ``alive``: not stopped, and on this host its process still
        running (not stopped), or elsewhere heartbeating within its lease.
        """
        return [{**row, "queues": None if row["queues"] is None else json.loads(row["queues"]),
                 "started_at": _to_datetime(row["started_at"]),
                 "heartbeat_at": _to_datetime(row["heartbeat_at"]),
                 "stopped_at": _to_datetime(row["stopped_at"])}
                for row in self._storage.fetch_workers()]

    # -- running here --------------------------------------------------------

    def run_pending(self, now: datetime.datetime | None = None, *,
                    queues: Sequence[str] | None = None, limit: int | None = None,
                    lease: float = DEFAULT_LEASE) -> int:
        """Run every due job in this process, one at a time; return how many ran.

        Jobs run exactly as in a worker: claimed under a lease, recorded with
        the same fenced writes and the same retry policy.  Jobs that become due
        meanwhile (a retry with no delay, a job put by a job) run too, until
        none is due or ``limit`` have run.

        ``now``, an aware datetime, stands in for the clock: jobs due by then
        run, and every time computed (retry delays, deadlines, timestamps)
        counts from it.  This runs delayed jobs in tests without sleeping::

            q.run_pending(now=datetime.now(timezone.utc) + timedelta(hours=1))

        Leases always run on the real clock, so that other runners on the
        same file never take a job this call is running.  A ``now`` in the
        future does treat their leases as expired: use it on files no live
        pool serves, as tests do.

        ``timeout`` is not enforced here; it needs a worker pool.
        """
        clock: Callable[[], float] = self._storage.clock
        if now is not None:
            fixed = _timestamp(now, "now")
            clock = lambda: fixed  # noqa: E731
        if queues is not None:
            queues = [queues] if isinstance(queues, str) else list(queues)
        if limit is not None:
            limit = _positive_int(limit, "limit")
        lease = _seconds(lease, "lease")
        if lease == 0:
            raise ValueError("lease must be positive")
        return _InlineRun(self, clock, queues, lease).run(limit)

    def worker(self, processes: int | None = None, **options: Any) -> Worker:
        """Start a `Worker` pool on this queue's file in a background thread
        and return it; use it as a context manager to stop it at the end::

            with q.worker(processes=4):
                q.put(Job(render_pdf, 7)).wait(timeout=30)

        ``options`` are those of `Worker`.
        """
        return Worker(self, processes=processes, **options).start()

def _reopen_queue(path: str, durable: bool, create: bool, busy_timeout: float,
                  read_only: bool = False, size_limit: int | None = DEFAULT_SIZE_LIMIT,
                  network_filesystem: bool = False) -> Queue:
    keys = _SECRETS_BY_PATH.get(_storage_key(path))
    return Queue(path, durable=durable, create=create, busy_timeout=busy_timeout,
                 read_only=read_only, size_limit=size_limit,
                 secret=None if keys is None else _Keys(keys),
                 network_filesystem=network_filesystem)


###############################################################################
# Composition
###############################################################################


class Composite:
    """A description of jobs to run together, made by `parallel` or `serial`
    and stored by `Queue.put` (or returned by a job to run next).

    ``kind`` is ``"parallel"`` or ``"serial"``; ``parts`` what to run;
    ``postprocess`` what runs after the parts, given them all, or None.
    """

    def __init__(self, kind: str, parts: Sequence[Any], postprocess: Any,
                 stop_on_failure: bool):
        for part in parts:
            _check_plannable(part, "a part")
        if postprocess is not None:
            if isinstance(postprocess, Composite):
                raise TypeError("postprocess is a callable or a Job, not a composite")
            _check_plannable(postprocess, "postprocess")
        self.kind = kind
        self.parts = tuple(parts)
        self.postprocess = postprocess
        self.stop_on_failure = stop_on_failure

    def __repr__(self) -> str:
        then = "" if self.postprocess is None else f", then {_describe(self.postprocess)}"
        return f"<litejobs.Composite {self.kind} of {len(self.parts)} parts{then}>"


def parallel(*parts: Job | Composite | Callable[..., Any] | str,
             postprocess: Job | Callable[..., Any] | str | None = None) -> Composite:
    """Parts that may all run at once, in any pools; then ``postprocess``.

    Each part is anything `Queue.put` takes, another composite included.  Put
    the result to run it: the returned job waits, holding no worker, until
    every part has ended (completed, failed or cancelled), then runs
    ``postprocess(*parts)`` with the finished part jobs, in order, after any
    arguments a `Job` postprocess has.  Its return value is the result.
    Without a postprocess the result is the list of the parts' results, and
    the job fails with `PartsFailed` if any part did not complete.

    >>> q.put(parallel(Job(count, 0, 10**6), Job(count, 10**6, 2 * 10**6),
    ...                postprocess=add_counts))         # doctest: +SKIP
    """
    return Composite("parallel", parts, postprocess, False)


def serial(*parts: Job | Composite | Callable[..., Any] | str,
           postprocess: Job | Callable[..., Any] | str | None = None,
           stop_on_failure: bool = False) -> Composite:
    """Parts that run one after another; then ``postprocess``, as in `parallel`.

    Each part starts once the one before has ended.  A part that fails does
    not stop the others, unless ``stop_on_failure``: then the parts after it
    end `CANCELLED` and the postprocess runs at once.  Parts do not get each
    other's results; pass data through the database or files, or read the
    parts in the postprocess.
    """
    if not isinstance(stop_on_failure, bool):
        raise TypeError(f"stop_on_failure must be True or False, not {stop_on_failure!r}")
    return Composite("serial", parts, postprocess, stop_on_failure)


def current_queue() -> Queue | None:
    """The `Queue` the job running in this thread came from, or None outside
    a job: a job puts follow-up jobs through it."""
    job = _CURRENT_JOB.get()
    return None if job is None else job._queue


def _check_plannable(item: Any, what: str) -> None:
    if isinstance(item, Job):
        if item._queue is not None or item._call is None:
            raise ValueError(f"{what}, {item!r}, was put already; give a new Job")
    elif not isinstance(item, (Composite, str)) and not callable(item):
        raise TypeError(f"{what} must be a callable, a Job, a 'module:function' string "
                        f"or a composite, not {_describe(item)}")


def _plan_tree(item: Any, options: _Options, seen: set[int], *, dormant: bool = False,
               follower: bool = False) -> tuple[list[dict[str, Any]], Sequence[tuple[int, Job]]]:
    """The rows to insert for ``item``, its root first, each with ``parent``
    (the index of its parent row, or None) and its columns from ``options``;
    and the given `Job` objects with the index of their row, to bind.

    A plain job is due at once unless ``dormant``; a composite and its parts
    start dormant, and the storage starts them (`_SQLiteStorage._activate`).
    A ``follower`` (a callback) and a composite's postprocess take the
    defaults of followers.  ``seen`` holds the ids of Job objects already
    planned in this put.
    """
    if not isinstance(item, (Composite, Job)) and not dormant:  # the common case, quick
        name, payload = _prepare_call(item, (), {})
        return [{**options.row(item, False), "name": name, "payload": payload}], ()
    if isinstance(item, Composite) and options.given.get("begin_by") is not None:
        raise ValueError("begin_by is not supported for a composite: its parts start "
                         "when their turn comes")
    rows: list[dict[str, Any]] = []
    jobs: list[tuple[int, Job]] = []

    def call_of(node: Any) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
        if not isinstance(node, Job):
            return node, (), {}  # _prepare_call says what is wrong with it, if anything
        _check_plannable(node, "a job")
        if id(node) in seen:
            raise ValueError(f"{node!r} appears twice; give each part its own Job")
        seen.add(id(node))
        assert node._call is not None
        return node._call

    # Depth first, parents before their parts, without recursion: a tree too
    # deep is refused with a ValueError, not a RecursionError.
    todo: list[tuple[Any, int | None, int | None, int]] = [(item, None, None, 0)]
    while todo:
        node, parent, position, depth = todo.pop()
        index = len(rows)
        if isinstance(node, Composite) and depth >= _MAX_NESTING:
            raise ValueError(f"composites nest at most {_MAX_NESTING} deep, and this one "
                             f"nests deeper: flatten it, or let a part return the next level "
                             f"as a job of its own")
        if isinstance(node, Composite):
            postprocess = node.postprocess
            fn = postprocess._call[0] if isinstance(postprocess, Job) and \
                postprocess._call is not None else postprocess
            columns = options.row(fn, True)
        else:
            columns = options.row(node._call[0] if isinstance(node, Job) and
                                  node._call is not None else node, follower)
        row = {**columns, "parent": parent, "position": position,
               "role": None if parent is None else "part",
               "status": WAITING, "waiting_on": _DORMANT}
        if isinstance(node, Composite):
            if node.postprocess is None:
                # The results are gathered by a run of _gather_results, stored
                # as the function itself: the name is only for people.
                row.update(name=f"litejobs:{node.kind}", max_attempts=1, retry_policy=None,
                           payload=pickle.dumps((_gather_results, (), {}),
                                                protocol=_PICKLE_PROTOCOL))
            else:
                row["name"], row["payload"] = _prepare_call(*call_of(node.postprocess))
            row["composite"] = "serial_stop" if node.stop_on_failure else node.kind
            rows.append(row)
            todo += [(part, index, number, depth + 1)
                     for number, part in reversed(list(enumerate(node.parts)))]
            continue
        row["name"], row["payload"] = _prepare_call(*call_of(node))
        if parent is None and not dormant:
            row.update(status=PENDING, waiting_on=0)
        rows.append(row)
        if isinstance(node, Job):
            jobs.append((index, node))
    return rows, jobs




def _gather_results(*parts: Job) -> list[Any]:
    """The postprocess of a composite put without one."""
    failed = [part for part in parts if part.status != COMPLETED]
    if failed:
        described = []
        for part in failed[:_PARTS_NAMED]:
            last_line = _last_line(part.error)
            described.append(f"job {part.id} ({part.name}) {part.status}"
                             + (f": {_shortened(last_line, 300)}" if last_line else ""))
        if len(failed) > _PARTS_NAMED:
            described.append(f"and {len(failed) - _PARTS_NAMED} more")
        raise PartsFailed(f"{len(failed)} of {len(parts)} parts did not complete: "
                          + "; ".join(described))
    return [part.result for part in parts]


def _run_matching_side(success: tuple[str, bytes | None], failure: tuple[str, bytes | None],
                       outcome: Any) -> Any:
    """The call stored for `Job.add_callbacks` with both sides."""
    name, payload = failure if isinstance(outcome, Failure) else success
    # Both sides are inside this job's own payload, whose signature, if any,
    # was checked before it was unpickled.
    fn, args, kwargs = _load_call(name, payload, None, (), None)
    return fn(*args, outcome, **kwargs)


def _inputs_from_the_database(job: Job) -> list[Any]:
    """The arguments a job gets beyond its own: a composite's postprocess
    gets the finished parts, a callback the result (or `Failure`) of its job."""
    queue = job._require_queue()
    if job._row.get("composite") is not None:
        return [Job._bound(queue, row) for row in queue._storage.children(job._require_id(),
                                                                           "part")]
    if job.role in _CALLBACK_ROLES:
        parent = queue.get(job._row["parent_id"])
        return [parent.result if parent.status == COMPLETED else Failure(parent)]
    return []


def _follow_up(job: Job, returned: Job | Composite) -> int | list[dict[str, Any]]:
    """What `_SQLiteStorage.wait_for` needs for a job that returned ``returned``."""
    if isinstance(returned, Job) and returned.id is not None:
        if returned._require_queue().path != job._require_queue().path:
            raise ValueError(f"job {job.id} returned {returned!r}, which is in another "
                             f"database; a job can wait only on jobs of its own")
        if returned.id == job.id:
            raise ValueError(f"job {job.id} returned itself; it cannot wait for itself")
        return returned.id
    options = _Options(_now(job._require_queue()._storage), {}, base={
        **_PUT_DEFAULTS, "queue": job.queue, "priority": job.priority})
    rows = _plan_tree(returned, options, set(), dormant=True)[0]
    # Checked here, so that the run fails with it; the fenced write checks again.
    _check_sizes(rows, job._require_queue()._storage.size_limit)
    return rows


###############################################################################
# Worker pool
###############################################################################

# A supervisor process claims jobs, hands them to child processes over pipes,
# and records what they report, in batches; only the supervisor writes job
# bookkeeping, so every such write is fenced by the lease it claimed with.


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "is still running"
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


def _ignore_signal(signum: int, frame: Any) -> None:
    """A no-op handler.  Unlike SIG_IGN, a handler is reset by exec, so
    programs a job starts still get the default signal behaviour."""


# -- schedules, as users see them -----------------------------------------------------


def _schedule_row(queue: Queue, name: str, cron: str, job: Any, *, tz: str, catchup: str,
                  catchup_limit: int, max_lag: float | datetime.timedelta | None,
                  overlap: str, given: dict[str, Any]) -> dict[str, Any]:
    """The row `Queue.schedule` stores, every argument checked: the job
    planned as a put of it would be (its rows are the template each tick
    puts again), signed if the queue has a secret."""
    name = _check_text(name, "name")
    if not name.strip() or len(name) > 200:
        raise ValueError("a schedule's name is 1 to 200 characters, not only spaces")
    if not isinstance(cron, str):
        raise TypeError(f"cron must be a string, not {_describe(cron)}")
    parsed, zone = _Cron.parse(cron), _zone(tz)
    if catchup not in _CATCHUPS:
        raise ValueError(f"catchup is one of {', '.join(map(repr, _CATCHUPS))}, not {catchup!r}")
    if overlap not in _OVERLAPS:
        raise ValueError(f"overlap is one of {', '.join(map(repr, _OVERLAPS))}, not {overlap!r}")
    catchup_limit = _positive_int(catchup_limit, "catchup_limit")
    if catchup_limit > _MOST_MISSED:
        raise ValueError(f"catchup_limit is at most {_MOST_MISSED:,}")
    lag = None if max_lag is None else _seconds(max_lag, "max_lag")
    if lag == 0:
        raise ValueError("max_lag must be positive, or None for no limit")
    storage = queue._storage
    now = _now(storage)
    rows, _ = _plan_tree(job, _Options(now, given), set())
    rows[0]["key"] = None
    _check_sizes(rows, storage.size_limit)
    template = _template_text(rows)
    signature = _sign(storage.secrets, _SIGNED_SCHEDULE, name.encode(), template.encode()) \
        if storage.secrets else None
    return {"name": name, "cron": parsed.text, "tz": tz, "job_name": rows[0]["name"],
            "template": template, "template_signature": signature, "catchup": catchup,
            "catchup_limit": catchup_limit, "max_lag": lag, "overlap": overlap,
            "next_tick": parsed.next_after(now, zone)}


def _host_of(owner: str | None) -> str:
    """The host in a runner's id ("pool@host:pid:..."), for people to read."""
    if not owner or "@" not in owner:
        return owner or "an unknown runner"
    return owner.split("@", 1)[1].split(":", 1)[0]


def _counted_limits(storage: _Storage, rows: Iterable[Mapping[str, Any]],
                    now: float) -> _QuotaLimits:
    """The limits of the quota ``rows``, with the claims of rate-limited
    names in their windows up to ``now`` counted (for `explain` and the
    ``quotas`` report; a claim counts them in its own transaction)."""
    limits = _QuotaLimits(rows)
    if limits.windows:
        limits.count_starts(storage.recent_starts(now - max(limits.windows)), now)
    return limits


def _explain(queue: Queue, job: Job) -> list[str]:
    """The lines of `Job.explain`."""
    storage = queue._storage
    row = job._row
    now = _now(storage)
    at = _format_time
    if row["status"] in _FINISHED:
        return [f"{row['status']} at {at(row['finished_at'])}: it will not run again "
                f"unless retried"]
    if row["status"] == ACTIVE:
        return [f"running (attempt {row['attempts']}) on {_host_of(row['lease_owner'])} "
                f"since {at(row['started_at'])}, its lease held until "
                f"{at(row['lease_expires'])} by {row['lease_owner']}"]
    if row["status"] == WAITING:
        unfinished = storage.unfinished_under(row["id"])
        if row["composite"] is not None:
            parts = len(storage.children(row["id"], "part"))
            return [f"waiting for {unfinished} of {parts} parts" if unfinished else
                    "its parts have ended: its next step is due"]
        if row["role"] in _CALLBACK_ROLES and row["parent_id"] is not None:
            return [f"waiting for job {row['parent_id']}, which it follows, to end"]
        return [f"waiting for job {row['waiting_for']}, which it returned, to end"
                if row["waiting_for"] is not None else f"waiting for {unfinished} jobs under it"]
    reasons = []
    if row["begin_by"] is not None and row["begin_by"] < now and \
            row["attempts"] <= row["not_started"]:
        reasons.append(f"deadline passed at {at(row['begin_by'])}: the next claim fails it "
                       f"with DeadlineExceeded")
    if row["begin_after"] > now:
        reasons.append(f"due in {_format_duration(row['begin_after'] - now)} "
                       f"(at {at(row['begin_after'])})")
    paused = storage.paused_queues(now)
    if row["queue"] in paused:
        until = paused[row["queue"]]
        reasons.append(f"queue {row['queue']!r} paused" + (
            f" until {at(until)}" if until is not None else " until resumed"))
    names = json.loads(row["quotas"]) if row["quotas"] else []
    if names:
        holders = storage.quota_holders()
        limits = _counted_limits(storage, storage.fetch_quotas(), now)
        for name in names:
            most, rate = limits.limit(name), limits.rate(name)
            held = [(job_id, owner) for job_id, held_names, owner in holders
                    if name in held_names]
            if most is not None and len(held) >= most:
                reasons.append(f"quota {name!r} full ({len(held)} of {most}: " + ", ".join(
                    f"job {job_id} on {_host_of(owner)}" for job_id, owner in held[:5]) + ")")
            if rate is not None and limits.started[name] >= rate[0]:
                reasons.append(f"quota {name!r} at its rate ({limits.started[name]} claimed "
                               f"in the last {rate[1]:g}s, of {rate[0]})")
    serving = [pool for pool in queue.workers() if pool["alive"] and (
        pool["queues"] is None or row["queue"] in pool["queues"])]
    if not serving:
        reasons.append(f"no live pool serves queue {row['queue']!r}")
    if not reasons:
        reasons.append(f"due now; {len(serving)} live pool{'s' * (len(serving) != 1)} "
                       f"serve{'s' * (len(serving) == 1)} queue {row['queue']!r}: it is "
                       f"claimed as soon as one has a free worker process")
    return reasons


def _when(stamp: float | None) -> datetime.datetime | None:
    return None if stamp is None else datetime.datetime.fromtimestamp(stamp,
                                                                      datetime.timezone.utc)


class Schedule:
    """A recurring job (`Queue.schedule`), as read from the database when
    this object was made; `refresh` reads it again.  Its ticks fire from
    any pool on the database, each once.

    Attributes: ``name``, ``cron``, ``tz``, ``job_name`` (the callable's),
    ``catchup``, ``catchup_limit``, ``max_lag`` (seconds, or None),
    ``overlap``, ``paused``, and, as aware datetimes (UTC) or None,
    ``next_tick``, ``last_tick`` (the latest that fired) and
    ``last_fired_at``; ``last_job_id`` is the id of the job it put last.
    """

    def __init__(self, queue: Queue, row: Mapping[str, Any]):
        self._queue = queue
        self._row = dict(row)

    name = property(lambda self: str(self._row["name"]))
    cron = property(lambda self: str(self._row["cron"]))
    tz = property(lambda self: str(self._row["tz"]))
    job_name = property(lambda self: str(self._row["job_name"]))
    catchup = property(lambda self: str(self._row["catchup"]))
    catchup_limit = property(lambda self: int(self._row["catchup_limit"]))
    max_lag = property(lambda self: self._row["max_lag"])
    overlap = property(lambda self: str(self._row["overlap"]))
    paused = property(lambda self: bool(self._row["paused"]))
    next_tick = property(lambda self: _when(self._row["next_tick"]))
    last_tick = property(lambda self: _when(self._row["last_tick"]))
    last_fired_at = property(lambda self: _when(self._row["last_fired_at"]))
    last_job_id = property(lambda self: self._row["last_job_id"])

    def __repr__(self) -> str:
        when = "paused" if self.paused else f"next {_format_time(self._row['next_tick'])}"
        return f"<Schedule {self.name!r} {self.cron!r} {self.tz} {when}>"

    def refresh(self) -> Schedule:
        """Read the schedule again; raises `ScheduleNotFound` once removed."""
        self._row = self._queue.get_schedule(self.name)._row
        return self

    def pause(self) -> Schedule:
        """Fire no tick until `resume`; a pool already running its job goes on."""
        return self._set_paused(True)

    def resume(self) -> Schedule:
        """Fire again, from the next tick after now: ticks of the pause do not fire."""
        return self._set_paused(False)

    def _set_paused(self, paused: bool) -> Schedule:
        if not self._queue._storage.pause_schedule(self.name, paused, _now(self._queue._storage)):
            raise ScheduleNotFound(f"no schedule {self.name!r} in {self._queue.path}")
        return self.refresh()

    def trigger(self) -> Job:
        """Put its job now, outside its ticks (its meta's tick is now); the
        next tick stays as it was."""
        job_id = self._queue._storage.trigger_schedule(self.name, _now(self._queue._storage))
        if job_id is None:
            raise ScheduleNotFound(f"no schedule {self.name!r} in {self._queue.path}")
        self.refresh()
        return self._queue.get(job_id)

    def remove(self) -> bool:
        """`Queue.unschedule` this schedule."""
        return self._queue.unschedule(self.name)

    def as_dict(self) -> dict[str, Any]:
        """Its fields as plain values (times as ISO 8601 text), as the command
        line prints them with --json."""
        row = self._row
        return {"name": self.name, "cron": self.cron, "tz": self.tz, "job": self.job_name,
                "catchup": self.catchup, "catchup_limit": self.catchup_limit,
                "max_lag": self.max_lag, "overlap": self.overlap, "paused": self.paused,
                "next_tick": row["next_tick"] and _format_time(row["next_tick"]),
                "last_tick": row["last_tick"] and _format_time(row["last_tick"]),
                "last_fired_at": row["last_fired_at"] and _format_time(row["last_fired_at"]),
                "last_job_id": self.last_job_id}


# -- what a supervisor and its worker processes tell each other -------------------
#
# They talk over a duplex pipe, in lists of the messages below (a batch of
# outcomes costs one send and one pickle), and share a `_RunningSlot`.


class _RunningSlot:
    """The shared memory through which a worker process shows its supervisor
    what it runs: in each of its threads for synchronous jobs (its lanes),
    the job running now (0 for none) and when it started on the monotonic
    clock (the same for every process, on Linux and macOS); the last job it
    started, of those its threads take in order; and how many of the jobs
    sent to its event loop have started.  With it the supervisor kills,
    times and blames the right job, and knows, when a process dies, which
    of its jobs had run.  The worker process writes it; the supervisor only
    reads."""

    _LAST, _LIGHT, _LANES = 0, 1, 2  # the layout: then (job, since) for each lane
    __slots__ = ("array", "lanes")

    def __init__(self, array: Any):
        self.array = array  # a multiprocessing RawArray of `size(lanes)` doubles
        self.lanes = (len(array) - self._LANES) // 2

    @classmethod
    def size(cls, lanes: int) -> int:
        return cls._LANES + 2 * lanes

    def runs(self) -> list[tuple[int, float]]:
        """(job id, since) of each lane running a job."""
        found = []
        for lane in range(self.lanes):
            job_id = int(self.array[self._LANES + 2 * lane])
            if job_id:
                found.append((job_id, float(self.array[self._LANES + 2 * lane + 1])))
        return found

    def sole_job(self) -> int:
        """The job running, if exactly one is (0 otherwise)."""
        runs = self.runs()
        return runs[0][0] if len(runs) == 1 else 0

    @property
    def last_started(self) -> int:
        return int(self.array[self._LAST])

    def start(self, job_id: int, now: float, lane: int = 0) -> None:
        self.array[self._LANES + 2 * lane + 1] = now
        self.array[self._LAST] = job_id
        self.array[self._LANES + 2 * lane] = job_id  # last: the start above is then valid

    def clear(self, lane: int = 0) -> None:
        self.array[self._LANES + 2 * lane] = 0

    @property
    def light_started(self) -> int:
        """How many of the jobs sent to its event loop (`_JobToRun.light`),
        in the order sent, the process has started: they start in order."""
        return int(self.array[self._LIGHT])

    def light_start(self) -> None:
        self.array[self._LIGHT] += 1


class _JobToRun(NamedTuple):
    """A claimed job as a worker process gets it; ``light``: an async job,
    for its event loop (`_JobLoop`), which starts such jobs in the order
    sent, beside the synchronous ones its lanes run."""

    job_id: int
    row: dict[str, Any]
    payload: bytes | None
    signature: bytes | None
    light: bool = False


class _Run(NamedTuple):
    """To a worker process: run these jobs, after those it holds."""

    jobs: list[_JobToRun]


class _Skip(NamedTuple):
    """To a worker process: give back these jobs unless started, each with a
    `_Skipped`; ``ids`` None gives back every job it holds (a stopping pool)."""

    ids: tuple[int, ...] | None


class _Stop(NamedTuple):
    """To a worker process: exit once the jobs it holds have run."""


class _CancelRun(NamedTuple):
    """To a worker process: cancel the task of an async job (``reason``:
    cancel, lease, overdue), or give it back if it has not started."""

    job_id: int
    reason: str


class _Ready(NamedTuple):
    """From a worker process: set up, and waiting for jobs."""

    pid: int


class _Started(NamedTuple):
    """From a worker process: a job with a timeout began; its supervisor
    wakes to time it."""

    job_id: int


class _Lane(NamedTuple):
    """From a worker process: a job began on its event loop (``light``), or
    one sent there turned out synchronous and went to its lanes."""

    job_id: int
    light: bool


class _Progress(NamedTuple):
    """From a worker process: the latest progress and meta of a running job."""

    job_id: int
    fields: dict[str, Any]


class _ForwardedLog(NamedTuple):
    """From a worker process: a log record, as plain data."""

    data: dict[str, Any]


class _Skipped(NamedTuple):
    """From a worker process: a job it gave back, never started."""

    job_id: int


class _Done(NamedTuple):
    """From a worker process: a job ran, with this outcome, in these seconds."""

    job_id: int
    outcome: _Outcome
    seconds: float


class _Completed(NamedTuple):
    """From a worker process: jobs that completed with no result, the most
    common outcome of quick jobs, in one message for a batch of them, and
    the seconds each took."""

    job_ids: list[int]
    seconds: list[float]


_FromChild = Union[_Completed, _Done, _Skipped, _Progress, _ForwardedLog, _Started, _Ready,
                   _Lane]


# -- worker processes -------------------------------------------------------------


class _ChildWork:
    """A worker process's state, shared by its threads.

    - The main thread runs synchronous jobs, one at a time, in the order
      they came; with ``threads`` > 1, as many lane threads do, each taking
      the next (`_run_lane`).
    - A reader thread takes the supervisor's messages as they arrive, so
      that a `_Skip` acts at once, even while a job runs.  It never sends,
      so it always keeps reading: the supervisor's writes to a worker
      process cannot block for long, even while it waits to write back.  It
      exits the process when the supervisor is gone: the jobs' leases then
      lapse, and another pool takes them.
    - A flusher thread sends outcomes that have waited ``_FLUSH_AFTER``, so
      a quick job's result never waits for the slow job after it.
    - Async jobs run on an event loop in a thread of their own (`_JobLoop`),
      made when the first one comes: those sent as ``light`` wait in
      ``light_pending`` for it, never behind a synchronous job.
    """

    def __init__(self, conn: Any, slot: _RunningSlot):
        self.conn = conn
        self.slot = slot
        self.make_loop: Callable[[], _JobLoop] | None = None  # set by _child_main
        self.job_loop: _JobLoop | None = None
        self.lock = threading.Condition()  # guards the attributes below
        self.pending: collections.deque[_JobToRun] = collections.deque()
        self.light_pending: collections.deque[_JobToRun] = collections.deque()
        self.outbox: list[_FromChild] = []
        self.outcomes_held = 0  # jobs whose outcome is in the outbox
        self.held_since = 0.0
        self.stopping = False
        self._send_lock = threading.Lock()

    def send(self, messages: list[_FromChild]) -> None:
        if not messages:
            return
        with self._send_lock:
            try:
                self._send_or_exit(messages)
            except (pickle.PicklingError, TypeError, AttributeError, RecursionError):
                # Pickling failed, so nothing was written: send what pickles,
                # one by one, so that one bad message never costs an outcome.
                for message in messages:
                    try:
                        self._send_or_exit([message])
                    except (pickle.PicklingError, TypeError, AttributeError,
                            RecursionError):
                        print(f"litejobs: a worker process could not send "
                              f"{_describe(message)}", file=sys.stderr)

    def _send_or_exit(self, messages: list[_FromChild]) -> None:
        try:
            self.conn.send(messages)
        except OSError:  # a broken pipe: the supervisor is gone, and so is this
            os._exit(_ORPHANED_EXIT)  # process, quietly; the jobs' leases lapse

    def _take_outbox(self) -> list[_FromChild]:
        messages, self.outbox = self.outbox, []
        self.outcomes_held = 0
        return messages

    def read(self) -> None:
        parent = multiprocessing.parent_process()
        watched: list[Any] = [self.conn] + ([parent.sentinel] if parent is not None else [])
        while True:
            if self.conn not in multiprocessing.connection.wait(watched):
                os._exit(_ORPHANED_EXIT)
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                os._exit(_ORPHANED_EXIT)
            light = False
            with self.lock:
                if isinstance(message, _Run):
                    for item in message.jobs:
                        (self.light_pending if item.light else self.pending).append(item)
                        light = light or item.light
                elif isinstance(message, _Skip):
                    self._give_back(message.ids)
                elif isinstance(message, _CancelRun):
                    self._give_back((message.job_id,))
                elif isinstance(message, _Stop):
                    self.stopping = True
                self.lock.notify_all()
            if light or (isinstance(message, _CancelRun) and self.job_loop is not None):
                self.loop().take(message)
            if isinstance(message, _Stop):
                return

    def loop(self) -> _JobLoop:
        """The event loop for async jobs, made when the first comes."""
        with self.lock:  # the reader thread and the main thread may both ask
            if self.job_loop is None:
                assert self.make_loop is not None
                self.job_loop = self.make_loop()
            return self.job_loop

    def _give_back(self, ids: tuple[int, ...] | None) -> None:
        unwanted = None if ids is None else set(ids)
        for waiting in (self.pending, self.light_pending):
            kept = [item for item in waiting
                    if unwanted is not None and item.job_id not in unwanted]
            if len(kept) < len(waiting):
                self.outbox.extend(_Skipped(item.job_id) for item in waiting
                                   if unwanted is None or item.job_id in unwanted)
                waiting.clear()
                waiting.extend(kept)
        self.held_since = 0.0  # the flusher sends the replies at once

    def flush_held(self) -> None:
        while True:
            with self.lock:
                while not self.outbox and not self.stopping:
                    self.lock.wait()
                if self.stopping:
                    return
                wait = self.held_since + _FLUSH_AFTER - time.monotonic()
                if wait > 0:
                    self.lock.wait(wait)
                    continue
                messages = self._take_outbox()
            self.send(messages)

    def next_job(self, lane: int = 0) -> _JobToRun | None:
        """The next job to run, marked as running in ``lane`` (a thread of the
        process's); None once told to stop."""
        with self.lock:
            while not self.pending and not self.stopping:
                idle = self._take_outbox()
                if idle:  # nothing to run: send what is held, now
                    self.lock.release()
                    try:
                        self.send(idle)
                    finally:
                        self.lock.acquire()
                    continue
                self.lock.wait()
            if not self.pending:
                return None
            item = self.pending.popleft()
            self.slot.start(item.job_id, time.monotonic(), lane)
            held: list[_FromChild] = []
            if item.row["timeout"] is not None:  # wake the supervisor to time it
                held = self._take_outbox() + [_Started(item.job_id)]
        self.send(held)
        return item

    def post(self, message: _FromChild) -> None:
        """Send ``message`` with the next batch, within ``_FLUSH_AFTER``."""
        with self.lock:
            if not self.outbox:
                self.held_since = time.monotonic()
                self.lock.notify_all()  # the flusher starts counting
            self.outbox.append(message)

    def finished(self, job_id: int, outcome: _Outcome, seconds: float, timed: bool,
                 lane: int | None = 0) -> None:
        """``job_id`` ended; ``lane`` None for an async job, which held none."""
        with self.lock:
            if lane is not None:
                self.slot.clear(lane)
            if not self.outbox:
                self.held_since = time.monotonic()
                self.lock.notify_all()  # the flusher starts counting
            last = self.outbox[-1] if self.outbox else None
            if outcome != _PLAIN_COMPLETION:
                self.outbox.append(_Done(job_id, outcome, seconds))
            elif type(last) is _Completed:
                last.job_ids.append(job_id)
                last.seconds.append(seconds)
            else:
                self.outbox.append(_Completed([job_id], [seconds]))
            self.outcomes_held += 1
            full = timed or self.outcomes_held >= _MAX_CHUNK
            messages = self._take_outbox() if full else []
        self.send(messages)

    def close(self) -> None:
        with self.lock:
            messages = self._take_outbox()
        self.send(messages)


class _JobLoop:
    """A worker process's event loop for async jobs: one long-lived loop in a
    thread of its own, running up to ``concurrency`` jobs at once.  It owns
    the loop, the calls running on it by job id, and the watch for a job
    that blocks it.  Jobs sent to it (`_ChildWork.light_pending`) start in
    the order sent, each counted in the `_RunningSlot` as it starts; an
    async job the main thread found (its first of a name) is adopted.  A
    job sent here whose function is not a coroutine function goes to the
    lanes: synchronous jobs never run on the loop."""

    def __init__(self, work: _ChildWork, queue: Queue, concurrency: int):
        import asyncio
        self.work = work
        self.queue = queue
        self.concurrency = concurrency
        self.loop = asyncio.new_event_loop()
        self.calls: dict[int, _Call] = {}  # changed on the loop's thread only
        self.tasks: dict[Any, _Call] = {}  # the same, by task, for the watch to read
        self.idle = threading.Event()  # set while nothing runs
        self.idle.set()
        self.beat = time.monotonic()  # the loop's last turn, as the watch saw it
        self.thread = threading.Thread(target=self._run, daemon=True, name="litejobs-loop")
        self.thread.start()
        threading.Thread(target=self._watch, daemon=True, name="litejobs-loop-watch").start()

    def _run(self) -> None:
        import asyncio
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._heartbeat)
        self.loop.run_forever()

    def _heartbeat(self) -> None:
        self.beat = time.monotonic()
        self.loop.call_later(_LOOP_BLOCKED / 5, self._heartbeat)

    def _watch(self) -> None:
        """Log, once per stall, the job whose task holds the loop."""
        import asyncio
        logged = 0.0
        while self.thread.is_alive():
            time.sleep(_LOOP_BLOCKED / 5)
            beat = self.beat
            held = time.monotonic() - beat
            if held < _LOOP_BLOCKED or beat == logged:
                continue
            call = self.tasks.get(asyncio.current_task(self.loop))
            if call is not None:
                logged = beat
                _log.warning("job %s (%s) has blocked its worker process's event loop for "
                             "%.1fs: an async job must await, not block (run blocking work "
                             "with asyncio.to_thread, or as a synchronous job)",
                             call.job.id, call.job.name, held, extra=_job_log(call.job._row))

    def take(self, message: _Run | _CancelRun) -> None:
        """From the reader thread: start what came, or cancel a task."""
        if isinstance(message, _CancelRun):
            self.loop.call_soon_threadsafe(self._cancel, message.job_id, message.reason)
        else:
            self.loop.call_soon_threadsafe(self._start_waiting)

    def adopt(self, item: _JobToRun, call: _Call, coroutine: Coroutine[Any, Any, Any],
              started: float) -> None:
        """From the main thread: run an async job it started."""
        self.idle.clear()
        self.work.post(_Lane(item.job_id, True))
        self.loop.call_soon_threadsafe(self._launch, item, call, coroutine, started)

    def _cancel(self, job_id: int, reason: str) -> None:
        call = self.calls.get(job_id)
        if call is not None:
            call.stop(reason)

    def _start_waiting(self) -> None:
        work = self.work
        while len(self.calls) < self.concurrency:
            with work.lock:
                if not work.light_pending:
                    return
                item = work.light_pending.popleft()
                work.slot.light_start()
            self.idle.clear()
            started = time.perf_counter()
            job = Job._bound(self.queue, item.row)
            late = _too_late(item.row, self.queue._storage.clock())
            if late is not None:
                self._finished(item, late, started)
                continue
            call = _Call(job, item.payload, item.signature,
                         functools.partial(_post_progress, work, item.job_id))
            begun = call.start(only_async=True)
            if begun is None:  # not a coroutine function: the lanes' to run
                call._ended(_PLAIN_COMPLETION)
                with work.lock:
                    work.pending.appendleft(item._replace(light=False))
                    work.lock.notify_all()
                work.post(_Lane(item.job_id, False))
            elif isinstance(begun, _Outcome):
                self._finished(item, begun, started)
            else:
                work.post(_Lane(item.job_id, True))
                self._launch(item, call, begun, started)

    def _launch(self, item: _JobToRun, call: _Call, coroutine: Coroutine[Any, Any, Any],
                started: float) -> None:
        task = call.context.run(self.loop.create_task, self._run_one(item, call, coroutine,
                                                                       started))
        call.task = task
        self.calls[item.job_id] = call
        self.tasks[task] = call

    async def _run_one(self, item: _JobToRun, call: _Call,
                       coroutine: Coroutine[Any, Any, Any], started: float) -> None:
        try:
            outcome = await call.run_coroutine(coroutine)
        except BaseException as exc:  # the loop closing under it, or KeyboardInterrupt
            outcome = _Outcome.failure(exc)
        self.calls.pop(item.job_id, None)
        self.tasks.pop(call.task, None)
        self._finished(item, outcome, started)
        self._start_waiting()

    def _finished(self, item: _JobToRun, outcome: _Outcome, started: float) -> None:
        self.work.finished(item.job_id, outcome, time.perf_counter() - started,
                           False, lane=None)
        if not self.calls:
            with self.work.lock:
                if not self.work.light_pending:
                    self.idle.set()

    def close(self) -> None:
        """Once nothing is left to run: stop the loop and its thread."""
        while True:
            self.idle.wait()
            with self.work.lock:
                if not self.work.light_pending:
                    break
            time.sleep(0.001)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class _ForwardLogs(logging.Handler):
    """In a worker process: send each log record to the supervisor, with the
    id of the job running here (even from a thread the job started).

    At most ``_LOG_RATE`` a second, after a burst of ``_LOG_BURST``: the
    supervisor logs what it gets, and a job logging without end must not take
    its time from leases, heartbeats and timeouts.  The rest are dropped, and
    a warning says how many."""

    def __init__(self, work: _ChildWork):
        super().__init__()
        self.work = work
        self._allowance = float(_LOG_BURST)
        self._filled_at = time.monotonic()
        self._dropped: collections.Counter[int] = collections.Counter()  # by job id

    def emit(self, record: logging.LogRecord) -> None:
        now = time.monotonic()
        self._allowance = min(float(_LOG_BURST),
                              self._allowance + (now - self._filled_at) * _LOG_RATE)
        self._filled_at = now
        if self._allowance < 1:
            self._dropped[int(getattr(record, "job_id", 0) or self._job_id())] += 1
            return
        self._allowance -= 1
        self.report_dropped()
        self._forward(record)

    def report_dropped(self) -> None:
        """Say how many records were dropped, if any, once the flood is over
        or its job has ended."""
        if not self._dropped:
            return
        dropped, self._dropped = self._dropped, collections.Counter()
        for job_id, count in dropped.items():
            self._forward(logging.makeLogRecord({
                "name": "litejobs", "levelno": logging.WARNING, "levelname": "WARNING",
                "msg": f"{count:,} log records of job {job_id} were dropped: a worker process "
                       f"forwards at most {_LOG_RATE:,} a second to its pool",
                "job_id": job_id or None}))

    def _job_id(self) -> int:
        """The job a record is about: the one running in its thread (or task),
        else the one running in the process, if there is only one."""
        job = _CURRENT_JOB.get()
        return job.id if job is not None and job.id is not None else self.work.slot.sole_job()

    def _forward(self, record: logging.LogRecord) -> None:
        try:
            data = dict(record.__dict__)
            data["msg"], data["args"] = record.getMessage(), None
            if record.exc_info:
                data["exc_text"] = logging.Formatter().formatException(record.exc_info)
            data["exc_info"] = None
            if "job_id" not in data:
                running = self._job_id()
                if running:
                    data["job_id"] = running
            self.work.post(_ForwardedLog({key: _plain(value) for key, value in data.items()}))
        except Exception:
            self.handleError(record)


def _plain(value: Any) -> Any:
    """``value`` if it is plain data that pickles anywhere, else its repr."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (tuple, list)):
        return type(value)(_plain(item) for item in value)
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return _shortened(repr(value), _REPR_MOST)


def _handle_forwarded_log(data: dict[str, Any]) -> None:
    record = logging.makeLogRecord(data)
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)


class _JsonLogFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``process``,
    ``pid``, ``message``, and when known ``job_id``, ``job``, ``attempt``,
    ``duration`` (seconds) and ``traceback``."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        told = getattr(record, "traceback", None)
        if told and message.endswith("\n" + told):
            message = message[:-len(told) - 1].rstrip(":")  # the traceback has its own key
        entry = {"time": _format_time(record.created), "level": record.levelname,
                 "logger": record.name, "process": record.processName, "pid": record.process,
                 "message": message}
        for field in ("job_id", "job", "attempt", "duration"):
            if getattr(record, field, None) is not None:
                entry[field] = getattr(record, field)
        if told:
            entry["traceback"] = told
        elif record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["traceback"] = record.exc_text
        return json.dumps(entry, default=str)


def _job_log(row: Mapping[str, Any], duration: float | None = None) -> dict[str, Any]:
    """The ``extra`` of a log record about a job."""
    return {"job_id": row["id"], "job": row["name"], "attempt": row["attempts"],
            "duration": None if duration is None else round(duration, 6)}


# How `_InfoBudget` counts the runs it did not log one by one, by status.
_ENDED_WELL = {COMPLETED: "more jobs completed", CANCELLED: "more jobs cancelled",
               WAITING: "more jobs returned a job to wait for"}


class _InfoBudget:
    """How many runs that end well (completed, cancelled, waiting on a job
    they returned) a pool logs one by one at INFO: at most ``_INFO_LINES`` a
    second.  Past that, the rest are logged at DEBUG only, and one INFO line
    a second counts them: a pool draining tens of thousands of quick jobs a
    second would otherwise spend a third of its time logging them.  Runs
    that fail, retry or are lost are always logged one by one.  It owns the
    current second's count, on the injected ``clock`` (monotonic seconds)."""

    def __init__(self, pool_id: str, clock: Callable[[], float]):
        self._pool_id = pool_id
        self._clock = clock
        self._since = clock()
        self._lines = 0
        self._held: collections.Counter[str] = collections.Counter()  # by status

    def take(self, status: str) -> bool:
        """Whether a run that ended ``status`` gets its own INFO line."""
        now = self._clock()
        if now - self._since >= 1.0:
            self.flush(now)
        if self._lines < _INFO_LINES:
            self._lines += 1
            return True
        self._held[status] += 1
        return False

    def take_turn(self, now: float) -> None:
        """Once the second is over, log what was held back (a pool calls this
        as it goes, so that the count comes even when jobs stop coming)."""
        if now - self._since >= 1.0:
            self.flush(now)

    def flush(self, now: float) -> None:
        """Log the count of the runs held back, if any, and start a new second."""
        if self._held:
            ended = ", ".join(f"{count:,} {_ENDED_WELL[status]}"
                              for status, count in sorted(self._held.items()))
            _log.info("%s: %s in the last %s, beyond the %d a second logged one by one "
                      "(--log-level debug logs each)", self._pool_id, ended,
                      _format_duration(now - self._since), _INFO_LINES)
            self._held.clear()
        self._since = now
        self._lines = 0


def _log_outcome(row: Mapping[str, Any], outcome: _Outcome, status: str | None,
                 duration: float | None, budget: _InfoBudget | None = None) -> None:
    """Log how a run ended, once its outcome is written (``status`` None: the
    lease was lost first); one that ended well at INFO if the ``budget``
    allows, else at DEBUG.  A run refused by its runner was logged by
    `_Refusals` already."""
    if outcome.refused:
        return
    timed_out = outcome.error_type == _JOB_TIMEOUT_TYPE
    level = (logging.ERROR if status == FAILED or (status == PENDING and timed_out) else
             logging.WARNING if status in (None, PENDING) else logging.INFO)
    if level == logging.INFO and budget is not None and _log.isEnabledFor(level) \
            and not budget.take(str(status)):
        level = logging.DEBUG
    if not _log.isEnabledFor(level):
        return  # pools call this for every job: do nothing more when it is not logged
    extra = _job_log(row, duration)
    what = f"job {row['id']} ({row['name']}) attempt {row['attempts']}"
    took = "" if duration is None else f" after {duration:.3f}s"
    if status is None:
        _log.warning("%s: the lease was lost before its outcome was written, so another "
                     "attempt owns the job; this outcome was discarded", what, extra=extra)
    elif status == FAILED:
        _log.error("%s %s%s:\n%s", what, "timed out" if timed_out else "failed", took,
                   (outcome.error or "").rstrip(),
                   extra={**extra, "traceback": (outcome.error or "").rstrip()})
    elif status == PENDING:
        _log.log(level, "%s %s%s and will be retried: %s", what,
                 "timed out" if timed_out else "failed", took, _last_line(outcome.error),
                 extra=extra)
    elif status == CANCELLED:
        _log.log(level, "%s was cancelled%s", what, took, extra=extra)
    elif status == WAITING:
        _log.log(level, "%s returned a job%s, and waits for it", what, took, extra=extra)
    else:
        _log.log(level, "%s completed%s", what, took, extra=extra)


def _limit_memory(most: int) -> None:
    import resource  # Unix only, and only children with a limit need it
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    if hard != resource.RLIM_INFINITY:
        most = min(most, hard)
    resource.setrlimit(resource.RLIMIT_AS, (most, hard))


def _post_progress(work: _ChildWork, job_id: int, fields: dict[str, Any]) -> None:
    work.post(_Progress(job_id, fields))


def _too_late(row: Mapping[str, Any], now: float) -> _Outcome | None:
    """The outcome of a job whose ``begin_by`` passed while it waited in a
    worker process, behind a slow job: it is not started, as a job not
    claimed by then is not (`_EXPIRE_DEADLINES`).  None if it may start."""
    begun_before = row["attempts"] - 1 > row["not_started"]  # claims before this one
    if row["begin_by"] is None or begun_before or now <= row["begin_by"]:
        return None
    return _Outcome.failure(_raised(DeadlineExceeded(
        f"job {row['id']} ({row['name']}) was to start by {_format_time(row['begin_by'])} "
        f"but its worker process reached it at {_format_time(now)}")))


def _run_lane(work: _ChildWork, queue: Queue, forwarder: _ForwardLogs, lane: int) -> None:
    """Run the synchronous jobs a worker process takes in ``lane``, one at a
    time, until told to stop; an async job found here goes to the loop."""
    news = _NewsWatch(queue._storage)
    while True:
        item = work.next_job(lane)
        if item is None:
            break
        job_id, row, payload, signature, _ = item
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug("job %s (%s) attempt %d started in process %d", job_id, row["name"],
                       row["attempts"], os.getpid(), extra=_job_log(row))
        started = time.perf_counter()
        job = Job._bound(queue, row)
        news.watch(job)
        try:
            outcome = _too_late(row, queue._storage.clock())
            if outcome is None:
                call = _Call(job, payload, signature,
                             functools.partial(_post_progress, work, job_id))
                begun = call.start()
                if not isinstance(begun, _Outcome):
                    assert begun is not None  # (None only with only_async)
                    news.watch(None)
                    work.slot.clear(lane)  # the lane is free: the job runs on the loop
                    work.loop().adopt(item, call, begun, started)
                    continue
                outcome = begun
            _crash_point("after-job")
        except KeyboardInterrupt as exc:  # raised by the job itself: SIGINT is ignored
            outcome = _Outcome.failure(exc)
        news.watch(None)
        forwarder.report_dropped()
        work.finished(job_id, outcome, time.perf_counter() - started,
                      row["timeout"] is not None, lane)
    news.stop()


def _child_main(conn: Any, options: dict[str, Any], slot: _RunningSlot) -> None:
    """A worker process: run the jobs the supervisor sends, in order, and
    send back their outcomes, batched while jobs are quick."""
    # Stopping is the supervisor's decision: a Ctrl-C or a SIGTERM sent to the
    # whole process group must not kill jobs mid-run.
    signal.signal(signal.SIGINT, _ignore_signal)
    signal.signal(signal.SIGTERM, _ignore_signal)
    work = _ChildWork(conn, slot)
    # Everything logged here, by litejobs or by jobs, goes to the supervisor,
    # which logs it wherever the pool's own log goes.
    root = logging.getLogger()
    forwarder = _ForwardLogs(work)
    root.handlers[:] = [forwarder]
    root.setLevel(options["log_levels"][0])
    _log.setLevel(options["log_levels"][1])
    if options["memory_limit"] is not None:
        _limit_memory(options["memory_limit"])
    for directory in reversed(options["import_paths"]):  # the pool's --path, first
        if directory not in sys.path:
            sys.path.insert(0, directory)
    # The pool's secrets, even none at all, here and for the Jobs and Queues
    # that jobs get as arguments.
    queue = Queue(options["path"], create=False, busy_timeout=options["busy_timeout"],
                  size_limit=options["size_limit"], secret=_Keys(options["secrets"]),
                  network_filesystem=options["network_filesystem"])
    work.make_loop = functools.partial(_JobLoop, work, queue, options["async_concurrency"])
    work.send([_Ready(os.getpid())])
    for target, name in ((work.read, "reader"), (work.flush_held, "flusher")):
        threading.Thread(target=target, daemon=True, name=f"litejobs-child-{name}").start()
    # Synchronous jobs run in the main thread's lane, and with threads > 1 in
    # lanes of their own besides; a lane whose job ran past its timeout is
    # left to it (daemon: the process's exit ends it, see `_InFlight`).
    lanes = [threading.Thread(target=_run_lane, args=(work, queue, forwarder, lane),
                              daemon=True, name=f"litejobs-lane-{lane}")
             for lane in range(1, options["threads"])]
    for thread in lanes:
        thread.start()
    _run_lane(work, queue, forwarder, 0)
    for thread in lanes:
        thread.join()
    if work.job_loop is not None:
        work.job_loop.close()
    work.close()
    queue.close()


# -- the supervisor: its view of the worker processes -------------------------------


class _FileGone(DatabaseError):
    """The database file was deleted or replaced under a running pool."""


@dataclasses.dataclass(eq=False)
class _Assignment:
    """A claimed job handed to a worker process."""

    job_id: int
    token: str
    row: dict[str, Any]
    child: _Child | None  # None: given back before it reached one (see _Refusals)
    skip_sent: bool = False  # asked back from its process (_Skip)
    lease_lost: bool = False
    start_marked: bool = False  # the database knows its run began (_MARK_STARTED)
    seconds: float | None = None  # how long the run took, once it has ended
    light_seq: int | None = None  # sent to the process's event loop: its place in that order
    on_loop: bool = False  # running on the process's event loop (_Lane)
    began: float | None = None  # when it began there (the pool's clock)
    stop_reason: str | None = None  # why its task was cancelled (_CancelRun)


class _Child:
    """One worker process, as its supervisor sees it: the process, its pipe,
    its `_RunningSlot`, the jobs handed to it in order, and how it stands."""

    def __init__(self, process: Any, conn: Any, number: int, slot: _RunningSlot,
                 now: float):
        self.process = process
        self.conn = conn
        self.slot = slot
        self.fd: int = conn.fileno()  # the selector's key, valid after conn closes
        self.number = number
        self.assigned: collections.deque[_Assignment] = collections.deque()
        self.ready = False  # set up and waiting for work: until then it gets none
        self.sent = 0
        self.light_sent = 0  # jobs sent to its event loop, ever (see _RunningSlot.light_started)
        self.done = 0
        self.heard = now  # when it last sent anything, or was sent work while idle
        self.kill_reason: tuple[str, int | None] | None = None
        self.abandoned: set[int] = set()  # runs its threads were left to (`_InFlight._abandon`)
        self.retiring = False
        self.stop_sent = False

    def assignment(self, job_id: int) -> _Assignment | None:
        """This process's assignment of ``job_id`` (the oldest, if the pool
        claimed the job again after losing its lease)."""
        for assignment in self.assigned:
            if assignment.job_id == job_id:
                return assignment
        return None

    def runs(self) -> list[tuple[_Assignment, float]]:
        """The assignments its threads run now, with when each started."""
        found = []
        for job_id, since in self.slot.runs():
            assignment = self.assignment(job_id)
            if assignment is not None:
                found.append((assignment, since))
        return found

    def running(self, job_id: int) -> bool:
        """Whether one of its threads runs ``job_id`` now."""
        return any(running == job_id for running, _ in self.slot.runs())

    def light(self) -> int:
        """The async jobs it holds: sent to its event loop, or running there."""
        return sum(1 for a in self.assigned if a.light_seq is not None or a.on_loop)

    def light_started(self, assignment: _Assignment) -> bool:
        """Whether a job sent to its event loop began there (its slot says)."""
        return assignment.light_seq is not None and \
            assignment.light_seq < self.slot.light_started

    def send(self, message: _Run | _Skip | _Stop | _CancelRun) -> bool:
        try:
            self.conn.send(message)
        except (OSError, ValueError):
            return False  # it died; its sentinel says so next
        return True

    def kill(self, reason: str, job_id: int | None) -> None:
        if self.kill_reason is None:
            self.kill_reason = (reason, job_id)
        with contextlib.suppress(OSError, ValueError):
            self.process.kill()


class _Dispatcher:
    """Which claimed job goes to which worker process: pure logic, no I/O,
    on an injected clock (monotonic seconds).

    It owns what the pool knows of how long jobs take.  While jobs are
    reliably quick, each process gets work ahead, in chunks, so that it never
    waits for the supervisor; one slow job stops that at once.  A process
    whose work has not moved for ``steal_after`` (a slow job, a stopped
    process) is *stuck*: it gets nothing more, and the jobs it holds but has
    not started are asked back (`steals`), so that no job waits behind a slow
    one.  ``steal_after`` is `_STEAL_AFTER`, longer on a machine with more
    runnable processes than cores (``load``, the load average's reader):
    there, a process may not move only because it waits for a core, and
    taking its jobs back would churn them for nothing.

    Async jobs are light: the jobs of a callable seen to be a coroutine
    function (``async_names``, as processes report: `_Lane`) go to the
    processes' event loops, up to ``async_concurrency`` each, beside and
    apart from the synchronous jobs, and never make a process stuck.
    """

    def __init__(self, max_jobs_per_child: int | None,
                 load: Callable[[], float] = lambda: os.getloadavg()[0],
                 async_concurrency: int = _ASYNC_CONCURRENCY):
        self.async_concurrency = async_concurrency
        self.async_names: set[str] = set()
        self.max_jobs_per_child = max_jobs_per_child
        self.job_seconds: float | None = None  # a cautious estimate: see note_duration
        self.timed_jobs = 0
        self._load = load
        self.steal_after = _STEAL_AFTER
        self._load_read = -math.inf  # when ``load`` was last read (the pool's clock)

    def _read_load(self, now: float) -> None:
        """Scale ``steal_after`` with the machine's load, once a second at most."""
        if now - self._load_read < 1.0:
            return
        self._load_read = now
        try:
            busy = self._load() / (os.cpu_count() or 1)
        except OSError:  # no load average here
            busy = 1.0
        self.steal_after = _STEAL_AFTER * max(1.0, busy)

    def note_duration(self, seconds: float) -> None:
        # A moving average: a slow job among quick ones moves it only so far,
        # since stealing frees what that job holds up.
        self.timed_jobs += 1
        current = self.job_seconds
        self.job_seconds = seconds if current is None else \
            current * (1 - _ESTIMATE_WEIGHT) + seconds * _ESTIMATE_WEIGHT

    def chunk(self) -> tuple[int, int]:
        """Jobs per message, and the most a process may hold, for jobs this
        fast: one at a time until jobs are known to be quick, then enough for
        ``_CHUNK_SECONDS`` of work, but no more jobs than were timed so far:
        a cold pool's chunks double as its jobs prove quick, so that it is
        soon at speed, and never bets more on its estimate than the evidence
        behind it."""
        seconds = self.job_seconds
        if seconds is None or seconds >= _FAST_JOB or self.timed_jobs < _FAST_EVIDENCE:
            return 1, 1
        chunk = max(1, min(_MAX_CHUNK, int(_CHUNK_SECONDS / max(seconds, 1e-6)),
                           self.timed_jobs))
        return chunk, 2 * chunk

    def stuck(self, child: _Child, now: float) -> bool:
        """Whether the process's work has not moved for ``steal_after``: its
        job started that long ago, or it holds jobs and has said nothing."""
        self._read_load(now)
        runs = child.slot.runs()
        if len(runs) >= child.slot.lanes:  # every thread busy: since the latest start
            return now - max(since for _, since in runs) >= self.steal_after
        return len(child.assigned) > child.light() + len(runs) \
            and now - child.heard >= self.steal_after

    def room(self, child: _Child, now: float, chunk: int, most: int) -> int:
        """How many more jobs the process should get now: ``most`` for each
        of its threads."""
        if not child.ready or child.retiring or child.kill_reason is not None \
                or child.stop_sent or self.stuck(child, now):
            return 0
        most *= child.slot.lanes
        light = child.light()
        if light > self.async_concurrency:
            return 0  # async jobs wait for its event loop: it is full
        held = len(child.assigned) - light
        if most > 1 and held > most - chunk:
            return 0  # refill only once a chunk's worth has been done
        room = most - held
        if self.max_jobs_per_child is not None:
            room = min(room, self.max_jobs_per_child - child.sent)
        return max(0, room)

    def rooms(self, children: Iterable[_Child], now: float) -> dict[_Child, int]:
        chunk, most = self.chunk()
        return {child: self.room(child, now, chunk, most) for child in children}

    def _takes_light(self, child: _Child) -> bool:
        return bool(self.async_names) and child.ready and not child.retiring \
            and child.kill_reason is None and not child.stop_sent

    def light_room(self, child: _Child) -> int:
        """How many more async jobs the process's event loop should get now."""
        if not self._takes_light(child):
            return 0
        room = self.async_concurrency - child.light()
        if self.max_jobs_per_child is not None:
            room = min(room, self.max_jobs_per_child - child.sent)
        return max(0, room)

    def plan_light(self, rows: Sequence[dict[str, Any]], children: Iterable[_Child]
                   ) -> tuple[dict[_Child, list[dict[str, Any]]], list[dict[str, Any]]]:
        """Deal the async jobs among ``rows`` to the event loops, the emptiest
        first; returns that plan and the other rows.  One claimed with room
        for a synchronous job waits for room on a loop, in its process."""
        rooms = {child: self.light_room(child) for child in children
                 if self._takes_light(child)}
        plan: dict[_Child, list[dict[str, Any]]] = {}
        rest = []
        for row in rows:
            child = max(rooms, key=rooms.__getitem__, default=None) \
                if row["name"] in self.async_names else None
            if child is None:
                rest.append(row)
                continue
            plan.setdefault(child, []).append(row)
            rooms[child] -= 1
        return plan, rest

    def plan(self, rows: Sequence[dict[str, Any]], children: Iterable[_Child],
             now: float) -> tuple[dict[_Child, list[dict[str, Any]]], list[dict[str, Any]]]:
        """Deal ``rows`` out one by one, the processes holding least first, so
        that none holds work ahead while another has none.  Returns the plan
        and the rows no process had room for."""
        rooms = self.rooms(children, now)
        turn = [child for child in sorted(rooms, key=lambda c: len(c.assigned))
                if rooms[child] > 0]
        plan: dict[_Child, list[dict[str, Any]]] = {child: [] for child in turn}
        left = collections.deque(rows)
        while left and turn:
            for child in list(turn):
                if not left:
                    break
                plan[child].append(left.popleft())
                if len(plan[child]) >= rooms[child]:
                    turn.remove(child)
        return plan, list(left)

    def steals(self, children: Iterable[_Child], now: float) -> list[_Assignment]:
        """The jobs to ask back now: those a stuck process holds, has not
        started and was not asked for yet.  Given back to the database, they
        go to the processes of this pool that are free, or of another."""
        taken: list[_Assignment] = []
        for child in children:
            if self.stuck(child, now):
                running = {job_id for job_id, _ in child.slot.runs()}
                taken += [a for a in child.assigned if not a.skip_sent
                          and a.job_id not in running and a.light_seq is None
                          and not a.on_loop]
        return taken

    def next_steal(self, children: Iterable[_Child], now: float) -> float | None:
        """When a process holding jobs it has not started becomes stuck, if
        one will; once stuck, a process that frees up wakes the pool anyway."""
        moments = []
        for child in children:
            runs = child.slot.runs()
            running = {job_id for job_id, _ in runs}
            if any(not a.skip_sent and a.job_id not in running and a.light_seq is None
                   and not a.on_loop for a in child.assigned):
                busy = len(runs) >= child.slot.lanes
                moment = (max(since for _, since in runs) if busy else child.heard) \
                    + self.steal_after
                if moment > now:
                    moments.append(moment)
        return min(moments, default=None)


class _WriteKind(enum.Enum):
    """What a pool writes about a job it holds."""

    REPORT = "report"  # progress and meta
    OUTCOME = "outcome"  # the run's result or error
    INTERRUPT = "interrupt"  # the run died, by no fault of a stop or a kill for cause
    CANCEL = "cancel"  # stopped because it was cancelled, or overdue after a stop request
    LOST = "lost"  # the run ended, but its outcome died with its process
    HAND_BACK = "hand back"  # a stopping pool killed the run after its grace
    REFUSE = "refuse"  # this pool cannot run it: it does not import, or is signed
    RELEASE = "release"  # given back unstarted


class _Record(NamedTuple):
    """One thing a pool has to write: a `_WriteKind` about an assignment, with
    its detail (the outcome, the reason, or the progress fields)."""

    kind: _WriteKind
    assignment: _Assignment
    detail: Any


class _Batch(NamedTuple):
    """What a pool writes in one transaction: `_Record`s, and the runs that
    completed with no result, the most common outcome of quick jobs, which
    are written together and cost no record each."""

    records: list[_Record]
    completions: list[_Assignment]

    def as_records(self) -> list[_Record]:
        """All of it as records, to write one by one."""
        return self.records + [_Record(_WriteKind.OUTCOME, assignment, _PLAIN_COMPLETION)
                               for assignment in self.completions]


class _Written(NamedTuple):
    """A `_Record` once written, and the job's status after (None: the lease
    was lost, and the write was fenced off)."""

    kind: _WriteKind
    assignment: _Assignment
    detail: Any
    status: str | None


class _Outage:
    """Whether the pool can reach its database, for the parts that write
    (`_Recorder`, `_Keeper`): while it cannot (a PostgreSQL restart, a cut
    connection), they keep what they must write and try again after a
    backoff that doubles up to `_RECONNECT_BACKOFF`; the outage is logged
    once as it begins and once as it ends, not at every try."""

    def __init__(self, pool_id: str, clock: Callable[[], float]):
        self._pool_id = pool_id
        self._clock = clock
        self.since: float | None = None  # when the outage began (the pool's clock)
        self._backoff = _RECONNECT_BACKOFF[0]

    def failed(self, exc: DatabaseUnreachable) -> float:
        """Note a failed try; returns when to try again (the pool's clock)."""
        now = self._clock()
        if self.since is None:
            self.since = now
            self._backoff = _RECONNECT_BACKOFF[0]
            _log.warning("%s lost its database (%s); it keeps what it has to write, and "
                         "tries again", self._pool_id, exc)
        else:
            self._backoff = min(self._backoff * 2, _RECONNECT_BACKOFF[1])
        return now + self._backoff

    def reached(self) -> None:
        """Note a write that went through."""
        if self.since is not None:
            _log.warning("%s reached its database again after %s", self._pool_id,
                         _format_duration(self._clock() - self.since))
            self.since = None


class _Recorder:
    """What a pool has to write about the jobs it holds, and the writing.

    It buffers `_Record`s and writes them, each fenced by its run's lease,
    in one transaction together with the next claim (see `write`); after a
    failed batch, each on its own, so that one bad record never sinks the
    rest.  It owns the pool's tallies (``finished``, ``dropped``) and logs
    each record once written.
    """

    def __init__(self, storage: _Storage, pool_id: str, finished: collections.Counter[str],
                 check_file: Callable[[], None], outage: _Outage,
                 clock: Callable[[], float]):
        self._storage = storage
        self._pool_id = pool_id
        self._check_file = check_file  # raises if the file is gone: see _Keeper
        self._outage = outage
        self.records: list[_Record] = []
        self.reports: dict[int, _Record] = {}  # the latest progress of each job
        self.completions: list[_Assignment] = []
        self.finished = finished
        self.dropped = 0
        self.retry_at = 0.0  # after a database error, writes wait till then (monotonic)
        self.info = _InfoBudget(pool_id, clock)

    def add(self, kind: _WriteKind, assignment: _Assignment, detail: Any = None) -> None:
        if kind is _WriteKind.REPORT:
            self.reports[assignment.job_id] = _Record(kind, assignment, detail)
        else:
            self.records.append(_Record(kind, assignment, detail))

    def completed(self, assignment: _Assignment) -> None:
        """A run that completed with no result."""
        self.completions.append(assignment)

    def unwritten(self) -> bool:
        return bool(self.records or self.reports or self.completions)

    def take(self) -> _Batch:
        """Everything waiting to be written; `keep` puts such a batch back."""
        # Progress first: once a job's outcome is written, its report is fenced off.
        batch = _Batch([*self.reports.values(), *self.records], self.completions)
        self.records, self.reports, self.completions = [], {}, []
        return batch

    def keep(self, batch: _Batch) -> None:
        for record in batch.records:
            if record.kind is _WriteKind.REPORT:
                self.reports.setdefault(record.assignment.job_id, record)
            else:
                self.records.append(record)
        self.completions += batch.completions

    def write(self, batch: _Batch, starts: list[_Assignment], now: float,
              claim: Callable[[], tuple[str, list[dict[str, Any]]]] | None, clock: float
              ) -> tuple[list[_Written], str, list[dict[str, Any]]] | None:
        """Write ``batch``, mark ``starts`` as begun and ``claim``, in one
        transaction.  Returns what was written, and the claim; None if the
        database was busy (all is kept, to try again shortly).  After
        another error, writes each record alone and claims nothing."""
        try:
            with self._storage.write():
                if starts:
                    self._storage.mark_started([(a.job_id, a.token) for a in starts], now)
                written = [_Written(*record, self._write_one(record, now))
                           for record in batch.records]
                written += self._complete(batch.completions, now)
                token, claimed = claim() if claim is not None else ("", [])
        except DatabaseBusy as exc:
            _log.debug("%s: %s; retrying", self._pool_id, exc)
            self.keep(batch)
            self.retry_at = clock + _BUSY_BACKOFF
            return None
        except DatabaseUnreachable as exc:
            self.keep(batch)
            self.retry_at = self._outage.failed(exc)
            return None
        except Exception as exc:  # one bad record, or the disk: each is written alone
            self._check_file()
            records = batch.as_records()
            _log.error("%s could not write %d records and claims together: %s: %s; "
                       "writing each on its own", self._pool_id, len(records),
                       type(exc).__name__, exc)
            written = self.write_each(records, now, clock)
            self.retry_at = max(self.retry_at, clock + 1.0)
            return written, "", []
        self._outage.reached()
        for assignment in starts:
            assignment.start_marked = True
        return written, token, claimed

    def _write_one(self, record: _Record, now: float) -> str | None:
        """One fenced write; the status it left, or None if the lease was lost."""
        kind, assignment, detail = record
        job_id, token, storage = assignment.job_id, assignment.token, self._storage
        try:
            if kind is _WriteKind.REPORT:
                storage.report([(job_id, token, detail)])
                return None
            if kind is _WriteKind.OUTCOME:
                return _record(storage, assignment.row, token, detail, now)
            if kind is _WriteKind.INTERRUPT:
                return storage.interrupt(job_id, token, now,
                                         f"job {job_id} was interrupted: {detail}")
            if kind is _WriteKind.CANCEL:
                return storage.finish(job_id, token, status=CANCELLED, now=now,
                                      error=detail + "\n")
            if kind is _WriteKind.LOST:
                return storage.outcome_lost(job_id, token, now, detail)
            if kind is _WriteKind.HAND_BACK:
                return storage.hand_back(job_id, token, now, detail)
            if kind is _WriteKind.REFUSE:
                return storage.refuse(job_id, token, now, detail)
            return storage.release(job_id, token, now)
        except LeaseLost:
            return None

    def _complete(self, completions: list[_Assignment], now: float) -> list[_Written]:
        """Write the runs that completed with no result, together
        (`_Storage.complete`); return those that had lost their lease, and,
        if INFO is logged, the others."""
        if not completions:
            return []
        statuses = self._storage.complete([(a.job_id, a.token) for a in completions], now)
        logged = _log.isEnabledFor(logging.INFO)
        written = []
        ended = 0
        for assignment in completions:
            status = statuses.get((assignment.job_id, assignment.token))
            if status == COMPLETED and not logged:
                ended += 1  # counted here: no record to log
            else:
                written.append(_Written(_WriteKind.OUTCOME, assignment, _PLAIN_COMPLETION,
                                        status))
        self.finished[COMPLETED] += ended
        return written

    def write_each(self, records: list[_Record], now: float, clock: float) -> list[_Written]:
        """After a batch failed: write each record alone.  An outcome that
        fails alone is recorded as a failure saying why; what still fails is
        dropped, and its job runs again once its lease runs out."""
        written = []
        for index, record in enumerate(records):
            try:
                written.append(_Written(*record, self._write_one(record, now)))
                continue
            except DatabaseBusy:
                # Locked by another connection: nothing wrong with the rest.
                self.keep(_Batch(records[index:], []))
                self.retry_at = clock + _BUSY_BACKOFF
                break
            except DatabaseUnreachable as exc:
                self.keep(_Batch(records[index:], []))
                self.retry_at = self._outage.failed(exc)
                break
            except Exception as exc:
                failed = exc
            try:
                alone = self._write_failed(record, failed, now)
            except DatabaseBusy:
                self.keep(_Batch(records[index:], []))
                self.retry_at = clock + _BUSY_BACKOFF
                break
            if alone is not None:
                written.append(alone)
        return written

    def _write_failed(self, record: _Record, exc: Exception, now: float) -> _Written | None:
        """What is written of a record whose write raised ``exc``: progress is
        skipped (the next report replaces it), other records but outcomes are
        dropped on a database error, and an outcome fails its job, saying
        why.  None: nothing was written."""
        kind, assignment, _ = record
        if kind is _WriteKind.REPORT:
            return None
        if isinstance(exc, DatabaseError) and kind is not _WriteKind.OUTCOME:
            self._drop(assignment, exc)
            return None
        try:
            if isinstance(exc, (DatabaseError, PayloadTooLarge)):
                # An outcome that cannot be stored fails its job, saying why.
                failure = _Outcome.failure(LitejobsError(
                    f"the outcome of job {assignment.job_id} ({assignment.row['name']}) "
                    f"could not be stored: {exc}"))
                return _Written(kind, assignment, failure,
                                self._write_one(_Record(kind, assignment, failure), now))
            # Data that litejobs' own steps choke on fails its job alone.
            status = self._storage.fail_alone(assignment.job_id, assignment.token, now, exc)
            detail = _Outcome.failure(exc) if kind is _WriteKind.OUTCOME else record.detail
            return _Written(kind, assignment, detail, status)
        except DatabaseBusy:
            raise
        except LeaseLost:
            return _Written(*record, None)
        except Exception as again:
            self._drop(assignment, again)
            return None

    def _drop(self, assignment: _Assignment, exc: Exception) -> None:
        self.dropped += 1
        _log.error("job %s (%s): what happened to it could not be written (%s); it runs "
                   "again once its lease runs out", assignment.job_id,
                   assignment.row["name"], exc)

    def log(self, written: list[_Written]) -> bool:
        """Log what was written; whether any job went back to pending."""
        pending = False
        for kind, assignment, detail, status in written:
            if kind is _WriteKind.REPORT:
                continue
            row = assignment.row
            if kind is _WriteKind.OUTCOME:
                _log_outcome(row, detail, status, assignment.seconds, self.info)
                self.finished["lease lost" if status is None else status] += 1
            elif kind in (_WriteKind.INTERRUPT, _WriteKind.HAND_BACK):
                _log.warning("job %s (%s) attempt %d was %s: %s; it is now %s%s",
                             assignment.job_id, row["name"], row["attempts"],
                             "interrupted" if kind is _WriteKind.INTERRUPT else "handed back",
                             detail, status or "another worker's",
                             "" if kind is _WriteKind.INTERRUPT else
                             ", and this run counts neither as an attempt nor as an "
                             "interruption", extra=_job_log(row))
            elif kind is _WriteKind.CANCEL and status is not None:
                _log.info("%s", detail, extra=_job_log(row))
            pending = pending or kind is not _WriteKind.OUTCOME or status == PENDING
        return pending


class _Beat(NamedTuple):
    """What a heartbeat learnt: the leases the pool had lost, and whether it
    took back the jobs of pools that were gone (they are pending again)."""

    lost: list[int]
    recovered: bool


def _fire_all_due(storage: _Storage, now: float, who: str,
                  logged: set[tuple[str, str]]) -> list[_Firing]:
    """Fire what is due at ``now`` until nothing is (`_Storage.fire_due`
    takes a few schedules at a time), and log it: each fired tick at INFO,
    skipped ones at WARNING, and a schedule this runner cannot fire (its
    time zone unknown here, its signature not ours) once, at ERROR."""
    firings: list[_Firing] = []
    while True:
        batch = storage.fire_due(now)
        firings += batch
        for firing in batch:
            for tick, job_id in firing.fired:
                _log.info("%s: schedule %s fired its tick of %s: job %d", who,
                          firing.schedule, _format_time(tick), job_id)
            for skipped in firing.skipped:
                last = _format_time(skipped.last)
                first = None if skipped.first is None else _format_time(skipped.first)
                span = f"up to {last}" if first is None else last if first == last \
                    else f"{first} to {last}"
                _log.warning("%s: schedule %s skipped %d tick%s (%s): %s", who,
                             firing.schedule, skipped.ticks, "s" * (skipped.ticks != 1),
                             span, skipped.reason)
            if firing.trouble and (firing.schedule, firing.trouble) not in logged:
                logged.add((firing.schedule, firing.trouble))
                _log.error("%s: schedule %s cannot fire here, and is left to other "
                           "runners: %s", who, firing.schedule, firing.trouble)
        if not batch or all(firing.trouble for firing in batch):
            return firings


class _Keeper:
    """The pool's timers, and the database work each sets off: heartbeats,
    which renew the leases of the jobs it holds every lease / 3 and take
    back the jobs of pools that are gone; checks for runs cancelled or asked
    to stop; upkeep (retention and checkpoints); and the check that the file
    is still the one the pool opened.  Times are the pool's clock
    (monotonic seconds), but for those stored, which are wall time."""

    def __init__(self, storage: _Storage, pool_id: str, path: str, lease: float,
                 retention: float | None, file_identity: tuple[Any, ...], outage: _Outage):
        self._storage = storage
        self._pool_id = pool_id
        self._path = path
        self._lease = lease
        self._retention = retention
        self._file_identity = file_identity
        self._outage = outage
        self.heartbeat_interval = min(_HEARTBEAT_INTERVAL, lease / 3)
        self.next_heartbeat = 0.0
        self.next_renewal = 0.0
        self.next_stop_check = 0.0
        self.next_upkeep = 0.0
        self.next_schedules = 0.0
        self.schedule_trouble: set[tuple[str, str]] = set()  # logged once each

    def moments(self, holding: bool) -> list[float]:
        """When a timer falls due next; the stop checks only while ``holding`` jobs."""
        return [self.next_heartbeat, self.next_upkeep, self.next_schedules] + (
            [self.next_stop_check] if holding else [])

    def fire_schedules(self, now: float) -> bool:
        """Fire the due ticks of schedules, and set when to look again: at
        the earliest next tick, or within `_SCHEDULE_POLL` for schedules
        added or changed meanwhile.  Whether a tick put a job."""
        wall = self._storage.clock()
        try:
            firings: list[_Firing] = []
            upcoming = self._storage.next_schedule_tick()  # a read: no write lock, mostly
            if upcoming is not None and upcoming <= wall:
                firings = _fire_all_due(self._storage, wall, self._pool_id,
                                        self.schedule_trouble)
                upcoming = self._storage.next_schedule_tick()
        except DatabaseBusy as exc:
            _log.debug("%s: %s; retrying the schedules", self._pool_id, exc)
            self.next_schedules = now + _BUSY_BACKOFF
            return False
        except DatabaseUnreachable as exc:
            self.next_schedules = self._outage.failed(exc)
            return False
        except DatabaseError as exc:
            _log.error("%s could not fire its schedules: %s", self._pool_id, exc)
            self.next_schedules = now + _SCHEDULE_POLL
            return False
        wait = _SCHEDULE_POLL
        if upcoming is not None and not any(firing.trouble for firing in firings):
            wait = min(wait, max(0.0, upcoming - wall))
        self.next_schedules = now + wait
        return any(firing.fired for firing in firings)

    def heartbeat(self, now: float, leases: Callable[[], list[tuple[int, str]]]) -> _Beat:
        """Beat, and renew the ``leases`` if that is due."""
        self.check_file()
        renew = now >= self.next_renewal
        wall = self._storage.clock()
        try:
            alive, lost = self._storage.heartbeat(self._pool_id, leases() if renew else None,
                                                  wall + self._lease, wall)
        except DatabaseBusy as exc:
            _log.debug("%s: %s; retrying the heartbeat", self._pool_id, exc)
            self.next_heartbeat = now + _BUSY_BACKOFF  # the renewal stays due too
            return _Beat([], False)
        except DatabaseUnreachable as exc:
            self.next_heartbeat = self._outage.failed(exc)  # the renewal stays due too
            return _Beat([], False)
        except DatabaseError as exc:
            alive, lost = True, []
            _log.error("%s could not record its heartbeat: %s", self._pool_id, exc)
        self.next_heartbeat = now + self.heartbeat_interval
        if renew:
            self.next_renewal = now + self._lease / 3
        if not alive:
            _log.error("%s had been marked stopped by another pool, as it missed its "
                       "heartbeats; its jobs were recovered, and it carries on", self._pool_id)
        try:
            recovered = bool(self._storage.recover_silent_workers(
                self._pool_id, wall, _SILENT_HEARTBEATS * _HEARTBEAT_INTERVAL))
        except DatabaseError as exc:
            _log.error("%s could not record its heartbeat: %s", self._pool_id, exc)
            recovered = False
        return _Beat(lost, recovered)

    def stop_requests(self, now: float) -> list[tuple[int, bool, float | None]]:
        """The pool's runs that were cancelled or asked to stop, if a check
        is due: ``(job_id, cancelled, stop_by)``."""
        if now < self.next_stop_check:
            return []
        self.next_stop_check = now + _CANCEL_CHECK_INTERVAL
        try:
            return self._storage.stops_requested(self._pool_id)
        except DatabaseError as exc:  # looked for again at the next check
            _log.debug("%s: %s", self._pool_id, exc)
            return []

    def upkeep(self, now: float) -> None:
        """Delete finished jobs past the retention, one small batch at a time
        so that no transaction holds the write lock for long, and checkpoint
        the WAL so that it stays small under a steady load."""
        wait = _UPKEEP_INTERVAL
        try:
            if self._retention is not None:
                deleted, under = self._storage.purge(self._storage.clock() - self._retention,
                                                     limit=_PRUNE_BATCH)
                if deleted:
                    _log.info("%s deleted %d jobs (and %d under them) that ended over %s "
                              "ago", self._pool_id, deleted, under,
                              _format_duration(self._retention))
                if deleted == _PRUNE_BATCH:
                    wait = _PRUNE_PAUSE  # more are due: go on soon
            self._storage.checkpoint()
        except DatabaseError as exc:  # tried again at the next upkeep
            _log.log(logging.DEBUG if isinstance(exc, DatabaseBusy) else logging.WARNING,
                     "%s: retention and checkpoint: %s", self._pool_id, exc)
        self.next_upkeep = now + wait

    @staticmethod
    def timeout_deadline(child: _Child) -> float | None:
        """When the first of the jobs the process's threads run reaches its
        timeout."""
        if child.kill_reason is not None:
            return None
        return min((since + float(running.row["timeout"]) for running, since in child.runs()
                    if running.row["timeout"] is not None), default=None)

    def check_file(self) -> None:
        """Raise `_FileGone` if the file was deleted or replaced."""
        try:
            identity = self._storage.identity()
        except FileNotFoundError:
            self._empty_wal_of_moved_file()
            raise _FileGone(f"{self._path} was deleted while the pool was running; "
                            f"stopping rather than write to a file nobody sees") from None
        if identity != self._file_identity:
            self._empty_wal_of_moved_file()
            raise _FileGone(f"{self._path} was replaced by another file while the pool "
                            f"was running; stopping")

    def _empty_wal_of_moved_file(self) -> None:
        # The -wal beside the path still belongs to the old file.  SQLite
        # leaves it on close once the file has moved, and whoever opens the
        # path next would replay its pages onto the new file.  Checkpointed
        # into the old file, it is empty.
        try:
            self._storage.checkpoint("TRUNCATE")
        except (LitejobsError, sqlite3.Error) as exc:
            _log.error("%s: could not empty the WAL of the old file (%s); remove %s-wal "
                       "and %s-shm before opening the new one", self._pool_id, exc,
                       self._path, self._path)


class _Woken(NamedTuple):
    """How an idle wait ended: the selector's events, whether the database
    changed so that jobs are due now, and when the next job falls due."""

    events: list[tuple[selectors.SelectorKey, int]]
    due_now: bool
    next_due: float | None


class _IdleWait:
    """How an idle pool waits for new work, which is most of its life and
    must cost next to no CPU.  New work shows as a change of the database:
    it waits for inotify to report a write to the WAL (`_WalWatch`), then
    checks ``PRAGMA data_version`` every millisecond while the commit
    settles; without inotify it polls every few milliseconds.  A change is
    first checked with a read for due jobs; only then does the pool claim,
    which takes the write lock.  While others' commits bring nothing, it
    does not even wake for them.  It owns the WAL watch, its place in the
    pool's selector, and what it last saw of the database.
    """

    def __init__(self, storage: _Storage, selector: selectors.BaseSelector, path: str,
                 pool_id: str, clock: Callable[[], float]):
        self._storage = storage
        self._selector = selector
        self._pool_id = pool_id
        self._clock = clock
        self.watch = storage.change_watch()
        self._listening: int | None = None  # the fd registered in the selector
        self.last_wal_event = 0.0
        self._quiet_until = 0.0
        self._data_version: int | None = None
        self.listen(True)

    def listen(self, listen: bool) -> None:
        """Have the selector watch the database (or stop); a watch whose fd
        changed (a listener that reconnected) is registered again."""
        watch = self.watch
        if watch is not None and watch.broken:  # out of the selector first: see _PostgresListener
            if self._listening is not None:
                self._selector.unregister(self._listening)
                self._listening = None
            watch.reopen()
        wanted = watch.fd if watch is not None and listen and watch.fd >= 0 else None
        if wanted == self._listening:
            return
        if self._listening is not None:
            self._selector.unregister(self._listening)
        if wanted is not None:  # writes made meanwhile are still queued, and show at once
            self._selector.register(wanted, selectors.EVENT_READ, ("wal", None))
        self._listening = wanted

    def on_event(self) -> None:
        """The WAL watch's fd is readable (outside `wait`): the idle wait that
        follows checks closely.  A lost listener, whose socket would stay
        readable, is reopened at once."""
        if self.watch is not None and self.watch.written():
            self.last_wal_event = self._clock()
            if self.watch.broken:
                self.listen(self._listening is not None)

    def wait(self, timeout: float, next_due: float | None,
             due_here: Callable[[], float | None]) -> _Woken:
        """Wait up to ``timeout`` for a message, a wake-up or new work;
        ``due_here`` reads when the next job this pool would claim is due."""
        deadline = self._clock() + timeout
        next_check = 0.0
        while True:
            now = self._clock()
            if now >= deadline:
                return _Woken([], False, next_due)
            if now >= next_check:
                woken = self._look(due_here)
                if woken is not None:
                    earlier = woken.next_due is not None and (
                        next_due is None or woken.next_due < next_due)
                    if woken.due_now or earlier:
                        return woken  # an earlier due time ends the wait, to wait for it
                    next_due = woken.next_due
                since_write = now - self.last_wal_event
                if self.watch is None:
                    next_check = now + self._storage.idle_check_interval
                elif since_write < _SETTLE_CHECKS[1]:
                    next_check = max(now + _SETTLE_CHECKS[0], self._quiet_until)
                else:  # a slow fsync: back off gradually, not at once
                    next_check = now + min(_SAFETY_CHECK_INTERVAL, since_write)
            self.listen(now >= self._quiet_until)
            events = self._selector.select(max(0.0, min(next_check, deadline) - now))
            other = [event for event in events if event[0].data is None
                     or event[0].data[0] != "wal"]
            if other:
                return _Woken(other, False, next_due)
            if events and self.watch is not None and self.watch.written():
                self.last_wal_event = self._clock()
                next_check = self._quiet_until  # at once, unless others keep writing

    def _look(self, due_here: Callable[[], float | None]) -> _Woken | None:
        """If the database changed, when its next job is due (and whether it
        is due now); None if it did not change."""
        try:
            version = self._storage.data_version()
            if version == self._data_version:
                return None
            self._data_version = version
            if self.watch is not None and self.watch.means_due and not self.watch.broken:
                return _Woken([], True, None)  # (a lost watch heard nothing: look)
            due = due_here()
        except DatabaseError as exc:  # busy during a WAL recovery, say: look again soon
            _log.debug("%s: %s", self._pool_id, exc)
            return None
        if due is not None and due <= self._storage.clock():
            return _Woken([], True, due)
        # Another pool is busy on this file: check less often while it lasts.
        self._quiet_until = self._clock() + _OTHERS_CHANGES_CHECK
        return _Woken([], False, due)

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close()


class _Exit(NamedTuple):
    """A worker process that exited, as its supervisor settles it: what it
    sent last, the jobs its threads were running, how it exited, and
    whether that was expected (stopped, or killed for a reason)."""

    child: _Child
    messages: list[_FromChild]
    running: list[int]
    how: str
    expected: bool


class _Children:
    """The pool's worker processes: it starts, hears, reaps, restarts and
    stops them, and is the supervisor's end of their pipes.  It owns the
    list of processes, their registrations in the pool's selector, and what
    keeps a pool from restarting processes that cannot start (``young_deaths``
    in a row, with a growing delay).  It reads messages, but what they mean
    for the jobs is the supervisor's business."""

    def __init__(self, pool_id: str, processes: int, ctx: Any,
                 selector: selectors.BaseSelector, options: dict[str, Any],
                 crashes: list[str], clock: Callable[[], float]):
        self._pool_id = pool_id
        self._processes = processes
        self._ctx = ctx
        self._selector = selector
        self._options = options  # what each process gets at start: see _child_main
        self._clock = clock
        self.crashes = crashes
        self.all: list[_Child] = []
        self._numbers = itertools.count(1)
        self.young_deaths = 0
        self.restart_at: float | None = None

    def fill(self) -> None:
        """Start processes until there are as many as the pool has."""
        while len(self.all) < self._processes:
            self._start()

    def _start(self) -> None:
        number = next(self._numbers)
        ours, theirs = self._ctx.Pipe(duplex=True)
        slot = _RunningSlot(self._ctx.RawArray("d", _RunningSlot.size(self._options["threads"])))
        process = self._ctx.Process(target=_child_main, args=(theirs, self._options, slot),
                                    name=f"litejobs-child-{number}")
        process.start()
        theirs.close()
        child = _Child(process, ours, number, slot, self._clock())
        self.all.append(child)
        self._selector.register(child.fd, selectors.EVENT_READ, ("conn", child))
        self._selector.register(process.sentinel, selectors.EVENT_READ, ("exit", child))
        _log.debug("%s started child %d (pid %s)", self._pool_id, number, process.pid)

    def all_ready(self) -> bool:
        return sum(child.ready for child in self.all) >= self._processes

    def receive(self, child: _Child, most: float = _RECEIVE_MOST) -> list[_FromChild]:
        """What ``child`` sent about its jobs, reading at most ``most`` batches:
        a process sending without end must not keep the supervisor from its
        leases, heartbeats and timeouts (the rest is read at the next turn).
        Readiness and log records are taken care of here."""
        taken: list[_FromChild] = []
        while most > 0:
            most -= 1
            try:
                if not child.conn.poll():
                    break
                messages = child.conn.recv()
            except (EOFError, OSError):
                self.unregister(child, child.fd)  # it is exiting; its sentinel says when
                break
            child.heard = self._clock()
            for message in messages:
                if type(message) is _ForwardedLog:
                    _handle_forwarded_log(message.data)
                elif type(message) is _Ready:
                    child.ready = True
                    self.young_deaths = 0
                    _log.debug("%s: child %d (pid %s) is ready", self._pool_id,
                               child.number, message.pid)
                elif type(message) is not _Started:  # a timed job began: the wait times it
                    taken.append(message)
        return taken

    def reap(self, child: _Child) -> _Exit:
        """``child`` exited: read what it sent last, and close it."""
        messages = self.receive(child, math.inf)
        running = [job_id for job_id, _ in child.slot.runs()]  # when it died
        child.process.join(timeout=5)
        self.unregister(child, child.fd)
        self.unregister(child, child.process.sentinel)
        child.conn.close()
        self.all.remove(child)
        reason = child.kill_reason
        expected = reason is not None or (child.stop_sent and child.process.exitcode == 0)
        return _Exit(child, messages, running, _describe_exit(child.process.exitcode),
                     expected)

    def unregister(self, child: _Child, fd: int) -> None:
        # Only the child's own registration: a closed fd's number is soon
        # reused by the next child's pipe.
        with contextlib.suppress(KeyError, ValueError):
            if self._selector.get_key(fd).data[1] is child:
                self._selector.unregister(fd)

    def crashed(self, line: str) -> None:
        self.crashes.append(line)
        del self.crashes[:-_CRASHES_KEPT]
        _log.error("%s: %s", self._pool_id, line)

    def replace(self, child: _Child) -> None:
        """Start a process in place of ``child``, which exited: at once, or,
        if it died before it was ready, after a delay that grows with each
        such death in a row.  Raises once that looks hopeless."""
        exitcode = child.process.exitcode
        if exitcode == _NO_MAIN_GUARD_EXIT and not child.ready:
            raise LitejobsError(f"worker processes cannot start: {_NO_MAIN_GUARD}")
        if child.ready or child.kill_reason is not None:
            self._start()
            return
        self.young_deaths += 1  # a process that cannot start: do not spin
        if self.young_deaths >= _MAX_YOUNG_DEATHS:
            raise LitejobsError(
                f"worker processes keep dying before they are ready ({self.young_deaths} "
                f"in a row; the last {_describe_exit(exitcode)}); see their output above.  "
                f"Can they import litejobs and open {self._options['path']}?")
        low, high = _CHILD_START_BACKOFF
        delay = min(high, low * 2 ** (self.young_deaths - 1))
        _log.error("%s: child %d %s before it was ready; starting another in %.1fs",
                   self._pool_id, child.number, _describe_exit(exitcode), delay)
        if self.restart_at is None:
            self.restart_at = self._clock() + delay

    def restart_due(self, now: float) -> None:
        if self.restart_at is not None and now >= self.restart_at:
            self.restart_at = None
            self.fill()

    def stop_all(self) -> None:
        """Ask every process to exit once its jobs have run; kill those still
        there after 10 seconds."""
        for child in self.all:
            child.stop_sent = child.send(_Stop())
        deadline = time.monotonic() + 10
        for child in list(self.all):
            child.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if child.process.is_alive():
                child.kill("stop", None)
                child.process.join(timeout=5)
            child.conn.close()
        self.all.clear()

    def kill_all(self) -> list[_Child]:
        """Kill every process at once (the pool is failing); return them, exited."""
        children = list(self.all)
        for child in children:
            child.kill("stop", None)
        for child in children:
            child.process.join(timeout=5)
        return children


class _InFlight:
    """The jobs a pool holds: claimed, handed to worker processes, and not
    yet settled.  It deals claimed jobs out as the `_Dispatcher` plans, asks
    stuck processes for the jobs they have not started, turns what the
    processes report, and how they exit, into records for the `_Recorder`,
    and stops the runs that must stop: cancelled, asked to stop, past their
    timeout, or whose lease was lost.  It owns the map of jobs in flight."""

    def __init__(self, worker: Worker, children: _Children, dispatcher: _Dispatcher,
                 recorder: _Recorder, keeper: _Keeper, clock: Callable[[], float]):
        self.worker = worker
        self.storage = worker._storage
        self.refusals = worker._refusals
        self.children = children
        self.dispatcher = dispatcher
        self.recorder = recorder
        self.keeper = keeper
        self.clock = clock
        self.jobs: dict[int, _Assignment] = {}

    def hear(self, child: _Child, most: float = _RECEIVE_MOST) -> None:
        """Act on what ``child`` sent (see `_Children.receive`)."""
        for message in self.children.receive(child, most):
            self._take(child, message)

    def _take(self, child: _Child, message: _FromChild) -> None:
        """Act on one message about jobs."""
        if type(message) is _Completed:
            for job_id, seconds in zip(message.job_ids, message.seconds):
                assignment = self._ran(child, job_id, seconds)
                if assignment is not None:
                    self.recorder.completed(assignment)
            return
        assert isinstance(message, (_Done, _Skipped, _Progress, _Lane))
        if type(message) is _Done:
            assignment = self._ran(child, message.job_id, message.seconds)
            if assignment is not None:
                self._done(child, assignment, message.outcome)
            return
        assignment = child.assignment(message.job_id)
        if assignment is None:
            return  # settled already: a progress report came after the outcome
        if type(message) is _Progress:
            self.recorder.add(_WriteKind.REPORT, assignment, message.fields)
            return
        if type(message) is _Lane:
            self._lane(assignment, message.light)
            return
        child.assigned.remove(assignment)
        self._forget(assignment)
        child.sent -= 1  # it never ran there: max_jobs_per_child counts runs
        self.recorder.add(_WriteKind.RELEASE, assignment)

    def _lane(self, assignment: _Assignment, light: bool) -> None:
        """A job began on its process's event loop, or went to its lanes."""
        names = self.dispatcher.async_names
        if light:
            assignment.on_loop = True
            assignment.began = self.clock()
            names.add(assignment.row["name"])
        else:
            assignment.light_seq = None
            names.discard(assignment.row["name"])

    def _ran(self, child: _Child, job_id: int, seconds: float) -> _Assignment | None:
        """The assignment of a job ``child`` ran, now settled there; None if
        it was settled before (killed for its lease, say)."""
        assignment = child.assignment(job_id)
        if assignment is None:
            return None
        child.assigned.remove(assignment)
        self._forget(assignment)
        assignment.seconds = seconds
        child.done += 1
        if not assignment.on_loop and assignment.light_seq is None:
            self.dispatcher.note_duration(seconds)  # of what holds a process: not async jobs
        return assignment

    def _done(self, child: _Child, assignment: _Assignment, outcome: _Outcome) -> None:
        if outcome.error_type == "builtins.MemoryError" \
                and self.worker.memory_limit is not None:
            child.retiring = True  # its heap may be left in pieces: start afresh
        if outcome.refused:
            self.refusals.cannot_import(assignment.row, outcome.error)
        if assignment.stop_reason is not None:  # its task was cancelled: see _stop_run
            self._settle_stopped(assignment, assignment.stop_reason, "its task was cancelled")
            return
        self.recorder.add(_WriteKind.OUTCOME, assignment, outcome)

    def _forget(self, assignment: _Assignment) -> None:
        if self.jobs.get(assignment.job_id) is assignment:
            del self.jobs[assignment.job_id]


    def settle_exit(self, exit: _Exit, replace: bool) -> None:
        """Settle the jobs of a worker process that exited, and, if ``replace``,
        start another."""
        child = exit.child
        for message in exit.messages:
            self._take(child, message)
        reason, reason_job = child.kill_reason or (None, None)
        # A process runs its jobs in the order they were sent, so those up to
        # the last it started have run, and an outcome it still held died
        # with it.  Such a run counts as an attempt, but not as an
        # interruption: the job that killed the process is blamed, not these.
        # The jobs after it never started, and are given back.
        # Async jobs on its event loop were running, as the main thread's job
        # was; those sent there and not begun never started.
        last = child.slot.last_started
        main = [a for a in child.assigned if a.light_seq is None]
        place = {id(assignment): index for index, assignment in enumerate(main)}
        ids = [assignment.job_id for assignment in main]
        started = len(ids) - ids[::-1].index(last) if last in ids else 0
        victim = None
        killed: set[int] = set()
        for assignment in child.assigned:
            self._forget(assignment)
            if assignment.on_loop or child.light_started(assignment):
                self._settle_killed(assignment, child, reason, reason_job, exit.how)
            elif assignment.light_seq is not None:
                self.recorder.add(_WriteKind.RELEASE, assignment)
            elif assignment.job_id in exit.running and assignment.job_id not in killed:
                killed.add(assignment.job_id)  # the oldest assignment, if claimed again
                victim = victim or assignment
                self._settle_killed(assignment, child, reason, reason_job, exit.how)
            elif place[id(assignment)] < started:
                self.recorder.add(_WriteKind.LOST, assignment, (
                    f"child {child.number} (pid {child.process.pid}) {exit.how} before "
                    f"sending the outcome"))
            else:
                self.recorder.add(_WriteKind.RELEASE, assignment)
        if not exit.expected:
            self.children.crashed(
                f"child {child.number} (pid {child.process.pid}) {exit.how}"
                + (f" while running job {victim.job_id} ({victim.row['name']})"
                   if victim is not None else ""))
        if replace:
            self.children.replace(child)


    def _settle_killed(self, running: _Assignment, child: _Child, reason: str | None,
                       reason_job: int | None, how: str) -> None:
        """Record how the job a process was running when it died ended."""
        name = running.row["name"]
        if reason in ("timeout", "cancel", "lease", "overdue") \
                and reason_job != running.job_id:
            # Killed for a job that had just finished: this one was a bystander.
            self.recorder.add(_WriteKind.RELEASE, running)
        elif reason == "timeout":
            limit = running.row["timeout"]
            error = JobTimeout(f"job {running.job_id} ({name}) ran longer than its "
                               f"timeout of {limit:g}s, so its process was killed")
            self.recorder.add(_WriteKind.OUTCOME, running, _Outcome.failure(error))
        elif reason in ("lease", "cancel", "overdue") or running.lease_lost:
            self._settle_stopped(running, "lease" if running.lease_lost else str(reason),
                                 "its process was killed")
        elif reason == "stop":
            # A deploy, say: not the job's fault, so no interruption is counted.
            self.recorder.add(_WriteKind.HAND_BACK, running,
                              f"the pool {self.worker.id} stopped before it ended")
        else:
            self.recorder.add(_WriteKind.INTERRUPT, running,
                              f"its worker process (pid {child.process.pid}) {how}")


    def _settle_stopped(self, running: _Assignment, reason: str, stopped: str) -> None:
        """Record the end of a run stopped for ``reason`` (lease, cancel or
        overdue): ``stopped`` says how."""
        if reason == "lease" or running.lease_lost:
            _log.warning("job %s (%s): this run was stopped because its lease was lost",
                         running.job_id, running.row["name"])
        elif reason == "cancel":
            self.recorder.add(_WriteKind.CANCEL, running, f"job {running.job_id} was "
                              f"cancelled while running, so {stopped}")
        else:
            self.recorder.add(_WriteKind.CANCEL, running, f"job {running.job_id} was asked "
                              f"to stop, and had not stopped by the time it was given, so "
                              f"{stopped}")

    def deal(self, token: str, claimed: list[dict[str, Any]]) -> None:
        """Hand the claimed jobs to processes as the dispatcher plans."""
        now = self.clock()
        light_plan, rest = self.dispatcher.plan_light(claimed, self.children.all)
        plan, left = self.dispatcher.plan(rest, self.children.all, now)
        for row in left:
            # More than the room asked for: synchronous jobs claimed with room
            # left for async ones.  Never lose one: it goes back, unstarted.
            with contextlib.suppress(LitejobsError):
                self.storage.release(row["id"], token, self.storage.clock())
        logged = _log.isEnabledFor(logging.DEBUG)
        for child, planned, light in [*((c, rows, True) for c, rows in light_plan.items()),
                                      *((c, rows, False) for c, rows in plan.items())]:
            batch: list[_JobToRun] = []
            for row in planned:
                payload, signature = row.pop("payload"), row.pop("signature")
                stale = self.jobs.get(row["id"])
                if stale is not None:
                    # This pool lost the job's lease (it was paused, say), and
                    # has just claimed it again: stop the old run, whose outcome
                    # the fence would reject anyway.
                    stale.lease_lost = True
                    self._stop_run(stale, "lease")
                assignment = _Assignment(row["id"], token, row, child)
                if light:
                    assignment.light_seq = child.light_sent
                    child.light_sent += 1
                child.assigned.append(assignment)
                self.jobs[row["id"]] = assignment
                batch.append(_JobToRun(row["id"], row, payload, signature, light))
                if logged:
                    _log.debug("job %s (%s) attempt %d claimed for child %d", row["id"],
                               row["name"], row["attempts"], child.number,
                               extra=_job_log(row))
            if batch:
                if len(child.assigned) - child.light() == len(batch) and not light:
                    child.heard = now  # it had nothing: its silence counts from now
                child.sent += len(batch)
                limit = self.worker.max_jobs_per_child
                if limit is not None and child.sent >= limit:
                    child.retiring = True
                child.send(_Run(batch))


    def steal(self) -> None:
        """Ask stuck processes for the jobs they hold but have not started, for
        processes that are free (see `_Dispatcher`); given back, they are
        released and claimed again in their order."""
        by_child: dict[_Child, list[_Assignment]] = {}
        for assignment in self.dispatcher.steals(self.children.all, self.clock()):
            assert assignment.child is not None
            by_child.setdefault(assignment.child, []).append(assignment)
        for child, assignments in by_child.items():
            if child.send(_Skip(tuple(a.job_id for a in assignments))):
                for assignment in assignments:
                    assignment.skip_sent = True
                runs = child.slot.runs()
                moved = (f"has run job {runs[-1][0]} for "
                         f"{self.clock() - runs[-1][1]:.1f}s" if runs else
                         f"has said nothing for {self.clock() - child.heard:.1f}s")
                _log.debug("%s: child %d %s; asking back the %d jobs it holds behind it",
                           self.worker.id, child.number, moved, len(assignments))


    def enforce_timeouts(self) -> None:
        """Stop the runs past their timeout: kill their process, or, in a
        process with threads, abandon them (`_abandon`).  It waits for no
        database, and runs before anything that might."""
        now = self.clock()
        for child in self.children.all:
            deadline = self.keeper.timeout_deadline(child)
            if deadline is None or now < deadline:
                continue
            for running, since in child.runs():
                limit = running.row["timeout"]
                if limit is None or now < since + float(limit):
                    continue
                if child.slot.lanes == 1:
                    child.kill("timeout", running.job_id)
                    break
                self._abandon(child, running, "timeout")

    def _abandon(self, child: _Child, running: _Assignment, reason: str) -> None:
        """A thread cannot be stopped: a run in a process with threads that
        must stop (its timeout, a cancel, a lost lease) ends at once in the
        database, and its process is retired: it takes no more jobs, and is
        killed once its other jobs have ended, which ends the thread.  Its
        late outcome, if any, is ignored (and fenced off anyway)."""
        child.assigned.remove(running)
        self._forget(running)
        child.abandoned.add(running.job_id)
        child.retiring = True
        retired = "its worker process is retired once its other jobs end"
        if reason == "timeout":
            self.recorder.add(_WriteKind.OUTCOME, running, _Outcome.failure(_raised(JobTimeout(
                f"job {running.job_id} ({running.row['name']}) ran longer than its timeout "
                f"of {float(running.row['timeout']):g}s; a thread cannot be stopped, so "
                f"{retired}"))))
        else:
            self._settle_stopped(running, reason, f"{retired} (a thread cannot be stopped)")


    def lease_lost(self, job_id: int) -> None:
        assignment = self.jobs.get(job_id)
        if assignment is None:
            return
        assignment.lease_lost = True
        _log.warning("job %s (%s): the lease was lost (the pool was paused or too slow "
                     "to renew it), so another worker may run it; stopping this run",
                     job_id, assignment.row["name"])
        self._stop_run(assignment, "lease")


    def stop_cancelled(self, job_id: int, reason: str) -> None:
        assignment = self.jobs.get(job_id)
        if assignment is not None:
            assert assignment.child is not None
            self.hear(assignment.child, math.inf)  # it may have just finished
        if assignment is not None and job_id in self.jobs:
            self._stop_run(assignment, reason)


    def stop_asked(self, job_id: int, stop_by: float, now: float) -> None:
        """Job ``job_id`` was asked to stop by ``stop_by``: one that has not
        started never will (it ends cancelled); a running one sees the
        request itself, and is stopped once its time is up."""
        assignment = self.jobs.get(job_id)
        if assignment is None or assignment.child is None:
            return
        if not assignment.child.running(job_id):
            # Given back, it ends cancelled (_RELEASE_JOB); one the process
            # starts meanwhile runs on, and sees the request.
            if not assignment.skip_sent:
                assignment.skip_sent = assignment.child.send(_Skip((job_id,)))
        elif now >= stop_by:
            self.stop_cancelled(job_id, "overdue")


    def _stop_run(self, assignment: _Assignment, reason: str) -> None:
        child = assignment.child
        assert child is not None, "only assignments sent to a process are stopped"
        if assignment.on_loop or assignment.light_seq is not None:
            # On its event loop: its task is cancelled (or, not begun, it is
            # given back); the process and its other jobs go on.
            if assignment.stop_reason is None and child.send(_CancelRun(assignment.job_id,
                                                                        reason)):
                assignment.stop_reason = reason
                assignment.skip_sent = True
        elif child.running(assignment.job_id):
            if child.slot.lanes == 1:
                child.kill(reason, assignment.job_id)
            else:
                self._abandon(child, assignment, reason)
        elif not assignment.skip_sent:
            assignment.skip_sent = child.send(_Skip((assignment.job_id,)))


    def starts_due(self) -> list[_Assignment]:
        """The runs that have gone on for ``_START_MARK_AFTER`` without the
        database knowing they began: if the pool died, they would be taken
        for claims that never started (see `_SQLiteStorage._recover`)."""
        due = []
        now = self.clock()
        for child in self.children.all:
            due += [running for running, since in child.runs()
                    if not running.start_marked and now - since >= _START_MARK_AFTER]
        if self.dispatcher.async_names:
            due += [a for a in self.jobs.values() if a.on_loop and not a.start_marked
                    and a.began is not None and now - a.began >= _START_MARK_AFTER]
        return due

    def next_start_mark(self) -> float | None:
        """When the earliest async run not yet marked as begun is due to be."""
        if not self.dispatcher.async_names:
            return None
        return min((a.began + _START_MARK_AFTER for a in self.jobs.values()
                    if a.on_loop and not a.start_marked and a.began is not None), default=None)


class _Supervisor:
    """One run of a pool: the loop that claims jobs, hands them to worker
    processes, records what they report, and keeps the pool's promises
    (leases, timeouts, cancels, stops), built from the parts above.

    It owns the jobs in flight (claimed and not yet settled), whether
    there may be more to claim, and the stop under way.  `step` is one turn
    of the loop, on the injected ``clock`` (monotonic seconds), so that a
    test can drive it; `run` turns it until the pool is done.  What the
    `Worker` asks of it (a stop, at once or not) it reads from the worker.
    """

    def __init__(self, worker: Worker, clock: Callable[[], float] = time.monotonic):
        self.worker = worker
        self.clock = clock
        self.storage = worker._storage
        self.selector = selectors.DefaultSelector()
        self.selector.register(worker._wake_reader, selectors.EVENT_READ, None)
        options = {"path": _URLS_BY_SHOWN.get(worker.path, worker.path), "busy_timeout": worker._busy_timeout,
                   "log_levels": (logging.getLogger().getEffectiveLevel(), _log.level),
                   "secrets": self.storage.secrets, "size_limit": self.storage.size_limit,
                   "memory_limit": worker.memory_limit, "import_paths": worker.import_paths,
                   "async_concurrency": worker.async_concurrency, "threads": worker.threads,
                   "network_filesystem": worker.network_filesystem}
        self.children = _Children(worker.id, worker.processes,
                                  multiprocessing.get_context(worker.start_method),
                                  self.selector, options, worker.crashes, clock)
        self.dispatcher = _Dispatcher(worker.max_jobs_per_child,
                                      async_concurrency=worker.async_concurrency)
        self.outage = _Outage(worker.id, clock)
        self.keeper = _Keeper(self.storage, worker.id, worker.path, worker.lease,
                              worker.retention, worker._file_identity, self.outage)
        self.recorder = _Recorder(self.storage, worker.id, worker.finished,
                                  self.keeper.check_file, self.outage, clock)
        self.idle = _IdleWait(self.storage, self.selector, worker.path, worker.id, clock)
        self.refusals = worker._refusals
        self.flight = _InFlight(worker, self.children, self.dispatcher, self.recorder,
                                self.keeper, clock)
        self.drained = False  # the last claim took all there was
        self.changed = False  # the database changed since: claim again
        self.next_due: float | None = None  # wall time
        self.next_poll = 0.0
        self.grace_deadline: float | None = None  # stopping: when running jobs are killed

    # -- the loop -------------------------------------------------------------

    def run(self) -> None:
        """Register, start the worker processes, and turn the loop until the
        pool is done; on a fatal error, settle what it can and raise."""
        worker = self.worker
        try:
            if not self._register():
                return  # stopped while it waited: nothing was claimed
            _log.info("%s serving %s, queues %s, %d processes (%s)%s, lease %ss",
                      worker.id, worker.path, ", ".join(worker.queues or ["(all)"]),
                      worker.processes, worker.start_method,
                      f" of {worker.threads} threads" if worker.threads > 1 else "",
                      worker.lease)
            self.children.fill()
            while self.step():
                pass
            self.recorder.info.flush(self.clock())
            self.children.stop_all()
            if worker.burst and self.recorder.dropped:
                raise LitejobsError(
                    f"{self.recorder.dropped} records about jobs could not be written; "
                    f"those jobs run again once their leases run out")
        except BaseException as exc:
            self._abandon(release=not isinstance(exc, _FileGone))
            raise
        finally:
            self.selector.close()
            self.idle.close()

    def step(self) -> bool:
        """One turn of the loop: wait for something to do (a message, a
        process's exit, a timer, new work), then do it.  False once the pool
        is done: stopping, with nothing left running or unwritten; or, in
        burst mode, with nothing due."""
        worker = self.worker
        if worker._stop_requested is not None and self.grace_deadline is None:
            self._begin_stop()
        if self.grace_deadline is not None and worker._stop_deadline is not None:
            self.grace_deadline = min(self.grace_deadline, worker._stop_deadline)
        if worker._stop_now and self.grace_deadline is not None:
            self.grace_deadline = min(self.grace_deadline, self.clock())
        if self.grace_deadline is not None:
            if not self.flight.jobs and not self._unwritten():
                return False
            if self.clock() >= self.grace_deadline:
                for child in self.children.all:
                    if child.assigned:
                        child.kill("stop", None)
        elif worker.burst and self.drained and not self.flight.jobs \
                and not self._unwritten() and not self._due_now():
            return False
        for key, _ in self._wait():
            self._on_ready(key.data)
        self.flight.enforce_timeouts()
        if self.grace_deadline is None:
            self.flight.steal()
        self._write_and_claim()
        self._housekeeping()
        return True

    def _register(self) -> bool:
        """Add this pool to the registry.  While another connection holds the
        write lock (an application's transaction, a busy neighbour), or the
        database it has opened cannot be reached (a server restarting), wait
        and try again, as a running pool does; False if stopped meanwhile."""
        worker = self.worker
        waiting = False
        pause = _BUSY_BACKOFF
        while True:
            try:
                self.storage.register_worker(
                    worker.id, host=_host_name(), pid=os.getpid(),
                    processes=worker.processes, queues=worker.queues, lease=worker.lease,
                    now=self.storage.clock())
                return True
            except DatabaseBusy as exc:
                if not waiting:
                    _log.warning("%s waits for the write lock to start: %s", worker.id, exc)
                    waiting = True
            except DatabaseUnreachable as exc:
                _log.warning("%s waits for its database to start: %s", worker.id, exc)
                pause = min(max(pause * 2, _RECONNECT_BACKOFF[0]), _RECONNECT_BACKOFF[1])
            if worker._stop_requested is not None:
                return False
            with contextlib.suppress(OSError):  # a stop request wakes it at once
                select.select([worker._wake_reader], [], [], pause)

    def _unwritten(self) -> bool:
        return self.recorder.unwritten() or bool(self.flight.starts_due())

    def _due_now(self) -> bool:
        return self.next_due is not None and self.next_due <= self.storage.clock()

    def _claiming(self) -> bool:
        return self.grace_deadline is None and self.clock() >= self.recorder.retry_at

    def _free_slots(self) -> int:
        children = self.children.all
        return sum(self.dispatcher.rooms(children, self.clock()).values()) + sum(
            self.dispatcher.light_room(child) for child in children)

    def _should_claim(self) -> bool:
        if not self.drained or self.changed or self._due_now():
            return True
        return self.clock() >= self.next_poll

    def _wait(self) -> list[tuple[selectors.SelectorKey, int]]:
        """Wait for a process's message or exit, a wake-up, or the next timer."""
        can_claim = self._claiming() and self._free_slots() > 0
        writable = self.clock() >= self.recorder.retry_at
        if (writable and self._unwritten()) or (can_claim and self._should_claim()):
            return self.selector.select(0)
        timeout = self._wait_time(can_claim)
        if not (can_claim and self.drained):
            return self.selector.select(timeout)
        woken = self.idle.wait(timeout, self.next_due, self._next_due_here)
        self.changed = self.changed or woken.due_now
        self.next_due = woken.next_due
        return woken.events

    def _wait_time(self, can_claim: bool) -> float:
        now = self.clock()
        moments = self.keeper.moments(bool(self.flight.jobs))
        for child in self.children.all:
            deadline = self.keeper.timeout_deadline(child)
            if deadline is not None:
                moments.append(deadline)
            moments += [since + _START_MARK_AFTER for running, since in child.runs()
                        if not running.start_marked]
        steal = self.dispatcher.next_steal(self.children.all, now)
        if steal is not None:
            moments.append(steal)
        mark = self.flight.next_start_mark()
        if mark is not None:
            moments.append(mark)
        if self.grace_deadline is not None:
            moments.append(self.grace_deadline)
        elif self.children.restart_at is not None:
            moments.append(self.children.restart_at)
        if self.recorder.retry_at > now:
            moments.append(self.recorder.retry_at)  # backing off after a database error
        elif can_claim:
            moments.append(self.next_poll)
            if self.next_due is not None:
                moments.append(now + self.next_due - self.storage.clock())
        return max(0.0, min(moments) - now)

    def _on_ready(self, data: Any) -> None:
        if data is None:
            with contextlib.suppress(OSError):
                while self.worker._wake_reader.recv(4096):
                    pass
        elif data[0] == "wal":
            self.idle.on_event()
        elif data[1] not in self.children.all:
            return  # reaped earlier in this batch of events; its fds may be reused
        elif data[0] == "conn":
            self.flight.hear(data[1])
            if self.children.all_ready():
                self.worker._ready.set()  # start() returns
        else:
            self.flight.settle_exit(self.children.reap(data[1]),
                                    replace=self.grace_deadline is None)

    # -- when the pool fails -------------------------------------------------------

    def _abandon(self, release: bool) -> None:
        """After a fatal error: kill the processes and, if the database still
        takes writes, record what is known and release the rest, rather than
        leave it all to the leases."""
        self.grace_deadline = self.clock()  # no restarts from here
        children = self.children.kill_all()
        if not release:
            return
        with contextlib.suppress(Exception):  # the pool is failing already
            for child in children:
                self.flight.settle_exit(self.children.reap(child), replace=False)
            self.recorder.log(self.recorder.write_each(self.recorder.take().as_records(),
                                                       self.storage.clock(), self.clock()))

    # -- recording and claiming ----------------------------------------------------

    def _write_and_claim(self) -> None:
        """Record what the processes reported and claim more, in one transaction."""
        clock = self.clock()
        if clock < self.recorder.retry_at:
            return
        want = self._free_slots() if self._claiming() and self._should_claim() else 0
        if not want and not self._unwritten():
            return
        worker, refusals = self.worker, self.refusals
        batch, starts, now = self.recorder.take(), self.flight.starts_due(), self.storage.clock()
        woken = self.storage.woken

        def claim() -> tuple[str, list[dict[str, Any]]]:
            return self.storage.claim(
                owner=worker.id, queues=worker.queues, now=now, expires=now + worker.lease,
                limit=want, unsigned_only=refusals.unsigned_only, avoid=refusals.avoided(),
                started=False, holding=self.flight.jobs.keys())

        result = self.recorder.write(batch, starts, now, claim if want else None, clock)
        if result is None:
            return  # busy: all kept for the retry
        written, token, claimed = result
        if _CRASH_POINT is not None:
            if claimed:
                _crash_point("after-claim")
            if batch.completions or any(record.kind is _WriteKind.OUTCOME
                                        for record in batch.records):
                _crash_point("after-finish")
        if self.recorder.log(written):
            self.drained = False  # a job went back to pending: look again
        if self.storage.quotas_set and (batch.completions or batch.records):
            self.drained = False  # runs ended: quota slots may be free
        if want and self.recorder.retry_at <= clock:
            self._after_claim(want, token, claimed)
        if self.storage.woken != woken:
            self.drained = False  # ends made jobs due (parts, postprocesses, callbacks)

    def _after_claim(self, want: int, token: str, claimed: list[dict[str, Any]]) -> None:
        self.changed = False
        self.next_poll = self.clock() + self.worker.poll
        self.drained = len(claimed) < want
        self._deal(token, claimed)  # the jobs go out first; when the next is due can wait
        if self.drained:
            try:
                self.next_due = self._next_due_here()
            except DatabaseError as exc:
                _log.error("%s: %s", self.worker.id, exc)
                self.next_due = None
            if self.next_due is not None and self.next_due <= self.storage.clock() \
                    and self.storage.quotas_set:
                # Due, with room to run it, and not claimed: held back by a full
                # quota.  Look again when something changes (a run ends), not
                # at once.
                self.next_due = None

    def _deal(self, token: str, claimed: list[dict[str, Any]]) -> None:
        """Hand claimed jobs to the processes, but signed ones the pool has no
        secret for, which it refuses."""
        if not self.storage.secrets and any(row["signature"] for row in claimed):
            runnable = []
            for row in claimed:
                if row["signature"] is None:
                    runnable.append(row)
                    continue
                del row["payload"], row["signature"]
                self.recorder.add(_WriteKind.REFUSE, _Assignment(row["id"], token, row, None),
                                  self.refusals.signed_without_secret(row))
            claimed = runnable
        if claimed:
            self.flight.deal(token, claimed)

    def _next_due_here(self) -> float | None:
        """When the next job this pool would claim falls due."""
        return self.storage.next_due(self.worker.queues,
                                     unsigned_only=self.refusals.unsigned_only,
                                     avoid=self.refusals.avoided())

    # -- timers and stops ----------------------------------------------------------

    def _housekeeping(self) -> None:
        now = self.clock()
        self.recorder.info.take_turn(now)
        for child in self.children.all:
            if child.retiring and not child.assigned and not child.stop_sent:
                if child.abandoned & {job_id for job_id, _ in child.slot.runs()}:
                    child.kill("retired", None)  # a thread still runs what was abandoned
                else:
                    child.stop_sent = child.send(_Stop())
        if self.grace_deadline is None:
            self.children.restart_due(now)
        if now >= self.keeper.next_heartbeat:
            beat = self.keeper.heartbeat(now, lambda: [(a.job_id, a.token)
                                                       for a in self.flight.jobs.values()])
            for job_id in beat.lost:
                self.flight.lease_lost(job_id)
            if beat.recovered:
                self.drained = False  # their jobs are pending again: claim them
        if self.flight.jobs:
            wall = self.storage.clock()
            for job_id, cancelled, stop_by in self.keeper.stop_requests(now):
                if cancelled:
                    self.flight.stop_cancelled(job_id, "cancel")
                elif stop_by is not None:
                    self.flight.stop_asked(job_id, stop_by, wall)
        if now >= self.keeper.next_upkeep and self.grace_deadline is None:
            self.keeper.upkeep(now)
        if now >= self.keeper.next_schedules and self.grace_deadline is None:
            if self.keeper.fire_schedules(now):
                self.drained = False  # the jobs of the ticks are due: claim them

    def _begin_stop(self) -> None:
        worker = self.worker
        grace = worker._stop_requested or 0.0
        self.grace_deadline = self.clock() if worker._stop_now else \
            (worker._stop_deadline or self.clock())
        _log.info("%s stopping: %d jobs running, %.3gs grace", worker.id,
                  len(self.flight.jobs), grace)
        for child in self.children.all:
            child.send(_Skip(None))


# -- the public face of a pool ----------------------------------------------------


class Worker:
    """A pool of worker processes running the jobs of one database file.

    A supervisor (the thread that calls `run`, or a background thread after
    `start`) claims due jobs under leases, hands them to ``processes`` child
    processes, and records their outcomes, renewing the leases while the jobs
    run.  Several pools, in any processes on this host, may serve one file.

    - ``processes``: worker processes (default: the CPU count).
    - ``queues``: the queue names to serve (default: every queue).
    - ``lease``: seconds a claim holds a job without renewal.  If the pool
      dies, its jobs run again elsewhere once their leases run out.
    - ``poll``: the longest the pool waits before looking for due jobs
      (new jobs are noticed within milliseconds anyway).
    - ``grace``: on stop, seconds running jobs get to finish before their
      processes are killed and the jobs released to run again.
    - ``max_jobs_per_child``: replace each child after this many jobs, to
      contain memory leaks in job code.
    - ``async_concurrency``: async jobs (``async def``) each worker process
      runs at once, on one long-lived event loop beside its synchronous
      jobs (default 100).  Their timeouts and cancels cancel their tasks.
    - ``threads``: synchronous jobs each worker process runs at once, each
      in a thread (default 1), for jobs that wait on I/O.  A thread cannot
      be stopped: a run past its timeout, or cancelled, ends at once in the
      database, and its process is retired, killed once its other jobs end.
    - ``memory_limit``: bytes of address space each child may use (Linux
      ``RLIMIT_AS``).  A job that goes past it gets a `MemoryError`, which
      fails it (or retries it, as its `Retry` says) with its traceback; the
      child is then replaced.  If the kernel kills a child instead, the run
      is an interruption.  Default: no limit.
    - ``start_method``: how children start, ``"spawn"`` (the default, safe
      everywhere), ``"forkserver"`` or ``"fork"`` (only with `run` in a
      process without other threads: a fork copies their locks).
    - ``burst``: run what is due, then stop.
    - ``retention``: seconds finished jobs are kept (default 7 days); the
      pool deletes older ones in small batches as it goes.  None keeps them.
    - ``import_paths``: directories the worker processes import job modules
      from, ahead of the rest of ``sys.path`` (which they inherit from this
      process, the current directory included when it is there).
    - ``network_filesystem``: open a file on a network filesystem anyway
      (see `Queue`).
    - ``listen``: on PostgreSQL, whether the pool LISTENs for new jobs (the
      default; a dedicated connection), or polls every 50 ms instead: behind
      PgBouncer in transaction mode, which cannot carry LISTEN.
    - ``create``, ``busy_timeout``, ``secret`` and ``size_limit``: as for
      `Queue`; a `Queue` passed in gives its own.

    Under ``spawn``, children import the main module again, so a script that
    starts a pool needs the usual ``if __name__ == "__main__":`` guard.

    A job whose function (or an argument's class) does not import in the
    worker processes is not failed: it goes back to pending for another
    pool, and this one logs an error and leaves that function alone for a
    minute before it tries again.  A pool without a secret leaves signed
    jobs to pools that have one, saying so once.

    >>> litejobs.Worker("app.db", processes=4, queues=["default", "pdf"]).run()
    ... # doctest: +SKIP
    """

    def __init__(self, queue: Queue | str | os.PathLike[str], *,
                 processes: int | None = None,
                 queues: Sequence[str] | str | None = None,
                 lease: float = DEFAULT_LEASE, poll: float = DEFAULT_POLL,
                 grace: float = DEFAULT_GRACE, max_jobs_per_child: int | None = None,
                 start_method: str = "spawn", burst: bool = False, create: bool = True,
                 busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
                 retention: float | None = DEFAULT_RETENTION,
                 memory_limit: int | None = None,
                 secret: str | bytes | Sequence[str | bytes] | None = None,
                 size_limit: int | None = DEFAULT_SIZE_LIMIT,
                 import_paths: Sequence[str | os.PathLike[str]] = (), listen: bool = True,
                 network_filesystem: bool = False,
                 async_concurrency: int = _ASYNC_CONCURRENCY, threads: int = 1):
        if getattr(multiprocessing.current_process(), "_inheriting", False):
            # A worker process starting up imports the main script again: one
            # without the guard starts a pool here.  Its exit status tells the
            # pool that started it, which says so, once.
            os._exit(_NO_MAIN_GUARD_EXIT)
        if isinstance(queue, Queue):
            if secret is not None or size_limit != DEFAULT_SIZE_LIMIT:
                raise TypeError("a pool on a Queue takes its secret and size_limit from "
                                "it: give them to the Queue, or give the pool a path")
            path: str = queue.path
            busy_timeout = queue.busy_timeout
            network_filesystem = network_filesystem or queue.network_filesystem
            secrets, size_limit = queue._storage.secrets, queue._storage.size_limit
        else:
            path = os.fspath(queue)
            secrets = _secrets_for(_storage_key(path), secret)
            if size_limit is not None:
                size_limit = _positive_int(size_limit, "size_limit")
        self.memory_limit = (None if memory_limit is None
                             else _positive_int(memory_limit, "memory_limit"))
        if isinstance(import_paths, (str, os.PathLike)):
            import_paths = [import_paths]
        self.import_paths = [os.path.abspath(os.fspath(directory)) for directory in import_paths]
        for directory in self.import_paths:
            if not os.path.isdir(directory):
                raise ValueError(f"import path {directory} is not a directory")
        self.processes = _positive_int(processes if processes is not None
                                       else os.cpu_count() or 1, "processes")
        if isinstance(queues, str):
            queues = [queues]
        if queues is not None:
            queues = list(dict.fromkeys(queues))
            if not queues or not all(isinstance(name, str) and name for name in queues):
                raise ValueError(f"queues must be non-empty queue names, not {queues!r}")
        self.queues: list[str] | None = queues
        self.lease = _seconds(lease, "lease")
        self.poll = _seconds(poll, "poll")
        self.grace = _seconds(grace, "grace")
        if self.lease < _MIN_LEASE:
            raise ValueError(f"lease must be at least {_MIN_LEASE:g} seconds, got {lease!r}")
        if self.poll == 0:
            raise ValueError("poll must be positive")
        self.max_jobs_per_child = (None if max_jobs_per_child is None else
                                   _positive_int(max_jobs_per_child, "max_jobs_per_child"))
        self.async_concurrency = _positive_int(async_concurrency, "async_concurrency")
        self.threads = _positive_int(threads, "threads")
        if start_method not in multiprocessing.get_all_start_methods():
            raise ValueError(f"start_method {start_method!r} is not available here; use "
                             f"one of {', '.join(multiprocessing.get_all_start_methods())}")
        self.start_method = start_method
        self.burst = bool(burst)
        self.retention = None if retention is None else _seconds(retention, "retention")
        self.id = _owner_id("pool")
        self._refusals = _Refusals(self.id)
        # Opened (and migrated, if need be) waiting as long as a Queue would;
        # then short waits for the write lock: a supervisor blocked on another
        # connection's long transaction could neither kill timed-out jobs nor
        # renew leases.  It retries soon instead, keeping what it must write.
        # A connection lost while opening (a server restarting, a connection
        # cut) is tried again a few times, briefly: a wrong address still
        # fails within a second.
        for attempt in range(_OPEN_TRIES):
            try:
                self._storage: _Storage = _open_storage(
                    path, durable=False, create=create, busy_timeout=busy_timeout,
                    secrets=secrets, size_limit=size_limit, listen=listen,
                    network_filesystem=network_filesystem)
                break
            except DatabaseUnreachable as exc:
                if attempt == _OPEN_TRIES - 1:
                    raise
                _log.warning("%s; trying again", exc)
                time.sleep(_RECONNECT_BACKOFF[0] * 2 ** attempt)
        self.network_filesystem = network_filesystem
        self._storage.wait_for_locks(min(busy_timeout, self.lease / 6,
                                         _SUPERVISOR_BUSY_TIMEOUT))
        self.path = self._storage.path
        self._busy_timeout = busy_timeout
        self._file_identity = self._storage.identity()
        others = self._storage.open_to()
        if others and not secrets:
            # Whoever can write the file can make this pool run code: jobs are pickles.
            _log.warning("%s is writable by %s: anyone who can write it can make this pool "
                         "run code; chmod 600 it, or sign jobs with a secret",
                         self.path, others)
        #: Unexpected deaths of child processes, one line each (the latest 1000).
        self.crashes: list[str] = []
        #: Jobs this pool has recorded an outcome for, by status.
        self.finished: collections.Counter[str] = collections.Counter()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._stop_requested: float | None = None  # the grace asked for
        self._stop_deadline: float | None = None  # when that grace ends (monotonic)
        self._stop_now = False
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._ended = threading.Event()
        self._error: BaseException | None = None
        self._supervisor: _Supervisor | None = None  # while it runs, and after

    def __repr__(self) -> str:
        return f"<litejobs.Worker {self.id} {self.path}>"

    # -- control ------------------------------------------------------------

    def run(self) -> None:
        """Run the pool in this thread until it is stopped, then return.

        In the main thread, SIGTERM and SIGINT stop it gracefully (see
        ``grace``), and a second signal stops it at once.  Raises
        `DatabaseError` if the database becomes unusable, for instance when
        the file is deleted or replaced under the pool.
        """
        restore: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                restore[signum] = signal.signal(signum, self._on_signal)
        try:
            self._serve()
        finally:
            for signum, handler in restore.items():
                signal.signal(signum, handler)
        if self._error is not None:
            raise self._error

    def start(self) -> Worker:
        """Run the pool in a background thread; return once it has registered
        and its worker processes are ready to take jobs.  Raises the error
        that stopped it, if it could not start (its worker processes could
        not, say).  Stop it with `stop`, or use the worker as a context
        manager."""
        if self._thread is not None:
            raise LitejobsError(f"{self!r} was started already")
        self._thread = threading.Thread(target=self._serve, daemon=True,
                                        name=f"litejobs-pool-{self.id}")
        atexit.register(self.stop)
        self._thread.start()
        if not self._ready.wait(timeout=120):
            raise LitejobsError(f"{self!r} did not start within 120 seconds")
        if self._error is not None:
            self.stop()
        return self

    def stop(self, grace: float | None = None, timeout: float | None = None) -> None:
        """Stop the pool: claim nothing more, give running jobs ``grace``
        seconds (default: the pool's) to finish, then kill and release the
        rest.  Waits up to ``timeout`` seconds (default: grace plus 60) for a
        pool started with `start`, and re-raises the error that ended it."""
        grace = self.grace if grace is None else _seconds(grace, "grace")
        self._request_stop(grace)
        if self._thread is None:
            return
        atexit.unregister(self.stop)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=grace + 60 if timeout is None else timeout)
            if self._thread.is_alive():
                raise LitejobsError(f"{self!r} did not stop in time")
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def __enter__(self) -> Worker:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def pids(self) -> list[int]:
        """The process ids of its worker processes now (none before it starts)."""
        supervisor = self._supervisor
        return [] if supervisor is None else [child.process.pid
                                              for child in list(supervisor.children.all)]

    @property
    def dropped(self) -> int:
        """Records about jobs that could not be written (the jobs run again
        once their leases run out)."""
        return 0 if self._supervisor is None else self._supervisor.recorder.dropped

    @property
    def alive(self) -> bool:
        """Whether the pool is running."""
        return self._ready.is_set() and not self._ended.is_set()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop_requested is None:
            _log.info("%s received %s: stopping; running jobs get %ss to finish "
                      "(send it again to stop at once)", self.id,
                      signal.Signals(signum).name, self.grace)
            self._request_stop(self.grace)
        else:
            _log.warning("%s received %s again: stopping at once", self.id,
                         signal.Signals(signum).name)
            self._stop_now = True
            self._wake()

    def _request_stop(self, grace: float) -> None:
        deadline = time.monotonic() + grace
        if self._stop_deadline is None or deadline < self._stop_deadline:
            self._stop_requested = grace
            self._stop_deadline = deadline
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"\0")

    def _serve(self) -> None:
        stop_reason = "stopped"
        try:
            self._supervisor = _Supervisor(self)
            self._supervisor.run()
        except BaseException as exc:
            self._error = exc
            stop_reason = f"failed: {type(exc).__name__}: {exc}"
            _log.critical("%s stopping: %s", self.id, exc, exc_info=not isinstance(
                exc, LitejobsError))
        finally:
            with contextlib.suppress(LitejobsError):
                if not isinstance(self._error, _FileGone):
                    self._storage.stop_worker(self.id, self._storage.clock(), stop_reason)
            self._storage.close()
            self._ready.set()
            self._ended.set()
            _log.info("%s %s", self.id, stop_reason)


###############################################################################
# CLI
###############################################################################


class _UsageError(LitejobsError):
    """A command given arguments that do not fit: exit status 2."""


def _demo_rsa_key(bits: int = 1024) -> dict[str, Any]:
    """Generate an RSA key pair in pure Python (the demo's job with arguments)."""
    rng = random.SystemRandom()

    def is_probable_prime(n: int, rounds: int = 40) -> bool:  # Miller-Rabin
        if n % 2 == 0:
            return n == 2
        odd, twos = n - 1, 0
        while odd % 2 == 0:
            odd, twos = odd // 2, twos + 1
        for _ in range(rounds):
            x = pow(rng.randrange(2, n - 1), odd, n)
            if x in (1, n - 1):
                continue
            for _ in range(twos - 1):
                x = pow(x, 2, n)
                if x == n - 1:
                    break
            else:
                return False
        return True

    def prime(size: int) -> int:
        # The two top bits set make the product of two such primes 2 * size bits.
        while True:
            candidate = rng.getrandbits(size) | (0b11 << (size - 2)) | 1
            if is_probable_prime(candidate):
                return candidate

    exponent = 65537
    while True:
        p, q = prime(bits // 2), prime(bits // 2)
        phi = (p - 1) * (q - 1)
        if p != q and math.gcd(exponent, phi) == 1:
            break
    modulus = p * q
    private = pow(exponent, -1, phi)
    assert pow(pow(42, exponent, modulus), private, modulus) == 42
    return {"bits": modulus.bit_length(), "e": exponent,
            "n_head": hex(modulus)[:18] + "..."}


def _demo_divide(numerator: float, denominator: float) -> float:
    """The demo's failing job, when given a zero."""
    return numerator / denominator


def _demo_count_primes(start: int, stop: int) -> int:
    """A part of the demo's parallel job: the primes in [start, stop), by a
    sieve of that segment alone."""
    root = math.isqrt(stop - 1) if stop > 1 else 0
    small = bytearray([1]) * (root + 1)
    segment = bytearray([1]) * (stop - start)
    for n in range(2, root + 1):
        if small[n]:
            small[n * n::n] = bytes(len(range(n * n, root + 1, n)))
            first = max(n * n, (start + n - 1) // n * n)
            segment[first - start::n] = bytes(len(range(first, stop, n)))
    for n in range(start, min(2, stop)):
        segment[n - start] = 0  # 0 and 1 are not prime
    return sum(segment)


def _demo_add_up(*parts: Job) -> str:
    """The demo's postprocess: it gets every finished part."""
    return f"{sum(part.result for part in parts)} primes below " \
           f"{max(part.args[1] for part in parts)}"


def _demo_step(name: str) -> str:
    """A part of the demo's serial job."""
    return f"{name} done by process {os.getpid()}"


def _demo_report(*parts: Job) -> str:
    return "; ".join(f"{part.args[0]} {part.status}" for part in parts)


def _command_demo(args: argparse.Namespace) -> int:
    """run a short tour on a temporary database

    Put a few jobs in a temporary database and run them on a pool of 2 worker
    processes: a simple job, one with arguments, a delayed one, a failing one, a
    parallel and a serial composite.
    """
    def say(text: str = "") -> None:
        print(text, flush=True)

    with tempfile.TemporaryDirectory(prefix="litejobs-demo-") as tmp:
        path = os.path.join(tmp, "demo.db")
        with Queue(path) as q:
            say(f"litejobs {__version__} demo, database {path}")
            say("Starting a pool of 2 worker processes: q.worker(processes=2)")
            with q.worker(processes=2, grace=5) as pool:
                pids = ", ".join(map(str, pool.pids))
                say(f"   {pool.id} is up; its worker processes are {pids}\n")
                jobs = _demo_put_jobs(q, tmp, say)
                say("\nWatching the pool run them:")
                _demo_watch(jobs, say)
            say(f"\ncounts: {q.counts()}")
    return 0


def _demo_put_jobs(q: Queue, tmp: str, say: Callable[[str], None]) -> list[Job]:
    say("1. A simple job: q.put(time.time)")
    jobs = [q.put(time.time)]
    say(f"   put {jobs[-1]!r}")

    say("2. A job with arguments: an RSA key")
    openssl = shutil.which("openssl")
    if openssl:
        key_path = os.path.join(tmp, "key.pem")
        say(f"   q.put(Job(subprocess.call, [openssl, 'genrsa', '-out', {key_path!r}, "
            f"'2048']))")
        jobs.append(q.put(Job(subprocess.call, [openssl, "genrsa", "-out", key_path, "2048"],
                              stderr=subprocess.DEVNULL)))
    else:
        say("   (openssl not found: generating the key in pure Python)")
        jobs.append(q.put(Job(_demo_rsa_key, 1024)))
    say(f"   put {jobs[-1]!r}")

    say("3. A delayed job: q.put(time.time, begin_after=timedelta(seconds=2))")
    jobs.append(q.put(time.time, begin_after=datetime.timedelta(seconds=2)))
    say(f"   put {jobs[-1]!r}, due at {_format_time(jobs[-1]._row['begin_after'])}")

    say("4. A failing job: q.put(Job(_demo_divide, 1, 0))")
    jobs.append(q.put(Job(_demo_divide, 1, 0)))
    say(f"   put {jobs[-1]!r}")

    say("5. Parallel parts, then a postprocess that sees them all:")
    say("   q.put(parallel(*(Job(_demo_count_primes, n, n + 500_000) for n in (0, ...)),")
    say("                  postprocess=_demo_add_up))")
    ranges = [Job(_demo_count_primes, n, n + 500_000) for n in range(0, 2_000_000, 500_000)]
    root = q.put(parallel(*ranges, postprocess=_demo_add_up))
    say(f"   put {root!r}: it holds no worker while its parts run")
    jobs += ranges + [root]  # listed after its parts, so it is seen to end after them

    say("6. A serial pipeline: each part starts when the one before has ended")
    say("   q.put(serial(Job(_demo_step, 'fetch'), Job(_demo_step, 'clean'), "
        "Job(_demo_step, 'load'), postprocess=_demo_report))")
    steps = [Job(_demo_step, name) for name in ("fetch", "clean", "load")]
    root = q.put(serial(*steps, postprocess=_demo_report))
    say(f"   put {root!r}")
    jobs += steps + [root]
    return jobs


def _demo_watch(jobs: list[Job], say: Callable[[str], None]) -> None:
    """Print each job's changes of state as the pool makes them."""
    began = time.monotonic()
    seen: dict[int, str] = {}
    deadline = began + 120
    while any(seen.get(job._require_id()) not in _FINISHED for job in jobs):
        if time.monotonic() > deadline:
            raise LitejobsError("the demo's jobs did not finish within 120 seconds")
        for job in jobs:
            status = job.refresh().status or "?"
            if seen.get(job._require_id()) == status:
                continue
            seen[job._require_id()] = status
            stamp = f"   +{time.monotonic() - began:5.2f}s  job {job.id} {job.name}"
            if status == ACTIVE:
                say(f"{stamp} started")
            elif status == COMPLETED:
                took = (job._row["finished_at"] or 0) - (job._row["started_at"] or 0)
                say(f"{stamp} completed in {took * 1000:.1f} ms -> {_describe(job.result)}")
                if isinstance(job.result, dict) and "bits" in job.result:
                    say(f"{' ' * 10}(an RSA key of {job.result['bits']} bits)")
            elif status == FAILED:
                say(f"{stamp} failed ({job.error_type}); its traceback:")
                for line in (job.error or "").splitlines():
                    say(f"{' ' * 10}| {line}")
            elif status == WAITING and job.composite:
                say(f"{stamp} waits for its parts")
            elif status == WAITING:
                say(f"{stamp} waits for its turn")
            elif status == PENDING and job._row["begin_after"] > time.time():
                say(f"{stamp} waits until {_format_time(job._row['begin_after'])}")
            elif status == PENDING:
                say(f"{stamp} queued")
        time.sleep(0.01)


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _parse_duration(text: str) -> float:
    """``"30"``, ``"30s"``, ``"250ms"``, ``"10m"``, ``"2h"`` or ``"7d"``, in seconds."""
    value = text.strip().lower()
    for unit in sorted(_DURATION_UNITS, key=len, reverse=True):
        if value.endswith(unit):
            number, scale = value[:-len(unit)], _DURATION_UNITS[unit]
            break
    else:
        number, scale = value, 1.0
    try:
        seconds = float(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration; write it like 30s, 10m, 2h or 7d") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration of zero or more")
    return seconds


def _duration_type(minimum: float, above: bool = False,
                   most: float = math.inf) -> Callable[[str], float]:
    """An argparse type: a duration of at least (or above) ``minimum`` seconds,
    and at most ``most``."""
    def parse(text: str) -> float:
        seconds = _parse_duration(text)
        if seconds > most:
            raise argparse.ArgumentTypeError(f"{text!r} is too long: give at most {most:g}s")
        if seconds < minimum or (above and seconds == minimum):
            raise argparse.ArgumentTypeError(
                f"{text!r} is too short: give more than {minimum:g}s" if above else
                f"{text!r} is too short: give at least {minimum:g}s")
        return seconds
    parse.__name__ = "duration"  # named in argparse's "invalid duration value" message
    return parse


def _positive_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value < _INT64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to "
                                         f"{_INT64 - 1}")
    return value


_SIZE_UNITS = {"": 1, "k": 2 ** 10, "m": 2 ** 20, "g": 2 ** 30, "t": 2 ** 40}


def _parse_size(text: str) -> int:
    """``"512M"``, ``"2G"``, ``"64k"`` or bytes; binary units."""
    value = text.strip().lower().removesuffix("b").removesuffix("i")
    unit = value[-1:] if value[-1:] in _SIZE_UNITS else ""
    try:
        size = int(float(value[:len(value) - len(unit)]) * _SIZE_UNITS[unit])
    except (ValueError, OverflowError):
        size = 0
    if not 1 <= size < _INT64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 512M, 2G or 65536")
    return size


def _command_worker(args: argparse.Namespace) -> int:
    """run a pool of worker processes on a database

    Run jobs from DATABASE in a pool of worker processes until SIGTERM or SIGINT
    (Ctrl-C).  A first signal stops claiming and gives running jobs --grace seconds
    to finish; a second stops at once.  Jobs of a stopped pool are released to run
    elsewhere.  Every process sharing the file must be on this host.  Durations take
    a unit: 250ms, 30s, 10m, 2h.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(_JsonLogFormatter() if args.log_format == "json"
                         else logging.Formatter(_LOG_FORMAT))
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    try:
        worker = Worker(args.database, processes=args.processes, queues=args.queue or None,
                        lease=args.lease, poll=args.poll, grace=args.grace,
                        listen=not args.no_listen,
                        max_jobs_per_child=args.max_jobs_per_child,
                        async_concurrency=args.async_concurrency, threads=args.threads,
                        start_method=args.start_method, burst=args.burst, create=args.create,
                        retention=args.retention or None, memory_limit=args.memory_limit,
                        size_limit=args.size_limit, import_paths=args.path or ())
    except ValueError as exc:  # a --path that is not a directory
        raise _UsageError(str(exc)) from None
    worker.run()
    return 0


def _command_init(args: argparse.Namespace) -> int:
    """create a database, or add litejobs' tables to one

    Create DATABASE as a litejobs database (mode 0600, WAL journal), or add
    litejobs' tables to an existing SQLite file, leaving its own tables alone.  A
    litejobs database is left as it is.  (A Queue created in code, and worker
    --create, do the same.)
    """
    postgres = _is_postgres_url(args.database)
    existed = postgres or os.path.exists(args.database)
    version = _POSTGRES_SCHEMA_VERSION if postgres else _SCHEMA_VERSION
    current = False
    if existed:
        try:
            Queue(args.database, read_only=True).close()
            current = True
        except DatabaseError:  # not litejobs' yet, or older: opening it below says which
            pass
    with Queue(args.database) as q:
        path = q.path
    if args.json:
        _print_json({"database": path, "created": not existed, "changed": not current,
                     "schema_version": version})
    elif current:
        print(f"{path} is a litejobs database already (schema version {version})")
    elif existed:
        print(f"{path}: litejobs' tables are ready (schema version "
              f"{version}); the "
              f"{'database' if postgres else 'file'}'s other tables are untouched")
    else:
        print(f"created {path}: a litejobs database (mode 0600, WAL journal, schema version "
              f"{version})")
    return 0


# -- inspection commands ---------------------------------------------------------
#
# Every command that prints data takes --json.  The keys are documented in the
# README ("JSON output") and stay stable; times are ISO 8601 in UTC, durations
# seconds.  Commands that only read open the file read-only.

_JOB_JSON_KEYS = (
    "id", "status", "name", "queue", "priority", "key", "attempts", "max_attempts",
    "interruptions", "max_interruptions", "handbacks", "not_started", "timeout", "created_at",
    "begin_after", "begin_by", "started_at", "finished_at", "ran_by", "lease_owner",
    "lease_expires", "stop_requested", "parent_id", "role", "position", "composite",
    "waiting_for", "progress", "progress_message", "meta", "error_type",
)
_TIME_KEYS = frozenset(("created_at", "begin_after", "begin_by", "started_at", "finished_at",
                        "lease_expires", "stop_requested"))


def _job_json(row: Mapping[str, Any]) -> dict[str, Any]:
    out = {key: row.get(key) for key in _JOB_JSON_KEYS}
    for key in _TIME_KEYS:
        out[key] = None if out[key] is None else _format_time(out[key])
    out["composite"] = None if row.get("composite") is None else \
        str(row["composite"]).partition("_")[0]
    if out["max_interruptions"] == _UNLIMITED:
        out["max_interruptions"] = None
    out["attempts_counted"] = None if row.get("attempts") is None else _counted_attempts(row)
    try:
        out["meta"] = json.loads(row["meta"]) if row.get("meta") else {}
    except ValueError:  # written by something other than litejobs
        out["meta"] = {"unreadable": row["meta"]}
    return out


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _open_to_read(args: argparse.Namespace) -> Queue:
    return Queue(args.database, read_only=True)


def _open_to_write(args: argparse.Namespace) -> Queue:
    """The queue for a command that changes jobs.  Only ``put`` adds the
    litejobs tables to a file that has none; the others refuse it."""
    if args.command != "put":
        Queue(args.database, read_only=True).close()
    return Queue(args.database, create=False)


def _age(row: Mapping[str, Any], now: float) -> str:
    """How long a job took, runs, or has waited: what `list` shows."""
    if row["status"] in _FINISHED and row["started_at"] is not None:
        return f"took {_format_duration(max(0.0, row['finished_at'] - row['started_at']))}"
    if row["status"] == ACTIVE and row["started_at"] is not None:
        return f"running {_format_duration(max(0.0, now - row['started_at']))}"
    if row["status"] == PENDING and row["begin_after"] > now:
        return f"due in {_format_duration(row['begin_after'] - now)}"
    return f"age {_format_duration(max(0.0, now - row['created_at']))}"


def _progress_text(row: Mapping[str, Any], width: int = 0) -> str:
    if row.get("progress") is None:
        return ""
    fraction = float(row["progress"])
    bar = ""
    if width:
        done = round(fraction * width)
        bar = "[" + "#" * done + "-" * (width - done) + "] "
    message = f" {row['progress_message']}" if row.get("progress_message") else ""
    return f"{bar}{fraction:4.0%}{message}"


def _job_line(row: Mapping[str, Any], now: float, progress: bool = True) -> str:
    """A job as `list` shows it, and `watch` on its first line."""
    kind = f" ({str(row['composite']).partition('_')[0]})" if row.get("composite") else ""
    return (f"{row['id']:>7}  {row['status']:9}  {row['name']}{kind}  {row['queue']}  "
            f"attempt {row['attempts']}  {_age(row, now)}  "
            f"{_progress_text(row) if progress else ''}").rstrip()


def _pool_json(pool: Mapping[str, Any], now: datetime.datetime) -> dict[str, Any]:
    state = "alive" if pool["alive"] else ("stopped" if pool["stopped_at"] else "gone")
    return {
        "id": pool["id"], "state": state, "alive": pool["alive"], "host": pool["host"],
        "pid": pool["pid"], "processes": pool["processes"], "queues": pool["queues"],
        "lease": pool["lease"], "jobs": pool["jobs"],
        "started_at": _format_time(pool["started_at"].timestamp()),
        "heartbeat_at": _format_time(pool["heartbeat_at"].timestamp()),
        "heartbeat_age": round((now - pool["heartbeat_at"]).total_seconds(), 3),
        "stopped_at": None if pool["stopped_at"] is None
        else _format_time(pool["stopped_at"].timestamp()),
        "stop_reason": pool["stop_reason"],
    }


def _pool_line(pool: Mapping[str, Any]) -> str:
    queues = ",".join(pool["queues"]) if pool["queues"] else "all queues"
    line = (f"{pool['id']}  {pool['state']:7}  pid {pool['pid']} on {pool['host']}, "
            f"{pool['processes']} processes, {queues}, lease {pool['lease']:g}s, "
            f"{pool['jobs']} jobs running, last heartbeat "
            f"{_format_duration(max(0.0, pool['heartbeat_age']))} ago")
    if pool["stopped_at"] is not None:
        line += f"\n    stopped {pool['stopped_at']}: {pool['stop_reason']}"
    return line


def _command_workers(args: argparse.Namespace) -> int:
    """list the worker pools that have served a database

    List the worker pools registered on DATABASE, newest first: alive, stopped (with
    why), or gone (no heartbeat within its lease, or no process with its pid on this
    host).  Stopped pools are listed for a week.
    """
    with _open_to_read(args) as q:
        now = datetime.datetime.now(datetime.timezone.utc)
        pools = [_pool_json(pool, now) for pool in q.workers()]
    if args.json:
        _print_json(pools)
    elif not pools:
        print(f"no worker pool has run on {q.path}")
    else:
        print("\n".join(_pool_line(pool) for pool in pools))
    return 0


def _status(q: Queue) -> dict[str, Any]:
    found = q.overview()
    now = found["now"]
    totals = dict.fromkeys(STATUSES, 0)
    for counts in found["counts"].values():
        for status, count in counts.items():
            totals[status] += count
    oldest = found["oldest_due"]
    moment = datetime.datetime.now(datetime.timezone.utc)
    return {
        "database": q.path, "now": _format_time(now), "counts": found["counts"],
        "totals": totals,
        "oldest_pending": None if oldest is None else {
            "id": oldest["id"], "name": oldest["name"], "queue": oldest["queue"],
            "due_at": _format_time(oldest["begin_after"]),
            "age": round(now - oldest["begin_after"], 3)},
        "throughput": {"last_minute": found["finished"]["last_minute"],
                       "last_hour": found["finished"]["last_hour"]},
        "workers": [_pool_json(pool, moment) for pool in q.workers()],
    }


def _status_text(status: Mapping[str, Any]) -> list[str]:
    lines = [f"{status['database']} at {status['now']}", ""]
    header = ["queue", *STATUSES]
    table = [header] + [[queue, *(f"{counts[s]:,}" for s in STATUSES)]
                        for queue, counts in status["counts"].items()]
    table.append(["(all)", *(f"{status['totals'][s]:,}" for s in STATUSES)])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        lines.append("  " + "  ".join(cell.rjust(w) if i else cell.ljust(w)
                                      for i, (cell, w) in enumerate(zip(row, widths))))
    oldest = status["oldest_pending"]
    lines.append("")
    lines.append("oldest due job: none waiting" if oldest is None else
                 f"oldest due job: {oldest['id']} ({oldest['name']}, queue "
                 f"{oldest['queue']}), due {_format_duration(max(0.0, oldest['age']))} ago")
    rate = status["throughput"]
    lines.append(f"ended: {rate['last_minute']:,} in the last minute "
                 f"({rate['last_minute'] / 60:,.1f}/s), {rate['last_hour']:,} in the last "
                 f"hour ({rate['last_hour'] / 3600:,.1f}/s)")
    lines.append("")
    pools = status["workers"]
    alive = sum(pool["alive"] for pool in pools)
    lines.append(f"pools: {alive} alive of {len(pools)} listed" if pools else
                 "pools: none has run on this file")
    lines += ["  " + _pool_line(pool) for pool in pools]
    return lines


def _command_status(args: argparse.Namespace) -> int:
    """jobs by queue and status, throughput, and the pools

    Show how many jobs each queue has in each status, how long the oldest due job
    has waited, how many jobs ended in the last minute and hour, and every pool with
    its host, pid, processes, queues, last heartbeat, jobs in flight, and whether it
    is alive.
    """
    with _open_to_read(args) as q:
        status = _status(q)
    if args.json:
        _print_json(status)
    else:
        print("\n".join(_status_text(status)))
    return 0


def _moment(text: str) -> datetime.datetime:
    """An argparse type: an ISO 8601 time, or a duration meaning that long ago."""
    try:
        return datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(
            seconds=_parse_duration(text))
    except (argparse.ArgumentTypeError, OverflowError):
        pass
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (30s, 10m, 2h, 7d: that long ago) nor an ISO "
            f"time (2026-11-27T09:00:00+00:00)") from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # a naive time on the command line is local time
    return moment


_moment.__name__ = "time"


def _end(text: str) -> datetime.datetime:
    """An argparse type: an ISO 8601 time, or a duration meaning that long from now."""
    try:
        return datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(
            seconds=_parse_duration(text))
    except (argparse.ArgumentTypeError, OverflowError):
        pass
    try:
        return _moment(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (30s, 10m, 2h, 7d: that long from now) nor an "
            f"ISO time (2026-11-27T09:00:00+00:00)") from None


_end.__name__ = "time"


def _command_list(args: argparse.Namespace) -> int:
    """jobs, newest first, with filters

    List jobs, newest first: id, status, callable, queue, attempt, how long it took,
    runs or waited, and its progress.  Times are ISO 8601 or durations meaning that
    long ago (30s, 10m, 2h, 7d).
    """
    with _open_to_read(args) as q:
        rows = [job._row for job in q.jobs(status=args.status, queue=args.queue,
                                           name=args.callable, since=args.since,
                                           before=args.before, limit=args.limit)]
    if args.json:
        _print_json([_job_json(row) for row in rows])
        return 0
    now = q.now()
    for row in rows:
        print(_job_line(row, now))
    if not rows:
        print("no job matches")
    return 0


def _loaded(load: Callable[[], Any]) -> str:
    """A readable, shortened repr of what ``load`` unpickles, or why it cannot."""
    try:
        return _shortened(repr(load()), _REPR_MOST)
    except Exception as exc:
        return f"(cannot be shown here: {type(exc).__name__}: {exc})"


class _Opaque:
    """Stands in, in what `show` prints, for an object of a class that
    litejobs will not import: it keeps what the pickle gave it, to print."""

    _origin = "?"
    _given: list[Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> _Opaque:
        self = object.__new__(cls)
        self._given = [*args, _ShownDict(kwargs.items())] if kwargs else list(args)
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self._given.append(state)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._given.append((key, value))

    def append(self, item: Any) -> None:
        self._given.append(item)

    def extend(self, items: Iterable[Any]) -> None:
        self._given.extend(items)


class _ShownSet(list):
    """A set or frozenset as `show` keeps it: a list, so nothing is hashed
    (hashing a tuple the pickle nested and shared can take for ever)."""

    add = list.append


class _ShownDict(list):
    """A dict as `show` keeps it: its pairs in a list, nothing hashed."""

    def __setitem__(self, key: Any, value: Any) -> None:
        self.append((key, value))

    def items(self) -> Iterator[tuple[Any, Any]]:
        return iter(self)


class _BoundedRepr(reprlib.Repr):
    """A repr of bounded size and depth, whatever the pickle built, sharing
    included (a list holding itself twice, 50 levels deep, stays short)."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother = 4, 200, 200
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = 8
        self.maxfrozenset = self.maxdeque = 8

    def repr1(self, x: Any, level: int) -> str:
        if isinstance(x, _Opaque):
            return self._items(x._given, level, f"{x._origin}(", ")", self.repr1)
        if isinstance(x, _ShownDict):
            return self._items(x, level, "{", "}", lambda pair, inner: (
                f"{self.repr1(pair[0], inner)}: {self.repr1(pair[1], inner)}"))
        if isinstance(x, _ShownSet):
            return self._items(x, level, "{", "}", self.repr1) if x else "set()"
        return super().repr1(x, level)

    def _items(self, items: Sequence[Any], level: int, left: str, right: str,
               show: Callable[[Any, int], str]) -> str:
        if level <= 0:
            return f"{left}...{right}"
        shown = [show(item, level - 1) for item in items[:self.maxlist]]
        if len(items) > self.maxlist:
            shown.append("...")
        return f"{left}{', '.join(shown)}{right}"


# Classes `show` builds for real: already imported, and a pickle cannot make
# them take more time or memory than its own size.  Sets, frozensets and
# bytearrays need none: pickles of protocol 4 and later build them with
# opcodes of their own.
_SHOWN_FOR_REAL = {("datetime", name): getattr(datetime, name)
                   for name in ("date", "time", "datetime", "timedelta", "timezone")}


# The pure-Python unpickler, whose opcodes a subclass can take over.
_PurePythonUnpickler: Any = getattr(pickle, "_Unpickler")


class _ShowingUnpickler(_PurePythonUnpickler):
    """Unpickles only to print.  It imports nothing and calls nothing but the
    datetime classes above; every other global becomes an `_Opaque`.  It is
    the pure-Python unpickler, whose memo is a dict: the C one allocates a
    memo as large as the highest index a pickle names, 2 GiB for 12 bytes.
    Dicts and sets become lists, so nothing is hashed."""

    dispatch = dict(_PurePythonUnpickler.dispatch)

    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data))
        self._stand_ins: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        real = _SHOWN_FOR_REAL.get((module, name))
        if real is not None:
            return real
        key = (module, name)
        if key not in self._stand_ins:
            origin = f"{module}.{name}"
            if not origin.isprintable():  # a name must not write to the terminal
                origin = repr(origin)
            self._stand_ins[key] = type("_Opaque", (_Opaque,), {"_origin": origin})
        return self._stand_ins[key]

    def _load_empty_dict(self) -> None:
        self.append(_ShownDict())

    def _load_dict(self) -> None:
        items = self.pop_mark()
        self.append(_ShownDict(zip(items[::2], items[1::2])))

    def _load_empty_set(self) -> None:
        self.append(_ShownSet())

    def _load_frozenset(self) -> None:
        self.append(_ShownSet(self.pop_mark()))

    def _load_additems(self) -> None:
        items = self.pop_mark()
        self.stack[-1].extend(items)

    dispatch[pickle.EMPTY_DICT[0]] = _load_empty_dict
    dispatch[pickle.DICT[0]] = _load_dict
    dispatch[pickle.EMPTY_SET[0]] = _load_empty_set
    dispatch[pickle.FROZENSET[0]] = _load_frozenset
    dispatch[pickle.ADDITEMS[0]] = _load_additems


@dataclasses.dataclass
class _Keyword:
    key: Any
    value: Any


def _shown(data: bytes) -> Any:
    return _ShowingUnpickler(data).load()


def _show(q: Queue, job_id: int) -> dict[str, Any]:
    job = q.get(job_id)
    row = job._row
    out = _job_json(row)
    bounded = _BoundedRepr()

    def call() -> str:
        # Never unpickled for real here: the call is printed from a pickle
        # that imports nothing, once its signature, if secrets are set, holds.
        payload = job._signed_blob("payload")
        args: Any = ()
        kwargs: Any = {}
        if payload is not None:
            _, args, kwargs = _shown(payload)
        parts: list[str] = []
        shown = 0
        for part in itertools.chain(args, (_Keyword(key, value) for key, value in kwargs.items())):
            if shown > _REPR_MOST:  # enough for _loaded's cut: build no more
                parts.append("...")
                break
            parts.append(f"{part.key}={shown_repr(part.value)}" if isinstance(part, _Keyword)
                         else shown_repr(part))
            shown += len(parts[-1]) + 2
        return f"{job.name}({', '.join(parts)})"

    def shown_repr(value: Any) -> str:
        # A long string is cut at the end, by _loaded, not in the middle.
        if isinstance(value, (str, bytes)):
            return repr(value[:2 * _REPR_MOST])
        return bounded.repr(value)

    def result() -> str:
        data = job._signed_blob("result")
        return "None" if data is None else shown_repr(_shown(data))

    out["call"] = _loaded(lambda: _Shown(call()))
    out["result"] = _loaded(lambda: _Shown(result())) if job.status == COMPLETED else None
    out["error"] = row["error"]
    out["history"] = [{**entry, "at": _format_time(entry["at"])}
                      for entry in json.loads(row.get("history") or "[]")]
    parent = job.parent()
    out["parent"] = None if parent is None else {
        "id": parent.id, "name": parent.name, "status": parent.status,
        "composite": parent.composite}
    out["children"] = [{"id": child.id, "role": child.role, "name": child.name,
                        "status": child.status} for child in job.children()]
    return out


class _Shown(str):
    """A string whose repr is itself: a call already formatted for people."""

    def __repr__(self) -> str:
        return str(self)


def _show_text(shown: Mapping[str, Any], now: float) -> list[str]:
    kind = f" ({shown['composite']})" if shown["composite"] else ""
    lines = [f"job {shown['id']}  {shown['status']}  {shown['name']}{kind}",
             f"  call       {shown['call']}",
             f"  queue      {shown['queue']}, priority {shown['priority']}"
             + (f", key {shown['key']!r}" if shown["key"] else ""),
             f"  attempts   {shown['attempts_counted']} of {shown['max_attempts']}, "
             f"interruptions {shown['interruptions']} of "
             f"{'no limit' if shown['max_interruptions'] is None else shown['max_interruptions']}"
             + (f", handed back {shown['handbacks']}" if shown["handbacks"] else "")
             + (f", not started {shown['not_started']}" if shown["not_started"] else "")
             + (f", timeout {shown['timeout']:g}s" if shown["timeout"] else "")]
    if shown["ran_by"]:
        lines.append(f"  ran by     {shown['ran_by']}")
    for label, key in (("created", "created_at"), ("due", "begin_after"),
                       ("deadline", "begin_by"), ("started", "started_at"),
                       ("finished", "finished_at"), ("lease ends", "lease_expires"),
                       ("stop by", "stop_requested")):
        if shown[key] is not None:
            lines.append(f"  {label:10} {shown[key]}")
    if shown["progress"] is not None:
        lines.append(f"  progress   {_progress_text(shown, 20)}")
    if shown["meta"]:
        lines.append(f"  meta       {json.dumps(shown['meta'])}")
    if shown["history"]:
        lines.append("  history")
        for entry in shown["history"]:
            error = f": {entry['error']}" if entry.get("error") else ""
            by = f" (ran by {entry['by']})" if entry.get("by") else ""
            lines.append(f"    {entry['at']}  attempt {entry['attempt']} "
                         f"{entry['event']}{error}{by}")
    if shown["parent"] is not None:
        parent = shown["parent"]
        lines.append(f"  parent     job {parent['id']} ({parent['name']}) {parent['status']}, "
                     f"this is its {shown['role']}")
    if shown["children"]:
        lines.append("  children")
        lines += [f"    job {child['id']:<7} {child['role']:9} {child['status']:9} "
                  f"{child['name']}" for child in shown["children"]]
    if shown["result"] is not None:
        lines.append(f"  result     {shown['result']}")
    if shown["error"]:
        lines.append("  error")
        lines += [f"    {line}" for line in shown["error"].rstrip().splitlines()]
    return lines


def _command_show(args: argparse.Namespace) -> int:
    """everything about one job

    Show one job: its call (arguments shortened), status, attempts and
    interruptions, who ran it, its timestamps and history, progress and meta, parent
    and children (parts, callbacks), result (shortened) and full traceback.  The
    call and the result are printed without importing or running anything of them;
    with LITEJOBS_SECRET set, only what is signed with it.
    """
    with _open_to_read(args) as q:
        shown = _show(q, args.id)
    if args.json:
        _print_json(shown)
    else:
        print("\n".join(_show_text(shown, q.now())))
    return 0


def _command_retry(args: argparse.Namespace) -> int:
    """run failed or cancelled jobs again

    Put failed or cancelled jobs back to pending, from a fresh start; what they went
    through stays in their history.  A composite runs again the parts that did not
    complete, then its postprocess; a part of a composite that has ended runs again,
    then the composite's postprocess.  Exit status 1 if any job could not be
    retried.
    """
    if bool(args.ids) == args.failed:
        raise _UsageError("give job ids, or --failed (with --queue), not both")
    if args.queue and not args.failed:
        raise _UsageError("--queue goes with --failed")
    results = []
    with _open_to_write(args) as q:
        # Parts and returned jobs run again with the job they belong to.
        ids = args.ids or [job.id for job in q.jobs(status=FAILED, queue=args.queue, limit=None)
                           if job.role not in ("part", "result")]
        for job_id in ids:
            try:
                results.append({"id": job_id, "status": q.get(job_id).retry(), "error": None})
            except (ValueError, JobNotFound) as exc:
                results.append({"id": job_id, "status": None, "error": str(exc)})
    if not results and not args.json:
        print("no failed job to retry")
    return _print_results(args, results, lambda result: f"job {result['id']}: "
                                                        f"{result['status']} again")


def _print_results(args: argparse.Namespace, results: list[dict[str, Any]],
                   line: Callable[[dict[str, Any]], str]) -> int:
    """Print what a command did to each job: a ``line`` each, or the JSON list,
    on stdout; what it could not do, on stderr as errors.  Exit status 1 if
    there was any."""
    if args.json:
        _print_json(results)
    for result in results:
        if result["error"]:
            print(f"litejobs: error: {result['error']}", file=sys.stderr)
        elif not args.json:
            print(line(result))
    return 1 if any(result["error"] for result in results) else 0


def _command_schedules(args: argparse.Namespace) -> int:
    """list the schedules of a database

    List the schedules on DATABASE by name: cron expression and time zone, the
    job each tick puts, its next tick, and its last fire with the job it put.
    """
    with _open_to_read(args) as q:
        found = [schedule.as_dict() for schedule in q.schedules()]
    if args.json:
        _print_json(found)
    elif not found:
        print(f"no schedule on {q.path}")
    else:
        print("\n".join(_schedule_line(schedule) for schedule in found))
    return 0


def _schedule_line(found: Mapping[str, Any]) -> str:
    last = "never fired" if found["last_tick"] is None else \
        f"last {found['last_tick']} (job {found['last_job_id']})"
    upcoming = "paused" if found["paused"] else f"next {found['next_tick'] or 'never'}"
    return (f"{found['name']}: '{found['cron']}' {found['tz']}, {found['job']}; "
            f"{upcoming}; {last}")


def _command_schedule(args: argparse.Namespace) -> int:
    """pause, resume, trigger or remove a schedule

    pause: fire no tick until resumed (a running job goes on).  resume: fire again
    from the next tick after now.  trigger: put its job now, outside its ticks.
    remove: delete the schedule (the jobs it put stay).  Exit status 1 if there
    is no such schedule.
    """
    with _open_to_write(args) as q:
        try:
            schedule = q.get_schedule(args.name)
        except ScheduleNotFound as exc:
            return _print_results(args, [{"name": args.name, "error": str(exc)}],
                                  lambda result: str(result["error"]))
        job = None
        if args.action == "trigger":
            job = schedule.trigger()
        elif args.action == "remove":
            schedule.remove()
        else:
            getattr(schedule, args.action)()
        result = {"name": args.name, "action": args.action, "error": None,
                  "job_id": None if job is None else job.id,
                  "schedule": None if args.action == "remove" else schedule.as_dict()}
    return _print_results(args, [result], _schedule_action_line)


def _schedule_action_line(result: Mapping[str, Any]) -> str:
    if result["action"] == "trigger":
        return f"schedule {result['name']}: put job {result['job_id']}"
    if result["action"] == "remove":
        return f"schedule {result['name']}: removed"
    return f"{result['action']}d {_schedule_line(result['schedule'])}"


def _quotas_report(q: Queue) -> dict[str, Any]:
    """The limits set on quotas, and each quota's use now: for every name that
    running jobs hold or that was claimed within its rate window, the jobs
    running under it and the claims in its window, beside the limits that
    apply to it (its own entry, else the longest pattern matching it, as a
    claim decides).  The ``quotas`` command and the dashboard show this."""
    rows = q._storage.fetch_quotas()
    limits = _counted_limits(q._storage, rows, _now(q._storage))
    holders: dict[str, list[int]] = {}
    for job_id, names, _owner in q._storage.quota_holders():
        for name in names:
            holders.setdefault(name, []).append(job_id)
    names = sorted(set(holders) | set(limits.started))
    return {
        "limits": [{"pattern": row["pattern"], "running": row["running"],
                    "rate": row["rate"], "per": row["per"]}
                   for row in sorted(rows, key=lambda row: row["pattern"])],
        "use": [{"name": name, "running": len(holders.get(name, [])),
                 "limit": limits.limit(name), "started": limits.started[name],
                 "rate": None if limits.rate(name) is None else list(limits.rate(name) or ()),
                 "jobs": holders.get(name, [])}
                for name in names],
    }


def _command_quotas(args: argparse.Namespace) -> int:
    """the limits set on quotas, and each quota's use

    List the limits set (`Queue.set_quota`, `Queue.set_rate`) by name or pattern,
    then every quota in use: the jobs running under it against its limit, and
    the claims within its rate window against its rate.
    """
    with _open_to_read(args) as q:
        report = _quotas_report(q)
    if args.json:
        _print_json(report)
        return 0
    if not report["limits"] and not report["use"]:
        print(f"no quota limit set or in use on {q.path}")
        return 0
    for entry in report["limits"]:
        running = "" if entry["running"] is None else f"{entry['running']} running"
        rate = "" if entry["rate"] is None else f"{entry['rate']} per {entry['per']:g}s"
        print(f"limit {entry['pattern']}: {', '.join(part for part in (running, rate) if part)}")
    for use in report["use"]:
        print(f"quota {use['name']}: " + _quota_use_text(use))
    return 0


def _quota_use_text(use: Mapping[str, Any]) -> str:
    """'2 of 3 running, 5 of 10 claims in 60s' (either part as it applies)."""
    running = f"{use['running']} of {use['limit']} running" if use["limit"] is not None \
        else f"{use['running']} running (no limit)"
    if use["rate"] is None:
        return running
    count, per = use["rate"]
    return f"{running}, {use['started']} of {count} claims in {per:g}s"


def _command_explain(args: argparse.Namespace) -> int:
    """say why a job is not running (or why it is where it is)

    One line per reason: due later, its queue paused, a quota full (and who holds
    it), waiting for parts or for the job it follows, no live pool serving its
    queue, its deadline passed.  Exit status 1 if there is no such job.
    """
    with _open_to_read(args) as q:
        job = q.get(args.id)
        reasons = job.explain()
    if args.json:
        _print_json({"id": job.id, "status": job.status, "reasons": reasons})
    else:
        print(f"job {job.id} ({job.name}) {job.status}:")
        print("\n".join(f"  {reason}" for reason in reasons))
    return 0


def _command_pause(args: argparse.Namespace) -> int:
    """pause a queue: its jobs are not claimed until it is resumed

    Pools claim no job of QUEUE until `resume`, or until --until (a duration from
    now, or an ISO time); running jobs finish.
    """
    with _open_to_write(args) as q:
        q.pause(args.queue, args.until)
        until = q.paused().get(args.queue)
    result = {"queue": args.queue, "paused": True, "error": None,
              "until": None if until is None else _format_time(until.timestamp())}
    return _print_results(args, [result], lambda r: f"queue {r['queue']}: paused" + (
        f" until {r['until']}" if r["until"] else " until resumed"))


def _command_resume(args: argparse.Namespace) -> int:
    """resume a paused queue: idle pools claim its jobs at once

    Pools claim the jobs of QUEUE again; idle ones are woken at once.  Resuming a
    queue that is not paused changes nothing, and says so.
    """
    with _open_to_write(args) as q:
        was = q.resume(args.queue)
    result = {"queue": args.queue, "paused": False, "was_paused": was, "error": None}
    return _print_results(args, [result], lambda r: f"queue {r['queue']}: " + (
        "resumed" if r["was_paused"] else "was not paused"))


def _command_cancel(args: argparse.Namespace) -> int:
    """cancel jobs, at once or gracefully

    Cancel jobs: one not running never runs; a running one is stopped by its pool.
    Cancelling a composite cancels what is under it.  With --graceful, a running job
    is asked to stop instead: it sees current_job().stop_requested within about a
    second and may return early, and its pool stops it after --grace.  Exit status 1
    if a job does not exist.
    """
    if args.grace is not None and not args.graceful:
        raise _UsageError("--grace goes with --graceful")
    grace = DEFAULT_STOP_GRACE if args.grace is None else args.grace
    results = []
    with _open_to_write(args) as q:
        for job_id in args.ids:
            try:
                job = q.get(job_id)
            except JobNotFound as exc:
                results.append({"id": job_id, "status": None, "error": str(exc)})
                continue
            done = job.request_stop(grace) if args.graceful else job.cancel()
            results.append({"id": job_id, "status": job.status, "error": None,
                            "cancelled": done, "stop_requested": job.stop_requested})
    return _print_results(args, results, functools.partial(_cancel_line, grace=grace))


def _cancel_line(result: Mapping[str, Any], grace: float) -> str:
    if not result["cancelled"]:
        return f"job {result['id']}: had already ended, {result['status']}"
    if result["status"] == ACTIVE and result["stop_requested"]:
        return (f"job {result['id']}: running; asked to stop, it has "
                f"{_format_duration(grace)} before its pool stops it and it ends cancelled")
    if result["status"] == ACTIVE:
        return f"job {result['id']}: running; its pool stops it and it ends cancelled"
    return f"job {result['id']}: cancelled"


def _command_purge(args: argparse.Namespace) -> int:
    """delete finished jobs

    Delete jobs that ended more than --older-than ago, with the jobs under them, in
    small transactions so that pools are not held up.  Asks first, unless --yes is
    given or stdin is not a terminal.
    """
    before = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(
        seconds=args.older_than)
    with _open_to_write(args) as q:
        found = q.purge(before, status=args.status, dry_run=True)
        what = (f"{found:,} jobs ({args.status or 'finished'} ones that ended before "
                f"{_format_time(before.timestamp())}, and the jobs under them)")
        if found and not args.yes and sys.stdin.isatty():
            question = f"delete {what}? [y/N] "
            if args.json:  # stdout is for the JSON alone
                sys.stderr.write(question)
                sys.stderr.flush()
                question = ""
            answer = input(question)
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing deleted")
                return 1
        deleted = q.purge(before, status=args.status)
    if args.json:
        _print_json({"deleted": deleted, "before": _format_time(before.timestamp())})
    else:
        print(f"deleted {deleted:,} jobs" if deleted else f"no job ended before "
              f"{_format_time(before.timestamp())}"
              + (f" with status {args.status}" if args.status else ""))
    return 0


def _command_copy(args: argparse.Namespace) -> int:
    """copy the jobs not run yet to another database

    Copy the pending and waiting jobs of DATABASE, with the composites, parts and
    callbacks around them, to DESTINATION (another path or PostgreSQL URL), under
    new ids: to move from SQLite to PostgreSQL, say.  Stop DATABASE's pools first.
    With --move, delete them from DATABASE once the copy has committed.
    """
    with _open_to_write(args) as source, Queue(args.destination) as destination:
        new_ids = source.copy_to(destination, move=args.move)
        where = destination.path
    if args.json:
        _print_json({"copied": len(new_ids), "moved": args.move, "destination": where,
                     "ids": {str(old): new for old, new in new_ids.items()}})
    else:
        print(f"{'moved' if args.move else 'copied'} {len(new_ids):,} jobs to {where}"
              + (f" (ids {min(new_ids.values())} to {max(new_ids.values())})"
                 if new_ids else ""))
    return 0


def _command_put(args: argparse.Namespace) -> int:
    """put a job, from the shell or cron

    Put a call to FUNCTION, an importable 'package.module:function', with ARGS_JSON:
    a JSON array of positional arguments, or an object of keyword arguments.
    FUNCTION is imported to check it, from the current directory, --path, PYTHONPATH
    or an installed package, as a pool imports it.
    """
    call_args: list[Any] = []
    call_kwargs: dict[str, Any] = {}
    if args.arguments is not None:
        try:
            given = json.loads(args.arguments)
        except ValueError as exc:
            raise _UsageError(f"ARGS_JSON is not JSON: {exc}") from None
        if isinstance(given, list):
            call_args = given
        elif isinstance(given, dict):
            call_kwargs = given
        else:
            raise _UsageError("ARGS_JSON is a JSON array (the positional arguments) or "
                              "object (the keyword arguments)")
    for directory in reversed(args.path or []):  # checked here as a pool would import it
        sys.path.insert(0, os.path.abspath(directory))
    with _open_to_write(args) as q:
        try:
            job = q.put(Job(args.function, *call_args, **call_kwargs),
                        queue=_DEFAULT if args.queue is None else args.queue,
                        priority=_DEFAULT if args.priority is None else args.priority,
                        begin_after=args.delay, key=args.key)
        except (TypeError, ValueError) as exc:
            raise _UsageError(str(exc)) from None
    if args.json:
        _print_json(_job_json(job._row))
    else:
        print(f"job {job.id} put: {job.name} in queue {job.queue}, due "
              f"{_format_time(job._row['begin_after'])}")
    return 0


@dataclasses.dataclass
class _WatchFrame:
    """What `watch` shows at one moment: ``lines`` of text, the same as
    ``data`` for --json, ``state`` (what they show, less the passing time,
    to tell a change), whether the watch is over, and its exit status."""

    lines: list[str]
    data: dict[str, Any]
    state: Any
    done: bool = False
    status: int = 0


def _watch_frame(q: Queue, job_id: int | None, now: float) -> _WatchFrame:
    if job_id is None:
        status = _status(q)
        lines = _status_text(status)
        active = [job._row for job in q.jobs(status=ACTIVE, limit=20)]
        if active:
            lines += ["", "running:"] + [f"  {_job_line(row, now)}" for row in active]
        state: Any = (status["counts"],
                      [(pool["id"], pool["state"]) for pool in status["workers"]],
                      [(row["id"], row["progress"], row["progress_message"])
                       for row in active])
        return _WatchFrame(lines, {**status, "running": [_job_json(row) for row in active]},
                           state)
    job = q.get(job_id)
    row = job._row
    lines = [_job_line(row, now, progress=False)]
    if row["progress"] is not None:
        lines.append(f"  {_progress_text(row, 40)}")
    children = collections.Counter(child.status for child in job.children())
    if children:
        lines.append("  children: " + ", ".join(f"{count} {status}" for status, count
                                                 in sorted(children.items())))
    if job.status == FAILED and job.error:
        lines.append(f"  {_last_line(job.error)}")
    state = (job.status, row["progress"], row["progress_message"], sorted(children.items()))
    return _WatchFrame(lines, {**_job_json(row), "children": dict(sorted(children.items()))},
                       state, job.status in _FINISHED, 0 if job.status == COMPLETED else 1)


def _command_watch(args: argparse.Namespace) -> int:
    """follow one job, or the whole database, live

    Redraw one job's status and progress bar, or the status of the whole database,
    every --interval until Ctrl-C.  Watching a job ends when it does: exit status 0
    if it completed, 1 otherwise.  When stdout is not a terminal, prints a line only
    when something changes, after the time; with --json, a JSON object per line
    instead.
    """
    live = sys.stdout.isatty() and not args.json
    shown: Any = None
    try:
        with _open_to_read(args) as q:
            while True:
                frame = _watch_frame(q, args.id, q.now())
                if live:  # redraw in place: home, clear the screen
                    sys.stdout.write("\x1b[H\x1b[2J" + "\n".join(frame.lines) + "\n")
                    sys.stdout.flush()
                elif frame.state != shown and args.json:  # one object per line
                    print(json.dumps({"time": _format_time(q.now()), **frame.data},
                                     default=str), flush=True)
                elif frame.state != shown:  # a block: the time, then lines indented
                    lines = [line for line in frame.lines if line]
                    print(f"{_format_time(q.now())}  {lines[0]}", flush=True)
                    for line in lines[1:]:
                        print(f"{' ' * 26}{line}", flush=True)
                shown = frame.state
                if frame.done:
                    return frame.status
                time.sleep(args.interval)
    except KeyboardInterrupt:
        if live:
            print()
        return 130


# -- the web dashboard -----------------------------------------------------------
#
# `web_app` is a WSGI application over one queue, served by ``python -m
# litejobs web`` through the standard library.  Its pages show what the
# command line's --json shows, from the same functions, and the same data is
# served as JSON under /api/.  Secure by default: read-only unless actions are
# allowed; actions are POST only, with a CSRF token, an Origin check and a
# SameSite=Strict cookie; a token, when set, is needed for everything; every
# page carries a strict Content-Security-Policy (no inline script or style);
# everything shown is escaped; calls and results are shown by the viewer of
# `show`, which never unpickles for real.  (Referrer-Policy same-origin, not
# no-referrer: under no-referrer a browser sends a form's POST with "Origin:
# null", which the Origin check refuses.)

_WEB_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_WEB_PAGE_SIZE = 50  # jobs on a page of the jobs list
_WEB_THREADS = 8  # threads serving requests, each with its connection
_WEB_TREE_MOST = 500  # jobs drawn in a composite's tree, at most
_WEB_BULK_MOST = 10_000  # jobs a bulk action on "everything matching" acts on, at most
_WEB_ACTIONS = ("retry", "cancel", "purge", "pause-queue", "resume-queue",
                "pause-schedule", "resume-schedule", "trigger-schedule")
_WEB_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
nav{background:#263238;padding:.5em 1em}
nav a{color:#eceff1;margin-right:1.2em;text-decoration:none}
nav a.here{font-weight:bold;border-bottom:2px solid #80cbc4}main{padding:1em 1.5em}
table{border-collapse:collapse;margin:.5em 0 1.2em}
td,th{padding:.25em .7em;border-bottom:1px solid #ddd;text-align:left}
th{background:#eceff1}.pending{color:#1565c0}.active{color:#ef6c00}.completed{color:#2e7d32}
.failed{color:#c62828}.cancelled{color:#6d4c41}.waiting{color:#6a1b9a}
pre{background:#fff;border:1px solid #ddd;padding:.6em;overflow:auto;max-height:30em}
ul.tree{list-style:none;padding-left:1.2em;border-left:1px dotted #999}progress{width:14em}
form.inline{display:inline}.note{color:#555}button{margin:.1em}
"""
# Pages refresh themselves: the page is fetched again every few seconds and
# its <main> replaced, unless the user is typing or has selected something.
_WEB_JS = """
(function(){var main=document.querySelector('main');if(!main||main.dataset.refresh!=='yes')return;
setInterval(function(){if(document.querySelector('input:checked,input:focus,select:focus'))return;
fetch(location.href,{credentials:'same-origin'}).then(function(r){return r.ok?r.text():null})
.then(function(t){if(!t)return;var d=new DOMParser().parseFromString(t,'text/html');
var m=d.querySelector('main');if(m)main.innerHTML=m.innerHTML;});},5000);})();
"""


def _e(value: Any) -> str:
    """``value`` as HTML text, escaped."""
    return html.escape("" if value is None else str(value), quote=True)


class _WebRequest(NamedTuple):
    """What a handler needs of a WSGI request."""
    method: str
    path: str
    query: dict[str, list[str]]
    form: dict[str, list[str]]
    cookies: dict[str, str]
    origin: str | None
    host: str
    remote: str
    authorization: str


class _WebResponse(NamedTuple):
    status: str
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def _web_request(environ: Mapping[str, Any]) -> _WebRequest:
    query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    form: dict[str, list[str]] = {}
    if environ.get("REQUEST_METHOD") == "POST":
        length = min(int(environ.get("CONTENT_LENGTH") or 0), 1_000_000)
        body = environ["wsgi.input"].read(length).decode("utf-8", "replace")
        form = urllib.parse.parse_qs(body, keep_blank_values=True)
    cookies = {}
    for part in environ.get("HTTP_COOKIE", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name:
            cookies[name] = value
    return _WebRequest(environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "/"),
                       query, form, cookies, environ.get("HTTP_ORIGIN"),
                       environ.get("HTTP_HOST", ""), environ.get("REMOTE_ADDR", "?"),
                       environ.get("HTTP_AUTHORIZATION", ""))


def web_app(queue: Queue, *, allow_actions: bool = False, token: str | None = None,
            redact: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> Any:
    """A WSGI application showing ``queue``: overview, jobs, a job with its
    tree, pools, schedules and quotas, as pages and as JSON under /api/.
    Mount it in a server of your own, behind your own authentication::

        application = litejobs.web_app(litejobs.Queue("app.db"))

    Pages read through a read-only connection.  With ``allow_actions``,
    buttons retry, cancel or purge jobs, pause or resume queues and
    schedules, and trigger schedules: POST only, with a CSRF token and an
    Origin check, each logged with who did it.  With ``token``, every
    request must carry it (``Authorization: Bearer``, or the cookie the
    login form sets).  ``redact`` gets each job's JSON (as ``show --json``
    gives it) before it is shown, and may blank arguments out."""
    return _WebApp(queue, allow_actions=allow_actions, token=token, redact=redact)


class _WebApp:
    """The dashboard: it owns the read-only queue pages read through, the
    queue actions write through (if allowed), the token, and the secret its
    session and CSRF values are derived from (new for each process)."""

    def __init__(self, queue: Queue, *, allow_actions: bool, token: str | None,
                 redact: Callable[[dict[str, Any]], dict[str, Any]] | None):
        secrets = queue._storage.secrets
        self.reader = Queue(queue.path, read_only=True,
                            secret=_Keys(secrets) if secrets else None)
        self.writer = queue if allow_actions else None
        self.token = token
        self.redact = redact
        self._secret = os.urandom(32)

    # -- the WSGI entry --------------------------------------------------------------

    def __call__(self, environ: Mapping[str, Any], start_response: Any) -> list[bytes]:
        request = _web_request(environ)
        session = request.cookies.get("litejobs_session", "")
        fresh = not self._valid_session(session)
        if fresh:  # the forms of this page already carry its session's CSRF token
            request.cookies["litejobs_session"] = session = self._new_session()
        try:
            response = self._respond(request)
        except (JobNotFound, ScheduleNotFound) as exc:
            response = self._error("404 Not Found", str(exc))
        except (ValueError, TypeError) as exc:
            response = self._error("400 Bad Request", str(exc))
        except DatabaseError as exc:
            response = self._error("503 Service Unavailable", str(exc))
        headers = [("Content-Type", response.content_type),
                   ("Content-Security-Policy", _WEB_CSP), ("X-Content-Type-Options", "nosniff"),
                   ("Referrer-Policy", "same-origin"), ("Cache-Control", "no-store"),
                   *response.headers]
        if fresh:
            headers.append(("Set-Cookie", f"litejobs_session={session}; Path=/; "
                                          f"HttpOnly; SameSite=Strict"))
        start_response(response.status, headers)
        return [response.body]

    def _respond(self, request: _WebRequest) -> _WebResponse:
        if request.path == "/static/litejobs.css":
            return _WebResponse("200 OK", "text/css; charset=utf-8", _WEB_CSS.encode())
        if request.path == "/static/litejobs.js":
            return _WebResponse("200 OK", "text/javascript; charset=utf-8", _WEB_JS.encode())
        if request.path == "/login":
            return self._login(request)
        if not self._authorized(request):
            return _WebResponse("303 See Other", "text/plain", b"log in first",
                                (("Location", "/login"),))
        if request.method == "POST":
            return self._act(request)
        if request.method not in ("GET", "HEAD"):
            return self._error("405 Method Not Allowed", "GET or POST")
        api = request.path.startswith("/api/")
        path = request.path[4:] if api else request.path
        data, page = self._read(path, request)
        if api:
            return _WebResponse("200 OK", "application/json",
                                json.dumps(data, default=str, indent=1).encode())
        return _WebResponse("200 OK", "text/html; charset=utf-8", page.encode())

    # -- who may ---------------------------------------------------------------------

    def _sign(self, text: str) -> str:
        return hmac.new(self._secret, text.encode(), hashlib.sha256).hexdigest()

    def _new_session(self) -> str:
        nonce = os.urandom(16).hex()
        return f"{nonce}.{self._sign('session:' + nonce)}"

    def _valid_session(self, session: str) -> bool:
        nonce, _, signature = session.partition(".")
        return bool(nonce) and hmac.compare_digest(signature, self._sign("session:" + nonce))

    def csrf(self, request: _WebRequest) -> str:
        return self._sign("csrf:" + request.cookies.get("litejobs_session", ""))

    def _authorized(self, request: _WebRequest) -> bool:
        if self.token is None:
            return True
        if request.authorization.startswith("Bearer ") and hmac.compare_digest(
                request.authorization[7:].encode(), self.token.encode()):
            return True
        return hmac.compare_digest(request.cookies.get("litejobs_auth", ""),
                                   self._sign("auth:" + self.token))

    def _login(self, request: _WebRequest) -> _WebResponse:
        if request.method == "POST" and self.token is not None and hmac.compare_digest(
                request.form.get("token", [""])[0].encode(), self.token.encode()):
            return _WebResponse("303 See Other", "text/plain", b"welcome", (
                ("Location", "/"), ("Set-Cookie", f"litejobs_auth={self._sign('auth:' + self.token)}"
                                                   f"; Path=/; HttpOnly; SameSite=Strict")))
        failed = "<p class=failed>wrong token</p>" if request.method == "POST" else ""
        body = (f"<h1>litejobs</h1>{failed}<form method=post action=/login>"
                f"<label>token <input type=password name=token autofocus></label> "
                f"<button>log in</button></form>")
        return _WebResponse("200 OK", "text/html; charset=utf-8",
                            _web_page("log in", "", body, refresh=False).encode())

    def _error(self, status: str, message: str) -> _WebResponse:
        return _WebResponse(status, "text/html; charset=utf-8", _web_page(
            status, "", f"<h1>{_e(status)}</h1><p>{_e(message)}</p>", refresh=False).encode())

    # -- reading -----------------------------------------------------------------------

    def _read(self, path: str, request: _WebRequest) -> tuple[Any, str]:
        q = self.reader
        if path in ("/", "/overview"):
            status = _status(q)
            now = q.now()
            ended = q._storage.finished_per_minute(now - 3600)
            return {**status, "last_hour_by_minute": ended}, _web_page(
                "overview", "/", _web_overview(status, ended, q.paused(),
                                               self.csrf(request) if self.writer else None))
        if path == "/jobs":
            filters = _web_filters(request)
            jobs = [_job_json(job._row) for job in q.jobs(limit=_WEB_PAGE_SIZE, **filters)]
            return jobs, _web_page("jobs", "/jobs", _web_jobs(
                jobs, request, self.csrf(request) if self.writer else None))
        if path.startswith("/jobs/"):
            shown = _show(q, _web_id(path[len("/jobs/"):]))
            if self.redact is not None:
                shown = self.redact(shown)
            tree = _web_tree(q, q.get(shown["id"]))
            return {**shown, "tree": tree}, _web_page(f"job {shown['id']}", "/jobs", _web_job(
                shown, tree, self.csrf(request) if self.writer else None))
        if path == "/pools":
            moment = datetime.datetime.now(datetime.timezone.utc)
            pools = [_pool_json(pool, moment) for pool in q.workers()]
            return pools, _web_page("pools", "/pools", _web_pools(pools))
        if path == "/schedules":
            found = {"schedules": [schedule.as_dict() for schedule in q.schedules()],
                     "quotas": _quotas_report(q),
                     "paused": {name: None if until is None else _format_time(until.timestamp())
                                for name, until in q.paused().items()}}
            return found, _web_page("schedules and quotas", "/schedules", _web_schedules(
                found, self.csrf(request) if self.writer else None))
        raise JobNotFound(f"no page {path}")

    # -- acting ------------------------------------------------------------------------

    def _act(self, request: _WebRequest) -> _WebResponse:
        if self.writer is None:
            return self._error("403 Forbidden", "this dashboard is read-only: start it with "
                                                "--allow-actions to act on jobs")
        expected = f"//{request.host}"
        if request.origin is not None and not request.origin.endswith(expected):
            return self._error("403 Forbidden", "the request comes from another site")
        if not hmac.compare_digest(request.form.get("csrf", [""])[0], self.csrf(request)):
            return self._error("403 Forbidden", "the form's CSRF token is missing or wrong: "
                                                "reload the page and try again")
        action = request.form.get("action", [""])[0]
        if action not in _WEB_ACTIONS:
            return self._error("400 Bad Request", f"unknown action {action!r}")
        ids: list[int] = []
        if action in ("retry", "cancel", "purge"):
            ids = _web_targets(self.reader, request)
            matching = request.form.get("scope", [""])[0] == "matching"
            if (matching or (action != "retry" and len(ids) > 1)) and \
                    request.form.get("confirm", [""])[0] != "yes":
                return _WebResponse("200 OK", "text/html; charset=utf-8", _web_page(
                    "confirm", "/jobs", _web_confirm(action, ids, request),
                    refresh=False).encode())
        done = _web_action(self.writer, action, request.form, ids)
        who = "token" if self.token else "no token"
        _log.warning("web: %s from %s (%s): %s", action, request.remote, who, done)
        back = request.form.get("back", ["/"])[0]
        if not back.startswith("/") or back.startswith("//"):
            back = "/"
        return _WebResponse("303 See Other", "text/plain", done.encode(), (("Location", back),))


def _web_id(text: str) -> int:
    if not text.isdigit():
        raise JobNotFound(f"no job {text!r}")
    return int(text)


def _web_filters(request: _WebRequest) -> dict[str, Any]:
    """The jobs list's filters from the query string, for `Queue.jobs`."""
    def one(name: str) -> str | None:
        value = request.query.get(name, [""])[0].strip()
        return value or None
    moments = {}
    for name in ("since", "before"):
        text = one(name)
        try:
            moments[name] = None if text is None else _moment(text)
        except argparse.ArgumentTypeError as exc:
            raise ValueError(str(exc)) from None
    return {"status": one("status"), "queue": one("queue"), "name": one("name"), **moments,
            "below_id": None if one("below") is None else _web_id(str(one("below")))}


def _web_targets(q: Queue, request: _WebRequest) -> list[int]:
    """The jobs a bulk action acts on: those selected, or (scope=matching)
    every job the form's filters match, at most `_WEB_BULK_MOST`."""
    if request.form.get("scope", [""])[0] != "matching":
        return [_web_id(value) for value in request.form.get("id", [])][:_WEB_BULK_MOST]
    filters = _web_filters(request._replace(query=request.form))
    filters.pop("below_id")
    return [job._require_id() for job in q.jobs(limit=_WEB_BULK_MOST, **filters)]


def _web_confirm(action: str, ids: list[int], request: _WebRequest) -> str:
    """The page that asks before a bulk action: the same form, confirmed."""
    fields = "".join(f'<input type=hidden name="{_e(name)}" value="{_e(value)}">'
                     for name, values in request.form.items() if name != "confirm"
                     for value in values)
    shown = ", ".join(map(str, ids[:20])) + (f" and {len(ids) - 20} more" if len(ids) > 20 else "")
    return (f"<h1>{_e(action)} {len(ids)} job{'s' * (len(ids) != 1)}?</h1><p>{shown}</p>"
            f"<form method=post action=/actions>{fields}<input type=hidden name=confirm "
            f"value=yes><button>yes, {_e(action)} them</button></form>"
            f'<p><a href="{_e(request.form.get("back", ["/jobs"])[0])}">no, go back</a></p>')


def _web_action(q: Queue, action: str, form: Mapping[str, list[str]], ids: list[int]) -> str:
    """Do ``action`` from a dashboard form (on ``ids``, for an action on
    jobs); what was done, in words."""
    if action in ("pause-queue", "resume-queue"):
        name = form.get("queue", [""])[0]
        if action == "pause-queue":
            q.pause(name)
            return f"paused queue {name!r}"
        return f"resumed queue {name!r}" if q.resume(name) else f"{name!r} was not paused"
    if action.endswith("-schedule"):
        schedule = q.get_schedule(form.get("schedule", [""])[0])
        if action == "trigger-schedule":
            return f"triggered schedule {schedule.name!r}: job {schedule.trigger().id}"
        (schedule.pause if action == "pause-schedule" else schedule.resume)()
        return f"{action.split('-')[0]}d schedule {schedule.name!r}"
    if not ids:
        raise ValueError("no job to act on: select at least one")
    done = []
    for job_id in ids:
        job = q.get(job_id)
        if action == "retry":
            done.append(f"{job_id}: {job.retry()}")
        elif action == "cancel":
            done.append(f"{job_id}: {'cancelled' if job.cancel() else 'had ended'}")
        else:
            done.append(f"{job_id}: {q._storage.delete_ended(job_id)}")
    return f"{action} " + ", ".join(done)


def _web_page(title: str, here: str, body: str, *, refresh: bool = True) -> str:
    links = "".join(f'<a href="{href}"{" class=here" if href == here else ""}>{name}</a>'
                    for href, name in (("/", "overview"), ("/jobs", "jobs"), ("/pools", "pools"),
                                       ("/schedules", "schedules and quotas")))
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_e(title)} · "
            f"litejobs</title><link rel=stylesheet href=/static/litejobs.css></head><body>"
            f"<nav>{links}</nav><main data-refresh={'yes' if refresh else 'no'}>{body}</main>"
            f"<script src=/static/litejobs.js></script></body></html>")


def _web_status(status: str | None) -> str:
    return f'<span class="{_e(status)}">{_e(status)}</span>'


def _web_overview(status: Mapping[str, Any], ended: list[tuple[int, str, int]],
                  paused: Mapping[str, Any], csrf: str | None) -> str:
    statuses = list(STATUSES)

    def pause(queue: str) -> str:
        if queue in paused:
            return "paused " + _web_button(csrf, "resume-queue", "queue", queue, "resume", "/")
        return _web_button(csrf, "pause-queue", "queue", queue, "pause", "/")

    rows = "".join(
        f"<tr><td>{_e(queue)}</td>" + "".join(
            f'<td><a href="/jobs?queue={_e(urllib.parse.quote(queue))}&amp;status={s}">'
            f"{counts.get(s, 0)}</a></td>" for s in statuses) + f"<td>{pause(queue)}</td></tr>"
        for queue, counts in sorted(status["counts"].items()))
    totals = "".join(f"<td><b>{status['totals'][s]}</b></td>" for s in statuses) + "<td></td>"
    oldest = status["oldest_pending"]
    due = "none" if oldest is None else (
        f'<a href="/jobs/{oldest["id"]}">job {oldest["id"]}</a> ({_e(oldest["name"])}), due '
        f"{_e(_format_duration(max(0.0, oldest['age'])))} ago")
    failed = sum(count for _, s, count in ended if s == FAILED)
    alive = sum(1 for pool in status["workers"] if pool["alive"])
    return (f"<h1>{_e(status['database'])}</h1><table><tr><th>queue</th>"
            + "".join(f"<th>{s}</th>" for s in statuses) + "<th></th>"
            + f"</tr>{rows}<tr><td>all</td>{totals}"
            f"</tr></table><p>oldest due job: {due}</p>"
            f"<p>ended in the last hour: {sum(c for _, _, c in ended)}, of which "
            f"<a href=\"/jobs?status=failed\">{failed} failed</a>; pools alive: {alive} of "
            f"{len(status['workers'])}</p>{_web_chart(ended)}")


def _web_chart(ended: list[tuple[int, str, int]]) -> str:
    """Ends by minute over the last hour, as inline SVG bars (failed in red)."""
    per = [[0, 0] for _ in range(61)]
    for minute, status, count in ended:
        if 0 <= minute <= 60:
            per[minute][status == FAILED] += count
    top = max(1, max(done + failed for done, failed in per))
    bars = []
    for index, (done, failed) in enumerate(per):
        height, red = 100 * (done + failed) / top, 100 * failed / top
        bars.append(f'<rect x="{index * 8}" y="{100 - height:.1f}" width="7" '
                    f'height="{height - red:.1f}" fill="#66bb6a"><title>{done} ended well</title>'
                    f'</rect><rect x="{index * 8}" y="{100 - red:.1f}" width="7" '
                    f'height="{red:.1f}" fill="#e53935"><title>{failed} failed</title></rect>')
    return (f'<figure><svg width="488" height="110" viewBox="0 0 488 110" role="img" '
            f'aria-label="jobs ended per minute, last hour">{"".join(bars)}</svg>'
            f"<figcaption class=note>jobs ended per minute over the last hour (most: {top})"
            f"</figcaption></figure>")


def _web_jobs(jobs: list[dict[str, Any]], request: _WebRequest, csrf: str | None) -> str:
    query = {name: values[0] for name, values in request.query.items()
             if name in ("status", "queue", "name", "since", "before")}
    options = "".join(f'<option{" selected" if query.get("status") == s else ""}>{s}</option>'
                      for s in ("", *STATUSES))
    filters = (f'<form method=get action=/jobs>status <select name=status>{options}</select> '
               f'queue <input name=queue value="{_e(query.get("queue", ""))}" size=10> '
               f'callable <input name=name value="{_e(query.get("name", ""))}" size=20> '
               f'put since <input name=since value="{_e(query.get("since", ""))}" size=10 '
               f'placeholder="1h or ISO"> before <input name=before '
               f'value="{_e(query.get("before", ""))}" size=10 placeholder="1h or ISO"> '
               f"<button>filter</button></form>")
    rows = "".join(
        f"<tr>{'<td><input type=checkbox name=id value=' + str(job['id']) + '></td>' if csrf else ''}"
        f'<td><a href="/jobs/{job["id"]}">{job["id"]}</a></td><td>{_web_status(job["status"])}'
        f"</td><td>{_e(job['name'])}</td><td>{_e(job['queue'])}</td><td>{job['attempts']}</td>"
        f"<td>{_e(job['created_at'])}</td><td>{_e(job['error_type'] or '')}</td></tr>"
        for job in jobs)
    head = ("<tr>" + ("<th></th>" if csrf else "") + "<th>id</th><th>status</th><th>callable"
            "</th><th>queue</th><th>attempt</th><th>put at</th><th>error</th></tr>")
    table = f"<table>{head}{rows}</table>" if jobs else "<p>no job matches</p>"
    more = ""
    if len(jobs) == _WEB_PAGE_SIZE:
        following = urllib.parse.urlencode({**query, "below": jobs[-1]["id"]})
        more = f'<p><a href="/jobs?{_e(following)}" rel=next>older jobs</a></p>'
    if csrf:
        buttons = "".join(f"<button name=action value={a}>{a} selected</button>"
                          for a in ("retry", "cancel", "purge"))
        hidden = (f'<input type=hidden name=csrf value="{csrf}"><input type=hidden name=back '
                  f'value="/jobs?{_e(urllib.parse.urlencode(query))}">')
        table = f"<form method=post action=/actions>{hidden}{table}{buttons}</form>"
        filters_kept = "".join(f'<input type=hidden name="{name}" value="{_e(value)}">'
                               for name, value in query.items())
        table += (f"<form method=post action=/actions>{hidden}{filters_kept}<input type=hidden "
                  f"name=scope value=matching>every job matching the filter: "
                  + "".join(f"<button name=action value={a}>{a} all</button>"
                            for a in ("retry", "cancel", "purge")) + "</form>")
    return f"<h1>jobs</h1>{filters}{table}{more}"


def _web_tree(q: Queue, job: Job) -> dict[str, Any]:
    """The tree around ``job``: from its topmost parent down, each node with
    its id, name, role, status and composite, at most `_WEB_TREE_MOST`."""
    root = job
    while (parent := root.parent()) is not None:
        root = parent
    count = 0

    def node(of: Job) -> dict[str, Any]:
        nonlocal count
        count += 1
        children = of.children() if count < _WEB_TREE_MOST else []
        return {"id": of.id, "name": of.name, "role": of.role, "status": of.status,
                "composite": of.composite,
                "children": [node(child) for child in children if count < _WEB_TREE_MOST]}
    return node(root)


def _web_tree_html(tree: Mapping[str, Any], here: int) -> str:
    label = (f'<a href="/jobs/{tree["id"]}">{"<b>" if tree["id"] == here else ""}job {tree["id"]}'
             f'{"</b>" if tree["id"] == here else ""}</a> {_web_status(tree["status"])} '
             f"{_e(tree['name'])}" + (f" <i>{_e(tree['role'])}</i>" if tree["role"] else "")
             + (f" ({_e(str(tree['composite']).partition('_')[0])})" if tree["composite"] else ""))
    inner = "".join(_web_tree_html(child, here) for child in tree["children"])
    return f"<li>{label}" + (f"<ul class=tree>{inner}</ul>" if inner else "") + "</li>"


def _web_job(shown: Mapping[str, Any], tree: Mapping[str, Any], csrf: str | None) -> str:
    fields = [("status", _web_status(shown["status"])), ("call", f"<code>{_e(shown['call'])}</code>"),
              ("queue", _e(shown["queue"])), ("attempt", f"{shown['attempts']} of "
                                                         f"{shown['max_attempts']}"),
              ("put at", _e(shown["created_at"])), ("due at", _e(shown["begin_after"])),
              ("started at", _e(shown["started_at"])), ("ended at", _e(shown["finished_at"])),
              ("ran by", _e(shown["ran_by"])), ("lease", _e(shown["lease_owner"] and
                                                            f"{shown['lease_owner']} until "
                                                            f"{shown['lease_expires']}")),
              ("result", f"<code>{_e(shown['result'])}</code>" if shown["result"] else ""),
              ("meta", f"<code>{_e(json.dumps(shown['meta']))}</code>" if shown["meta"] else "")]
    if shown["progress"] is not None:
        fields.append(("progress", f'<progress max=1 value="{shown["progress"]}"></progress> '
                                   f"{_e(shown['progress_message'] or '')}"))
    table = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in fields if value)
    history = "".join(
        f"<li>{_e(entry.get('at'))}: {_e(entry.get('event'))} (attempt {_e(entry.get('attempt'))})"
        f" {_e(entry.get('error') or '')}"
        + (f"<details><summary>its traceback</summary><pre>{_e(entry['traceback'])}</pre>"
           f"</details>" if entry.get("traceback") else "") + "</li>"
        for entry in shown["history"])
    error = f"<h2>error</h2><pre>{_e(shown['error'])}</pre>" if shown["error"] else ""
    actions = ""
    if csrf:
        actions = "".join(
            f'<form method=post action=/actions class=inline><input type=hidden name=csrf '
            f'value="{csrf}"><input type=hidden name=id value={shown["id"]}><input type=hidden '
            f'name=back value="/jobs/{shown["id"]}"><button name=action value={a}>{a}</button>'
            f"</form>" for a in ("retry", "cancel"))
    return (f"<h1>job {shown['id']} {_web_status(shown['status'])}</h1>{actions}"
            f"<table>{table}</table>{error}"
            + (f"<h2>history</h2><ul>{history}</ul>" if history else "")
            + f"<h2>tree</h2><ul class=tree>{_web_tree_html(tree, shown['id'])}</ul>")


def _web_pools(pools: list[dict[str, Any]]) -> str:
    if not pools:
        return "<h1>pools</h1><p>no pool has run on this database</p>"
    rows = "".join(
        f"<tr><td>{_e(pool['id'])}</td><td>{_e(pool['state'])}</td><td>{_e(pool['host'])}</td>"
        f"<td>{pool['pid']}</td><td>{pool['processes']}</td>"
        f"<td>{_e(', '.join(pool['queues']) if pool['queues'] else 'all')}</td>"
        f"<td>{_e(_format_duration(max(0.0, pool['heartbeat_age'])))} ago</td>"
        f"<td>{pool['jobs']}</td><td>{_e(pool['stop_reason'] or '')}</td></tr>" for pool in pools)
    return ("<h1>pools</h1><table><tr><th>id</th><th>state</th><th>host</th><th>pid</th>"
            "<th>processes</th><th>queues</th><th>heartbeat</th><th>jobs running</th>"
            f"<th>stopped because</th></tr>{rows}</table>")


def _web_button(csrf: str | None, action: str, field: str, value: str, label: str,
                back: str = "/schedules") -> str:
    if not csrf:
        return ""
    return (f'<form method=post action=/actions class=inline><input type=hidden name=csrf '
            f'value="{csrf}"><input type=hidden name={field} value="{_e(value)}"><input '
            f"type=hidden name=back value={back}><button name=action value={action}>"
            f"{label}</button></form>")


def _web_schedules(found: Mapping[str, Any], csrf: str | None) -> str:
    rows = "".join(
        f"<tr><td>{_e(s['name'])}</td><td><code>{_e(s['cron'])}</code> {_e(s['tz'])}</td>"
        f"<td>{_e(s['job'])}</td><td>{'paused' if s['paused'] else _e(s['next_tick'])}</td>"
        f"<td>{_e(s['last_tick'] or 'never')}"
        + (f' (<a href="/jobs/{s["last_job_id"]}">job {s["last_job_id"]}</a>)'
           if s["last_job_id"] else "") + "</td><td>"
        + _web_button(csrf, "resume-schedule" if s["paused"] else "pause-schedule", "schedule",
                      s["name"], "resume" if s["paused"] else "pause")
        + _web_button(csrf, "trigger-schedule", "schedule", s["name"], "trigger") + "</td></tr>"
        for s in found["schedules"])
    limits = "".join(
        f"<tr><td>{_e(entry['pattern'])}</td>"
        f"<td>{'' if entry['running'] is None else entry['running']}</td><td>"
        + ("" if entry["rate"] is None else f"{entry['rate']} per {entry['per']:g}s")
        + "</td></tr>" for entry in found["quotas"]["limits"])
    use = "".join(
        f"<tr><td>{_e(entry['name'])}</td><td>{_e(_quota_use_text(entry))}</td><td>"
        + " ".join(f'<a href="/jobs/{job_id}">{job_id}</a>' for job_id in entry["jobs"][:20])
        + (" ..." if len(entry["jobs"]) > 20 else "") + "</td></tr>"
        for entry in found["quotas"]["use"])
    paused = "".join(f"<li>{_e(name)}: until {_e(until or 'resumed')} "
                     + _web_button(csrf, "resume-queue", "queue", name, "resume") + "</li>"
                     for name, until in found["paused"].items())
    return ("<h1>schedules</h1>" + (
        "<table><tr><th>name</th><th>cron</th><th>job</th><th>next tick</th><th>last tick</th>"
        f"<th></th></tr>{rows}</table>" if rows else "<p>no schedule</p>")
        + "<h2>quota limits</h2>" + (
            "<table><tr><th>name or pattern</th><th>running at most</th><th>rate</th></tr>"
            f"{limits}</table>" if limits else "<p>no limit set</p>")
        + "<h2>quotas in use</h2>" + (
            f"<table><tr><th>quota</th><th>use</th><th>running jobs</th></tr>{use}</table>"
            if use else "<p>no running job holds a quota</p>")
        + "<h2>paused queues</h2>" + (f"<ul>{paused}</ul>" if paused else "<p>none</p>"))


def _web_server(host: str, port: int, app: Any) -> Any:
    """A WSGI server of the standard library for ``app``, serving requests
    in a few long-lived threads: each keeps its database connection from
    one request to the next, where a thread a request would open one each."""
    import concurrent.futures
    import wsgiref.simple_server

    class Server(wsgiref.simple_server.WSGIServer):
        request_queue_size = 128  # many browsers at once: the default of 5 refuses them

        def server_activate(self) -> None:
            super().server_activate()
            self.workers = concurrent.futures.ThreadPoolExecutor(
                _WEB_THREADS, thread_name_prefix="litejobs-web")

        def process_request(self, request: Any, client_address: Any) -> None:
            self.workers.submit(self._serve, request, client_address)

        def _serve(self, request: Any, client_address: Any) -> None:
            try:
                self.finish_request(request, client_address)
            except Exception:  # noqa: BLE001 - as socketserver does: logged, goes on
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)

        def server_close(self) -> None:
            super().server_close()
            self.workers.shutdown(wait=False, cancel_futures=True)

    class Quiet(wsgiref.simple_server.WSGIRequestHandler):
        def log_message(self, format: str, *values: Any) -> None:
            _log.debug("web: " + format, *values)

    return wsgiref.simple_server.make_server(host, port, app, server_class=Server,
                                             handler_class=Quiet)


def _loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _command_web(args: argparse.Namespace) -> int:
    """serve the web dashboard

    Serve the dashboard of DATABASE on http://HOST:PORT (default 127.0.0.1:8181):
    overview, jobs, a job with its tree, pools, schedules and quotas, and the same
    as JSON under /api/.  Read-only unless --allow-actions.  Another address than
    the loopback is refused unless a token is set (--token-file, or the
    LITEJOBS_WEB_TOKEN environment variable): every request must then carry it.
    """
    token = os.environ.get("LITEJOBS_WEB_TOKEN") or None
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as handle:
            token = handle.read().strip() or None
    if not _loopback(args.host) and token is None:
        raise _UsageError(f"--host {args.host} would serve the dashboard beyond this machine "
                          f"without a token: give --token-file, or set LITEJOBS_WEB_TOKEN")
    queue = Queue(args.database, read_only=not args.allow_actions, create=False)
    app = web_app(queue, allow_actions=args.allow_actions, token=token)
    with _web_server(args.host, args.port, app) as server:
        print(f"litejobs dashboard of {queue.path} on http://{args.host}:{server.server_port}/"
              f"{' (actions allowed)' if args.allow_actions else ' (read-only)'}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0


def _database_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("database", metavar="DATABASE", help="the litejobs database file")


def _ids_argument(parser: argparse.ArgumentParser, nargs: str, help: str) -> None:
    parser.add_argument("ids", type=_positive_count, nargs=nargs, metavar="ID", help=help)


def _id_argument(parser: argparse.ArgumentParser, help: str, nargs: str | None = None) -> None:
    parser.add_argument("id", type=_positive_count, nargs=nargs, metavar="ID", help=help)


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print JSON, with the keys the README documents")


def _subcommand(commands: Any, name: str, handler: Callable[[argparse.Namespace], int], *,
                database: bool = True, json: bool = True) -> argparse.ArgumentParser:
    """A command run by ``handler``, whose docstring is its help: the first
    line in the list of commands, the rest on the command's own page.  With
    ``database``, it takes DATABASE first, and with ``json``, ``--json``;
    its builder adds the rest."""
    summary, _, description = inspect.cleandoc(handler.__doc__ or "").partition("\n\n")
    parser: argparse.ArgumentParser = commands.add_parser(name, help=summary,
                                                          description=description)
    if database:
        _database_argument(parser)
    if json:
        _json_option(parser)
    parser.set_defaults(handler=handler)
    return parser


def _add_demo_command(commands: Any) -> None:
    _subcommand(commands, "demo", _command_demo, database=False, json=False)


def _add_init_command(commands: Any) -> None:
    _subcommand(commands, "init", _command_init)


def _add_worker_command(commands: Any) -> None:
    worker = _subcommand(commands, "worker", _command_worker, json=False)
    worker.add_argument("--processes", "-p", type=_positive_count, default=None,
                        help="worker processes (default: the CPU count, "
                             f"{os.cpu_count()} here)")
    worker.add_argument("--queue", "-q", action="append", metavar="NAME",
                        help="serve this queue; repeat for several (default: all queues)")
    worker.add_argument("--lease", type=_duration_type(_MIN_LEASE), default=DEFAULT_LEASE,
                        metavar="DURATION",
                        help=f"how long a claim holds a job without renewal; a dead "
                             f"pool's jobs run elsewhere after it (default "
                             f"{DEFAULT_LEASE:g}s)")
    worker.add_argument("--poll", type=_duration_type(0, above=True), default=DEFAULT_POLL,
                        metavar="DURATION",
                        help=f"the longest to wait before looking for due jobs; new "
                             f"jobs are seen within milliseconds anyway (default "
                             f"{DEFAULT_POLL:g}s)")
    worker.add_argument("--grace", type=_parse_duration, default=DEFAULT_GRACE,
                        metavar="DURATION",
                        help=f"on SIGTERM, how long running jobs get to finish before "
                             f"they are killed and released (default {DEFAULT_GRACE:g}s)")
    worker.add_argument("--threads", type=_positive_count, default=1, metavar="N",
                        help="synchronous jobs each worker process runs at once, each in "
                             "a thread, for jobs that wait on I/O (default 1)")
    worker.add_argument("--async-concurrency", type=_positive_count,
                        default=_ASYNC_CONCURRENCY, metavar="N",
                        help="async jobs each worker process runs at once on its event "
                             f"loop (default {_ASYNC_CONCURRENCY})")
    worker.add_argument("--max-jobs-per-child", type=_positive_count, default=None,
                        metavar="N",
                        help="replace each worker process after N jobs, to contain "
                             "memory leaks in job code")
    worker.add_argument("--memory-limit", type=_parse_size, default=None, metavar="SIZE",
                        help="address space each worker process may use, such as 2G; a "
                             "job going past it fails with MemoryError (default: none)")
    worker.add_argument("--size-limit", type=_parse_size, default=DEFAULT_SIZE_LIMIT,
                        metavar="SIZE",
                        help="the largest pickled result a job may return (default "
                             f"{DEFAULT_SIZE_LIMIT // 2 ** 20}M)")
    worker.add_argument("--burst", action="store_true",
                        help="run the jobs that are due, then exit 0")
    worker.add_argument("--no-listen", action="store_true",
                        help="on PostgreSQL, poll every 50ms rather than LISTEN for new "
                             "jobs: behind PgBouncer in transaction mode")
    worker.add_argument("--path", action="append", metavar="DIR",
                        help="a directory to import job modules from, ahead of the "
                             "current directory and PYTHONPATH; repeat for several")
    worker.add_argument("--create", action="store_true",
                        help="create DATABASE if it is missing (as init does)")
    worker.add_argument("--start-method", choices=multiprocessing.get_all_start_methods(),
                        default="spawn",
                        help="how worker processes start (default spawn)")
    worker.add_argument("--retention", type=_parse_duration, default=DEFAULT_RETENTION,
                        metavar="DURATION",
                        help="delete finished jobs this long after they end (default "
                             f"{_format_duration(DEFAULT_RETENTION)}); 0 keeps them")
    worker.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error", "critical"],
                        help="log level, on stderr, of litejobs and of the jobs (default "
                             "info)")
    worker.add_argument("--log-format", default="text", choices=["text", "json"],
                        help="text lines, or one JSON object per line (default text)")


def _add_workers_command(commands: Any) -> None:
    _subcommand(commands, "workers", _command_workers)


def _add_status_command(commands: Any) -> None:
    _subcommand(commands, "status", _command_status)


def _add_list_command(commands: Any) -> None:
    listing = _subcommand(commands, "list", _command_list)
    listing.add_argument("--status", "-s", action="append", choices=STATUSES,
                         help="only jobs in this status; repeat for several")
    listing.add_argument("--queue", "-q", help="only jobs of this queue")
    listing.add_argument("--callable", "-c", metavar="GLOB",
                         help="only jobs whose callable matches, such as 'myapp.*:render*'")
    listing.add_argument("--since", type=_moment, metavar="TIME",
                         help="only jobs put at or after TIME")
    listing.add_argument("--before", type=_moment, metavar="TIME",
                         help="only jobs put before TIME")
    listing.add_argument("--limit", "-n", type=_positive_count, default=50,
                         help="at most this many (default 50)")


def _add_show_command(commands: Any) -> None:
    show = _subcommand(commands, "show", _command_show)
    _id_argument(show, "the job's id")


def _add_retry_command(commands: Any) -> None:
    retry = _subcommand(commands, "retry", _command_retry)
    _ids_argument(retry, "*", "the jobs to retry")
    retry.add_argument("--failed", action="store_true",
                       help="retry every failed job (not parts: their composites)")
    retry.add_argument("--queue", "-q", help="with --failed: only this queue's")


def _add_cancel_command(commands: Any) -> None:
    cancel = _subcommand(commands, "cancel", _command_cancel)
    _ids_argument(cancel, "+", "the jobs to cancel")
    cancel.add_argument("--graceful", action="store_true",
                        help="ask running jobs to stop, and give them --grace to do so")
    cancel.add_argument("--grace", type=_parse_duration, default=None, metavar="DURATION",
                        help=f"with --graceful: how long a running job gets to stop "
                             f"(default {DEFAULT_STOP_GRACE:g}s)")


def _add_purge_command(commands: Any) -> None:
    purge = _subcommand(commands, "purge", _command_purge)
    purge.add_argument("--older-than", type=_parse_duration, required=True,
                       metavar="DURATION", help="how long ago they ended, such as 7d")
    purge.add_argument("--status", choices=sorted(_FINISHED),
                       help="only jobs that ended in this status")
    purge.add_argument("--yes", "-y", action="store_true", help="do not ask")


def _add_copy_command(commands: Any) -> None:
    copy = _subcommand(commands, "copy", _command_copy)
    copy.add_argument("destination", metavar="DESTINATION",
                      help="the database to copy to: a path, or a postgresql:// URL")
    copy.add_argument("--move", action="store_true",
                      help="delete the jobs from DATABASE once copied")


def _add_put_command(commands: Any) -> None:
    put = _subcommand(commands, "put", _command_put)
    put.add_argument("function", metavar="FUNCTION", help="package.module:function")
    put.add_argument("arguments", nargs="?", metavar="ARGS_JSON",
                     help='such as \'[7, "a4"]\' or \'{"order": 7}\'')
    put.add_argument("--delay", type=_parse_duration, default=None, metavar="DURATION",
                     help="not before this long from now, such as 10m")
    put.add_argument("--queue", "-q", default=None,
                     help=f"the queue (default: the function's own, see litejobs.job, else "
                          f"{DEFAULT_QUEUE!r})")
    put.add_argument("--priority", type=int, default=None,
                     help="larger runs first (default: the function's own, else 0)")
    put.add_argument("--path", action="append", metavar="DIR",
                     help="a directory to import FUNCTION from, ahead of the current "
                          "directory and PYTHONPATH; repeat for several")
    put.add_argument("--key", help="put nothing if an unfinished job has this key")


def _add_watch_command(commands: Any) -> None:
    watch = _subcommand(commands, "watch", _command_watch)
    _id_argument(watch, "the job to follow (default: the whole database)", nargs="?")
    watch.add_argument("--interval", type=_duration_type(0, above=True, most=3600),
                       default=1.0,
                       metavar="DURATION", help="how often to look (default 1s)")

def _add_web_command(commands: Any) -> None:
    web = _subcommand(commands, "web", _command_web, json=False)
    web.add_argument("--host", default="127.0.0.1", help="the address to listen on "
                     "(default 127.0.0.1; another needs a token)")
    web.add_argument("--port", type=int, default=8181, help="the port (default 8181; 0: any)")
    web.add_argument("--allow-actions", action="store_true",
                     help="show buttons that retry, cancel, purge, pause and trigger")
    web.add_argument("--token-file", metavar="FILE",
                     help="a file holding the token every request must carry")


def _add_quotas_command(commands: Any) -> None:
    _subcommand(commands, "quotas", _command_quotas)


def _add_explain_command(commands: Any) -> None:
    explain = _subcommand(commands, "explain", _command_explain)
    _id_argument(explain, "the job")


def _add_pause_commands(commands: Any) -> None:
    pause = _subcommand(commands, "pause", _command_pause)
    pause.add_argument("queue", metavar="QUEUE", help="the queue to pause")
    pause.add_argument("--until", type=_end, metavar="TIME",
                       help="resume by itself then: a duration from now (30m) or an ISO time")
    resume = _subcommand(commands, "resume", _command_resume)
    resume.add_argument("queue", metavar="QUEUE", help="the queue to resume")


def _add_schedule_commands(commands: Any) -> None:
    _subcommand(commands, "schedules", _command_schedules)
    schedule = _subcommand(commands, "schedule", _command_schedule)
    schedule.add_argument("action", choices=("pause", "resume", "trigger", "remove"),
                          help="what to do with the schedule")
    schedule.add_argument("name", metavar="NAME", help="the schedule's name")


# The subcommands, in the order --help lists them.
_COMMANDS: tuple[Callable[[Any], None], ...] = (
    _add_demo_command,
    _add_init_command,
    _add_worker_command,
    _add_workers_command,
    _add_status_command,
    _add_list_command,
    _add_show_command,
    _add_retry_command,
    _add_cancel_command,
    _add_purge_command,
    _add_copy_command,
    _add_put_command,
    _add_watch_command,
    _add_schedule_commands,
    _add_pause_commands,
    _add_quotas_command,
    _add_explain_command,
    _add_web_command,
)


def _build_parser() -> argparse.ArgumentParser:
    """The command line: one subcommand for each builder in `_COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="litejobs",
        description="Durable background jobs on SQLite or PostgreSQL.",
    )
    parser.add_argument("--version", action="version", version=f"litejobs {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _COMMANDS:
        add(commands)
    return parser


_EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell shows for a tool that SIGPIPE ended


def main(argv: Sequence[str] | None = None) -> int:
    """The ``litejobs`` command line; returns the exit status.

    The current directory is importable, as with ``python -m litejobs``, so
    the installed ``litejobs`` command finds job modules in the same places:
    ``put`` to check a function, a pool's worker processes to run it."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        status = int(args.handler(args))
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return status
    except _UsageError as exc:
        print(f"litejobs {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except LitejobsError as exc:
        print(f"litejobs: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        if args.command == "worker":
            raise  # not stdout: a pool prints nothing there
        # The reader went away (`litejobs list app.db | head -1`): stop quietly,
        # as Unix tools do.  What is still buffered would fail again at exit.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return _EXIT_BROKEN_PIPE


###############################################################################
# pytest plugin (registered through the pytest11 entry point)
###############################################################################


@contextlib.contextmanager
def _test_schema(url: str) -> Iterator[str]:
    """A new schema in the PostgreSQL database at ``url``, for one test: the
    URL of a connection whose search_path is it; dropped afterwards."""
    psycopg = _import_psycopg()
    schema = f"litejobs_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    joiner = "&" if urllib.parse.urlsplit(url).query else "?"
    try:
        yield f"{url}{joiner}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def pytest_configure(config: Any) -> None:
    """Register the litejobs fixtures.  Defined lazily, so that importing
    litejobs outside pytest never imports pytest."""
    try:
        import pytest
    except ImportError:  # called by pytest, so it is there; never a dependency
        return

    class _LitejobsFixtures:
        @pytest.fixture
        def litejobs_queue(self, tmp_path: Any) -> Iterator[Queue]:
            """A fresh `Queue` on a file under ``tmp_path``, closed afterwards.
            With ``LITEJOBS_TEST_POSTGRES`` set to a PostgreSQL URL, a fresh
            queue there instead: in a schema of its own, dropped afterwards.

            Run its jobs deterministically with ``litejobs_queue.run_pending()``,
            passing ``now=`` to run delayed ones without sleeping.
            """
            url = os.environ.get(_TEST_POSTGRES_ENV)
            if not url:
                queue = Queue(tmp_path / "litejobs.db")
                try:
                    yield queue
                finally:
                    queue.close()
                return
            with _test_schema(url) as schema_url:
                queue = Queue(schema_url)
                try:
                    yield queue
                finally:
                    queue.close()

        @pytest.fixture
        def litejobs_worker(self, litejobs_queue: Queue) -> Iterator[Worker]:
            """A running `Worker` pool of 2 processes on ``litejobs_queue``,
            stopped after the test.

            Jobs run in real worker processes, so they must be module-level
            functions the workers can import.  The test fails if a worker
            process died unexpectedly (a job that kills its own process, for
            instance); timeouts and cancels are expected and do not count.
            """
            worker = Worker(litejobs_queue, processes=2, grace=2.0).start()
            try:
                yield worker
            finally:
                worker.stop()
            if worker.crashes:
                pytest.fail("litejobs worker processes died unexpectedly:\n  "
                            + "\n  ".join(worker.crashes), pytrace=False)

    if not config.pluginmanager.has_plugin("litejobs-fixtures"):
        config.pluginmanager.register(_LitejobsFixtures(), "litejobs-fixtures")


if _RUN_AS_SCRIPT:
    sys.exit(main())
