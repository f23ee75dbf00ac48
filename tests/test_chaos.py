"""The kill -9 chaos soak of ``bench/chaos.py``, at CI size.

2,000 jobs run in two ``python -m litejobs worker`` pools of two processes on
one file, while worker processes and whole pools are killed with SIGKILL and
worker processes are stopped past their lease, every 50-500 ms.  Then the job
table and a separate audit table of every run are checked: nothing lost,
nothing run that was never put, one accepted completion per job, a sound
file, nothing left active or pending.  Run with ``-s`` to see the figures.

The soak bounds each of its waits and kills every process it started before
it returns, or raises; the run's folder (databases, pool logs, and
``events.log``, the actions taken and when) stays under ``tmp_path``.  The
seed is fixed; ``LITEJOBS_CHAOS_SEED`` replays another one.
"""

import os
import sys

import pytest

BENCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
if BENCH_DIR not in sys.path:
    sys.path.append(BENCH_DIR)

import chaos  # noqa: E402

SEED = int(os.environ.get("LITEJOBS_CHAOS_SEED", "1234"))
JOBS = 2_000


# The soak stops its chaos after 60 s and gives the pools 40 s to drain; a
# run takes 25-40 s on 2 cores.  The suite's 120 s default leaves too little
# room above those bounds for stopping the pools and the checks.
@pytest.mark.timeout(240)
def test_kill_9_chaos_loses_nothing_and_completes_each_job_once(tmp_path):
    print(f"\nchaos soak: seed {SEED}, {JOBS:,} jobs, in {tmp_path}")
    figures = chaos.soak(str(tmp_path), jobs=JOBS, seed=SEED, lease=2.0, work_ms=20.0,
                         chaos_seconds=60.0, drain_seconds=40.0)
    print(chaos.format_table(figures))
    check(figures)


@pytest.mark.timeout(300)
def test_chaos_across_hosts_on_postgresql_loses_nothing_and_completes_each_job_once(
        tmp_path, own_postgres_server):
    print(f"\nchaos soak on PostgreSQL: seed {SEED}, {JOBS:,} jobs, in {tmp_path}")
    figures = chaos.soak(str(tmp_path), jobs=JOBS, seed=SEED, lease=2.0, work_ms=20.0,
                         chaos_seconds=60.0, drain_seconds=60.0, server=own_postgres_server)
    print(chaos.format_table(figures))
    assert figures.restarts == 1 and figures.cuts > 0 and figures.pool_pauses > 0, (
        figures.events[-40:])
    check(figures)


def check(figures):
    """Every check of the soak, with the run's last events when one fails."""
    details = (f"{figures.backend}, seed {SEED}; the run's events, last 40:\n"
               + "\n".join(figures.events[-40:]))
    # The chaos happened: both kinds of kill and pauses, while jobs ran.
    assert figures.child_kills > 0 and figures.pool_kills > 0 and figures.pauses > 0, details
    assert figures.lost == 0, (figures.statuses, details)
    assert figures.missing == 0, details
    assert figures.unexpected == 0, details
    assert figures.bad_completions == [], details
    assert figures.jobs_never_run == 0, details
    assert figures.same_attempt_reruns == 0, details
    assert figures.integrity == ("ok" if figures.backend == "SQLite" else "not applicable"), \
        details
    for status in ("active", "pending", "waiting"):
        assert figures.statuses.get(status, 0) == 0, (status, details)
    assert figures.orphans_outliving == [], details
    assert figures.pool_exits == [], details
    assert figures.stop_problems == [], details
    assert figures.drain_timed_out == "", details
    assert figures.problems == [], details
