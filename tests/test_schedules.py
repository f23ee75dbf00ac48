"""Schedules (`Queue.schedule`): each tick fires once, from whichever runner
gets there first, as a job put in the transaction that records the tick;
missed ticks, lag and overlap; declaring again, pausing, triggering; what is
refused; and the command line.  Every test holds on both backends; the
cron expressions themselves are tested in tests/test_cron.py."""

from __future__ import annotations

import datetime
import json
import logging
import time

import pytest

import litejobs
import sample_jobs
from backends import change
from hostile_jobs import cli_env, run_cli
from litejobs import COMPLETED, PENDING, Job
from waiting import WAIT, wait_until

UTC = datetime.timezone.utc
BERLIN = "Europe/Berlin"


@pytest.fixture
def q(each_backend):
    return each_backend


def at(*fields):
    return datetime.datetime(*fields, tzinfo=UTC)


def iso(moment):
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def ticks_of(q, name=None):
    """The ticks the schedule's jobs are for, oldest first (ISO 8601, UTC)."""
    metas = [job.meta for job in q.jobs(limit=None)]
    return sorted(meta["tick"] for meta in metas
                  if "tick" in meta and (name is None or meta["schedule"] == name))


def declare(q, name, cron, job=Job(sample_jobs.my_tick), *, since, **options):
    """Declare the schedule as it would have been at ``since``: its next
    tick is the first after then."""
    schedule = q.schedule(name, cron, job, **options)
    first = litejobs._Cron.parse(cron).next_after(since.timestamp(),
                                                  litejobs._zone(options.get("tz", "UTC")))
    change(q, "UPDATE litejobs_schedules SET next_tick = ? WHERE name = ?", (first, name))
    return schedule.refresh()


# -- ticks, once each -----------------------------------------------------------------


def test_stepping_run_pending_through_a_day_fires_every_tick_once_and_the_job_knows_it(q):
    start = at(2026, 5, 4)
    declare(q, "quarter", "*/15 * * * *", since=start)
    for minute in range(0, 24 * 60, 5):
        q.run_pending(now=start + datetime.timedelta(minutes=minute, seconds=1))
        q.run_pending(now=start + datetime.timedelta(minutes=minute, seconds=2))  # again: nothing
    expected = [iso(start + datetime.timedelta(minutes=15 * n)) for n in range(1, 96)]
    assert ticks_of(q) == expected  # 00:15 to 23:45: the midnight before was not after start
    assert sorted(job.result for job in q.jobs(limit=None)) == expected  # current_job().meta
    schedule = q.get_schedule("quarter")
    assert schedule.last_tick == start + datetime.timedelta(hours=23, minutes=45)
    assert schedule.next_tick == start + datetime.timedelta(days=1)
    assert q.get(schedule.last_job_id).meta == {"schedule": "quarter", "tick": expected[-1]}


def test_a_daily_tick_in_the_hour_daylight_saving_skips_fires_at_its_end_and_none_doubles(q):
    # Berlin, 2026: clocks go forward on 29 March (02:00 -> 03:00) and back
    # on 25 October (03:00 -> 02:00).  Local midnight of those days is 22:00
    # or 23:00 UTC the day before.
    for first_day, days in ((at(2026, 3, 27), 4), (at(2026, 10, 23), 4)):
        name = f"nightly-{first_day.month}"
        declare(q, name, "30 2 * * *", tz=BERLIN, since=first_day)
        for hour in range(0, days * 24):
            for minute in (0, 20, 40):
                q.run_pending(now=first_day + datetime.timedelta(hours=hour, minutes=minute))
        q.unschedule(name)  # its jobs stay
    assert ticks_of(q, "nightly-3") == [
        "2026-03-27T01:30:00.000Z", "2026-03-28T01:30:00.000Z",
        "2026-03-29T01:00:00.000Z",  # 02:30 does not exist: at 03:00 CEST, once
        "2026-03-30T00:30:00.000Z"]
    assert ticks_of(q, "nightly-10") == [
        "2026-10-23T00:30:00.000Z", "2026-10-24T00:30:00.000Z",
        "2026-10-25T00:30:00.000Z",  # 02:30 comes twice: the first time only
        "2026-10-26T01:30:00.000Z"]


