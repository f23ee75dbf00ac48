"""The storage contract: what every backend must do, through `_Storage` alone.

Each test takes the ``backend`` fixture: a `litejobs.Queue` on the backend
under test, whose ``_storage`` the test drives with plain values (ids,
tokens, Unix times, rows as dicts).  Jobs are planned as `Queue.put` plans
them, so that the rows are those a real put writes.  The fixture yields
SQLite and PostgreSQL (on the run's throwaway server); another backend joins
by adding itself to conftest's ``each_backend``.
"""

from __future__ import annotations

import datetime
import json
import socket
import threading
import time

import pytest

import litejobs
import sample_jobs
from litejobs import (ACTIVE, CANCELLED, COMPLETED, FAILED, PENDING, WAITING, Job,
                      parallel, serial)
from pool_rows import finished_pid

SECRET = "a contract secret of 32 bytes..."


@pytest.fixture
def backend(each_backend):
    """A queue on a fresh database of each backend (see conftest)."""
    return each_backend


@pytest.fixture
def signed(backend):
    return litejobs.Queue(backend.path, secret=SECRET)


T0 = time.time()  # each test's "now": see the fixture below


@pytest.fixture(autouse=True)
def t0():
    """Times in a test count from its start: jobs it puts are due by T0 + 10."""
    global T0
    T0 = time.time()


def claim(q, *, owner="runner", now=None, limit=10, queues=None, expires=None, **options):
    """Claim for ``owner`` at ``now``; the token and the ids, in claim order."""
    now = T0 + 10 if now is None else now
    token, rows = q._storage.claim(owner=owner, queues=queues, now=now,
                                   expires=now + 60 if expires is None else expires,
                                   limit=limit, **options)
    return token, [row["id"] for row in rows]


def row(q, job_id):
    return q._storage.fetch(job_id)


def status(q, job_id):
    return row(q, job_id)["status"]


# -- claims ---------------------------------------------------------------------------------


def test_claims_come_in_priority_then_due_time_then_id_order(backend):
    q = backend
    late = q.put(Job(sample_jobs.add, 1, 1), priority=0).id
    early_low = q.put(Job(sample_jobs.add, 1, 2), priority=0, begin_after=datetime.datetime.now(
        datetime.timezone.utc) - datetime.timedelta(seconds=5)).id
    high = q.put(Job(sample_jobs.add, 1, 3), priority=5).id
    same_time = q.put(Job(sample_jobs.add, 1, 4), priority=0).id
    _, ids = claim(q, limit=10)
    assert ids[:2] == [high, early_low]
    assert ids[2:] == sorted([late, same_time])


def test_a_claim_takes_only_due_jobs_of_the_queues_asked_and_no_more_than_asked(backend):
    q = backend
    a = q.put(Job(sample_jobs.add, 1, 1), queue="a").id
    b = q.put(Job(sample_jobs.add, 1, 1), queue="b").id
    later = q.put(Job(sample_jobs.add, 1, 1), queue="a", begin_after=3600).id
    _, ids = claim(q, queues=["a"], expires=T0 + 10 ** 6)
    assert ids == [a]
    _, ids = claim(q, queues=["a", "b"], limit=1, expires=T0 + 10 ** 6)
    assert ids == [b]
    assert claim(q)[1] == []
    assert claim(q, now=time.time() + 7200)[1] == [later]
    assert claim(q, queues=[])[1] == []


def test_a_claimed_job_is_active_under_a_fresh_token_for_its_owner(backend):
    q = backend
    job_id = q.put(Job(sample_jobs.add, 1, 1)).id
    token, _ = claim(q, owner="pool-a")
    other, _ = claim(q, owner="pool-b")
    found = row(q, job_id)
    assert (found["status"], found["lease_owner"], found["attempts"]) == (ACTIVE, "pool-a", 1)
    assert token != other and found["lease_expires"] == pytest.approx(T0 + 70)


