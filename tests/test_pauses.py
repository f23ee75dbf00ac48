"""Paused queues (`Queue.pause`): their jobs wait, others run, running jobs
finish; a pause ends by itself at its ``until``, or at `resume`, which wakes
idle pools.  Every test holds on both backends."""

from __future__ import annotations

import datetime
import json
import time

import pytest

import litejobs
import sample_jobs
from hostile_jobs import run_cli
from litejobs import COMPLETED, PENDING, Job
from waiting import WAIT, wait_until

UTC = datetime.timezone.utc


@pytest.fixture
def q(each_backend):
    return each_backend


def test_a_paused_queues_jobs_wait_while_other_queues_run(q):
    pdf = q.put(Job(sample_jobs.add, 1, 1), queue="pdf")
    mail = q.put(Job(sample_jobs.add, 2, 2), queue="mail")
    q.pause("pdf")
    assert list(q.paused()) == ["pdf"] and q.paused()["pdf"] is None
    assert q.run_pending() == 1
    assert (pdf.refresh().status, mail.refresh().status) == (PENDING, COMPLETED)
    assert q.resume("pdf") is True and q.resume("pdf") is False
    assert q.paused() == {}
    assert q.run_pending() == 1 and pdf.refresh().result == 2


def test_a_pause_with_an_end_resumes_by_itself(q):
    job = q.put(Job(sample_jobs.add, 1, 1), queue="pdf")
    q.pause("pdf", until=datetime.timedelta(minutes=10))
    ends = q.paused()["pdf"]
    assert datetime.timedelta(minutes=9) < ends - datetime.datetime.now(UTC) <= \
        datetime.timedelta(minutes=10)
    assert q.run_pending(now=ends - datetime.timedelta(seconds=1)) == 0
    assert q.run_pending(now=ends + datetime.timedelta(seconds=1)) == 1
    assert job.refresh().status == COMPLETED
    q.pause("pdf", until=ends)  # pausing again sets the end anew
    q.pause("pdf")
    assert q.paused() == {"pdf": None}


def test_a_running_job_finishes_and_resume_wakes_an_idle_pool(q, tmp_path):
    gate = tmp_path / "gate"
    with q.worker(processes=1, poll=WAIT * 4):  # an idle pool that would not look itself
        running = q.put(Job(sample_jobs.wait_for_file, str(gate)), queue="pdf")
        wait_until(lambda: running.refresh().status == litejobs.ACTIVE, WAIT, "the run")
        q.pause("pdf")
        gate.write_text("go")
        assert running.wait(timeout=WAIT) is not None  # it finished, paused or not
        waiting = q.put(Job(sample_jobs.add, 3, 4), queue="pdf")
        other = q.put(Job(sample_jobs.add, 5, 6), queue="mail")
        assert other.wait(timeout=WAIT) == 11
        assert waiting.refresh().status == PENDING  # claimed after `other`, had it been due
        q.resume("pdf")
        assert waiting.wait(timeout=WAIT) == 7  # woken by the resume, not by its poll


def test_bad_pauses_are_refused(q):
    with pytest.raises(ValueError):
        q.pause("pdf", until=-5)
    with pytest.raises(TypeError):
        q.pause(7)
    assert q.paused() == {}


def test_the_pause_and_resume_commands(q):
    done = run_cli("pause", q.path, "pdf", "--until", "30m", "--json")
    assert done.returncode == 0, done.stderr
    result, = json.loads(done.stdout)
    assert (result["queue"], result["paused"]) == ("pdf", True)
    printed = datetime.datetime.fromisoformat(result["until"].replace("Z", "+00:00"))
    assert abs(printed - q.paused()["pdf"]) <= datetime.timedelta(milliseconds=1)  # rounded
    assert "queue mail: paused until resumed" in run_cli("pause", q.path, "mail").stdout
    assert run_cli("resume", q.path, "pdf").stdout.strip() == "queue pdf: resumed"
    assert run_cli("resume", q.path, "pdf").stdout.strip() == "queue pdf: was not paused"
    assert list(q.paused()) == ["mail"]
