"""Did the head make a benchmark slower than the base? pytest-benchmark JSON runs of both, compared
pair by pair, with the statistics that keep a noisy shared machine from crying wolf.

Runs are paired (base_i, head_i) as the gate ran them, interleaved: base, head, head, base, base,
head. Drift between pairs cancels out of each pair's ratio; a benchmark regresses only when

- the median of its per-pair ratios is worse than ``1 + threshold``,
- *every* pair is worse than ``1 + floor`` (one slow pair is drift, not a change), and
- for timed metrics, a one-sided Mann-Whitney U test on the pooled rounds gives ``p < ALPHA``
  (asv's second condition; it asks the rounds, not only the medians).

What each metric means and how it is gated is in ``METRICS``; the thresholds are calibrated by A/A
runs (docs/regression-gate.md). Reading runs and the hardware fingerprint they are
keyed and refused by are in ``mtcore.perf.records``; the history over commits and the chart export in
``mtcore.perf.history``.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mtcore.errors import MTCoreError
from mtcore.perf.records import (
    BadRuns,
    Run,
    as_dict,
    check_comparable,
    costs_values,
    describe,
    fingerprint_id,
    finite,
    load_run,
    median_time,
)

# Calibrated by A/A and slowdown gates (scripts/gate_calibration.py): the threshold sits above every
# A/A gate's median pair ratio with room; the floor asks every pair to agree, beyond the spread of
# one pair. The gates and their figures: docs/findings/2026-11-27-gate-calibration.md.
TIME_THRESHOLD = 0.15
TIME_FLOOR = 0.05
ALPHA = 0.002  # asv's p-value for its Mann-Whitney U test


@dataclass(frozen=True)
class Metric:
    """One number per benchmark and run, and how a change of it is judged."""

    key: str
    label: str
    unit: str
    smaller_is_better: bool
    threshold: float | None  # None: reported, never gated
    floor: float = 0.0
    min_value: float = 0.0  # both sides below this: too small to judge (compile seconds near 0)
    ranked: bool = False  # a Mann-Whitney U test on the rounds
    applies: Callable[[dict], bool] = lambda extra: True


def _deterministic_memory(extra: dict) -> bool:
    # XLA's account of a compiled program is a property of the program: the same every run.
    # torch's CUDA allocator peak is close to it; a CPU process's RSS is not gated at all.
    return str(extra.get("memory_kind", "")).startswith(("XLA compiled", "CUDA allocator"))


METRICS = (
    Metric("time", "time", "s", True, TIME_THRESHOLD, TIME_FLOOR, ranked=True),
    Metric("tokens_per_s", "tokens/s", "tokens/s", False, TIME_THRESHOLD, TIME_FLOOR, ranked=True),
    # Deterministic, so tight: the same bytes in every run, any growth is real.
    Metric("memory_bytes", "memory", "bytes", True, 0.01, 0.01, applies=_deterministic_memory),
    # One compile per run and process, and compile times wander: loose, and only past a second.
    Metric("compile_s", "compile", "s", True, 0.5, 0.2, min_value=1.0),
    Metric("mfu", "MFU", "", False, None),
    Metric("achieved_flops", "FLOP/s", "FLOP/s", False, None),
)
METRIC = {m.key: m for m in METRICS}


# ---- values of one benchmark in one run ------------------------------------------------------
def value(entry: dict, metric: Metric) -> float | None:
    """The metric's value in one run, or None where the run has none (or it does not apply)."""
    extra = as_dict(entry.get("extra_info"))
    if metric.key == "time":
        return median_time(entry)
    if not metric.applies(extra):
        return None
    v = extra.get(metric.key)
    return float(v) if finite(v) else None


def samples(entry: dict, metric: Metric) -> list[float] | None:
    """Per-round values for the rank test: the rounds' times, or tokens over each round's time."""
    data = entry["stats"]["data"]
    if metric.key == "time":
        return [float(x) for x in data]
    rate = as_dict(entry.get("extra_info")).get(metric.key)
    if metric.key == "tokens_per_s" and finite(rate):
        tokens = rate * statistics.median(data)
        return [tokens / x for x in data if x > 0]
    return None


# ---- what a step moves and a device holds: exact -------------------------------------------------
@dataclass(frozen=True)
class CostChange:
    """One gated number of one framework x mesh (``records.costs_values``), base against head.
    The program, the shapes and the engine fix it: any increase is a regression, however noisy
    the runner's timing; a decrease is reported."""

    case: str
    name: str
    base: int
    head: int

    @property
    def verdict(self) -> str:
        return "regressed" if self.head > self.base else "smaller" if self.head < self.base else "same"