def test_filters_leave_signed_jobs_and_named_callables_to_others(backend, signed):
    q = backend
    plain = q.put(Job(sample_jobs.add, 1, 1)).id
    signed_id = signed.put(Job(sample_jobs.add, 1, 1)).id
    avoided = q.put(Job(sample_jobs.echo, 1)).id
    assert claim(q, unsigned_only=True, avoid=["sample_jobs:echo"])[1] == [plain]
    assert q._storage.next_due(None, unsigned_only=True,
                               avoid=["sample_jobs:echo"]) is None
    assert sorted(claim(q)[1]) == sorted([signed_id, avoided])


# -- leases and fencing ---------------------------------------------------------------------


def test_an_expired_lease_of_a_run_that_began_is_an_interruption(backend):
    q = backend
    job_id = q.put(Job(sample_jobs.add, 1, 1)).id
    claim(q, owner="gone", expires=T0)  # started: the default, as run_pending claims
    _, ids = claim(q, owner="next", now=T0 + 20)
    assert ids == [job_id]
    found = row(q, job_id)
    assert (found["attempts"], found["interruptions"], found["lease_owner"]) == (2, 1, "next")
    assert json.loads(found["history"])[0]["event"] == "interrupted"


def test_an_expired_lease_of_a_claim_never_started_is_taken_back_uncounted(backend):
    q = backend
    job_id = q.put(Job(sample_jobs.add, 1, 1)).id
    claim(q, owner="gone", expires=T0, started=False)
    claim(q, owner="next", now=T0 + 20)
    found = row(q, job_id)
    assert (found["attempts"], found["interruptions"], found["not_started"]) == (2, 0, 1)
    assert json.loads(found["history"])[0]["event"] == "not started"


def test_a_run_marked_started_is_an_interruption_when_its_lease_runs_out(backend):
    q = backend
    job_id = q.put(Job(sample_jobs.add, 1, 1)).id
    token, _ = claim(q, owner="gone", expires=T0, started=False)
    q._storage.mark_started([(job_id, "wrong")], T0)
    assert row(q, job_id)["unstarted"] == 1  # fenced
    q._storage.mark_started([(job_id, token)], T0)
    assert row(q, job_id)["unstarted"] == 0
    claim(q, owner="next", now=T0 + 20)
    assert row(q, job_id)["interruptions"] == 1


def test_a_lease_the_claimer_holds_is_not_taken_back_from_it(backend):
    q = backend
    job_id = q.put(Job(sample_jobs.add, 1, 1)).id
    token, _ = claim(q, owner="me", expires=T0)
    claim(q, owner="me", now=T0 + 20, holding=[job_id])
    assert row(q, job_id)["interruptions"] == 0
    assert q._storage.renew([(job_id, token)], T0 + 100) == []  # still its own


@pytest.mark.parametrize("write", [
    lambda s, i, t: s.finish(i, t, status=COMPLETED, now=T0),
    lambda s, i, t: s.interrupt(i, t, T0, "why"),
    lambda s, i, t: s.release(i, t, T0),
    lambda s, i, t: s.refuse(i, t, T0, "why"),
    lambda s, i, t: s.hand_back(i, t, T0, "why"),
    lambda s, i, t: s.outcome_lost(i, t, T0, "why"),
    lambda s, i, t: s.wait_for(i, t, T0, 999),
    lambda s, i, t: s.fail_alone(i, t, T0, RuntimeError("why")),
], ids=["finish", "interrupt", "release", "refuse", "hand_back", "outcome_lost", "wait_for",
        "fail_alone"])
def test_every_write_about_a_run_is_fenced_by_its_token(backend, write):
    q = backend
    job_id = q.put(Job(sample_jobs.add, 1, 1)).id
    token, _ = claim(q)
    before = row(q, job_id)
    with pytest.raises(litejobs.LeaseLost):
        write(q._storage, job_id, "not-" + token)
    assert row(q, job_id) == before
    assert q._storage.complete([(job_id, "not-" + token)], T0) == {}
    assert q._storage.renew([(job_id, "not-" + token)], T0 + 99) == [job_id]
    q._storage.report([(job_id, "not-" + token, {"progress": 0.5, "message": "x",
                                                  "meta": {"k": 1}})])
    assert row(q, job_id) == before


# -- ends, retries and interruptions --------------------------------------------------------


