"""The peer's side of the benchmarks: huey with its SQLite storage, on the
file named by $BENCH_HUEY_DB, run by ``huey_consumer bench.huey_tasks.huey``."""

import os
import time

from huey import SqliteHuey

# Defaults, as huey ships: results are stored, like litejobs stores each outcome.
huey = SqliteHuey(filename=os.environ.get("BENCH_HUEY_DB", "huey-bench.db"))


@huey.task()
def noop():
    """The job every drain runs."""


@huey.task()
def stamp(path):
    """Write when it ran: the first and last tasks of a drain time it."""
    with open(path, "w") as handle:
        handle.write(repr(time.time()))
