"""Profile a pool's supervisor while it drains no-op jobs.

    python bench/profile_pool.py                 # 50,000 jobs, 2 worker processes
    python bench/profile_pool.py --jobs 20000 --processes 1

The supervisor runs in this process under cProfile (`Worker.run` in burst
mode); its worker processes are not profiled, because they spend most of
their time waiting for work.  It prints the drain rate, the supervisor's CPU
time per job, the share of its time spent inside SQLite (``execute``,
``executemany`` and ``fetch*`` of ``sqlite3``) and the functions that took
the most time of their own.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import litejobs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="litejobs-profile-") as folder:
        path = os.path.join(folder, "profile.db")
        queue = litejobs.Queue(path, durable=False)
        queue.put_many(["jobs:noop"] * args.jobs)
        worker = litejobs.Worker(path, processes=args.processes, burst=True, retention=None)
        profile = cProfile.Profile()
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        profile.runcall(worker.run)
        seconds = time.perf_counter() - started
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
        done = queue.counts()["completed"]
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    stats = pstats.Stats(profile)
    total = stats.total_tt  # type: ignore[attr-defined]
    in_sqlite = sum(
        tottime for (filename, _, name), (_, _, tottime, _, _)
        in stats.stats.items()  # type: ignore[attr-defined]
        if filename == "~" and ("sqlite3.Connection" in name or "sqlite3.Cursor" in name))
    print(f"{done:,} of {args.jobs:,} jobs completed in {seconds:.2f} s "
          f"({done / seconds:,.0f}/s) by {args.processes} worker processes")
    print(f"supervisor CPU: {cpu:.2f} s, {cpu / max(done, 1) * 1e6:.1f} us a job "
          f"(profiled, so slower than unprofiled)")
    print(f"time inside SQLite calls: {in_sqlite:.2f} s of {total:.2f} s profiled "
          f"({in_sqlite / total:.0%})")
    print()
    stats.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