def test_a_retry_is_pending_again_at_its_time_with_history(backend):
    q = backend
    job_id = q.put(Job(sample_jobs.add, 1, 1)).id
    token, _ = claim(q)
    assert q._storage.finish(job_id, token, status=PENDING, now=T0, error="E: x\n",
                             error_type="E", begin_after=T0 + 30) == PENDING
    found = row(q, job_id)
    assert (found["begin_after"], found["lease_owner"], found["error"]) == (T0 + 30, None,
                                                                            "E: x\n")
    assert [entry["event"] for entry in json.loads(found["history"])] == ["retried"]
    assert claim(q, now=T0 + 29)[1] == [] and claim(q, now=T0 + 31)[1] == [job_id]


def test_one_interruption_too_many_fails_the_job_unless_there_is_no_limit(backend):
    q = backend
    limited = q.put(Job(sample_jobs.add, 1, 1), max_interruptions=0).id
    forever = q.put(Job(sample_jobs.add, 1, 1), max_interruptions=None).id
    token, _ = claim(q)
    assert q._storage.interrupt(limited, token, T0, "died") == FAILED
    assert row(q, limited)["error_type"] == "litejobs.Interrupted"
    for n in range(3):
        token, ids = claim(q, now=T0 + 1000 * (n + 1))
        assert ids == [forever]
        assert q._storage.interrupt(forever, token, T0 + 1000 * (n + 1), "died") == PENDING
    assert row(q, forever)["begin_after"] > T0 + 3000  # waits longer after each


def test_a_hand_back_counts_neither_an_attempt_nor_an_interruption(backend):
    q = backend
    job_id = q.put(Job(sample_jobs.add, 1, 1)).id
    token, _ = claim(q)
    assert q._storage.hand_back(job_id, token, T0, "deploy") == PENDING
    found = row(q, job_id)
    assert (found["attempts"], found["interruptions"], found["handbacks"]) == (1, 0, 1)


def test_a_cancel_wins_over_a_result_and_a_stop_request_over_a_retry(backend):
    q = backend
    cancelled = q.put(Job(sample_jobs.add, 1, 1)).id
    stopped = q.put(Job(sample_jobs.add, 1, 1)).id
    token, _ = claim(q)
    assert q._storage.cancel(cancelled, T0) == ACTIVE
    assert q._storage.stops_requested("runner") == [(cancelled, True, None)]
    assert q._storage.finish(cancelled, token, status=COMPLETED, now=T0,
                             result=b"x") == CANCELLED
    assert q._storage.request_stop(stopped, T0, T0 + 30) == ACTIVE
    assert q._storage.news_of(stopped) == (None, T0 + 30)
    assert q._storage.finish(stopped, token, status=PENDING, now=T0, error="E\n",
                             begin_after=T0) == CANCELLED


# -- deadlines and keys ---------------------------------------------------------------------


def test_a_job_past_its_deadline_fails_at_the_next_claim_if_it_never_started(backend):
    q = backend
    job_id = q.put(Job(sample_jobs.add, 1, 1), begin_by=5).id
    token, _ = claim(q, started=False, expires=T0)
    assert claim(q, owner="next", now=T0 + 10_000)[1] == []
    found = row(q, job_id)
    assert (found["status"], found["error_type"]) == (FAILED, "litejobs.DeadlineExceeded")


def test_a_live_key_is_put_once(backend):
    q = backend
    first = q.put(Job(sample_jobs.add, 1, 1), key="k")
    assert q.put(Job(sample_jobs.add, 2, 2), key="k") == first
    token, _ = claim(q)
    q._storage.finish(first.id, token, status=COMPLETED, now=T0)
    assert q.put(Job(sample_jobs.add, 3, 3), key="k") != first


# -- composition and callbacks --------------------------------------------------------------


