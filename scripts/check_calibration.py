"""make bench-check's calibration, from the check runs it saved (``.benchmarks/*/*_check.json``,
oldest first): what one run against the last (pytest-benchmark's ``median:15%``) would have flagged,
what the history judgement (``mtcore bench-check``) flagged as the history filled, and each
benchmark's spread from run to run and within a run.

    for i in $(seq 10); do make bench-check; done; python scripts/check_calibration.py
"""
import glob
import itertools
import statistics
import sys
from pathlib import Path

from mtcore.perf import history
from mtcore.perf.records import load_run, median_time

paths = sorted(sys.argv[1:] or glob.glob(history.CHECK_RUNS))
runs = [load_run(p, samples=False) for p in paths]
names = sorted(set.intersection(*(set(r.benchmarks) for r in runs)))
print(len(runs), "runs,", len(names), "benchmarks in all")
fails = []
for a, b in itertools.pairwise(runs):
    ratios = {n: median_time(b.benchmarks[n]) / median_time(a.benchmarks[n]) for n in names}
    bad = [n for n, r in ratios.items() if r > 1.15]
    fails.append(len(bad))
    print(f"{Path(b.path).name} one-vs-last: failed {len(bad)} of {len(names)}, worst {max(ratios.values()):.3f}; "
          + ", ".join(f"{n.split('[')[-1][:-1]} {ratios[n]:.2f}" for n in bad))
print(f"one-vs-last compares with a failure: {sum(1 for f in fails if f)} of {len(fails)}")
for i in range(history.K, len(runs)):
    c = history.check(paths[: i + 1])
    lim = sorted(j.limit for j in c.judged)
    print(f"{Path(paths[i]).name} against {len(c.history)} runs: regressed {len(c.regressed)}, worst ratio "
          f"{max(j.ratio for j in c.judged):.3f}, limits {lim[0]:.2f}-{lim[-1]:.2f} (median {lim[len(lim) // 2]:.2f}), "
          f"too noisy {sum(j.too_noisy for j in c.judged)}")
print()
for n in names:  # each benchmark over all the runs
    m = [median_time(r.benchmarks[n]) for r in runs]
    base = statistics.median(m)
    iqrs = [history.within_run_iqr(r.benchmarks[n]) for r in runs]
    print(f"{n.split('::')[-1]:60} median {base * 1e3:8.2f} ms, largest deviation {100 * max(abs(x / base - 1) for x in m):5.1f}%, "
          f"range {min(m) / base:.3f}-{max(m) / base:.3f}, IQR in a run {100 * min(iqrs):.0f}-{100 * max(iqrs):.0f}%")
