"""A web app that hands slow PDF rendering to background jobs.

    python examples/web_app_pdf.py [DATABASE] [--port 8000]   # serve until Ctrl-C
    python examples/web_app_pdf.py --self-test                # one request, then exit

``POST /pdf`` with ``{"title": ..., "pages": ...}`` puts a job and answers
``202 Accepted`` with its id at once; the request never waits for the PDF.
``GET /jobs/<id>`` answers with the job's status as JSON, and with the PDF's
path once it is done.  Standard library only (``http.server``).  For the demo a
pool of two worker processes runs in this process; in production the pool is
its own service (``python -m litejobs worker app.db``, see
litejobs-worker.service) and the web processes only put and read jobs.
"""

import argparse
import http.server
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import litejobs  # noqa: E402


def render_pdf(folder, title, pages):
    """The expensive job: a real, if plain, PDF with one line of text a page.

    It runs in a worker process, so it gets plain data (a folder, a title, a
    count) and returns plain data; the PDF itself goes to a file.
    """
    text = title.encode("latin-1", "replace").replace(b"\\", b"\\\\")
    text = text.replace(b"(", b"\\(").replace(b")", b"\\)")
    objects = {1: b"<< /Type /Catalog /Pages 2 0 R >>",
               3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"}
    for page in range(pages):
        time.sleep(0.01)  # stands in for layout work
        content = b"BT /F1 24 Tf 72 720 Td (%s - page %d of %d) Tj ET" % (text, page + 1, pages)
        objects[4 + 2 * page] = (b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
                                 b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>"
                                 % (5 + 2 * page))
        objects[5 + 2 * page] = b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content),
                                                                             content)
    kids = b" ".join(b"%d 0 R" % (4 + 2 * page) for page in range(pages))
    objects[2] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, pages)
    pdf, offsets = bytearray(b"%PDF-1.4\n"), []
    for number in range(1, len(objects) + 1):
        offsets.append(len(pdf))
        pdf += b"%d 0 obj\n%s\nendobj\n" % (number, objects[number])
    xref = len(pdf)
    pdf += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    pdf += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    pdf += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)

    job_id = litejobs.current_job().id
    path = os.path.join(folder, f"job-{job_id}.pdf")
    # Write then rename: a retried or interrupted run never leaves half a PDF.
    with open(path + ".part", "wb") as handle:
        handle.write(pdf)
    os.replace(path + ".part", path)
    return {"path": path, "pages": pages, "bytes": len(pdf), "pid": os.getpid()}


class PdfApp(http.server.BaseHTTPRequestHandler):
    """The request handlers.  The server carries ``queue``, ``folder``, ``quiet``."""

    def do_POST(self):
        if self.path != "/pdf":
            return self.reply(404, {"error": f"no route POST {self.path}"})
        try:
            order = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            title, pages = str(order.get("title", "Untitled"))[:200], int(order.get("pages", 10))
            if not 1 <= pages <= 1000:
                raise ValueError("pages must be between 1 and 1000")
        except (ValueError, TypeError, AttributeError) as exc:
            return self.reply(400, {"error": f"bad request: {exc}"})
        # Validate before putting: a job is for work that takes time, not for
        # finding out later that the request was wrong.
        job = self.server.queue.put(litejobs.Job(render_pdf, self.server.folder, title, pages),
                                    queue="pdf", timeout=120, retry=litejobs.Retry(attempts=3))
        self.reply(202, {"id": job.id, "status": job.status, "url": f"/jobs/{job.id}"},
                   location=f"/jobs/{job.id}")

    def do_GET(self):
        match = re.fullmatch(r"/jobs/(\d+)", self.path)
        if match is None:
            return self.reply(404, {"error": f"no route GET {self.path}"})
        try:
            job = self.server.queue.get(int(match.group(1)))
        except litejobs.JobNotFound:
            return self.reply(404, {"error": f"no job {match.group(1)}"})
        answer = {"id": job.id, "status": job.status, "attempts": job.attempts}
        if job.status == litejobs.COMPLETED:
            answer["result"] = job.result
        elif job.status in (litejobs.FAILED, litejobs.CANCELLED):
            # The last line of the traceback is enough for a client; the
            # whole text stays in the database for the operator.
            answer["error"] = (job.error or job.status).strip().splitlines()[-1]
        self.reply(200, answer)

    def reply(self, code, body, location=None):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if location:
            self.send_header("Location", location)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        if not self.server.quiet:
            super().log_message(format, *args)


def call(method, url, body=None):
    """A minimal JSON client, for the self-test."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def self_test(base, timeout=60):
    started = time.monotonic()
    code, answer = call("POST", f"{base}/pdf", {"title": "Quarterly report (Q3)", "pages": 40})
    print(f"POST /pdf -> {code} {answer} in {1000 * (time.monotonic() - started):.0f} ms")
    if code != 202:
        return 1
    status, seen = None, []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, status = call("GET", f"{base}{answer['url']}")
        if status["status"] not in seen:
            seen.append(status["status"])
            print(f"GET {answer['url']} -> {code} status {status['status']}")
        if status["status"] in (litejobs.COMPLETED, litejobs.FAILED, litejobs.CANCELLED):
            break
        time.sleep(0.05)
    else:
        print(f"job {answer['id']} did not end within {timeout} s; last seen {status}")
        return 1
    if status["status"] != litejobs.COMPLETED:
        print(f"job {answer['id']} {status['status']}: {status.get('error')}")
        return 1
    result = status["result"]
    with open(result["path"], "rb") as handle:
        header = handle.read(8)
    print(f"PDF ready after {time.monotonic() - started:.2f} s: {result['pages']} pages, "
          f"{result['bytes']} bytes, starts {header[:5].decode()}, "
          f"built by worker process {result['pid']} (this is process {os.getpid()})")
    print(f"GET /jobs/999999 -> {call('GET', f'{base}/jobs/999999')[0]}")
    return 0 if header.startswith(b"%PDF-") else 1


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("database", nargs="?", help="default: a temporary file")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--self-test", action="store_true",
                        help="serve on a free port, make one PDF through HTTP, exit")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.abspath(args.database or os.path.join(scratch, "app.db"))
        folder = os.path.join(os.path.dirname(path), "pdfs")
        os.makedirs(folder, exist_ok=True)
        queue = litejobs.Queue(path)
        port = 0 if args.self_test else args.port  # 0: any free port
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), PdfApp)
        server.queue, server.folder, server.quiet = queue, folder, args.self_test
        base = f"http://127.0.0.1:{server.server_port}"
        code = 0
        with server, queue.worker(processes=2, queues=["pdf"]):
            if args.self_test:
                threading.Thread(target=server.serve_forever, daemon=True).start()
                try:
                    code = self_test(base)
                finally:
                    server.shutdown()
            else:
                # Ctrl-C and a service manager's SIGTERM both end serve_forever
                # (even if this process was started with SIGINT ignored).
                signal.signal(signal.SIGINT, _interrupt)
                signal.signal(signal.SIGTERM, _interrupt)
                print(f"serving on {base} (Ctrl-C stops); try:\n"
                      f"  curl -d '{{\"title\": \"Hello\", \"pages\": 50}}' {base}/pdf\n"
                      f"  curl {base}/jobs/1", flush=True)
                try:
                    server.serve_forever()
                except KeyboardInterrupt:
                    # Leaving the with block stops the pool gracefully: running
                    # jobs get their grace period, the rest wait in the database.
                    print("stopping")
        queue.close()
    return code


if __name__ == "__main__":  # the pool's spawned processes import this file again
    sys.exit(main())
