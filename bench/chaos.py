"""A kill -9 chaos soak: jobs run in two pools on one file while their
processes are killed and paused at random, then the history is checked.

    python bench/chaos.py                        # 20,000 jobs, the default seed
    python bench/chaos.py --jobs 2000 --seed 7   # smaller, another sequence
    python bench/chaos.py --postgres             # on PostgreSQL, pools on two "hosts"
    python bench/chaos.py --kind async           # async jobs, on the processes' event loops
    python bench/chaos.py --kind threads         # synchronous jobs in 4 threads a process

Two pools of two worker processes each (``python -m litejobs worker``, leases
of 2 s) serve one database.  Every run of a job appends ``(job_id, attempt,
pid, time)`` to an audit table in a separate SQLite file (``chaos_jobs.py``).
While the jobs run, every 50-500 ms (random, from the seed) the chaos loop:

- kills a random worker process of a pool with SIGKILL;
- kills a whole pool: SIGKILL to its supervisor alone, then checks that its
  worker processes exit on their own within a few seconds, and starts the
  pool again;
- stops a random worker process with SIGSTOP for longer than the lease, then
  resumes it with SIGCONT.

Once every job has ended (or the chaos time is up, and the pools are left to
finish without it), the pools are stopped with SIGTERM and the checks run:
every job completed; no audit row for a job that was never put; for every
job, its history holds exactly one non-completing entry for each attempt
before the last, so that the last attempt is its one accepted completion;
``PRAGMA integrity_check`` is ``ok``; nothing is left active, pending or
waiting.  The table prints these and the figures of the run.

`soak` runs it all and returns a `Figures`; ``tests/test_chaos.py`` calls it
with 2,000 jobs.  The seed fixes the choices (which action, which pool, which
process, how long to wait); what the processes are doing when a signal lands
still depends on timing, so the run's actions are also logged with their
times (``events.log`` in the run's folder, with the pool logs and the
table in ``report.txt``, kept with ``--keep`` or when a check fails).
"""

from __future__ import annotations

import argparse
import bisect
import collections
import contextlib
import dataclasses
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
if ROOT not in sys.path:  # this checkout's litejobs, as bench/run.py does
    sys.path.insert(0, ROOT)
if BENCH_DIR not in sys.path:  # chaos_jobs, when imported from the tests
    sys.path.append(BENCH_DIR)

import chaos_jobs  # noqa: E402
import litejobs  # noqa: E402

DEFAULT_SEED = 20261128
POOLS = 2
PROCESSES = 2  # worker processes per pool
THREADS = 4  # threads a worker process, with --kind threads
ACTIONS = ("kill child", "kill pool", "pause child")
WEIGHTS = (5, 2, 3)
# On PostgreSQL, with each pool on a host of its own: also stop a whole pool
# past its lease (the other pool must take it for dead by its heartbeat's
# age alone), and cut the pools' connections with pg_terminate_backend.
POSTGRES_ACTIONS = ACTIONS + ("pause pool", "cut connections")
POSTGRES_WEIGHTS = WEIGHTS + (1, 1)
INTERVAL = (0.05, 0.5)  # seconds between two chaos actions, drawn uniformly
PAUSE_PAST_LEASE = 0.5  # a pause lasts the lease and this many seconds more
ORPHAN_BOUND = 5.0  # seconds the children of a killed supervisor get to exit
STOP_BOUND = 30.0  # seconds a pool gets to exit after SIGTERM
REAP_BOUND = 10.0  # seconds to reap a supervisor killed with SIGKILL
TICK = 0.02  # seconds between two looks at the processes and the database
# Interruptions are the point here: a job may be caught in many kills, and the
# default limit (3) would fail it with Interrupted, by design.
MAX_INTERRUPTIONS = 100_000


# -- processes ---------------------------------------------------------------------------


