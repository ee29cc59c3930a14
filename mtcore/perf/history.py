"""The benchmarks' history over commits, per hardware fingerprint: runs stored as
``HISTORY/<fingerprint id>/<commit>.json`` (the ``bench-history`` branch), plotted per bench group,
the latest run checked for drift against the rolling median of the ones before it; and the
export github-action-benchmark charts."""

from __future__ import annotations

import re
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path

from mtcore.perf.records import BadRuns, Run, as_dict, fingerprint_id, finite, load_run, median_time
from mtcore.perf.regression import CostJudgement, costs_markdown, judge_costs

DRIFT = 0.15  # the latest median against the rolling median of the last WINDOW runs
WINDOW = 20
BEFORE_LATEST = 3  # runs before the latest, at least, that a drift is judged against


def store(run_path: str | Path, history: str | Path, commit: str | None = None) -> Path:
    """Copy a run into ``HISTORY/<fingerprint id>/<commit>.json``."""
    run = load_run(run_path)
    commit = commit or run.commit_info.get("id")
    if not commit or not re.fullmatch(r"[0-9a-fA-F]{7,64}", str(commit)):
        raise BadRuns(f"{run_path}: no commit id in its commit_info (run inside a git checkout, or give --commit)")
    dest = Path(history) / fingerprint_id(run.fingerprint) / f"{commit}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_path, dest)
    return dest


def load_history(history: str | Path) -> dict[str, list[Run]]:
    """{fingerprint id: runs oldest first}; a file that cannot be read is BadRuns."""
    history = Path(history)
    if not history.is_dir():
        raise BadRuns(f"{history}: no such directory")
    out = {}
    for fp_dir in sorted(p for p in history.iterdir() if p.is_dir() and not p.name.startswith(".")):
        runs = [load_run(p, samples=False) for p in fp_dir.glob("*.json")]  # medians are enough
        if runs:
            out[fp_dir.name] = sorted(runs, key=lambda r: (r.commit_info.get("time") or r.datetime, r.datetime))
    return out


# The band a benchmark's history allows it: this many times the largest deviation of one run's
# median from the history's median. With 3 to 20 runs a standard deviation is a guess; the largest
# deviation is what this machine has shown, and the factor is the margin for what it has not yet.
BAND = 2.0


@dataclass
class Judged:
    """One benchmark's latest median against the medians of the runs before it, on one machine."""

    fingerprint: str
    benchmark: str
    latest: float
    baseline: float  # the median of the history's medians
    runs: int  # history runs that hold this benchmark
    spread: float  # the largest |median / baseline - 1| among them: run-to-run
    iqr: float | None  # the latest run's IQR over its median: within the run
    threshold: float

    @property
    def ratio(self) -> float:
        return self.latest / self.baseline

    @property
    def limit(self) -> float:
        """The ratio past which it regressed: past both the threshold and the history's band."""
        return 1 + max(self.threshold, BAND * self.spread)

    @property
    def regressed(self) -> bool:
        return self.ratio > self.limit

    @property
    def too_noisy(self) -> bool:
        """Whether this machine's noise hides the threshold: the history's band, or the rounds'
        IQR within the run, is wider than it."""
        return BAND * self.spread > self.threshold or (self.iqr or 0.0) > self.threshold


def within_run_iqr(entry: dict) -> float | None:
    """A run's IQR of one benchmark's rounds, over their median."""
    stats = entry["stats"]
    data = stats.get("data")
    if data and len(data) >= 4:
        q1, _, q3 = statistics.quantiles(data, n=4)
        return (q3 - q1) / statistics.median(data)
    iqr, median = stats.get("iqr"), stats.get("median")
    return iqr / median if finite(iqr) and finite(median) and median > 0 else None


def judge(latest: Run, previous: list[Run], fp_id: str, threshold: float = DRIFT,
          min_runs: int = BEFORE_LATEST) -> list[Judged]:
    """Every benchmark of ``latest`` that at least ``min_runs`` of ``previous`` (the same machine,
    oldest first) also ran, judged against their medians (``Judged``): mtcore bench-history's
    drift and make bench-check's verdict both come from here."""
    out = []
    for name, entry in latest.benchmarks.items():
        before = [median_time(r.benchmarks[name]) for r in previous if name in r.benchmarks]
        if len(before) < min_runs:
            continue
        baseline = statistics.median(before)
        spread = max(abs(m / baseline - 1) for m in before)
        out.append(Judged(fp_id, name, median_time(entry), baseline, len(before), spread, within_run_iqr(entry),
                          threshold))
    return out


