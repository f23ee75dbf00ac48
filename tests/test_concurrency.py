"""Concurrency: threads and processes sharing one litejobs database file.

Every job and process target is a module-level function of this module: jobs
are stored by reference (``test_concurrency:record``), and ``spawn`` children
import this module by name from the ``sys.path`` they inherit from pytest.

No test sleeps to wait for something: threads start together on a Barrier,
processes on a multiprocessing Barrier, and every join or wait has a timeout.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import pickle
import sqlite3
import subprocess
import sys
import threading
import time
import traceback

import pytest

import litejobs
from litejobs import Job, Queue

SPAWN = multiprocessing.get_context("spawn")
WAIT = 60.0  # seconds: the bound on every join and wait (pytest-timeout is 120)


# -- jobs (run by run_pending, resolved by name) ------------------------------


def record(proc, index):
    """A job whose arguments say who put it: (process or thread, index)."""
    return [proc, index]


def append_line(log_path, index):
    """Append one line per run, with O_APPEND, so a double run shows as a
    duplicate line and a lost job as a missing one."""
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{index} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


# -- process targets ------------------------------------------------------------


def _report_child_error(error_dir, name):
    """Write the current traceback where the parent looks for it."""
    with open(os.path.join(error_dir, f"{name}.traceback"), "w") as handle:
        handle.write(traceback.format_exc())


def child_put_records(path, proc, count, durable, barrier, error_dir):
    """Open the queue after every child is ready, then put ``count`` jobs."""
    try:
        barrier.wait(timeout=WAIT)
        queue = Queue(path, durable=durable)
        try:
            for index in range(count):
                queue.put(Job(record, proc, index))
        finally:
            queue.close()
    except BaseException:
        _report_child_error(error_dir, f"child-{proc}")
        raise  # and exit non-zero


def child_put_through(queue, results):
    """Put one job through a Queue that arrived pickled."""
    try:
        job = queue.put(Job(record, "child", os.getpid()))
        results.put(("ok", job.id, queue.path, queue.durable, os.getpid()))
    except BaseException:
        results.put(("error", traceback.format_exc()))
        raise


def child_put_appenders(path, log_path, count, error_dir):
    """The producer of the put-while-running tests."""
    try:
        queue = Queue(path, durable=False)
        try:
            for index in range(count):
                queue.put(Job(append_line, log_path, index))
        finally:
            queue.close()
    except BaseException:
        _report_child_error(error_dir, "producer")
        raise


# -- helpers ----------------------------------------------------------------------


def _run_threads(targets):
    """Run each callable in its own thread, all released together by one
    Barrier; return the exceptions that escaped (as formatted tracebacks)."""
    errors = []
    barrier = threading.Barrier(len(targets))

    def run(target):
        try:
            barrier.wait(timeout=WAIT)
            target()
        except BaseException:
            errors.append(traceback.format_exc())

    threads = [threading.Thread(target=run, args=(t,), daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=WAIT)
    assert not [t for t in threads if t.is_alive()], "a thread did not finish in time"
    return errors


def _child_errors(error_dir):
    found = sorted(p for p in os.listdir(error_dir) if p.endswith(".traceback"))
    return "\n".join(f"--- {name}\n" + open(os.path.join(error_dir, name)).read()
                     for name in found)


def _join_all(procs, error_dir):
    """Join every process with a timeout; kill stragglers; assert exit code 0,
    showing any traceback a child wrote."""
    deadline = time.monotonic() + WAIT
    for proc in procs:
        proc.join(timeout=max(0.0, deadline - time.monotonic()))
    stuck = [p for p in procs if p.is_alive()]
    for proc in stuck:
        proc.kill()
        proc.join(timeout=10)
    assert not stuck, f"processes did not finish within {WAIT}s: {stuck}"
    codes = {p.name: p.exitcode for p in procs}
    assert all(code == 0 for code in codes.values()), (
        f"exit codes {codes}\n{_child_errors(error_dir)}")
    assert _child_errors(error_dir) == ""


def _all_jobs(queue):
    jobs = queue.jobs(limit=100_000)
    assert len(jobs) == sum(queue.counts().values())
    return jobs


def _assert_each_pair_once(queue, owners, per_owner):
    """Exactly owners x range(per_owner) jobs exist, with distinct ids, and
    each job's arguments name one (owner, index) pair exactly once."""
    jobs = _all_jobs(queue)
    expected = len(owners) * per_owner
    assert queue.counts() == {"pending": expected, "waiting": 0, "active": 0, "completed": 0,
                              "failed": 0, "cancelled": 0}
    assert len(jobs) == expected
    assert len({job.id for job in jobs}) == expected
    pairs = collections.Counter(tuple(job.args) for job in jobs)
    assert set(pairs) == {(owner, i) for owner in owners for i in range(per_owner)}
    assert set(pairs.values()) == {1}
    assert {job.name for job in jobs} == {f"{__name__}:record"}


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "jobs.db")


