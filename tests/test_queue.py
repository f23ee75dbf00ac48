"""The public Queue and Job API, and every status transition, run in-process."""

import datetime
import functools
import pickle
import sqlite3
import threading
import time

import pytest

import litejobs
import sample_jobs
from litejobs import ACTIVE, CANCELLED, COMPLETED, FAILED, PENDING, WAITING, Job


def test_put_returns_a_pending_job_bound_to_its_row(q):
    job = q.put(Job(sample_jobs.add, 2, 3))
    assert isinstance(job.id, int)
    assert job.status == PENDING
    assert job.name == "sample_jobs:add"
    assert job.attempts == 0 and job.interruptions == 0
    assert job.queue == "default" and job.priority == 0
    assert job.created_at.tzinfo is not None
    assert job.result is None and job.error is None
    assert q.get(job.id) == job


def test_pending_active_completed(q):
    job = q.put(sample_jobs.own_status)
    assert q.run_pending() == 1
    assert job.wait(timeout=5) == ACTIVE  # what the database said while it ran
    assert job.status == COMPLETED
    assert job.attempts == 1
    assert job.started_at <= job.finished_at


def test_result_and_arguments_round_trip(q):
    job = q.put(Job(sample_jobs.echo, 1, [2, 3], key={"a": b"x"}))
    q.run_pending()
    assert job.wait(timeout=5) == ((1, [2, 3]), {"key": {"a": b"x"}})
    again = q.get(job.id)
    assert again.args == (1, [2, 3]) and again.kwargs == {"key": {"a": b"x"}}
    assert again.callable is sample_jobs.echo


def test_a_job_returning_none_completes_with_none(q):
    job = q.put(Job(sample_jobs.append_line, "/dev/null", "x"))
    q.run_pending()
    assert job.wait(timeout=5) == "x"
    nothing = q.put(Job(time.sleep, 0))
    q.run_pending()
    assert nothing.wait(timeout=5) is None and nothing.status == COMPLETED


def test_active_to_failed_keeps_the_full_traceback(q):
    job = q.put(Job(sample_jobs.fail, "no luck"))
    q.run_pending()
    with pytest.raises(litejobs.JobFailed) as caught:
        job.wait(timeout=5)
    assert job.status == FAILED
    assert caught.value.job == job
    assert caught.value.exc_type == "builtins.ValueError"
    text = caught.value.traceback
    assert text.startswith("Traceback (most recent call last):")
    assert 'sample_jobs.py", line' in text and "in fail" in text
    assert text.rstrip().endswith("ValueError: no luck")
    assert job.error == text and job.error_type == "builtins.ValueError"
    assert "no luck" in str(caught.value)


def test_pending_to_cancelled_never_runs(q, tmp_path):
    marker = tmp_path / "ran.txt"
    job = q.put(Job(sample_jobs.append_line, str(marker), "ran"))
    assert job.cancel() is True
    assert job.status == CANCELLED and job.finished_at is not None
    assert q.run_pending() == 0
    assert not marker.exists()
    with pytest.raises(litejobs.JobCancelled):
        job.wait(timeout=1)
    assert job.cancel() is False  # already ended


def test_active_to_cancelled_discards_the_result(q):
    job = q.put(sample_jobs.cancel_myself)
    assert q.run_pending() == 1
    job.refresh()
    assert job.status == CANCELLED and job.result is None
    with pytest.raises(litejobs.JobFailed):  # JobCancelled is a JobFailed
        job.wait(timeout=1)


def test_cancel_of_a_finished_job_changes_nothing(q):
    job = q.put(Job(sample_jobs.add, 1, 1))
    q.run_pending()
    assert job.cancel() is False
    assert job.status == COMPLETED and job.result == 2


def test_active_to_pending_on_retry_then_completed(q, now):
    job = q.put(Job(sample_jobs.flaky, 1), retry=litejobs.Retry(attempts=2, delay=0))
    assert q.run_pending(now=now) == 2  # the retry is due at once, so it runs too
    assert job.wait(timeout=1) == 2
    assert job.attempts == 2


def test_keyboard_interrupt_releases_the_job_as_an_interruption(q):
    job = q.put(sample_jobs.interrupt)
    with pytest.raises(KeyboardInterrupt):
        q.run_pending()
    job.refresh()
    assert job.status == PENDING
    assert job.interruptions == 1 and job.attempts == 1


