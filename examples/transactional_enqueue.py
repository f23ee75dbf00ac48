"""Put a job in the same transaction as the application's own writes.

Run it from a fresh clone with ``python examples/transactional_enqueue.py
[DATABASE]``.  An order and the job that confirms it commit together: there is
never an order without its confirmation job, nor a job for an order that was
rolled back.  That needs no two-phase commit, because the application keeps its
tables in the queue's own SQLite file:

- litejobs owns only the tables named ``litejobs_*``.  The application creates
  its own tables, under other names, with its own connection.
- ``PRAGMA user_version`` belongs to the application: litejobs never reads or
  writes it, so the application can number its schema migrations with it.
- Write transactions start with ``BEGIN IMMEDIATE``, which takes the write lock
  at once and, if a worker holds it, waits (the connection's timeout).  A plain
  ``BEGIN`` that reads first and writes later can instead fail half way with
  "database is locked", since SQLite cannot let it wait at that point.
"""

import os
import sqlite3
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import litejobs  # noqa: E402

SCHEMA_VERSION = 1


class PaymentDeclined(Exception):
    pass


def open_app_database(path):
    """The application's connection, and its schema, versioned by user_version."""
    # isolation_level=None: no implicit transactions; this code says BEGIN
    # IMMEDIATE and COMMIT itself.  timeout: how long to wait for the lock.
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("BEGIN IMMEDIATE")
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version < 1:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, "
                     "cents INTEGER NOT NULL, confirmed INTEGER NOT NULL DEFAULT 0)")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.execute("COMMIT")
    return conn


def send_confirmation(database, order_id):
    """The job: "email" the customer, then mark the order confirmed.  It opens
    its own connection: a job gets plain data (a path, an id), never a
    connection."""
    conn = sqlite3.connect(database, isolation_level=None, timeout=30)
    try:
        conn.execute("BEGIN IMMEDIATE")
        customer, cents = conn.execute("SELECT customer, cents FROM orders WHERE id = ?",
                                       (order_id,)).fetchone()
        conn.execute("UPDATE orders SET confirmed = 1 WHERE id = ?", (order_id,))
        conn.execute("COMMIT")
    finally:
        conn.close()
    return f"emailed {customer} about order {order_id} ({cents / 100:.2f} EUR)"


def main(argv):
    with tempfile.TemporaryDirectory() as folder:
        path = argv[1] if len(argv) > 1 else os.path.join(folder, "shop.db")
        queue = litejobs.Queue(path)  # creates litejobs' tables (and the file, 0600)
        app = open_app_database(path)  # the application's tables, beside them

        # 1. The application's own transaction: put(..., conn=app) writes the
        #    job through the application's connection, inside its transaction.
        app.execute("BEGIN IMMEDIATE")
        order = app.execute("INSERT INTO orders (customer, cents) VALUES ('ada', 4200)").lastrowid
        job = queue.put(litejobs.Job(send_confirmation, path, order), conn=app)
        app.execute("COMMIT")
        print(f"order {order} committed with its job {job.id} ({job.status})")

        # 2. Same again, but the payment fails before the commit: rolling back
        #    removes the order and the job alike.
        app.execute("BEGIN IMMEDIATE")
        try:
            order = app.execute(
                "INSERT INTO orders (customer, cents) VALUES ('bob', 999)").lastrowid
            ghost = queue.put(litejobs.Job(send_confirmation, path, order), conn=app)
            print(f"order {order} and job {ghost.id} written, not yet committed")
            raise PaymentDeclined("card declined")
        except PaymentDeclined as exc:
            app.execute("ROLLBACK")
            print(f"{exc}: rolled back")
        try:
            ghost.refresh()
            print(f"BUG: job {ghost.id} exists after the rollback")
            return 1
        except litejobs.JobNotFound:
            # Like any row of a rolled-back transaction, it never existed, so
            # its id is free again: the next job put takes it.
            print(f"the job numbered {ghost.id} never existed: no confirmation for an "
                  f"order that failed")

        # 3. The other way round: litejobs opens the transaction, and the
        #    application writes its tables through the connection it is given.
        #    Every put in the block (in this thread) commits with them.
        with queue.transaction() as conn:
            order = conn.execute(
                "INSERT INTO orders (customer, cents) VALUES ('cy', 1250)").lastrowid
            job = queue.put(litejobs.Job(send_confirmation, path, order))
        print(f"order {order} committed with its job {job.id}, in queue.transaction()")
        try:
            with queue.transaction() as conn:
                conn.execute("INSERT INTO orders (customer, cents) VALUES ('dee', 3100)")
                queue.put(litejobs.Job(send_confirmation, path, -1))
                raise PaymentDeclined("card expired")
        except PaymentDeclined as exc:
            print(f"{exc}: the block raised, so neither its order nor its job exists")

        queue.run_pending()
        for done in sorted(queue.jobs(), key=lambda job: job.id):
            print(f"job {done.id} {done.status}: {done.result}")
        orders = app.execute("SELECT id, customer, confirmed FROM orders ORDER BY id").fetchall()
        print(f"orders: {orders}")
        print(f"jobs: {queue.counts()}")
        print(f"user_version {app.execute('PRAGMA user_version').fetchone()[0]} is the "
              f"application's; litejobs' tables: " + ", ".join(
                  name for (name,) in app.execute(
                      "SELECT name FROM sqlite_master WHERE type = 'table' "
                      "AND name LIKE 'litejobs!_%' ESCAPE '!' ORDER BY name")))
        app.close()
        queue.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
