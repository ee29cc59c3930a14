"""What the regression gate's thresholds do on this machine, from gate runs made here:

    python scripts/bench_gate.py --base HEAD --out cal/aa-1                     # A/A, x10
    python scripts/bench_gate.py --base HEAD --out cal/slow-1 --head-plugin tests/perf/slower_step.py   # x10
    python scripts/gate_calibration.py --aa cal/aa-* --slow cal/slow-*

For each threshold / floor it reports the A/A false alarms (benchmarks flagged in runs of an
unchanged tree), the real slowdowns caught (the slower-step plugin: train steps; decoding is not
slowed, so a flagged decode is a false alarm too), and, from the A/A runs with the head's rounds
multiplied by 1 + s, the share of benchmarks caught per injected slowdown s: the smallest slowdown
the gate reliably catches here.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
from pathlib import Path

from mtcore.perf import records
from mtcore.perf import regression as r


def load(gate_dir: Path) -> tuple[list[records.Run], list[records.Run]]:
    n = len(list(gate_dir.glob("base-*.json")))
    base = [records.load_run(gate_dir / f"base-{i}.json") for i in range(1, n + 1)]
    head = [records.load_run(gate_dir / f"head-{i}.json") for i in range(1, n + 1)]
    return base, head


def slowed(entry: dict, factor: float) -> dict:
    entry = copy.deepcopy(entry)
    entry["stats"]["data"] = [x * factor for x in entry["stats"]["data"]]
    extra = entry.get("extra_info") or {}
    if isinstance(extra.get("tokens_per_s"), (int, float)):
        extra["tokens_per_s"] /= factor
    return entry


def verdicts(base, head, threshold, floor, factor=1.0) -> dict[str, list[str]]:
    """{benchmark: regressed metric keys} for one gate, the head's times scaled by ``factor``."""
    out = {}
    names = set.intersection(*(set(x.benchmarks) for x in base + head))
    for name in sorted(names):
        b = [x.benchmarks[name] for x in base]
        h = [slowed(x.benchmarks[name], factor) for x in head]
        bad = [m.key for m in r.METRICS if r.judge(m, b, h, r.ALPHA, threshold, floor).verdict == "regressed"]
        if bad:
            out[name] = bad
    return out