def process_state(pid: int) -> str | None:
    """The state letter of process ``pid`` (R, S, T, Z, ...), or None if there is none."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def process_ended(pid: int) -> bool:
    """No process has ``pid``, or it is a zombie nobody has reaped yet."""
    return process_state(pid) in (None, "Z", "X")


def worker_children(pid: int, field: int = 1) -> list[int]:
    """The worker processes of the supervisor ``pid``: its children started by
    multiprocessing's spawn (not its resource tracker), alive, sorted.  With
    ``field=2``, those in its process group instead: they are still there
    once the supervisor is dead and they have another parent."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            if int(fields[field]) != pid or fields[0] in ("Z", "X"):
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                if b"spawn_main" not in handle.read():
                    continue
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        found.append(int(entry))
    return sorted(found)


class Pool:
    """One pool slot: ``python -m litejobs worker`` started again after each kill.
    Every process started is kept, to be killed at the end whatever happened."""

    def __init__(self, name: str, db: str, folder: str, lease: float, host: str | None = None,
                 options: tuple[str, ...] = ()):
        self.name = name
        self.options = options
        self.db = db
        self.folder = folder
        self.lease = lease
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [BENCH_DIR, ROOT] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH")
                                 else [])))
        if host is not None:  # as if on a host of its own: pids elsewhere are not checked
            self.env["LITEJOBS_HOST"] = host
        self.started: list[subprocess.Popen[bytes]] = []
        self.logs: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log_path = os.path.join(self.folder, f"pool-{self.name}-{len(self.started) + 1}.log")
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "litejobs", "worker", self.db, "-p", str(PROCESSES),
                 "--lease", f"{self.lease:g}s", "--grace", "5s", "--log-level", "warning",
                 *self.options],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env,
                cwd=self.folder, start_new_session=True)
        self.started.append(self.proc)
        self.logs.append(log_path)

    @property
    def label(self) -> str:
        return f"pool {self.name}#{len(self.started)} (pid {self.pid})"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def children(self) -> list[int]:
        return worker_children(self.pid) if self.alive() else []

    def log_tail(self, lines: int = 15) -> str:
        with open(self.logs[-1], errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])

    def kill_all(self) -> list[int]:
        """SIGKILL every process group this slot started (each pool has a
        session of its own: its supervisor, children and resource tracker),
        resuming stopped ones first; reap the supervisors.  Returns the pids
        of supervisors that still would not exit."""
        stuck = []
        for proc in self.started:
            for signum in (signal.SIGCONT, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signum)
            try:
                proc.wait(timeout=REAP_BOUND)
            except subprocess.TimeoutExpired:
                stuck.append(proc.pid)
        return stuck


# -- figures -----------------------------------------------------------------------------