def test_a_parallel_waits_for_every_part_then_its_postprocess_is_due(backend):
    q = backend
    root = q.put(parallel(Job(sample_jobs.add, 1, 1), Job(sample_jobs.add, 2, 2),
                          postprocess=sample_jobs.describe_parts))
    token, ids = claim(q)
    assert status(q, root.id) == WAITING and len(ids) == 2
    q._storage.finish(ids[0], token, status=COMPLETED, now=T0)
    assert (status(q, root.id), row(q, root.id)["waiting_on"]) == (WAITING, 1)
    q._storage.finish(ids[1], token, status=FAILED, now=T0, error="E\n")
    assert status(q, root.id) == PENDING
    assert claim(q)[1] == [root.id]


def test_a_serial_starts_each_part_after_the_one_before(backend):
    q = backend
    root = q.put(serial(Job(sample_jobs.add, 1, 1), Job(sample_jobs.add, 2, 2),
                        stop_on_failure=True))
    first, second = (child.id for child in root.children())
    token, ids = claim(q)
    assert ids == [first] and status(q, second) == WAITING
    q._storage.complete([(first, token)], T0)
    token, ids = claim(q)
    assert ids == [second]
    q._storage.finish(second, token, status=FAILED, now=T0, error="E\n")
    assert status(q, root.id) == PENDING  # its own run gathers the results


def test_a_cancelled_composite_cancels_what_has_not_started(backend):
    q = backend
    root = q.put(serial(Job(sample_jobs.add, 1, 1), Job(sample_jobs.add, 2, 2)))
    token, [running] = claim(q)
    assert q._storage.cancel(root.id, T0) == CANCELLED
    assert [status(q, child.id) for child in root.children()] == [ACTIVE, CANCELLED]
    assert row(q, running)["cancel_requested"] == 1
    assert q._storage.unfinished_under(root.id) == 1


def test_callbacks_are_due_when_their_job_ends_on_the_side_that_matches(backend):
    q = backend
    job = q.put(Job(sample_jobs.add, 1, 1))
    both = job.add_callback(sample_jobs.describe_outcome).id
    on_failure = job.add_callbacks(failure=sample_jobs.describe_outcome).id
    assert status(q, both) == WAITING
    token, _ = claim(q)
    q._storage.finish(job.id, token, status=COMPLETED, now=T0)
    assert (status(q, both), status(q, on_failure)) == (PENDING, CANCELLED)


def test_a_job_waiting_on_the_job_it_returned_takes_its_outcome(backend):
    q = backend
    parent = q.put(Job(sample_jobs.add, 1, 1)).id
    target = q.put(Job(sample_jobs.add, 2, 2), begin_after=3600).id
    token, _ = claim(q)
    assert q._storage.wait_for(parent, token, T0, target) == WAITING
    token, ids = claim(q, now=time.time() + 7200)
    assert ids == [target]
    q._storage.finish(target, token, status=COMPLETED, now=T0, result=b"r")
    assert status(q, parent) == COMPLETED
    assert q._storage.fetch_blob(parent, "result")[0] == b"r"


# -- progress, meta, retention, signing, the registry ----------------------------------------


def test_progress_and_meta_of_a_run_merge_with_meta_set_from_outside(backend):
    q = backend
    job_id = q.put(Job(sample_jobs.add, 1, 1)).id
    token, _ = claim(q)
    q._storage.update_meta(job_id, {"outside": 1})
    q._storage.report([(job_id, token, {"progress": 0.5, "message": "half",
                                        "meta": {"mine": 2}})])
    found = row(q, job_id)
    assert (found["progress"], found["progress_message"]) == (0.5, "half")
    assert json.loads(found["meta"]) == {"outside": 1, "mine": 2}
    with pytest.raises(litejobs.JobNotFound):
        q._storage.update_meta(10_000, {"a": 1})


def test_purge_deletes_ended_trees_and_keeps_unfinished_ones(backend):
    q = backend
    old = q.put(parallel(Job(sample_jobs.add, 1, 1)))
    token, [part] = claim(q)
    q._storage.finish(part, token, status=COMPLETED, now=T0)
    token, _ = claim(q)
    q._storage.finish(old.id, token, status=COMPLETED, now=T0)
    waiting = q.put(Job(sample_jobs.add, 1, 1)).id
    assert q._storage.purge(T0 + 1, dry_run=True) == (1, 1)
    assert q._storage.purge(T0 + 1) == (1, 1)
    assert row(q, old.id) is None and row(q, waiting) is not None


