"""Module-level job functions shared by the tests (jobs are stored by name)."""

import os

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
