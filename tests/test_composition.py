"""Composition, in-process: parallel/serial composites, callbacks, jobs that
return jobs, cancellation of trees, transactions and ids.

Everything runs through ``q.run_pending()`` in this process (worker pools are
covered by tests/test_composition_pool.py).  ``run_pending(limit=1)`` runs one
due job, so a test can stop between two steps of a chain and look at every
status; ``job.refresh()`` reloads what the database says.  Job functions live
in tests/sample_jobs.py, because jobs are stored by name.
"""

import datetime
import os
import sqlite3
import threading

import pytest

import litejobs
import sample_jobs
from backends import app_transaction, change, count_rows, is_postgres, orders_table
from litejobs import (ACTIVE, CANCELLED, COMPLETED, FAILED, PENDING, WAITING, Job,
                      parallel, serial)

ADD = "sample_jobs:add"
FAIL = "sample_jobs:fail"


def statuses(*jobs):
    return [job.refresh().status for job in jobs]


def ids(jobs):
    return [job.id for job in jobs]


def total(q):
    return sum(q.counts().values())


# -- the new status ------------------------------------------------------------


def test_waiting_is_a_status_between_pending_and_active():
    assert WAITING == "waiting"
    assert litejobs.STATUSES == (PENDING, WAITING, ACTIVE, COMPLETED, FAILED, CANCELLED)
    assert isinstance(parallel(), litejobs.Composite)
    assert isinstance(serial(Job(sample_jobs.add, 1, 1)), litejobs.Composite)


# -- parallel ------------------------------------------------------------------


def test_parallel_parts_are_pending_at_once_and_the_root_waits(q):
    root = q.put(parallel(Job(sample_jobs.add, 1, 2), Job(sample_jobs.add, 3, 4),
                          postprocess=sample_jobs.describe_parts))
    assert root.status == WAITING
    assert root.composite == "parallel"
    first, second = root.children()
    assert [first.role, second.role] == ["part", "part"]
    assert [first.status, second.status] == [PENDING, PENDING]
    assert first.parent() == root and second.parent() == root
    assert q.counts()[WAITING] == 1 and q.counts()[PENDING] == 2
    assert q.jobs(status=WAITING) == [root]


def test_parallel_postprocess_gets_the_finished_parts_in_order(q):
    root = q.put(parallel(Job(sample_jobs.add, 1, 2), Job(sample_jobs.add, 3, 4),
                          postprocess=sample_jobs.describe_parts))
    first, second = root.children()
    assert q.run_pending() == 3  # two parts, then the postprocess (the root) once
    root.refresh()
    assert root.status == COMPLETED
    assert root.result == [(first.id, COMPLETED, 3, None), (second.id, COMPLETED, 7, None)]
    assert root.attempts == 1


def test_parallel_postprocess_job_gets_its_bound_args_first(q):
    # Parts given as a Job, a callable and a name.
    root = q.put(parallel(Job(sample_jobs.add, 1, 2), sample_jobs.pid, "sample_jobs:pid",
                          Job(sample_jobs.add, 3, 4),
                          postprocess=Job(sample_jobs.tagged_results, "tag")))
    q.run_pending()
    root.refresh()
    assert root.status == COMPLETED
    tag, results = root.result
    assert tag == "tag"
    assert results[0] == 3 and results[1] == results[2] == os.getpid() and results[3] == 7


def test_parallel_postprocess_can_be_given_by_name(q):
    root = q.put(parallel(Job(sample_jobs.add, 1, 2), postprocess="sample_jobs:describe_parts"))
    (part,) = root.children()
    q.run_pending()
    assert root.refresh().result == [(part.id, COMPLETED, 3, None)]


def test_parallel_without_postprocess_returns_the_results_in_order(q):
    root = q.put(parallel(Job(sample_jobs.add, 5, 5), Job(sample_jobs.add, 1, 1),
                          Job(sample_jobs.add, 2, 2)))
    q.run_pending()
    assert root.refresh().status == COMPLETED
    assert root.result == [10, 2, 4]
    assert root.wait(timeout=1) == [10, 2, 4]


def test_parallel_postprocess_runs_after_failed_parts_and_sees_them(q):
    root = q.put(parallel(Job(sample_jobs.fail, "bad part"), Job(sample_jobs.add, 1, 1),
                          postprocess=sample_jobs.describe_parts))
    failed, ok = root.children()
    q.run_pending()
    root.refresh()
    assert root.status == COMPLETED
    assert root.result == [(failed.id, FAILED, None, "builtins.ValueError"),
                           (ok.id, COMPLETED, 2, None)]


def test_postprocess_can_read_each_parts_error(q):
    root = q.put(parallel(Job(sample_jobs.fail, "first trouble"), Job(sample_jobs.add, 1, 1),
                          postprocess=sample_jobs.last_error_lines))
    q.run_pending()
    assert root.refresh().result == ["ValueError: first trouble", None]


def test_parallel_without_postprocess_fails_naming_the_failed_parts(q):
    root = q.put(parallel(Job(sample_jobs.fail, "first trouble"), Job(sample_jobs.add, 1, 1),
                          Job(sample_jobs.fail, "second trouble")))
    bad1, ok, bad2 = root.children()
    q.run_pending()
    assert statuses(bad1, ok, bad2) == [FAILED, COMPLETED, FAILED]
    root.refresh()
    assert root.status == FAILED
    assert root.error_type == "litejobs.PartsFailed"
    for part in (bad1, bad2):
        assert str(part.id) in root.error
    assert FAIL in root.error
    assert "ValueError: first trouble" in root.error
    assert "ValueError: second trouble" in root.error
    with pytest.raises(litejobs.JobFailed) as caught:
        root.wait(timeout=1)
    assert caught.value.exc_type == "litejobs.PartsFailed"


def test_a_cancelled_part_fails_a_root_without_postprocess(q):
    root = q.put(parallel(Job(sample_jobs.add, 1, 1), Job(sample_jobs.add, 2, 2)))
    ok, cancelled = root.children()
    assert cancelled.cancel() is True
    q.run_pending()
    assert statuses(ok, cancelled) == [COMPLETED, CANCELLED]
    root.refresh()
    assert root.status == FAILED
    assert root.error_type == "litejobs.PartsFailed"
    assert str(cancelled.id) in root.error and ADD in root.error


