"""Waiting in multi-process tests: every wait polls with a bound, never sleeps blind."""

import collections
import os
import time

import pytest

WAIT = 30.0  # seconds: the bound on every wait for a job (pytest-timeout is 120)


def wait_until(predicate, timeout=WAIT, what="the condition", details=lambda: ""):
    """Poll ``predicate`` every 10 ms until it returns something truthy;
    return that, or fail the test after ``timeout`` seconds, with ``details()``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}\n{details()}")
        time.sleep(0.01)


def read_pid(path):
    """The pid a job wrote to ``path``, or None while the file is not there."""
    try:
        with open(path) as handle:
            text = handle.read()
    except FileNotFoundError:
        return None
    return int(text) if text else None


def wait_for_pid(path, timeout=WAIT):
    return wait_until(lambda: read_pid(path), timeout, f"a job to write {path}")


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stat_fields(pid):
    """The fields of ``/proc/PID/stat`` after the command name (state first,
    then ppid, pgrp, session, ...), or None if no process has ``pid``.
    Raises OSError where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None


def process_state(pid):
    """The state letter of process ``pid`` (R, S, T, Z, ...), or None if no
    process has that pid; "?" where there is no /proc to tell."""
    try:
        fields = stat_fields(pid)
    except OSError:  # no /proc here: all os.kill can tell is whether it exists
        return "?" if pid_alive(pid) else None
    return None if fields is None else fields[0]


def process_ended(pid):
    """Whether process ``pid`` has exited: no process has the pid, or it is a
    zombie its parent has yet to reap, which `pid_alive` would still count as
    alive."""
    try:
        fields = stat_fields(pid)
    except OSError:  # no /proc here
        return not pid_alive(pid)
    return fields is None or fields[0] in ("Z", "X")


def live_in_session(sid):
    """Pids of the live processes in session ``sid``, where /proc shows them."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = stat_fields(int(entry))
        except OSError:
            continue
        if fields is not None and int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            pids.append(int(entry))
    return pids


def child_pids(worker):
    """The pids of a `litejobs.Worker`'s worker processes, sorted."""
    return sorted(worker.pids)


def stop_all(workers):
    """Stop every pool, then fail if one would not stop; for fixture teardowns."""
    problems = []
    for worker in workers:
        try:
            worker.stop(grace=0, timeout=30)
        except Exception as exc:  # stop the others first, then report
            problems.append(f"{worker!r}: {type(exc).__name__}: {exc}")
        if worker.alive:
            problems.append(f"{worker!r} is still alive after stop()")
    assert problems == []


def assert_finished(worker, **expected):
    """Assert the pool's count of outcomes, once it has caught up: a waiter
    wakes when the outcome commits, a moment before the pool counts it."""
    wanted = collections.Counter({status.replace("_", " "): n
                                  for status, n in expected.items()})
    wait_until(lambda: worker.finished == wanted, WAIT,
               f"the pool to count {dict(wanted)}", lambda: f"counted {worker.finished}")


def overlap(spans):
    """The most runs open at one moment, of ``spans`` (start, end) as the
    runs read the clock: how many ran at once."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    most = running = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most
