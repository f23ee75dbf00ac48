"""The seed's story in a script: put jobs, run them, read results and failures.

Run it from a fresh clone with ``python examples/quickstart.py``.  Jobs run
here, in this process, through ``Queue.run_pending()``; a worker pool runs
them the same way from any process on this host.
"""

import datetime
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import litejobs  # noqa: E402


def slow_square(number):
    """Stands in for an expensive job, such as rendering a PDF."""
    return number * number


def main():
    with tempfile.TemporaryDirectory() as folder:
        queue = litejobs.Queue(os.path.join(folder, "quickstart.db"))

        # A job is durable as soon as put() returns.
        stamp = queue.put(time.time)
        square = queue.put(litejobs.Job(slow_square, 12))
        # A job for later: a worker will not start it before its time.
        later = queue.put(litejobs.Job(slow_square, 3),
                          begin_after=datetime.timedelta(hours=1))
        # A job that fails: its traceback is kept.
        broken = queue.put(litejobs.Job(int, "not a number"))

        ran = queue.run_pending()
        print(f"ran {ran} jobs now; {later!r} waits for its time")
        print(f"time.time() -> {stamp.wait(timeout=5)}")
        print(f"slow_square(12) -> {square.wait(timeout=5)}")
        try:
            broken.wait(timeout=5)
        except litejobs.JobFailed as failure:
            print(f"int('not a number') failed: {failure.traceback.splitlines()[-1]}")

        # Tests and scripts can move the clock instead of sleeping.
        in_two_hours = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=2)
        queue.run_pending(now=in_two_hours)
        print(f"an hour later: slow_square(3) -> {later.wait(timeout=5)}")
        print(queue.counts())
        queue.close()


if __name__ == "__main__":
    main()
