"""begin_after, begin_by and retries, driven by an injected clock: no test sleeps."""

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

import litejobs
import sample_jobs
from litejobs import COMPLETED, FAILED, PENDING, Job, Retry

MINUTE = datetime.timedelta(minutes=1)
SECOND = datetime.timedelta(seconds=1)


def test_begin_after_a_timedelta(q, now):
    job = q.put(Job(sample_jobs.add, 1, 1), begin_after=5 * MINUTE)
    assert job.begin_after > job.created_at + 5 * MINUTE - SECOND
    assert q.run_pending(now=now) == 0
    assert q.run_pending(now=now + 4 * MINUTE) == 0
    assert q.run_pending(now=now + 6 * MINUTE) == 1
    assert job.wait(timeout=1) == 2


def test_begin_after_seconds_and_aware_datetimes(q, now):
    in_seconds = q.put(Job(sample_jobs.add, 1, 0), begin_after=90)
    moment = datetime.datetime(2031, 5, 1, 12, 0, tzinfo=datetime.timezone.utc)
    at_moment = q.put(Job(sample_jobs.add, 2, 0), begin_after=moment)
    other_zone = datetime.timezone(datetime.timedelta(hours=-5))
    in_the_past = q.put(Job(sample_jobs.add, 3, 0),
                        begin_after=datetime.datetime(2001, 1, 1, tzinfo=other_zone))
    assert at_moment.begin_after == moment
    assert q.run_pending(now=now) == 1  # only the one already due
    assert in_the_past.refresh().status == COMPLETED
    assert q.run_pending(now=now + 2 * MINUTE) == 1
    assert in_seconds.refresh().status == COMPLETED
    assert at_moment.refresh().status == PENDING
    assert q.run_pending(now=moment) == 1
    assert at_moment.wait(timeout=1) == 2


def test_begin_by_fails_a_job_not_started_in_time(q, now, tmp_path):
    marker = tmp_path / "ran.txt"
    job = q.put(Job(sample_jobs.append_line, str(marker), "late"),
                begin_after=MINUTE, begin_by=2 * MINUTE)
    assert job.begin_by - job.begin_after == 2 * MINUTE
    assert q.run_pending(now=now + 4 * MINUTE) == 0  # it did not run
    assert not marker.exists()
    with pytest.raises(litejobs.JobFailed) as caught:
        job.wait(timeout=1)
    assert caught.value.exc_type == "litejobs.DeadlineExceeded"
    assert "was still pending" in caught.value.traceback
    assert job.status == FAILED and job.attempts == 0
    assert job.finished_at == now + 4 * MINUTE


def test_begin_by_lets_a_job_start_within_the_window(q, now):
    job = q.put(Job(sample_jobs.add, 1, 1), begin_after=MINUTE, begin_by=2 * MINUTE)
    assert q.run_pending(now=now + 2 * MINUTE) == 1
    assert job.wait(timeout=1) == 2


def test_begin_by_does_not_apply_to_retries_of_a_started_job(q, now):
    job = q.put(Job(sample_jobs.flaky, 1), begin_by=MINUTE,
                retry=Retry(attempts=2, delay=600, jitter=0))
    assert q.run_pending(now=now) == 1
    assert job.refresh().status == PENDING
    assert q.run_pending(now=now + 11 * MINUTE) == 1  # past begin_by, but it started
    assert job.wait(timeout=1) == 2


def test_retries_back_off_exponentially_from_the_injected_clock(q, now):
    policy = Retry(attempts=4, delay=10, backoff=3, jitter=0)
    job = q.put(Job(sample_jobs.flaky, 3), retry=policy)
    clock = now
    for expected_delay in (10, 30, 90):
        assert q.run_pending(now=clock) == 1
        job.refresh()
        assert job.status == PENDING
        assert job.begin_after == clock + expected_delay * SECOND
        assert "ConnectionError" in job.error
        assert q.run_pending(now=clock + (expected_delay - 1) * SECOND) == 0
        clock += expected_delay * SECOND
    assert q.run_pending(now=clock) == 1
    assert job.wait(timeout=1) == 4
    assert job.attempts == 4


def test_exhausted_retries_fail_with_the_last_traceback(q, now):
    job = q.put(Job(sample_jobs.flaky, 5), retry=Retry(attempts=3, delay=1, jitter=0))
    for step in range(3):
        assert q.run_pending(now=now + step * MINUTE) == 1
    with pytest.raises(litejobs.JobFailed) as caught:
        job.wait(timeout=1)
    assert job.attempts == 3
    assert caught.value.traceback.rstrip().endswith("ConnectionError: attempt 3")
    assert q.run_pending(now=now + 10 * MINUTE) == 0


def test_jitter_stays_within_its_band(q, now):
    policy = Retry(attempts=2, delay=100, jitter=0.2)
    delays = set()
    for _ in range(10):
        job = q.put(Job(sample_jobs.flaky, 1), retry=policy)
        q.run_pending(now=now, limit=1)
        delay = (job.refresh().begin_after - now).total_seconds()
        assert 80 <= delay <= 120
        delays.add(round(delay, 3))
        job.cancel()
    assert len(delays) > 1  # it does vary


def test_max_delay_caps_the_backoff():
    policy = Retry(attempts=20, delay=1, backoff=10, max_delay=60, jitter=0)
    assert [policy.delay_before(n) for n in (1, 2, 3, 4)] == [1, 10, 60, 60]


