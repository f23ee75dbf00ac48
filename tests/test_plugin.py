"""The pytest plugin: the ``litejobs_queue`` fixture, tested from inside
pytester runs, and how the plugin is registered and kept out of plain imports."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest

import litejobs

WAIT = 60  # seconds, for every subprocess


@pytest.fixture
def pytester(pytester):
    """pytester, in a project that sets what pytest-asyncio (in the test
    extra) asks every project to set, as a user's project would."""
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    return pytester


FIXTURE_BASICS = """
    import pathlib
    import litejobs

    seen = []

    def test_first(litejobs_queue, tmp_path):
        assert isinstance(litejobs_queue, litejobs.Queue)
        path = pathlib.Path(litejobs_queue.path)
        assert path.parent == tmp_path
        assert path.is_relative_to(tmp_path)
        assert path.exists()
        seen.append(litejobs_queue.path)

    def test_second(litejobs_queue, tmp_path):
        assert pathlib.Path(litejobs_queue.path).parent == tmp_path
        assert seen and litejobs_queue.path != seen[0]
        assert litejobs_queue.counts()["pending"] == 0

    def test_each_database_is_empty_and_separate(litejobs_queue):
        assert litejobs_queue.jobs() == []
        litejobs_queue.put("os:getpid")
        assert litejobs_queue.counts()["pending"] == 1
"""


def test_fixture_gives_a_queue_under_tmp_path(pytester):
    pytester.makepyfile(FIXTURE_BASICS)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_fixture_gives_a_queue_under_tmp_path_in_a_subprocess(pytester):
    pytester.makepyfile(FIXTURE_BASICS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=WAIT)
    result.assert_outcomes(passed=3)


def test_delayed_job_runs_through_run_pending_now(pytester):
    pytester.makepyfile(
        """
        import datetime
        import litejobs

        UTC = datetime.timezone.utc

        def double(x):
            return 2 * x

        def test_delayed(litejobs_queue):
            job = litejobs_queue.put(litejobs.Job(double, 21),
                                     begin_after=datetime.timedelta(hours=1))
            assert job.name == __name__ + ":double"
            due = job.begin_after

            assert litejobs_queue.run_pending() == 0
            assert litejobs_queue.run_pending(now=due - datetime.timedelta(seconds=1)) == 0
            assert job.refresh().status == litejobs.PENDING

            assert litejobs_queue.run_pending(now=due + datetime.timedelta(seconds=1)) == 1
            assert job.refresh().status == litejobs.COMPLETED
            assert job.result == 42
            assert job.wait(timeout=5) == 42
            assert litejobs_queue.run_pending(now=due + datetime.timedelta(days=1)) == 0
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


CLOSE_CHECK = """
    import sqlite3
    import pytest
    import litejobs

    saved = []

    def open_connections(queue):
        held = queue._storage._connections  # a list or a dict of them
        return list(held.values()) if isinstance(held, dict) else list(held)

    def test_passes_using_the_queue(litejobs_queue):
        litejobs_queue.put("os:getpid")
        litejobs_queue.run_pending()
        connections = open_connections(litejobs_queue)
        assert connections  # the queue holds an open connection now
        saved.append((litejobs_queue, connections))

    def test_fails_using_the_queue(litejobs_queue):
        litejobs_queue.put("os:getpid")
        saved.append((litejobs_queue, open_connections(litejobs_queue)))
        assert False, "this inner test fails on purpose"

    def test_both_queues_were_closed_at_teardown():
        assert len(saved) == 2
        for queue, connections in saved:
            assert connections
            assert open_connections(queue) == []
            for conn in connections:
                with pytest.raises(sqlite3.ProgrammingError, match="closed"):
                    conn.execute("SELECT 1")
"""


def test_fixture_closes_its_queue_at_teardown(pytester):
    pytester.makepyfile(CLOSE_CHECK)
    result = pytester.runpytest("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "*::test_passes_using_the_queue PASSED*",
        "*::test_fails_using_the_queue FAILED*",
        "*::test_both_queues_were_closed_at_teardown PASSED*",
    ])
    result.stdout.fnmatch_lines(["*this inner test fails on purpose*"])


def test_fixture_is_missing_when_the_entry_point_plugin_is_disabled(pytester):
    """``-p no:litejobs`` removes the fixture: it comes from the plugin
    registered under the entry-point name ``litejobs``."""
    pytester.makepyfile(
        """
        def test_uses_fixture(litejobs_queue):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:litejobs", "-p", "no:cacheprovider",
                                           timeout=WAIT)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'litejobs_queue' not found*"])


