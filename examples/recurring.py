"""A recurring job: a callback of each run schedules the next one.

Run it from a fresh clone with ``python examples/recurring.py [DATABASE]``.
There is no scheduler process.  This is the zc.async pattern: each run of
``digest`` has a callback, ``reschedule``, that puts the following run, due one
interval later, and gives it the same callback.  The run itself knows nothing
of the schedule.  A callback runs however its job ends, so a run that fails,
even for good, does not end the schedule: its callback gets a
``litejobs.Failure`` instead of a result and schedules the next run all the
same.  ``litejobs.current_queue()`` gives the callback the queue it runs from.

The next run and its callback are put in one ``Queue.transaction()``, so they
are stored together or not at all: a crash in between cannot leave a run that
nothing will follow.  Putting them again is harmless.  The run is put with a
``key`` naming its time slot, and while a job with that key is pending or
running, putting it again returns that job instead of adding a second one.  The
callback is added only if that job has none yet, checked in the same
transaction.  So a callback that runs twice (retried, or rerun after its
process died), or an application that puts the first run each time it starts,
never doubles the schedule.  (A key guards only while its job has not ended.
Reruns come seconds after the first try, long before the next slot.)

Instead of waiting ten minutes between runs, this script moves a fake clock:
``Queue.run_pending(now=...)`` runs what is due by ``now``, including the
callbacks that become due when a run ends, and jobs that run under it compute
``begin_after`` from that clock too.  It ends in a moment.
"""

import datetime
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import litejobs  # noqa: E402

INTERVAL = datetime.timedelta(minutes=10)
FAILING_RUN = 2  # this run fails for good (no retry); its callback still schedules
SHAKY_CALLBACK = 3  # the callback after this run fails once after it has scheduled


def schedule(queue, first, run):
    """Put run number ``run``, due at its slot, with a ``reschedule`` callback:
    both or neither, and each at most once.  Returns the run and its callback,
    and whether this call added them (False for what was there already)."""
    slot = first + run * INTERVAL
    with queue.transaction():
        job = queue.put(litejobs.Job(digest, first, run), begin_after=slot,
                        key=f"digest@{slot:%Y-%m-%dT%H:%M}")
        found = [child for child in job.children() if child.role == "callback"]
        if found:
            return job, found[0], False
        callback = job.add_callback(litejobs.Job(reschedule, first, run),
                                    retry=litejobs.Retry(attempts=2, delay=0))
        return job, callback, True


def digest(first, run):
    """The recurring work, say a digest email every ten minutes."""
    slot = first + run * INTERVAL
    if run == FAILING_RUN:
        print(f"  run {run} for {slot:%H:%M}: the mail server did not answer")
        raise ConnectionError("mail server did not answer")
    print(f"  run {run} for {slot:%H:%M}: digest sent")
    return f"digest {run} sent"


def reschedule(first, run, outcome):
    """The callback of run ``run``: ``outcome`` is its result, or a
    `litejobs.Failure` if it failed.  Puts run ``run + 1`` and its callback."""
    if isinstance(outcome, litejobs.Failure):
        got = f"a Failure ({outcome.status}, {outcome.error_type})"
    else:
        got = repr(outcome)
    attempt = litejobs.current_job().attempts
    upcoming, callback, added = schedule(litejobs.current_queue(), first, run + 1)
    print(f"    callback of run {run}, attempt {attempt}, got {got}: "
          f"{'put' if added else 'found'} run {run + 1} as job {upcoming.id} at "
          f"{upcoming.begin_after:%H:%M} with callback job {callback.id}")
    if run == SHAKY_CALLBACK and attempt == 1:
        # The transaction has committed; failing now makes the callback run
        # again, as a crash at this point would.
        raise TimeoutError("the audit log did not answer")
    return f"got {got}; run {run + 1} is job {upcoming.id}"


def main(argv):
    with tempfile.TemporaryDirectory() as folder:
        path = argv[1] if len(argv) > 1 else os.path.join(folder, "recurring.db")
        queue = litejobs.Queue(path)
        # The first slot: the next full hour (UTC), so nothing is due in real time.
        now = datetime.datetime.now(datetime.timezone.utc)
        first = now.replace(minute=0, second=0, microsecond=0) + datetime.timedelta(hours=1)

        # The application puts the first run when it starts; starting twice
        # puts it, and its callback, once.
        start, callback, _ = schedule(queue, first, 0)
        again, callback_again, _ = schedule(queue, first, 0)
        print(f"first run: job {start.id} at {start.begin_after:%H:%M} with callback "
              f"job {callback.id}; putting it again returned job {again.id} with "
              f"callback job {callback_again.id}")

        for step in range(5):
            clock = first + step * INTERVAL
            print(f"clock {clock:%H:%M}:")
            queue.run_pending(now=clock)

        runs = sorted((job for job in queue.jobs(limit=None)
                       if (job.key or "").startswith("digest@")), key=lambda job: job.id)
        print("runs and their callbacks:")
        broken = []
        for number, run in enumerate(runs):
            if run.status == litejobs.COMPLETED:
                outcome = repr(run.result)
            elif run.status == litejobs.FAILED:
                outcome = run.error_type
            else:
                outcome = f"at {run.begin_after:%H:%M}"
            callbacks = [child for child in run.children() if child.role == "callback"]
            print(f"  run {number} (job {run.id}): {run.status} {outcome}; callbacks: "
                  + ", ".join(f"job {cb.id} {cb.status} after {cb.attempts} attempt(s)"
                              for cb in callbacks))
            if len(callbacks) != 1:
                broken.append(f"run {number} has {len(callbacks)} callbacks")
        pending = queue.jobs(status=litejobs.PENDING)
        print(f"counts: {queue.counts()}")
        print(f"pending: {len(pending)} (job {pending[0].id} at "
              f"{pending[0].begin_after:%H:%M})")
        queue.close()
        ended = [run.status for run in runs[:5]]
        if len(runs) != 6 or ended.count(litejobs.COMPLETED) != 4 \
                or ended[FAILING_RUN] != litejobs.FAILED or len(pending) != 1:
            broken.append("the schedule doubled or broke")
        if broken:
            print("; ".join(broken))
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