def test_a_search_and_a_dry_purge_with_no_limit_see_every_job(backend):
    q = backend
    ids = [job.id for job in q.put_many([Job(sample_jobs.add, i, i) for i in range(3)])]
    assert [found["id"] for found in q._storage.search(limit=-1)] == ids[::-1]
    assert [job.id for job in q.jobs(limit=None)] == ids[::-1]
    token, _ = claim(q)
    for job_id in ids:
        q._storage.finish(job_id, token, status=COMPLETED, now=T0)
    assert q._storage.purge(T0 + 1, limit=-1, dry_run=True) == (3, 0)


def test_a_signing_queue_signs_calls_and_results(backend, signed):
    job_id = signed.put(Job(sample_jobs.add, 1, 1)).id
    assert backend._storage.fetch_blob(job_id, "payload")[1] is not None
    token, _ = claim(signed)
    signed._storage.finish(job_id, token, status=COMPLETED, now=T0, result=b"x")
    assert signed._storage.fetch_blob(job_id, "result")[1] is not None


def test_the_pool_registry_knows_live_stopped_and_gone_pools(backend):
    s = backend._storage
    s.register_worker("pool-live", host="here", pid=1, processes=2, queues=["a"],
                      lease=30, now=time.time())
    s.register_worker("pool-stopping", host="here", pid=1, processes=1, queues=None,
                      lease=30, now=time.time())
    s.stop_worker("pool-stopping", time.time(), "stopped")
    s.register_worker("pool-gone", host=socket.gethostname(), pid=finished_pid(),
                      processes=1, queues=None, lease=30, now=time.time() - 60)
    job_id = backend.put(Job(sample_jobs.add, 1, 1)).id
    claim(backend, owner="pool-gone")
    assert s.heartbeat("pool-live", None, 0, time.time()) == (True, [])
    assert s.recover_silent_workers("pool-live", time.time(), 6) == [
        f"pool pool-gone (pid {s.fetch_workers()[-1]['pid']} on {socket.gethostname()}) is "
        f"gone: its process is not running"]
    pools = {pool["id"]: pool for pool in s.fetch_workers()}
    assert (pools["pool-live"]["alive"], pools["pool-stopping"]["alive"],
            pools["pool-gone"]["alive"]) == (True, False, False)
    found = row(backend, job_id)  # its run had begun: an interruption
    assert (found["status"], found["interruptions"]) == (PENDING, 1)


# -- counts ---------------------------------------------------------------------------------


def scanned_counts(q, queue=None):
    """Counts by a plain scan of every row: what `counts` must equal."""
    found = dict.fromkeys(litejobs.STATUSES, 0)
    for job in q.jobs(limit=10_000, queue=queue):
        found[job.status] += 1
    return found


def test_counts_stay_exact_through_every_kind_of_change(backend):
    q = backend
    seen = []

    def check():
        for queue in (None, "default", "other"):
            counts = {s: n for s, n in q.counts(queue).items()}
            assert counts == scanned_counts(q, queue), (len(seen), queue)
        seen.append(q.counts())

    check()
    plain = q.put(Job(sample_jobs.add, 1, 1))
    other = q.put(Job(sample_jobs.add, 1, 2), queue="other")
    tree = q.put(parallel(Job(sample_jobs.add, 1, 3), Job(sample_jobs.fail, "no"),
                          postprocess=sample_jobs.echo))
    chain = q.put(serial(Job(sample_jobs.add, 1, 4), Job(sample_jobs.add, 1, 5)))
    check()
    token, ids = claim(q, limit=2, queues=["default"])
    check()
    q._storage.finish(ids[0], token, status=COMPLETED, now=T0 + 11, result=None)
    q._storage.interrupt(ids[1], token, T0 + 11, "a test")
    check()
    assert q.run_pending(now=datetime.datetime.fromtimestamp(T0 + 20, datetime.timezone.utc)) > 0
    check()
    assert plain.refresh().status == COMPLETED and other.refresh().status == COMPLETED
    other = q.put(Job(sample_jobs.add, 2, 2), queue="other")
    check()
    assert tree.refresh().status == COMPLETED and chain.refresh().status == COMPLETED
    failed_part = [part for part in tree.children() if part.status == FAILED][0]
    failed_part.retry()  # re-opens the parallel around it
    check()
    other.cancel()
    check()
    tree.cancel()
    check()
    assert q.purge(datetime.datetime.fromtimestamp(T0 + 100, datetime.timezone.utc)) > 0
    check()  # the purge cascaded to parts
    assert seen[-1] == dict.fromkeys(litejobs.STATUSES, 0)


