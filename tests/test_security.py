"""Signed jobs and results, showing hostile rows without loading them, and size limits.

Whoever can write the database file could make a runner import a module or
unpickle an object of their choosing.  With a secret, a runner refuses
every row not signed with it, before importing or unpickling anything of
it; `show` never loads anything for real, secret or not; and size limits
keep a call or a result from swelling the file.

Rows are made hostile the way an attacker would: with plain SQL on the
file.  Each hostile payload here would create a marker file if it were
loaded, and each module would create one if it were imported; the tests
check that no marker appears, and then, to prove the payload was live,
load it on purpose and see the marker appear.  Pools are real: a
``q.worker()`` pool of spawned processes and a ``python -m litejobs
worker`` process; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import pickle
import resource
import signal
import sqlite3
import struct
import subprocess
import sys
import time
import uuid

import pytest

import hostile_jobs
import litejobs
import sample_jobs
from hostile_jobs import call_pickle, cli_env, run_cli
from litejobs import Job
from waiting import WAIT, child_pids, wait_until

SECRET = "correct horse battery staple 01"
OLD_SECRET = b"the old signing key of 2024"
NEW_SECRET = b"the new signing key of 2025"
OTHER_SECRET = "some other deployment's key"


@pytest.fixture(autouse=True)
def no_secret_in_the_environment(monkeypatch):
    monkeypatch.delenv("LITEJOBS_SECRET", raising=False)


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "jobs.db")


@pytest.fixture
def markers(tmp_path):
    directory = tmp_path / "markers"
    directory.mkdir()
    return directory


@pytest.fixture
def modules(tmp_path, monkeypatch):
    """``modules(marker)`` writes a module, importable here and in spawned
    children, that creates ``marker`` when imported; returns its name."""
    directory = tmp_path / "modules"
    directory.mkdir()
    monkeypatch.syspath_prepend(str(directory))
    names = []

    def make(marker):
        name = f"hostile_module_{uuid.uuid4().hex[:12]}"
        hostile_jobs.write_marker_module(directory, name, marker)
        names.append(name)
        return name

    make.directory = directory
    yield make
    for name in names:
        sys.modules.pop(name, None)


def sql(db, statement, params=()):
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        conn.execute(statement, params)
        conn.commit()


def row_of(db, job_id):
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        conn.row_factory = sqlite3.Row
        return dict(conn.execute("SELECT * FROM litejobs_jobs WHERE id = ?",
                                 (job_id,)).fetchone())


def job_count(db):
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        return conn.execute("SELECT count(*) FROM litejobs_jobs").fetchone()[0]


def present(*paths):
    return [str(path) for path in paths if os.path.exists(path)]


def assert_refused_unloaded(job, *, unsigned=False):
    """The job failed with SignatureError, saying nothing was loaded."""
    job.refresh()
    assert job.status == litejobs.FAILED, (job.status, job.error)
    assert job.error_type == "litejobs.SignatureError", job.error
    assert "nothing of it was imported or unpickled" in job.error
    if unsigned:
        assert "has no signature" in job.error
    else:
        assert "matches none of the secrets" in job.error


def load_on_purpose(payload):
    """Unpickle ``payload`` for real, closing any file it opened."""
    loaded = pickle.loads(payload)
    for item in loaded[1] if isinstance(loaded, tuple) else [loaded]:
        with contextlib.suppress(AttributeError, TypeError):
            item.close()


# == 1. signing, with run_pending ===========================================================


def test_jobs_and_results_are_signed_and_run_with_the_secret(db):
    q = litejobs.Queue(db, secret=SECRET)
    job = q.put(Job(sample_jobs.add, 1, 2))
    named = q.put("sample_jobs:pid")  # no payload at all: the name alone is signed
    row = row_of(db, job.id)
    assert len(row["signature"]) == 32 and row["result_signature"] is None
    assert len(row_of(db, named.id)["signature"]) == 32

    assert q.run_pending() == 2
    assert job.wait(timeout=5) == 3
    assert named.wait(timeout=5) == os.getpid()
    assert len(row_of(db, job.id)["result_signature"]) == 32
    assert litejobs.Queue(db, secret=SECRET).get(job.id).result == 3


@pytest.mark.parametrize("payload_of", [hostile_jobs.OpenMarker, hostile_jobs.SystemMarker],
                         ids=["reduce-open", "reduce-os-system"])
def test_a_tampered_payload_fails_the_job_without_being_unpickled(db, markers, payload_of):
    marker = markers / "unpickled"
    q = litejobs.Queue(db, secret=SECRET)
    job = q.put(Job(sample_jobs.add, 1, 2))
    hostile = call_pickle(payload_of(marker))
    sql(db, "UPDATE litejobs_jobs SET payload = ? WHERE id = ?", (hostile, job.id))

    assert q.run_pending() == 1
    assert_refused_unloaded(job)
    with pytest.raises(litejobs.SignatureError):
        q.get(job.id).args
    with pytest.raises(litejobs.SignatureError):
        q.get(job.id).callable
    assert present(marker) == []

    load_on_purpose(hostile)  # the payload was live all along
    assert present(marker) == [str(marker)]


def test_an_unsigned_row_fails_without_being_unpickled(db, markers):
    marker = markers / "unpickled"
    q = litejobs.Queue(db, secret=SECRET)
    signed = q.put(Job(sample_jobs.add, 1, 2))
    sql(db, "UPDATE litejobs_jobs SET signature = NULL WHERE id = ?", (signed.id,))
    # And a row written by a queue without the secret, carrying a hostile argument.
    unsigned = litejobs.Queue(db).put(Job(sample_jobs.echo, "ok"))
    sql(db, "UPDATE litejobs_jobs SET payload = ? WHERE id = ?",
        (call_pickle(hostile_jobs.OpenMarker(marker)), unsigned.id))

    assert q.run_pending() == 2
    assert_refused_unloaded(signed, unsigned=True)
    assert_refused_unloaded(unsigned, unsigned=True)
    assert present(marker) == []


def test_a_row_naming_a_module_that_runs_code_on_import_is_never_imported(db, markers,
                                                                          modules):
    marker = markers / "imported"
    module = modules(marker)
    q = litejobs.Queue(db, secret=SECRET)
    forged = q.put(Job(sample_jobs.add, 1, 2))
    unsigned = q.put(Job(sample_jobs.add, 1, 2))
    with_thing = q.put(Job(sample_jobs.echo, 1))
    # Its name changed under a valid signature; no payload and no signature;
    # a foreign class inside the payload, under the old signature.
    sql(db, "UPDATE litejobs_jobs SET name = ?, payload = NULL WHERE id = ?",
        (f"{module}:run", forged.id))
    sql(db, "UPDATE litejobs_jobs SET name = ?, payload = NULL, signature = NULL "
            "WHERE id = ?", (f"{module}:run", unsigned.id))
    sql(db, "UPDATE litejobs_jobs SET payload = ? WHERE id = ?",
        (hostile_jobs.foreign_call_pickle(module, 7), with_thing.id))

    assert q.run_pending() == 3
    assert_refused_unloaded(forged)
    assert_refused_unloaded(unsigned, unsigned=True)
    assert_refused_unloaded(with_thing)
    assert module not in sys.modules
    assert present(marker) == []

    # The module was importable all along: a runner without the secret runs it.
    plain = litejobs.Queue(db)
    plain.get(unsigned.id).retry()
    assert plain.run_pending() == 1
    assert plain.get(unsigned.id).wait(timeout=5) == "ran"
    assert present(marker) == [str(marker)]


def test_the_signature_covers_the_name_of_the_callable(db):
    q = litejobs.Queue(db, secret=SECRET)
    job = q.put(Job(sample_jobs.add, 1, 2))
    # The same arguments and signature, handed to another (harmless) function.
    sql(db, "UPDATE litejobs_jobs SET name = 'sample_jobs:echo' WHERE id = ?", (job.id,))
    q.run_pending()
    assert_refused_unloaded(job)


def test_a_signed_result_cannot_pass_for_a_signed_call(db):
    q = litejobs.Queue(db, secret=SECRET)
    # A job whose result pickles exactly like a stored call: (None, args, kwargs).
    maker = q.put(Job(hostile_jobs.identity, (None, (40, 2), {})))
    assert q.run_pending() == 1
    assert maker.wait(timeout=5) == (None, (40, 2), {})
    victim = q.put(Job(sample_jobs.add, 1, 2))
    row = row_of(db, maker.id)
    assert pickle.loads(row["result"]) == (None, (40, 2), {})
    sql(db, "UPDATE litejobs_jobs SET payload = ?, signature = ? WHERE id = ?",
        (row["result"], row["result_signature"], victim.id))
    assert q.run_pending() == 1
    assert_refused_unloaded(victim)  # not add(40, 2)


def test_keys_rotate_the_first_signs_and_every_one_verifies(db):
    old = litejobs.Queue(db, secret=OLD_SECRET)
    ran_before = old.put(Job(sample_jobs.add, 1, 1))
    old.run_pending()
    waiting_since_before = old.put(Job(sample_jobs.add, 2, 2))

    rotated = litejobs.Queue(db, secret=[NEW_SECRET, OLD_SECRET])
    assert rotated.get(ran_before.id).result == 2  # a result signed with the old key
    assert rotated.run_pending() == 1  # a job signed with the old key
    assert rotated.get(waiting_since_before.id).result == 4
    after = rotated.put(Job(sample_jobs.add, 3, 3))

    new_only = litejobs.Queue(db, secret=NEW_SECRET)
    assert new_only.get(waiting_since_before.id).result == 4  # signed by `rotated`: new key
    assert new_only.run_pending() == 1
    assert new_only.get(after.id).result == 6
    with pytest.raises(litejobs.SignatureError, match="not signed with any of the secrets"):
        new_only.get(ran_before.id).result  # signed with the old key only
    stale = old.put(Job(sample_jobs.add, 4, 4))
    assert new_only.run_pending() == 1
    assert_refused_unloaded(new_only.get(stale.id))
    # The old key alone no longer verifies what the new one signed.
    with pytest.raises(litejobs.SignatureError):
        old.get(after.id).result


def test_litejobs_secret_in_the_environment_signs_and_verifies(db, monkeypatch):
    first, second = "environment key number one", "environment key number two"
    monkeypatch.setenv("LITEJOBS_SECRET", f",{first},,{second},")  # empty parts ignored
    from_env = litejobs.Queue(db)
    job = from_env.put(Job(sample_jobs.add, 5, 5))

    assert litejobs.Queue(db, secret=first).get(job.id).args == (5, 5)  # signed with the first
    with pytest.raises(litejobs.SignatureError):
        litejobs.Queue(db, secret=second).get(job.id).args
    by_second = litejobs.Queue(db, secret=second).put(Job(sample_jobs.add, 6, 6))
    assert from_env.run_pending() == 2  # the second verifies too
    assert from_env.get(by_second.id).result == 12

    # An explicit secret replaces the environment's.
    explicit = litejobs.Queue(db, secret=OTHER_SECRET)
    with pytest.raises(litejobs.SignatureError):
        explicit.get(job.id).result
    refused = from_env.put(Job(sample_jobs.add, 7, 7))
    explicit.run_pending()
    assert_refused_unloaded(explicit.get(refused.id))

    for bad in ("short", f"{first},short", ",", " , "):
        monkeypatch.setenv("LITEJOBS_SECRET", bad)
        with pytest.raises(litejobs.LitejobsError, match="at least 16 bytes"):
            litejobs.Queue(db)
    monkeypatch.setenv("LITEJOBS_SECRET", "  ")  # blank: no signing
    assert litejobs.Queue(db).get(job.id).args == (5, 5)


def test_a_runner_without_a_secret_leaves_signed_jobs_to_one_with_it_and_says_so_once(
        db, caplog):
    signer = litejobs.Queue(db, secret=SECRET)
    signed = [signer.put(Job(sample_jobs.add, n, 1)) for n in range(3)]
    plain = litejobs.Queue(db)
    unsigned = plain.put(Job(sample_jobs.add, 10, 1))
    with caplog.at_level(logging.ERROR, logger="litejobs"):
        assert plain.run_pending() == 1  # the unsigned job alone
    assert unsigned.wait(timeout=1) == 11
    said = [r.getMessage() for r in caplog.records if "is signed, but" in r.getMessage()]
    assert len(said) == 1 and "no secret" in said[0], said
    for job in signed:
        job.refresh()
        assert (job.status, job.attempts) == (litejobs.PENDING, 0)
    # The one it met before it knew is given back, saying why.
    assert [entry["event"] for entry in signed[0].history] == ["refused"]
    assert "no secret" in signed[0].history[0]["error"]
    assert signer.run_pending() == 3
    assert [job.wait(timeout=1) for job in signed] == [1, 2, 3]
    assert all(row_of(db, job.id)["result_signature"] for job in signed)


def test_a_tampered_or_unsigned_result_is_refused_without_being_unpickled(db, markers):
    marker = markers / "unpickled"
    q = litejobs.Queue(db, secret=SECRET)
    tampered = q.put(Job(sample_jobs.add, 1, 2))
    unsigned = q.put(Job(sample_jobs.add, 3, 4))
    q.run_pending()
    hostile = pickle.dumps(hostile_jobs.OpenMarker(marker))
    sql(db, "UPDATE litejobs_jobs SET result = ? WHERE id = ?", (hostile, tampered.id))
    sql(db, "UPDATE litejobs_jobs SET result = ?, result_signature = NULL WHERE id = ?",
        (hostile, unsigned.id))

    for job in (tampered, unsigned):
        job.refresh()
        assert job.status == litejobs.COMPLETED
        with pytest.raises(litejobs.SignatureError, match="it was not unpickled"):
            job.result
        with pytest.raises(litejobs.SignatureError):
            job.wait(timeout=5)
        with pytest.raises(litejobs.SignatureError):
            q.get(job.id).result
    assert present(marker) == []


def test_a_callback_given_a_tampered_result_fails_without_unpickling_it(db, markers):
    marker = markers / "unpickled"
    q = litejobs.Queue(db, secret=SECRET)
    job = q.put(Job(sample_jobs.add, 1, 2))
    callback = job.add_callback(hostile_jobs.describe)
    assert q.run_pending(limit=1) == 1  # the job alone; its callback is now due
    assert callback.refresh().status == litejobs.PENDING
    sql(db, "UPDATE litejobs_jobs SET result = ? WHERE id = ?",
        (pickle.dumps(hostile_jobs.OpenMarker(marker)), job.id))

    assert q.run_pending() == 1
    callback.refresh()
    assert callback.status == litejobs.FAILED
    assert callback.error_type == "litejobs.SignatureError", callback.error
    assert present(marker) == []


def test_parts_with_a_tampered_result_fail_their_composite_without_unpickling(db, markers):
    marker = markers / "unpickled"
    q = litejobs.Queue(db, secret=SECRET)
    composite = q.put(litejobs.parallel(Job(sample_jobs.add, 1, 1), Job(sample_jobs.add, 2, 2)))
    assert q.run_pending(limit=2) == 2  # the parts; gathering their results is now due
    first = composite.children()[0]
    assert first.status == litejobs.COMPLETED
    sql(db, "UPDATE litejobs_jobs SET result = ? WHERE id = ?",
        (pickle.dumps(hostile_jobs.OpenMarker(marker)), first.id))

    q.run_pending()
    composite.refresh()
    assert composite.status == litejobs.FAILED
    assert "SignatureError" in composite.error
    assert present(marker) == []


@pytest.mark.parametrize("secret, error, message", [
    ("fifteen bytes!!", ValueError, "at least 16 bytes"),
    (b"fifteen bytes!!", ValueError, "at least 16 bytes"),
    ("", ValueError, "at least 16 bytes"),
    ("é" * 7, ValueError, "at least 16 bytes"),  # 7 characters, 14 bytes
    ([SECRET, "short"], ValueError, "at least 16 bytes"),
    ([SECRET, 12345678901234567], TypeError, "str or bytes"),
    ([SECRET, None], TypeError, "str or bytes"),
    (12345678901234567, TypeError, "non-empty list"),
    ([], TypeError, "non-empty list"),
    (bytearray(b"x" * 15), ValueError, "at least 16 bytes"),
], ids=["short-str", "short-bytes", "empty", "short-in-bytes", "short-in-list",
        "int-in-list", "none-in-list", "int", "empty-list", "short-bytearray"])
def test_bad_secrets_are_refused(db, secret, error, message):
    with pytest.raises(error, match=message):
        litejobs.Queue(db, secret=secret)
    with pytest.raises(error, match=message):
        litejobs.Worker(db, secret=secret)
    assert not os.path.exists(db)  # refused before the file was created


def test_sixteen_bytes_is_enough(db):
    q = litejobs.Queue(db, secret="é" * 8)
    job = q.put(Job(sample_jobs.add, 1, 1))
    q.run_pending()
    assert job.wait(timeout=5) == 2


def test_a_pickled_queue_does_not_carry_its_secret(db):
    q = litejobs.Queue(db, secret=[SECRET, OLD_SECRET])
    q.put(Job(sample_jobs.add, 1, 2))
    data = pickle.dumps(q)
    for key in (SECRET.encode(), OLD_SECRET, SECRET.encode("utf-16-le")):
        assert key not in data
    assert SECRET not in repr(q)

    # Unpickled in this process, the copy uses the secret given here ...
    signed = pickle.loads(data).put(Job(sample_jobs.add, 5, 6))
    assert row_of(db, signed.id)["signature"] is not None
    # ... and in another process, without LITEJOBS_SECRET, it has none.
    script = ("import pickle, sys; from litejobs import Job; import sample_jobs; "
              "print(pickle.loads(sys.stdin.buffer.read()).put(Job(sample_jobs.add, 3, 4)).id)")
    done = subprocess.run([sys.executable, "-c", script], input=data, capture_output=True,
                          env=cli_env(), timeout=60, check=True)
    unsigned = q.get(int(done.stdout))
    assert row_of(db, unsigned.id)["signature"] is None
    q.run_pending()
    assert q.get(signed.id).result == 11
    assert_refused_unloaded(q.get(unsigned.id), unsigned=True)


def test_the_secret_is_never_written_to_the_database(db):
    q = litejobs.Queue(db, secret=SECRET)
    q.put_many([Job(sample_jobs.add, i, i) for i in range(20)])
    q.run_pending()
    with q.worker(processes=1) as pool:
        job = q.put(Job(sample_jobs.add, 5, 5))
        assert job.wait(timeout=WAIT) == 10
        assert pool.alive
    contents = b"".join(open(path, "rb").read() for path in (db, db + "-wal", db + "-shm")
                        if os.path.exists(path))
    assert SECRET.encode() not in contents


# == 1. signing, in real pools ===============================================================


def put_hostile_rows(db, markers, module):
    """Put, with SECRET, one good job and four that are tampered with
    afterwards; return them by what was done to them, and the markers."""
    q = litejobs.Queue(db, secret=SECRET)
    jobs = {
        "good": q.put(Job(sample_jobs.add, 1, 2)),
        "reduce-open": q.put(Job(sample_jobs.add, 1, 2)),
        "reduce-os-system": q.put(Job(sample_jobs.add, 1, 2)),
        "module-unsigned": q.put(Job(sample_jobs.add, 1, 2)),
        "module-forged": q.put(Job(sample_jobs.add, 1, 2)),
    }
    opened, system, imported = (markers / "opened", markers / "system",
                                markers / "imported")
    sql(db, "UPDATE litejobs_jobs SET payload = ? WHERE id = ?",
        (call_pickle(hostile_jobs.OpenMarker(opened)), jobs["reduce-open"].id))
    sql(db, "UPDATE litejobs_jobs SET payload = ? WHERE id = ?",
        (call_pickle(hostile_jobs.SystemMarker(system)), jobs["reduce-os-system"].id))
    sql(db, "UPDATE litejobs_jobs SET name = ?, payload = NULL, signature = NULL WHERE id = ?",
        (f"{module}:run", jobs["module-unsigned"].id))
    sql(db, "UPDATE litejobs_jobs SET name = ?, payload = ? WHERE id = ?",
        (f"{module}:run", hostile_jobs.foreign_call_pickle(module, 1),
         jobs["module-forged"].id))
    return q, jobs, (opened, system, imported)


def assert_pool_refused_hostile_rows(q, jobs, marker_paths):
    assert q.get(jobs["good"].id).result == 3
    for what, job in jobs.items():
        if what != "good":
            assert_refused_unloaded(job, unsigned=what == "module-unsigned")
    assert present(*marker_paths) == []


def test_a_pool_with_a_secret_refuses_hostile_rows_without_loading_them(db, markers,
                                                                        modules):
    module = modules(markers / "imported")
    q, jobs, marker_paths = put_hostile_rows(db, markers, module)

    with q.worker(processes=1) as pool:
        wait_until(lambda: q.counts()["pending"] + q.counts()["active"] == 0,
                   what="the pool to run every job", details=lambda: str(q.counts()))
        assert_pool_refused_hostile_rows(q, jobs, marker_paths)
        # The child that refused them is fine, and the pool goes on.
        assert q.put(Job(sample_jobs.add, 2, 2)).wait(timeout=WAIT) == 4
        for pid in child_pids(pool):  # the secret reached the children through a pipe only
            for what in ("cmdline", "environ"):
                with open(f"/proc/{pid}/{what}", "rb") as handle:
                    assert SECRET.encode() not in handle.read()
        assert pool.crashes == []
        assert module not in sys.modules
        assert present(*marker_paths) == []
        # The module was importable by the pool's children all along.
        imports = q.put(Job(hostile_jobs.import_by_name, module))
        assert imports.wait(timeout=WAIT) == module
        assert present(marker_paths[2]) == [str(marker_paths[2])]


def test_the_cli_worker_takes_its_secret_from_litejobs_secret(db, markers, modules,
                                                              cli_pools):
    module = modules(markers / "imported")
    q, jobs, marker_paths = put_hostile_rows(db, markers, module)
    env = cli_env(modules.directory, LITEJOBS_SECRET=f"{SECRET},{OLD_SECRET.decode()}")

    pool = cli_pools.start(db, "-p", "1", env=env)
    wait_until(lambda: pool.proc.poll() is not None
               or q.counts()["pending"] + q.counts()["active"] == 0,
               what="the pool to run every job", details=pool.log)
    assert pool.proc.poll() is None, pool.log()
    assert_pool_refused_hostile_rows(q, jobs, marker_paths)
    # The pool signed the result with the environment's first key.
    assert litejobs.Queue(db, secret=OLD_SECRET).get(jobs["good"].id).status == "completed"
    with pytest.raises(litejobs.SignatureError):
        litejobs.Queue(db, secret=OLD_SECRET).get(jobs["good"].id).result
    assert litejobs.Queue(db, secret=SECRET).get(jobs["good"].id).result == 3
    # A job signed with the second key runs too.
    second = litejobs.Queue(db, secret=OLD_SECRET).put(Job(sample_jobs.add, 2, 3))
    assert q.get(second.id).wait(timeout=WAIT) == 5

    pool.proc.send_signal(signal.SIGTERM)
    assert pool.wait_exit() == 0, pool.log()
    log = pool.log()
    assert "SignatureError" in log and SECRET not in log
    assert present(*marker_paths) == []

    # The module was importable by that pool all along.
    done = subprocess.run([sys.executable, "-c", f"import {module}"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert present(marker_paths[2]) == [str(marker_paths[2])]


@pytest.mark.parametrize("words", [["worker", "--burst"], ["status"], ["show", "1"]],
                         ids=" ".join)
def test_a_bad_litejobs_secret_is_a_one_line_error_for_the_cli(q, tmp_path, words):
    q.put(Job(sample_jobs.add, 1, 2))
    env = cli_env(LITEJOBS_SECRET="too short")
    done = run_cli(words[0], q.path, *words[1:], cwd=tmp_path, env=env)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode in (1, 2), done.stderr
    assert done.stderr.count("\n") == 1 and "error:" in done.stderr
    assert "LITEJOBS_SECRET" in done.stderr or "secret" in done.stderr
    assert "too short" not in done.stderr  # the error never echoes a secret
    assert q.counts()["pending"] == 1


# == 2. the command line never unpickles for real ===========================================


def completed_row(db, payload, result, name="sample_jobs:echo"):
    """A completed job whose row holds ``payload`` and ``result`` as written
    by plain SQL; returns its id."""
    q = litejobs.Queue(db)
    job = q.put(Job(sample_jobs.echo, 1))
    q.run_pending()
    sql(db, "UPDATE litejobs_jobs SET name = ?, payload = ?, result = ? WHERE id = ?",
        (name, payload, result, job.id))
    q.close()
    return job.id


def test_list_show_watch_and_status_never_load_hostile_rows(db, tmp_path, markers, modules):
    opened, system, result_opened, imported = (markers / "opened", markers / "system",
                                               markers / "result-opened", markers / "imported")
    module = modules(imported)
    reducing = completed_row(
        db, call_pickle(hostile_jobs.OpenMarker(opened), hostile_jobs.SystemMarker(system)),
        pickle.dumps(hostile_jobs.OpenMarker(result_opened)))
    foreign = completed_row(db, hostile_jobs.foreign_call_pickle(module, {"n": 1}),
                            pickle.dumps(hostile_jobs.SystemMarker(system)),
                            name=f"{module}:run")
    env = cli_env(modules.directory)
    outputs = {}
    for words in (["list", db], ["list", db, "--json"], ["status", db],
                  ["show", db, reducing], ["show", db, reducing, "--json"],
                  ["show", db, foreign], ["show", db, foreign, "--json"],
                  ["watch", db, reducing], ["watch", db, foreign]):
        done = run_cli(*words, cwd=tmp_path, env=env)
        assert done.returncode == 0 and done.stderr == "", (words, done.stderr)
        outputs[" ".join(map(str, words))] = done.stdout
    assert present(opened, system, result_opened, imported) == []

    shown = json.loads(outputs[f"show {db} {reducing} --json"])
    assert shown["call"] == (f"sample_jobs:echo(io.open({str(opened)!r}, 'w'), "
                             f"posix.system(\"touch '{system}'\"))")
    assert shown["result"] == f"io.open({str(result_opened)!r}, 'w')"
    shown = json.loads(outputs[f"show {db} {foreign} --json"])
    assert shown["call"] == f"{module}:run({module}.Thing({{'value': {{'n': 1}}}}))"
    assert f"  call       {module}:run({module}.Thing(" in outputs[f"show {db} {foreign}"]
    assert module not in sys.modules


def test_show_prints_ordinary_arguments_readably(q, capsys):
    when = datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc)
    job = q.put(Job(sample_jobs.echo, 7, "text", {"key": [1, 2.5, None]}, when,
                    sample_jobs.Greeter("hello"), flag=True, day=when.date()))
    q.run_pending()

    assert litejobs.main(["show", q.path, str(job.id), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["call"] == (
        "sample_jobs:echo(7, 'text', {'key': [1, 2.5, None]}, "
        "datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc), "
        "sample_jobs.Greeter({'greeting': 'hello'}), flag=True, day=datetime.date(2024, 5, 6))")
    assert shown["result"].startswith("((7, 'text', {'key': [1, 2.5, None]}, datetime.datetime(")
    assert "sample_jobs.Greeter({'greeting': 'hello'})" in shown["result"]


def timed_show(db, job_id, tmp_path, memory=2 ** 30):
    """``show`` in a process limited to ``memory`` bytes of address space;
    returns (seconds taken, CompletedProcess)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    started = time.monotonic()
    done = run_cli("show", db, job_id, cwd=tmp_path, preexec_fn=limit, timeout=60)
    return time.monotonic() - started, done


