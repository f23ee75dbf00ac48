"""Benchmarks: litejobs next to raw SQLite doing the same SQL work, and next to
huey with its SQLite storage, in one run.

    python bench/run.py                           # full sizes (pip install -e ".[bench]")
    python bench/run.py --quick                   # small sizes, under a minute
    python bench/run.py --quick --litejobs-only   # no peers: what CI runs

Every row prints litejobs' rate, the baseline's rate measured moments before on
the same disk, and their ratio.  Machines are noisy: read the ratios, and rerun
before trusting a small difference.  Latency and idle CPU have no library to
compare with; their ratio is target / measured, so 100% or more meets it.
Pools run as ``python -m litejobs worker`` in processes of their own.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from typing import Sequence

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import litejobs  # noqa: E402


def noop() -> None:
    """The job every drain runs."""


def raw_database(path: str, synchronous: str) -> sqlite3.Connection:
    """A plain connection on the same table and indexes litejobs uses."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("BEGIN IMMEDIATE")
    for migration in litejobs._MIGRATIONS:
        for statement in migration:
            conn.execute(statement)
    conn.execute("COMMIT")
    return conn


RAW_INSERT = """
INSERT INTO litejobs_jobs (queue, priority, status, name, created_at, begin_after)
VALUES ('default', 0, 'pending', 'bench.run:noop', ?, ?)
"""


def raw_single_commits(conn: sqlite3.Connection, count: int) -> float:
    """Seconds for ``count`` one-row commits on a plain connection."""
    started = time.perf_counter()
    for _ in range(count):
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(RAW_INSERT, (now, now))
        conn.execute("COMMIT")
    return time.perf_counter() - started


def litejobs_puts(queue: litejobs.Queue, count: int) -> float:
    """Seconds for ``count`` puts of a no-argument job."""
    started = time.perf_counter()
    for _ in range(count):
        queue.put(noop)
    return time.perf_counter() - started


def interleaved_commits(folder: str, count: int, durable: bool,
                        rounds: int = 10) -> tuple[float, float]:
    """Rates of litejobs puts and raw commits, measured in alternating rounds.

    fsync speed drifts from one second to the next; alternating exposes both
    sides to the same drift.
    """
    synchronous = "FULL" if durable else "NORMAL"
    raw = raw_database(os.path.join(folder, f"raw-{synchronous}.db"), synchronous)
    queue = litejobs.Queue(os.path.join(folder, f"put-{synchronous}.db"), durable=durable)
    per_round = max(1, count // rounds)
    raw_seconds = ours_seconds = 0.0
    for _ in range(rounds):
        raw_seconds += raw_single_commits(raw, per_round)
        ours_seconds += litejobs_puts(queue, per_round)
    raw.close()
    queue.close()
    total = per_round * rounds
    return total / ours_seconds, total / raw_seconds


def raw_batch_insert(folder: str, count: int) -> float:
    conn = raw_database(os.path.join(folder, "raw-batch.db"), "FULL")
    now = time.time()
    started = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(RAW_INSERT, ((now, now) for _ in range(count)))
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return count / elapsed


def litejobs_put_many(folder: str, count: int) -> float:
    queue = litejobs.Queue(os.path.join(folder, "put-many.db"))
    started = time.perf_counter()
    queue.put_many([noop] * count)
    elapsed = time.perf_counter() - started
    queue.close()
    return count / elapsed


def add_finished_backlog(path: str, rows: int) -> None:
    """``rows`` completed jobs that ended over the last 6 days: within the
    default retention of 7, so that pools keep them, as in a steady state."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        """
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :rows)
        INSERT INTO litejobs_jobs (queue, priority, status, name, created_at,
                                   begin_after, finished_at, attempts)
        SELECT 'default', 0, 'completed', 'bench.run:noop', t, t, t, 1
        FROM (SELECT :now - 6 * 86400 * (:rows - i) / :rows AS t FROM n)
        """, {"rows": rows, "now": time.time()})
    conn.execute("DELETE FROM litejobs_ended_counts")  # as if they had ended by litejobs
    conn.execute(litejobs._COUNT_ALL_ENDED)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def litejobs_inline_drain(folder: str, name: str, count: int, backlog: int) -> float:
    """Jobs per second through run_pending: one claim and one fenced completion each."""
    path = os.path.join(folder, name)
    queue = litejobs.Queue(path, durable=False)
    if backlog:
        add_finished_backlog(path, backlog)
    queue.put_many([noop] * count)
    started = time.perf_counter()
    ran = queue.run_pending()
    elapsed = time.perf_counter() - started
    assert ran == count, (ran, count)
    queue.close()
    return count / elapsed


def claim_query_time(folder: str, name: str, backlog: int, repeat: int) -> float:
    """Mean seconds of the claim's SELECT over a table with ``backlog`` finished rows."""
    path = os.path.join(folder, name)
    queue = litejobs.Queue(path, durable=False)
    if backlog:
        add_finished_backlog(path, backlog)
    queue.put_many([noop] * 10)
    conn = sqlite3.connect(path, isolation_level=None)
    select = (
        "SELECT id FROM litejobs_jobs WHERE status = 'pending' AND begin_after <= ?"
        " AND queue IN ('default') ORDER BY priority DESC, begin_after, id LIMIT 1")
    now = time.time()
    started = time.perf_counter()
    for _ in range(repeat):
        conn.execute(select, (now,)).fetchall()
    elapsed = time.perf_counter() - started
    conn.close()
    queue.close()
    return elapsed / repeat


