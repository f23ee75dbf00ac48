"""Job functions and hostile payloads for test_security.py and test_hostile.py.

Worker processes import the job functions here by name, so this module is
importable from the tests folder.  The payload builders make pickles a
runner must never load: each would create a marker file if it were loaded.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import signal
import subprocess
import sys
import types

import litejobs


# -- jobs --------------------------------------------------------------------------------


def pid():
    return os.getpid()


def touch(path, text="done"):
    """Write ``text`` to ``path`` (a job that leaves a visible trace); return it."""
    with open(path, "w") as handle:
        handle.write(text)
    return text


def allocate(megabytes, chunk_megabytes=16):
    """Take ``megabytes`` of memory, in chunks, each touched; return how much."""
    held = []
    for _ in range(0, megabytes, chunk_megabytes):
        held.append(bytearray(chunk_megabytes * 2 ** 20))
    return sum(map(len, held))


def allocate_at_once(megabytes):
    """Ask for ``megabytes`` in one allocation; return how much."""
    return len(bytearray(megabytes * 2 ** 20))


def sized_result(size):
    """A result that pickles to a little more than ``size`` bytes."""
    return b"x" * size


def return_job_with_argument_of(size):
    """Return a job (to wait for) whose call pickles to more than ``size`` bytes."""
    return litejobs.Job(sized_result, b"y" * size)


def import_by_name(name):
    """Import module ``name`` in the process running the job; return its name."""
    importlib.import_module(name)
    return name


def identity(value):
    return value


def describe(*args, **kwargs):
    """What a callback or a job was given, as plain text."""
    return repr((args, kwargs))


def result_of(job):
    """The result of ``job``, a `litejobs.Job` given as an argument."""
    return job.refresh().result


# -- hostile pickles ----------------------------------------------------------------------


class OpenMarker:
    """Unpickled, it opens (so creates) ``marker`` for writing."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


class SystemMarker:
    """Unpickled, it runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class HugeSet:
    """Unpickled for real, it builds a set of ``count`` integers; the pickle
    itself takes a few dozen bytes."""

    def __init__(self, count):
        self.count = count

    def __reduce__(self):
        return set, (range(self.count),)


class HugeBytes:
    """Unpickled for real, it allocates a bytearray of ``size`` bytes."""

    def __init__(self, size):
        self.size = size

    def __reduce__(self):
        return bytearray, (self.size,)


def call_pickle(*args, **kwargs):
    """The payload litejobs stores for a call by name with these arguments."""
    return pickle.dumps((None, args, kwargs), protocol=5)


def shared_nest(depth=40):
    """A list holding itself twice, nested ``depth`` levels, each level
    holding the one below twice: tiny as a pickle (the memo shares every
    level), 2 ** depth leaves if walked naively."""
    level = []
    level.append(level)
    level.append(level)
    for _ in range(depth):
        level = [level, level]
    return level


def write_marker_module(directory, name, marker):
    """Write module ``name`` into ``directory``: importing it creates
    ``marker``.  It has a function ``run`` and a class ``Thing``."""
    path = os.path.join(directory, f"{name}.py")
    with open(path, "w") as handle:
        handle.write(
            f"with open({str(marker)!r}, 'w') as _handle:\n"
            f"    _handle.write('imported')\n"
            f"\n"
            f"def run(*args, **kwargs):\n"
            f"    return 'ran'\n"
            f"\n"
            f"class Thing:\n"
            f"    def __init__(self, value):\n"
            f"        self.value = value\n")
    return path


def foreign_call_pickle(module_name, value):
    """The payload of a call whose one argument is ``module_name.Thing(value)``,
    pickled without importing that module (which would run its code here)."""
    module = types.ModuleType(module_name)

    class Thing:
        def __init__(self, value):
            self.value = value

    Thing.__module__, Thing.__qualname__ = module_name, "Thing"
    module.Thing = Thing
    saved = sys.modules.get(module_name)
    sys.modules[module_name] = module
    try:
        return call_pickle(Thing(value))
    finally:
        if saved is None:
            del sys.modules[module_name]
        else:
            sys.modules[module_name] = saved


# -- processes: ``python -m litejobs`` as an operator runs it --------------------------

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS_DIR)


def cli_env(*extra_paths, **variables):
    """The environment for a ``python -m litejobs`` process: the tests folder
    and the repository root importable (with ``extra_paths`` first), no
    ``LITEJOBS_SECRET`` unless given in ``variables``."""
    env = {key: value for key, value in os.environ.items() if key != "LITEJOBS_SECRET"}
    paths = [*map(str, extra_paths), TESTS_DIR, ROOT]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(variables)
    return env


def run_cli(*args, cwd=None, env=None, timeout=60, preexec_fn=None):
    """Run ``python -m litejobs *args`` to the end; return the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "litejobs", *map(str, args)], cwd=cwd,
                          env=cli_env() if env is None else env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=preexec_fn)