def test_show_of_a_deeply_shared_pickle_is_quick_and_bounded(db, tmp_path):
    nest = hostile_jobs.shared_nest(40)
    payload = call_pickle(nest, key=nest)
    foreign = hostile_jobs.foreign_call_pickle("somewhere_else", nest)
    assert len(payload) < 2000 and len(foreign) < 2000
    plain = completed_row(db, payload, pickle.dumps(nest))
    opaque = completed_row(db, foreign, foreign)
    for job_id in (plain, opaque):
        seconds, done = timed_show(db, job_id, tmp_path)
        assert done.returncode == 0, done.stderr
        assert seconds < 10
        lines = done.stdout.splitlines()
        call = next(line for line in lines if line.startswith("  call "))
        result = next(line for line in lines if line.startswith("  result "))
        for line in (call, result):
            assert "[[[" in line or "somewhere_else.Thing(" in line, line
            assert len(line) <= 600, len(line)
            assert "cannot be shown" not in line
        assert len(done.stdout) < 5000


@pytest.mark.parametrize("hostile", [
    hostile_jobs.HugeSet(10 ** 12), hostile_jobs.HugeBytes(2 ** 40),
], ids=["set-of-a-huge-range", "huge-bytearray"])
def test_show_does_not_build_what_a_tiny_pickle_asks_for(db, tmp_path, hostile):
    """A pickle of a few dozen bytes that, loaded for real, would build a
    set of 10**12 integers, or a bytearray of 2**40 bytes.  `show` runs
    limited to 1 GiB here, so a build fails fast instead of exhausting
    the machine; but it should not build it at all."""
    payload, result = call_pickle(hostile), pickle.dumps(hostile)
    assert len(payload) < 200 and len(result) < 200
    job_id = completed_row(db, payload, result)
    seconds, done = timed_show(db, job_id, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "MemoryError" not in done.stdout, done.stdout
    assert seconds < 10


def _get(index):
    return pickle.LONG_BINGET + struct.pack("<I", index)


def _call_of(*ops):
    """The payload of a call by name whose one argument the opcodes ``ops`` push."""
    return b"".join([pickle.PROTO, b"\x04", pickle.NONE, pickle.MARK, *ops, pickle.TUPLE,
                     pickle.EMPTY_DICT, pickle.TUPLE3, pickle.STOP])


def _shared_tuples(depth):
    """Opcodes pushing a tuple holding the one below twice, ``depth`` deep: a
    few bytes a level, and 2 ** depth steps to hash."""
    ops = [pickle.EMPTY_TUPLE, pickle.MEMOIZE, pickle.POP]
    for level in range(depth):
        ops += [_get(level), pickle.DUP, pickle.TUPLE2, pickle.MEMOIZE, pickle.POP]
    return [*ops, _get(depth)]


def _ordered_dict_of(*ops):
    return [pickle.GLOBAL, b"collections\nOrderedDict\n", pickle.EMPTY_TUPLE, pickle.REDUCE,
            pickle.MARK, pickle.BINUNICODE, struct.pack("<I", 1), b"a", *ops, pickle.SETITEMS]


HOSTILE_CALLS = {
    # hashing a shared nest of tuples, as a set item or a dict key, never ends
    "shared-tuples-in-a-set": _call_of(pickle.EMPTY_SET, pickle.MARK, *_shared_tuples(60),
                                       pickle.ADDITEMS),
    "shared-tuples-as-a-key": _call_of(pickle.EMPTY_DICT, *_shared_tuples(60), pickle.NONE,
                                       pickle.SETITEM),
    "shared-tuples-in-a-frozenset": _call_of(pickle.MARK, *_shared_tuples(60),
                                             pickle.FROZENSET),
    # hashing a tuple nested a million deep overflows the C stack
    "deep-tuple-in-a-set": _call_of(pickle.EMPTY_SET, pickle.MARK, pickle.EMPTY_TUPLE,
                                    pickle.TUPLE1 * 10 ** 6, pickle.ADDITEMS),
    # an OrderedDict's own repr walks the shared nest in full
    "shared-nest-in-an-ordered-dict": _call_of(*_ordered_dict_of(*_shared_tuples(60))),
    # the C unpickler allocates a memo as large as the highest index named
    "memo-index-2-to-the-27": _call_of(pickle.NONE, pickle.LONG_BINPUT,
                                       struct.pack("<I", 2 ** 27)),
    # thousands of arguments, each a bounded but wide nest
    "5000-wide-arguments": b"".join([
        pickle.PROTO, b"\x04", pickle.NONE, pickle.MARK, *_shared_tuples(30),
        (_get(30) * 5000), pickle.TUPLE, pickle.EMPTY_DICT, pickle.TUPLE3, pickle.STOP]),
}


@pytest.mark.parametrize("name", HOSTILE_CALLS)
def test_show_is_quick_and_small_on_hostile_pickles(db, tmp_path, name):
    payload = HOSTILE_CALLS[name]
    assert len(payload) < 1_100_000
    job_id = completed_row(db, payload, payload)
    seconds, done = timed_show(db, job_id, tmp_path)
    assert done.returncode == 0, done.stderr
    assert seconds < 10
    lines = done.stdout.splitlines()
    call = next(line for line in lines if line.startswith("  call "))
    assert call.startswith("  call       sample_jobs:echo("), call
    assert len(call) <= 600 and len(done.stdout) < 5000


def test_show_escapes_class_names_that_would_write_to_the_terminal(db, tmp_path):
    forged = "m\n  result     'all good'\n\x1b[2J"
    module = forged.encode()
    payload = _call_of(pickle.BINUNICODE, struct.pack("<I", len(module)), module,
                       pickle.BINUNICODE, struct.pack("<I", 1), b"x", pickle.STACK_GLOBAL,
                       pickle.EMPTY_TUPLE, pickle.REDUCE)
    job_id = completed_row(db, payload, pickle.dumps("the real result"))
    done = run_cli("show", db, job_id, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout
    assert [line for line in done.stdout.splitlines() if line.startswith("  result ")] == \
        ["  result     'the real result'"]


def test_a_job_given_a_job_reads_its_result_with_the_secret_given_in_code(db, markers):
    """A Job (or a Queue) that a job gets as an argument is rebuilt from its
    pickle, which never carries the secret; it still uses the secret this
    process was given for the file, so a forged result is refused."""
    q = litejobs.Queue(db, secret=SECRET)
    source = q.put(Job(sample_jobs.add, 1, 2))
    q.run_pending()
    marker = markers / "forged-result"
    sql(db, "UPDATE litejobs_jobs SET result = ? WHERE id = ?",
        (pickle.dumps(hostile_jobs.OpenMarker(marker)), source.id))
    reader = q.put(Job(hostile_jobs.result_of, source))  # a Job as an argument
    q.run_pending()
    reader.refresh()
    assert (reader.status, reader.error_type) == (litejobs.FAILED, "litejobs.SignatureError")
    assert not marker.exists()


def test_a_pool_given_its_secret_in_code_ignores_a_bad_litejobs_secret(db, monkeypatch):
    q = litejobs.Queue(db, secret=SECRET)
    job = q.put(Job(sample_jobs.add, 2, 3))
    monkeypatch.setenv("LITEJOBS_SECRET", "short")  # the children must not read it
    with litejobs.Worker(db, processes=1, secret=SECRET).start():
        assert job.wait(timeout=WAIT) == 5


def test_a_pool_on_a_queue_refuses_a_secret_or_size_limit_of_its_own(db):
    q = litejobs.Queue(db)
    for options in ({"secret": SECRET}, {"size_limit": 10}):
        with pytest.raises(TypeError, match="give them to the Queue"):
            litejobs.Worker(q, processes=1, **options)


def test_show_with_litejobs_secret_shows_only_intact_rows(db, tmp_path, markers):
    marker = markers / "unpickled"
    q = litejobs.Queue(db, secret=SECRET)
    intact = q.put(Job(sample_jobs.echo, 1, "two"))
    bad_call = q.put(Job(sample_jobs.echo, 3))
    bad_result = q.put(Job(sample_jobs.echo, 4))
    q.run_pending()
    sql(db, "UPDATE litejobs_jobs SET payload = ? WHERE id = ?",
        (call_pickle("forged", hostile_jobs.OpenMarker(marker)), bad_call.id))
    sql(db, "UPDATE litejobs_jobs SET result = ? WHERE id = ?",
        (pickle.dumps("forged"), bad_result.id))
    env = cli_env(LITEJOBS_SECRET=SECRET)

    def show(job_id):
        done = run_cli("show", db, job_id, "--json", cwd=tmp_path, env=env)
        assert done.returncode == 0 and done.stderr == "", done.stderr
        assert SECRET not in done.stdout
        return json.loads(done.stdout)

    shown = show(intact.id)
    assert shown["call"] == "sample_jobs:echo(1, 'two')"
    assert shown["result"] == "((1, 'two'), {})"
    shown = show(bad_call.id)
    assert "SignatureError" in shown["call"] and "forged" not in shown["call"]
    assert shown["result"] == "((3,), {})"
    shown = show(bad_result.id)
    assert shown["call"] == "sample_jobs:echo(4)"
    assert "SignatureError" in shown["result"] and "forged" not in shown["result"]
    # Without the secret, show prints the forged call, as data only.
    done = run_cli("show", db, bad_call.id, "--json", cwd=tmp_path)
    assert "forged" in json.loads(done.stdout)["call"]
    assert present(marker) == []


# == 3. size limits =========================================================================


def test_a_call_over_the_size_limit_is_refused_and_nothing_is_written(db):
    q = litejobs.Queue(db)
    assert q._storage.size_limit == litejobs.DEFAULT_SIZE_LIMIT == 4 * 2 ** 20
    with pytest.raises(litejobs.PayloadTooLarge, match="over the size limit") as caught:
        q.put(Job(sample_jobs.echo, b"x" * litejobs.DEFAULT_SIZE_LIMIT))
    assert isinstance(caught.value, ValueError)
    assert job_count(db) == 0

    # The limit is on the pickled call: exactly at it is accepted, a byte over is not.
    small = litejobs.Queue(db, size_limit=1000)
    probe = small.put(Job(sample_jobs.echo, b"x" * 500))
    overhead = len(row_of(db, probe.id)["payload"]) - 500
    exact = small.put(Job(sample_jobs.echo, b"x" * (1000 - overhead)))
    assert len(row_of(db, exact.id)["payload"]) == 1000
    with pytest.raises(litejobs.PayloadTooLarge):
        small.put(Job(sample_jobs.echo, b"x" * (1001 - overhead)))
    assert job_count(db) == 2


def test_one_call_over_the_limit_writes_none_of_its_batch(db):
    q = litejobs.Queue(db, size_limit=10_000)
    first = q.put(Job(sample_jobs.add, 0, 0))
    big = Job(sample_jobs.echo, b"x" * 20_000)
    batches = [
        lambda: q.put_many([Job(sample_jobs.add, i, i) for i in range(50)] + [big]),
        lambda: q.put(litejobs.parallel(*[Job(sample_jobs.add, i, i) for i in range(5)], big)),
        lambda: q.put(litejobs.serial(Job(sample_jobs.add, 1, 1), big)),
        lambda: q.put(litejobs.parallel(Job(sample_jobs.add, 1, 1),
                                        postprocess=Job(sample_jobs.echo, b"p" * 20_000))),
    ]
    for put in batches:
        with pytest.raises(litejobs.PayloadTooLarge):
            put()
    with pytest.raises(litejobs.PayloadTooLarge):
        with q.transaction():
            q.put(Job(sample_jobs.add, 1, 1))
            q.put(big)
    with pytest.raises(litejobs.PayloadTooLarge):
        first.add_callback(Job(sample_jobs.echo, b"c" * 20_000))
    assert job_count(db) == 1

    # Through the application's own transaction: the job is refused, and the
    # application's transaction stays open and its own writes stay its own.
    app = sqlite3.connect(db, isolation_level=None, timeout=10)
    app.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    app.execute("BEGIN IMMEDIATE")
    app.execute("INSERT INTO orders (id) VALUES (8)")
    with pytest.raises(litejobs.PayloadTooLarge):
        q.put(big, conn=app)
    assert app.in_transaction
    app.execute("COMMIT")
    assert app.execute("SELECT id FROM orders").fetchall() == [(8,)]
    app.close()
    assert job_count(db) == 1


def test_a_result_over_the_size_limit_fails_its_job(db):
    q = litejobs.Queue(db, size_limit=10_000)
    big = q.put(Job(hostile_jobs.sized_result, 20_000))
    fits = q.put(Job(hostile_jobs.sized_result, 5_000))
    assert q.run_pending() == 2
    big.refresh()
    assert big.status == litejobs.FAILED
    assert big.error_type == "litejobs.PayloadTooLarge"
    assert "over the size limit of 10,000" in big.error
    assert row_of(db, big.id)["result"] is None
    assert fits.wait(timeout=5) == b"x" * 5_000


def test_a_result_over_the_size_limit_fails_its_job_in_a_pool(db):
    q = litejobs.Queue(db, size_limit=10_000)
    with q.worker(processes=1) as pool:
        big = q.put(Job(hostile_jobs.sized_result, 20_000))
        with pytest.raises(litejobs.JobFailed) as caught:
            big.wait(timeout=WAIT)
        assert big.refresh().error_type == "litejobs.PayloadTooLarge"
        assert "over the size limit" in caught.value.traceback
        assert q.put(Job(hostile_jobs.sized_result, 5_000)).wait(timeout=WAIT) == b"x" * 5_000
        assert pool.crashes == []


def test_a_returned_job_over_the_size_limit_fails_the_job(db):
    q = litejobs.Queue(db, size_limit=10_000)
    job = q.put(Job(hostile_jobs.return_job_with_argument_of, 20_000))
    q.run_pending()  # must not raise: the job's run ended with an outcome to record
    job.refresh()
    assert job.status == litejobs.FAILED, (job.status, job.error)
    assert job.error_type == "litejobs.PayloadTooLarge"
    assert job_count(db) == 1


def test_a_returned_job_over_the_size_limit_fails_the_job_not_the_pool(db):
    q = litejobs.Queue(db, size_limit=10_000)
    pool = litejobs.Worker(q, processes=1).start()
    try:
        job = q.put(Job(hostile_jobs.return_job_with_argument_of, 20_000))
        wait_until(lambda: q.get(job.id).status != litejobs.PENDING or not pool.alive,
                   what="the job to be run")
        wait_until(lambda: q.get(job.id).status == litejobs.FAILED or not pool.alive,
                   what="the job to end", details=lambda: q.get(job.id).status)
        assert pool.alive, f"the pool died: {pool._error!r}"
        assert q.get(job.id).error_type == "litejobs.PayloadTooLarge"
        assert q.put(Job(sample_jobs.add, 1, 1)).wait(timeout=WAIT) == 2
    finally:
        with contextlib.suppress(Exception):
            pool.stop(grace=0, timeout=30)


def test_size_limit_none_lifts_the_limit(db):
    q = litejobs.Queue(db, size_limit=None)
    size = litejobs.DEFAULT_SIZE_LIMIT + 1024
    echoed = q.put(Job(sample_jobs.echo, b"x" * size))
    made = q.put(Job(hostile_jobs.sized_result, size))
    assert q.run_pending() == 2
    assert echoed.wait(timeout=5)[0][0] == b"x" * size
    assert made.wait(timeout=5) == b"x" * size


@pytest.mark.parametrize("value, error", [
    (0, ValueError), (-1, ValueError), (2 ** 63, ValueError),
    ("4M", TypeError), (1.5, TypeError), (True, TypeError),
])
def test_bad_size_limits_are_refused(db, value, error):
    with pytest.raises(error, match="size_limit"):
        litejobs.Queue(db, size_limit=value)
    with pytest.raises(error, match="size_limit"):
        litejobs.Worker(db, size_limit=value)
    assert not os.path.exists(db)


@pytest.mark.parametrize("value", ["0", "abc", "-1M", "1X"])
def test_a_bad_size_limit_is_a_usage_error_for_the_cli_worker(q, tmp_path, value):
    done = run_cli("worker", q.path, "--size-limit", value, "--burst", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "size-limit" in done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr


def test_the_cli_worker_size_limit_applies_to_results(q, tmp_path, cli_pools):
    big = q.put(Job(hostile_jobs.sized_result, 80_000))
    fits = q.put(Job(hostile_jobs.sized_result, 30_000))
    pool = cli_pools.start(q.path, "-p", "1", "--size-limit", "64k", "--burst")
    assert pool.wait_exit(timeout=60) == 0, pool.log()
    assert q.get(fits.id).result == b"x" * 30_000
    big.refresh()
    assert big.error_type == "litejobs.PayloadTooLarge"
    assert "over the size limit of 65,536" in big.error


def test_a_pool_without_the_secret_leaves_signed_jobs_to_one_with_it(db, cli_pools):
    signer = litejobs.Queue(db, secret=SECRET)
    signed = [signer.put(Job(sample_jobs.add, n, 1)) for n in range(20)]
    unsigned = litejobs.Queue(db).put(Job(sample_jobs.add, 100, 1))
    plain = cli_pools.start(db, "--burst", "-p", "2")
    assert plain.wait_exit() == 0, plain.log()
    assert unsigned.wait(timeout=5) == 101
    assert plain.log().count("is signed, but") == 1, plain.log()
    assert all(job.refresh().status == litejobs.PENDING for job in signed)
    keyed = cli_pools.start(db, "--burst", "-p", "2",
                            env=cli_env(LITEJOBS_SECRET=SECRET))
    assert keyed.wait_exit() == 0, keyed.log()
    assert [job.wait(timeout=5) for job in signed] == list(range(1, 21))