def test_interruptions_beyond_the_limit_fail_the_job(q):
    job = q.put(sample_jobs.interrupt, max_interruptions=1)
    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            q.run_pending()
    job.refresh()
    assert job.status == FAILED
    assert job.interruptions == 2
    assert job.error_type == "litejobs.Interrupted"
    assert "interrupted" in job.error


def test_system_exit_in_a_job_fails_the_job_not_the_runner(q):
    bad = q.put(sample_jobs.exit_job)
    good = q.put(Job(sample_jobs.add, 1, 2))
    assert q.run_pending() == 2
    bad.refresh()
    assert bad.status == FAILED and bad.error_type == "builtins.SystemExit"
    assert good.wait(timeout=1) == 3


def test_an_expired_lease_is_recovered_and_the_job_rerun(q, now):
    job = q.put(Job(sample_jobs.add, 20, 22))
    storage = q._storage
    token, claimed = storage.claim(owner="crashed", queues=None, now=now.timestamp(),
                                   expires=now.timestamp() + 10, limit=10)
    assert [row["id"] for row in claimed] == [job.id]
    assert job.refresh().status == ACTIVE
    assert q.run_pending(now=now) == 0  # the lease still holds
    later = now + datetime.timedelta(seconds=11)
    assert q.run_pending(now=later) == 1
    assert job.wait(timeout=1) == 42
    assert job.attempts == 2 and job.interruptions == 1


def test_a_stale_attempt_cannot_overwrite_the_newer_one(q, now):
    job = q.put(Job(sample_jobs.add, 1, 1))
    storage = q._storage
    stale, _ = storage.claim(owner="slow", queues=None, now=now.timestamp(),
                             expires=now.timestamp() + 5, limit=1)
    later = now.timestamp() + 6
    fresh, claimed = storage.claim(owner="fast", queues=None, now=later,
                                   expires=later + 5, limit=1)
    assert [row["id"] for row in claimed] == [job.id]
    assert fresh != stale
    with pytest.raises(litejobs.LeaseLost):
        storage.finish(job.id, stale, status=COMPLETED, now=later,
                       result=pickle.dumps("stale"))
    with pytest.raises(litejobs.LeaseLost):
        storage.finish(job.id, stale, status=FAILED, now=later, error="stale failure")
    assert storage.renew([(job.id, stale)], later + 100) == [job.id]
    assert storage.renew([(job.id, fresh)], later + 100) == []
    assert storage.finish(job.id, fresh, status=COMPLETED, now=later,
                          result=pickle.dumps("fresh")) == COMPLETED
    assert job.refresh().result == "fresh"
    with pytest.raises(litejobs.LeaseLost):
        storage.interrupt(job.id, fresh, later, "too late")


def test_runs_completed_together_are_each_fenced(q, now):
    """A pool records the runs that returned nothing with one statement per
    claim: each run is still fenced by its own token, a cancel asked for
    meanwhile still wins, and a run that lost its lease changes nothing."""
    kept, cancelled, lost = q.put_many([Job(sample_jobs.add, i, i) for i in range(3)])
    other = q.put(Job(sample_jobs.add, 5, 5))
    storage = q._storage
    t = now.timestamp()
    first, _ = storage.claim(owner="pool", queues=None, now=t, expires=t + 5, limit=3)
    second, _ = storage.claim(owner="pool", queues=None, now=t, expires=t + 5, limit=1)
    cancelled.cancel()
    db = sqlite3.connect(q.path)
    try:
        with db:  # another claim took it meanwhile
            db.execute("UPDATE litejobs_jobs SET lease_token = 'theirs' WHERE id = ?", (lost.id,))
    finally:
        db.close()
    statuses = storage.complete([(kept.id, first), (cancelled.id, first), (lost.id, first),
                                 (other.id, second), (other.id, first)], t + 1)
    assert statuses == {(kept.id, first): COMPLETED, (cancelled.id, first): CANCELLED,
                        (other.id, second): COMPLETED}
    for job, status in ((kept, COMPLETED), (cancelled, CANCELLED), (other, COMPLETED)):
        job.refresh()
        assert (job.status, job.error) == (status, None)
        assert job.finished_at.timestamp() == pytest.approx(t + 1, abs=1e-5)
    assert kept.result is None and other.wait(timeout=1) is None
    assert lost.refresh().status == ACTIVE and lost.finished_at is None


