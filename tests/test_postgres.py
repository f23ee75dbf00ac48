"""What only PostgreSQL has: URLs and passwords, the server's clock, LISTEN
and NOTIFY, advisory locks, and a server that restarts or cuts connections
under a running pool.  What both backends share is tested on both
(tests/test_storage_contract.py, test_composition*.py, test_worker.py).

Every test runs on the run's throwaway server (conftest ``postgres_server``),
but those that restart a server, which start one of their own."""

from __future__ import annotations

import concurrent.futures
import datetime
import json
import pickle
import select
import subprocess
import threading
import sys
import time
import urllib.parse

import pytest

import litejobs
import sample_jobs
from litejobs import COMPLETED, PENDING, Job
from backends import outsider, write_lock_held
from waiting import WAIT, wait_until


def with_password(url, password):
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(
        netloc=f"{parts.username}:{password}@{parts.hostname}:{parts.port}"))


def test_a_url_without_psycopg_installed_names_the_extra(monkeypatch, postgres_url):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg raises ImportError
    with pytest.raises(litejobs.DatabaseError, match=r"pip install 'litejobs\[postgres\]'"):
        litejobs.Queue(postgres_url)


def test_importing_litejobs_never_imports_psycopg():
    found = subprocess.run([sys.executable, "-c", "import sys, litejobs; "
                            "print('psycopg' in sys.modules)"],
                           capture_output=True, text=True, timeout=60)
    assert found.stdout.strip() == "False", found.stderr


def test_the_password_of_a_url_is_never_shown_nor_pickled_but_pools_still_connect(
        postgres_url, tmp_path):
    url = with_password(postgres_url, "hunter2-secret")
    q = litejobs.Queue(url)
    assert "hunter2" not in q.path and "hunter2" not in repr(q)
    assert b"hunter2" not in pickle.dumps(q)
    job = q.put(Job(sample_jobs.add, 1, 2))
    assert b"hunter2" not in pickle.dumps(job)
    with q.worker(processes=1):  # spawned worker processes connect as the pool does
        assert job.wait(timeout=WAIT) == 3
    status = subprocess.run([sys.executable, "-m", "litejobs", "status", url],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert "hunter2" not in status.stdout + status.stderr
    q.close()


def test_times_are_the_servers_even_on_a_host_whose_clock_is_an_hour_behind(
        postgres_url, monkeypatch):
    real = time.time
    monkeypatch.setattr(litejobs.time, "time", lambda: real() - 3600)
    q = litejobs.Queue(postgres_url)
    job = q.put(Job(sample_jobs.add, 1, 1), begin_after=60)
    assert job.created_at.timestamp() == pytest.approx(real(), abs=5)
    assert job.begin_after.timestamp() == pytest.approx(real() + 60, abs=5)
    assert q.now() == pytest.approx(real(), abs=5)
    # A run claims it only once the server's clock says it is due.
    assert q.run_pending() == 0
    token, claimed = q._storage.claim(owner="late-host", queues=None, now=q.now(),
                                      expires=q.now() + 30, limit=5)
    assert claimed == []
    q.close()


def test_a_commit_that_changes_jobs_wakes_a_listener_without_polling(postgres_url):
    q = litejobs.Queue(postgres_url)
    watch = q._storage.change_watch()
    try:
        watch.written()  # nothing yet
        other = litejobs.Queue(postgres_url)
        other.put(Job(sample_jobs.add, 1, 1))
        readable, _, _ = select.select([watch.fd], [], [], WAIT)
        assert readable == [watch.fd]
        assert watch.written()
        assert not watch.written()  # read once
        other.close()
    finally:
        watch.close()
        q.close()


def test_puts_of_one_key_at_once_from_many_connections_make_one_job(postgres_url):
    queues = [litejobs.Queue(postgres_url) for _ in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda q: q.put(Job(sample_jobs.add, 1, 1), key="only-one").id,
                           queues))
    assert len(ids) == 1
    assert queues[0].counts()["pending"] == 1
    for q in queues:
        q.close()