def test_options_apply_to_every_part_and_key_to_the_root(q):
    root = q.put(parallel(Job(sample_jobs.flaky, 1), Job(sample_jobs.add, 1, 1),
                          postprocess=sample_jobs.describe_parts),
                 queue="reports", priority=7, key="nightly",
                 retry=litejobs.Retry(attempts=2, delay=0))
    flaky, plain = root.children()
    assert root.key == "nightly"
    for job in (root, flaky, plain):
        assert (job.queue, job.priority) == ("reports", 7)
    assert flaky.key is None and plain.key is None
    assert q.run_pending(queues=["default"]) == 0
    assert q.run_pending(queues=["reports"]) == 4  # flaky twice, plain, the postprocess
    assert flaky.refresh().attempts == 2
    assert root.refresh().result == [(flaky.id, COMPLETED, 2, None),
                                     (plain.id, COMPLETED, 2, None)]


def test_a_waiting_root_keeps_its_key(q):
    root = q.put(parallel(Job(sample_jobs.add, 1, 1)), key="nightly")
    assert root.status == WAITING
    before = q.counts()
    again = q.put(parallel(Job(sample_jobs.add, 1, 1)), key="nightly")
    assert again.id == root.id
    assert q.counts() == before


# -- serial --------------------------------------------------------------------


def test_serial_starts_each_part_once_the_one_before_ended(q):
    root = q.put(serial(Job(sample_jobs.add, 1, 1), Job(sample_jobs.add, 2, 2),
                        Job(sample_jobs.add, 3, 3), postprocess=sample_jobs.describe_parts))
    a, b, c = root.children()
    assert root.composite == "serial"
    assert [x.role for x in (a, b, c)] == ["part"] * 3
    assert [root.status, a.status, b.status, c.status] == [WAITING, PENDING, WAITING, WAITING]

    assert q.run_pending(limit=1) == 1
    assert statuses(root, a, b, c) == [WAITING, COMPLETED, PENDING, WAITING]
    assert q.run_pending(limit=1) == 1
    assert statuses(root, a, b, c) == [WAITING, COMPLETED, COMPLETED, PENDING]
    assert q.run_pending(limit=1) == 1
    # The last part's end made the root due in the same transaction.
    assert statuses(root, a, b, c) == [PENDING, COMPLETED, COMPLETED, COMPLETED]
    assert q.run_pending() == 1
    assert root.refresh().result == [(a.id, COMPLETED, 2, None), (b.id, COMPLETED, 4, None),
                                     (c.id, COMPLETED, 6, None)]


def test_serial_without_postprocess_returns_the_results_in_order(q):
    root = q.put(serial(Job(sample_jobs.add, 3, 3), Job(sample_jobs.add, 1, 1)))
    q.run_pending()
    assert root.refresh().status == COMPLETED
    assert root.result == [6, 2]


def test_a_failed_serial_part_does_not_stop_the_chain(q):
    root = q.put(serial(Job(sample_jobs.fail, "early"), Job(sample_jobs.add, 1, 1),
                        postprocess=sample_jobs.describe_parts))
    failed, later = root.children()
    assert q.run_pending(limit=1) == 1
    assert statuses(failed, later) == [FAILED, PENDING]
    q.run_pending()
    assert root.refresh().result == [(failed.id, FAILED, None, "builtins.ValueError"),
                                     (later.id, COMPLETED, 2, None)]


def test_a_failed_serial_part_fails_a_root_without_postprocess(q):
    root = q.put(serial(Job(sample_jobs.add, 1, 1), Job(sample_jobs.fail, "early"),
                        Job(sample_jobs.add, 2, 2)))
    first, failed, later = root.children()
    q.run_pending()
    assert statuses(first, failed, later) == [COMPLETED, FAILED, COMPLETED]
    root.refresh()
    assert root.status == FAILED and root.error_type == "litejobs.PartsFailed"
    assert str(failed.id) in root.error and FAIL in root.error
    assert "ValueError: early" in root.error


def test_a_part_being_retried_has_not_ended_so_the_chain_waits(q):
    root = q.put(serial(Job(sample_jobs.flaky, 1), Job(sample_jobs.add, 5, 5)),
                 retry=litejobs.Retry(attempts=2, delay=0))
    flaky, second = root.children()
    assert q.run_pending(limit=1) == 1  # attempt 1 fails; a retry is due
    assert statuses(flaky, second) == [PENDING, WAITING]
    q.run_pending()
    assert root.refresh().result == [2, 10]


def test_stop_on_failure_cancels_the_rest_and_postprocesses_at_once(q):
    root = q.put(serial(Job(sample_jobs.add, 1, 1), Job(sample_jobs.fail, "stop"),
                        Job(sample_jobs.add, 2, 2), Job(sample_jobs.add, 3, 3),
                        postprocess=sample_jobs.describe_parts, stop_on_failure=True))
    a, b, c, d = root.children()
    assert q.run_pending(limit=2) == 2
    assert statuses(root, a, b, c, d) == [PENDING, COMPLETED, FAILED, CANCELLED, CANCELLED]
    assert q.run_pending() == 1  # only the postprocess: c and d never run
    assert [row[:3] for row in root.refresh().result] == [
        (a.id, COMPLETED, 2), (b.id, FAILED, None), (c.id, CANCELLED, None),
        (d.id, CANCELLED, None)]
    assert c.refresh().attempts == 0 and d.refresh().attempts == 0


def test_stop_on_failure_without_postprocess_fails_the_root(q):
    root = q.put(serial(Job(sample_jobs.fail, "stop"), Job(sample_jobs.add, 2, 2),
                        stop_on_failure=True))
    failed, rest = root.children()
    q.run_pending()
    assert statuses(failed, rest) == [FAILED, CANCELLED]
    assert rest.attempts == 0
    root.refresh()
    assert root.status == FAILED and root.error_type == "litejobs.PartsFailed"
    assert str(failed.id) in root.error and "ValueError: stop" in root.error


def test_stop_on_failure_does_nothing_when_no_part_fails(q):
    root = q.put(serial(Job(sample_jobs.add, 1, 1), Job(sample_jobs.add, 2, 2),
                        stop_on_failure=True))
    q.run_pending()
    assert root.refresh().result == [2, 4]


# -- nesting -------------------------------------------------------------------