def short(name: str) -> str:
    return name.rsplit("::", 1)[-1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--aa", nargs="+", type=Path, required=True, help="A/A gate directories")
    p.add_argument("--slow", nargs="*", type=Path, default=[], help="slower-step gate directories")
    args = p.parse_args()
    aa = [load(d) for d in args.aa]
    slow = [load(d) for d in args.slow]
    print(f"{len(aa)} A/A gates, {len(slow)} slower-step gates, {len(aa[0][0])} pairs each\n")

    # The raw material: per benchmark, each A/A gate's median pair ratio and its pair range.
    print("A/A time ratios head/base per benchmark: median of each gate's pair medians, and the worst gate")
    for name in sorted(aa[0][0][0].benchmarks):
        med, worst = [], []
        for base, head in aa:
            ratios = [r.value(h.benchmarks[name], r.METRIC["time"]) / r.value(b.benchmarks[name], r.METRIC["time"])
                      for b, h in zip(base, head, strict=True)]
            med.append(statistics.median(ratios))
            worst.append((statistics.median(ratios), min(ratios), max(ratios)))
        top = max(worst, key=lambda w: abs(w[0] - 1))
        print(f"  {short(name):45} gate medians {min(med):.3f}-{max(med):.3f}; worst gate median {top[0]:.3f} "
              f"(pairs {top[1]:.3f}-{top[2]:.3f})")
    print("\nA/A pair ratios, raw and divided by the speed probe's (extra_info probe_s, a fixed matmul before and "
          "after the rounds): spread as the std of log ratios over all pairs")
    for name in sorted(aa[0][0][0].benchmarks):
        raw, normed = [], []
        for base, head in aa:
            for b, h in zip(base, head, strict=True):
                eb, eh = b.benchmarks[name], h.benchmarks[name]
                ratio = r.value(eh, r.METRIC["time"]) / r.value(eb, r.METRIC["time"])
                raw.append(math.log(ratio))
                pb, ph = (eb.get("extra_info") or {}).get("probe_s"), (eh.get("extra_info") or {}).get("probe_s")
                if pb and ph:
                    normed.append(math.log(ratio / (statistics.mean(ph) / statistics.mean(pb))))
        spread = f"{statistics.pstdev(normed):.3f}" if len(normed) > 1 else "-"
        print(f"  {short(name):45} raw {statistics.pstdev(raw):.3f}, probe-normalised {spread} ({len(raw)} pairs)")
    if slow:
        print("\nslower-step gates: the train steps' median pair ratio (the real slowdown, measured)")
        for name in sorted(n for n in slow[0][0][0].benchmarks if "train_step" in n):
            meds = [statistics.median(r.value(h.benchmarks[name], r.METRIC["time"]) /
                                      r.value(b.benchmarks[name], r.METRIC["time"]) for b, h in zip(base, head, strict=True))
                    for base, head in slow]
            print(f"  {short(name):45} {statistics.median(meds):.3f} (gates {min(meds):.3f}-{max(meds):.3f})")

    print("\nthreshold / floor: A/A false alarms, slower-step gates caught, decodes flagged in slower-step gates "
          "(not slowed: false alarms too)")
    for threshold in (0.10, 0.15, 0.20, 0.25):
        for floor in (0.03, 0.05, 0.10):
            if floor > threshold:
                continue
            alarms = [verdicts(b, h, threshold, floor) for b, h in aa]
            caught = [verdicts(b, h, threshold, floor) for b, h in slow]
            trains = sum(1 for v in caught for n in v if "train_step" in n)
            total = sum(1 for b, _ in slow for n in b[0].benchmarks if "train_step" in n)
            decodes = sum(1 for v in caught for n in v if "train_step" not in n)
            mark = "  <- default" if (threshold, floor) == (r.TIME_THRESHOLD, r.TIME_FLOOR) else ""
            # A gate fails (exit 1) when any benchmark regresses: an A/A gate failing is a false alarm
            # on a pull request, a slower-step gate failing is the slowdown caught.
            print(f"  {threshold:4.0%} / {floor:3.0%}: A/A gates failed {sum(1 for a in alarms if a):2d}/{len(aa)} "
                  f"({sum(map(len, alarms))} benchmarks); slower-step gates failed "
                  f"{sum(1 for v in caught if v)}/{len(slow)}, train steps caught {trains}/{total}, "
                  f"all 4 in {sum(1 for v in caught if sum('train_step' in n for n in v) == 4)}/{len(slow)} gates; "
                  f"decodes flagged {decodes}{mark}")

    print(f"\ninjected slowdown s (A/A heads' rounds x (1 + s)), at {r.TIME_THRESHOLD:.0%} / {r.TIME_FLOOR:.0%}: "
          "benchmarks caught")
    for s in (0.10, 0.15, 0.20, 0.25, 0.30, 0.40):
        caught = [verdicts(b, h, r.TIME_THRESHOLD, r.TIME_FLOOR, 1 + s) for b, h in aa]
        total = sum(len(b[0].benchmarks) for b, _ in aa)
        per = {}
        for (b, _), v in zip(aa, caught, strict=True):
            for n in b[0].benchmarks:
                per.setdefault(short(n), []).append(n in v)
        missed = ", ".join(f"{n} {sum(v)}/{len(v)}" for n, v in sorted(per.items()) if not all(v))
        print(f"  +{s:.0%}: gates failed {sum(1 for v in caught if v)}/{len(aa)}, benchmarks caught "
              f"{sum(map(len, caught))}/{total}" + (f"  (missed: {missed})" if missed else "  (all)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