def counts_time(folder: str, backlog: int, repeat: int) -> tuple[float, float]:
    """Mean seconds of `Queue.counts` over a table with ``backlog`` finished
    rows and 1,000 pending, and of the plain GROUP BY scan it replaced."""
    path = os.path.join(folder, "counts.db")
    queue = litejobs.Queue(path, durable=False)
    add_finished_backlog(path, backlog)
    queue.put_many([noop] * 1000)
    assert queue.counts()["completed"] == backlog
    timings = []
    for count in (queue.counts, lambda: dict(
            scan.execute("SELECT status, count(*) FROM litejobs_jobs GROUP BY status"))):
        scan = sqlite3.connect(path)
        count()  # warm the page cache
        started = time.perf_counter()
        for _ in range(repeat):
            count()
        timings.append((time.perf_counter() - started) / repeat)
        scan.close()
    queue.close()
    return timings[0], timings[1]


# -- worker pools -----------------------------------------------------------------

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))

RAW_CLAIM = """
UPDATE litejobs_jobs SET status = 'active', attempts = attempts + 1, started_at = :now,
    lease_owner = 'raw', lease_token = 'raw', lease_expires = :now + 30
WHERE id IN (SELECT id FROM litejobs_jobs INDEXED BY litejobs_jobs_ready
             WHERE status = 'pending' AND begin_after <= :now
             ORDER BY priority DESC, begin_after, id LIMIT :limit)
RETURNING id
"""
RAW_COMPLETE = """
UPDATE litejobs_jobs SET status = 'completed', finished_at = ?, lease_owner = NULL,
    lease_token = NULL, lease_expires = NULL
WHERE id = ? AND status = 'active' AND lease_token = 'raw'
"""


def raw_claim_complete(folder: str, count: int, batch: int) -> float:
    """Jobs per second through a plain claim + complete loop: the physical
    ceiling of the drain on this disk, with no library, pickling or processes."""
    conn = raw_database(os.path.join(folder, f"raw-drain-{batch}.db"), "NORMAL")
    now = time.time()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(RAW_INSERT, ((now, now) for _ in range(count)))
    conn.execute("COMMIT")
    started = time.perf_counter()
    done = 0
    while done < count:
        conn.execute("BEGIN IMMEDIATE")
        ids = [r[0] for r in conn.execute(RAW_CLAIM, {"now": time.time(), "limit": batch})]
        conn.execute("COMMIT")
        conn.execute("BEGIN IMMEDIATE")
        finished = time.time()
        conn.executemany(RAW_COMPLETE, ((finished, job_id) for job_id in ids))
        conn.execute("COMMIT")
        done += len(ids)
    elapsed = time.perf_counter() - started
    conn.close()
    return count / elapsed


POOL_ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [BENCH_DIR, os.path.dirname(BENCH_DIR), os.environ.get("PYTHONPATH", "")]))