def test_parallel_of_serials(q):
    root = q.put(parallel(serial(Job(sample_jobs.add, 1, 1), Job(sample_jobs.add, 2, 2)),
                          serial(Job(sample_jobs.add, 3, 3), Job(sample_jobs.add, 4, 4))))
    left, right = root.children()
    assert [left.composite, right.composite] == ["serial", "serial"]
    assert [left.role, right.role] == ["part", "part"]
    assert left.parent() == root
    l1, l2 = left.children()
    r1, r2 = right.children()
    assert [left.status, right.status] == [WAITING, WAITING]
    assert [l1.status, l2.status, r1.status, r2.status] == [PENDING, WAITING, PENDING, WAITING]
    q.run_pending()
    assert root.refresh().status == COMPLETED
    assert root.result == [[2, 4], [6, 8]]


def test_a_failure_deep_down_fails_each_composite_above_it(q):
    root = q.put(parallel(serial(Job(sample_jobs.fail, "deep")), Job(sample_jobs.add, 1, 1)))
    inner, ok = root.children()
    (leaf,) = inner.children()
    q.run_pending()
    assert statuses(leaf, inner, ok, root) == [FAILED, FAILED, COMPLETED, FAILED]
    assert inner.error_type == root.error_type == "litejobs.PartsFailed"
    assert str(inner.id) in root.error and "ValueError: deep" in root.error


def test_serial_of_parallels_runs_the_second_group_after_the_first(q, tmp_path):
    log = str(tmp_path / "order.log")
    root = q.put(serial(
        parallel(Job(sample_jobs.append_line, log, "a"), Job(sample_jobs.append_line, log, "b")),
        parallel(Job(sample_jobs.append_line, log, "c"), Job(sample_jobs.append_line, log, "d"))))
    first, second = root.children()
    a, b = first.children()
    c, d = second.children()
    assert [first.status, second.status] == [WAITING, WAITING]
    assert [a.status, b.status, c.status, d.status] == [PENDING, PENDING, WAITING, WAITING]
    assert q.run_pending(limit=1) == 1
    assert statuses(c, d) == [WAITING, WAITING]
    q.run_pending()
    lines = open(log).read().split()
    assert sorted(lines[:2]) == ["a", "b"] and sorted(lines[2:]) == ["c", "d"]
    assert root.refresh().result == [["a", "b"], ["c", "d"]]


def test_five_levels_deep(q):
    add = sample_jobs.add
    level5 = parallel(Job(add, 1, 1), Job(add, 2, 2))
    level4 = serial(level5, Job(add, 3, 3))
    level3 = parallel(level4, Job(add, 4, 4))
    level2 = serial(level3, Job(add, 5, 5))
    root = q.put(parallel(level2, Job(add, 6, 6)))

    node = root
    for composite in ("parallel", "serial", "parallel", "serial", "parallel"):
        assert node.composite == composite
        node = node.children()[0]
    leaf = node
    assert leaf.composite is None and leaf.children() == []
    ancestors = []
    while (parent := leaf.parent()) is not None:
        ancestors.append(parent)
        leaf = parent
    assert len(ancestors) == 5 and ancestors[-1] == root

    q.run_pending()
    assert root.refresh().result == [[[[[2, 4], 6], 8], 10], 12]
    assert q.counts()[COMPLETED] == 11 and total(q) == 11


@pytest.mark.parametrize("make", [parallel, serial])
def test_an_empty_composite_is_pending_and_returns_an_empty_list(q, make):
    root = q.put(make())
    assert root.status == PENDING
    assert root.children() == []
    assert q.run_pending() == 1
    assert root.refresh().status == COMPLETED and root.result == []


@pytest.mark.parametrize("make", [parallel, serial])
def test_an_empty_composite_runs_its_postprocess_with_no_parts(q, make):
    root = q.put(make(postprocess=sample_jobs.describe_parts))
    assert root.status == PENDING
    q.run_pending()
    assert root.refresh().status == COMPLETED and root.result == []


# -- waiting jobs are never claimed --------------------------------------------


def test_waiting_jobs_are_never_claimed(q, now):
    later = datetime.timedelta(hours=1)
    root = q.put(serial(Job(sample_jobs.parent_status), Job(sample_jobs.parent_status),
                        postprocess=sample_jobs.describe_parts), begin_after=later)
    first, second = root.children()
    assert q.run_pending() == 0  # nothing is due yet, and waiting jobs never are
    assert statuses(root, first, second) == [WAITING, PENDING, WAITING]
    assert q.counts()[ACTIVE] == 0

    assert q.run_pending(now=now + 2 * later, limit=1) == 1
    assert statuses(root, first, second) == [WAITING, COMPLETED, PENDING]
    assert root.attempts == 0
    assert q.run_pending(now=now + 2 * later) == 2  # the second part, then the root
    # While each part ran, the root was waiting, not active.
    assert root.refresh().result == [(first.id, COMPLETED, WAITING, None),
                                     (second.id, COMPLETED, WAITING, None)]
    assert root.attempts == 1


# -- callbacks -----------------------------------------------------------------


def test_a_callback_gets_the_parents_result(q):
    parent = q.put(Job(sample_jobs.add, 2, 3))
    callback = parent.add_callback(sample_jobs.describe_outcome)
    assert callback.status == WAITING
    assert callback.role == "callback" and callback.parent() == parent
    assert parent.children() == [callback]
    assert q.run_pending(limit=1) == 1
    assert statuses(parent, callback) == [COMPLETED, PENDING]
    q.run_pending()
    assert callback.refresh().result == {"failure": False, "result": 5}


def test_a_callback_gets_a_failure_when_the_parent_failed(q):
    parent = q.put(Job(sample_jobs.fail, "parent trouble"))
    callback = parent.add_callback(sample_jobs.describe_outcome)
    q.run_pending()
    outcome = callback.refresh().result
    assert callback.status == COMPLETED
    assert outcome["failure"] is True
    assert outcome["status"] == FAILED
    assert outcome["error_type"] == "builtins.ValueError"
    assert "ValueError: parent trouble" in outcome["error"]
    assert outcome["job_id"] == parent.id


def test_a_callback_gets_a_failure_when_the_parent_was_cancelled(q):
    parent = q.put(Job(sample_jobs.add, 2, 3))
    callback = parent.add_callback(sample_jobs.describe_outcome)
    assert parent.cancel() is True
    assert callback.refresh().status == PENDING
    assert q.run_pending() == 1
    outcome = callback.refresh().result
    assert outcome["failure"] is True and outcome["status"] == CANCELLED
    assert outcome["job_id"] == parent.id