@pytest.fixture
def error_dir(tmp_path):
    path = tmp_path / "child-errors"
    path.mkdir()
    return str(path)


# -- 1. threads -------------------------------------------------------------------

PER_THREAD = 300


def test_threads_share_one_queue(db_path):
    queue = Queue(db_path)
    ids = {0: [], 1: []}
    connections = {}

    def putter(owner):
        def put_all():
            for index in range(PER_THREAD):
                ids[owner].append(queue.put(Job(record, owner, index)).id)
            connections[owner] = queue._storage._connection()
        return put_all

    errors = _run_threads([putter(0), putter(1)])

    assert errors == [], "\n".join(errors)
    assert len(ids[0]) == len(ids[1]) == PER_THREAD
    assert len(set(ids[0]) | set(ids[1])) == 2 * PER_THREAD
    _assert_each_pair_once(queue, owners=[0, 1], per_owner=PER_THREAD)
    # Each thread wrote through a connection of its own: a shared one would
    # silently merge the threads' transactions rather than fail.
    assert connections[0] is not connections[1]
    queue.close()


def test_threads_each_open_their_own_queue_on_the_same_new_file(db_path):
    # The file does not exist yet: both threads create and migrate it at once.
    assert not os.path.exists(db_path)
    ids = {0: [], 1: []}

    def putter(owner):
        def put_all():
            with Queue(db_path) as own:
                for index in range(PER_THREAD):
                    ids[owner].append(own.put(Job(record, owner, index)).id)
        return put_all

    errors = _run_threads([putter(0), putter(1)])

    assert errors == [], "\n".join(errors)
    assert len(set(ids[0]) | set(ids[1])) == 2 * PER_THREAD
    with Queue(db_path) as queue:
        _assert_each_pair_once(queue, owners=[0, 1], per_owner=PER_THREAD)


# -- 2. processes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("durable", "per_process"),
    [pytest.param(False, 300, id="durable=False-300-each"),
     pytest.param(True, 50, id="durable=True-50-each")],
)
def test_two_spawned_processes_put_concurrently(db_path, error_dir, durable, per_process):
    # The file does not exist yet: the children race to create it, too.
    barrier = SPAWN.Barrier(2)
    procs = [SPAWN.Process(target=child_put_records, name=f"putter-{proc}",
                           args=(db_path, proc, per_process, durable, barrier, error_dir))
             for proc in (0, 1)]
    for proc in procs:
        proc.start()
    _join_all(procs, error_dir)

    with Queue(db_path) as queue:
        _assert_each_pair_once(queue, owners=[0, 1], per_owner=per_process)


def test_a_child_exception_surfaces(db_path, error_dir):
    """The harness above would notice a failing child: prove it on one."""
    broken = os.path.join(os.path.dirname(db_path), "missing-dir", "jobs.db")
    barrier = SPAWN.Barrier(1)
    proc = SPAWN.Process(target=child_put_records, name="putter-broken",
                         args=(broken, 0, 1, False, barrier, error_dir))
    proc.start()
    proc.join(timeout=WAIT)
    assert not proc.is_alive()
    assert proc.exitcode == 1
    assert "litejobs.DatabaseError" in _child_errors(error_dir)
    with pytest.raises(AssertionError, match="DatabaseError"):
        _join_all([proc], error_dir)


# -- 3. a Queue pickled to a spawn child --------------------------------------------


def test_queue_pickled_to_a_spawn_child(db_path):
    queue = Queue(db_path, durable=False, busy_timeout=12.5)
    first = queue.put(Job(record, "parent", os.getpid()))  # connection open here
    results = SPAWN.Queue()
    proc = SPAWN.Process(target=child_put_through, args=(queue, results))
    proc.start()
    try:
        outcome = results.get(timeout=WAIT)
    finally:
        proc.join(timeout=WAIT)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=10)
    assert outcome[0] == "ok", outcome[1]
    _, job_id, child_path, child_durable, child_pid = outcome
    assert proc.exitcode == 0
    assert child_path == queue.path
    assert child_durable is False
    assert child_pid != os.getpid()

    # The parent sees the child's job, through the connection it already had.
    job = queue.get(job_id)
    assert job.id != first.id
    assert job.status == litejobs.PENDING
    assert job.name == f"{__name__}:record"
    assert job.args == ("child", child_pid)
    assert queue.counts()["pending"] == 2
    assert queue.run_pending() == 2
    assert job.wait(timeout=WAIT) == ["child", child_pid]
    queue.close()


def test_queue_pickles_as_its_path_and_options(db_path):
    queue = Queue(db_path, durable=False, busy_timeout=7.0)
    queue.put(Job(record, "x", 0))
    copy = pickle.loads(pickle.dumps(queue))
    assert copy is not queue
    assert (copy.path, copy.durable, copy._storage.busy_timeout) == (db_path, False, 7.0)
    assert [job.args for job in copy.jobs()] == [("x", 0)]
    copy.close()
    queue.close()