def test_two_pools_fire_each_tick_of_a_schedule_once(q, cli_pools):
    q.schedule("every-second", "* * * * * *", Job(sample_jobs.my_tick))
    pools = [cli_pools.start(q.path, "-p", "1", env=cli_env(LITEJOBS_HOST=f"host-{n}"))
             for n in range(2)]
    wait_until(lambda: len(ticks_of(q)) >= 6, WAIT, "six ticks")
    for pool in pools:
        pool.send(__import__("signal").SIGTERM)
        assert pool.wait_exit(timeout=WAIT) == 0, pool.log()
    ticks = ticks_of(q)
    assert len(ticks) == len(set(ticks)), ticks  # none twice
    seconds = [datetime.datetime.fromisoformat(t.replace("Z", "+00:00")) for t in ticks]
    assert all(b - a == datetime.timedelta(seconds=1) for a, b in zip(seconds, seconds[1:])), \
        ticks  # none lost while they ran
    wait_until(lambda: q.counts()[PENDING] == 0, WAIT, "the jobs to run")
    fired_by = {line.split()[0] for pool in pools for line in pool.log().splitlines()
                if "fired its tick" in line}
    assert fired_by, [pool.log() for pool in pools]


def test_a_tick_recorded_as_fired_never_fires_again_even_after_its_jobs_are_purged(q):
    start = at(2026, 5, 4)
    declare(q, "hourly", "0 * * * *", since=start)
    q.run_pending(now=start + datetime.timedelta(hours=1, seconds=1))
    assert q.purge(0, batch=10) == 1
    # Even with its next tick put back by hand, the tick's record refuses it.
    change(q, "UPDATE litejobs_schedules SET next_tick = ?",
           ((start + datetime.timedelta(hours=1)).timestamp(),))
    q.run_pending(now=start + datetime.timedelta(hours=1, seconds=5))
    assert q.jobs(limit=None) == []
    assert q.get_schedule("hourly").next_tick == start + datetime.timedelta(hours=2)


# -- missed ticks, lag and overlap ----------------------------------------------------------


def test_missed_ticks_fire_by_catchup_latest_all_or_skip(q, caplog):
    start = at(2026, 5, 4)
    declare(q, "latest", "*/10 * * * *", since=start)
    declare(q, "all", "*/10 * * * *", catchup="all", catchup_limit=3, since=start)
    declare(q, "skip", "*/10 * * * *", catchup="skip", since=start)
    declare(q, "skip-on-time", "*/10 * * * *", catchup="skip", since=start)
    change(q, "UPDATE litejobs_schedules SET paused = 1 WHERE name = 'skip-on-time'")
    with caplog.at_level(logging.WARNING, logger="litejobs"):
        q.run_pending(now=start + datetime.timedelta(minutes=100, seconds=90))  # 10 ticks missed
    assert ticks_of(q, "latest") == [iso(start + datetime.timedelta(minutes=100))]
    assert ticks_of(q, "all") == [iso(start + datetime.timedelta(minutes=m))
                                  for m in (80, 90, 100)]
    assert ticks_of(q, "skip") == []
    assert "schedule latest skipped 9 ticks" in caplog.text
    assert "schedule all skipped 7 ticks" in caplog.text
    assert "beyond catchup_limit (3)" in caplog.text
    assert "schedule skip skipped 10 ticks" in caplog.text
    # catchup="skip" still fires a tick that is only a little late.
    change(q, "UPDATE litejobs_schedules SET paused = 0 WHERE name = 'skip-on-time'")
    change(q, "UPDATE litejobs_schedules SET next_tick = ? WHERE name = 'skip-on-time'",
           ((start + datetime.timedelta(minutes=110)).timestamp(),))
    q.run_pending(now=start + datetime.timedelta(minutes=110, seconds=20))
    assert ticks_of(q, "skip-on-time") == [iso(start + datetime.timedelta(minutes=110))]


def test_a_tick_later_than_max_lag_is_skipped_and_logged(q, caplog):
    start = at(2026, 5, 4)
    declare(q, "lagging", "0 * * * *", max_lag=60, since=start)
    with caplog.at_level(logging.WARNING, logger="litejobs"):
        q.run_pending(now=start + datetime.timedelta(hours=1, minutes=2))
    assert ticks_of(q) == []
    assert "schedule lagging skipped 1 tick" in caplog.text and "max_lag (60s)" in caplog.text
    q.run_pending(now=start + datetime.timedelta(hours=2, seconds=30))
    assert ticks_of(q) == [iso(start + datetime.timedelta(hours=2))]