@given(attempt=st.integers(1, 50), delay=st.floats(0, 1e4), backoff=st.floats(1, 10),
       max_delay=st.floats(0, 1e5), jitter=st.floats(0, 1))
def test_delays_are_never_negative_nor_above_the_cap(attempt, delay, backoff, max_delay,
                                                     jitter):
    policy = Retry(attempts=2, delay=delay, backoff=backoff, max_delay=max_delay,
                   jitter=jitter)
    assert 0 <= policy.delay_before(attempt) <= max_delay


def test_only_the_chosen_exception_types_are_retried(q, now):
    retried = q.put(Job(sample_jobs.flaky, 1, "KeyError"),
                    retry=Retry(attempts=3, delay=0, on=(LookupError,)))
    not_retried = q.put(Job(sample_jobs.flaky, 1, "ConnectionError"),
                        retry=Retry(attempts=3, delay=0, on=(LookupError,)))
    q.run_pending(now=now)
    assert retried.wait(timeout=1) == 2
    with pytest.raises(litejobs.JobFailed):
        not_retried.wait(timeout=1)
    assert not_retried.attempts == 1


def test_without_retry_an_exception_fails_at_once(q, now):
    job = q.put(Job(sample_jobs.flaky, 1))
    assert q.run_pending(now=now) == 1
    assert job.refresh().status == FAILED and job.attempts == 1


def test_interruptions_do_not_use_up_exception_retries(q, now):
    job = q.put(Job(sample_jobs.flaky, 2), retry=Retry(attempts=2, delay=0))
    q._storage.claim(owner="died", queues=None, now=now.timestamp(),
                     expires=now.timestamp() + 1, limit=1)
    later = now + MINUTE  # the dead owner's lease has run out
    assert q.run_pending(now=later) == 2  # attempt 2 raises, attempt 3 succeeds
    assert job.wait(timeout=1) == 3
    assert job.interruptions == 1 and job.attempts == 3


def test_every_job_past_its_deadline_fails_however_many(q, now):
    jobs = q.put_many([Job(sample_jobs.add, i, 0) for i in range(150)], begin_by=60)
    assert q.run_pending(now=now + datetime.timedelta(hours=1)) == 0
    assert q.counts()[FAILED] == 150
    assert {job.refresh().error_type for job in jobs} == {"litejobs.DeadlineExceeded"}


def test_jobs_put_by_a_job_count_from_the_injected_clock(q, now):
    first = q.put(Job(sample_jobs.reschedule, q.path, 5))
    tomorrow = now + datetime.timedelta(days=1)
    assert q.run_pending(now=tomorrow) == 1  # the next run is due 5 minutes after "now"
    following = [job for job in q.jobs(status=PENDING)]
    assert len(following) == 1
    assert following[0].begin_after == tomorrow + 5 * MINUTE
    assert following[0].created_at == tomorrow
    assert first.wait(timeout=1) == first.id
    assert q.run_pending(now=tomorrow + 6 * MINUTE) == 1


def test_a_cancel_inside_a_job_is_stamped_with_the_injected_clock(q, now):
    victim = q.put(Job(sample_jobs.add, 1, 1), begin_after=datetime.timedelta(days=30))
    canceller = q.put(Job(sample_jobs.cancel_job, q.path, victim.id))
    later = now + datetime.timedelta(days=2)
    assert q.run_pending(now=later) == 1
    assert canceller.wait(timeout=1) is True
    assert victim.refresh().status == litejobs.CANCELLED
    assert victim.finished_at == later


def test_a_zero_delay_stays_zero_however_many_attempts():
    policy = Retry(attempts=5000, delay=0, backoff=2, max_delay=600)
    assert [policy.delay_before(n) for n in (1, 1000, 1030, 4000)] == [0.0] * 4


def test_a_retry_after_very_many_attempts_waits_the_capped_delay(q, now):
    job = q.put(Job(sample_jobs.fail), retry=Retry(attempts=5000, delay=1, backoff=10,
                                                   max_delay=600, jitter=0))
    with q._storage.write() as conn:  # as if it had already failed 2,000 times
        conn.execute("UPDATE litejobs_jobs SET attempts = 2000 WHERE id = ?", (job.id,))
    assert q.run_pending(now=now) == 1
    job.refresh()
    assert job.status == PENDING and job.attempts == 2001
    assert job.begin_after == now + 600 * SECOND


@given(attempt=st.integers(1, 100_000), delay=st.floats(0, 1e6),
       backoff=st.floats(1, 1e6), max_delay=st.floats(0, 1e7), jitter=st.floats(0, 1))
def test_huge_attempt_numbers_stay_capped(attempt, delay, backoff, max_delay, jitter):
    policy = Retry(attempts=2, delay=delay, backoff=backoff, max_delay=max_delay,
                   jitter=jitter)
    assert 0 <= policy.delay_before(attempt) <= max_delay


def test_leases_run_on_the_real_clock_even_when_now_is_in_the_past(q):
    job = q.put(sample_jobs.lease_left)
    long_ago = datetime.datetime(2001, 1, 1, tzinfo=datetime.timezone.utc)
    job = q.put(sample_jobs.lease_left, begin_after=long_ago)
    q.run_pending(now=long_ago, lease=30)
    assert 20 < job.wait(timeout=1) <= 30
