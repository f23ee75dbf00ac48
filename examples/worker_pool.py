"""A web app hands off slow work to a pool of worker processes.

Run it from a fresh clone with ``python examples/worker_pool.py``.  The
"request handlers" put jobs and return at once; a pool of two processes, here
in the background of the same script, builds the reports.  In production the
pool is its own service: ``python -m litejobs worker app.db``.
"""

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import litejobs  # noqa: E402


def build_report(folder, customer, pages):
    """Stands in for rendering a large PDF: slow, and writes a file."""
    path = os.path.join(folder, f"report-{customer}.txt")
    with open(path, "w") as handle:
        for page in range(1, pages + 1):
            time.sleep(0.01)
            handle.write(f"{customer}: page {page} of {pages}\n")
    return {"path": path, "pages": pages, "pid": os.getpid()}


def handle_request(queue, folder, customer, pages):
    """What a request handler does: put the job, answer with its id."""
    job = queue.put(litejobs.Job(build_report, folder, customer, pages),
                    queue="reports", timeout=60, retry=litejobs.Retry(attempts=2))
    return job.id


def main():
    with tempfile.TemporaryDirectory() as folder:
        queue = litejobs.Queue(os.path.join(folder, "app.db"))
        with queue.worker(processes=2, queues=["reports"]) as pool:
            print(f"pool {pool.id}: worker processes "
                  f"{sorted(pool.pids)}")
            started = time.monotonic()
            ids = [handle_request(queue, folder, customer, pages)
                   for customer, pages in [("acme", 20), ("globex", 35), ("initech", 10),
                                           ("umbrella", 25)]]
            print(f"4 requests answered in {1000 * (time.monotonic() - started):.1f} ms: "
                  f"jobs {ids}")
            for job_id in ids:
                report = queue.get(job_id).wait(timeout=60)
                print(f"job {job_id}: {report['pages']} pages in "
                      f"{os.path.basename(report['path'])}, built by process {report['pid']}")
            print(f"all built {time.monotonic() - started:.2f} s after the first request")
        print(f"counts: {queue.counts()}")


if __name__ == "__main__":  # the pool's spawned processes import this file again
    main()
