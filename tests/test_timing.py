"""Paired-ratio statistics: the numbers behind every "X is N times faster" line."""

from __future__ import annotations

import mmap
import os
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mtcore.perf.timing import median_ci_ranks, ratio_stats


@pytest.mark.parametrize("n, ranks", [(1, (0, 0)), (5, (0, 4)), (6, (0, 5)), (20, (5, 14)), (60, (21, 38))])
def test_median_ci_ranks_match_the_binomial_table(n, ranks):
    # Textbook values: for n = 20 the 95% interval of the median is [x(6), x(15)] (1-based).
    assert median_ci_ranks(n) == ranks


@given(st.integers(1, 400), st.sampled_from([0.9, 0.95, 0.99]))
def test_median_ci_covers_at_least_its_confidence(n, confidence):
    from math import comb

    lo, hi = median_ci_ranks(n, confidence)
    assert 0 <= lo <= hi <= n - 1 and lo == n - 1 - hi
    # P(x(lo) <= median <= x(hi)) = 1 - 2 P(Binomial(n, 1/2) <= lo)
    tail = sum(comb(n, k) for k in range(lo + 1)) / 2**n
    assert 1 - 2 * tail >= confidence or (lo, hi) == (0, n - 1)


def test_ratio_stats_of_known_pairs():
    slow = np.array([2.0, 2.2, 1.8, 2.0, 4.0])  # one outlier pair, as a hiccup gives
    fast = np.array([1.0, 1.0, 1.0, 1.0, 1.0])
    s = ratio_stats(slow, fast)
    assert s["median"] == 2.0 and s["min"] == 1.8 and s["max"] == 4.0 and s["n"] == 5
    assert s["q1"] <= s["median"] <= s["q3"]
    assert (s["ci_low"], s["ci_high"]) == (1.8, 4.0)  # five pairs cannot narrow a 95% interval


def test_ratio_stats_cancels_drift_that_hits_both_sides():
    # The machine slows down 40% halfway through; each pair ran back to back, so ratios hold.
    speed = np.r_[np.ones(30), np.full(30, 1.4)]
    s = ratio_stats(1.25 * speed, speed)
    assert s["median"] == pytest.approx(1.25) and s["max"] - s["min"] < 1e-12


def test_ratio_stats_rejects_no_pairs():
    with pytest.raises(ValueError, match="no pairs"):
        ratio_stats([], [])



def test_fresh_inductor_caches_are_removed_when_the_process_exits(tmp_path):
    # Each fresh torch.compile gets an empty cache directory (a few MB once used); a bench
    # session makes dozens. They must not outlive the process.
    import subprocess
    import sys

    script = (
        "import os, sys\n"
        "from mtcore.torch.backend import fresh_compile_env\n"
        "a, b = fresh_compile_env(), fresh_compile_env()\n"
        "assert a != b and not os.listdir(a) and os.environ['TORCHINDUCTOR_CACHE_DIR'] == b\n"
        "open(os.path.join(b, 'kernel.py'), 'w').close()\n"
        "print(os.path.dirname(a), os.path.dirname(b))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TMPDIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    parents = set(out.stdout.split())
    assert len(parents) == 1 and parents.pop().startswith(str(tmp_path))
    # (torch keeps its own default cache, torchinductor_USER, beside: not ours to remove)
    assert list(tmp_path.glob("mtcore-*")) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/clear_refs and VmHWM are Linux's")
def test_host_memory_counts_what_the_work_made_resident():
    from mtcore.perf.timing import HostMemory

    before = HostMemory()
    # 64 MB mapped and written: resident. Mapped here rather than allocated, so the heap's history
    # (a freed chunk of this size already resident, which the tests before may leave) cannot serve it.
    block = mmap.mmap(-1, 64 << 20)
    chunk = b"\1" * (1 << 20)
    for offset in range(0, 64 << 20, 1 << 20):
        block[offset:offset + (1 << 20)] = chunk
    block.close()  # handed back: the peak, not the end, is what counts
    grown = before.growth()
    assert grown is not None and 60 << 20 <= grown < 200 << 20, grown
    assert HostMemory().growth() < 16 << 20  # a fresh start forgets the earlier peak