@dataclass
class CostJudgement:
    changes: list[CostChange]
    notes: list[str]  # cases not compared, and why

    @property
    def regressed(self) -> list[CostChange]:
        return [c for c in self.changes if c.verdict == "regressed"]

    @property
    def smaller(self) -> list[CostChange]:
        return [c for c in self.changes if c.verdict == "smaller"]

    @property
    def cases(self) -> int:
        return len({c.case for c in self.changes})


def judge_costs(base: list[dict[str, dict]], head: list[dict[str, dict]]) -> CostJudgement:
    """Every framework x mesh whose costs every base and every head run holds, number by number
    (a kind of collective one side lacks counts 0 there); a case whose engine, engine version or
    batch differs between the runs is not compared, and a number that differs between the runs of
    one side is noted (it should not: the judgement takes that side's largest)."""
    changes, notes = [], []
    if not any(base) and not any(head):
        return CostJudgement(changes, notes)
    for side, runs in (("base", base), ("head", head)):
        if not all(runs):
            notes.append(f"{sum(1 for c in runs if not c)} of the {side} runs hold no costs (`pytest benches -m costs`): "
                         "what a step moves is not judged")
    if not all(base) or not all(head):
        return CostJudgement(changes, notes)
    in_base = set.intersection(*(set(c) for c in base))
    in_head = set.intersection(*(set(c) for c in head))
    for case in sorted(in_base ^ in_head):
        notes.append(f"{case}: in the {'base' if case in in_base else 'head'} runs only; not compared")
    for case in sorted(in_base & in_head):
        runs = [c[case] for c in base + head]
        keys = {(r["engine"], r["engine_version"], tuple(r.get("batch_shape") or ())) for r in runs}
        if len(keys) > 1:
            notes.append(f"{case}: engines, their versions or the batch differ between the runs "
                         f"({'; '.join(sorted(f'{e} ({v}), batch {list(b)}' for e, v, b in keys))}); not compared")
            continue
        values_b = [costs_values(c[case]) for c in base]
        values_h = [costs_values(c[case]) for c in head]
        for name in sorted(set().union(*values_b, *values_h)):
            b = [v.get(name, 0) for v in values_b]
            h = [v.get(name, 0) for v in values_h]
            for side, vs in (("base", b), ("head", h)):
                if len(set(vs)) > 1:
                    notes.append(f"{case}: {name} differs between the {side} runs ({', '.join(map(str, vs))})")
            changes.append(CostChange(case, name, max(b), max(h)))
    return CostJudgement(changes, notes)


def costs_markdown(j: CostJudgement, base: str = "base", head: str = "head") -> list[str]:
    """The exact judgement's lines: every number that changed, and the count of those that did not."""
    if not j.changes and not j.notes:
        return []
    lines = ["", f"### What a step moves and a device holds (exact: any increase regresses; {j.cases} framework x mesh "
             "cases)", ""]
    moved = [c for c in j.changes if c.verdict != "same"]
    if moved:
        lines += [f"| case | number | {base} | {head} | verdict |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| `{c.case}` | {c.name} | {c.base:,} | {c.head:,} | "
                  f"{'**REGRESSED**' if c.verdict == 'regressed' else 'smaller'} |" for c in moved]
        lines.append("")
    lines.append(f"{len(j.changes) - len(moved)} of {len(j.changes)} numbers identical; {len(j.regressed)} grew, "
                 f"{len(j.smaller)} shrank.")
    lines += [f"- {n}" for n in j.notes]
    return lines


# ---- comparing -------------------------------------------------------------------------------
@dataclass
class Change:
    """One metric of one benchmark, base runs against head runs."""

    metric: Metric
    base: list[float | None]
    head: list[float | None]
    p: float | None = None
    verdict: str = "ok"  # regressed | faster | ok | not gated | no value | too small
    ratios: list[float] = field(default_factory=list)  # head / base per pair

    @property
    def worse(self) -> list[float]:
        """Per-pair factors where above 1 is worse, whichever way the metric points."""
        return [r if self.metric.smaller_is_better else 1 / r for r in self.ratios]

    @property
    def median_ratio(self) -> float | None:
        return statistics.median(self.ratios) if self.ratios else None


