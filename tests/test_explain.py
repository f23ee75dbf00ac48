"""`Job.explain` and ``python -m litejobs explain``: why a job is where it is,
a line per reason.  Every test holds on both backends."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

import litejobs
import sample_jobs
from hostile_jobs import cli_env
from litejobs import Job, parallel
from waiting import WAIT


@pytest.fixture
def q(each_backend):
    return each_backend


def test_a_pending_job_names_every_reason_it_waits(q):
    q.set_quota("customer:*", 1)
    held = q.put(Job(sample_jobs.add, 1, 1), quotas=["customer:7"])
    waiting = q.put(Job(sample_jobs.add, 2, 2), quotas=["customer:7"], queue="io",
                    begin_after=240)
    now = time.time() + 1
    q._storage.claim(owner="pool@host-b:12:ab", queues=None, now=now, expires=now + 60, limit=1)
    q.pause("io")
    reasons = waiting.explain()
    assert reasons[0].startswith("due in 3m5") or reasons[0].startswith("due in 4m00s")
    assert reasons[1:] == ["queue 'io' paused until resumed",
                           f"quota 'customer:7' full (1 of 1: job {held.id} on host-b)",
                           "no live pool serves queue 'io'"]
    assert held.explain()[0].startswith("running (attempt 1) on host-b since ")


def test_a_due_job_with_a_live_pool_is_due_now_and_a_passed_deadline_is_said(q, tmp_path):
    gate = tmp_path / "gate"
    with q.worker(processes=1):
        busy = q.put(Job(sample_jobs.wait_for_file, str(gate)))
        # Running before the late one is put: a first claim made after its
        # deadline (a slow machine) would fail it, leaving nothing to explain.
        litejobs.wait_for_start(busy, timeout=WAIT)
        late = q.put(Job(sample_jobs.add, 1, 1), begin_by=0.05)
        time.sleep(0.1)  # on purpose: past its deadline, behind the busy job
        try:
            reasons = late.explain()
            assert reasons[0].startswith("deadline passed at "), reasons
            ready = q.put(Job(sample_jobs.add, 1, 1))
            assert ready.explain() == ["due now; 1 live pool serves queue 'default': it is "
                                       "claimed as soon as one has a free worker process"]
        finally:
            gate.write_text("go")
        assert busy.wait(timeout=WAIT) == 1


def test_waiting_and_ended_jobs_say_what_they_wait_for(q):
    root = q.put(parallel(Job(sample_jobs.add, 1, 1), Job(sample_jobs.add, 2, 2)))
    first = q.put(Job(sample_jobs.add, 1, 1))
    callback = first.add_callback(Job(sample_jobs.double))
    assert root.explain() == ["waiting for 2 of 2 parts"]
    assert callback.explain() == [f"waiting for job {first.id}, which it follows, to end"]
    q.run_pending()
    assert first.explain()[0].startswith("completed at ")


def test_the_explain_command(q):
    job = q.put(Job(sample_jobs.add, 1, 1), begin_after=600)
    done = subprocess.run([sys.executable, "-m", "litejobs", "explain", q.path, str(job.id),
                           "--json"], capture_output=True, text=True, env=cli_env(),
                          timeout=WAIT)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert (found["id"], found["status"]) == (job.id, "pending")
    assert found["reasons"][0].startswith("due in 9m5") or found["reasons"][0].startswith(
        "due in 10m")
    assert found["reasons"][1] == "no live pool serves queue 'default'"
    missing = subprocess.run([sys.executable, "-m", "litejobs", "explain", q.path, "999"],
                             capture_output=True, text=True, env=cli_env(), timeout=WAIT)
    assert missing.returncode == 1 and "no job 999" in missing.stderr


def test_a_rate_limited_quota_at_its_rate_is_said(q):
    q.set_rate("smtp", 1, per=60)
    first = q.put(Job(sample_jobs.add, 1, 1), quotas=["smtp"])
    second = q.put(Job(sample_jobs.add, 2, 2), quotas=["smtp"])
    assert q.run_pending() == 1 and first.refresh().result == 2
    assert second.explain()[0] == "quota 'smtp' at its rate (1 claimed in the last 60s, of 1)"