def test_wait_times_out_on_a_job_nobody_runs(q):
    job = q.put(Job(sample_jobs.add, 1, 1))
    with pytest.raises(litejobs.WaitTimeout, match="run_pending") as caught:
        job.wait(timeout=0.05)
    assert isinstance(caught.value, TimeoutError)
    assert job.status == PENDING


def test_wait_helpers(q):
    job = q.put(Job(sample_jobs.add, 2, 2))
    with pytest.raises(litejobs.WaitTimeout):
        litejobs.wait_for_start(job, timeout=0.02)
    q.run_pending()
    assert litejobs.wait_for_start(job, timeout=1) is job
    assert litejobs.wait_for_result(job, timeout=1) == 4


def test_get_of_an_unknown_id(q):
    with pytest.raises(litejobs.JobNotFound, match="no job 999") as caught:
        q.get(999)
    assert isinstance(caught.value, KeyError)


def test_jobs_lists_newest_first_with_filters(q):
    first = q.put(Job(sample_jobs.add, 1, 1))
    second = q.put(Job(sample_jobs.fail), queue="other")
    third = q.put(Job(sample_jobs.add, 2, 2))
    assert q.jobs() == [third, second, first]
    assert q.jobs(limit=1) == [third]
    assert q.jobs(queue="other") == [second]
    q.run_pending()
    assert q.jobs(status=FAILED) == [second]
    assert q.jobs(status=COMPLETED, queue="default") == [third, first]
    with pytest.raises(ValueError, match="unknown status"):
        q.jobs(status="done")


def test_counts_has_every_status(q):
    assert q.counts() == dict.fromkeys(litejobs.STATUSES, 0)
    q.put(Job(sample_jobs.add, 1, 1))
    q.put(Job(sample_jobs.fail), queue="other")
    q.put(Job(sample_jobs.add, 1, 1)).cancel()
    q.run_pending()
    assert q.counts() == {PENDING: 0, WAITING: 0, ACTIVE: 0, COMPLETED: 1, FAILED: 1,
                          CANCELLED: 1}
    assert q.counts(queue="other")[FAILED] == 1
    assert q.counts(queue="other")[COMPLETED] == 0


def test_unique_key_returns_the_live_job(q):
    first = q.put(Job(sample_jobs.add, 1, 1), key="report-7")
    again = q.put(Job(sample_jobs.add, 5, 5), key="report-7")
    assert again == first and again.args == (1, 1)
    other = q.put(Job(sample_jobs.add, 1, 1), key="report-8")
    assert other != first
    assert sum(q.counts().values()) == 2
    q.run_pending()
    after = q.put(Job(sample_jobs.add, 3, 3), key="report-7")  # the first has ended
    assert after != first and after.key == "report-7"
    assert sum(q.counts().values()) == 3


def test_a_key_held_by_an_active_job_also_dedupes(q, now):
    first = q.put(Job(sample_jobs.add, 1, 1), key="k")
    q._storage.claim(owner="x", queues=None, now=now.timestamp(),
                     expires=now.timestamp() + 30, limit=1)
    assert first.refresh().status == ACTIVE
    assert q.put(Job(sample_jobs.add, 1, 1), key="k") == first


def test_priority_then_begin_after_then_id(q, now, tmp_path):
    log = tmp_path / "order.txt"
    early = now - datetime.timedelta(minutes=1)
    q.put(Job(sample_jobs.append_line, str(log), "low"), priority=-1)
    q.put(Job(sample_jobs.append_line, str(log), "normal-2"))
    q.put(Job(sample_jobs.append_line, str(log), "normal-1"), begin_after=early)
    q.put(Job(sample_jobs.append_line, str(log), "normal-3"))
    q.put(Job(sample_jobs.append_line, str(log), "high"), priority=10)
    assert q.run_pending(now=now + datetime.timedelta(seconds=1)) == 5
    assert log.read_text().split() == ["high", "normal-1", "normal-2", "normal-3", "low"]