def test_overlap_skip_puts_no_job_while_the_previous_run_has_not_ended(q, caplog):
    start = at(2026, 5, 4)
    declare(q, "sync", "*/5 * * * *", overlap="skip", queue="io", since=start)
    elsewhere = ["no-such-queue"]  # fires the schedule, runs nothing of it
    q.run_pending(now=start + datetime.timedelta(minutes=5, seconds=1), queues=elsewhere)
    with caplog.at_level(logging.WARNING, logger="litejobs"):
        q.run_pending(now=start + datetime.timedelta(minutes=10, seconds=1), queues=elsewhere)
    first = q.get_schedule("sync").last_job_id
    assert ticks_of(q) == [iso(start + datetime.timedelta(minutes=5))]
    assert f"its previous run, job {first}, has not ended" in caplog.text
    q.run_pending(now=start + datetime.timedelta(minutes=11))  # the first run ends
    assert q.get(first).status == COMPLETED
    q.run_pending(now=start + datetime.timedelta(minutes=15, seconds=1))
    assert ticks_of(q) == [iso(start + datetime.timedelta(minutes=m)) for m in (5, 15)]


# -- declaring, pausing, triggering ------------------------------------------------------


def test_declaring_a_schedule_again_keeps_its_next_tick_unless_its_cron_changes(q):
    start = at(2026, 5, 4)
    declare(q, "report", "0 * * * *", since=start)
    q.run_pending(now=start + datetime.timedelta(hours=1, seconds=1))
    kept = q.get_schedule("report")
    again = q.schedule("report", "0 * * * *", Job(sample_jobs.add, 1, 2), queue="reports")
    assert (again.next_tick, again.last_tick, again.last_job_id) == (
        kept.next_tick, kept.last_tick, kept.last_job_id)
    assert again.job_name == "sample_jobs:add"
    q.run_pending(now=start + datetime.timedelta(hours=2, seconds=1))
    newest = q.get(q.get_schedule("report").last_job_id)
    assert (newest.queue, newest.result) == ("reports", 3)
    again.pause()
    moved = q.schedule("report", "30 * * * *", Job(sample_jobs.add, 1, 2))
    assert moved.paused  # a program starting does not resume what an operator paused
    assert moved.next_tick.minute == 30 and moved.next_tick > datetime.datetime.now(UTC)


def test_a_paused_schedule_fires_nothing_and_resumes_from_the_next_tick_after_now(q):
    schedule = q.schedule("minutely", "* * * * *", Job(sample_jobs.my_tick))
    schedule.pause()
    later = datetime.datetime.now(UTC) + datetime.timedelta(minutes=10)
    q.run_pending(now=later)
    assert ticks_of(q) == []
    resumed = schedule.resume()
    assert not resumed.paused
    assert datetime.datetime.now(UTC) < resumed.next_tick <= datetime.datetime.now(UTC) + \
        datetime.timedelta(minutes=1)


def test_trigger_puts_the_job_now_and_leaves_the_next_tick(q):
    schedule = q.schedule("nightly", "30 2 * * *", Job(sample_jobs.my_tick), tz=BERLIN)
    job = schedule.trigger()
    assert job.status == PENDING and job.meta["schedule"] == "nightly"
    assert abs(datetime.datetime.fromisoformat(job.meta["tick"].replace("Z", "+00:00"))
               - datetime.datetime.now(UTC)) < datetime.timedelta(seconds=WAIT)
    assert schedule.next_tick == q.get_schedule("nightly").next_tick
    assert q.get_schedule("nightly").last_job_id == job.id
    assert q.run_pending() == 1 and job.refresh().result == job.meta["tick"]


def test_unschedule_removes_the_schedule_and_keeps_its_jobs(q):
    schedule = q.schedule("gone", "* * * * *", "sample_jobs:whoami")
    job = schedule.trigger()
    assert q.unschedule("gone") is True and q.unschedule("gone") is False
    assert q.schedules() == [] and q.get(job.id).status == PENDING
    with pytest.raises(litejobs.ScheduleNotFound, match="no schedule 'gone'"):
        q.get_schedule("gone")
    with pytest.raises(litejobs.ScheduleNotFound):
        schedule.pause()


