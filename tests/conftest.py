import contextlib
import datetime
import os
import re
import signal
import sqlite3
import subprocess
import sys

import pytest

from waiting import WAIT, stop_all, wait_until


def pytest_sessionstart(session):
    """Compile litejobs and the modules worker processes import, once, into
    ``__pycache__``.  The suite starts thousands of processes (worker
    processes, commands), each importing litejobs; where bytecode is not
    written (``PYTHONDONTWRITEBYTECODE``, and ``-B``, which spawned worker
    processes inherit), each would compile its 14,000 lines again, a sixth of
    a second apiece.  Processes still read the compiled files."""
    import glob
    import py_compile

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for path in [os.path.join(root, "litejobs.py"),
                 *glob.glob(os.path.join(root, "tests", "*.py")),
                 *glob.glob(os.path.join(root, "bench", "*.py"))]:
        with contextlib.suppress(OSError, py_compile.PyCompileError):
            py_compile.compile(path, doraise=True)


ENDED_BY_SCAN = """
SELECT queue, status, count(*) FROM litejobs_jobs
WHERE status IN ('completed', 'failed', 'cancelled') GROUP BY queue, status
"""


def ended_tallies_disagree(path):
    """Where the tallies `Queue.counts` reads of the ended jobs in the
    database at ``path`` differ from a scan of its rows: {(queue, status):
    (tallied, scanned)}; {} for a file that is not a readable litejobs one."""
    try:
        with open(path, "rb") as handle:
            if handle.read(16) != b"SQLite format 3\x00":
                return {}
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except OSError:
        return {}
    try:
        tallied = {(queue, status): jobs for queue, status, jobs in conn.execute(
            "SELECT queue, status, jobs FROM litejobs_ended_counts WHERE jobs != 0")}
        scanned = {(queue, status): jobs for queue, status, jobs in conn.execute(ENDED_BY_SCAN)}
    except sqlite3.Error:  # not litejobs', older, corrupt on purpose, or locked
        return {}
    finally:
        conn.close()
    return {key: (tallied.get(key, 0), scanned.get(key, 0))
            for key in tallied.keys() | scanned.keys() if tallied.get(key) != scanned.get(key)}


@pytest.fixture(autouse=True)
def ended_tallies_stay_exact(tmp_path):
    """After every test, every litejobs database it left in its temporary
    folder counts its ended jobs exactly: whatever path ended, re-opened or
    deleted them, the tallies followed."""
    yield
    for path in sorted(tmp_path.rglob("*")):
        if path.is_file() and not path.name.endswith(("-wal", "-shm", "-journal")):
            assert ended_tallies_disagree(path) == {}, path


@pytest.fixture(scope="session")
def postgres_server():
    """One throwaway PostgreSQL server for the whole run (tests/postgres_server.py).
    Where none can run here, the tests that need one are skipped, saying how
    to get one."""
    import postgres_server as servers
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed: python -m pip install -e '.[test]'")
    if servers.binaries() is None:
        pytest.skip(f"no PostgreSQL server binaries: {servers.HOW_TO_GET_THEM}")
    server = servers.Server().start()
    yield server
    server.stop()


@pytest.fixture
def own_postgres_server(postgres_server):
    """A throwaway PostgreSQL server of this test's own, which it may stop,
    restart and cut connections of without disturbing other tests."""
    import postgres_server as servers
    server = servers.Server().start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server):
    """The URL of a fresh, empty database on the run's PostgreSQL server."""
    return postgres_server.new_database()


@pytest.fixture(params=["sqlite", "postgres"])
def each_backend(request, tmp_path):
    """A fresh queue on each backend in turn: for the modules whose every test
    must hold on both (they name it ``q``)."""
    import litejobs
    if request.param == "postgres":
        queue = litejobs.Queue(request.getfixturevalue("postgres_url"))
    else:
        queue = litejobs.Queue(tmp_path / "litejobs.db")
    yield queue
    queue.close()


@pytest.fixture
def sqlite_q(litejobs_queue):
    """A queue on SQLite, for what only SQLite has (its connections' rules)."""
    return litejobs_queue


