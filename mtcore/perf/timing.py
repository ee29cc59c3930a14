"""Honest timing: device-synchronised calls, paired-ratio statistics, the GEMM peak, host memory.

Every timed call ends with a device sync (``block_until_ready`` / ``torch.cuda.synchronize``):
both frameworks queue work asynchronously, and timing the queueing would flatter them.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from typing import Any


def timed(fn: Callable[[], Any], sync: Callable[[Any], Any]) -> tuple[float, Any]:
    """Seconds for ``fn()`` including the device work it queued, and its result."""
    start = time.perf_counter()
    out = sync(fn())
    return time.perf_counter() - start, out


def call_seconds(fn: Callable[[], Any], calls: int, warmup: int = 0) -> list[float]:
    """Seconds of each of ``calls`` calls of ``fn`` (which waits for its own work), after ``warmup``
    untimed ones: the collective probes' and the bench workers' repeated calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def ratio_stats(numerators, denominators, confidence: float = 0.95) -> dict[str, float]:
    """Paired ratios ``numerators[i] / denominators[i]``: their median, quartiles, extremes and a
    distribution-free confidence interval of the median (order statistics, so no normality is
    assumed). The pairs were measured back to back, so drift between pairs cancels out."""
    import numpy as np

    ratios = np.sort(np.asarray(numerators, np.float64) / np.asarray(denominators, np.float64))
    n = len(ratios)
    if n == 0:
        raise ValueError("ratio_stats: no pairs")
    lo, hi = median_ci_ranks(n, confidence)
    q1, median, q3 = np.quantile(ratios, [0.25, 0.5, 0.75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3), "min": float(ratios[0]),
            "max": float(ratios[-1]), "ci_low": float(ratios[lo]), "ci_high": float(ratios[hi]), "n": n,
            "confidence": confidence}


def median_ci_ranks(n: int, confidence: float = 0.95) -> tuple[int, int]:
    """0-based ranks (lo, hi) of sorted samples that bracket the median with at least
    ``confidence``: the number of samples below the median is Binomial(n, 1/2). With too few
    samples for that confidence, the whole range."""
    from math import comb

    tail = (1 - confidence) / 2
    cdf, k = 0.0, -1
    while k + 1 < n:  # the largest k with P(X <= k) <= tail
        p = comb(n, k + 1) / 2**n
        if cdf + p > tail:
            break
        cdf += p
        k += 1
    if k < 0:
        return 0, n - 1
    return k, n - 1 - k


# ---- hardware peak -----------------------------------------------------------------------------
def peak_flops(matmul: Callable[[], Any], sync: Callable[[Any], Any], n: int, repeats: int = 5) -> float:
    """Best measured FLOP/s of ``matmul()``, an ``n x n @ n x n`` product (each framework's
    ``gemm_peak`` builds it): the ceiling MFU is measured against. Measured, not looked up: on a
    shared or throttled machine the datasheet peak is fiction."""
    sync(matmul())  # warm-up (and compile)
    best = min(timed(matmul, sync)[0] for _ in range(repeats))
    return 2 * n**3 / best


# ---- memory ------------------------------------------------------------------------------------
def process_max_rss_bytes() -> int:
    """This process's peak resident memory so far (a high-water mark: it never goes down)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


class HostMemory:
    """What a stretch of work made resident in this process: the resident-set peak since this
    object was made, minus the resident set then. Linux only (``/proc/self/clear_refs`` resets the
    peak, ``VmHWM`` reads it); elsewhere ``growth()`` is None. Not deterministic: allocators keep
    freed memory, so it says what the work held, not what it needs."""

    def __init__(self) -> None:
        self.start = _status_bytes("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak resident set (VmHWM) to the current one
            self.reset = True
        except OSError:
            self.reset = False

    def growth(self) -> int | None:
        peak = _status_bytes("VmHWM")
        if not self.reset or peak is None or self.start is None:
            return None
        return max(peak - self.start, 0)


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return None