def test_importing_litejobs_does_not_import_pytest(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, litejobs; print('pytest' in sys.modules)"],
        capture_output=True, text=True, timeout=WAIT, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_the_subprocess_imports_this_litejobs(tmp_path):
    """The check above is about the same file this test suite exercises."""
    proc = subprocess.run(
        [sys.executable, "-c", "import litejobs; print(litejobs.__file__)"],
        capture_output=True, text=True, timeout=WAIT, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == litejobs.__file__


def test_plugin_is_registered_through_the_pytest11_entry_point():
    found = [ep for ep in importlib.metadata.entry_points(group="pytest11")
             if ep.name == "litejobs"]
    assert len(found) == 1
    assert found[0].value == "litejobs"
    assert found[0].load() is litejobs


def test_plugin_is_active_in_this_session(pytestconfig):
    assert pytestconfig.pluginmanager.get_plugin("litejobs") is litejobs
    assert pytestconfig.pluginmanager.has_plugin("litejobs-fixtures")


WORKER_FIXTURE = """
    import os
    import signal

    import pytest

    import litejobs

    def double(x):
        return 2 * x

    def worker_pid():
        return os.getpid()

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def test_jobs_run_in_the_pools_processes(litejobs_worker, litejobs_queue):
        job = litejobs_queue.put(litejobs.Job(double, 21))
        assert job.wait(timeout=30) == 42
        assert litejobs_queue.put(worker_pid).wait(timeout=30) != os.getpid()
        assert litejobs_worker.alive and litejobs_worker.processes == 2

    def test_a_job_that_kills_its_process_fails_the_test(litejobs_worker, litejobs_queue):
        job = litejobs_queue.put(litejobs.Job(die), max_interruptions=0)
        with pytest.raises(litejobs.JobFailed):
            job.wait(timeout=30)
"""


def test_worker_fixture_runs_jobs_and_reports_crashed_processes(pytester):
    pytester.makepyfile(WORKER_FIXTURE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=WAIT)
    # The crash fails the second test at teardown, as an error.
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*litejobs worker processes died unexpectedly*",
                                 "*was killed by SIGKILL while running job 1*"])


POSTGRES_FIXTURE = """
    import litejobs
    import pytest

    seen = []

    @pytest.mark.parametrize("round", [1, 2])
    def test_a_fresh_postgres_queue_each_time(litejobs_queue, round):
        assert litejobs_queue.path.startswith("postgresql://")
        assert "search_path" in litejobs_queue.path
        assert litejobs_queue.path not in seen and litejobs_queue.jobs() == []
        seen.append(litejobs_queue.path)
        job = litejobs_queue.put(litejobs.Job(abs, -round))
        litejobs_queue.run_pending()
        assert job.refresh().result == round
"""


def test_with_a_postgres_url_the_fixture_gives_a_schema_of_its_own_and_drops_it(
        pytester, monkeypatch, postgres_url):
    import psycopg
    monkeypatch.setenv("LITEJOBS_TEST_POSTGRES", postgres_url)
    pytester.makepyfile(POSTGRES_FIXTURE)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    with psycopg.connect(postgres_url) as conn:
        left = conn.execute("SELECT count(*) FROM pg_namespace "
                            "WHERE nspname LIKE 'litejobs_test_%'").fetchone()[0]
    assert left == 0
