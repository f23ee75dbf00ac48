"""Async jobs and awaiting jobs: ``python bench/async_jobs.py [--quick] [--postgres]``.

- 10,000 async jobs that each ``await asyncio.sleep(0.1)`` on a pool of 2
  worker processes (``python -m litejobs worker -p 2``), with the default
  ``--async-concurrency`` (100 per process) and with 500: the wall time from
  the first put to the last end, beside the ideal (jobs x 0.1 s / jobs at
  once), measured in the same run.
- 2,000 synchronous jobs that each ``time.sleep(0.1)`` on 2 processes with
  ``--threads 50``, beside the ideal; and, for what the default gives, 100
  such jobs with one thread a process.
- The lag from a job's end (its own clock reading as it returns) to
  ``await job`` returning in the putting process, beside `Job.wait` in a
  thread, alternated on one idle pool: on SQLite, and with --postgres on a
  throwaway PostgreSQL server too.
- With --postgres: the 10,000 async jobs on PostgreSQL, beside procrastinate's
  async worker (2 workers, ``--concurrency 100`` each: 200 at once, as
  litejobs' default) on the same server.  arq and SAQ need Redis, which is
  not here.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time

import run
from run import Pool, percentile

import litejobs  # noqa: E402  (run.py put the repository on sys.path)


def sleepers(path: str, count: int, options: list[str], job: str = "jobs:async_nap",
             log_path: str | None = None) -> float:
    """Seconds for a pool of 2 to run ``count`` jobs sleeping 0.1 s each."""
    pool = Pool(path, 2, options=options, log_path=log_path)
    try:
        started = time.perf_counter()
        jobs = pool.queue.put_many(litejobs.Job(job, 0.1) for _ in range(count))

        async def all_ended() -> None:
            await litejobs.wait_all(jobs, timeout=600)

        asyncio.run(all_ended())
        took = time.perf_counter() - started
        bad = [job for job in jobs if job.status != "completed"]
        assert not bad, f"{len(bad)} jobs did not complete: {bad[0].error}"
        return took
    finally:
        pool.close()


def await_lag(path: str, samples: int,
              log_path: str | None = None) -> tuple[list[float], list[float]]:
    """Seconds from a job's end to ``await job`` returning, and to `Job.wait`
    returning, alternated on one idle pool; each job first awaits a random
    20 to 80 ms, so that its end falls at a random phase."""
    pool = Pool(path, 2, log_path=log_path)
    rng = random.Random(13)
    lags: dict[bool, list[float]] = {True: [], False: []}

    async def sample(awaited: bool) -> float:
        job = await pool.queue.aput(litejobs.Job("jobs:async_ended_after",
                                                 rng.uniform(0.02, 0.08)))
        if awaited:
            ended = await job.await_result(timeout=60)
        else:
            ended = await asyncio.to_thread(job.wait, 60)
        return max(0.0, time.time() - ended)

    async def all_samples() -> None:
        for n in range(2 * samples):
            awaited = n % 2 == 0
            lags[awaited].append(await sample(awaited))

    try:
        asyncio.run(all_samples())
        return sorted(lags[True]), sorted(lags[False])
    finally:
        pool.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 jobs, 50 lag samples")
    parser.add_argument("--postgres", action="store_true",
                        help="the lag on a throwaway PostgreSQL server too")
    options = parser.parse_args()
    count = 1_000 if options.quick else 10_000
    samples = 50 if options.quick else 300
    rows = []
    with tempfile.TemporaryDirectory(prefix="litejobs-async-bench-") as folder:
        for concurrency in (None, 500):
            took = sleepers(os.path.join(folder, f"sleep-{concurrency}.db"), count,
                            [] if concurrency is None else
                            ["--async-concurrency", str(concurrency)])
            at_once = 2 * (concurrency or litejobs._ASYNC_CONCURRENCY)
            ideal = count * 0.1 / at_once
            label = "default --async-concurrency (100)" if concurrency is None else \
                f"--async-concurrency {concurrency}"
            rows.append((f"{count:,} async jobs awaiting 0.1 s, 2 processes, {label}",
                         f"{took:.2f} s", f"ideal {ideal:.2f} s ({at_once} at once)",
                         f"{ideal / took:.0%}"))
            print(f"  {rows[-1][0]}: done", file=sys.stderr, flush=True)
        for threads, jobs in ((50, count // 5), (1, 100)):
            took = sleepers(os.path.join(folder, f"threads-{threads}.db"), jobs,
                            [] if threads == 1 else ["--threads", str(threads)], "jobs:nap")
            ideal = jobs * 0.1 / (2 * threads)
            label = "default (1 thread a process)" if threads == 1 else f"--threads {threads}"
            rows.append((f"{jobs:,} synchronous jobs sleeping 0.1 s, 2 processes, {label}",
                         f"{took:.2f} s", f"ideal {ideal:.2f} s ({2 * threads} at once)",
                         f"{ideal / took:.0%}"))
            print(f"  {rows[-1][0]}: done", file=sys.stderr, flush=True)
        targets = [("SQLite", os.path.join(folder, "lag.db"))]
        server = None
        if options.postgres:
            sys.path.insert(0, os.path.join(os.path.dirname(run.BENCH_DIR), "tests"))
            import postgres_server
            server = postgres_server.Server(durable=True)
            server.start()
            targets.append(("PostgreSQL", server.new_database()))
        try:
            if server is not None:
                import postgres
                took = sleepers(server.new_database(), count, [],
                                log_path=os.path.join(folder, "pg-sleep.log"))
                rows.append((f"PostgreSQL: {count:,} async jobs awaiting 0.1 s, 2 processes, "
                             f"default --async-concurrency (100)", f"{took:.2f} s",
                             f"ideal {count * 0.1 / 200:.2f} s (200 at once)",
                             f"{count * 0.1 / 200 / took:.0%}"))
                missing = postgres.procrastinate_missing()
                if missing:
                    print(f"  procrastinate skipped: {missing}", file=sys.stderr)
                else:
                    theirs = postgres.procrastinate_async_naps(server, count, 2, 100)
                    rows.append((f"PostgreSQL: {count:,} async jobs awaiting 0.1 s, 2 processes,"
                                 f" 200 at once", f"{took:.2f} s",
                                 f"procrastinate, 2 workers --concurrency 100 {theirs:.2f} s",
                                 f"{theirs / took:.1f}x"))
                print("  PostgreSQL async jobs: done", file=sys.stderr, flush=True)
            for name, path in targets:
                awaited, waited = await_lag(path, samples,
                                            log_path=os.path.join(folder, f"lag-{name}.log"))
                for share, label in ((0.5, "p50"), (0.99, "p99")):
                    ours, theirs = percentile(awaited, share), percentile(waited, share)
                    rows.append((f"{name}: lag from a job's end to `await job`, {label} "
                                 f"({samples} samples)", f"{ours * 1000:.1f} ms",
                                 f"Job.wait in a thread {theirs * 1000:.1f} ms",
                                 f"{theirs / ours:.0%}" if ours else "-"))
                print(f"  {name} lag: done", file=sys.stderr, flush=True)
        finally:
            if server is not None:
                server.stop()
    print(f"\nlitejobs {litejobs.__version__}, async jobs, {os.cpu_count()} cores\n")
    print("| measure | litejobs | baseline (same run) | ratio |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
