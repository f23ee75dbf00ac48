"""Map and reduce: split one computation into parallel parts, then combine them.

Run it from a fresh clone with ``python examples/parallel_map_reduce.py
[DATABASE]``.  It counts the primes below a million in eight ranges, each range
a job, on a pool of two worker processes; a postprocess job adds up the counts
once every range has ended.  The answer is checked against a direct count.
"""

import math
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import litejobs  # noqa: E402

LIMIT = 1_000_000
PARTS = 8


def count_primes(low, high):
    """The map step: how many primes p have low <= p < high.

    A segmented sieve: it crosses out multiples of every number up to
    sqrt(high) inside this range only, so each part needs memory for its own
    range and nothing from the others.
    """
    candidate = bytearray([1]) * (high - low)
    for small in range(low, min(2, high)):  # 0 and 1 are not primes
        candidate[small - low] = 0
    for factor in range(2, math.isqrt(high - 1) + 1):
        first = max(factor * factor, -(-low // factor) * factor)
        candidate[first - low::factor] = bytes(len(range(first, high, factor)))
    return {"low": low, "high": high, "primes": sum(candidate), "pid": os.getpid()}


def add_up(*parts):
    """The reduce step.  It runs as a job once every part has ended, and is
    given the parts' `Job` objects in order: it reads each one's result (or
    status, if it failed) itself."""
    failed = [part for part in parts if part.status != litejobs.COMPLETED]
    if failed:
        # Raising fails the whole computation, with this text as its error.
        raise RuntimeError(f"{len(failed)} of {len(parts)} ranges failed: "
                           + ", ".join(f"job {part.id} {part.status}" for part in failed))
    return sum(part.result["primes"] for part in parts)


def count_directly(limit):
    """The plain sieve of Eratosthenes, in this process: the answer to check."""
    sieve = bytearray([0, 0]) + bytearray([1]) * (limit - 2)
    for factor in range(2, math.isqrt(limit - 1) + 1):
        if sieve[factor]:
            sieve[factor * factor::factor] = bytes(len(range(factor * factor, limit, factor)))
    return sum(sieve)


def main(argv):
    with tempfile.TemporaryDirectory() as folder:
        path = argv[1] if len(argv) > 1 else os.path.join(folder, "primes.db")
        queue = litejobs.Queue(path)
        bounds = [LIMIT * i // PARTS for i in range(PARTS + 1)]
        work = litejobs.parallel(
            *(litejobs.Job(count_primes, low, high) for low, high in zip(bounds, bounds[1:])),
            postprocess=add_up)

        with queue.worker(processes=2) as pool:
            started = time.monotonic()
            # One put stores the whole tree in one transaction: the root, its
            # eight parts (pending at once) and the postprocess to come.  The
            # options apply to every part and to the postprocess.
            root = queue.put(work, timeout=60)
            print(f"job {root.id} ({root.composite}) is {root.status} on its "
                  f"{len(root.children())} parts; pool {pool.id} runs them")
            total = root.wait(timeout=60)
            seconds = time.monotonic() - started

        parts = [child for child in root.children() if child.role == "part"]
        for part in parts:
            found = part.result
            print(f"  part {part.id}: [{found['low']:>7}, {found['high']:>7}) has "
                  f"{found['primes']:>5} primes, counted in process {found['pid']}")
        processes = sorted({part.result["pid"] for part in parts})
        print(f"parts ran in {len(processes)} worker process(es) {processes}, "
              f"not in this one ({os.getpid()})")
        print(f"primes below {LIMIT}: {total} ({seconds:.2f} s)")

        expected = count_directly(LIMIT)
        if total != expected:
            print(f"MISMATCH: the direct count is {expected}")
            return 1
        print(f"the direct count agrees: {expected}")
        print(queue.counts())
        queue.close()
    return 0


if __name__ == "__main__":  # the pool's spawned processes import this file again
    sys.exit(main(sys.argv))
