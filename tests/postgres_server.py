"""A throwaway PostgreSQL server, for the tests and the benchmarks.

`Server.start()` runs initdb and pg_ctl from the machine's PostgreSQL
binaries in a temporary directory, on a free TCP port of 127.0.0.1 (and a
socket in that directory), and `stop()` removes it all.  When this runs as
root, the server runs as the ``postgres`` user, since PostgreSQL refuses
root.  `binaries()` says where the binaries are, or why there are none.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid

HOW_TO_GET_THEM = ("install the distribution's PostgreSQL server (Debian, Ubuntu: "
                   "apt-get install postgresql), or put the directory holding initdb "
                   "and pg_ctl in LITEJOBS_PG_BIN")


def binaries():
    """The directory holding initdb and pg_ctl, or None."""
    candidates = [os.environ.get("LITEJOBS_PG_BIN", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                         key=lambda path: int(path.split("/")[-2]) if
                         path.split("/")[-2].isdigit() else 0, reverse=True)
    found = shutil.which("initdb")
    if found:
        candidates.append(os.path.dirname(found))
    for directory in candidates:
        if directory and os.path.exists(os.path.join(directory, "initdb")) and \
                os.path.exists(os.path.join(directory, "pg_ctl")):
            return directory
    return None


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """One PostgreSQL cluster in a temporary directory: start, stop, restart,
    and databases made for each test."""

    def __init__(self, *, durable=False):
        self.bin = binaries()
        if self.bin is None:
            raise RuntimeError(f"no PostgreSQL server binaries found: {HOW_TO_GET_THEM}")
        self.durable = durable  # fsync and synchronous commits, as in production
        self.root = tempfile.mkdtemp(prefix="litejobs-pg-")
        self.data = os.path.join(self.root, "data")
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0
        self.user = "postgres" if self.as_postgres else pwd.getpwuid(os.geteuid()).pw_name

    def _run(self, *command, check=True):
        if self.as_postgres:
            command = ("runuser", "-u", "postgres", "--") + command
        return subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, check=check, timeout=120)

    def start(self):
        if self.as_postgres:
            os.chmod(self.root, 0o755)
            shutil.chown(self.root, "postgres", "postgres")
        self._run(os.path.join(self.bin, "initdb"), "-D", self.data, "-A", "trust",
                  "-U", self.user, "-E", "UTF8", "--no-locale", "--no-instructions")
        settings = [
            "listen_addresses = '127.0.0.1'", f"port = {self.port}",
            f"unix_socket_directories = '{self.root}'", "max_connections = 200",
            "shared_buffers = 128MB", "logging_collector = off",
        ]
        if not self.durable:  # a test server: nothing to keep across a crash
            settings += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
        with open(os.path.join(self.data, "postgresql.conf"), "a") as conf:
            conf.write("\n".join(settings) + "\n")
        self.resume()
        return self

    def resume(self):
        """Start the server on its data directory (again, after `halt`)."""
        self._run(os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-w", "-t", "60",
                  "-l", os.path.join(self.root, "server.log"), "start")

    def halt(self, mode="fast"):
        self._run(os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-w", "-t", "60",
                  "-m", mode, "stop", check=False)

    def restart(self):
        self.halt()
        self.resume()

    def stop(self):
        self.halt("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database="postgres"):
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def sql(self, statement, database="postgres"):
        """Run one statement as the superuser, through psql-free psycopg."""
        import psycopg
        with psycopg.connect(self.url(database), autocommit=True) as conn:
            cursor = conn.execute(statement)
            return cursor.fetchall() if cursor.description else None

    def new_database(self):
        """A fresh, empty database; its URL."""
        name = "t_" + uuid.uuid4().hex[:16]
        self.sql(f"CREATE DATABASE {name}")
        return self.url(name)

    def terminate_connections(self, database):
        """End every other connection to ``database`` (pg_terminate_backend)."""
        return self.sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        f"WHERE datname = '{database}' AND pid != pg_backend_pid()")[0][0]


def wait_for_port(port, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False
