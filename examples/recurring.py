"""A recurring job: a digest every ten minutes, with ``Queue.schedule``.

Run it from a fresh clone with ``python examples/recurring.py [DATABASE]``.

The schedule is stored in the database, so every pool on it (on every host,
with PostgreSQL) sees it, and each tick fires once, from whichever pool gets
there first: the tick's job is put in the transaction that records the tick.
The application declares its schedules each time it starts; declaring one
again changes nothing that is already right, and keeps its next tick, so a
restart neither skips nor repeats one.

A run that fails does not end the schedule: the next tick fires all the same.
Ticks missed while no pool ran (here, the clock jumps over half an hour) fire
by the schedule's ``catchup``: "latest" (the default) runs once, for the
latest of them.  The job knows the tick it is for from its meta.

Instead of waiting ten minutes between runs, this script moves a fake clock:
``Queue.run_pending(now=...)`` fires the schedules due by ``now`` and runs the
jobs due by then.  It ends in a moment.
"""

import datetime
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import litejobs  # noqa: E402

INTERVAL = datetime.timedelta(minutes=10)
FAILING_TICK = 2  # the run of this tick fails (no retry); the schedule goes on


def digest(first_iso):
    """The recurring work, say a digest email: for the tick in its meta."""
    tick = litejobs.current_job().meta["tick"]
    number = (datetime.datetime.fromisoformat(tick.replace("Z", "+00:00"))
              - datetime.datetime.fromisoformat(first_iso)) // INTERVAL
    if number == FAILING_TICK:
        print(f"  tick {number} ({tick}): the mail server did not answer")
        raise ConnectionError("mail server did not answer")
    print(f"  tick {number} ({tick}): digest sent")
    return f"digest {number} sent"


def declare(queue, first):
    """What the application runs each time it starts."""
    return queue.schedule("digest", "*/10 * * * *", litejobs.Job(digest, first.isoformat()),
                          tz="Europe/Berlin", overlap="skip")


def main(argv):
    with tempfile.TemporaryDirectory() as folder:
        path = argv[1] if len(argv) > 1 else os.path.join(folder, "recurring.db")
        queue = litejobs.Queue(path)
        schedule = declare(queue, datetime.datetime.now(datetime.timezone.utc))
        first = schedule.next_tick
        again = declare(queue, first)  # a second start: the same schedule, the same tick
        print(f"schedule {schedule.name!r} ({schedule.cron}, {schedule.tz}): first tick "
              f"{first:%H:%M} UTC; declared again, next tick {again.next_tick:%H:%M} UTC; "
              f"{len(queue.schedules())} schedule")

        # Four ticks on time, then the clock jumps over three, then one more.
        for step in (0, 1, 2, 3, 7, 8):
            clock = first + step * INTERVAL + datetime.timedelta(seconds=5)
            print(f"clock {clock:%H:%M:%S}:")
            queue.run_pending(now=clock)

        runs = sorted(queue.jobs(limit=None), key=lambda job: job.id)
        print("runs:")
        for run in runs:
            outcome = repr(run.result) if run.status == litejobs.COMPLETED else run.error_type
            print(f"  job {run.id} for {run.meta['tick']}: {run.status} {outcome}")
        latest = queue.get_schedule("digest")
        print(f"last tick {latest.last_tick:%H:%M} (job {latest.last_job_id}), "
              f"next tick {latest.next_tick:%H:%M}")
        print(f"counts: {queue.counts()}")
        queue.close()
        ticks = [run.meta["tick"] for run in runs]
        expected = [(first + n * INTERVAL).strftime("%Y-%m-%dT%H:%M:%S.000Z")
                    for n in (0, 1, 2, 3, 7, 8)]
        statuses = [run.status for run in runs]
        if ticks != expected or statuses.count(litejobs.FAILED) != 1 \
                or statuses[FAILING_TICK] != litejobs.FAILED \
                or again.next_tick != first:
            print(f"the schedule doubled, skipped or broke: {ticks}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