# -- waking on commits ----------------------------------------------------------------------


def test_a_commit_watch_wakes_when_another_connection_ends_a_job_and_not_otherwise(backend):
    q = backend
    other = litejobs.Queue(q.path)
    doomed = other.put(Job(sample_jobs.whoami))
    watch = q._storage.watch_commits()
    try:
        assert watch.wait(0.05) is False
        timer = threading.Timer(0.1, doomed.cancel)
        timer.start()
        assert watch.wait(30) is True
        timer.join()
        assert watch.wait(0.05) is False  # that commit is seen once
    finally:
        watch.close()
        other.close()


def test_a_commit_watch_that_cannot_listen_still_wakes_when_a_job_ends(backend, monkeypatch):
    q = backend
    # No inotify (SQLite), no LISTEN (PostgreSQL): it polls.
    monkeypatch.setattr(litejobs._WalWatch, "open", classmethod(lambda cls, path: None))
    monkeypatch.setattr(q._storage, "listen", False, raising=False)
    other = litejobs.Queue(q.path)
    doomed = other.put(Job(sample_jobs.whoami))
    watch = q._storage.watch_commits()
    timer = threading.Timer(0.05, doomed.cancel)
    try:
        timer.start()
        assert watch.wait(30) is True
    finally:
        timer.join()
        watch.close()
        other.close()


# -- schedules --------------------------------------------------------------------------


def schedule_row(q, name, cron="* * * * *", *, next_tick, **options):
    """A schedule's row as `Queue.schedule` builds it, ticking first at ``next_tick``."""
    row = litejobs._schedule_row(q, name, cron, Job(sample_jobs.my_tick), tz="UTC",
                                 catchup=options.pop("catchup", "latest"),
                                 catchup_limit=options.pop("catchup_limit", 100),
                                 max_lag=None, overlap=options.pop("overlap", "allow"),
                                 given=options)
    return {**row, "next_tick": next_tick}