@pytest.fixture
def q(litejobs_queue):
    """The plugin's queue, under a short name."""
    return litejobs_queue


@pytest.fixture
def now():
    """A clock reading one second ahead, so jobs the test puts right away are due."""
    return datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=1)


# -- pools as an operator runs them: ``python -m litejobs worker`` ------------------------


class CliPool:
    """A ``python -m litejobs worker`` process (or a script running a pool) in
    a session of its own, so that its group holds it and its children,
    logging to a file: nobody reads a pipe while it runs, and a full pipe
    would block its logging."""

    def __init__(self, command, log_path, env, cwd):
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, env=env, cwd=cwd, start_new_session=True)

    @property
    def pid(self):
        return self.proc.pid

    def log(self):
        return self.log_path.read_text(errors="replace")

    def child_pids(self):
        """The worker processes it started, from its log (at --log-level debug)."""
        return [int(pid) for pid in re.findall(r"started child \d+ \(pid (\d+)\)", self.log())]

    def send(self, signum):
        os.kill(self.proc.pid, signum)

    def wait_exit(self, timeout=20.0):
        """The exit status, once the pool has exited; AssertionError after ``timeout``."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"pool pid {self.pid} still running after {timeout}s; "
                                 f"its log:\n{self.log()}") from None

    def wait_log(self, text, timeout=WAIT):
        wait_until(lambda: text in self.log(), timeout, f"{text!r} in the pool's log",
                   lambda: f"exit status {self.proc.poll()}; log:\n{self.log()}")

    def terminate_and_wait(self, timeout=WAIT):
        """SIGTERM (a graceful stop); the exit status."""
        self.send(signal.SIGTERM)
        return self.wait_exit(timeout)

    def stop(self):
        """SIGTERM, as a service manager stops it, once its handlers are in
        place (it logs that it serves); it must exit 0."""
        self.wait_log(" serving ")
        assert self.terminate_and_wait() == 0, self.log()

    def kill_group(self):
        """SIGKILL the supervisor and its children, wherever the test left them."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)  # a stopped supervisor
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # its group: it and its children
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


class CliPools:
    """Starts `CliPool`s under ``tmp_path``; `kill_all` ends every one of them."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.pools = []

    def start(self, db, *options, env=None):
        """``python -m litejobs worker db *options``, with the tests folder and
        the repository importable (`hostile_jobs.cli_env`) unless ``env``."""
        return self.run([sys.executable, "-m", "litejobs", "worker", str(db),
                         *map(str, options)], env=env)

    def run(self, command, env=None):
        """Any ``command`` that runs a pool, handled as `start` handles one."""
        from hostile_jobs import cli_env

        pool = CliPool(command, self.tmp_path / f"pool-{len(self.pools) + 1}.log",
                       cli_env() if env is None else env, self.tmp_path)
        self.pools.append(pool)
        return pool

    def kill_all(self):
        for pool in self.pools:
            pool.kill_group()
        return [pool.pid for pool in self.pools if pool.proc.poll() is None]


@pytest.fixture
def cli_pools(tmp_path):
    """Start ``python -m litejobs worker`` pools (`CliPools`); every one still
    running is killed, with its worker processes, at the end of the test."""
    pools = CliPools(tmp_path)
    try:
        yield pools
    finally:
        still = pools.kill_all()
        assert not still, f"pools still running after SIGKILL: {still}"


# -- pools in this process --------------------------------------------------------


@pytest.fixture
def pool(q):
    """Start a pool and stop it (at once) at teardown, whatever happened:
    the pools of the tests of pools, on the ``q`` of the test's module.

    ``pool(target=q, processes=1, **options)`` starts ``Worker(target, ...)``;
    with ``through_queue=True`` it starts it through ``target.worker(...)``.
    """
    import litejobs
    started = []

    def start(target=None, *, through_queue=False, processes=1, **options):
        target = q if target is None else target
        if through_queue:
            worker = target.worker(processes=processes, **options)
        else:
            worker = litejobs.Worker(target, processes=processes, **options)
            started.append(worker)
            worker.start()
        if worker not in started:
            started.append(worker)
        assert worker.alive
        return worker

    yield start
    stop_all(started)
