"""Reaching a queue's database from outside litejobs, on either backend: as
another process would (to count what it sees), and as an application does
(its own connection, in its own transaction)."""

import contextlib
import sqlite3


def is_postgres(queue):
    return queue.path.startswith(("postgresql://", "postgres://"))


@contextlib.contextmanager
def outsider(queue):
    """A connection of the backend's driver of its own, in autocommit."""
    if is_postgres(queue):
        import psycopg
        conn = psycopg.connect(queue.path, autocommit=True)
    else:
        conn = sqlite3.connect(queue.path, isolation_level=None, timeout=5)
    try:
        yield conn
    finally:
        conn.close()


def count_rows(queue, table):
    """The rows of ``table`` another connection sees now."""
    with outsider(queue) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


@contextlib.contextmanager
def app_transaction(queue):
    """An application's connection with its transaction open (BEGIN IMMEDIATE
    on SQLite); commits when the block ends, or rolls back if it raises."""
    if is_postgres(queue):
        import psycopg
        conn = psycopg.connect(queue.path)
        try:
            with conn.transaction():
                yield conn
        finally:
            conn.close()
        return
    conn = sqlite3.connect(queue.path, isolation_level=None, timeout=5)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        conn.close()


def orders_table(queue):
    """DDL of an application table ``orders (id, item)`` with generated ids."""
    if is_postgres(queue):
        return "CREATE TABLE orders (id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY, item text)"
    return "CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT)"


def row_of(queue, table, key):
    """The row of ``table`` whose id is ``key``, as a dict, or None."""
    with outsider(queue) as conn:
        if is_postgres(queue):
            cursor = conn.execute(f"SELECT * FROM {table} WHERE id = %s", (key,))
        else:
            cursor = conn.execute(f"SELECT * FROM {table} WHERE id = ?", (key,))
        found = cursor.fetchone()
        return None if found is None else dict(zip([d[0] for d in cursor.description], found))


def change(queue, statement, params=()):
    """Run one writing statement as another connection; SQLite's ``?``
    placeholders.  Returns the rows it changed."""
    with outsider(queue) as conn:
        if is_postgres(queue):
            statement = statement.replace("?", "%s")
        return conn.execute(statement, params).rowcount


@contextlib.contextmanager
def write_lock_held(queue):
    """Another connection keeps litejobs from writing while the block runs
    (SQLite's write lock; on PostgreSQL, litejobs' tables locked against
    every write), then lets go."""
    with outsider(queue) as conn:
        if is_postgres(queue):
            conn.execute("BEGIN")
            conn.execute("LOCK TABLE litejobs_jobs, litejobs_workers IN EXCLUSIVE MODE")
        else:
            conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
