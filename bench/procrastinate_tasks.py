"""The procrastinate app of the PostgreSQL benchmarks: one no-op task, on the
database named by ``BENCH_PG_URL``."""

import os

import procrastinate

app = procrastinate.App(connector=procrastinate.PsycopgConnector(
    conninfo=os.environ["BENCH_PG_URL"]))


@app.task(name="noop")
def noop():
    """The job every drain runs."""