def test_run_pending_serves_only_the_named_queues_and_honours_limit(q):
    pdf = q.put(Job(sample_jobs.add, 1, 1), queue="pdf")
    mail = q.put(Job(sample_jobs.add, 2, 2), queue="mail")
    assert q.run_pending(queues=["pdf"]) == 1
    assert pdf.refresh().status == COMPLETED and mail.refresh().status == PENDING
    assert q.run_pending(queues="nothing") == 0
    q.put(Job(sample_jobs.add, 3, 3), queue="mail")
    assert q.run_pending(limit=1) == 1
    assert q.counts()[PENDING] == 1


def test_jobs_put_by_a_running_job_run_in_the_same_call(q):
    parent = q.put(Job(sample_jobs.put_followup, q.path))
    assert q.run_pending() == 2
    follow = q.get(parent.wait(timeout=1))
    assert follow.wait(timeout=1) == parent.id + 1000


@pytest.mark.parametrize("item, name, expected", [
    (pow, "builtins:pow", None),
    ("sample_jobs:add", "sample_jobs:add", None),
    (functools.partial(sample_jobs.add, 40), "functools.partial(sample_jobs:add)", None),
    (sample_jobs.Greeter("hello").greet, "sample_jobs:Greeter.greet", None),
    (sample_jobs.Greeter.create, "sample_jobs:Greeter.create", None),
    (sample_jobs.Greeter, "sample_jobs:Greeter", None),
])
def test_every_kind_of_callable_runs(q, item, name, expected):
    args = {
        "builtins:pow": (2, 5),
        "sample_jobs:add": (1, 2),
        "functools.partial(sample_jobs:add)": (2,),
        "sample_jobs:Greeter.greet": ("world",),
        "sample_jobs:Greeter.create": ("hi",),
        "sample_jobs:Greeter": ("hey",),
    }[name]
    job = q.put(Job(item, *args))
    assert job.name == name
    q.run_pending()
    result = job.wait(timeout=5)
    if name == "sample_jobs:Greeter":
        assert isinstance(result, sample_jobs.Greeter) and result.greeting == "hey"
    else:
        assert result == {"builtins:pow": 32, "sample_jobs:add": 3,
                          "functools.partial(sample_jobs:add)": 42,
                          "sample_jobs:Greeter.greet": "hello, world",
                          "sample_jobs:Greeter.create": "hi"}[name]


def test_a_plain_callable_without_arguments(q):
    job = q.put(time.time)
    q.run_pending()
    assert abs(job.wait(timeout=5) - time.time()) < 60


def test_current_job_inside_and_outside(q):
    assert litejobs.current_job() is None
    job = q.put(sample_jobs.whoami)
    q.run_pending()
    assert job.wait(timeout=1) == (job.id, 1)
    assert litejobs.current_job() is None


def test_a_job_object_can_be_put_once(q):
    job = Job(sample_jobs.add, 1, 2)
    assert job.id is None and job.status is None
    assert "not put" in repr(job)
    assert q.put(job) is job
    with pytest.raises(ValueError, match="put already"):
        q.put(job)
    with pytest.raises(litejobs.LitejobsError, match="not been put"):
        Job(sample_jobs.add, 1, 2).refresh()


def test_put_many_is_one_transaction(q):
    jobs = q.put_many([Job(sample_jobs.add, i, i) for i in range(50)], queue="bulk")
    assert [job.status for job in jobs] == [PENDING] * 50
    assert q.counts(queue="bulk")[PENDING] == 50
    with pytest.raises(TypeError):
        q.put_many([Job(sample_jobs.add, 1, 1), Job(sample_jobs.add, threading.Lock(), 1)])
    with pytest.raises(TypeError):
        q.put_many([Job(sample_jobs.add, 1, 1), lambda: None])
    assert sum(q.counts().values()) == 50
    assert q.put_many([]) == []


def test_queue_pickles_as_its_path(q):
    job = q.put(Job(sample_jobs.add, 1, 1))
    copy = pickle.loads(pickle.dumps(q))
    assert copy is not q and copy.path == q.path and copy.durable == q.durable
    assert copy.get(job.id) == job
    copy.close()


def test_queue_as_context_manager_reopens_after_close(tmp_path):
    with litejobs.Queue(tmp_path / "a.db") as queue:
        job = queue.put(Job(sample_jobs.add, 1, 1))
    assert not queue._storage._connections
    assert queue.get(job.id).status == PENDING  # reopened lazily
    queue.close()