def test_a_callback_of_a_failed_composite_gets_parts_failed(q):
    root = q.put(parallel(Job(sample_jobs.fail, "x")))
    callback = root.add_callback(sample_jobs.describe_outcome)
    q.run_pending()
    outcome = callback.refresh().result
    assert outcome["status"] == FAILED and outcome["error_type"] == "litejobs.PartsFailed"


def test_a_callback_added_after_the_parent_ended_is_pending_at_once(q):
    parent = q.put(Job(sample_jobs.add, 2, 3))
    q.run_pending()
    callback = parent.add_callback(sample_jobs.describe_outcome)
    assert callback.status == PENDING
    q.run_pending()
    assert callback.refresh().result == {"failure": False, "result": 5}

    cancelled = q.put(Job(sample_jobs.add, 1, 1))
    cancelled.cancel()
    late = cancelled.add_callback(sample_jobs.describe_outcome)
    assert late.status == PENDING
    q.run_pending()
    assert late.refresh().result["status"] == CANCELLED


def test_every_callback_gets_the_parents_result(q):
    parent = q.put(Job(sample_jobs.add, 2, 3))
    first = parent.add_callback(sample_jobs.double)
    second = parent.add_callback(sample_jobs.double)
    third = parent.add_callback(Job(sample_jobs.echo, "bound", flag=True))
    assert parent.children() == [first, second, third]
    q.run_pending()
    assert [first.refresh().result, second.refresh().result] == [10, 10]
    # Bound args first, the parent's result appended after them.
    assert third.refresh().result == (("bound", 5), {"flag": True})


def test_callbacks_chain_through_the_callback_job(q):
    parent = q.put(Job(sample_jobs.add, 2, 3))
    once = parent.add_callback(sample_jobs.double)
    twice = once.add_callback(sample_jobs.double)
    assert twice.parent() == once and once.parent() == parent
    q.run_pending()
    assert [once.refresh().result, twice.refresh().result] == [10, 20]


def test_a_callback_given_by_name(q):
    parent = q.put(Job(sample_jobs.add, 2, 3))
    callback = parent.add_callback("sample_jobs:double")
    q.run_pending()
    assert callback.refresh().result == 10


def test_callback_options_default_to_the_parents_queue_and_priority(q):
    parent = q.put(Job(sample_jobs.add, 2, 3), queue="mail", priority=5)
    same = parent.add_callback(sample_jobs.double)
    other = parent.add_callback(sample_jobs.double, queue="slow", priority=-1)
    assert (same.queue, same.priority) == ("mail", 5)
    assert (other.queue, other.priority) == ("slow", -1)
    assert q.run_pending(queues=["mail"]) == 2
    assert statuses(same, other) == [COMPLETED, PENDING]


def test_add_callbacks_runs_the_success_side_on_success(q):
    parent = q.put(Job(sample_jobs.add, 2, 3))
    callback = parent.add_callbacks(success=sample_jobs.double,
                                    failure=sample_jobs.describe_outcome)
    assert callback.status == WAITING
    assert callback.parent() == parent
    assert callback.role == "callbacks"
    q.run_pending()
    assert callback.refresh().result == 10


def test_add_callbacks_runs_the_failure_side_on_failure(q):
    parent = q.put(Job(sample_jobs.fail, "nope"))
    callback = parent.add_callbacks(success=sample_jobs.double,
                                    failure=sample_jobs.describe_outcome)
    q.run_pending()
    outcome = callback.refresh().result
    assert outcome["failure"] is True and outcome["status"] == FAILED
    assert outcome["job_id"] == parent.id


def test_add_callbacks_with_bound_args(q):
    parent = q.put(Job(sample_jobs.add, 2, 3))
    callback = parent.add_callbacks(success=Job(sample_jobs.echo, "ok"))
    q.run_pending()
    assert callback.refresh().result == (("ok", 5), {})


def test_add_callbacks_without_the_matching_side_ends_cancelled_unrun(q):
    succeeded = q.put(Job(sample_jobs.add, 2, 3))
    only_failure = succeeded.add_callbacks(failure=sample_jobs.describe_outcome)
    failed = q.put(Job(sample_jobs.fail, "nope"))
    only_success = failed.add_callbacks(success=sample_jobs.double)
    q.run_pending()
    assert statuses(succeeded, failed) == [COMPLETED, FAILED]
    for callback in (only_failure, only_success):
        callback.refresh()
        assert callback.status == CANCELLED
        assert callback.attempts == 0


def test_add_callbacks_needs_a_side(q):
    parent = q.put(Job(sample_jobs.add, 2, 3))
    with pytest.raises((TypeError, ValueError)):
        parent.add_callbacks()
    assert parent.children() == [] and total(q) == 1


# -- jobs that return jobs -----------------------------------------------------


def test_a_job_returning_a_job_waits_for_it_and_takes_its_result(q):
    parent = q.put(Job(sample_jobs.return_job, 20, 22), queue="calc", priority=3)
    assert q.run_pending(limit=1) == 1
    assert parent.refresh().status == WAITING
    (child,) = parent.children()
    assert child.role == "result" and child.parent() == parent
    assert (child.status, child.queue, child.priority) == (PENDING, "calc", 3)
    assert child.name == ADD
    assert q.run_pending() == 1
    assert parent.refresh().status == COMPLETED
    assert parent.result == 42
    assert parent.attempts == 1  # its function ran once


def test_a_job_returning_a_failing_job_fails_with_its_error(q):
    parent = q.put(Job(sample_jobs.return_failing_job, "inner trouble"))
    q.run_pending()
    (child,) = parent.children()
    assert child.status == FAILED
    parent.refresh()
    assert parent.status == FAILED
    assert parent.error_type == "builtins.ValueError"
    assert "ValueError: inner trouble" in parent.error


def test_a_job_whose_returned_job_is_cancelled_ends_cancelled(q):
    parent = q.put(Job(sample_jobs.return_job, 1, 2))
    assert q.run_pending(limit=1) == 1
    (child,) = parent.children()
    assert child.cancel() is True
    assert parent.refresh().status == CANCELLED