@dataclasses.dataclass
class Figures:
    """What a soak did and found; `problems` lists the checks that failed."""

    seed: int
    jobs: int
    lease: float
    work_ms: float
    completed: int = 0
    statuses: dict[str, int] = dataclasses.field(default_factory=dict)
    missing: int = 0  # put, but no row in the database any more
    unexpected: int = 0  # audit rows of job ids never put
    bad_completions: list[str] = dataclasses.field(default_factory=list)
    integrity: str = ""
    child_kills: int = 0
    pool_kills: int = 0
    pauses: int = 0
    skipped: int = 0  # actions that found no process to act on
    runs_mean: float = 0.0
    runs_max: int = 0
    jobs_run_again: int = 0  # jobs with more than one run on record
    extra_runs: int = 0  # runs beyond the first, over all jobs
    jobs_never_run: int = 0  # completed jobs without an audit row: impossible
    # (job, attempt) pairs with two runs or more on record.  Not a failed check:
    # at-least-once allows the second run, but each run should count an attempt.
    same_attempt_reruns: int = 0
    same_attempt_examples: list[str] = dataclasses.field(default_factory=list)
    interruptions: int = 0
    reclaim_child: list[float] = dataclasses.field(default_factory=list)
    reclaim_pool: list[float] = dataclasses.field(default_factory=list)
    orphan_exit: list[float] = dataclasses.field(default_factory=list)
    orphans_outliving: list[str] = dataclasses.field(default_factory=list)
    pool_exits: list[str] = dataclasses.field(default_factory=list)  # not killed by us
    stop_problems: list[str] = dataclasses.field(default_factory=list)
    drain_timed_out: str = ""
    peak_wal: int = 0
    backend: str = "SQLite"
    kind: str = "plain"
    pool_pauses: int = 0  # a whole pool stopped past its lease (PostgreSQL)
    cuts: int = 0  # pg_terminate_backend rounds (PostgreSQL)
    restarts: int = 0  # server restarts (PostgreSQL)
    wall: float = 0.0
    chaos_seconds: float = 0.0
    drain_seconds: float = 0.0
    events: list[str] = dataclasses.field(default_factory=list)
    folder: str = ""

    @property
    def lost(self) -> int:
        return self.jobs - self.completed

    @property
    def duplicate_rate(self) -> float:
        return self.jobs_run_again / self.jobs if self.jobs else 0.0

    @property
    def problems(self) -> list[str]:
        found = []
        if self.lost:
            found.append(f"lost: {self.lost} of {self.jobs} jobs did not complete "
                         f"(statuses {self.statuses}, missing {self.missing})")
        if self.unexpected:
            found.append(f"unexpected: {self.unexpected} audit rows of job ids never put")
        if self.bad_completions:
            found.append(f"{len(self.bad_completions)} jobs without exactly one accepted "
                         f"completion, e.g. {self.bad_completions[:3]}")
        if self.integrity not in ("ok", "not applicable"):
            found.append(f"integrity_check: {self.integrity}")
        for status in (litejobs.ACTIVE, litejobs.PENDING, litejobs.WAITING):
            if self.statuses.get(status):
                found.append(f"{self.statuses[status]} jobs left {status}")
        if self.same_attempt_reruns:
            found.append(f"{self.same_attempt_reruns} attempts ran more than once, e.g. "
                         f"{self.same_attempt_examples[:3]}")
        if self.jobs_never_run:
            found.append(f"{self.jobs_never_run} completed jobs whose completing attempt "
                         "has no run on record")
        found += [f"children outlived their supervisor: {text}"
                  for text in self.orphans_outliving]
        found += [f"a pool exited without being killed: {text}" for text in self.pool_exits]
        found += self.stop_problems
        if self.drain_timed_out:
            found.append(self.drain_timed_out)
        return found


def _latency(values: list[float]) -> str:
    if not values:
        return "none measured"
    return (f"p50 {statistics.median(values):.2f} s, max {max(values):.2f} s "
            f"(n={len(values)})")


def format_table(f: Figures) -> str:
    """The figures as a Markdown table, with a heading line."""
    rows = [
        ("jobs", f"{f.jobs:,} (completed {f.completed:,})"),
        ("lost (not completed)", f"{f.lost:,}"),
        ("unexpected (audit rows of ids never put)", f"{f.unexpected:,}"),
        ("jobs without exactly one accepted completion", f"{len(f.bad_completions):,}"),
        ("integrity_check", f.integrity),
        ("left active / pending / waiting",
         " / ".join(str(f.statuses.get(s, 0))
                    for s in (litejobs.ACTIVE, litejobs.PENDING, litejobs.WAITING))),
        ("kills: child / pool", f"{f.child_kills} / {f.pool_kills}"),
        ("pauses (SIGSTOP past the lease, then SIGCONT)", f"{f.pauses}"
         + (f" of worker processes, {f.pool_pauses} of whole pools" if f.backend != "SQLite"
            else "")),
        *([("connections cut (pg_terminate_backend) / server restarts",
            f"{f.cuts} / {f.restarts}")] if f.backend != "SQLite" else []),
        ("actions that found no process", f"{f.skipped}"),
        ("runs per job: mean / max", f"{f.runs_mean:.3f} / {f.runs_max}"),
        ("duplicate-execution rate (jobs run more than once)",
         f"{f.duplicate_rate:.2%} ({f.jobs_run_again:,} jobs, {f.extra_runs:,} extra runs)"),
        ("same (job, attempt) run twice", f"{f.same_attempt_reruns}"
         + (f" (e.g. {f.same_attempt_examples[0]})" if f.same_attempt_examples else "")),
        ("interruptions recorded", f"{f.interruptions:,}"),
        ("kill to re-claim, child killed", _latency(f.reclaim_child)),
        ("kill to re-claim, pool killed", _latency(f.reclaim_pool)),
        ("orphaned children: exit after their supervisor's kill",
         (f"max {max(f.orphan_exit):.2f} s (n={len(f.orphan_exit)})" if f.orphan_exit
          else "none") + f"; outliving {ORPHAN_BOUND:g} s: {len(f.orphans_outliving)}"),
        ("pools that exited without being killed", f"{len(f.pool_exits)}"),
        *([("peak WAL size", f"{f.peak_wal / 2 ** 20:.2f} MiB")] if f.backend == "SQLite"
          else []),
        ("wall time", f"{f.wall:.1f} s (chaos {f.chaos_seconds:.1f} s, "
                      f"drain {f.drain_seconds:.1f} s)"),
    ]
    width = max(len(name) for name, _ in rows)
    value_width = max(len(value) for _, value in rows)
    lines = [f"litejobs {litejobs.__version__} chaos soak on {f.backend}: seed {f.seed}, "
             f"{f.jobs:,} jobs, {POOLS} pools x {PROCESSES} processes"
             f"{' on hosts of their own' if f.backend != 'SQLite' else ''}, lease {f.lease:g} s, "
             f"work {f.work_ms:g} ms a job on average"
             + {"plain": "", "async": ", async jobs",
                "threads": f", {THREADS} threads a process"}[f.kind],
             f"| {'measure'.ljust(width)} | {'value'.ljust(value_width)} |",
             f"| {'-' * width} | {'-' * value_width} |"]
    lines += [f"| {name.ljust(width)} | {value.ljust(value_width)} |" for name, value in rows]
    problems = f.problems
    lines.append("checks: all passed" if not problems
                 else "checks FAILED:\n" + "\n".join(f"  - {p}" for p in problems))
    return "\n".join(lines)


