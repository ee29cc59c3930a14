"""Honest timing: device-synchronised calls, fresh compiles, GEMM peaks and peak memory.

Every timed call ends with a device sync (``block_until_ready`` / ``torch.cuda.synchronize``):
both frameworks queue work asynchronously, and timing the queueing would flatter them.
"""

from __future__ import annotations

import atexit
import functools
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any


def timed(fn: Callable[[], Any], sync: Callable[[Any], Any]) -> tuple[float, Any]:
    """Seconds for ``fn()`` including the device work it queued, and its result."""
    start = time.perf_counter()
    out = sync(fn())
    return time.perf_counter() - start, out


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


# ---- compile time ------------------------------------------------------------------------------
def jax_fresh_compile(fn: Callable, *args: Any, clear: bool = True, **jit_kwargs: Any) -> tuple[float, float, Any]:
    """(trace+lower seconds, XLA compile seconds, compiled) for a compile nothing can reuse: new
    function object, persistent cache off, in-memory caches cleared (unless ``clear`` is False)."""
    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    if clear:
        jax.clear_caches()
    fresh = jax.jit(lambda *a: fn(*a), **jit_kwargs)  # a new function object: no tracing cache hit
    start = time.perf_counter()
    lowered = fresh.lower(*args)
    traced = time.perf_counter()
    compiled = lowered.compile()
    return traced - start, time.perf_counter() - traced, compiled


def torch_fresh_compile_env() -> str:
    """Reset dynamo and point inductor at an empty cache directory, so the next
    ``torch.compile``'d call compiles from scratch. Returns the directory."""
    import torch._dynamo

    torch._dynamo.reset()
    # An empty directory is enough to make this compile fresh; the caches stay on, so later
    # compiles of the same graph in this process (not timed as compiles) may reuse its work.
    # Each is a few MB: one parent per process, removed at exit, so benches do not fill /tmp.
    cache = tempfile.mkdtemp(dir=_inductor_root())
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    return cache


@functools.cache
def _inductor_root() -> str:
    root = tempfile.mkdtemp(prefix="mtcore-inductor-")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


# ---- hardware peak -----------------------------------------------------------------------------
def gemm_peak(framework: str, device: str, dtype: str = "fp32", n: int | None = None, repeats: int = 5) -> float:
    """Best measured FLOP/s of an ``n x n @ n x n`` matmul: the ceiling MFU is measured against.

    Measured, not looked up: on a shared or throttled machine the datasheet peak is fiction.
    """
    n = n or (8192 if device != "cpu" else 1024)
    flops = 2 * n**3
    if framework == "torch":
        import torch

        dev = torch.device("cuda" if device == "gpu" else "cpu")
        dt = torch.bfloat16 if dtype == "bf16" else torch.float32
        a = torch.randn(n, n, device=dev, dtype=dt)
        b = torch.randn(n, n, device=dev, dtype=dt)
        sync = (lambda x: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda x: x)
        matmul = lambda: a @ b  # noqa: E731
    else:
        import jax
        import jax.numpy as jnp

        dt = jnp.bfloat16 if dtype == "bf16" else jnp.float32
        dev = jax.devices(device)[0]
        keys = jax.random.split(jax.random.key(0))
        a = jax.device_put(jax.random.normal(keys[0], (n, n), dt), dev)
        b = jax.device_put(jax.random.normal(keys[1], (n, n), dt), dev)
        # Full fp32 precision: XLA would otherwise use TF32 on GPUs for fp32 matmuls.
        f = jax.jit(lambda x, y: jnp.matmul(x, y, precision="highest" if dtype == "fp32" else None))
        sync = jax.block_until_ready
        matmul = lambda: f(a, b)  # noqa: E731
    sync(matmul())  # warm-up (and compile)
    best = min(timed(matmul, sync)[0] for _ in range(repeats))
    return flops / best


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


def torch_peak_memory(reset: bool = False) -> int | None:
    """Peak CUDA allocator bytes since the last reset, or None off CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    if reset:
        torch.cuda.reset_peak_memory_stats()
        return None
    return int(torch.cuda.max_memory_allocated())


def jax_compiled_memory(compiled: Any) -> int | None:
    """XLA's own account of a compiled program's memory: arguments + outputs + temporaries,
    less what donation lets outputs reuse."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        return None
    if m is None:
        return None
    return int(
        m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    )
