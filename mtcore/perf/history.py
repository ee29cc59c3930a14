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


@dataclass
class Drift:
    fingerprint: str
    benchmark: str
    latest: float
    baseline: float
    runs: int

    @property
    def ratio(self) -> float:
        return self.latest / self.baseline


def drift(runs: list[Run], fp_id: str, window: int = WINDOW, threshold: float = DRIFT) -> list[Drift]:
    """Benchmarks whose latest median step time is past ``1 + threshold`` times the median of the
    previous ``window`` runs' medians (at least ``BEFORE_LATEST`` of them) on the same fingerprint."""
    if len(runs) <= BEFORE_LATEST:
        return []
    latest, previous = runs[-1], runs[-1 - window:-1]
    out = []
    for name, entry in latest.benchmarks.items():
        before = [median_time(r.benchmarks[name]) for r in previous if name in r.benchmarks]
        if len(before) < BEFORE_LATEST:
            continue
        now, baseline = median_time(entry), statistics.median(before)
        if now > (1 + threshold) * baseline:
            out.append(Drift(fp_id, name, now, baseline, len(before)))
    return out


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