# -- the soak ----------------------------------------------------------------------------


def soak(folder: str, jobs: int = 20_000, seed: int = DEFAULT_SEED, lease: float = 2.0,
         work_ms: float = 10.0, chaos_seconds: float = 600.0, drain_seconds: float = 60.0,
         progress: Callable[[str], None] | None = None, server: Any = None,
         kind: str = "plain") -> Figures:
    """Run the soak in ``folder`` (its databases and pool logs stay there) and
    return the figures.  Chaos lasts until every job has ended, or
    ``chaos_seconds``; the pools then get ``drain_seconds`` to finish what is
    left.  Each job works ``work_ms`` on average (0 to twice that, from the
    seed).  Every process started is killed before this returns or raises.

    With ``server`` (a tests/postgres_server.Server), the jobs are in a new
    database of it, reached over TCP; each pool runs as if on a host of its
    own; the chaos also stops whole pools past their lease and cuts the
    pools' connections; and the server restarts once, a third of the way
    into the chaos.

    ``kind``: "plain" jobs, "async" jobs (an ``async def``, on the worker
    processes' event loops), or plain jobs on pools of `THREADS` threads a
    process ("threads")."""
    rng = random.Random(seed)
    figures = Figures(seed=seed, jobs=jobs, lease=lease, work_ms=work_ms, folder=folder,
                      kind=kind)
    db = os.path.join(folder, "jobs.db") if server is None else server.new_database()
    audit_path = os.path.join(folder, "audit.db")
    wal = db + "-wal"
    say = progress or (lambda text: None)
    actions, weights = (ACTIONS, WEIGHTS) if server is None else (POSTGRES_ACTIONS,
                                                                  POSTGRES_WEIGHTS)
    if server is not None:
        figures.backend = "PostgreSQL"
        figures.integrity = "not applicable"
    database = db.rsplit("/", 1)[-1]

    with contextlib.closing(chaos_jobs.open_audit(audit_path)) as audit:
        audit.execute(chaos_jobs.AUDIT_SCHEMA)
    q = litejobs.Queue(db, durable=False)
    pools = [Pool(name, db, folder, lease, None if server is None else f"chaos-host-{name}",
                  ("--threads", str(THREADS)) if kind == "threads" else ())
             for name in "AB"[:POOLS]]
    started = time.monotonic()
    restart_at = None if server is None else started + chaos_seconds / 3

    def event(text: str) -> None:
        figures.events.append(f"{time.monotonic() - started:9.3f}s  {text}")

    def sample_wal() -> None:
        if server is None:
            with contextlib.suppress(FileNotFoundError):
                figures.peak_wal = max(figures.peak_wal, os.path.getsize(wal))

    paused: dict[int, float] = {}  # pid -> when to resume it (monotonic)
    watched: list[tuple[float, float, str, list[int]]] = []  # orphans: (killed, deadline, ...)
    child_kills: list[tuple[float, int]] = []  # (time.time() of the kill, pid)
    pool_kills: list[tuple[float, list[int]]] = []

    def resume(pid: int) -> None:
        paused.pop(pid, None)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)

    def check_orphans(now: float) -> None:
        for item in list(watched):
            killed, deadline, label, pids = item
            left = [pid for pid in pids if not process_ended(pid)]
            if not left:
                figures.orphan_exit.append(now - killed)
                watched.remove(item)
            elif now >= deadline:
                states = {pid: process_state(pid) for pid in left}
                text = (f"{label} was killed; its children {left} were still running "
                        f"{now - killed:.1f} s later (states {states})")
                figures.orphans_outliving.append(text)
                event(f"PROBLEM: {text}")
                for pid in left:  # so that they do not run jobs twice from here on
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                watched.remove(item)

    def check_pools() -> None:
        for pool in pools:
            if not pool.alive():
                assert pool.proc is not None
                text = (f"{pool.label} exited with status {pool.proc.returncode}; "
                        f"its log ends:\n{pool.log_tail()}")
                figures.pool_exits.append(text)
                event(f"PROBLEM: {text}")
                pool.start()
                event(f"restarted as {pool.label}")

    def housekeeping() -> None:
        now = time.monotonic()
        sample_wal()
        for pid, when in list(paused.items()):
            if now >= when:
                resume(pid)
                event(f"SIGCONT {pid}")
        check_orphans(now)
        check_pools()

    def kill_pool(pool: Pool) -> None:
        label, children = pool.label, pool.children()
        assert pool.proc is not None
        killed_at = time.time()
        os.kill(pool.pid, signal.SIGKILL)
        killed = time.monotonic()
        try:
            pool.proc.wait(timeout=REAP_BOUND)
        except subprocess.TimeoutExpired:
            figures.stop_problems.append(f"{label} still running {REAP_BOUND:g} s after "
                                         "SIGKILL")
        # With any child started between the listing and the kill.
        children = sorted(set(children) | set(worker_children(pool.pid, field=2)))
        for pid in children:  # a stopped child cannot notice its parent is gone
            if pid in paused:
                resume(pid)
        figures.pool_kills += 1
        pool_kills.append((killed_at, children))
        watched.append((killed, killed + ORPHAN_BOUND, label, children))
        event(f"SIGKILL {label}, children {children}")
        pool.start()
        event(f"restarted as {pool.label}")

    def act() -> None:
        action = rng.choices(actions, weights)[0]
        pool = rng.choice(pools)
        if action == "kill pool":
            kill_pool(pool)
            return
        if action == "pause pool":
            if pool.pid in paused:
                figures.skipped += 1
                return
            os.kill(pool.pid, signal.SIGSTOP)
            paused[pool.pid] = time.monotonic() + lease * 3 + PAUSE_PAST_LEASE
            figures.pool_pauses += 1
            event(f"SIGSTOP {pool.label}, the whole pool")
            return
        if action == "cut connections":
            cut = server.sql(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                f"WHERE datname = '{database}' AND application_name = 'litejobs' "
                "AND pid != pg_backend_pid()")[0][0]
            figures.cuts += 1
            event(f"pg_terminate_backend: {cut} connections cut")
            return
        children = [pid for pid in pool.children()
                    if action == "kill child" or pid not in paused]
        if not children:
            figures.skipped += 1
            event(f"{action}: {pool.label} has no worker process to act on")
            return
        pid = rng.choice(children)
        if action == "kill child":
            child_kills.append((time.time(), pid))
            os.kill(pid, signal.SIGKILL)
            paused.pop(pid, None)
            figures.child_kills += 1
            event(f"SIGKILL child {pid} of {pool.label}")
        else:
            os.kill(pid, signal.SIGSTOP)
            paused[pid] = time.monotonic() + lease + PAUSE_PAST_LEASE
            figures.pauses += 1
            event(f"SIGSTOP child {pid} of {pool.label}")

    def unfinished() -> int:
        for _ in range(50):  # its own connection may have been cut, or the server be restarting
            try:
                counts = q.counts()
                break
            except litejobs.DatabaseUnreachable:
                time.sleep(0.1)
        else:
            counts = q.counts()
        return sum(counts[s] for s in (litejobs.PENDING, litejobs.WAITING, litejobs.ACTIVE))

    try:
        works = [round(rng.uniform(0, 2 * work_ms) / 1000, 4) for _ in range(jobs)]
        audited = chaos_jobs.audited_async if kind == "async" else chaos_jobs.audited
        put = q.put_many([litejobs.Job(audited, audit_path, work)
                          for work in works], max_interruptions=MAX_INTERRUPTIONS)
        ids = {int(job.id or 0) for job in put}
        event(f"put {jobs} jobs, ids {min(ids)}-{max(ids)}; seed {seed}")
        for pool in pools:
            pool.start()
            event(f"started {pool.label}")

        # -- chaos ------------------------------------------------------------------------
        chaos_end = time.monotonic() + chaos_seconds
        next_action = time.monotonic() + rng.uniform(*INTERVAL)
        next_count = next_report = 0.0
        while True:
            housekeeping()
            now = time.monotonic()
            if now >= next_count:
                left = unfinished()
                next_count = now + 0.2
                if now >= next_report:
                    say(f"{now - started:6.1f}s  {jobs - left:,} of {jobs:,} jobs ended; "
                        f"kills {figures.child_kills}/{figures.pool_kills}, "
                        f"pauses {figures.pauses}")
                    next_report = now + 5
                if left == 0:
                    event("every job has ended: chaos stops")
                    break
            if now >= chaos_end:
                event(f"chaos stops after {chaos_seconds:g} s, {left} jobs still to end")
                break
            if restart_at is not None and now >= restart_at:
                event("restarting the server")
                server.restart()
                figures.restarts += 1
                restart_at = None
                event("the server is back")
            if now >= next_action:
                act()
                next_action = time.monotonic() + rng.uniform(*INTERVAL)
            time.sleep(max(0.0, min(TICK, next_action - time.monotonic())))
        figures.chaos_seconds = time.monotonic() - started

        # -- drain: no more chaos; the pools finish what is left ----------------------------
        for pid in list(paused):
            resume(pid)
            event(f"SIGCONT {pid} (chaos over)")
        drain_end = time.monotonic() + drain_seconds
        while True:
            housekeeping()
            left = unfinished()
            if left == 0:
                break
            if time.monotonic() >= drain_end:
                figures.drain_timed_out = (f"the pools did not finish the jobs within "
                                           f"{drain_seconds:g} s after the chaos: "
                                           f"{q.counts()}")
                event(f"PROBLEM: {figures.drain_timed_out}")
                break
            time.sleep(TICK)
        while watched:  # each has a deadline
            check_orphans(time.monotonic())
            time.sleep(TICK)
        figures.drain_seconds = time.monotonic() - started - figures.chaos_seconds
        event("drained")

        # -- stop the pools gracefully: each must exit 0, its children with it ----------------
        # A pool restarted moments ago may not have its signal handlers yet, and
        # SIGTERM would kill it outright: it has them once it is registered.
        for pool in pools:
            deadline = time.monotonic() + STOP_BOUND
            while not any(row["pid"] == pool.pid and row["alive"] for row in q.workers()):
                if time.monotonic() >= deadline or not pool.alive():
                    figures.stop_problems.append(
                        f"{pool.label} did not register within {STOP_BOUND:g} s; its log "
                        f"ends:\n{pool.log_tail()}")
                    break
                time.sleep(TICK)
        children = {pool.label: pool.children() for pool in pools}
        for pool in pools:
            pool.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        for pool in pools:
            assert pool.proc is not None
            try:
                status = pool.proc.wait(timeout=STOP_BOUND)
            except subprocess.TimeoutExpired:
                figures.stop_problems.append(
                    f"{pool.label} still running {STOP_BOUND:g} s after SIGTERM; its log "
                    f"ends:\n{pool.log_tail()}")
                continue
            if status != 0:
                figures.stop_problems.append(
                    f"{pool.label} exited with status {status} after SIGTERM; its log "
                    f"ends:\n{pool.log_tail()}")
            deadline = time.monotonic() + ORPHAN_BOUND
            while any(not process_ended(pid) for pid in children[pool.label]) \
                    and time.monotonic() < deadline:
                time.sleep(TICK)
            left_over = [pid for pid in children[pool.label] if not process_ended(pid)]
            if left_over:
                figures.stop_problems.append(f"{pool.label} exited but its children "
                                             f"{left_over} still run")
        event("pools stopped"
              + "".join(f"; PROBLEM: {text}" for text in figures.stop_problems))
        figures.wall = time.monotonic() - started
        sample_wal()

        _check(figures, q, db, audit_path, ids, child_kills, pool_kills)
    finally:
        stuck = [pid for pool in pools for pid in pool.kill_all()]
        q.close()
        with open(os.path.join(folder, "events.log"), "w") as handle:
            handle.write("\n".join(figures.events) + "\n")
    if stuck:
        figures.stop_problems.append(f"supervisors {stuck} survived SIGKILL of their group")
    return figures