def test_a_job_returning_a_composite_waits_for_it(q):
    parent = q.put(Job(sample_jobs.return_composite))
    assert q.run_pending(limit=1) == 1
    assert parent.refresh().status == WAITING
    (child,) = parent.children()
    assert child.role == "result" and child.composite == "parallel"
    assert [part.status for part in child.children()] == [PENDING, PENDING]
    q.run_pending()
    assert parent.refresh().status == COMPLETED
    assert parent.result == [3, 7]


def test_a_job_returning_an_already_put_job_waits_for_it(q):
    other = q.put(Job(sample_jobs.add, 1, 2))
    parent = q.put(Job(sample_jobs.return_existing_job, other.id), priority=1)
    assert q.run_pending(limit=1) == 1  # the parent, by priority
    assert statuses(parent, other) == [WAITING, PENDING]
    q.run_pending()
    assert statuses(parent, other) == [COMPLETED, COMPLETED]
    assert parent.result == 3


def test_a_job_returning_an_ended_job_takes_its_result_at_once(q):
    other = q.put(Job(sample_jobs.add, 1, 2))
    q.run_pending()
    parent = q.put(Job(sample_jobs.return_existing_job, other.id))
    assert q.run_pending() == 1
    assert parent.refresh().status == COMPLETED
    assert parent.result == 3


def test_a_callback_of_a_job_that_returned_a_job_waits_for_the_final_result(q):
    parent = q.put(Job(sample_jobs.return_job, 1, 2))
    callback = parent.add_callback(sample_jobs.describe_outcome)
    assert q.run_pending(limit=1) == 1
    # The parent has not ended: it waits on the job it returned.
    assert statuses(parent, callback) == [WAITING, WAITING]
    q.run_pending()
    assert callback.refresh().result == {"failure": False, "result": 3}


def test_a_serial_part_that_returned_a_job_holds_the_chain_until_it_ends(q):
    root = q.put(serial(Job(sample_jobs.return_job, 1, 2), Job(sample_jobs.add, 5, 5)))
    returner, second = root.children()
    assert q.run_pending(limit=1) == 1
    assert statuses(returner, second) == [WAITING, WAITING]
    (result_job,) = returner.children()
    assert result_job.status == PENDING
    q.run_pending()
    assert root.refresh().result == [3, 10]


def test_a_postprocess_that_returns_a_job_makes_the_root_wait_for_it(q):
    root = q.put(parallel(Job(sample_jobs.add, 1, 1), Job(sample_jobs.add, 2, 2),
                          postprocess=sample_jobs.add_parts_later))
    assert q.run_pending(limit=3) == 3  # the two parts, then the postprocess
    assert root.refresh().status == WAITING
    assert [child.role for child in root.children()] == ["part", "part", "result"]
    q.run_pending()
    assert root.refresh().status == COMPLETED and root.result == 6


def test_current_queue_is_the_queue_the_job_runs_from(q):
    assert litejobs.current_queue() is None
    job = q.put(sample_jobs.current_queue_path)
    q.run_pending()
    assert job.refresh().result == q.path


# -- cancellation ----------------------------------------------------------------


def test_cancelling_a_composite_cancels_the_tree_and_fails_its_callbacks(q):
    root = q.put(serial(Job(sample_jobs.add, 1, 1),
                        parallel(Job(sample_jobs.add, 2, 2), Job(sample_jobs.add, 3, 3)),
                        postprocess=sample_jobs.describe_parts))
    callback = root.add_callback(sample_jobs.describe_outcome)
    first, group = root.children()[:2]
    inner = group.children()
    assert root.cancel() is True
    assert root.status == CANCELLED
    assert statuses(first, group, *inner) == [CANCELLED] * 4
    assert callback.refresh().status == PENDING
    assert q.run_pending() == 1  # only the callback: no part, no postprocess
    assert root.refresh().attempts == 0
    outcome = callback.refresh().result
    assert outcome["failure"] is True and outcome["status"] == CANCELLED
    assert outcome["job_id"] == root.id
    assert root.cancel() is False


def test_a_running_part_is_flagged_when_its_composite_is_cancelled(q):
    root = q.put(serial(Job(sample_jobs.cancel_parent), Job(sample_jobs.add, 1, 1),
                        postprocess=sample_jobs.describe_parts))
    running, dormant = root.children()
    assert q.run_pending() == 1  # the first part only
    assert statuses(root, running, dormant) == [CANCELLED, CANCELLED, CANCELLED]
    assert running.result is None  # its run's result was discarded
    assert dormant.attempts == 0 and root.attempts == 0


def test_cancelling_a_dormant_serial_part_lets_the_chain_skip_it(q):
    root = q.put(serial(Job(sample_jobs.add, 1, 1), Job(sample_jobs.add, 2, 2),
                        Job(sample_jobs.add, 3, 3), postprocess=sample_jobs.describe_parts))
    a, b, c = root.children()
    assert b.status == WAITING
    assert b.cancel() is True
    assert statuses(root, a, b, c) == [WAITING, PENDING, CANCELLED, WAITING]
    assert q.run_pending() == 3  # a, c and the postprocess
    assert b.refresh().attempts == 0
    assert [row[:3] for row in root.refresh().result] == [
        (a.id, COMPLETED, 2), (b.id, CANCELLED, None), (c.id, COMPLETED, 6)]


def test_cancelling_a_pending_parallel_part_still_runs_the_postprocess(q):
    root = q.put(parallel(Job(sample_jobs.add, 1, 1), Job(sample_jobs.add, 2, 2),
                          postprocess=sample_jobs.describe_parts))
    a, b = root.children()
    assert q.run_pending(limit=1) == 1
    assert statuses(root, a, b) == [WAITING, COMPLETED, PENDING]
    assert b.cancel() is True
    # The cancel ended the last part: the root is due in that same transaction.
    assert root.refresh().status == PENDING
    assert q.run_pending() == 1
    assert [row[:3] for row in root.refresh().result] == [(a.id, COMPLETED, 2),
                                                          (b.id, CANCELLED, None)]


def test_cancelling_a_job_waiting_on_its_returned_job_cancels_that_job(q):
    parent = q.put(Job(sample_jobs.return_job, 1, 2))
    assert q.run_pending(limit=1) == 1
    (child,) = parent.children()
    assert statuses(parent, child) == [WAITING, PENDING]
    assert parent.cancel() is True
    assert statuses(parent, child) == [CANCELLED, CANCELLED]
    assert q.run_pending() == 0


# -- children, role, parent, composite --------------------------------------------


