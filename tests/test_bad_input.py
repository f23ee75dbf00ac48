"""Bad input gets a clear error, and nothing is written."""

import datetime
import importlib
import logging
import sys
import threading

import pytest

import litejobs
import sample_jobs
from litejobs import Job, Retry


def nothing_written(q):
    return sum(q.counts().values()) == 0


def make_closure():
    captured = 3

    def inner():
        return captured

    return inner


def test_a_lambda_is_refused(q):
    with pytest.raises(TypeError, match="lambda.*module-level") as caught:
        q.put(lambda: 1)
    assert "<lambda>" in str(caught.value)
    assert nothing_written(q)


def test_a_closure_or_nested_function_is_refused(q):
    def nested():
        return 1

    for item in (nested, make_closure()):
        with pytest.raises(TypeError, match="defined inside another function") as caught:
            q.put(item)
        assert item.__name__ in str(caught.value)
    assert nothing_written(q)


def test_a_partial_of_a_lambda_is_refused(q):
    import functools

    with pytest.raises(TypeError, match="lambda"):
        q.put(functools.partial(lambda x: x, 1))
    assert nothing_written(q)


@pytest.mark.parametrize("args, kwargs, culprit", [
    ((threading.Lock(),), {}, "argument 0"),
    ((1, dict), {}, None),  # a class pickles by name: accepted
    ((1,), {"lock": threading.Lock()}, "keyword argument 'lock'"),
    ((1, lambda: 2), {}, "argument 1"),
])
def test_unpicklable_arguments_are_refused_by_name(q, args, kwargs, culprit):
    if culprit is None:
        job = q.put(Job(sample_jobs.echo, *args, **kwargs))
        assert q.get(job.id).args == args
        return
    with pytest.raises(TypeError, match="cannot pickle") as caught:
        q.put(Job(sample_jobs.echo, *args, **kwargs))
    assert culprit in str(caught.value)
    assert "sample_jobs:echo" in str(caught.value)
    assert nothing_written(q)


@pytest.mark.parametrize("name, why", [
    ("no_such_module_xyz:run", "No module named"),
    ("sample_jobs:no_such_function", "has no attribute"),
    ("sample_jobs.add", "package.module:function"),
    ("sample_jobs:", "package.module:function"),
])
def test_an_unresolvable_name_is_refused_at_put(q, name, why):
    with pytest.raises(ValueError, match="cannot resolve") as caught:
        q.put(name)
    assert why in str(caught.value)
    assert nothing_written(q)


def test_a_name_of_something_not_callable_is_refused(q):
    with pytest.raises(ValueError, match="not callable"):
        q.put("sys:path")
    with pytest.raises(TypeError, match="needs a callable"):
        q.put(42)
    assert nothing_written(q)


def test_a_naive_datetime_is_refused(q):
    naive = datetime.datetime(2030, 1, 1)
    with pytest.raises(ValueError, match="naive datetime"):
        q.put(Job(sample_jobs.add, 1, 1), begin_after=naive)
    with pytest.raises(ValueError, match="naive datetime"):
        q.run_pending(now=naive)
    assert nothing_written(q)


@pytest.mark.parametrize("options, error", [
    ({"begin_after": -1}, ValueError),
    ({"begin_after": datetime.timedelta(seconds=-5)}, ValueError),
    ({"begin_after": float("nan")}, ValueError),
    ({"begin_after": "soon"}, TypeError),
    ({"begin_by": -1}, ValueError),
    ({"begin_by": 0}, ValueError),
    ({"begin_by": datetime.datetime.now(datetime.timezone.utc)}, TypeError),
    ({"timeout": -3}, ValueError),
    ({"timeout": 0}, ValueError),
    ({"priority": 1.5}, TypeError),
    ({"queue": ""}, ValueError),
    ({"key": 12}, TypeError),
    ({"retry": 3}, TypeError),
    ({"max_interruptions": -1}, ValueError),
    ({"max_interruptions": 2 ** 64}, ValueError),
    ({"priority": 2 ** 64}, ValueError),
    ({"priority": True}, TypeError),
    ({"begin_after": 1e300}, ValueError),
    ({"begin_after": datetime.timedelta.max}, ValueError),
    ({"begin_after": 10 ** 400}, ValueError),
    ({"begin_after": datetime.datetime(1, 1, 1, tzinfo=datetime.timezone(
        datetime.timedelta(hours=5)))}, ValueError),
    ({"begin_after": datetime.datetime(9999, 12, 31, 23, tzinfo=datetime.timezone.utc),
      "begin_by": datetime.timedelta(days=2)}, ValueError),
])
def test_bad_options_are_refused(q, options, error):
    with pytest.raises(error):
        q.put(Job(sample_jobs.add, 1, 1), **options)
    assert nothing_written(q)


