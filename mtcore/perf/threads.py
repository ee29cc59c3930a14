"""The CPU thread budget of a process: how many cores each framework may use, pinned.

On a CPU, thread counts move timings more than most code changes do
(docs/findings/2026-11-23-thread-budget.md). A budget of
``n`` threads pins the process to ``n`` cores (so XLA:CPU, which sizes its pool from the cores it
may run on and ignores its old ``intra_op_parallelism_threads`` flag, gets ``n`` too), gives torch
``n`` intra-op threads, and limits BLAS/OpenMP pools through threadpoolctl. Both frameworks in one
process then have the same budget, and a measurement can say which budget it had.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mtcore.errors import MTCoreError


@dataclass(frozen=True)
class ThreadBudget:
    """What a process may use. ``pinned``: held to ``cores`` by affinity and explicit pool sizes;
    otherwise the frameworks choose for themselves on every core the process may use."""

    threads: int
    cores: tuple[int, ...]
    pinned: bool
    affinity: bool = True  # False where the OS has no affinity call (macOS): pool sizes only

    def describe(self) -> str:
        cores = ",".join(map(str, self.cores))
        plural = "s" if self.threads > 1 else ""
        if self.pinned and not self.affinity:
            return f"{self.threads} thread{plural} per framework (pool sizes only: no CPU affinity on this OS)"
        if self.pinned:
            return f"{self.threads} thread{plural} per framework, pinned to core{plural} {cores}"
        return f"whole machine: {self.threads} cores ({cores}), thread pools as the frameworks choose"

    def as_dict(self) -> dict:
        return {"threads": self.threads, "cores": list(self.cores), "pinned": self.pinned, "affinity": self.affinity}


# The cores the job may use, as its first mtcore process found them before pinning itself, and
# the cores it pinned itself to: the processes it starts (torch's ranks, bench workers) inherit its
# pinned mask, not the job's.
JOB_CORES, PINNED_TO = "MTCORE_JOB_CORES", "MTCORE_PINNED_TO"


def _cores(text: str | None) -> tuple[int, ...] | None:
    try:
        return tuple(sorted({int(c) for c in text.split(",")})) if text else None
    except ValueError:
        return None


def usable_cores() -> tuple[int, ...]:
    """The cores this job may run on: the affinity mask (a container's or ``taskset``'s, never
    ``os.cpu_count()``) its first mtcore process started with, where this process inherited the
    mask that process pinned itself to; else this process's own mask (a process started under a
    ``taskset`` of its own keeps it); all cores where the OS has no affinity call."""
    current = current_cores()
    job, pinned = _cores(os.environ.get(JOB_CORES)), _cores(os.environ.get(PINNED_TO))
    if job and pinned == current and hasattr(os, "sched_getaffinity"):
        return job
    return current


def current_cores() -> tuple[int, ...]:
    """The cores this process runs on now (its affinity mask): what a run records it had."""
    if hasattr(os, "sched_getaffinity"):
        return tuple(sorted(os.sched_getaffinity(0)))
    return tuple(range(os.cpu_count() or 1))


def share(processes: int) -> int:
    """Each of ``processes`` processes' even share of the job's cores: at least one."""
    return max(1, len(usable_cores()) // max(processes, 1))


def cores_for(slot: int, slots: int = 1, threads: int | None = None) -> tuple[int, ...]:
    """The cores process ``slot`` of ``slots`` is pinned to, the one place that decides it (the
    benches' processes, torch's ranks, a JAX process, the bench workers): ``threads`` of the job's
    cores (default: its ``share``), the ``slot``-th group of them; processes share a core only
    where the job has fewer cores than they ask for together."""
    cores = usable_cores()
    n = threads or share(slots)
    if n > len(cores):
        raise MTCoreError(f"threads: {n} asked for, but this process may use {len(cores)} core(s): {list(cores)}")
    start = slot * n % len(cores)
    return tuple(sorted(set((cores + cores)[start:start + n])))


def whole_machine() -> ThreadBudget:
    """The budget of a process left as it is: every core it may use, pools as the frameworks choose."""
    return ThreadBudget(threads=len(current_cores()), cores=current_cores(), pinned=False,
                        affinity=hasattr(os, "sched_setaffinity"))


def parse(value: str | None) -> int | None:
    """``--threads`` as given: a positive count, or ``all``/None for the whole machine."""
    if value is None or str(value).strip().lower() == "all":
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise MTCoreError(f"threads: expected a positive number of threads or 'all', got {value!r}")
    return n


def apply(threads: int | None, *, slot: int = 0, slots: int = 1) -> ThreadBudget:
    """Give this process its budget. ``threads`` None: the whole machine, the frameworks' pools as
    they choose, except that between ``slots`` processes (pytest -n) torch and BLAS pools take
    their share of the cores (no affinity: XLA keeps every core for its compiles); a number: that
    many cores, slot ``slot`` pinned to the ``slot``-th group of them, so parallel workers do not
    share a core where there are enough.

    Call it before JAX creates its CPU backend: XLA sizes its thread pool once, from the cores
    the process may use at that moment.
    """
    cores = usable_cores()
    affinity = hasattr(os, "sched_setaffinity")
    if threads is None:
        if affinity and current_cores() != cores:  # started pinned by a process of the job: all of it again
            os.sched_setaffinity(0, cores)
        _limit_pools(share(slots))
        return ThreadBudget(threads=len(cores), cores=cores, pinned=False, affinity=affinity)
    chosen = cores_for(slot, slots, threads)
    if affinity:
        os.environ.setdefault(JOB_CORES, ",".join(map(str, cores)))
        os.environ[PINNED_TO] = ",".join(map(str, chosen))
        os.sched_setaffinity(0, chosen)
    _limit_pools(threads)
    return ThreadBudget(threads=threads, cores=chosen, pinned=True, affinity=affinity)


# The pool size of the last budget given: a framework mtcore starts afterwards takes it as its
# backend module is imported (``on_import``). Importing every installed framework only to size its
# pool cost each torch rank the imports of JAX and transformers, and each JAX process torch's.
_pool_size: int | None = None


def _limit_pools(n: int) -> None:
    """Size every thread pool we know of to ``n``: BLAS/OpenMP through threadpoolctl now; each
    framework whose backend module is imported now, through its ``set_threads``, and every other
    one as mtcore imports it (``on_import``)."""
    global _pool_size
    _pool_size = n
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: numpy's BLAS is not on any timed path
        pass
    else:
        threadpool_limits(n)
    from mtcore.backend import imported_frameworks

    for started in imported_frameworks():
        started.set_threads(n)


def on_import(set_threads) -> None:
    """Called by each framework's backend module as it is imported: the budget this process was
    given before applies to that framework too."""
    if _pool_size is not None:
        set_threads(_pool_size)
