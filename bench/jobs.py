"""Job functions the benchmarks' worker pools import (``bench/`` is put on
their PYTHONPATH)."""

import time


def noop():
    """The job every drain runs."""


def started_at():
    """When the job started, on the wall clock, for pickup latency."""
    return time.time()