def test_a_runner_with_a_secret_fires_only_schedules_signed_with_it(q, caplog):
    start = at(2026, 5, 4)
    declare(q, "unsigned", "0 * * * *", since=start)
    signed_queue = litejobs.Queue(q.path, secret="s" * 32)
    try:
        declare(signed_queue, "signed", "0 * * * *", since=start)
        with caplog.at_level(logging.ERROR, logger="litejobs"):
            signed_queue.run_pending(now=start + datetime.timedelta(hours=1, seconds=1))
        assert ticks_of(q, "signed") == [iso(start + datetime.timedelta(hours=1))]
        assert ticks_of(q, "unsigned") == []
        assert "schedule unsigned cannot fire here" in caplog.text
        assert "not signed with any of this queue's secrets" in caplog.text
    finally:
        signed_queue.close()


# -- what is refused ---------------------------------------------------------------------


@pytest.mark.parametrize("args, options, error, message", [
    (("s", "61 * * * *"), {}, litejobs.CronError, r"field 1 \(minute\) has 61, outside 0-59"),
    (("s", "* * *"), {}, litejobs.CronError, "3 fields, expected 5"),
    (("s", "0 0 30 2 *"), {}, litejobs.CronError, "never fires"),
    (("s", "@often"), {}, litejobs.CronError, "unknown alias"),
    (("s", "* * * * *"), {"tz": "Mars/Olympus"}, ValueError, "unknown time zone 'Mars/Olympus'"),
    (("s", "* * * * *"), {"catchup": "some"}, ValueError, "catchup is one of"),
    (("s", "* * * * *"), {"overlap": "never"}, ValueError, "overlap is one of"),
    (("s", "* * * * *"), {"catchup_limit": 0}, ValueError, "catchup_limit"),
    (("s", "* * * * *"), {"max_lag": 0}, ValueError, "max_lag must be positive"),
    (("s", "* * * * *"), {"priority": "high"}, TypeError, "priority"),
    (("", "* * * * *"), {}, ValueError, "name is 1 to 200 characters"),
    (("s", 5), {}, TypeError, "cron must be a string"),
])
def test_a_bad_schedule_is_refused_and_nothing_is_stored(q, args, options, error, message):
    with pytest.raises(error, match=message):
        q.schedule(*args, Job(sample_jobs.add, 1, 1), **options)
    assert q.schedules() == []


def test_a_schedule_of_something_put_would_refuse_is_refused(q):
    with pytest.raises(TypeError):
        q.schedule("s", "* * * * *", 42)
    with pytest.raises(litejobs.PayloadTooLarge):
        litejobs.Queue(q.path, size_limit=1000).schedule(
            "s", "* * * * *", Job(sample_jobs.echo, "x" * 5000))
    assert q.schedules() == []


# -- the command line -------------------------------------------------------------------


def test_the_schedules_and_schedule_commands_list_pause_resume_trigger_and_remove(q):
    q.schedule("nightly", "30 2 * * *", Job(sample_jobs.my_tick), tz=BERLIN)
    q.schedule("sync", "*/5 * * * *", "sample_jobs:whoami", overlap="skip")
    listed = json.loads(run_cli("schedules", q.path, "--json").stdout)
    assert [(s["name"], s["cron"], s["tz"], s["job"], s["paused"]) for s in listed] == [
        ("nightly", "30 2 * * *", BERLIN, "sample_jobs:my_tick", False),
        ("sync", "*/5 * * * *", "UTC", "sample_jobs:whoami", False)]
    assert listed[0]["next_tick"].endswith(":30:00.000Z") and listed[0]["last_tick"] is None
    done = run_cli("schedule", q.path, "pause", "sync")
    assert done.returncode == 0 and "paused sync:" in done.stdout and q.get_schedule("sync").paused
    assert run_cli("schedule", q.path, "resume", "sync").returncode == 0
    assert not q.get_schedule("sync").paused
    triggered = json.loads(run_cli("schedule", q.path, "trigger", "nightly", "--json").stdout)
    assert q.get(triggered[0]["job_id"]).meta["schedule"] == "nightly"
    text = run_cli("schedules", q.path).stdout
    assert f"nightly: '30 2 * * *' {BERLIN}, sample_jobs:my_tick; next " in text
    missing = run_cli("schedule", q.path, "remove", "nope")
    assert missing.returncode == 1 and "no schedule 'nope'" in missing.stderr
    assert run_cli("schedule", q.path, "remove", "sync").returncode == 0
    assert [s.name for s in q.schedules()] == ["nightly"]
