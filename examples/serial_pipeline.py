"""A pipeline of steps that run one after another: fetch, clean, load.

Run it from a fresh clone with ``python examples/serial_pipeline.py
[DATABASE]``.  Each step is a job, and the next one starts only once the one
before it has ended, so a crash between steps resumes at the step that was
running instead of starting over.  Steps do not receive each other's results:
they hand data on through files (fetch -> clean) and through the database
(clean -> load).  A ``report`` postprocess runs at the end and sees every step.
Jobs run here with ``Queue.run_pending()``; a worker pool runs them the same way.
"""

import csv
import os
import sqlite3
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import litejobs  # noqa: E402

READINGS = [("Oslo", "4.5"), ("Lima", "19.0"), ("Cairo", "n/a"), ("Perth", "22.5"),
            ("Oslo", "4.5"), ("Quito", "13.0")]


def fetch(folder, source):
    """Step 1: download the raw readings (made up here) into a file."""
    if source == "offline-station":
        raise ConnectionError(f"{source}: no route to host")
    path = os.path.join(folder, f"{source}-raw.csv")
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([("city", "celsius"), *READINGS])
    return {"rows": len(READINGS)}


def clean(folder, source):
    """Step 2: read step 1's file; drop unreadable and repeated rows."""
    with open(os.path.join(folder, f"{source}-raw.csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    kept, seen = [], set()
    for row in rows:
        try:
            reading = (row["city"], float(row["celsius"]))
        except ValueError:
            continue
        if reading not in seen:
            seen.add(reading)
            kept.append(reading)
    with open(os.path.join(folder, f"{source}-clean.csv"), "w", newline="") as handle:
        csv.writer(handle).writerows(kept)
    return {"kept": len(kept), "dropped": len(rows) - len(kept)}


def load(database, folder, source):
    """Step 3: load the clean rows into the application's own table, which
    lives in the queue's database file beside litejobs' tables."""
    with open(os.path.join(folder, f"{source}-clean.csv"), newline="") as handle:
        rows = [(source, city, float(celsius)) for city, celsius in csv.reader(handle)]
    connection = sqlite3.connect(database, timeout=30)
    try:
        with connection:  # one transaction: all the rows or none
            connection.execute("DELETE FROM readings WHERE source = ?", (source,))
            connection.executemany("INSERT INTO readings VALUES (?, ?, ?)", rows)
    finally:
        connection.close()
    return {"loaded": len(rows)}


def report(*steps):
    """The postprocess: it runs once the last step has ended (or, with
    stop_on_failure, once one has failed), and is given every step's `Job`
    in order.  Its return value is the pipeline's result."""
    lines = []
    for step in steps:
        name = step.name.rpartition(":")[2]
        if step.status == litejobs.COMPLETED:
            lines.append(f"{name}: completed {step.result}")
        elif step.status == litejobs.FAILED:
            lines.append(f"{name}: failed, {step.error.strip().splitlines()[-1]}")
        else:
            lines.append(f"{name}: {step.status}")
    return lines


def pipeline(database, folder, source, **options):
    return litejobs.serial(litejobs.Job(fetch, folder, source),
                           litejobs.Job(clean, folder, source),
                           litejobs.Job(load, database, folder, source), **options)


def main(argv):
    with tempfile.TemporaryDirectory() as folder:
        path = argv[1] if len(argv) > 1 else os.path.join(folder, "pipeline.db")
        queue = litejobs.Queue(path)
        app = sqlite3.connect(path)
        with app:
            app.execute("CREATE TABLE IF NOT EXISTS readings "
                        "(source TEXT, city TEXT, celsius REAL)")

        # 1. The whole chain is stored by one put.  Only the first step is
        #    pending; the others wait their turn without holding a worker.
        root = queue.put(pipeline(path, folder, "weather-station", postprocess=report))
        steps = root.children()
        print(f"pipeline {root.id} ({root.composite}): "
              + ", ".join(f"{step.name.rpartition(':')[2]} {step.status}" for step in steps))
        queue.run_pending()
        for line in root.wait(timeout=10):
            print(f"  {line}")
        print(f"readings table: {app.execute('SELECT count(*) FROM readings').fetchone()[0]} rows")

        # 2. stop_on_failure=True: when fetch fails, clean and load end
        #    CANCELLED without running, and report runs at once.
        root = queue.put(pipeline(path, folder, "offline-station", postprocess=report,
                                  stop_on_failure=True))
        queue.run_pending()
        print(f"pipeline {root.id} with stop_on_failure=True is {root.refresh().status}:")
        for line in root.wait(timeout=10):
            print(f"  {line}")

        # 3. By default a failed step does not stop the chain (the next step
        #    may not need it); without a postprocess the pipeline's result
        #    would be the list of step results, so it fails, naming the steps
        #    that failed.
        root = queue.put(pipeline(path, folder, "offline-station"))
        queue.run_pending()
        try:
            root.wait(timeout=10)
        except litejobs.JobFailed:
            print(f"pipeline {root.id} without postprocess: {root.status}, "
                  f"{root.error_type}")
            # The last line of its error names each failed step and its error.
            print(f"  {root.error.strip().splitlines()[-1]}")
        app.close()
        queue.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