def test_a_plain_job_has_no_parent_children_or_composite(q):
    job = q.put(Job(sample_jobs.add, 1, 1))
    assert job.composite is None
    assert job.children() == []
    assert job.parent() is None


def test_children_are_parts_then_the_result_job_then_callbacks_in_order(q):
    root = q.put(parallel(Job(sample_jobs.add, 1, 1), Job(sample_jobs.add, 2, 2)))
    a, b = root.children()
    first = root.add_callback(sample_jobs.double)
    second = root.add_callbacks(failure=sample_jobs.describe_outcome)
    third = root.add_callback(sample_jobs.describe_outcome)
    assert root.children() == [a, b, first, second, third]
    assert [job.role for job in root.children()] == ["part", "part", "callback", "failure",
                                                     "callback"]
    assert all(job.parent() == root for job in root.children())
    # add_callbacks' role says which sides it has: "success", "failure" or both.
    other = q.put(Job(sample_jobs.add, 1, 1))
    assert other.add_callbacks(success=sample_jobs.double).role == "success"

    returner = q.put(Job(sample_jobs.return_job, 1, 2), priority=10)
    callback = returner.add_callback(sample_jobs.double)
    assert q.run_pending(limit=1) == 1  # the returner, by priority
    result_job, listed_callback = returner.children()
    assert result_job.role == "result" and listed_callback == callback


# -- transactions ----------------------------------------------------------------


@pytest.fixture
def orders(q):
    """An application table in the queue's database."""
    with q.transaction() as conn:
        conn.execute(orders_table(q))
    return "orders"


def test_puts_in_a_transaction_commit_together(q, orders):
    with q.transaction() as conn:
        plain = q.put(Job(sample_jobs.add, 1, 2))
        root = q.put(parallel(Job(sample_jobs.add, 3, 4)))
        many = q.put_many([Job(sample_jobs.add, 5, 6), Job(sample_jobs.add, 7, 8)])
        callback = plain.add_callback(sample_jobs.double)
        conn.execute("INSERT INTO orders (item) VALUES ('book')")
        # Another connection sees none of it before the block ends.
        assert count_rows(q, "litejobs_jobs") == 0
        assert count_rows(q, "orders") == 0
    assert count_rows(q, "litejobs_jobs") == 6
    assert count_rows(q, "orders") == 1
    q.run_pending()
    assert [plain.refresh().result, root.refresh().result, callback.refresh().result] == [
        3, [7], 6]
    assert [job.refresh().result for job in many] == [11, 15]


def test_an_exception_in_a_transaction_rolls_every_change_back(q, orders):
    kept = q.put(Job(sample_jobs.add, 1, 1))
    before = q.counts()
    with pytest.raises(RuntimeError, match="changed my mind"):
        with q.transaction() as conn:
            plain = q.put(Job(sample_jobs.add, 1, 2))
            root = q.put(serial(Job(sample_jobs.add, 3, 4)))
            q.put_many([Job(sample_jobs.add, 5, 6)])
            kept.add_callback(sample_jobs.double)
            kept.cancel()
            conn.execute("INSERT INTO orders (item) VALUES ('book')")
            raise RuntimeError("changed my mind")
    assert q.counts() == before
    for job_id in (plain.id, root.id):
        with pytest.raises(litejobs.JobNotFound):
            q.get(job_id)
    assert kept.refresh().status == PENDING and kept.children() == []
    assert count_rows(q, "orders") == 0
    # The queue is usable afterwards.
    assert q.put(Job(sample_jobs.add, 2, 2)).status == PENDING


def test_a_transaction_belongs_to_its_thread(q):
    found = []

    def look(job_id):
        try:
            found.append(q.get(job_id).status)
        except litejobs.JobNotFound:
            found.append("not found")

    with q.transaction():
        job = q.put(Job(sample_jobs.add, 1, 2))
        other = threading.Thread(target=look, args=(job.id,))
        other.start()
        other.join(timeout=10)
    assert found == ["not found"]  # another thread does not see the open transaction
    look(job.id)
    assert found[-1] == PENDING


# -- put(conn=...) ----------------------------------------------------------------


def _connect(path):
    return sqlite3.connect(path, isolation_level=None, timeout=5)


def test_put_in_the_callers_transaction_exists_once_committed(q):
    q.counts()  # the file and litejobs' tables exist before the caller connects
    with app_transaction(q) as conn:
        job = q.put(Job(sample_jobs.add, 1, 2), conn=conn)
        root = q.put(parallel(Job(sample_jobs.add, 3, 4)), conn=conn)
        assert count_rows(q, "litejobs_jobs") == 0
    assert q.get(job.id).status == PENDING
    q.run_pending()
    assert job.refresh().result == 3 and root.refresh().result == [7]


def test_put_in_the_callers_transaction_is_gone_after_rollback(q):
    q.counts()
    with pytest.raises(ZeroDivisionError):
        with app_transaction(q) as conn:
            job = q.put(Job(sample_jobs.add, 1, 2), conn=conn)
            many = q.put_many([Job(sample_jobs.add, 3, 4),
                               parallel(Job(sample_jobs.add, 5, 6))], conn=conn)
            1 / 0
    assert total(q) == 0
    for job_id in [job.id] + ids(many):
        with pytest.raises(litejobs.JobNotFound):
            q.get(job_id)
    assert q.run_pending() == 0


def test_put_in_pythons_implicit_transaction(sqlite_q):
    q = sqlite_q  # SQLite's own connection rules
    with q.transaction() as conn:
        conn.execute(orders_table(q))
    conn = sqlite3.connect(q.path, timeout=5)  # the default: implicit transactions
    try:
        conn.execute("INSERT INTO orders (item) VALUES ('book')")
        assert conn.in_transaction
        job = q.put(Job(sample_jobs.add, 1, 2), conn=conn)
        conn.commit()
    finally:
        conn.close()
    assert count_rows(q, "orders") == 1
    q.run_pending()
    assert job.refresh().result == 3


def test_put_with_a_connection_outside_a_transaction_is_refused(sqlite_q):
    q = sqlite_q  # SQLite's own connection rules
    q.counts()
    conn = _connect(q.path)
    try:
        job = Job(sample_jobs.add, 1, 2)
        with pytest.raises(ValueError, match="transaction"):
            q.put(job, conn=conn)
        with pytest.raises(ValueError, match="transaction"):
            q.put_many([Job(sample_jobs.add, 1, 2)], conn=conn)
        assert not conn.in_transaction
    finally:
        conn.close()
    assert total(q) == 0
    assert q.put(job).status == PENDING  # the refused Job was not marked as put