@pytest.mark.parametrize("options, error", [
    ({"attempts": 0}, ValueError),
    ({"attempts": -2}, ValueError),
    ({"attempts": 2.5}, TypeError),
    ({"delay": -1}, ValueError),
    ({"backoff": 0.5}, ValueError),
    ({"jitter": 2}, ValueError),
    ({"on": (ValueError, "KeyError")}, TypeError),
    ({"backoff": float("inf")}, ValueError),
    ({"backoff": float("nan")}, ValueError),
    ({"attempts": 2 ** 64}, ValueError),
])
def test_bad_retry_policies_are_refused(options, error):
    with pytest.raises(error):
        Retry(**options)


def test_a_function_gone_at_run_time_is_given_back_not_failed(q, tmp_path, monkeypatch,
                                                             caplog):
    """A function this process cannot import is the runner's problem (a
    deploy half done, a missing path), not the job's: the job goes back to
    pending, its attempt given back, with the reason in its history; the
    runner logs it and runs the other jobs."""
    module = tmp_path / "vanishing_jobs.py"
    module.write_text("def work():\n    return 'here'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    import vanishing_jobs

    doomed = q.put(vanishing_jobs.work)
    doomed_by_name = q.put("vanishing_jobs:work")
    fine = q.put(Job(sample_jobs.add, 1, 2))
    module.write_text("def renamed():\n    return 'moved'\n")
    del sys.modules["vanishing_jobs"]
    importlib.invalidate_caches()

    with caplog.at_level(logging.ERROR, logger="litejobs"):
        assert q.run_pending() == 1
    assert fine.wait(timeout=1) == 3
    for job in (doomed, doomed_by_name):
        job.refresh()
        assert (job.status, job.attempts, job.interruptions) == (litejobs.PENDING, 0, 0)
    [entry] = doomed.history
    assert entry["event"] == "refused"
    assert "has no attribute 'work'" in entry["error"]
    assert doomed_by_name.history == []  # the same function: left alone, not tried
    [logged] = [r for r in caplog.records
                if "cannot import vanishing_jobs:work" in r.getMessage()]
    assert "has no attribute 'work'" in logged.getMessage()  # with the traceback

    module.write_text("def work():\n    return 'back'\n")  # the deploy is done:
    del sys.modules["vanishing_jobs"]  # a new runner, with the new code
    importlib.invalidate_caches()
    assert q.run_pending() == 2
    assert [job.wait(timeout=1) for job in (doomed, doomed_by_name)] == ["back", "back"]


def test_a_module_gone_at_run_time_waits_for_a_runner_that_has_it(q, tmp_path, monkeypatch):
    module = tmp_path / "doomed_module.py"
    module.write_text("def work(x):\n    return x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    import doomed_module

    job = q.put(Job(doomed_module.work, 5))
    module.unlink()
    del sys.modules["doomed_module"]
    importlib.invalidate_caches()
    assert q.run_pending() == 0
    assert q.run_pending() == 0  # a new runner tries again, and gives it back again
    job.refresh()
    assert job.status == litejobs.PENDING
    assert [entry["error"] for entry in job.history] == [
        "ModuleNotFoundError: No module named 'doomed_module'"] * 2


def test_an_unpicklable_result_fails_the_job_clearly(q):
    job = q.put(sample_jobs.return_lambda)
    following = q.put(Job(sample_jobs.add, 2, 2))
    assert q.run_pending() == 2
    with pytest.raises(litejobs.JobFailed) as caught:
        job.wait(timeout=1)
    assert "cannot be pickled" in caught.value.traceback
    assert "return plain data" in caught.value.traceback
    assert following.wait(timeout=1) == 4


def test_a_bad_moment_never_wedges_the_queue(q, now):
    with pytest.raises(ValueError, match="out of range"):
        q.put(Job(sample_jobs.add, 1, 1), begin_after=datetime.datetime(
            1, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=5))), begin_by=60)
    good = q.put(Job(sample_jobs.add, 1, 1))
    assert q.run_pending(now=now) == 1
    assert good.wait(timeout=1) == 2


@pytest.mark.parametrize("limit, error", [(0, ValueError), (-1, ValueError),
                                          ("10", TypeError), (1.5, TypeError)])
def test_bad_limits_are_refused(q, limit, error):
    with pytest.raises(error):
        q.jobs(limit=limit)
    with pytest.raises(error):
        q.run_pending(limit=limit)


@pytest.mark.parametrize("lease", [0, -1, float("inf")])
def test_a_bad_lease_is_refused(q, lease):
    q.put(Job(sample_jobs.add, 1, 1))
    with pytest.raises(ValueError):
        q.run_pending(lease=lease)
    assert q.counts()["pending"] == 1