# -- 4. run while another process puts -----------------------------------------------

PRODUCED = 300


def _start_producer(db_path, log_path, error_dir):
    proc = SPAWN.Process(target=child_put_appenders, name="producer",
                         args=(db_path, log_path, PRODUCED, error_dir))
    proc.start()
    return proc


def _assert_each_ran_once(queue, log_path, ran):
    with open(log_path) as handle:
        lines = handle.read().splitlines()
    runs = collections.Counter(int(line.split()[0]) for line in lines)
    doubles = {index: n for index, n in runs.items() if n != 1}
    assert doubles == {}, f"jobs that ran more than once: {doubles}"
    assert set(runs) == set(range(PRODUCED)), "jobs lost"
    assert len(lines) == PRODUCED
    assert ran == PRODUCED
    assert queue.counts() == {"pending": 0, "waiting": 0, "active": 0, "completed": PRODUCED,
                              "failed": 0, "cancelled": 0}


def test_run_pending_while_another_process_puts(db_path, error_dir, tmp_path):
    log_path = str(tmp_path / "runs.log")
    queue = Queue(db_path)
    proc = _start_producer(db_path, log_path, error_dir)
    ran = 0
    deadline = time.monotonic() + WAIT
    try:
        while True:
            # Decided before the pass: once the producer has exited, this pass
            # sees every job it put, and runs them all.
            producer_done = not proc.is_alive()
            ran += queue.run_pending()
            if producer_done:
                break
            assert time.monotonic() < deadline, f"producer still running after {WAIT}s"
            proc.join(timeout=0.005)  # a bounded wait for the producer, not a sleep
    finally:
        _join_all([proc], error_dir)

    _assert_each_ran_once(queue, log_path, ran)
    queue.close()


def test_two_runner_threads_while_another_process_puts(db_path, error_dir, tmp_path):
    """Two threads claiming from the same queue at once still run each job once."""
    log_path = str(tmp_path / "runs.log")
    queue = Queue(db_path)
    producer_exited = threading.Event()
    ran = []

    def runner():
        count = 0
        while True:
            done = producer_exited.is_set()
            count += queue.run_pending()
            if done:
                break
            producer_exited.wait(timeout=0.005)
        ran.append(count)

    errors = []

    def run_catching():
        try:
            runner()
        except BaseException:
            errors.append(traceback.format_exc())

    proc = _start_producer(db_path, log_path, error_dir)
    threads = [threading.Thread(target=run_catching, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        _join_all([proc], error_dir)
    finally:
        producer_exited.set()
        for thread in threads:
            thread.join(timeout=WAIT)
    assert not [t for t in threads if t.is_alive()]
    assert errors == [], "\n".join(errors)
    assert len(ran) == 2
    _assert_each_ran_once(queue, log_path, sum(ran))
    queue.close()


# -- 4. a busy write lock ---------------------------------------------------------------


def test_a_put_inside_this_threads_own_write_transaction_fails_after_busy_timeout(db_path):
    """Forgetting conn= inside one's own BEGIN IMMEDIATE: the put waits for a
    lock its own thread holds.  It gives up after busy_timeout, no later,
    with a public error that says what to do."""
    queue = Queue(db_path, busy_timeout=0.6)
    app = sqlite3.connect(db_path, isolation_level=None)
    try:
        app.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
        app.execute("BEGIN IMMEDIATE")
        app.execute("INSERT INTO orders VALUES (1)")
        began = time.monotonic()
        with pytest.raises(litejobs.DatabaseBusy) as caught:
            queue.put(Job(record, "x", 0))
        waited = time.monotonic() - began
        queue.put(Job(record, "y", 0), conn=app)  # what it should have done
        app.execute("COMMIT")
    finally:
        app.close()
    assert isinstance(caught.value, litejobs.DatabaseError)
    assert 0.5 <= waited < 1.8, waited  # busy_timeout in all, not several rounds of it
    message = str(caught.value)
    assert f"held by this very process (pid {os.getpid()})" in message
    assert "conn=" in message and "busy_timeout" in message
    assert [job.args for job in queue.jobs()] == [("y", 0)]


def test_a_busy_error_names_the_process_holding_the_lock(db_path, tmp_path):
    queue = Queue(db_path, busy_timeout=0.3)
    held = tmp_path / "held"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time, pathlib\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('BEGIN IMMEDIATE')\n"
        "pathlib.Path(sys.argv[2]).touch()\n"
        "time.sleep(60)\n"), db_path, str(held)])
    try:
        deadline = time.monotonic() + WAIT
        while not held.exists():
            assert time.monotonic() < deadline and holder.poll() is None
            time.sleep(0.01)
        with pytest.raises(litejobs.DatabaseBusy, match=f"held by process {holder.pid}"):
            queue.put(Job(record, "x", 0))
    finally:
        holder.kill()
        holder.wait(timeout=WAIT)
    assert queue.put(Job(record, "x", 0)).id == 1  # free again
