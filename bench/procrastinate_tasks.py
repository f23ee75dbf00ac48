"""The procrastinate app of the PostgreSQL benchmarks: a no-op task, and one
that notes when it started, on the database named by ``BENCH_PG_URL``."""

import os
import time

import procrastinate

app = procrastinate.App(connector=procrastinate.PsycopgConnector(
    conninfo=os.environ["BENCH_PG_URL"]))


@app.task(name="noop")
def noop():
    """The job every drain runs."""


@app.task(name="started_at", pass_context=True)
def started_at(context):
    """Append "job_id time" to the file ``BENCH_STAMPS`` names: when the
    task began, on the wall clock, for pickup latency."""
    line = f"{context.job.id} {time.time()}\n".encode()
    fd = os.open(os.environ["BENCH_STAMPS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@app.task(name="async_nap")
async def async_nap(seconds):
    """An I/O-bound async task: it awaits ``seconds``."""
    import asyncio
    await asyncio.sleep(seconds)
