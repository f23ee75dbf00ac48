"""PostgreSQL benchmarks, for ``python bench/run.py --postgres``: litejobs on
PostgreSQL next to raw PostgreSQL doing the same SQL work and next to
procrastinate, on one throwaway server (tests/postgres_server.py, with
fsync and synchronous commits on, as in production), in one run.

Raw rows use a table made by litejobs' own migrations, with its indexes, in
a database of its own, without litejobs' triggers (those that NOTIFY, and
the one counting deletes).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
import urllib.parse
from typing import Any, Callable

import psycopg

import run
from run import POOL_ENV, Pool

sys.path.insert(0, os.path.join(os.path.dirname(run.BENCH_DIR), "tests"))

import litejobs  # noqa: E402
import postgres_server  # noqa: E402

RAW_INSERT = """
INSERT INTO litejobs_jobs (queue, priority, status, name, created_at, begin_after)
VALUES ('default', 0, 'pending', 'jobs:noop', %s, %s)
"""
RAW_CLAIM = """
WITH due AS (
    SELECT id FROM litejobs_jobs
    WHERE status = 'pending' AND begin_after <= %(now)s
    ORDER BY priority DESC, begin_after, id LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED)
UPDATE litejobs_jobs SET status = 'active', attempts = attempts + 1, started_at = %(now)s,
    lease_owner = 'raw', lease_token = 'raw', lease_expires = %(now)s + 30
WHERE id IN (SELECT id FROM due)
RETURNING id
"""
RAW_COMPLETE = """
UPDATE litejobs_jobs SET status = 'completed', finished_at = %s, lease_owner = NULL,
    lease_token = NULL, lease_expires = NULL
WHERE id = ANY(%s) AND status = 'active' AND lease_token = 'raw'
"""
Row = tuple[str, str, str, str]


def raw_database(server: postgres_server.Server) -> str:
    """A database with litejobs' table and indexes, but not its triggers."""
    url = server.new_database()
    litejobs.Queue(url).close()
    with psycopg.connect(url, autocommit=True) as conn:
        for trigger in ("litejobs_jobs_notify_insert", "litejobs_jobs_notify_update",
                        "litejobs_jobs_uncount_deleted"):
            conn.execute(f"DROP TRIGGER {trigger} ON litejobs_jobs")
    return url