def drift(runs: list[Run], fp_id: str, window: int = WINDOW, threshold: float = DRIFT) -> list[Judged]:
    """Benchmarks whose latest median step time is past both ``1 + threshold`` and the band of the
    previous ``window`` runs (at least ``BEFORE_LATEST`` of them) on the same fingerprint."""
    if len(runs) <= BEFORE_LATEST:
        return []
    return [j for j in judge(runs[-1], runs[-1 - window:-1], fp_id, threshold) if j.regressed]


# ---- make bench-check: a run against this machine's own history ----------------------------------
CHECK_RUNS = ".benchmarks/*/*_check.json"  # where make bench-check saves (--benchmark-save=check)
K = 3  # saved runs before the latest, at least, before it is judged


@dataclass
class Check:
    latest: Run
    history: list[Run]  # the same fingerprint and thread budget, oldest first, at most ``window``
    judged: list[Judged]
    k: int
    threshold: float
    costs: CostJudgement  # the latest's costs against the last earlier run's that holds them

    @property
    def enough(self) -> bool:
        return len(self.history) >= self.k

    @property
    def regressed(self) -> list[Judged]:
        return [j for j in self.judged if j.regressed]

    @property
    def failed(self) -> bool:
        """A median past its band, or a step that moves or a device that holds more."""
        return bool(self.regressed or self.costs.regressed)


def check(paths: list[str | Path], k: int = K, window: int = WINDOW, threshold: float = DRIFT) -> Check:
    """The newest of ``paths`` judged against the ``window`` saved runs before it of the same
    hardware fingerprint and thread budget (``judge``); other machines' runs are never used."""
    if k < 1 or window < k:
        raise BadRuns(f"--k {k} must be at least 1 and at most --window {window}")
    runs = sorted((load_run(p, samples=False) for p in paths), key=lambda r: (r.datetime, str(r.path)))
    if not runs:
        raise BadRuns(f"no saved runs to check (make bench-check saves them as {CHECK_RUNS})")
    latest = runs[-1]
    same = [r for r in runs[:-1] if r.fingerprint == latest.fingerprint and r.threads == latest.threads][-window:]
    judged = judge(latest, same, fingerprint_id(latest.fingerprint), threshold, min_runs=k) if len(same) >= k else []
    # Exact, so one earlier run is enough: the last of this machine's that holds each case's costs.
    earlier = {case: r.costs for r in same for case in r.costs}  # the latest run holding each case wins
    previous = {case: costs[case] for case, costs in earlier.items() if case in latest.costs}
    costs = judge_costs([previous], [{c: latest.costs[c] for c in previous}])  # nothing held: nothing judged
    return Check(latest, same, judged, k, threshold, costs)


