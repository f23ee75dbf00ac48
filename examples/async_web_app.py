"""An async web app that puts a job and awaits it, without blocking its loop.

    python examples/async_web_app.py [DATABASE] [--port 8000]   # serve until Ctrl-C
    python examples/async_web_app.py --self-test                # 20 requests at once, then exit

``GET /forecast/<city>`` puts an async job (``fetch_forecast``, which awaits
a slow upstream service) and awaits its result: ``await job`` wakes when the
job's end commits, and the database calls run off the event loop, so the
server goes on answering other requests meanwhile.  The server is plain
``asyncio.start_server`` (standard library only); in an ASGI app (Starlette,
FastAPI) the handler's three lines are the same.  For the demo a pool of two
worker processes runs in this process; in production the pool is its own
service (``python -m litejobs worker app.db``).
"""

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import litejobs  # noqa: E402


async def fetch_forecast(city):
    """The job: an async function, run on a worker process's event loop, up to
    100 at once in each process.  The sleep stands in for an HTTP call."""
    await asyncio.sleep(0.3)
    job = litejobs.current_job()
    return {"city": city, "high": 10 + len(city) % 7, "job": job.id, "pid": os.getpid()}


async def handle(queue, reader, writer):
    """One HTTP/1.0 request: ``GET /forecast/<city>``."""
    try:
        request = (await reader.readline()).decode("latin-1").split()
        while (await reader.readline()).strip():
            pass  # the headers: not needed here
        if len(request) < 2 or request[0] != "GET" or not request[1].startswith("/forecast/"):
            status, body = 404, {"error": "try GET /forecast/<city>"}
        else:
            city = request[1].removeprefix("/forecast/")[:50]
            job = await queue.aput(litejobs.Job(fetch_forecast, city))
            try:
                status, body = 200, await job.await_result(timeout=10)
            except litejobs.JobFailed as exc:
                status, body = 502, {"error": exc.exc_type}
            except litejobs.WaitTimeout:
                status, body = 504, {"error": "the forecast took too long", "job": job.id}
        data = json.dumps(body).encode()
        writer.write(b"HTTP/1.0 %d %s\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (status, b"OK" if status == 200
                                                         else b"Error", len(data), data))
        await writer.drain()
    finally:
        writer.close()


async def get(port, path):
    """A tiny HTTP client, for the self-test: (status, JSON body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


async def serve(queue, port, self_test):
    server = await asyncio.start_server(lambda r, w: handle(queue, r, w), "127.0.0.1", port)
    port = server.sockets[0].getsockname()[1]
    async with server:
        if not self_test:
            print(f"serving on http://127.0.0.1:{port}/forecast/<city>; Ctrl-C stops",
                  flush=True)
            await server.serve_forever()
            return
        cities = [f"city-{n}" for n in range(20)]
        started = time.perf_counter()
        answers = await asyncio.gather(*(get(port, f"/forecast/{city}") for city in cities))
        took = time.perf_counter() - started
        for (status, body), city in zip(answers[:3], cities):
            print(f"GET /forecast/{city} -> {status} {body}")
        pids = {body["pid"] for _, body in answers}
        print(f"20 requests at once, each awaiting a job of 0.3 s: all answered "
              f"{sorted({status for status, _ in answers})} in {took:.2f}s, "
              f"run by worker processes {sorted(pids)} (this is process {os.getpid()})")
        print("GET /nowhere ->", (await get(port, "/nowhere"))[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("database", nargs="?", help="the database (default: a temporary one)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--self-test", action="store_true")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        queue = litejobs.Queue(options.database or os.path.join(folder, "app.db"))
        with queue.worker(processes=2):
            try:
                asyncio.run(serve(queue, 0 if options.self_test else options.port,
                                  options.self_test))
            except KeyboardInterrupt:
                print("stopped")


if __name__ == "__main__":
    main()