def test_processes_opening_a_new_database_at_once_migrate_it_once(postgres_url):
    script = ("import sys, litejobs; q = litejobs.Queue(sys.argv[1]); "
              "print(q.put(litejobs.Job(abs, -1)).id)")
    runs = [subprocess.Popen([sys.executable, "-c", script, postgres_url],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(4)]
    outputs = [run.communicate(timeout=60) for run in runs]
    assert [run.returncode for run in runs] == [0] * 4, outputs
    assert sorted(int(out) for out, _ in outputs) == [1, 2, 3, 4]


def test_litejobs_leaves_the_applications_tables_and_settings_alone(postgres_url):
    import psycopg
    with psycopg.connect(postgres_url, autocommit=True) as app:
        app.execute("CREATE TABLE orders (id integer PRIMARY KEY, item text)")
        app.execute("INSERT INTO orders VALUES (1, 'book')")
    q = litejobs.Queue(postgres_url)
    q.put(Job(sample_jobs.add, 1, 1))
    with psycopg.connect(postgres_url, autocommit=True) as app:
        assert app.execute("SELECT * FROM orders").fetchall() == [(1, "book")]
        tables = {name for name, in app.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
    assert tables == {"orders", "litejobs_jobs", "litejobs_workers", "litejobs_ended_counts",
                      "litejobs_schema", "litejobs_schedules", "litejobs_ticks",
                      "litejobs_paused", "litejobs_quotas", "litejobs_starts"}
    q.close()


def test_put_through_an_autocommit_connection_with_no_transaction_is_refused(postgres_url):
    import psycopg
    q = litejobs.Queue(postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as app:
        with pytest.raises(ValueError, match="autocommit"):
            q.put(Job(sample_jobs.add, 1, 1), conn=app)
    with pytest.raises(TypeError, match="psycopg.Connection"):
        q.put(Job(sample_jobs.add, 1, 1), conn=object())
    assert q.counts()["pending"] == 0
    q.close()


# -- a server that goes away --------------------------------------------------------------


def test_a_pool_survives_a_server_restart_and_a_cut_connection_and_loses_nothing(
        own_postgres_server, caplog):
    url = own_postgres_server.new_database()
    q = litejobs.Queue(url)
    database = urllib.parse.urlsplit(url).path.lstrip("/")
    first = q.put_many([Job(sample_jobs.add, i, 0) for i in range(50)])
    with q.worker(processes=2, lease=2) as pool:
        wait_until(lambda: q.counts()["completed"] == 50, WAIT, "the first jobs")
        own_postgres_server.restart()
        second = q.put_many([Job(sample_jobs.add, i, 0) for i in range(50)])
        assert own_postgres_server.terminate_connections(database) > 0  # the pool's, and q's
        third = q.put_many([Job(sample_jobs.add, i, 0) for i in range(50)])
        own_postgres_server.halt()
        with pytest.raises(litejobs.DatabaseUnreachable, match="cannot reach PostgreSQL"):
            q.put(Job(sample_jobs.add, 1, 1))
        time.sleep(1.0)  # on purpose: the pool runs into the outage
        own_postgres_server.resume()
        fourth = q.put_many([Job(sample_jobs.add, i, 0) for i in range(50)])
        wait_until(lambda: q.counts()["completed"] == 200, WAIT, "every job after the outage")
        assert pool.alive and pool.crashes == []
    for job in first + second + third + fourth:
        assert job.refresh().status == COMPLETED and job.attempts == 1
    lost = [r for r in caplog.records if "lost its database" in r.getMessage()]
    back = [r for r in caplog.records if "reached its database again" in r.getMessage()]
    assert len(lost) == len(back) >= 1
    q.close()


def test_a_connection_an_error_found_unreachable_is_replaced_though_psycopg_calls_it_sound(
        postgres_url, monkeypatch):
    """A cut can leave a connection that psycopg does not call broken, every
    statement on it failing (in pipeline mode: "cannot exit pipeline mode
    while busy"); a pool reusing it would never recover from the outage."""
    import psycopg
    q = litejobs.Queue(postgres_url)
    q.put(Job(sample_jobs.add, 1, 1))
    before = q._storage._connection()
    real_execute = type(before).execute
    failures = []

    def stuck(self, statement, parameters=()):
        if self is before:
            failures.append(statement)
            raise psycopg.OperationalError("sending query failed: cannot exit pipeline mode "
                                           "while busy (simulated)")
        return real_execute(self, statement, parameters)

    monkeypatch.setattr(type(before), "execute", stuck)
    with pytest.raises(litejobs.DatabaseUnreachable, match="pipeline mode"):
        q.counts()
    assert not (before.raw.closed or before.raw.broken)  # psycopg's view: sound
    assert q.counts()["pending"] == 1  # on a new connection
    assert q._storage._connection() is not before and before.raw.closed
    assert len(failures) == 1
    q.close()


def test_a_put_while_the_server_is_down_raises_and_the_next_one_after_works(own_postgres_server):
    url = own_postgres_server.new_database()
    q = litejobs.Queue(url)
    q.put(Job(sample_jobs.add, 1, 1))
    own_postgres_server.halt()
    with pytest.raises(litejobs.DatabaseUnreachable):
        q.put(Job(sample_jobs.add, 2, 2))
    own_postgres_server.resume()
    assert q.put(Job(sample_jobs.add, 3, 3)).status == PENDING
    assert q.counts()["pending"] == 2
    q.close()


def test_a_lone_put_held_by_a_lock_raises_busy_after_the_busy_timeout(postgres_url):
    # A put of one job runs as one prepared statement, outside a transaction
    # of its own: the busy timeout must hold for it all the same.
    q = litejobs.Queue(postgres_url, busy_timeout=0.3)
    q.put(Job(sample_jobs.add, 1, 1))  # the connection exists before the lock is taken
    with write_lock_held(q):
        started = time.monotonic()
        with pytest.raises(litejobs.DatabaseBusy, match="busy timeout"):
            q.put(Job(sample_jobs.add, 2, 2))
        assert time.monotonic() - started < WAIT
    assert q.put(Job(sample_jobs.add, 3, 3)).status == PENDING
    assert q.counts()["pending"] == 2
    q.close()


def test_a_put_whose_connection_is_cut_before_it_commits_says_the_commit_is_unknown(
        postgres_url):
    q = litejobs.Queue(postgres_url)
    q.put(Job(sample_jobs.add, 1, 1))
    failed = []

    def put():
        try:
            q.put(Job(sample_jobs.add, 2, 2))
        except litejobs.DatabaseUnreachable as exc:
            failed.append(str(exc))

    with write_lock_held(q):
        putter = threading.Thread(target=put)
        putter.start()
        with outsider(q) as conn:  # the put is sent, and waits for the lock
            waiting = wait_until(lambda: conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()").fetchall(), WAIT,
                "the put waiting for the lock")
            conn.execute("SELECT pg_terminate_backend(%s)", waiting[0])
        putter.join(WAIT)
    assert len(failed) == 1 and "whether the commit took is unknown" in failed[0]
    assert q.counts()["pending"] == 1  # this time, it did not
    assert q.put(Job(sample_jobs.add, 3, 3)).status == PENDING  # on a new connection
    q.close()


def test_a_put_after_the_server_cut_its_idle_connection_reconnects_and_puts_once(postgres_url):
    q = litejobs.Queue(postgres_url)
    q.put(Job(sample_jobs.add, 1, 1))
    pid = q._storage._connection().raw.info.backend_pid
    with outsider(q) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    wait_until(lambda: select.select([q._storage._connection().raw.fileno()], [], [], 0)[0],
               WAIT, "the termination to reach the client")
    q.put(Job(sample_jobs.add, 2, 2))
    assert q.counts()["pending"] == 2
    q.close()


def test_a_call_rolled_back_by_a_deadlock_runs_again_unless_inside_a_callers_transaction():
    calls = []

    class Storage:
        _writing = {}

        @litejobs._retried_if_deadlocked
        def cancel(self, job_id, conn=None):
            calls.append(job_id)
            if len(calls) < 3:
                raise litejobs._Deadlocked("deadlock detected (simulated)")
            return "cancelled"

    storage = Storage()
    assert storage.cancel(7) == "cancelled" and calls == [7, 7, 7]
    calls.clear()
    with pytest.raises(litejobs._Deadlocked):  # the caller's transaction: theirs to retry
        storage.cancel(7, conn=object())
    assert calls == [7]
    calls.clear()
    Storage._writing = {threading.get_ident(): False}
    with pytest.raises(litejobs._Deadlocked):
        storage.cancel(7)
    assert calls == [7]


# -- moving jobs across -------------------------------------------------------------------


def unfinished_work(q):
    """A plain pending job, a delayed one, a parallel with a part already
    ended, a serial not started, and a callback of an ended job."""
    plain = q.put(Job(sample_jobs.add, 1, 2), priority=-5)
    later = q.put(Job(sample_jobs.add, 2, 3), begin_after=3600)
    root = q.put(litejobs.parallel(Job(sample_jobs.add, 3, 4), Job(sample_jobs.add, 5, 6)),
                 priority=-1)
    done = q.put(Job(sample_jobs.add, 7, 8), priority=5)
    assert q.run_pending(limit=2) == 2  # `done`, then a part of the parallel
    callback = done.add_callback(sample_jobs.double)
    series = q.put(litejobs.serial(Job(sample_jobs.add, 1, 1), Job(sample_jobs.add, 2, 2)),
                   priority=-2)
    return plain, later, root, callback, series


@pytest.mark.parametrize("direction", ["sqlite to postgres", "postgres to sqlite"])
def test_copy_moves_unfinished_trees_across_backends_and_they_run_there(
        direction, tmp_path, postgres_url):
    sqlite_q = litejobs.Queue(tmp_path / "jobs.db")
    postgres_q = litejobs.Queue(postgres_url)
    source, destination = ((sqlite_q, postgres_q) if direction == "sqlite to postgres"
                           else (postgres_q, sqlite_q))
    plain, later, root, callback, series = unfinished_work(source)
    destination.put(Job(sample_jobs.add, 0, 0))  # ids there go on from its own
    before = source.counts()
    new_ids = source.copy_to(destination, move=True)
    # Trees with an unfinished job, whole: the parallel with its ended part,
    # the ended job with its callback; nothing else.
    assert len(new_ids) == 1 + 1 + 3 + 2 + 3
    assert min(new_ids.values()) > 1
    assert source.counts() == dict.fromkeys(litejobs.STATUSES, 0)
    copied = destination.counts()
    assert copied["pending"] == before["pending"] + 1 and copied["waiting"] == before["waiting"]
    assert copied["completed"] == before["completed"]
    destination.run_pending(now=datetime.datetime.now(datetime.timezone.utc)
                            + datetime.timedelta(hours=2))
    assert destination.get(new_ids[plain.id]).result == 3
    assert destination.get(new_ids[later.id]).result == 5
    assert destination.get(new_ids[root.id]).result == [7, 11]
    assert destination.get(new_ids[callback.id]).result == 30
    assert destination.get(new_ids[series.id]).result == [2, 4]
    assert destination.counts()["completed"] == 11
    sqlite_q.close()
    postgres_q.close()


def test_copy_refuses_a_database_whose_jobs_are_running(tmp_path, postgres_url):
    source = litejobs.Queue(tmp_path / "jobs.db")
    destination = litejobs.Queue(postgres_url)
    job = source.put(Job(sample_jobs.add, 1, 1))
    source._storage.claim(owner="a pool", queues=None, now=source.now(),
                          expires=source.now() + 60, limit=1)
    source.put(Job(sample_jobs.add, 2, 2))
    with pytest.raises(ValueError, match="1 jobs are running"):
        source.copy_to(destination)
    assert source.get(job.id).status == "active"
    assert destination.counts()["pending"] == 0
    source.close()
    destination.close()


def test_the_copy_command_copies_and_says_how_many(tmp_path, postgres_url):
    path = str(tmp_path / "jobs.db")
    with litejobs.Queue(path) as source:
        source.put_many([Job(sample_jobs.add, i, i) for i in range(3)])
    done = subprocess.run([sys.executable, "-m", "litejobs", "copy", path, postgres_url,
                           "--json"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["copied"], report["moved"]) == (3, False)
    with litejobs.Queue(postgres_url) as destination, litejobs.Queue(path) as source:
        assert destination.counts()["pending"] == 3 and source.counts()["pending"] == 3


def test_a_password_given_as_a_url_parameter_is_not_shown_either(postgres_url):
    q = litejobs.Queue(postgres_url + "?password=hunter2-secret&application_name=app")
    assert "hunter2" not in q.path and "application_name=app" in q.path
    assert b"hunter2" not in pickle.dumps(q)
    q.close()


def test_an_error_message_holding_a_nul_is_stored_escaped(postgres_url):
    q = litejobs.Queue(postgres_url)
    job = q.put(Job(sample_jobs.fail, "bad\x00record"))
    q.run_pending()
    assert job.refresh().status == litejobs.FAILED
    assert "bad\\x00record" in job.error
    with pytest.raises(ValueError, match="NUL"):
        q.put(Job(sample_jobs.add, 1, 1), queue="a\x00b")
    q.close()


def test_a_move_keeps_a_job_that_got_a_callback_after_it_was_copied(tmp_path, postgres_url):
    source = litejobs.Queue(tmp_path / "jobs.db")
    destination = litejobs.Queue(postgres_url)
    kept = source.put(Job(sample_jobs.add, 1, 1))
    moved = source.put(Job(sample_jobs.add, 2, 2))
    rows = source._storage.unfinished_trees()
    kept.add_callback(sample_jobs.double)  # after the copy read it, before the delete
    new_ids = destination._storage.insert_copies(rows)
    assert source._storage.delete_copied(new_ids) == 1
    assert source.get(kept.id).children()[0].status == "waiting"
    with pytest.raises(litejobs.JobNotFound):
        source.get(moved.id)
    source.close()
    destination.close()


def test_a_wait_sees_a_job_end_even_when_no_notification_comes(postgres_url):
    import psycopg
    q = litejobs.Queue(postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as conn:  # as if one were lost
        conn.execute("DROP TRIGGER litejobs_jobs_notify_update ON litejobs_jobs")
    job = q.put(Job(sample_jobs.add, 2, 3))
    other = litejobs.Queue(postgres_url)
    token, _ = other._storage.claim(owner="elsewhere", queues=None, now=other.now(),
                                    expires=other.now() + 60, limit=1)
    timer = threading.Timer(0.1, other._storage.finish, (job.id, token),
                            {"status": litejobs.COMPLETED, "now": other.now()})
    timer.start()
    started = time.monotonic()
    job.wait(timeout=10)
    assert job.status == litejobs.COMPLETED and time.monotonic() - started < 5
    timer.join()
    other.close()
    q.close()