def _check(figures: Figures, q: litejobs.Queue, db: str, audit_path: str, ids: set[int],
           child_kills: list[tuple[float, int]],
           pool_kills: list[tuple[float, list[int]]]) -> None:
    """Read back the job table and the audit table, with every pool stopped."""
    found = q.jobs(limit=None)  # None: every job
    by_id = {int(job.id or 0): job for job in found if job.id in ids}
    figures.missing = len(ids - set(by_id))
    figures.statuses = dict(collections.Counter(str(job.status) for job in by_id.values()))
    figures.completed = figures.statuses.get(litejobs.COMPLETED, 0)
    figures.interruptions = sum(job.interruptions for job in by_id.values())

    with contextlib.closing(sqlite3.connect(f"file:{audit_path}?mode=ro", uri=True)) as conn:
        audit = conn.execute("SELECT job_id, attempt, pid, at FROM audit ORDER BY at").fetchall()
    if figures.backend == "SQLite":
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            figures.integrity = "; ".join(row[0] for row in conn.execute("PRAGMA integrity_check"))

    figures.unexpected = sum(1 for job_id, *_ in audit if job_id not in ids)
    runs = collections.Counter(job_id for job_id, *_ in audit if job_id in ids)
    runs_of_attempt = collections.Counter((job_id, attempt) for job_id, attempt, *_ in audit)
    figures.runs_mean = sum(runs.values()) / len(ids) if ids else 0.0
    figures.runs_max = max(runs.values(), default=0)
    figures.jobs_run_again = sum(1 for count in runs.values() if count > 1)
    figures.extra_runs = sum(count - 1 for count in runs.values())
    figures.same_attempt_reruns = sum(1 for count in runs_of_attempt.values() if count > 1)
    pids_of_attempt: dict[tuple[int, int], list[int]] = collections.defaultdict(list)
    for job_id, attempt, pid, _ in audit:
        pids_of_attempt[job_id, attempt].append(pid)
    figures.same_attempt_examples = [
        f"job {job_id} attempt {attempt} ran in pids {', '.join(map(str, pids))}"
        for (job_id, attempt), pids in pids_of_attempt.items() if len(pids) > 1]

    # One accepted completion: the job is completed, and every attempt before
    # its last ended without ending it (interrupted, retried, its outcome
    # lost, handed back by a stopping pool, or taken back from a dead pool
    # before it recorded the run's start), each exactly once, in its history;
    # the last attempt, the completion, has no entry and ran.
    for job in by_id.values():
        if job.status != litejobs.COMPLETED:
            continue
        history = job.history
        attempts = sorted(entry["attempt"] for entry in history)
        events = collections.Counter(entry["event"] for entry in history)
        wrong = []
        if attempts != list(range(1, job.attempts)):
            wrong.append(f"history attempts {attempts}")
        if set(events) - {"interrupted", "retried", "outcome lost", "handed back",
                          "not started"}:
            wrong.append(f"history events {dict(events)}")
        if events["interrupted"] != job.interruptions:
            wrong.append(f"{events['interrupted']} interrupted entries for "
                         f"{job.interruptions} interruptions")
        if job.finished_at is None:
            wrong.append("no finished_at")
        if wrong:
            figures.bad_completions.append(f"job {job.id} attempt {job.attempts}: "
                                           + ", ".join(wrong))
        if (job.id, job.attempts) not in runs_of_attempt:
            figures.jobs_never_run += 1

    # Kill to re-claim: the run a killed process had started last, and the
    # first run of the same job that started after the kill.
    by_pid: dict[int, list[tuple[float, int, int]]] = collections.defaultdict(list)
    by_job: dict[int, list[float]] = collections.defaultdict(list)
    for job_id, attempt, pid, at in audit:
        by_pid[pid].append((at, job_id, attempt))
        by_job[job_id].append(at)

    def reclaim(killed_at: float, pid: int) -> float | None:
        runs_of_pid = by_pid.get(pid, [])
        before = bisect.bisect_right(runs_of_pid, (killed_at, float("inf"), 0))
        if before == 0:
            return None
        job_id = runs_of_pid[before - 1][1]
        later = [at for at in by_job[job_id] if at > killed_at]
        return min(later) - killed_at if later else None

    for killed_at, pid in child_kills:
        seconds = reclaim(killed_at, pid)
        if seconds is not None:
            figures.reclaim_child.append(seconds)
    for killed_at, pids in pool_kills:
        for pid in pids:
            seconds = reclaim(killed_at, pid)
            if seconds is not None:
                figures.reclaim_pool.append(seconds)