def check_report(c: Check) -> str:
    """What make bench-check prints: the verdict per benchmark, and what this machine can see."""
    head = (f"{c.latest.path}: {len(c.latest.benchmarks)} benchmarks on {fingerprint_id(c.latest.fingerprint)}, "
            f"threads {c.latest.threads}")
    costs = costs_markdown(c.costs, "last earlier run", "this run")
    if not c.enough:
        return "\n".join([f"{head}\nnot enough history on this machine to judge the times ({len(c.history)} of {c.k} "
                          "saved runs of this hardware and thread budget before this one); saved, so the next runs "
                          "build it", *costs])
    pct = f"{100 * c.threshold:g}%"
    lines = [head, f"judged against the median of the last {len(c.history)} saved runs of this machine: a benchmark "
             f"regresses past both +{pct} and {BAND:g}x the largest run-to-run deviation its history shows", "",
             "| benchmark | median ms | history median ms (runs) | ratio | run-to-run spread | IQR in run | regresses past | verdict |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for j in sorted(c.judged, key=lambda j: j.benchmark):
        iqr = "-" if j.iqr is None else f"{100 * j.iqr:.0f}%"
        verdict = "**REGRESSED**" if j.regressed else "faster" if j.ratio < 1 / j.limit else "ok"
        lines.append(f"| {j.benchmark} | {j.latest * 1e3:.2f} | {j.baseline * 1e3:.2f} ({j.runs}) | {j.ratio:.3f} | "
                     f"{100 * j.spread:.0f}% | {iqr} | {j.limit:.2f}x | {verdict} |")
    noisy = [j for j in c.judged if j.too_noisy]
    if noisy:
        lines.append("")
    for j in sorted(noisy, key=lambda j: j.benchmark):
        why = [f"run-to-run {100 * j.spread:.0f}%"] * (BAND * j.spread > c.threshold) + \
              [f"IQR {100 * j.iqr:.0f}%"] * ((j.iqr or 0) > c.threshold)
        lines.append(f"too noisy on this machine to gate at {pct}: {j.benchmark} ({', '.join(why)}); it can see "
                     f"only slowdowns past {j.limit:.2f}x here (make bench-gate pairs base and head instead)")
    unjudged = sorted(set(c.latest.benchmarks) - {j.benchmark for j in c.judged})
    if unjudged:
        lines += ["", f"not judged (fewer than {c.k} earlier runs hold them): {', '.join(unjudged)}"]
    seen = sorted(j.limit for j in c.judged)
    if seen:
        lines += ["", f"the smallest slowdown this machine can see: {seen[0]:.2f}x (median benchmark {seen[len(seen) // 2]:.2f}x, "
                  f"largest {seen[-1]:.2f}x); {len(c.regressed)} regressed"]
    return "\n".join(lines + costs)


def short_commit(run: Run) -> str:
    return str(run.commit_info.get("id") or Path(run.path).stem)[:8]


def plot_history(history: dict[str, list[Run]], out: str | Path) -> list[Path]:
    """One PNG per fingerprint and bench group: median time with its IQR band, and tokens/s, per
    benchmark over commits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for fp_id, runs in history.items():
        groups: dict[str, set[str]] = {}
        for run in runs:
            for name, entry in run.benchmarks.items():
                groups.setdefault(entry.get("group") or "ungrouped", set()).add(name)
        for group, names in sorted(groups.items()):
            fig, (ax_t, ax_r) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
            for name in sorted(names):
                xs = [i for i, r in enumerate(runs) if name in r.benchmarks]
                stats = [runs[i].benchmarks[name]["stats"] for i in xs]
                median = [median_time(runs[i].benchmarks[name]) * 1e3 for i in xs]
                label = name.split("[", 1)[-1].rstrip("]") if "[" in name else name
                line, = ax_t.plot(xs, median, marker="o", ms=3, label=label)
                if all(finite(s.get("q1")) and finite(s.get("q3")) for s in stats):
                    ax_t.fill_between(xs, [s["q1"] * 1e3 for s in stats], [s["q3"] * 1e3 for s in stats],
                                      color=line.get_color(), alpha=0.2, lw=0)
                rate = [(i, as_dict(runs[i].benchmarks[name].get("extra_info")).get("tokens_per_s")) for i in xs]
                rate = [(i, v) for i, v in rate if finite(v)]
                if rate:
                    ax_r.plot([i for i, _ in rate], [v for _, v in rate], marker="o", ms=3, color=line.get_color())
            ax_t.set_ylabel("median time (ms), IQR band")
            ax_r.set_ylabel("tokens/s")
            ax_t.set_title(f"{group}\n{fp_id}", fontsize=10)
            ax_t.legend(fontsize=7, loc="best")
            ax_r.set_xticks(range(len(runs)), [short_commit(r) for r in runs], rotation=60, fontsize=7)
            ax_r.set_xlabel("commit (oldest first)")
            for ax in (ax_t, ax_r):
                ax.grid(alpha=0.3)
            fig.tight_layout()
            path = Path(out) / fp_id / (re.sub(r"[^A-Za-z0-9.-]+", "_", group).strip("_") + ".png")
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written


def export(run: Run) -> tuple[list[dict], list[dict]]:
    """github-action-benchmark's ``customBiggerIsBetter`` and ``customSmallerIsBetter`` entries:
    tokens/s and MFU, median time. A missing value is left out, never written as null (the
    action would chart it as 0). Medians are enough: ``run`` may be read without raw rounds
    (``load_run(path, samples=False)``)."""
    bigger, smaller = [], []
    fp = fingerprint_id(run.fingerprint)
    for name, entry in sorted(run.benchmarks.items()):
        stats, extra = entry["stats"], as_dict(entry.get("extra_info"))
        median = median_time(entry)
        note = f"{stats.get('rounds') or len(stats.get('data') or [])} rounds; hardware {fp}; threads {run.threads}"
        iqr = stats.get("iqr")
        smaller.append({"name": f"{name} time", "unit": "ms", "value": median * 1e3,
                        **({"range": f"IQR {iqr * 1e3:.3f} ms"} if finite(iqr) else {}), "extra": note})
        if finite(extra.get("tokens_per_s")):
            bigger.append({"name": f"{name} tokens/s", "unit": "tokens/s", "value": float(extra["tokens_per_s"]),
                           "extra": note})
        if finite(extra.get("mfu")):
            bigger.append({"name": f"{name} MFU", "unit": "%", "value": 100 * float(extra["mfu"]), "extra": note})
    return bigger, smaller
