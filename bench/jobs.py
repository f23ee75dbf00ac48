"""Job functions the benchmarks' worker pools import (``bench/`` is put on
their PYTHONPATH)."""

import time


def noop():
    """The job every drain runs."""


def started_at():
    """When the job started, on the wall clock, for pickup latency."""
    return time.time()


def completed_parts(*parts):
    """The postprocess of the fan-out benchmark: how many parts completed."""
    return sum(part.status == "completed" for part in parts)


def ended_after(seconds):
    """Sleep, then return when it ended, on the wall clock, for wait latency."""
    time.sleep(seconds)
    return time.time()


def nap(seconds):
    """An I/O-bound synchronous job: it sleeps ``seconds`` in its thread."""
    time.sleep(seconds)


async def async_nap(seconds):
    """An I/O-bound async job: it awaits ``seconds``."""
    import asyncio
    await asyncio.sleep(seconds)


async def async_ended_after(seconds):
    """Await, then return when it ended, on the wall clock, for await latency."""
    import asyncio
    await asyncio.sleep(seconds)
    return time.time()