def interleaved_puts(server: postgres_server.Server, count: int) -> tuple[float, float]:
    """Durable puts a second, litejobs' and raw one-row commits', alternating
    in rounds of 200, so that both meet the same drift of fsync speed."""
    raw_url = raw_database(server)
    queue = litejobs.Queue(server.new_database())
    ours = theirs = 0.0
    with psycopg.connect(raw_url, autocommit=True) as conn:
        for _ in range(max(1, count // 200)):
            started = time.perf_counter()
            for _ in range(200):
                now = time.time()
                conn.execute(RAW_INSERT, (now, now))
            theirs += time.perf_counter() - started
            started = time.perf_counter()
            for _ in range(200):
                queue.put("jobs:noop")
            ours += time.perf_counter() - started
    queue.close()
    return count / ours, count / theirs


def put_many(server: postgres_server.Server, count: int) -> tuple[float, float]:
    """`put_many` of ``count`` jobs in one transaction, and a raw
    ``executemany`` of as many rows in one."""
    queue = litejobs.Queue(server.new_database())
    started = time.perf_counter()
    queue.put_many(["jobs:noop"] * count)
    ours = count / (time.perf_counter() - started)
    queue.close()
    with psycopg.connect(raw_database(server)) as conn:
        now = time.time()
        started = time.perf_counter()
        with conn.cursor() as cursor:
            cursor.executemany(RAW_INSERT, [(now, now)] * count)
        conn.commit()
        theirs = count / (time.perf_counter() - started)
    return ours, theirs


def _raw_drainer(url: str, batch: int, counter: Any) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            with conn.transaction():
                ids = [row[0] for row in conn.execute(
                    RAW_CLAIM, {"now": time.time(), "limit": batch})]
            if not ids:
                return
            with conn.transaction():
                conn.execute(RAW_COMPLETE, (time.time(), ids))
            with counter.get_lock():
                counter.value += len(ids)


def raw_claim_complete(server: postgres_server.Server, count: int, batch: int,
                       processes: int = 2) -> float:
    """Jobs a second through a plain claim (SKIP LOCKED) + complete loop of
    ``batch`` jobs per transaction, in ``processes`` processes: the drain's
    ceiling on this server, with no library, pickling or job processes."""
    url = raw_database(server)
    with psycopg.connect(url) as conn:
        now = time.time()
        with conn.cursor() as cursor:
            cursor.executemany(RAW_INSERT, [(now, now)] * count)
        conn.commit()
    context = multiprocessing.get_context("spawn")
    counter = context.Value("q", 0)
    workers = [context.Process(target=_raw_drainer, args=(url, batch, counter))
               for _ in range(processes)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    assert counter.value == count, (counter.value, count)
    return count / elapsed


def completed_between(url: str, first: int, last: int) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM litejobs_jobs WHERE id BETWEEN %s AND %s "
                            "AND status = 'completed'", (first, last)).fetchone()[0]


def drained(url: str, jobs: list[litejobs.Job], started: float) -> float:
    """Jobs a second, from ``started`` to the last of ``jobs`` completing."""
    jobs[-1].wait(timeout=600)
    while completed_between(url, jobs[0].id, jobs[-1].id) < len(jobs):
        time.sleep(0.005)
    return len(jobs) / (time.perf_counter() - started)


def pool_drain(server: postgres_server.Server, folder: str, processes: int,
               count: int, quota: int | None = None) -> float:
    """Jobs a second a ``python -m litejobs worker`` drains, put all at once;
    with ``quota``, each job names a quota limited to that many running."""
    url = server.new_database()
    pool = Pool(url, processes,
                log_path=os.path.join(folder, f"pg-drain-{processes}-{quota}.log"))
    try:
        if quota is not None:
            pool.queue.set_quota("bench", quota)
        jobs = pool.queue.put_many(["jobs:noop"] * count,
                                   quotas=None if quota is None else ["bench"])
        return drained(url, jobs, time.perf_counter())
    finally:
        pool.close()


def pools_drain(server: postgres_server.Server, folder: str, pools: int,
                count: int) -> tuple[float, float]:
    """Jobs a second that ``pools`` pools of 1 process, as on as many hosts,
    drain together; and the connections each holds while it drains."""
    url = server.new_database()
    database = urllib.parse.urlsplit(url).path.lstrip("/")
    started_pools = [Pool(url, 1, log_path=os.path.join(folder, f"pg-pools-{pools}-{i}.log"),
                          wait=False) for i in range(pools)]
    try:
        for pool in started_pools:
            pool.wait_ready(1)
        queue = started_pools[0].queue
        jobs = queue.put_many(["jobs:noop"] * count)
        rate = drained(url, jobs, time.perf_counter())
        held = server.sql(
            "SELECT count(*) FROM pg_stat_activity "
            f"WHERE datname = '{database}' AND application_name = 'litejobs'")[0][0]
        # The bench holds one of them for each pool: its Queue.
        return rate, (held - pools) / pools
    finally:
        for pool in started_pools:
            pool.close()


def pool_parallel(server: postgres_server.Server, folder: str, parts: int) -> float:
    pool = Pool(server.new_database(), 2, log_path=os.path.join(folder, "pg-parallel.log"))
    return run.pool_parallel(folder, 2, parts, pool)


def pickup_latency(server: postgres_server.Server, folder: str, samples: int) -> list[float]:
    """Seconds from a durable put returning to the job starting, on an idle
    pool of 2."""
    pool = Pool(server.new_database(), 2, durable=True,
                log_path=os.path.join(folder, "pg-latency.log"))
    try:
        return run.pickups(pool.queue, samples)
    finally:
        pool.close()


# -- procrastinate ------------------------------------------------------------------------


def procrastinate_missing() -> str | None:
    return run.peer_missing("procrastinate")


def _procrastinate_env(url: str) -> dict[str, str]:
    return dict(POOL_ENV, BENCH_PG_URL=url, BENCH_STAMPS=os.environ.get("BENCH_STAMPS", ""))


def _python(script: str, url: str) -> str:
    """Run ``script`` in a Python of its own, with the procrastinate app on
    ``url`` importable; what it printed."""
    return subprocess.run([sys.executable, "-c", script], env=_procrastinate_env(url),
                          cwd=run.BENCH_DIR, check=True, capture_output=True, text=True,
                          timeout=600).stdout


def procrastinate_database(server: postgres_server.Server) -> str:
    url = server.new_database()
    subprocess.run([sys.executable, "-m", "procrastinate", "--app=procrastinate_tasks.app",
                    "schema", "--apply"], env=_procrastinate_env(url), check=True,
                   capture_output=True, timeout=120)
    return url


def procrastinate_defer(server: postgres_server.Server, count: int) -> float:
    """Defers a second, one ``defer`` call each, in a process of its own (the
    app is bound to one database when it is imported)."""
    url = procrastinate_database(server)
    script = ("import procrastinate_tasks as t, time\n"
              "with t.app.open():\n"
              "    started = time.perf_counter()\n"
              f"    for _ in range({count}):\n"
              "        t.noop.defer()\n"
              f"    print({count} / (time.perf_counter() - started))\n")
    return float(_python(script, url))


def _events_span(url: str) -> tuple[int, float]:
    with psycopg.connect(url) as conn:
        done, first, last = conn.execute(
            "SELECT count(*) FILTER (WHERE type = 'succeeded'),"
            " extract(epoch FROM min(at) FILTER (WHERE type = 'started')),"
            " extract(epoch FROM max(at) FILTER (WHERE type = 'succeeded'))"
            " FROM procrastinate_events").fetchone()
    return done, (float(last) - float(first)) if done else 0.0


def _procrastinate_workers(url: str, processes: int,
                           concurrency: int | None) -> list[subprocess.Popen[bytes]]:
    extra = [] if concurrency is None else ["--concurrency", str(concurrency)]
    return [subprocess.Popen([sys.executable, "-m", "procrastinate",
                              "--app=procrastinate_tasks.app", "worker", *extra],
                             env=_procrastinate_env(url), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL) for _ in range(processes)]


def _procrastinate_span(server: postgres_server.Server, task: str, arguments: str,
                        count: int, processes: int, concurrency: int | None) -> float:
    """Seconds ``processes`` procrastinate workers take to run ``count``
    calls of ``task`` with ``arguments`` (a dict's text), deferred
    beforehand; by procrastinate's own events, from the first start to the
    last success."""
    url = procrastinate_database(server)
    _python("import procrastinate_tasks as t\n"
            "with t.app.open():\n"
            f"    t.{task}.batch_defer(*[{arguments}] * {count})\n", url)
    workers = _procrastinate_workers(url, processes, concurrency)
    try:
        deadline = time.monotonic() + 600
        while _events_span(url)[0] < count and time.monotonic() < deadline:
            time.sleep(0.2)
        done, span = _events_span(url)
        assert done == count, (done, count)
        return span
    finally:
        for worker in workers:
            worker.terminate()
            worker.wait(timeout=60)


def procrastinate_drain(server: postgres_server.Server, count: int, processes: int,
                        concurrency: int | None) -> float:
    """No-op jobs a second that ``processes`` procrastinate workers drain."""
    return count / _procrastinate_span(server, "noop", "{}", count, processes, concurrency)


def procrastinate_async_naps(server: postgres_server.Server, count: int, processes: int,
                             concurrency: int) -> float:
    """Seconds ``processes`` procrastinate workers, each running
    ``concurrency`` async tasks at once, take to run ``count`` tasks awaiting
    0.1 s."""
    return _procrastinate_span(server, "async_nap", "{'seconds': 0.1}", count, processes,
                               concurrency)


def procrastinate_pickup(server: postgres_server.Server, folder: str,
                         samples: int) -> list[float]:
    """Seconds from ``defer`` returning to the task starting (it notes the
    time), on 2 idle workers: as `pickup_latency` measures litejobs."""
    url = procrastinate_database(server)
    stamps = os.path.join(folder, "procrastinate-stamps.txt")
    os.environ["BENCH_STAMPS"] = stamps
    workers = _procrastinate_workers(url, 2, None)
    try:
        script = ("import procrastinate_tasks as t, random, time, json\n"
                  "rng = random.Random(7); out = []\n"
                  "with t.app.open():\n"
                  "    time.sleep(2)\n"
                  f"    for _ in range({samples}):\n"
                  "        time.sleep(rng.uniform(0.02, 0.05))\n"
                  "        job_id = t.started_at.defer(); out.append((job_id, time.time()))\n"
                  "print(json.dumps(out))\n")
        deferred = dict(json.loads(_python(script, url)))
        deadline = time.monotonic() + 60
        started: dict[int, float] = {}
        while len(started) < len(deferred) and time.monotonic() < deadline:
            time.sleep(0.1)
            with contextlib.suppress(FileNotFoundError), open(stamps) as handle:
                started = {int(job): float(at) for job, at in
                           (line.split() for line in handle if line.strip())}
        return sorted(max(0.0, started[int(job_id)] - put_returned)
                      for job_id, put_returned in deferred.items() if int(job_id) in started)
    finally:
        for worker in workers:
            worker.terminate()
            worker.wait(timeout=60)


# -- the rows -----------------------------------------------------------------------------


def run_all(quick: bool, peers: bool, folder: str,
            row: Callable[..., None], rows: list[Row], skipped: list[str]) -> None:
    singles = 200 if quick else 6000
    batch = 10_000
    pool_jobs = 5_000 if quick else 50_000
    fan_out = 2_000 if quick else 10_000
    samples = 50 if quick else 300
    peer_jobs = 500 if quick else 5_000
    scale_jobs = 5_000 if quick else 20_000
    server = postgres_server.Server(durable=True).start()
    try:
        ours, raw = interleaved_puts(server, singles)
        row(f"PostgreSQL: put, durable ({singles})", ours, "raw one-row commit", raw)
        ours, raw = put_many(server, batch)
        row(f"PostgreSQL: put_many ({batch:,})", ours, "raw batched insert", raw)
        raw_one = raw_claim_complete(server, pool_jobs // 5, 1)
        raw_64 = raw_claim_complete(server, pool_jobs, 64)
        row(f"PostgreSQL: raw claim+complete, 1 a transaction, 2 processes "
            f"({pool_jobs // 5:,})", raw_one, "the same, 64 a transaction", raw_64)
        drains = {}
        for processes in (1, 2):
            drains[processes] = pool_drain(server, folder, processes, pool_jobs)
            row(f"PostgreSQL: pool drain, {processes} process{'es' * (processes > 1)} "
                f"({pool_jobs:,})", drains[processes],
                "raw claim+complete, 64 a transaction, 2 processes", raw_64)
        row(f"PostgreSQL: pool drain, 2 processes, jobs naming a quota of 1,000 running "
            f"({pool_jobs:,})", pool_drain(server, folder, 2, pool_jobs, quota=1000),
            "pool drain, 2 processes, no quota set", drains[2])
        rows.append(("PostgreSQL: pool drain, 2 processes, target", f"{drains[2]:,.0f}/s",
                     f"40% of raw 64 a transaction {0.4 * raw_64:,.0f}/s",
                     f"{drains[2] / (0.4 * raw_64):.0%}"))
        row(f"PostgreSQL: parallel of {fan_out:,} no-op parts + postprocess, 2 processes",
            pool_parallel(server, folder, fan_out), "pool drain, 2 processes", drains[2])
        latencies = pickup_latency(server, folder, samples)
        theirs_p50 = None
        if peers and procrastinate_missing() is None:
            their_defer = procrastinate_defer(server, peer_jobs // 5)
            row(f"PostgreSQL: put, durable ({singles})", ours_put(rows),
                f"procrastinate defer ({peer_jobs // 5:,})", their_defer, times=True)
            for concurrency in (None, 8):
                theirs = procrastinate_drain(server, peer_jobs, 2, concurrency)
                label = "default concurrency" if concurrency is None else \
                    f"--concurrency {concurrency}"
                row(f"PostgreSQL: pool drain, 2 processes ({pool_jobs:,})", drains[2],
                    f"procrastinate, 2 workers, {label} ({peer_jobs:,})", theirs, times=True)
            their_latencies = procrastinate_pickup(server, folder, samples // 3)
            theirs_p50 = run.percentile(their_latencies, 0.5)
        elif peers:
            skipped.append(f"procrastinate: skipped, {procrastinate_missing()}")
        p50, p99 = run.percentile(latencies, 0.5), run.percentile(latencies, 0.99)
        if theirs_p50 is not None:
            rows.append((f"PostgreSQL: pickup latency p50, idle pool, durable puts ({samples})",
                         f"{p50 * 1000:.1f} ms", f"procrastinate {theirs_p50 * 1000:.1f} ms",
                         f"{theirs_p50 / p50:.0%}" if p50 else "-"))
        rows.append((f"PostgreSQL: pickup latency p99, idle pool, durable puts ({samples})",
                     f"{p99 * 1000:.1f} ms", "target 25 ms", f"{0.025 / p99:.0%}" if p99 else "-"))
        if theirs_p50 is None:
            rows.append((f"PostgreSQL: pickup latency p50, idle pool, durable puts ({samples})",
                         f"{p50 * 1000:.1f} ms", "target 5 ms", f"{0.005 / p50:.0%}"))
        # Short drains of 48 processes on 2 cores: their speed swings with
        # what else the machine does (autovacuum after the rows above), so
        # the two alternate, three times each, and the medians are compared.
        twos, sixteens = [], []
        for _ in range(3):
            two, held_two = pools_drain(server, folder, 2, scale_jobs)
            sixteen, held_sixteen = pools_drain(server, folder, 16, scale_jobs)
            twos.append(two)
            sixteens.append(sixteen)
        row(f"PostgreSQL: 16 pools of 1 process, as on 16 hosts ({scale_jobs:,}), "
            f"median of 3", statistics.median(sixteens),
            "2 pools of 1 process, median of 3", statistics.median(twos))
        rows.append(("PostgreSQL: 16 pools of 1 process, each of the 3 runs",
                     " / ".join(f"{rate:,.0f}/s" for rate in sixteens),
                     "2 pools: " + " / ".join(f"{rate:,.0f}/s" for rate in twos), "-"))
        rows.append(("PostgreSQL: connections a pool of 1 process holds",
                     f"{held_sixteen:.1f} (16 pools)", f"{held_two:.1f} (2 pools)", "-"))
    finally:
        server.stop()


def server_version() -> str:
    found = subprocess.run([os.path.join(postgres_server.binaries() or "", "postgres"),
                            "--version"], capture_output=True, text=True)
    return found.stdout.strip().replace("postgres (PostgreSQL) ", "PostgreSQL ") or "PostgreSQL"


def ours_put(rows: list[Row]) -> float:
    """The durable put rate already measured, from its row."""
    found = next(r for r in rows if r[0].startswith("PostgreSQL: put, durable"))
    return float(found[1].rstrip("/s").replace(",", ""))