# -- the command line --------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs to run (default 20000)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"the random seed (default {DEFAULT_SEED})")
    parser.add_argument("--lease", type=float, default=2.0,
                        help="the pools' lease, in seconds (default 2)")
    parser.add_argument("--work-ms", type=float, default=10.0,
                        help="milliseconds each job works, on average (default 10)")
    parser.add_argument("--chaos-seconds", type=float, default=600.0,
                        help="stop the chaos after this long even if jobs remain (default 600)")
    parser.add_argument("--drain-seconds", type=float, default=60.0,
                        help="how long the pools get to finish after the chaos (default 60)")
    parser.add_argument("--dir", help="where to make the run's folder (default: the "
                                      "system's temporary folder)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the run's folder (databases, pool logs, events.log)")
    parser.add_argument("--kind", choices=("plain", "async", "threads"), default="plain",
                        help="plain jobs (the default), async jobs, or plain jobs on pools of "
                             f"{THREADS} threads a process")
    parser.add_argument("--postgres", action="store_true",
                        help="on a throwaway PostgreSQL server of the machine's binaries, "
                             "with the pools as if on two hosts (see soak)")
    options = parser.parse_args(argv)
    if options.jobs < 1:
        parser.error("--jobs must be at least 1")

    print(f"seed {options.seed}", flush=True)
    folder = tempfile.mkdtemp(prefix="litejobs-chaos-", dir=options.dir)
    server = None
    if options.postgres:
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        import postgres_server
        server = postgres_server.Server().start()
    try:
        figures = soak(folder, jobs=options.jobs, seed=options.seed, lease=options.lease,
                       work_ms=options.work_ms, chaos_seconds=options.chaos_seconds,
                       drain_seconds=options.drain_seconds,
                       progress=lambda text: print(text, file=sys.stderr, flush=True),
                       server=server, kind=options.kind)
    finally:
        if server is not None:
            server.stop()
    table = format_table(figures)
    print(table)
    with open(os.path.join(folder, "report.txt"), "w") as handle:
        handle.write(table + "\n")
    if figures.problems or options.keep:
        print(f"the run's folder, with events.log and the pool logs: {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return 1 if figures.problems else 0


if __name__ == "__main__":
    sys.exit(main())