def test_timestamps_come_from_the_injected_clock(q, now):
    later = now + datetime.timedelta(days=3)
    job = q.put(Job(sample_jobs.add, 1, 1))
    q.run_pending(now=later)
    job.refresh()
    assert job.started_at == later and job.finished_at == later


def test_a_cancel_requested_before_an_interruption_wins(q, now):
    job = q.put(Job(sample_jobs.add, 1, 1))
    token, _ = q._storage.claim(owner="x", queues=None, now=now.timestamp(),
                                expires=now.timestamp() + 30, limit=1)
    assert job.cancel() is True
    assert job.status == ACTIVE  # flagged; the run still owns it
    assert q._storage.interrupt(job.id, token, now.timestamp(), "killed") == CANCELLED
    assert job.refresh().status == CANCELLED and job.interruptions == 1


def test_jobs_without_a_limit_lists_them_all(q):
    q.put_many([Job(sample_jobs.add, i, i) for i in range(150)])
    assert len(q.jobs()) == 100
    assert len(q.jobs(limit=None)) == 150


def test_a_bound_builtin_method_has_a_readable_name(q):
    job = q.put("abc".upper)
    assert job.name == "builtins:str.upper"
    q.run_pending()
    assert job.wait(timeout=1) == "ABC"


def test_pickling_keeps_every_option(tmp_path):
    litejobs.Queue(tmp_path / "a.db").close()
    queue = litejobs.Queue(tmp_path / "a.db", durable=False, create=False, busy_timeout=7)
    copy = pickle.loads(pickle.dumps(queue))
    assert (copy.durable, copy.create, copy.busy_timeout) == (False, False, 7)
    (tmp_path / "a.db").rename(tmp_path / "moved.db")
    with pytest.raises(litejobs.DatabaseError, match="no database"):
        pickle.loads(pickle.dumps(queue))
    assert not (tmp_path / "a.db").exists()


def test_a_long_job_keeps_its_lease(q):
    sample_jobs.GATE = threading.Event()
    job = q.put(sample_jobs.wait_for_gate)
    runner = threading.Thread(target=q.run_pending, kwargs={"lease": 0.3})
    runner.start()
    try:
        first = litejobs.wait_for_start(job, timeout=30)._row["lease_expires"]
        renewed = []

        def lease_moved_twice():
            expires = job.refresh()._row["lease_expires"]
            if expires is not None and expires > first and expires not in renewed:
                renewed.append(expires)
            return len(renewed) >= 2

        job._wait_until(lease_moved_twice, 30, "renew its lease")
        assert job.status == ACTIVE and job.interruptions == 0
    finally:
        sample_jobs.GATE.set()
        runner.join(timeout=30)
    assert not runner.is_alive()
    assert job.wait(timeout=5) == "through"
    assert job.attempts == 1 and job.interruptions == 0


def test_claims_across_queues_follow_priority_then_time_then_id(q, now):
    early = now - datetime.timedelta(minutes=5)
    q.put(Job(sample_jobs.add, 0, 1), queue="b")
    q.put(Job(sample_jobs.add, 0, 2), queue="a", priority=5)
    q.put(Job(sample_jobs.add, 0, 3), queue="c", begin_after=early)
    q.put(Job(sample_jobs.add, 0, 4), queue="a")
    q.put(Job(sample_jobs.add, 0, 5), queue="other", priority=9)
    token, claimed = q._storage.claim(owner="x", queues=["a", "b", "c", "a"],
                                      now=now.timestamp(), expires=now.timestamp() + 30,
                                      limit=10)
    assert [row["name"] for row in claimed] == ["sample_jobs:add"] * 4
    assert [q.get(row["id"]).args[1] for row in claimed] == [2, 3, 1, 4]
    token, more = q._storage.claim(owner="x", queues=None, now=now.timestamp(),
                                   expires=now.timestamp() + 30, limit=10)
    assert [q.get(row["id"]).args[1] for row in more] == [5]


# -- what users porting from zc.async hit first -------------------------------------------