def test_put_with_a_connection_to_another_file_is_refused(sqlite_q, tmp_path):
    q = sqlite_q  # SQLite's own connection rules
    q.counts()
    conn = _connect(tmp_path / "other.db")
    try:
        conn.execute("BEGIN IMMEDIATE")
        with pytest.raises(ValueError):
            q.put(Job(sample_jobs.add, 1, 2), conn=conn)
        conn.execute("ROLLBACK")
    finally:
        conn.close()
    assert total(q) == 0


# -- put_many ----------------------------------------------------------------------


def test_put_many_takes_composites_and_plain_jobs(q):
    plain, root, named = q.put_many([
        Job(sample_jobs.add, 1, 2),
        serial(Job(sample_jobs.add, 3, 4), parallel(Job(sample_jobs.add, 5, 6))),
        "sample_jobs:pid"])
    assert [plain.status, root.status, named.status] == [PENDING, WAITING, PENDING]
    assert root.composite == "serial"
    q.run_pending()
    assert plain.refresh().result == 3
    assert root.refresh().result == [7, [11]]
    assert named.refresh().status == COMPLETED


def test_put_many_with_a_bad_item_stores_nothing(q):
    first = Job(sample_jobs.add, 1, 2)
    part = Job(sample_jobs.add, 3, 4)
    with pytest.raises(TypeError, match="lambda"):
        q.put_many([first, parallel(part), lambda: None, Job(sample_jobs.add, 5, 6)])
    assert total(q) == 0
    assert first.id is None and part.id is None
    with pytest.raises(TypeError, match="lambda"):
        q.put(parallel(Job(sample_jobs.add, 1, 1), lambda: None))
    with pytest.raises(TypeError, match="lambda"):
        q.put(parallel(Job(sample_jobs.add, 1, 1), postprocess=lambda *parts: None))
    assert total(q) == 0


# -- bad input ---------------------------------------------------------------------


def test_a_part_that_was_put_already_is_refused(q):
    done = q.put(Job(sample_jobs.add, 1, 1))
    fresh = Job(sample_jobs.add, 2, 2)
    with pytest.raises(ValueError, match="put"):
        q.put(parallel(fresh, done))
    with pytest.raises(ValueError, match="put"):
        q.put(serial(Job(sample_jobs.add, 2, 2), postprocess=done))
    assert total(q) == 1
    assert fresh.id is None


def test_the_same_job_twice_in_a_composite_is_refused(q):
    twice = Job(sample_jobs.add, 1, 1)
    with pytest.raises(ValueError):
        q.put(parallel(twice, twice))
    with pytest.raises(ValueError):
        q.put(serial(twice, parallel(Job(sample_jobs.add, 2, 2), twice)))
    with pytest.raises(ValueError):
        q.put(parallel(twice, postprocess=twice))
    assert total(q) == 0
    assert twice.id is None


def test_begin_by_with_a_composite_is_refused(q):
    with pytest.raises(ValueError, match="begin_by"):
        q.put(parallel(Job(sample_jobs.add, 1, 1)), begin_by=60)
    with pytest.raises(ValueError, match="begin_by"):
        q.put_many([Job(sample_jobs.add, 1, 1), serial(Job(sample_jobs.add, 1, 1))],
                   begin_by=60)
    assert total(q) == 0


def test_a_composite_cannot_be_a_callback(q):
    parent = q.put(Job(sample_jobs.add, 1, 1))
    with pytest.raises((TypeError, ValueError), match="(?i)composite|parallel|serial"):
        parent.add_callback(parallel(Job(sample_jobs.add, 2, 2)))
    with pytest.raises((TypeError, ValueError), match="(?i)composite|parallel|serial"):
        parent.add_callbacks(success=serial(Job(sample_jobs.add, 2, 2)))
    assert total(q) == 1 and parent.children() == []


# -- ids ---------------------------------------------------------------------------


def test_job_ids_are_not_reused_after_the_newest_jobs_are_deleted(q):
    jobs = q.put_many([Job(sample_jobs.add, i, i) for i in range(3)])
    root = q.put(parallel(Job(sample_jobs.add, 1, 1), Job(sample_jobs.add, 2, 2)))
    highest = max(ids(jobs) + [root.id] + ids(root.children()))
    change(q, "DELETE FROM litejobs_jobs WHERE id > ?", (jobs[0].id,))
    assert total(q) == 1
    again = q.put(Job(sample_jobs.add, 9, 9))
    assert again.id > highest
    tree = q.put(serial(Job(sample_jobs.add, 1, 1)))
    assert min([tree.id] + ids(tree.children())) > again.id


# -- regressions -------------------------------------------------------------------


def test_cancelling_a_composite_while_a_part_runs_waits_for_that_part_to_end(q, now):
    """A running part is only flagged by the cancel: its callback and the job
    waiting on it must wait until it really ends."""
    part = Job(sample_jobs.add, 1, 2)
    root = q.put(parallel(part, Job(sample_jobs.add, 3, 4)))
    callback = part.add_callback(sample_jobs.describe_outcome)
    token, claimed = q._storage.claim(owner="test", queues=None, now=now.timestamp(),
                                      expires=now.timestamp() + 60, limit=1)
    assert [row["id"] for row in claimed] == [part.id]
    assert root.cancel()
    assert (part.refresh().status, callback.refresh().status) == (ACTIVE, WAITING)
    assert q.run_pending(now=now) == 0  # nothing may start while the part runs
    # The run ends; its cancel wins over its result, and only now the callback is due.
    q._storage.finish(part.id, token, status=COMPLETED, now=now.timestamp())
    assert part.refresh().status == CANCELLED
    assert q.run_pending(now=now) == 1
    assert "cancelled" in str(callback.refresh().result)