def judge(metric: Metric, base: list[dict], head: list[dict], alpha: float = ALPHA,
          threshold: float | None = None, floor: float | None = None) -> Change:
    change = Change(metric, [value(e, metric) for e in base], [value(e, metric) for e in head])
    values = change.base + change.head
    if any(v is None for v in values):
        change.verdict = "no value"
        return change
    if max(values) < metric.min_value:
        change.verdict = "too small"
        return change
    if any(v <= 0 for v in values):
        change.verdict = "no value"
        return change
    change.ratios = [h / b for b, h in zip(change.base, change.head, strict=True)]
    if metric.threshold is None:
        change.verdict = "not gated"
        return change
    threshold = metric.threshold if threshold is None or metric.key not in ("time", "tokens_per_s") else threshold
    floor = metric.floor if floor is None or metric.key not in ("time", "tokens_per_s") else floor
    worse = change.worse
    p_worse = p_better = None
    if metric.ranked:
        p_worse, p_better = _rank_test(metric, base, head)
    if statistics.median(worse) > 1 + threshold and min(worse) > 1 + floor and (p_worse is None or p_worse < alpha):
        change.verdict, change.p = "regressed", p_worse
    elif (statistics.median(worse) < 1 / (1 + threshold) and max(worse) < 1 / (1 + floor)
          and (p_better is None or p_better < alpha)):
        change.verdict, change.p = "faster", p_better
    else:
        change.p = p_worse
    return change


def _rank_test(metric: Metric, base: list[dict], head: list[dict]) -> tuple[float | None, float | None]:
    """One-sided Mann-Whitney U p-values (head worse, head better) on the pooled rounds."""
    try:
        from scipy.stats import mannwhitneyu
    except ImportError:
        raise MTCoreError("bench-compare's rank test needs scipy: pip install 'mtcore[test]'") from None

    pooled_base, pooled_head = [], []
    for b, h in zip(base, head, strict=True):
        sb, sh = samples(b, metric), samples(h, metric)
        if sb is None or sh is None:
            return None, None
        pooled_base += sb
        pooled_head += sh
    larger = mannwhitneyu(pooled_head, pooled_base, alternative="greater").pvalue
    smaller = mannwhitneyu(pooled_head, pooled_base, alternative="less").pvalue
    return (float(larger), float(smaller)) if metric.smaller_is_better else (float(smaller), float(larger))


@dataclass
class Comparison:
    base: list[Run]
    head: list[Run]
    rows: dict[str, list[Change]]  # benchmark fullname -> one Change per metric
    groups: dict[str, str]
    new: list[str]
    removed: list[str]
    incomplete: list[str]
    threshold: float
    floor: float
    alpha: float
    costs: CostJudgement = field(default_factory=lambda: CostJudgement([], []))

    @property
    def regressed(self) -> dict[str, list[Change]]:
        return {name: [c for c in changes if c.verdict == "regressed"] for name, changes in self.rows.items()
                if any(c.verdict == "regressed" for c in changes)}

    @property
    def failed(self) -> bool:
        """A timed metric regressed, or a step moves or a device holds more."""
        return bool(self.regressed or self.costs.regressed)


def compare(base_paths: list[str | Path], head_paths: list[str | Path], threshold: float = TIME_THRESHOLD,
            floor: float = TIME_FLOOR, alpha: float = ALPHA) -> Comparison:
    if not base_paths or not head_paths:
        raise BadRuns("give at least one --base and one --head file")
    if len(base_paths) != len(head_paths):
        raise BadRuns(f"{len(base_paths)} base files but {len(head_paths)} head files: runs are compared in pairs "
                      "(base_i, head_i), so give as many of each, in the order they ran")
    if not 0 <= floor <= threshold:
        raise BadRuns(f"--floor {floor} must be between 0 and --threshold {threshold}")
    base, head = [load_run(p) for p in base_paths], [load_run(p) for p in head_paths]
    check_comparable(base + head)
    in_all_base = set.intersection(*(set(r.benchmarks) for r in base))
    in_all_head = set.intersection(*(set(r.benchmarks) for r in head))
    in_any = set.union(*(set(r.benchmarks) for r in base + head))
    rows, groups = {}, {}
    for name in sorted(in_all_base & in_all_head):
        b, h = [r.benchmarks[name] for r in base], [r.benchmarks[name] for r in head]
        rows[name] = [judge(m, b, h, alpha, threshold, floor) for m in METRICS]
        groups[name] = h[0].get("group") or ""
    any_base = set.union(*(set(r.benchmarks) for r in base))
    any_head = set.union(*(set(r.benchmarks) for r in head))
    new = sorted(in_all_head - any_base)
    removed = sorted(in_all_base - any_head)
    incomplete = sorted(in_any - set(rows) - set(new) - set(removed))
    return Comparison(base, head, rows, groups, new, removed, incomplete, threshold, floor, alpha,
                      judge_costs([r.costs for r in base], [r.costs for r in head]))


# ---- the report ------------------------------------------------------------------------------
def _ratio_cell(change: Change) -> str:
    if change.verdict == "no value":
        return "-"
    if change.verdict == "too small":
        return f"under {change.metric.min_value:g} {change.metric.unit}"
    ratios = change.ratios
    cell = f"{change.median_ratio:.3f}" + (f" ({min(ratios):.3f}-{max(ratios):.3f})" if len(ratios) > 1 else "")
    if change.verdict == "regressed":
        return f"**{cell} worse**"
    if change.verdict == "faster":
        return f"{cell} better"
    return cell


