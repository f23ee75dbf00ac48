"""Quotas (`Queue.set_quota`, `put(quotas=)`): a job is claimed only while
every quota it names has a free slot, counted from the running jobs in the
claim's own transaction; order is kept among the jobs that may run, and a
full quota holds back only its own jobs.  A dead runner's slot frees when its
lease runs out; the limit holds across pools and under kill -9.  Every test
holds on both backends."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

import litejobs
import sample_jobs
from hostile_jobs import cli_env, run_cli
from litejobs import ACTIVE, COMPLETED, PENDING, Job
from waiting import WAIT, wait_until


@pytest.fixture
def q(each_backend):
    return each_backend


def claim(q, owner="runner", *, limit=10, now=None, expires=None):
    """Claim as ``owner`` would; the claimed ids, sorted."""
    now = time.time() + 1 if now is None else now
    _, rows = q._storage.claim(owner=owner, queues=None, now=now,
                               expires=now + 60 if expires is None else expires, limit=limit)
    return sorted(row["id"] for row in rows)


def test_a_job_is_claimed_only_while_each_quota_it_names_has_a_free_slot(q):
    q.set_quota("pdf", 2)
    q.set_quota("customer:*", 1)
    pdf = [q.put(Job(sample_jobs.add, n, 0), quotas=["pdf"]).id for n in range(3)]
    first, second = (q.put(Job(sample_jobs.add, 0, 0), quotas=["customer:1"]).id
                     for _ in range(2))
    other = q.put(Job(sample_jobs.add, 0, 0), quotas=["customer:2"]).id
    free = q.put(Job(sample_jobs.add, 0, 0)).id
    assert claim(q, "a") == sorted([pdf[0], pdf[1], first, other, free])
    assert claim(q, "b") == []  # every quota of the rest is full
    assert q.get(pdf[2]).status == PENDING and q.get(second).status == PENDING


def test_an_ended_run_frees_its_slot_and_the_next_in_order_takes_it(q):
    q.set_quota("pdf", 1)
    low = q.put(Job(sample_jobs.add, 1, 1), quotas=["pdf"], priority=0)
    high = q.put(Job(sample_jobs.add, 2, 2), quotas=["pdf"], priority=5)
    behind = q.put(Job(sample_jobs.add, 3, 3))  # names no quota: not held back
    assert q.run_pending(limit=1) == 1 and high.refresh().status == COMPLETED
    assert q.run_pending() == 2
    assert low.refresh().result == 2 and behind.refresh().result == 6


def test_a_full_quotas_backlog_does_not_hold_back_the_jobs_behind_it(q):
    q.set_quota("pdf", 1)
    q.put_many([Job(sample_jobs.add, n, 0) for n in range(300)], quotas=["pdf"], priority=9)
    mail = q.put(Job(sample_jobs.add, 1, 1), quotas=["mail"])
    assert claim(q, "a", limit=5) == [1, mail.id]  # one pdf, then past the other 299
    assert claim(q, "b", limit=5) == []


def test_a_names_own_limit_wins_over_a_patterns_and_the_longest_pattern_over_others(q):
    q.set_quota("customer:*", 1)
    q.set_quota("customer:big*", 2)
    q.set_quota("customer:bigcorp", 3)
    assert q.quotas() == {"customer:*": 1, "customer:big*": 2, "customer:bigcorp": 3}
    ids = {name: [q.put(Job(sample_jobs.add, 0, 0), quotas=[name]).id for _ in range(4)]
           for name in ("customer:7", "customer:bigone", "customer:bigcorp")}
    claimed = claim(q, "a", limit=20)
    assert [len(set(claimed) & set(ids[name])) for name in ids] == [1, 2, 3]
    q.set_quota("customer:*", None)
    assert "customer:*" not in q.quotas()
    assert len(set(claim(q, "b", limit=20)) & set(ids["customer:7"])) == 3  # no limit now


def test_without_a_limit_a_quota_is_only_a_name(q):
    jobs = q.put_many([Job(sample_jobs.add, n, 0) for n in range(5)], quotas=["pdf"])
    assert claim(q) == [job.id for job in jobs]
    assert q.get(jobs[0].id).quotas == ["pdf"]


def test_a_dead_runners_slot_frees_when_its_lease_runs_out(q):
    q.set_quota("pdf", 1)
    held = q.put(Job(sample_jobs.add, 1, 1), quotas=["pdf"])
    waiting = q.put(Job(sample_jobs.add, 2, 2), quotas=["pdf"])
    now = time.time() + 1
    assert claim(q, "dead", now=now, expires=now + 5) == [held.id]
    assert claim(q, "live", now=now + 4) == []  # its lease holds the slot
    # The lease ran out: the claim takes the job back, then claims in order.
    assert claim(q, "live", now=now + 6) == [held.id]
    assert q.get(held.id).attempts == 2 and q.get(waiting.id).status == PENDING


def test_bad_quotas_are_refused(q):
    for bad, error in ((0, ValueError), (-1, ValueError), ("2", TypeError), (True, TypeError)):
        with pytest.raises(error):
            q.set_quota("pdf", bad)
    with pytest.raises(ValueError):
        q.set_quota("", 1)
    with pytest.raises(TypeError, match="quotas is a list of names"):
        q.put(Job(sample_jobs.add, 1, 1), quotas="pdf")
    with pytest.raises(ValueError, match="a quota's name"):
        q.put(Job(sample_jobs.add, 1, 1), quotas=["pdf", ""])
    assert q.quotas() == {} and q.counts()[PENDING] == 0


def runs_in_order(log_path):
    """The "start"/"end" lines the runs wrote: (event, label, pid)."""
    if not os.path.exists(log_path):
        return []
    with open(log_path) as handle:
        return [tuple(line.split()) for line in handle if line.strip()]


def check_never_two_at_once(events):
    """At most one run alive at any time: a run's start comes only after the
    run before it ended, or died (a start of it that never ends)."""
    ended = {(label, pid) for event, label, pid in events if event == "end"}
    running = None
    for event, label, pid in events:
        if event == "start":
            assert running is None or running not in ended, (running, label, events)
            running = (label, pid)
        else:
            assert running == (label, pid), (running, label, events)
            running = None


def test_a_limit_of_one_holds_across_pools_and_under_kill_9(q, tmp_path, cli_pools):
    q.set_quota("single", 1)
    log = tmp_path / "runs.log"
    jobs = q.put_many([Job(sample_jobs.quota_span, str(log), f"job{n}", 0.05)
                       for n in range(24)], quotas=["single"])
    pools = [cli_pools.start(q.path, "-p", "2", "--lease", "1s", "--log-level", "debug",
                             env=cli_env(LITEJOBS_HOST=f"host-{n}")) for n in range(2)]
    # Kill -9 a worker process in the middle of a run, twice.
    killed = []
    for _ in range(2):
        def running_pid():
            events = runs_in_order(log)
            ended = {(label, pid) for event, label, pid in events if event == "end"}
            open_runs = [(label, pid) for event, label, pid in events
                         if event == "start" and (label, pid) not in ended
                         and int(pid) not in killed]
            return int(open_runs[-1][1]) if open_runs else None
        pid = wait_until(running_pid, WAIT, "a run to kill")
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
    # And a whole pool, its supervisor and its worker processes at once, in
    # the middle of a run of one of them; another pool takes its place.
    pool_pid = wait_until(running_pid, WAIT, "a run to kill with its pool")
    victim = next(pool for pool in pools if pool_pid in pool.child_pids())
    killed += victim.child_pids()
    victim.kill_group()
    pools.remove(victim)
    pools.append(cli_pools.start(q.path, "-p", "2", "--lease", "1s", "--log-level", "debug",
                                 env=cli_env(LITEJOBS_HOST="host-2")))
    wait_until(lambda: all(job.refresh().status == COMPLETED for job in jobs), WAIT * 2,
               "every job, after the kills", lambda: [p.log() for p in pools])
    events = runs_in_order(log)
    check_never_two_at_once(events)
    assert {label for event, label, _ in events if event == "end"} == {
        f"job{n}" for n in range(24)}  # at least once each
    assert len([1 for event, *_ in events if event == "start"]) >= 27  # the killed ran again
    assert q.counts()[ACTIVE] == 0


def test_a_rate_limit_counts_claims_in_a_sliding_window(q):
    q.set_rate("smtp", 3, per=10)
    q.set_quota("smtp", 5)
    assert (q.rates(), q.quotas()) == ({"smtp": (3, 10.0)}, {"smtp": 5})  # each keeps the other
    jobs = [q.put(Job(sample_jobs.add, n, 0), quotas=["smtp"]).id for n in range(5)]
    now = time.time() + 1
    assert claim(q, "a", now=now) == jobs[:3]
    assert claim(q, "b", now=now + 5) == []  # three in the last 10 s
    assert claim(q, "b", now=now + 10.5) == jobs[3:]
    q.set_rate("smtp", None)
    assert q.rates() == {} and q.quotas() == {"smtp": 5}
    with pytest.raises(ValueError, match="per must be positive"):
        q.set_rate("smtp", 3, per=0)


def test_the_quotas_command_reports_each_names_use_under_the_limit_that_applies(q):
    q.set_quota("customer:*", 1)
    q.set_quota("customer:bigcorp", 3)
    q.set_rate("smtp", 2, per=60)
    big = [q.put(Job(sample_jobs.add, n, 0), quotas=["customer:bigcorp"]).id for n in range(4)]
    small = [q.put(Job(sample_jobs.add, n, 0), quotas=["customer:7"]).id for n in range(2)]
    mail = [q.put(Job(sample_jobs.add, n, 0), quotas=["smtp"]).id for n in range(3)]
    assert claim(q, "a", limit=20) == big[:3] + small[:1] + mail[:2]

    done = run_cli("quotas", q.path, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["limits"] == [
        {"pattern": "customer:*", "running": 1, "rate": None, "per": None},
        {"pattern": "customer:bigcorp", "running": 3, "rate": None, "per": None},
        {"pattern": "smtp", "running": None, "rate": 2, "per": 60.0}]
    # Each customer counts under its own limit, not all under the pattern's.
    assert [(use["name"], use["running"], use["limit"], use["started"], use["rate"], use["jobs"])
            for use in report["use"]] == [
        ("customer:7", 1, 1, 0, None, small[:1]),
        ("customer:bigcorp", 3, 3, 0, None, big[:3]),
        ("smtp", 2, None, 2, [2, 60.0], mail[:2])]
    text = run_cli("quotas", q.path).stdout.splitlines()
    assert text == ["limit customer:*: 1 running", "limit customer:bigcorp: 3 running",
                    "limit smtp: 2 per 60s", "quota customer:7: 1 of 1 running",
                    "quota customer:bigcorp: 3 of 3 running",
                    "quota smtp: 2 running (no limit), 2 of 2 claims in 60s"]


def test_the_quotas_command_on_a_database_without_quotas(q):
    done = run_cli("quotas", q.path)
    assert (done.returncode, done.stdout.strip()) == (0, f"no quota limit set or in use on {q.path}")
