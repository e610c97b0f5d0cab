"""How many CPU threads this process should compute with.

Ray gives each worker and actor ``OMP_NUM_THREADS`` equal to the CPUs it reserved; an admin
may set it too. Using every CPU of the machine instead (the affinity mask) made two 1-CPU
Ray workers run two threads each on a 2-core machine, oversubscribed (measured by
benchmarks/ray_scaling.py), and would do worse on a large node shared by many workers.
"""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """``OMP_NUM_THREADS`` when set to a positive integer, else the CPUs this process may run on."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        allowed = os.cpu_count() or 1
    try:
        given = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return allowed
    return max(1, min(given, allowed)) if given > 0 else allowed
