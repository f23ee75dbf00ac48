"""A recurring job: each run puts the next one.

Run it from a fresh clone with ``python examples/recurring.py [DATABASE]``.
There is no scheduler process: like zc.async's callbacks that reschedule
themselves, each run of ``digest`` puts the following run, due one interval
later.  ``litejobs.current_queue()`` gives the job the queue it runs from.

The next run is put with a ``key`` naming its time slot.  While a job with that
key is pending or running, putting it again returns that job instead of adding
a second one, so a run that is retried, or an application that puts the first
run again each time it starts, never doubles the schedule.

Instead of waiting ten minutes between runs, this script moves a fake clock:
``Queue.run_pending(now=...)`` runs what is due by ``now``, and jobs that run
under it compute ``begin_after`` from that clock too.  It ends in a moment.
"""

import datetime
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import litejobs  # noqa: E402

INTERVAL = datetime.timedelta(minutes=10)
FLAKY_RUN = 2  # this run fails once, then succeeds on its retry


def schedule(queue, first, run):
    """Put run number ``run``, due at its slot, at most once."""
    slot = first + run * INTERVAL
    return queue.put(litejobs.Job(digest, first, run), begin_after=slot,
                     key=f"digest@{slot:%Y-%m-%dT%H:%M}",
                     retry=litejobs.Retry(attempts=2, delay=0))


def digest(first, run):
    """The recurring work, say a digest email every ten minutes."""
    # Schedule the next run first, so that a run that fails (even for good,
    # after its retries) does not end the schedule.  A retry of this run
    # schedules the same slot again, and the key makes that a no-op.
    upcoming = schedule(litejobs.current_queue(), first, run + 1)
    attempt = litejobs.current_job().attempts
    slot = first + run * INTERVAL
    print(f"  run {run} for {slot:%H:%M}, attempt {attempt}: next is job {upcoming.id} "
          f"at {upcoming.begin_after:%H:%M}")
    if run == FLAKY_RUN and attempt == 1:
        raise ConnectionError("mail server did not answer")
    return f"digest {run} sent"


def main(argv):
    with tempfile.TemporaryDirectory() as folder:
        path = argv[1] if len(argv) > 1 else os.path.join(folder, "recurring.db")
        queue = litejobs.Queue(path)
        # The first slot: the next full hour (UTC), so nothing is due in real time.
        now = datetime.datetime.now(datetime.timezone.utc)
        first = now.replace(minute=0, second=0, microsecond=0) + datetime.timedelta(hours=1)

        # The application puts the first run when it starts; starting twice
        # puts it once.
        start = schedule(queue, first, 0)
        again = schedule(queue, first, 0)
        print(f"first run: job {start.id} at {start.begin_after:%H:%M}; "
              f"putting it again returned job {again.id}")

        for step in range(5):
            clock = first + step * INTERVAL
            print(f"clock {clock:%H:%M}:")
            queue.run_pending(now=clock)

        ran = sorted((job for job in queue.jobs(status=litejobs.COMPLETED, limit=None)
                      if job.id >= start.id), key=lambda job: job.id)
        waiting = queue.jobs(status=litejobs.PENDING)
        print(f"completed: {[job.result for job in ran]}")
        print(f"attempts per run: {[job.attempts for job in ran]}")
        print(f"pending: {len(waiting)} (job {waiting[0].id} at "
              f"{waiting[0].begin_after:%H:%M})")
        queue.close()
        if len(ran) != 5 or len(waiting) != 1:
            print("the schedule doubled or broke")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
