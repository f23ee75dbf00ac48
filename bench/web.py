"""How the web dashboard holds up: ``python bench/web.py [--quick]``.

A database of 1,000,000 ended jobs (50,000 with --quick) and a few hundred
unfinished ones; ``python -m litejobs web`` serving it in a process of its
own; then 50 clients at once, each fetching pages in turn for 10 seconds:
the overview, the jobs list and a page far down it (read by id), a filtered
list, a job, and the JSON API.  It prints the page times beside those of one
client alone, in the same run, and the errors (there must be none).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH_DIR))

import litejobs  # noqa: E402
import run  # noqa: E402


def pages(ids: list[int]) -> list[str]:
    middle = ids[len(ids) // 2]
    return ["/", "/jobs", f"/jobs?below={middle}", "/jobs?status=completed&queue=default",
            f"/jobs/{middle}", "/api/overview", "/pools", "/schedules"]


def fetch_all(base: str, paths: list[str], seconds: float, times: list[float],
              errors: list[str]) -> None:
    """Fetch ``paths`` in turn until ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    index = 0
    while time.monotonic() < deadline:
        path = paths[index % len(paths)]
        index += 1
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(base + path, timeout=30) as response:
                response.read()
                if response.status != 200:
                    errors.append(f"{path}: {response.status}")
        except Exception as exc:  # noqa: BLE001 - counted, and printed
            errors.append(f"{path}: {exc}")
        times.append(time.perf_counter() - started)


def load(base: str, paths: list[str], clients: int, seconds: float
         ) -> tuple[list[float], list[str]]:
    times: list[float] = []
    errors: list[str] = []
    threads = [threading.Thread(target=fetch_all, args=(base, paths, seconds, times, errors))
               for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(times), errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="50,000 rows, 3 s")
    options = parser.parse_args()
    rows = 50_000 if options.quick else 1_000_000
    seconds = 3.0 if options.quick else 10.0
    with tempfile.TemporaryDirectory(prefix="litejobs-web-bench-") as folder:
        path = os.path.join(folder, "web.db")
        queue = litejobs.Queue(path)
        run.add_finished_backlog(path, rows)
        queue.put_many([litejobs.Job(pow, 2, n) for n in range(300)])
        ids = [job.id for job in queue.jobs(limit=None, status="completed")][::1000]
        server = subprocess.Popen([sys.executable, "-m", "litejobs", "web", path, "--port", "0"],
                                  stdout=subprocess.PIPE, stderr=open(os.path.join(folder, "server.log"), "w"), text=True, env=run.POOL_ENV)
        try:
            line = server.stdout.readline() if server.stdout else ""
            base = re.search(r"http://[\d.]+:\d+", line)
            assert base, line
            paths = pages(ids)
            alone, alone_errors = load(base.group(0), paths, 1, seconds)
            many, many_errors = load(base.group(0), paths, 50, seconds)
        finally:
            server.terminate()
            server.wait(timeout=30)
            with open(os.path.join(folder, "server.log")) as log:
                trouble = log.read()
        queue.close()
    p50, p99 = run.percentile(alone, 0.5), run.percentile(alone, 0.99)
    m50, m99 = run.percentile(many, 0.5), run.percentile(many, 0.99)
    print(f"\nlitejobs {litejobs.__version__} dashboard, {rows:,} ended jobs, "
          f"{len(paths)} pages in turn, {seconds:g} s each\n")
    print("| measure | litejobs | baseline (same run) | ratio |")
    print("| --- | --- | --- | --- |")
    print(f"| page time p50, 50 clients at once ({len(many):,} pages) | {m50 * 1000:.1f} ms "
          f"| 1 client {p50 * 1000:.1f} ms | {p50 / m50:.0%} |")
    print(f"| page time p99, 50 clients at once | {m99 * 1000:.1f} ms "
          f"| 1 client {p99 * 1000:.1f} ms | {p99 / m99:.0%} |")
    print(f"| pages a second, 50 clients at once | {len(many) / seconds:,.0f}/s "
          f"| 1 client {len(alone) / seconds:,.0f}/s | "
          f"{len(many) / max(1, len(alone)):.1f}x |")
    print(f"| errors | {len(many_errors) + len(alone_errors)} | target 0 | - |")
    for error in (many_errors + alone_errors)[:10]:
        print(f"  {error}", file=sys.stderr)
    if trouble.strip():
        print(f"the server said:\n{trouble[-3000:]}", file=sys.stderr)
    return 1 if many_errors or alone_errors else 0


if __name__ == "__main__":
    sys.exit(main())