def test_a_call_with_the_wrong_arguments_keeps_a_real_traceback(q):
    job = q.put(Job(sample_jobs.multiply, 6))  # 'second' is missing
    callback = job.add_callback(sample_jobs.multiply)  # gets one argument too many
    q.run_pending()
    for ended in (job, callback):
        ended.refresh()
        assert ended.status == FAILED and ended.error_type == "builtins.TypeError"
        assert ended.error.startswith("Traceback (most recent call last):\n"), ended.error
        assert '  File "' in ended.error  # a frame: where the call was made
    assert job.error.rstrip().endswith(
        "TypeError: multiply() missing 1 required positional argument: 'second'")


def test_a_result_that_cannot_be_pickled_fails_with_a_traceback(q):
    job = q.put(sample_jobs.return_lambda)
    q.run_pending()
    job.refresh()
    assert job.error.startswith("Traceback (most recent call last):\n")
    assert "The above exception was the direct cause" in job.error  # the pickling error
    assert job.error_type == "builtins.TypeError"


def test_put_refuses_an_async_generator_writing_nothing(q):
    for item in (sample_jobs.stream_async, Job(sample_jobs.stream_async, "x"),
                 functools.partial(sample_jobs.stream_async, "x"), "sample_jobs:stream_async"):
        with pytest.raises((TypeError, ValueError), match="async generator"):
            q.put(item)
        with pytest.raises((TypeError, ValueError), match="async generator"):
            q.put(litejobs.parallel(Job(sample_jobs.add, 1, 1), item))
    assert q.counts() == dict.fromkeys(litejobs.STATUSES, 0)


@pytest.mark.parametrize("item, result", [
    (Job(sample_jobs.fetch_async, "https://example.org"), "https://example.org"),
    (functools.partial(sample_jobs.fetch_async, "x"), "x"),
    (sample_jobs.AsyncCallable(), "called"),
    (Job("sample_jobs:fetch_async", "by name"), "by name"),
], ids=["job", "partial", "async-call", "by-name"])
def test_an_async_function_is_put_and_run_as_any_other(q, item, result):
    job = q.put(item)
    assert q.run_pending() == 1
    assert job.wait(timeout=0) == result


def test_an_async_callback_is_a_callback_like_any_other(q):
    job = q.put(Job(sample_jobs.add, 1, 1))
    callback = job.add_callback(sample_jobs.fetch_async)
    assert [child.id for child in job.children()] == [callback.id]


def test_a_job_shows_its_limits_and_its_counted_attempts(q, now):
    job = q.put(Job(sample_jobs.flaky, 1), retry=litejobs.Retry(attempts=8, delay=0),
                max_interruptions=5)
    assert (job.max_attempts, job.max_interruptions, job.handbacks) == (8, 5, 0)
    plain = q.put(Job(sample_jobs.add, 1, 1))
    assert (plain.max_attempts, plain.max_interruptions) == (1, 3)
    forever = q.put(Job(sample_jobs.add, 1, 1), max_interruptions=None)
    assert forever.max_interruptions is None
    q.run_pending(now=now)
    assert job.wait(timeout=1) == 2  # attempt 1 failed, attempt 2 succeeded


def test_jobs_takes_a_list_of_statuses(q):
    done = q.put(Job(sample_jobs.add, 1, 1))
    failed = q.put(Job(sample_jobs.fail))
    q.run_pending()
    waiting = q.put(Job(sample_jobs.add, 2, 2), begin_after=600)
    assert q.jobs(status=[COMPLETED, FAILED]) == [failed, done]
    assert q.jobs(status=(PENDING,)) == [waiting]
    assert q.jobs(status=COMPLETED) == [done]
    with pytest.raises(ValueError, match="unknown status 'done'"):
        q.jobs(status=[COMPLETED, "done"])
    with pytest.raises(ValueError, match="at least one status"):
        q.jobs(status=[])


def test_wait_for_result_returns_a_failure_as_zc_async_does(q):
    failed = q.put(Job(sample_jobs.fail, "broken"))
    cancelled = q.put(Job(sample_jobs.add, 1, 1), begin_after=600)
    cancelled.cancel()
    q.run_pending()
    failure = litejobs.wait_for_result(failed, timeout=1)
    assert isinstance(failure, litejobs.Failure)
    assert failure.status == FAILED and failure.error_type == "builtins.ValueError"
    assert "ValueError: broken" in failure.error
    assert litejobs.wait_for_result(cancelled, timeout=1).status == CANCELLED
    pending = q.put(Job(sample_jobs.add, 1, 1), begin_after=600)
    with pytest.raises(litejobs.WaitTimeout):
        litejobs.wait_for_result(pending, timeout=0.05)