def _mfu_cell(change: Change) -> str:
    if change.verdict == "no value":
        return "-"
    return f"{statistics.median(change.base):.1%} → {statistics.median(change.head):.1%}"


def markdown(c: Comparison) -> str:
    n = len(c.base)
    fp = c.head[0].fingerprint
    lines = [
        f"## mtcore bench-compare: {n} base run{'s' * (n > 1)} against {n} head run{'s' * (n > 1)}, paired",
        "",
        f"Hardware `{fingerprint_id(fp)}`: {describe(fp)}; thread budget {c.head[0].threads or 'not recorded'}.",
        "",
        f"A metric regresses when the median of its per-pair head/base ratios is worse than {1 + c.threshold:.2f}, "
        f"every pair is worse than {1 + c.floor:.2f}, and a one-sided Mann-Whitney U test on the pooled rounds "
        f"gives p < {c.alpha:g} (time, tokens/s); JAX's compiled memory: 1.01 in every pair; compile seconds: "
        "1.5 median, 1.2 every pair, past 1 s. MFU is reported, not gated. Cells: median pair ratio head/base "
        "(lowest-highest pair).",
        "",
    ]
    if n < 3:
        lines += [f"Only {n} pair{'s' * (n > 1)}: every pair agreeing means little with so few; the gate runs 3.", ""]
    lines += ["| benchmark | time | tokens/s | memory | compile | MFU | verdict |", "|---|---|---|---|---|---|---|"]
    for name, changes in c.rows.items():
        by = {ch.metric.key: ch for ch in changes}
        regressed = [ch.metric.label for ch in changes if ch.verdict == "regressed"]
        faster = [ch.metric.label for ch in changes if ch.verdict == "faster"]
        verdict = ("**REGRESSED**: " + ", ".join(regressed)) if regressed else (
            "better: " + ", ".join(faster) if faster else "ok")
        lines.append(f"| `{name.rsplit('::', 1)[-1]}` | {_ratio_cell(by['time'])} | {_ratio_cell(by['tokens_per_s'])} | "
                     f"{_ratio_cell(by['memory_bytes'])} | {_ratio_cell(by['compile_s'])} | {_mfu_cell(by['mfu'])} | "
                     f"{verdict} |")
    lines.append("")
    for label, names in (("New (in every head run, in no base run; not compared)", c.new),
                         ("Removed (in every base run, in no head run)", c.removed),
                         ("Missing from some runs (a failed or deselected bench; not compared)", c.incomplete)):
        if names:
            lines += [f"{label}: " + ", ".join(f"`{x}`" for x in names), ""]
    regressed = c.regressed
    if regressed:
        lines.append(f"**{len(regressed)} benchmark{'s' * (len(regressed) > 1)} regressed:**")
        for name, changes in regressed.items():
            for ch in changes:
                p = f", p={ch.p:.1e}" if ch.p is not None else ""
                lines.append(f"- `{name}` {ch.metric.label}: head/base {ch.median_ratio:.3f} "
                             f"(pairs {', '.join(f'{r:.3f}' for r in ch.ratios)}{p})")
    else:
        lines.append(f"No regression in {len(c.rows)} benchmarks.")
    lines += costs_markdown(c.costs)
    if c.costs.regressed:
        lines += ["", f"**{len(c.costs.regressed)} number{'s' * (len(c.costs.regressed) > 1)} of what a step moves or "
                  "a device holds grew:** " + "; ".join(f"`{x.case}` {x.name} {x.base:,} -> {x.head:,}"
                                                       for x in c.costs.regressed)]
    return "\n".join(lines) + "\n"


def write_json(c: Comparison, path: str | Path) -> None:
    """The verdicts, for a workflow or a dashboard to read."""
    out = {
        "base": [str(r.path) for r in c.base], "head": [str(r.path) for r in c.head],
        "fingerprint": fingerprint_id(c.head[0].fingerprint), "threshold": c.threshold, "floor": c.floor,
        "alpha": c.alpha, "regressed": sorted(c.regressed), "new": c.new, "removed": c.removed,
        "incomplete": c.incomplete,
        "benchmarks": {name: {ch.metric.key: {"verdict": ch.verdict, "ratios": ch.ratios, "p": ch.p}
                              for ch in changes} for name, changes in c.rows.items()},
        "costs": {"regressed": [vars(x) for x in c.costs.regressed], "smaller": [vars(x) for x in c.costs.smaller],
                  "compared": len(c.costs.changes), "notes": c.costs.notes},
    }
    Path(path).write_text(json.dumps(out, indent=1))


def step_summary(text: str) -> None:
    """Append to the GitHub job summary when running under Actions."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if path:
        with open(path, "a") as f:
            f.write(text + "\n")
