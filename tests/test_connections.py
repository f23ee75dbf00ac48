"""Connections: one per thread, closed when their thread has ended."""

import threading

import litejobs
import sample_jobs


def put_from_a_new_thread(q):
    errors = []

    def work():
        try:
            q.put(litejobs.Job(sample_jobs.add, 1, 1))
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive() and errors == []


def test_connections_of_ended_threads_do_not_pile_up(q):
    for _ in range(50):
        put_from_a_new_thread(q)
    assert sum(q.counts().values()) == 50
    # Each new thread's connection replaced the one of the thread before it.
    assert len(q._storage._connections) <= 2


def test_each_live_thread_has_its_own_connection(q):
    seen = []
    ready = threading.Barrier(3, timeout=30)

    def work():
        seen.append(q._storage._connection())
        ready.wait()  # stay alive until every thread has its connection

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    ready.wait()
    for thread in threads:
        thread.join(timeout=30)
    main_connection = q._storage._connection()
    assert len({id(conn) for conn in [*seen, main_connection]}) == 3


def test_close_thread_connection_closes_only_the_callers(q):
    q.put(sample_jobs.whoami)
    before = q._storage._connection()
    q._storage.close_thread_connection()
    after = q._storage._connection()
    assert after is not before
    assert q.counts()["pending"] == 1


def test_opening_a_connection_closes_those_of_ended_threads(q):
    import sqlite3

    import pytest

    opened = []
    thread = threading.Thread(target=lambda: opened.append(q._storage._connection()))
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    ended_connection, = opened
    assert q._storage._connections[thread] is ended_connection  # kept by thread, not ident

    q._storage.close_thread_connection()
    q._storage._connection()  # this thread opens a new one, which prunes

    assert thread not in q._storage._connections
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        ended_connection.execute("SELECT 1")