def test_a_due_tick_fires_once_as_a_job_that_names_it_and_the_schedule_moves_on(backend):
    q = backend
    minute = (T0 // 60 + 1) * 60
    stored = q._storage.save_schedule(schedule_row(q, "s", next_tick=minute), T0)
    assert (stored["next_tick"], stored["paused"], stored["last_job_id"]) == (minute, 0, None)
    assert q._storage.fire_due(minute - 1) == []  # not yet
    firing, = q._storage.fire_due(minute + 1)
    assert (firing.schedule, firing.skipped, firing.trouble) == ("s", [], None)
    (tick, job_id), = firing.fired
    assert tick == minute
    assert json.loads(row(q, job_id)["meta"]) == {
        "schedule": "s", "tick": litejobs._format_time(minute)}
    assert q._storage.fire_due(minute + 2) == []  # fired: the schedule moved on
    after, = q._storage.fetch_schedules("s")
    assert (after["next_tick"], after["last_tick"], after["last_job_id"]) == (
        minute + 60, minute, job_id)
    assert q._storage.next_schedule_tick() == minute + 60


def at_once(q, runners, work):
    """Run ``work(queue, n)`` in ``runners`` threads at once, each on a queue
    of its own on ``q``'s database; what they raised."""
    queues = [litejobs.Queue(q.path) for _ in range(runners)]
    errors = []

    def run(queue, n):
        try:
            work(queue, n)
        except Exception as exc:  # noqa: BLE001 - returned to the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(queue, n)) for n, queue in enumerate(queues)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for queue in queues:
        queue.close()
    return errors


def test_runners_firing_at_once_put_one_job_per_tick(backend):
    q = backend
    second = float(int(T0) + 1)
    q._storage.save_schedule(schedule_row(q, "fast", "* * * * * *", next_tick=second,
                                          catchup="all"), T0)  # a slow runner skips none
    fired: list[float] = []

    def fire(queue, _):
        for step in range(30):
            for firing in queue._storage.fire_due(second + step * 0.5):
                fired.extend(tick for tick, _ in firing.fired)

    assert at_once(q, 4, fire) == []
    assert sorted(fired) == [second + n for n in range(15)]  # each once, none lost
    assert len(q.jobs(limit=None)) == 15


def test_a_schedule_a_runner_cannot_fire_is_left_due_for_others(backend):
    q = backend
    minute = (T0 // 60 + 1) * 60
    q._storage.save_schedule(
        {**schedule_row(q, "elsewhere", next_tick=minute), "tz": "Nowhere/Atlantis"}, T0)
    firing, = q._storage.fire_due(minute + 1)
    assert firing.fired == [] and "unknown time zone 'Nowhere/Atlantis'" in firing.trouble
    assert q._storage.fetch_schedules("elsewhere")[0]["next_tick"] == minute


def test_pausing_keeps_a_schedule_from_firing_and_resuming_skips_the_ticks_of_the_pause(backend):
    q = backend
    minute = (T0 // 60 + 1) * 60
    q._storage.save_schedule(schedule_row(q, "p", next_tick=minute), T0)
    assert q._storage.pause_schedule("p", True, T0) is True
    assert q._storage.fire_due(minute + 600) == [] and q._storage.next_schedule_tick() is None
    assert q._storage.pause_schedule("p", False, minute + 600) is True
    assert q._storage.fetch_schedules("p")[0]["next_tick"] == minute + 660
    assert q._storage.pause_schedule("nope", True, T0) is False


def test_trigger_puts_a_job_now_and_remove_keeps_the_jobs(backend):
    q = backend
    minute = (T0 // 60 + 1) * 60
    q._storage.save_schedule(schedule_row(q, "t", next_tick=minute), T0)
    job_id = q._storage.trigger_schedule("t", T0)
    assert row(q, job_id)["status"] == PENDING
    assert q._storage.fetch_schedules("t")[0]["next_tick"] == minute
    assert q._storage.trigger_schedule("nope", T0) is None
    assert q._storage.remove_schedule("t") is True and q._storage.remove_schedule("t") is False
    assert q._storage.fetch_schedules() == [] and row(q, job_id)["status"] == PENDING


# -- quotas -----------------------------------------------------------------------------


def test_runners_claiming_at_once_never_run_more_than_a_quota_allows(backend):
    q = backend
    q.set_quota("pdf", 2)
    jobs = q.put_many([Job(sample_jobs.add, n, 0) for n in range(60)], quotas=["pdf"])
    seen = []

    def work(queue, n):
        for _ in range(200):
            token, rows = queue._storage.claim(owner=f"runner-{n}", queues=None, now=T0 + 10,
                                               expires=T0 + 100, limit=5)
            seen.append(queue.counts()[ACTIVE])
            queue._storage.complete([(row["id"], token) for row in rows], T0 + 10)
            if queue.counts()[PENDING] == 0:
                return

    assert at_once(q, 4, work) == []
    assert max(seen) <= 2 and max(seen) == 2  # the limit held, and was reached
    assert all(status(q, job.id) == COMPLETED for job in jobs)


def test_one_queue_shared_by_many_short_lived_threads_reads_without_error(backend):
    # A server starting a thread a request: a new thread may get the ident
    # of one that ended, and must not be handed that one's connection while
    # a prune closes it (SQLite then crashed the process).
    q = backend
    job = q.put(Job(sample_jobs.add, 1, 1))
    errors = []
    slots = threading.Semaphore(50)

    def read():
        with slots:
            try:
                assert q.get(job.id).status == PENDING
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(repr(exc))

    threads = []
    for _ in range(3000):
        with slots:
            pass  # at most 50 running at once
        threads.append(threading.Thread(target=read))
        threads[-1].start()
    for thread in threads:
        thread.join(60)
    assert errors == []
