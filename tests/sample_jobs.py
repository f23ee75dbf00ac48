"""Module-level job functions shared by the tests (jobs are stored by name)."""

import asyncio
import logging
import os
import time

import litejobs


def add(a, b):
    return a + b


def echo(*args, **kwargs):
    return args, kwargs


def fail(message="boom"):
    raise ValueError(message)


def flaky(fail_times, exc_name="ConnectionError"):
    """Raise until this is run ``fail_times + 1`` times; return the attempt."""
    job = litejobs.current_job()
    if job.attempt <= fail_times:
        raise {"ConnectionError": ConnectionError, "KeyError": KeyError}[exc_name](
            f"attempt {job.attempt}")
    return job.attempt


def whoami():
    job = litejobs.current_job()
    return job.id, job.attempt


def return_lambda():
    return lambda: None


def append_line(path, text):
    with open(path, "a") as handle:
        handle.write(f"{text}\n")
    return text


def put_followup(path):
    """A job that puts another job into its own queue."""
    job = litejobs.current_job()
    queue = litejobs.Queue(path)
    follow = queue.put(litejobs.Job(add, job.id, 1000))
    return follow.id


def cancel_myself():
    job = litejobs.current_job()
    job.cancel()
    return "finished anyway"


def interrupt():
    raise KeyboardInterrupt


def exit_job():
    raise SystemExit(3)


def pid():
    return os.getpid()


class Greeter:
    def __init__(self, greeting):
        self.greeting = greeting

    def greet(self, name):
        return f"{self.greeting}, {name}"

    @classmethod
    def create(cls, greeting):
        return cls(greeting).greeting


def own_status():
    """The job's status as the database sees it while the job runs."""
    return litejobs.current_job().refresh().status


def reschedule(path, minutes):
    """The recurring pattern: each run puts the next one, ``minutes`` later."""
    import datetime

    litejobs.Queue(path).put(litejobs.Job(reschedule, path, minutes),
                             begin_after=datetime.timedelta(minutes=minutes))
    return litejobs.current_job().id


def big_result(size):
    return b"x" * size


def lease_left():
    """Seconds of lease this run holds, on the real clock."""
    import time

    return litejobs.current_job().refresh()._row["lease_expires"] - time.time()


GATE = None  # a threading.Event a test installs; wait_for_gate blocks on it


def wait_for_gate():
    if not GATE.wait(timeout=60):
        raise TimeoutError("the test never opened the gate")
    return "through"


def cancel_job(path, job_id):
    """Cancel another job from inside this one."""
    return litejobs.Queue(path).get(job_id).cancel()


def sleep_then(seconds, value=None):
    import time

    time.sleep(seconds)
    return value


def wait_for_file(path, timeout=60):
    """Block until ``path`` exists (a test creates it), then return the attempt."""
    import time

    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)
    return litejobs.current_job().attempt


def block_first_attempt(marker_dir):
    """Attempt 1 writes its pid to ``marker_dir/started-1`` and blocks; later
    attempts return at once.  Returns (attempt, pid)."""
    import time

    job = litejobs.current_job()
    with open(os.path.join(marker_dir, f"started-{job.attempt}"), "w") as handle:
        handle.write(str(os.getpid()))
    if job.attempt == 1:
        time.sleep(300)
    return job.attempt, os.getpid()


def kill_myself():
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def hard_exit(status=0):
    os._exit(status)


# -- composition on real pools (tests/test_composition_pool.py) ---------------------


def _append_with_o_append(path, line):
    """One write(2) with O_APPEND: lines from several processes never mix."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def pool_postprocess_log(log_path, tag, *parts):
    """A postprocess: append one line "tag" per run, and return what it saw
    of its parts: {"statuses", "results", "ids", "all_jobs"}."""
    _append_with_o_append(log_path, tag)
    return {
        "statuses": [part.status for part in parts],
        "results": [part.result if part.status == litejobs.COMPLETED else None
                    for part in parts],
        "ids": [part.id for part in parts],
        "all_jobs": all(isinstance(part, litejobs.Job) for part in parts),
    }


def pool_sum_parts(*parts):
    """A postprocess: the sum of the parts' results."""
    return sum(part.result for part in parts)