# -- a function's own defaults: litejobs.job -------------------------------------------------


def test_a_decorated_function_stays_an_ordinary_function(q):
    assert sample_jobs.render_with_defaults(7) == "rendered 7"
    assert sample_jobs.plain_decorated(3) == 3
    assert sample_jobs.render_with_defaults.__name__ == "render_with_defaults"


def test_put_uses_the_functions_own_defaults_unless_told_otherwise(q):
    job = q.put(Job(sample_jobs.render_with_defaults, 7))
    assert (job.queue, job.priority, job.max_attempts, job.timeout,
            job.max_interruptions) == ("pdf", 5, 4, 60.0, 7)
    told = q.put(Job(sample_jobs.render_with_defaults, 8), queue="rush", priority=0,
                 timeout=None, retry=None, max_interruptions=1)
    assert (told.queue, told.priority, told.max_attempts, told.timeout,
            told.max_interruptions) == ("rush", 0, 1, None, 1)
    for item in (functools.partial(sample_jobs.plain_decorated, 1),
                 Job("sample_jobs:render_with_defaults", 2),
                 functools.partial(sample_jobs.render_with_defaults, 9)):
        put = q.put(item)
        assert put.queue == ("pdf" if "render" in put.name else "default")
    assert [j.queue for j in q.put_many([Job(sample_jobs.render_with_defaults, 1),
                                         Job(sample_jobs.add, 1, 1)])] == ["pdf", "default"]
    assert q.run_pending(queues=["pdf"]) == 4
    assert job.wait(timeout=1) == "rendered 7"


def test_parts_callbacks_and_postprocesses_take_their_functions_defaults(q):
    comp = q.put(litejobs.parallel(Job(sample_jobs.render_with_defaults, 1),
                                   Job(sample_jobs.add, 1, 1),
                                   postprocess=sample_jobs.notify_with_defaults))
    parts = comp.children()
    assert [part.queue for part in parts] == ["pdf", "default"]
    assert (comp.queue, comp.max_interruptions) == ("mail", 2)
    job = q.put(Job(sample_jobs.add, 1, 1), queue="work", priority=3)
    own = job.add_callback(sample_jobs.notify_with_defaults)
    inherited = job.add_callback(sample_jobs.describe_outcome)
    told = job.add_callback(sample_jobs.notify_with_defaults, queue="other")
    assert (own.queue, own.priority, own.max_interruptions) == ("mail", 3, 2)
    assert (inherited.queue, inherited.priority) == ("work", 3)
    assert told.queue == "other"


@pytest.mark.parametrize("options, error", [
    ({"queue": ""}, ValueError), ({"priority": "high"}, TypeError),
    ({"retry": 3}, TypeError), ({"timeout": -1}, ValueError),
    ({"max_interruptions": -2}, ValueError),
])
def test_bad_function_defaults_are_refused_where_the_function_is_defined(options, error):
    with pytest.raises(error):
        litejobs.job(**options)


def test_job_refuses_what_is_not_a_plain_function():
    with pytest.raises(TypeError, match="async generator"):
        litejobs.job(queue="io")(sample_jobs.stream_async)
    with pytest.raises(TypeError):
        litejobs.job(queue="io")(42)


def test_put_through_a_transaction_that_began_as_a_read_says_to_begin_immediate(q):
    app = sqlite3.connect(q.path, isolation_level=None)
    other = sqlite3.connect(q.path, isolation_level=None)
    try:
        app.execute("BEGIN")  # deferred: a read transaction until it writes
        app.execute("SELECT count(*) FROM litejobs_jobs").fetchone()
        other.execute("CREATE TABLE meanwhile (x)")  # another connection commits
        with pytest.raises(litejobs.DatabaseBusy, match="BEGIN IMMEDIATE"):
            q.put(Job(sample_jobs.add, 1, 1), conn=app)
        app.execute("ROLLBACK")
    finally:
        app.close()
        other.close()
    assert q.counts()["pending"] == 0