class Pool:
    """``python -m litejobs worker`` in its own process, as in production:
    logging at ``log_level`` (None: the default, info) to ``log_path`` (by
    default a file beside the database).  ``path`` may be a PostgreSQL URL."""

    def __init__(self, path: str, processes: int, durable: bool = False,
                 log_level: str | None = "warning", log_path: str | None = None,
                 wait: bool = True, options: Sequence[str] = ()):
        self.queue = litejobs.Queue(path, durable=durable)
        level = [] if log_level is None else ["--log-level", log_level]
        with open(log_path or path + ".log", "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "litejobs", "worker", path, "-p", str(processes),
                 *level, *options], env=POOL_ENV, stderr=log)
        if not wait:
            return
        try:
            self.wait_ready(processes)
        except BaseException:
            self.close()
            raise

    def wait_ready(self, processes: int) -> None:
        """Until its workers take jobs: a job per worker process has run."""
        probes = self.queue.put_many(["jobs:noop"] * processes)
        for probe in probes:
            probe.wait(timeout=60)

    def children(self) -> list[int]:
        with open(f"/proc/{self.process.pid}/task/{self.process.pid}/children") as handle:
            return [int(pid) for pid in handle.read().split()]

    def cpu_seconds(self) -> float:
        total = 0
        for pid in [self.process.pid, *self.children()]:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime, in ticks
        return total / os.sysconf("SC_CLK_TCK")

    def rss(self) -> dict[str, int]:
        """Resident memory, in bytes, of the supervisor and of its largest child."""
        def resident(pid: int) -> int:
            with open(f"/proc/{pid}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
            return 0
        return {"supervisor": resident(self.process.pid),
                "child": max(resident(pid) for pid in self.children())}

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self.queue.close()


def memory_growth(folder: str, first: int, last: int) -> dict[str, tuple[int, int]]:
    """RSS of a pool of 2 at job ``first`` and at job ``last``, by process."""
    pool = Pool(os.path.join(folder, "pool-memory.db"), 2)
    try:
        seen = {}
        done = 0
        for mark in (first, last):
            while done < mark:
                batch = min(10_000, mark - done)
                jobs = pool.queue.put_many(["jobs:noop"] * batch)
                jobs[-1].wait(timeout=600)
                done += batch
            while pool.queue.counts()["completed"] < done + 2:  # the 2 probes
                time.sleep(0.01)
            seen[mark] = pool.rss()
        return {who: (seen[first][who], seen[last][who]) for who in ("supervisor", "child")}
    finally:
        pool.close()


# -- peers --------------------------------------------------------------------------


def peer_missing(module: str) -> str | None:
    """Why a peer cannot be measured here, or None."""
    if importlib.util.find_spec(module) is None:
        return f"{module} is not installed: pip install -e '.[bench]'"
    return None


def huey_missing() -> str | None:
    return peer_missing("huey")


def huey_sqlite(folder: str, count: int, workers: int) -> tuple[float, float]:
    """huey with SqliteHuey: the enqueue rate of ``count`` no-op tasks, one
    call each; then the rate its consumer drains them with ``workers``
    worker processes, timed between a first and a last task that stamp a file."""
    folder = os.path.abspath(folder)  # the consumer runs in another directory
    path = os.path.join(folder, "huey.db")
    os.environ["BENCH_HUEY_DB"] = path
    import huey_tasks
    start, end = os.path.join(folder, "huey-start"), os.path.join(folder, "huey-end")
    huey_tasks.stamp(start)
    started = time.perf_counter()
    for _ in range(count):
        huey_tasks.noop()
    enqueue = count / (time.perf_counter() - started)
    huey_tasks.stamp(end)
    consumer = subprocess.Popen(
        [sys.executable, "-m", "huey.bin.huey_consumer", "huey_tasks.huey", "-k", "process",
         "-w", str(workers), "-q", "-n"], cwd=BENCH_DIR,
        env=dict(os.environ, PYTHONPATH=BENCH_DIR), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while not os.path.exists(end) or not os.path.getsize(end):
            if time.monotonic() > deadline or consumer.poll() is not None:
                raise RuntimeError("the huey consumer did not drain its queue")
            time.sleep(0.01)
    finally:
        consumer.terminate()
        consumer.wait(timeout=60)
    with open(start) as first, open(end) as last:
        return enqueue, count / (float(last.read()) - float(first.read()))


def pool_drain(folder: str, processes: int, count: int, backlog: int = 0,
               log_level: str | None = "warning", quota: int | None = None) -> float:
    """Jobs per second a pool in its own process drains, put all at once,
    with ``backlog`` finished rows in the table; with ``quota``, each job
    names a quota limited to that many running jobs."""
    path = os.path.join(folder, f"pool-drain-{processes}-{backlog}-{log_level}-{quota}.db")
    if backlog:
        litejobs.Queue(path).close()
        add_finished_backlog(path, backlog)
    pool = Pool(path, processes, log_level=log_level)
    try:
        if quota is not None:
            pool.queue.set_quota("bench", quota)
        jobs = pool.queue.put_many(["jobs:noop"] * count,
                                   quotas=None if quota is None else ["bench"])
        started = time.perf_counter()
        jobs[-1].wait(timeout=600)
        while completed_between(path, jobs[0].id, jobs[-1].id) < count:
            time.sleep(0.005)
        return count / (time.perf_counter() - started)
    finally:
        pool.close()


def completed_between(path: str, first: int, last: int) -> int:
    """How many of the jobs with ids ``first`` to ``last`` have completed.

    A range of the rowid: its cost does not grow with the finished rows
    around it, where `Queue.counts` reads the whole table (about 0.3 s with a
    million rows, which the drain's time would include).
    """
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT count(*) FROM litejobs_jobs WHERE id BETWEEN ? AND ? AND status = 'completed'",
            (first, last)).fetchone()[0]
    finally:
        conn.close()


def behind_a_slow_job(folder: str, quick: int, slow: float | None) -> float:
    """Seconds from a put to the end of the last of its quick jobs, on a
    warmed pool of 2: ``quick`` no-op jobs, one job sleeping ``slow``
    seconds (None: no such job), then ``quick`` more, in one put_many."""
    pool = Pool(os.path.join(folder, f"pool-slow-{slow}.db"), 2)
    try:
        pool.queue.put_many(["jobs:noop"] * 2000)[-1].wait(timeout=600)  # warm
        middle = [] if slow is None else [litejobs.Job("time:sleep", slow)]
        put_at = time.time()
        jobs = pool.queue.put_many(["jobs:noop"] * quick + middle + ["jobs:noop"] * quick)
        quick_ids = [job.id for job in jobs if job.name == "jobs:noop"]
        with sqlite3.connect(pool.queue.path) as conn:
            while True:
                done, last = conn.execute(
                    "SELECT count(*), max(finished_at) FROM litejobs_jobs WHERE id BETWEEN ? "
                    "AND ? AND name = 'jobs:noop' AND status = 'completed'",
                    (quick_ids[0], quick_ids[-1])).fetchone()
                if done == len(quick_ids):
                    return last - put_at
                time.sleep(0.01)
    finally:
        pool.close()


def cold_burst(folder: str, count: int, ramp: int, window: int) -> tuple[float, float]:
    """Jobs per second of a cold ``--burst`` pool of 2 on ``count`` queued
    no-op jobs, by the jobs' own end times: over the ``window`` jobs after
    its first ``ramp``, and over its last ``window``."""
    path = os.path.join(folder, "cold-burst.db")
    with litejobs.Queue(path, durable=False) as queue:
        queue.put_many(["jobs:noop"] * count)
    subprocess.run([sys.executable, "-m", "litejobs", "worker", path, "-p", "2", "--burst",
                    "--log-level", "warning"], env=POOL_ENV, check=True, timeout=600)
    conn = sqlite3.connect(path)
    try:
        ends = [end for end, in conn.execute(
            "SELECT finished_at FROM litejobs_jobs WHERE status = 'completed' "
            "ORDER BY finished_at")]
    finally:
        conn.close()
    assert len(ends) == count, (len(ends), count)
    return (window / (ends[ramp + window - 1] - ends[ramp - 1]),
            window / (ends[-1] - ends[-window - 1]))


def pool_parallel(folder: str, processes: int, parts: int, pool: Pool | None = None) -> float:
    """Parts per second of one parallel of no-op parts with a postprocess,
    counted from its put to its end, as `pool_drain` counts; on ``pool`` if
    given (it is closed)."""
    if pool is None:
        pool = Pool(os.path.join(folder, f"pool-parallel-{processes}.db"), processes)
    try:
        job = pool.queue.put(litejobs.parallel(*["jobs:noop"] * parts,
                                               postprocess="jobs:completed_parts"))
        started = time.perf_counter()
        assert job.wait(timeout=600) == parts
        return parts / (time.perf_counter() - started)
    finally:
        pool.close()


def wal_under_load(folder: str, seconds: float) -> tuple[int, int]:
    """The largest the WAL grew, in bytes, while a pool of 2 drained a steady
    stream of no-op jobs put in batches for ``seconds``; and the jobs put."""
    pool = Pool(os.path.join(folder, "pool-wal.db"), 2)
    wal = pool.queue.path + "-wal"
    largest = put = 0
    try:
        ends = time.monotonic() + seconds
        while time.monotonic() < ends:
            pool.queue.put_many(["jobs:noop"] * 200)
            put += 200
            largest = max(largest, os.path.getsize(wal) if os.path.exists(wal) else 0)
            time.sleep(0.02)
        return largest, put
    finally:
        pool.close()


def pickup_latency(folder: str, samples: int, durable: bool) -> list[float]:
    """Seconds from put returning to the job starting, on an idle pool.

    With durable puts the writer syncs the WAL before the commit shows, and
    inotify reports the write before that: the pool must keep looking.
    """
    pool = Pool(os.path.join(folder, f"pool-latency-{durable}.db"), 2, durable=durable)
    try:
        return pickups(pool.queue, samples)
    finally:
        pool.close()


def percentile(values: list[float], share: float) -> float:
    """The value ``share`` of the way up sorted ``values``."""
    return values[min(len(values) - 1, int(len(values) * share))]


def pickups(queue: litejobs.Queue, samples: int) -> list[float]:
    """Put ``samples`` jobs, 20 to 50 ms apart, on the queue of an idle pool:
    the seconds from each put returning to its job starting, sorted."""
    rng = random.Random(7)
    latencies = []
    for _ in range(samples):
        time.sleep(rng.uniform(0.02, 0.05))  # idle again, at a random phase
        job = queue.put("jobs:started_at")
        put_returned = time.time()
        latencies.append(max(0.0, job.wait(timeout=60) - put_returned))
    return sorted(latencies)


def polling_wait(job: litejobs.Job, timeout: float) -> None:
    """How `Job.wait` waited before it woke on commits: refresh, sleeping 1 ms,
    then twice as long each time, up to 50 ms."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while job.refresh().status not in ("completed", "failed", "cancelled"):
        if time.monotonic() > deadline:
            raise TimeoutError(job)
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def wait_latency(folder: str, samples: int) -> tuple[list[float], list[float]]:
    """Seconds from a job's end (its own clock reading, as it returns) to
    `Job.wait` returning in the putting process, and the same with the
    polling wait of before, alternated on one idle pool.  Each job sleeps a
    random 20 to 80 ms first, so that the end falls at a random phase."""
    pool = Pool(os.path.join(folder, "pool-wait.db"), 2)
    rng = random.Random(11)
    waits: dict[bool, list[float]] = {True: [], False: []}
    try:
        for sample in range(2 * samples):
            commits = sample % 2 == 0
            job = pool.queue.put(litejobs.Job("jobs:ended_after", rng.uniform(0.02, 0.08)))
            if commits:
                ended = job.wait(timeout=60)
            else:
                polling_wait(job, timeout=60)
                ended = job.result
            waits[commits].append(max(0.0, time.time() - ended))
        return sorted(waits[True]), sorted(waits[False])
    finally:
        pool.close()


def idle_cpu(folder: str, seconds: float) -> float:
    """CPU an idle pool of 2 processes uses, as a fraction of one core."""
    pool = Pool(os.path.join(folder, "pool-idle.db"), 2)
    try:
        time.sleep(1.0)  # let start-up work finish
        before = pool.cpu_seconds()
        time.sleep(seconds)
        return (pool.cpu_seconds() - before) / seconds
    finally:
        pool.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--litejobs-only", action="store_true",
                        help="skip the peers (huey); litejobs and raw SQLite only")
    parser.add_argument("--dir", help="where to put the databases (default: a temporary "
                                      "folder on the current disk)")
    parser.add_argument("--postgres", action="store_true",
                        help="the PostgreSQL rows instead, on a throwaway server of the "
                             "machine's PostgreSQL (bench/postgres.py)")
    options = parser.parse_args()
    quick = options.quick
    singles_full = 200 if quick else 2000
    singles_normal = 2000 if quick else 20000
    batch = 10_000
    drain = 500 if quick else 5000
    backlog = 50_000 if quick else 1_000_000
    pool_jobs = 5_000 if quick else 50_000
    cold_jobs = 10_000 if quick else 50_000
    fan_out = 2_000 if quick else 10_000
    latency_samples = 50 if quick else 300
    idle_seconds = 3.0 if quick else 10.0
    wal_seconds = 3.0 if quick else 20.0
    memory_marks = (2_000, 10_000) if quick else (10_000, 100_000)
    huey_jobs = 500 if quick else 5_000
    peers = not options.litejobs_only
    skipped = []

    rows: list[tuple[str, str, str, str]] = []

    def row(measure: str, ours: float, baseline_name: str, theirs: float,
            unit: str = "/s", times: bool = False) -> None:
        ratio = ours / theirs if unit == "/s" else theirs / ours
        rows.append((measure, f"{ours:,.0f}{unit}", f"{baseline_name} {theirs:,.0f}{unit}",
                     f"{ratio:.1f}x" if times else f"{ratio:.0%}"))
        print(f"  {measure}: done", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="litejobs-bench-", dir=options.dir or ".") as folder:
        if options.postgres:
            import postgres
            postgres.run_all(quick, peers, folder, row, rows, skipped)
            return print_table(rows, skipped, quick, postgres.server_version())
        ours, raw = interleaved_commits(folder, singles_full, durable=True)
        durable_puts = ours
        row(f"put, durable ({singles_full})", ours, "raw FULL commit", raw)
        ours, raw = interleaved_commits(folder, singles_normal, durable=False)
        row(f"put, durable=False ({singles_normal})", ours, "raw NORMAL commit", raw)
        raw = raw_batch_insert(folder, batch)
        row(f"put_many ({batch:,})", litejobs_put_many(folder, batch),
            "raw batched insert", raw)
        empty = litejobs_inline_drain(folder, "drain-empty.db", drain, 0)
        full = litejobs_inline_drain(folder, "drain-backlog.db", drain, backlog)
        row(f"run_pending drain, {backlog:,} finished rows ({drain})", full,
            "same on an empty table", empty)
        empty_query = claim_query_time(folder, "query-empty.db", 0, 2000)
        full_query = claim_query_time(folder, "query-backlog.db", backlog, 2000)
        rows.append((f"claim SELECT, {backlog:,} finished rows",
                     f"{full_query * 1e6:.1f} us", f"empty table {empty_query * 1e6:.1f} us",
                     f"{empty_query / full_query:.0%}"))
        ours, scan = counts_time(folder, backlog, 20)
        rows.append((f"Queue.counts, {backlog:,} finished rows",
                     f"{ours * 1000:.2f} ms", f"GROUP BY scan {scan * 1000:.1f} ms",
                     f"{scan / ours:.0f}x"))
        rows.append((f"Queue.counts, {backlog:,} finished rows, target",
                     f"{ours * 1000:.2f} ms", "target 10 ms", f"{0.010 / ours:.0%}"))
        raw = raw_claim_complete(folder, pool_jobs, 64)
        row(f"raw claim+complete, 1 a transaction ({pool_jobs:,})",
            raw_claim_complete(folder, pool_jobs, 1), "the same, 64 a batch", raw)
        drained = {}
        for processes in (1, 2):
            drained[processes] = pool_drain(folder, processes, pool_jobs)
            row(f"pool drain, no-op jobs, {processes} process{'es' * (processes > 1)} "
                f"({pool_jobs:,})", drained[processes], "raw claim+complete, 64 a batch", raw)
        row(f"pool drain, 2 processes, jobs naming a quota of 1,000 running ({pool_jobs:,})",
            pool_drain(folder, 2, pool_jobs, quota=1000),
            "pool drain, 2 processes, no quota set", drained[2])
        row(f"pool drain, 2 processes, default log level: info ({pool_jobs:,})",
            pool_drain(folder, 2, pool_jobs, log_level=None),
            "pool drain, 2 processes, --log-level warning", drained[2])
        window = cold_jobs // 5
        early, full_speed = cold_burst(folder, cold_jobs, 2_000, window)
        row(f"cold --burst pool of 2 ({cold_jobs:,} queued): jobs 2,001 to {2_000 + window:,}",
            early, f"its last {window:,}", full_speed)
        row(f"pool drain, 2 processes, {backlog:,} finished rows ({pool_jobs:,})",
            pool_drain(folder, 2, pool_jobs, backlog), "pool drain, 2 processes", drained[2])
        if peers and huey_missing() is None:
            enqueued, huey_drained = huey_sqlite(folder, huey_jobs, 2)
            row(f"pool drain, 2 processes ({pool_jobs:,})", drained[2],
                f"huey SQLite, 2 worker processes ({huey_jobs:,})", huey_drained, times=True)
            row(f"put, durable ({singles_full})", durable_puts,
                f"huey SQLite enqueue ({huey_jobs:,})", enqueued, times=True)
        elif peers:
            skipped.append(f"huey with SQLite: skipped, {huey_missing()}")
        if peers:
            skipped.append("huey or Dramatiq with Redis: skipped, " + (
                "not written yet" if shutil.which("redis-server") else
                "no redis-server on PATH"))
        alone = behind_a_slow_job(folder, 2_000, None)
        behind = behind_a_slow_job(folder, 2_000, 3.0)
        rows.append(("4,000 quick jobs around one of 3 s: put to last quick end",
                     f"{behind:.2f} s", f"without the slow job {alone:.2f} s",
                     f"{alone / behind:.0%}"))
        rows.append(("4,000 quick jobs around one of 3 s, target", f"{behind:.2f} s",
                     "target 1 s", f"{1 / behind:.0%}"))
        row(f"parallel of {fan_out:,} no-op parts + postprocess, 2 processes",
            pool_parallel(folder, 2, fan_out), "pool drain, 2 processes", drained[2])
        for durable in (False, True):
            latencies = pickup_latency(folder, latency_samples, durable)
            p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
            puts = "durable puts" if durable else "durable=False puts"
            for name, value, target in (("p50", p50, 0.005), ("p99", p99, 0.025)):
                rows.append((f"pickup latency {name}, idle pool, {puts} ({latency_samples})",
                             f"{value * 1000:.1f} ms", f"target {target * 1000:.0f} ms",
                             f"{target / value:.0%}" if value else "-"))
        woken, polled = wait_latency(folder, latency_samples)
        for name, share in (("p50", 0.5), ("p99", 0.99)):
            ours, theirs = (percentile(s, share) for s in (woken, polled))
            rows.append((f"Job.wait lag after the job ends, {name} ({latency_samples})",
                         f"{ours * 1000:.1f} ms",
                         f"polling wait, 1 to 50 ms {theirs * 1000:.1f} ms",
                         f"{theirs / ours:.1f}x" if ours else "-"))
        median = percentile(woken, 0.5)
        rows.append(("Job.wait lag p50, target", f"{median * 1000:.1f} ms",
                     "target 5 ms", f"{0.005 / max(median, 1e-9):.0%}"))
        largest, put = wal_under_load(folder, wal_seconds)
        limit = litejobs._WAL_SIZE_LIMIT
        rows.append((f"WAL size, steady load ({put:,} jobs in {wal_seconds:.0f} s)",
                     f"{largest / 2 ** 20:.1f} MiB", f"limit {limit / 2 ** 20:.0f} MiB",
                     f"{limit / max(largest, 1):.0%}"))
        cpu = idle_cpu(folder, idle_seconds)
        if cpu:
            used, ratio = f"{cpu:.2%} of a core", f"{0.02 / cpu:.0%}"
        else:  # under one clock tick in the whole window
            finest = 1 / os.sysconf("SC_CLK_TCK") / idle_seconds
            used, ratio = f"< {finest:.2%} of a core", f"> {0.02 / finest:.0%}"
        rows.append((f"idle pool CPU, 2 processes ({idle_seconds:.0f} s)", used,
                     "target 2.00% of a core", ratio))
        first, last = memory_marks
        for who, (before, after) in memory_growth(folder, first, last).items():
            growth = after / before - 1
            rows.append((f"RSS of the {who}, job {first:,} to job {last:,}",
                         f"{before / 2 ** 20:.1f} to {after / 2 ** 20:.1f} MiB",
                         "target: grows < 10%", f"{growth:+.1%}"))

    return print_table(rows, skipped, quick, f"SQLite {sqlite3.sqlite_version}")


def print_table(rows: list[tuple[str, str, str, str]], skipped: list[str], quick: bool,
                database: str) -> int:
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    print(f"\nlitejobs {litejobs.__version__}, Python {sys.version.split()[0]}, "
          f"{database}, {os.cpu_count()} CPUs, {stamp}{' (quick)' if quick else ''}\n")
    header = ("measure", "litejobs", "baseline (same run)", "ratio")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for line in [header, tuple("-" * w for w in widths), *rows]:
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths)) + " |")
    for line in skipped:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