def test_parts_of_a_parallel_recorded_together_are_counted_together(q, now):
    """A pool records a batch of runs at once: the parts of one parallel among
    them are counted in it together, and it becomes due once its last part
    has ended, as when each part is recorded alone."""
    parts = [Job(sample_jobs.sleep_then, 0) for _ in range(5)]
    root = q.put(parallel(*parts, postprocess=sample_jobs.describe_parts))
    t = now.timestamp()
    token, claimed = q._storage.claim(owner="pool", queues=None, now=t, expires=t + 60,
                                      limit=5)
    assert sorted(row["id"] for row in claimed) == ids(parts)
    assert q._storage.complete([(part.id, token) for part in parts[:3]], t) == {
        (part.id, token): COMPLETED for part in parts[:3]}
    assert statuses(root, *parts) == [WAITING] + [COMPLETED] * 3 + [ACTIVE] * 2
    q._storage.complete([(part.id, token) for part in parts[3:]], t)
    assert statuses(root, *parts) == [PENDING] + [COMPLETED] * 5
    assert q.run_pending(now=now) == 1
    assert root.wait(timeout=1) == sample_jobs.describe_parts(*parts)


@pytest.mark.parametrize("case", ["own composite", "each other", "own callback",
                                  "next serial part"])
def test_a_job_that_returns_a_job_which_waits_on_it_fails_instead_of_waiting_forever(q, case):
    if case == "own composite":
        root = q.put(parallel(sample_jobs.return_my_parent, Job(sample_jobs.add, 1, 2)))
        looping = root.children()[0]
    elif case == "each other":
        root = q.put(Job(sample_jobs.return_existing_job, 2))  # waits on the next
        looping = q.put(Job(sample_jobs.return_existing_job, 1))  # ... which returns it
        assert (root.id, looping.id) == (1, 2)
    elif case == "own callback":
        root = looping = q.put(sample_jobs.return_my_callback)
    else:
        root = q.put(serial(sample_jobs.return_next_sibling, Job(sample_jobs.add, 1, 2)))
        looping = root.children()[0]
    q.run_pending()
    assert looping.refresh().status == FAILED
    assert "would never end" in looping.error
    assert root.refresh().status in (FAILED, COMPLETED)  # ended, one way or the other
    assert q.counts()[WAITING] == 0


def test_a_stale_job_from_a_rolled_back_transaction_never_acts_on_a_later_job(q):
    with pytest.raises(RuntimeError):
        with q.transaction():
            stale = q.put(Job(sample_jobs.add, 1, 1))
            raise RuntimeError("abort")
    other = q.put(Job(sample_jobs.add, 2, 2))
    if is_postgres(q):  # a sequence gives no id twice, committed or not
        assert other.id > stale.id
    else:  # the id was never committed, so SQLite gives it again
        assert other.id == stale.id
    with pytest.raises(litejobs.JobNotFound, match="rolled back"):
        stale.refresh()
    with pytest.raises(litejobs.JobNotFound):
        stale.cancel()
    with pytest.raises(litejobs.JobNotFound):
        stale.add_callback(sample_jobs.double)
    assert other.refresh().status == PENDING and other.children() == []


def test_a_nested_transaction_that_raises_takes_back_only_its_own_puts(q):
    with q.transaction():
        kept = q.put(Job(sample_jobs.add, 1, 1))
        with pytest.raises(ValueError):
            with q.transaction():
                q.put(Job(sample_jobs.add, 2, 2))
                raise ValueError("inner block failed")
    assert [job.id for job in q.jobs()] == [kept.id]


def test_a_put_that_fails_half_way_through_conn_leaves_nothing_in_the_transaction(sqlite_q):
    q = sqlite_q  # SQLite's own connection rules
    app = sqlite3.connect(q.path, isolation_level=None)
    app.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 10_000)  # the third row is too big
    app.execute("BEGIN IMMEDIATE")
    with pytest.raises(litejobs.DatabaseError, match="too big"):
        q.put(parallel(Job(sample_jobs.add, 1, 2), Job(sample_jobs.add, "x" * 20_000, "y")),
              conn=app)
    app.execute("COMMIT")
    app.close()
    assert q.jobs() == []


def test_a_row_factory_set_on_the_transaction_connection_does_not_break_litejobs(sqlite_q):
    q = sqlite_q  # SQLite's own connection rules
    with q.transaction() as conn:
        conn.row_factory = sqlite3.Row
        conn.text_factory = bytes
        job = q.put(Job(sample_jobs.add, 1, 1))
        assert conn.execute("SELECT 'x' AS v").fetchone()["v"] == b"x"  # still the app's
    assert q.put(Job(sample_jobs.add, 2, 2)).refresh().status == PENDING
    assert job.refresh().status == PENDING


def test_callbacks_and_cancels_go_into_the_applications_transaction_too(q):
    with app_transaction(q) as app:
        job = q.put(Job(sample_jobs.add, 1, 1), conn=app)
        callback = job.add_callback(sample_jobs.double, conn=app)
        doomed = q.put(Job(sample_jobs.add, 5, 5), conn=app)
        assert doomed.cancel(conn=app)
    assert doomed.refresh().status == CANCELLED
    q.run_pending()
    assert callback.refresh().result == 4


def test_the_parts_failed_error_names_a_bounded_number_of_parts(q):
    root = q.put(parallel(*[Job(sample_jobs.fail, f"part {n}") for n in range(500)]))
    q.run_pending()
    assert root.refresh().status == FAILED
    assert "500 of 500 parts did not complete" in root.error
    assert "and 480 more" in root.error
    assert len(root.error) < 5000


def test_wait_on_a_cancelled_composite_returns_once_its_running_parts_have_ended(q, now):
    """Cancelling a composite ends it at once, but a part that was running
    ends only when its runner stops it; until then the composite cannot be
    retried, so wait() waits for that part too."""
    comp = q.put(litejobs.parallel(Job(sample_jobs.add, 1, 1), Job(sample_jobs.add, 2, 2)))
    token, [running] = q._storage.claim(owner="elsewhere", queues=None, now=now.timestamp(),
                                        expires=now.timestamp() + 60, limit=1)
    assert comp.cancel() is True
    assert comp.status == CANCELLED
    with pytest.raises(litejobs.WaitTimeout):
        comp.wait(timeout=0.1)
    with pytest.raises(ValueError, match="still has parts running"):
        comp.retry()
    # The runner sees the cancel and stops the part, which ends cancelled.
    assert q._storage.finish(running["id"], token, status=COMPLETED,
                             now=now.timestamp()) == CANCELLED
    with pytest.raises(litejobs.JobCancelled):
        comp.wait(timeout=1)
    assert comp.retry() == WAITING


@pytest.fixture
def q(each_backend):
    """Every test here holds on each backend."""
    return each_backend
