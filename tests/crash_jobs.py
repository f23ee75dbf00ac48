"""Jobs for tests/test_crash_points.py, importable by name in every process
that runs them (``run_pending`` subprocesses and pool children).

Each job appends one JSON line per run to a run log: its tag, job id,
attempt and pid.  The log is written with a single ``O_APPEND`` write, so
lines from different processes never mix, and its order is the order in
which the runs happened.
"""

import json
import os

import litejobs


def record_run(log_path, tag, **extra):
    job = litejobs.current_job()
    entry = {"tag": tag, "job": job.id, "attempt": job.attempt, "pid": os.getpid(), **extra}
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())
    finally:
        os.close(fd)


def arm_once(once_path):
    """Arm a crash point held back by an existing ``LITEJOBS_TEST_CRASH_ONCE``
    file: remove that file, so the next process to reach the point dies.
    Only the first call arms; a re-run of the arming job does not arm again."""
    try:
        os.close(os.open(once_path + ".armed", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return
    os.remove(once_path)


def step(log_path, tag, arm=None):
    """Record the run; with ``arm``, then arm the crash point (see `arm_once`)."""
    record_run(log_path, tag)
    if arm is not None:
        arm_once(arm)
    return tag


def gather(log_path, tag, *parts):
    """A postprocess: record the run with the parts as it sees them, and
    return them as ``[[id, status, result], ...]``."""
    seen = [[part.id, part.status, part.result] for part in parts]
    record_run(log_path, tag, parts=seen)
    return seen


def note(log_path, tag, value):
    """A callback: record the run with the value it was given."""
    record_run(log_path, tag, value=value)
    return value


def hand_on(log_path, tag):
    """Record the run, then return a job to wait for: it records a run of its
    own, tagged ``tag + "-returned"``."""
    record_run(log_path, tag)
    return litejobs.Job(step, log_path, tag + "-returned")