def pool_span(log_path, label, seconds=0.0, go_path=None):
    """Append "start label", optionally block until ``go_path`` exists, take
    ``seconds``, append "end label"; return the label."""
    _append_with_o_append(log_path, f"start {label}")
    if go_path is not None:
        wait_for_file(go_path, timeout=60)
    if seconds:
        import time

        time.sleep(seconds)
    _append_with_o_append(log_path, f"end {label}")
    return label


def pool_part_waiting_for_sibling(gate_dir, tag, index, count=2, hold=0.02):
    """Say "started" (a file ``tag-index`` in ``gate_dir``), block until all
    ``count`` siblings of ``tag`` have started, then take ``hold`` seconds, so
    that the siblings end together.  ``hold`` keeps the pool from taking these
    for quick jobs it could send ahead to one process.  Returns [tag, index]."""
    import time

    open(os.path.join(gate_dir, f"{tag}-{index}"), "w").close()
    deadline = time.monotonic() + 30
    while not all(os.path.exists(os.path.join(gate_dir, f"{tag}-{k}"))
                  for k in range(count)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the siblings of {tag}-{index} never started")
        time.sleep(0.001)
    time.sleep(hold)
    return [tag, index]


def pool_pid_then_wait(marker_dir, label, go_path):
    """Write this process's pid to ``marker_dir/label-ATTEMPT`` (atomically),
    then block until ``go_path`` exists; return [attempt, pid]."""
    attempt = litejobs.current_job().attempt
    marker = os.path.join(marker_dir, f"{label}-{attempt}")
    with open(marker + ".tmp", "w") as handle:
        handle.write(str(os.getpid()))
    os.rename(marker + ".tmp", marker)
    wait_for_file(go_path, timeout=60)
    return [attempt, os.getpid()]


def pool_describe_callback_value(log_path, tag, value):
    """A callback: append "tag" to ``log_path`` and return what it received,
    ["result", value] or ["failure", status, error_type, parent id]."""
    _append_with_o_append(log_path, tag)
    if isinstance(value, litejobs.Failure):
        return ["failure", value.status, value.error_type, value.job.id]
    return ["result", value]


def pool_return_gated_job(go_path):
    """Return an unbound Job that blocks until ``go_path`` exists."""
    return litejobs.Job(wait_for_file, go_path)


def pool_return_parallel_of_adds(count):
    """Return a Composite: a parallel of add(i, i) for i < count."""
    return litejobs.parallel(*[litejobs.Job(add, i, i) for i in range(count)])


def pool_put_and_return_add(a, b):
    """Put add(a, b) through current_queue() and return that (bound) Job."""
    return litejobs.current_queue().put(litejobs.Job(add, a, b))


def pool_return_job_returning_job(a, b):
    """Return a Job that itself returns a Job: two levels of waiting."""
    return litejobs.Job(pool_return_add_job, a, b)


def pool_return_add_job(a, b):
    return litejobs.Job(add, a, b)


# -- composition: parallel/serial, callbacks, jobs that return jobs -----------


def describe_parts(*parts):
    """A postprocess: what it can read of each finished part, in order."""
    return [(part.id, part.status, part.result, part.error_type) for part in parts]


def last_error_lines(*parts):
    """A postprocess: the last line of each part's error (None if it has none)."""
    return [part.error.strip().splitlines()[-1] if part.error else None for part in parts]


def tagged_results(tag, *parts):
    """A postprocess with a bound argument, which comes before the parts."""
    return tag, [part.result for part in parts]


def double(value):
    return 2 * value


def describe_outcome(value):
    """A callback: what it received, as plain data."""
    if isinstance(value, litejobs.Failure):
        return {"failure": True, "status": value.status, "error_type": value.error_type,
                "error": value.error, "job_id": value.job.id}
    return {"failure": False, "result": value}


def parent_status():
    """The status of this job's parent while this job runs."""
    return litejobs.current_job().parent().refresh().status


def cancel_parent():
    """A part that cancels the composite it belongs to, then returns."""
    litejobs.current_job().parent().cancel()
    return "finished anyway"


def return_job(a, b):
    return litejobs.Job(add, a, b)


def return_failing_job(message):
    return litejobs.Job(fail, message)


def return_composite():
    return litejobs.parallel(litejobs.Job(add, 1, 2), litejobs.Job(add, 3, 4))


def return_existing_job(job_id):
    return litejobs.current_queue().get(job_id)


def current_queue_path():
    return litejobs.current_queue().path


def add_parts_later(first, second):
    """A postprocess that returns a Job adding its two parts' results."""
    return litejobs.Job(add, first.result, second.result)


def pool_postprocess_pid_then_wait(marker_dir, go_path, *parts):
    """A postprocess that writes its pid to ``marker_dir/post-ATTEMPT``, then
    blocks until ``go_path`` exists; returns [attempt, statuses, results]."""
    attempt = litejobs.current_job().attempt
    marker = os.path.join(marker_dir, f"post-{attempt}")
    with open(marker + ".tmp", "w") as handle:
        handle.write(str(os.getpid()))
    os.rename(marker + ".tmp", marker)
    wait_for_file(go_path, timeout=60)
    return [attempt, [part.status for part in parts], [part.result for part in parts]]


def return_my_parent():
    """Returns the composite it is a part of: a wait that could never end."""
    job = litejobs.current_job()
    return job.parent()


def return_my_callback():
    """Adds a callback to itself, then returns it: a wait that could never end."""
    return litejobs.current_job().add_callback(litejobs.Job(add, 1))


def return_next_sibling():
    """Returns the serial part after it, which starts only once it has ended."""
    first, second = litejobs.current_job().parent().children()[:2]
    return second


def report_progress(steps, pause=0.0, note=None):
    """Reports its progress at each of ``steps`` steps, and keeps a note in its meta."""
    job = litejobs.current_job()
    for step in range(1, steps + 1):
        if pause:
            time.sleep(pause)
        job.set_progress(step / steps, f"step {step} of {steps}")
    if note is not None:
        job.update_meta(note=note, steps=steps)
    return steps


def log_a_line(text):
    """Logs ``text`` on a logger of its own, as job code does."""
    logging.getLogger("sample_jobs.app").warning("%s", text)
    return text


# -- progress, logs and retention (tests/test_progress_and_logs.py, test_retention.py) --


def call_on_current_job(method, *args, **kwargs):
    """Call ``current_job().method(*args, **kwargs)`` (set_progress or
    update_meta); return what the job then holds."""
    job = litejobs.current_job()
    getattr(job, method)(*args, **kwargs)
    return {"progress": job.progress, "message": job.progress_message, "meta": job.meta}


def set_progress_on_another_handle():
    """set_progress on a second Job object for this job's own row, which is
    not ``current_job()``: the name of the exception it raised, or None."""
    job = litejobs.current_job()
    other = litejobs.current_queue().get(job.id)
    try:
        other.set_progress(0.5)
    except litejobs.LitejobsError as exc:
        return type(exc).__name__
    return None


def spin_progress(seconds):
    """Call set_progress in a tight loop for ``seconds``, then once more with
    1.0 and "done"; return how many calls it made."""
    job = litejobs.current_job()
    calls = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        calls += 1
        job.set_progress((calls % 1000) / 1000, f"call {calls}")
    job.set_progress(1.0, "done")
    return calls + 1


def progress_then_wait(go_path, before, meta=None, after=()):
    """Report each ``[fraction, message]`` of ``before`` and merge ``meta``
    into the job's meta, block until ``go_path`` exists, then report each of
    ``after``; return "through"."""
    job = litejobs.current_job()
    for fraction, message in before:
        job.set_progress(fraction, message)
    if meta:
        job.update_meta(**meta)
    wait_for_file(go_path, timeout=60)
    for fraction, message in after:
        job.set_progress(fraction, message)
    return "through"


def append_own_id(path):
    """Append this job's id to ``path`` (one O_APPEND write)."""
    _append_with_o_append(path, litejobs.current_job().id)


def log_step(log_path, label, gate=None):
    """Append ``label`` to ``log_path``; then raise if ``gate`` is given and
    does not exist yet; return ``label``."""
    _append_with_o_append(log_path, label)
    if gate is not None and not os.path.exists(gate):
        raise RuntimeError(f"{label}: {os.path.basename(gate)} is not there yet")
    return label


def log_post(log_path, *parts):
    """A postprocess: append "post" to ``log_path``; raise unless every part
    completed; return the parts' results."""
    _append_with_o_append(log_path, "post")
    statuses = [part.status for part in parts]
    if any(status != litejobs.COMPLETED for status in statuses):
        raise RuntimeError(f"the parts ended {statuses}")
    return [part.result for part in parts]


def update_meta_twice(first, second):
    """Two update_meta calls: ``first`` then ``second`` (dicts) merged in."""
    job = litejobs.current_job()
    job.update_meta(**first)
    job.update_meta(**second)
    return job.meta


def chain(length):
    """Returns a job that returns a job ... ``length`` deep, each waiting on the next."""
    if length <= 0:
        return "bottom"
    return litejobs.Job(chain, length - 1)


def log_with_unpicklable_extra():
    import threading
    logging.getLogger("sample_jobs.app").warning("odd extra", extra={"ctx": [threading.Lock()]})
    return "logged"


def multiply(first, second):
    return first * second


async def fetch_async(url):
    return url


async def stream_async(url):
    yield url


class AsyncCallable:
    async def __call__(self):
        return "called"


def count_runs_then_kill(path, deaths, *outcome):
    """Append a line to ``path`` at each run; kill this process the first
    ``deaths`` runs, then return how many runs there were.  (As a callback,
    it is given the outcome of its job too.)"""
    with open(path, "a") as handle:
        handle.write("run\n")
    with open(path) as handle:
        runs = len(handle.read().splitlines())
    if runs <= deaths:
        os._exit(1)
    return runs


def stop_when_asked(started_path, timeout=60):
    """Say it started, then work in small steps until asked to stop; return
    how it ended, and put the steps done in its meta."""
    job = litejobs.current_job()
    with open(started_path, "w") as handle:
        handle.write(str(os.getpid()))
    deadline = time.monotonic() + timeout
    steps = 0
    while not job.stop_requested:
        if time.monotonic() > deadline:
            return "never asked"
        time.sleep(0.02)
        steps += 1
    job.update_meta(steps=steps)
    return "stopped early"


def ignore_stop_requests(started_path, timeout=60):
    """Say it started, then keep working whatever is asked."""
    with open(started_path, "w") as handle:
        handle.write(str(os.getpid()))
    time.sleep(timeout)
    return "ran to the end"


def wait_for_meta(key, timeout=60):
    """Set ``waiting`` in its meta, then wait until someone else sets ``key``
    in it; return the meta it saw."""
    job = litejobs.current_job()
    job.update_meta(waiting=True)
    deadline = time.monotonic() + timeout
    while key not in job.meta:
        if time.monotonic() > deadline:
            return {"timed out": True}
        time.sleep(0.02)
    return job.meta


@litejobs.job(queue="pdf", priority=5, retry=litejobs.Retry(attempts=4, delay=0),
              timeout=60, max_interruptions=7)
def render_with_defaults(order):
    return f"rendered {order}"


@litejobs.job
def plain_decorated(value):
    return value


@litejobs.job(queue="mail", max_interruptions=2)
def notify_with_defaults(outcome):
    return f"notified: {outcome}"


def count_runs_then_wait(path, go_path, timeout=120):
    """Append a line to ``path`` at each run, then wait until ``go_path``
    exists; return how many runs there were."""
    with open(path, "a") as handle:
        handle.write(f"{os.getpid()}\n")
    deadline = time.monotonic() + timeout
    while not os.path.exists(go_path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{go_path} never appeared")
        time.sleep(0.01)
    with open(path) as handle:
        return len(handle.read().splitlines())


def log_flood(seconds):
    """Log as fast as it can for ``seconds``; return how many records."""
    log = logging.getLogger("sample_jobs.flood")
    deadline = time.monotonic() + seconds
    count = 0
    while time.monotonic() < deadline:
        log.warning("flood %d", count)
        count += 1
    return count


def raise_unstorable():
    """Fail with a message SQLite cannot store as it is: a lone surrogate,
    as a file name undecodable in the locale gives."""
    raise ValueError("cannot read /data/caf\udce9.csv")


def nested_parallel(depth, leaf=None):
    """A parallel nested ``depth`` deep, around one ``leaf`` job."""
    item = leaf if leaf is not None else litejobs.Job(add, 1, 1)
    for _ in range(depth):
        item = litejobs.parallel(item)
    return item


def return_nested_parallel(depth):
    return nested_parallel(depth)


def fail_unless_exists(path):
    """Fail until ``path`` exists (a fix deployed, say); then return "found"."""
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    return "found"


def my_tick():
    """The tick a schedule put this job for, from its meta."""
    return litejobs.current_job().meta["tick"]


def quota_span(log_path, label, seconds=0.0):
    """Append "start label pid", take ``seconds``, append "end label pid":
    what a run under a quota did, and in which process."""
    import time

    _append_with_o_append(log_path, f"start {label} {os.getpid()}")
    time.sleep(seconds)
    _append_with_o_append(log_path, f"end {label} {os.getpid()}")
    return label


async def async_sleep(seconds, value=None):
    await asyncio.sleep(seconds)
    return value


async def async_whoami():
    job = litejobs.current_job()
    await asyncio.sleep(0.01)
    return (job.id, litejobs.current_job().id, os.getpid())


async def async_fail(message):
    await asyncio.sleep(0)
    raise ValueError(message)


async def async_block(seconds):
    time.sleep(seconds)  # blocks the event loop: a pool logs it
    return "blocked"


async def async_span(seconds):
    """(start, end, pid) of a run that awaits ``seconds``."""
    start = time.time()
    await asyncio.sleep(seconds)
    return start, time.time(), os.getpid()


async def async_sleep_once(value, seconds):
    """Await ``seconds`` on the first run (a test kills the process meanwhile);
    return ``value`` at once on the next."""
    if litejobs.current_job().attempts == 1:
        await asyncio.sleep(seconds * 60)
    return value


async def async_describe(value):
    return f"got {value}"


def thread_name():
    import threading
    return threading.current_thread().name


def thread_span(seconds):
    """(start, end, pid, thread) of a run that sleeps ``seconds`` in its thread."""
    import threading
    start = time.time()
    time.sleep(seconds)
    return start, time.time(), os.getpid(), threading.current_thread().name


def sleep_first_attempt(seconds, value):
    """Sleep ``seconds`` on the first run (a test kills the process
    meanwhile); return ``value`` at once on the next."""
    if litejobs.current_job().attempts == 1:
        time.sleep(seconds)
    return value


async def async_progress(steps):
    """Report progress and meta from an async job, as a synchronous one does."""
    job = litejobs.current_job()
    for step in range(1, steps + 1):
        await asyncio.sleep(0.01)
        job.set_progress(step / steps, f"step {step} of {steps}")
    job.update_meta(steps=steps)
    return steps


async def async_put_later(seconds):
    """Put a job due ``seconds`` from now, on the clock the job runs on."""
    await asyncio.sleep(0)
    return litejobs.current_queue().put(litejobs.Job(add, 1, 1), begin_after=seconds).id
