"""The link sweep's points (benches/test_sweep.py, as pytest-benchmark JSON), judged and drawn: for
each framework x size x mesh, the step time against the link's rate, whether the network was the
bottleneck at each rate and from which rate down it is, and ``mtcore plan``'s prediction of every
point (``costs.plan`` with the engine's bytes on the wire, the latency measured on the same links
and one device's measured step), held to the measured median (``mtcore sweep``).

A point is network-bound when its communication (the step over the hosts less the same step over
loopback, measured round by round beside it) exceeds its arithmetic (the step over loopback). The
planner is held within ``PLANNER_TOLERANCE`` where communication is at least half the step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

from mtcore.errors import MTCoreError

PLANNER_TOLERANCE = 0.20


@dataclasses.dataclass(frozen=True)
class Point:
    """One measured point of the sweep (a bench's ``extra_info`` and timing)."""

    framework: str
    size: str
    mesh: str
    rate: float  # bits per second
    step_s: float  # median over the hosts
    q1_s: float
    q3_s: float
    rounds: int
    loopback_s: float  # the same step over loopback, median of rounds beside it
    one_device_s: float  # one device's step (the bench's batch), median
    one_device_rows: int
    batch_shape: tuple[int, int, int]  # the mesh's global batch: rows, source, target
    wire_bytes: float  # per step, the busier host's busier direction
    predicted_wire_bytes: float | None
    utilisation: float
    latency_s: float  # per message, on the unshaped link of this case
    machine: str = ""
    delay_s: float = 0.0  # netem's delay on every link (--delay), one way
    offload: bool = False  # segmentation offload on (above the one-segment-per-frame ceiling)

    @property
    def communication_s(self) -> float:
        return self.step_s - self.loopback_s

    @property
    def network_bound(self) -> bool:
        return network_bound(self.step_s, self.loopback_s)

    @property
    def series(self) -> tuple[str, str, str, float]:
        return self.size, self.mesh, self.framework, self.delay_s


def network_bound(step_s: float, arithmetic_s: float) -> bool:
    """The verdict, wherever it is given: a step is network-bound when its communication (the step
    less its arithmetic) takes longer than its arithmetic."""
    return step_s - arithmetic_s > arithmetic_s


def load(paths: list[str | os.PathLike]) -> list[Point]:
    """Every sweep point in these pytest-benchmark JSON files."""
    from mtcore.perf.records import fingerprint, fingerprint_id

    points = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise MTCoreError(f"sweep: cannot read {path}: {e}") from None
        if not isinstance(data, dict):
            raise MTCoreError(f"sweep: {path}: not pytest-benchmark JSON")
        machine = fingerprint_id(fingerprint(data.get("machine_info") or {})) if data.get("machine_info") else ""
        for b in data.get("benchmarks", []):
            e, st = b.get("extra_info") or {}, b.get("stats") or {}
            if "rate_bits_per_s" not in e or "median" not in st:
                continue
            try:
                points.append(_point(e, st, machine))
            except (KeyError, TypeError, ValueError) as err:
                raise MTCoreError(f"sweep: {path}: {b.get('name', '?')} is not a link sweep point ({err!r})") from None
    if not points:
        raise MTCoreError(f"sweep: no link sweep points in {', '.join(map(str, paths))} (pytest benches -m sweep "
                          "--benchmark-json=FILE writes them)")
    return points


def _point(e: dict, st: dict, machine: str) -> Point:
    """A point from one bench's extra_info and stats."""
    from mtcore.devices import FRAMEWORKS

    if e["framework"] not in FRAMEWORKS:
        raise ValueError(f"framework {e['framework']!r}")
    busiest = max(max(w["tx_bytes_per_step"], w["rx_bytes_per_step"]) for w in e["wire"])
    return Point(
                framework=e["framework"], size=e["size"], mesh=e["mesh"], rate=float(e["rate_bits_per_s"]),
                step_s=st["median"], q1_s=st["q1"], q3_s=st["q3"], rounds=st["rounds"],
                loopback_s=e["loopback"]["median_s"], one_device_s=e["one_device"]["median_s"],
                one_device_rows=e["one_device_rows"], batch_shape=tuple(e["global_batch_shape"]), wire_bytes=busiest,
                predicted_wire_bytes=e.get("predicted_wire_per_step"),
                utilisation=max(w["utilisation"] for w in e["wire"]), latency_s=e["latency_unshaped_s"],
                machine=machine, delay_s=e.get("delay_s") or 0.0, offload=bool(e.get("offload")))


def predict(p: Point, rate: float | None = None) -> dict[str, float]:
    """``mtcore plan``'s step for ``p``'s framework, size and mesh at ``rate`` (default: the
    point's): the engine's framed bytes over the rate, a latency per message as measured, and one
    device's measured step carried by FLOP share."""
    from mtcore.backend import framework
    from mtcore.config import ModelConfig
    from mtcore.costs import flop_share_seconds, plan
    from mtcore.parallel import MeshShape

    fw = framework(p.framework)  # its layout and its engine on a CPU, as the sweep's processes ran
    cfg = ModelConfig.preset(p.size)
    rows, src, tgt = p.batch_shape
    # plan's compute_s: the whole global batch on one device, from the bench's batch by FLOPs.
    compute_s = flop_share_seconds(cfg, p.one_device_s, (MeshShape(), p.one_device_rows), (MeshShape(), rows), src, tgt)
    # A message waits the software's round trip measured on these links, and netem's delay where one was set.
    row = plan(cfg, [MeshShape.parse(p.mesh)], rows, src, tgt, bandwidth=(rate or p.rate) / 8,
               latency=p.latency_s + p.delay_s,
               compute_s=compute_s, engine=fw.collective_engine("cpu"), layout=fw.LAYOUT)[0]
    # The same communication on the mesh's own measured arithmetic (its step over loopback): what
    # the planner's model of the links alone gets right or wrong.
    return {"step_s": row["arithmetic_s"] + row["communication_s"], "communication_s": row["communication_s"],
            "arithmetic_s": row["arithmetic_s"], "latency_s": row["latency_s"], "wire_bytes": row["wire"],
            "on_loopback_step_s": p.loopback_s + row["communication_s"]}


def turning_rate(points: list[Point]) -> tuple[float | None, str]:
    """The rate below which one series (a framework, size and mesh) is network-bound, from the
    measured points: interpolated (log rate, log of communication over arithmetic) between the
    last point that was not and the first that was; with a word on where it lies."""
    pts = sorted(points, key=lambda q: -q.rate)
    if all(q.network_bound for q in pts):
        return None, f"network-bound at every rate swept (from {pts[0].rate / 1e6:g} Mbit/s down)"
    if not any(q.network_bound for q in pts):
        return None, f"not network-bound down to {pts[-1].rate / 1e6:g} Mbit/s"
    for hi, lo in zip(pts, pts[1:], strict=False):
        if not hi.network_bound and lo.network_bound:
            ratio = [max(q.communication_s, 1e-9) / q.loopback_s for q in (hi, lo)]
            f = (0 - math.log(ratio[0])) / (math.log(ratio[1]) - math.log(ratio[0]))
            rate = math.exp(math.log(hi.rate) + f * (math.log(lo.rate) - math.log(hi.rate)))
            return rate, f"network-bound below about {rate / 1e6:.0f} Mbit/s"
    return None, "network-bound at some rates and not at lower ones (see the points)"


def judged(points: list[Point]) -> list[dict[str, Any]]:
    """Every point with its verdict and the planner's prediction, as rows."""
    rows = []
    for p in sorted(points, key=lambda q: (q.size, q.mesh, q.framework, -q.rate)):
        pred = predict(p)
        held = p.communication_s >= p.step_s / 2
        ratio, on_loopback = pred["step_s"] / p.step_s, pred["on_loopback_step_s"] / p.step_s
        rows.append({**dataclasses.asdict(p), "communication_s": p.communication_s, "network_bound": p.network_bound,
                     "planner": pred, "planner_ratio": ratio, "planner_held": held,
                     "planner_within": abs(ratio - 1) <= PLANNER_TOLERANCE if held else None,
                     "planner_on_loopback_ratio": on_loopback,
                     "planner_on_loopback_within": abs(on_loopback - 1) <= PLANNER_TOLERANCE if held else None})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = ["size", "framework", "mesh", "Mbit/s", "step ms, median (IQR), rounds", "over loopback ms",
            "communication ms", "network-bound", "on the wire MB a step (predicted)", "link used",
            "planner ms (latency ms)", "planner / measured", "planner on the loopback step / measured"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        pl = r["planner"]

        def mark(within):
            return "" if within is None else (" ✓" if within else " ✗")

        lines.append("| " + " | ".join([
            r["size"], r["framework"], r["mesh"], f"{r['rate'] / 1e6:g}" + (" (offload)" if r["offload"] else ""),
            f"{r['step_s'] * 1e3:,.0f} ({(r['q3_s'] - r['q1_s']) * 1e3:,.0f}), {r['rounds']}",
            f"{r['loopback_s'] * 1e3:,.0f}", f"{r['communication_s'] * 1e3:,.0f}",
            "**yes**" if r["network_bound"] else "no",
            f"{r['wire_bytes'] / 1e6:.3f} ({(r['predicted_wire_bytes'] or 0) / 1e6:.3f})", f"{r['utilisation']:.0%}",
            f"{pl['step_s'] * 1e3:,.0f} ({pl['latency_s'] * 1e3:,.1f})", f"{r['planner_ratio']:.2f}{mark(r['planner_within'])}",
            f"{r['planner_on_loopback_ratio']:.2f}{mark(r['planner_on_loopback_within'])}"]) + " |")
    return "\n".join(lines)


def verdicts(points: list[Point]) -> list[str]:
    """One line per series: from which rate down the network is the bottleneck, measured and
    predicted."""
    series: dict[tuple, list[Point]] = {}
    for p in points:
        series.setdefault(p.series, []).append(p)
    out = []
    for (size, mesh, fw, delay), pts in sorted(series.items()):
        rate, said = turning_rate(pts)
        planned = predicted_turning_rate(pts[0])
        on_loopback = predicted_turning_rate(pts[0], sorted(q.loopback_s for q in pts)[len(pts) // 2])
        delayed = f" with {delay * 1e3:g} ms of delay" if delay else ""

        def below(rate: float) -> str:
            return f"below {rate / 1e6:.0f} Mbit/s" if math.isfinite(rate) else "at every rate (its latency term alone)"

        out.append(f"- {size} {mesh} {fw}{delayed}: {said}; the planner: {below(planned)} on one device's arithmetic, "
                   f"{below(on_loopback)} on the mesh's loopback step")
    return out


def predicted_turning_rate(p: Point, arithmetic_s: float | None = None) -> float:
    """The rate at which the planner's communication equals its arithmetic for ``p``'s series (or
    ``arithmetic_s``: the mesh's own measured step over loopback, as the sweep's verdict weighs it)."""
    a, b = predict(p, 1e12), predict(p, 1e6)  # bytes' time is wire / rate: solve from two rates
    bytes_s_at_1mbit = b["communication_s"] - a["communication_s"]  # (wire x 8 / 1e6) less (about) nothing
    spare = (a["arithmetic_s"] if arithmetic_s is None else arithmetic_s) - a["communication_s"]  # less the latency
    return bytes_s_at_1mbit * 1e6 / spare if spare > 0 else math.inf  # inf: its latency alone outweighs it


def plot(points: list[Point], out: Path, ceiling: float | None = None) -> list[Path]:
    """One figure per size: a panel per mesh, step time against link rate (log-log), each
    framework's measured medians with their IQR (filled: network-bound), the planner's line, the
    step over loopback (the arithmetic) and the rate at which the series turns network-bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from mtcore.devices import FRAMEWORKS, PALETTE

    written = []
    for size in sorted({p.size for p in points}):
        order = ("data:2", "fsdp:2", "tensor:2")
        meshes = sorted({p.mesh for p in points if p.size == size}, key=lambda m: (order.index(m) if m in order else 9, m))
        fig, axes = plt.subplots(1, len(meshes), figsize=(5.2 * len(meshes), 5.0), squeeze=False)
        for ax, mesh in zip(axes[0], meshes, strict=True):
            verdict: list[tuple[str, str]] = []
            for fw in FRAMEWORKS:
                pts = sorted((p for p in points if p.series == (size, mesh, fw, 0.0)), key=lambda q: q.rate)
                if not pts:
                    continue
                c = PALETTE[fw]
                x = np.array([p.rate / 1e6 for p in pts])
                y = np.array([p.step_s * 1e3 for p in pts])
                err = np.array([[(p.step_s - p.q1_s) * 1e3 for p in pts], [(p.q3_s - p.step_s) * 1e3 for p in pts]])
                ax.errorbar(x, y, yerr=err, fmt="none", ecolor=c, capsize=3, lw=1)
                for p, xi, yi in zip(pts, x, y, strict=True):
                    ax.plot(xi, yi, "s" if p.offload else "o", color=c, mfc=c if p.network_bound else "white", ms=6)
                turn = predicted_turning_rate(pts[0])
                top = max(x.max(), ceiling / 1e6 if ceiling else 0, min(turn / 1e6, 2e4))
                grid = np.geomspace(min(x.min(), 10) * 0.8, top * 1.3, 60)
                planned = [predict(pts[0], r * 1e6) for r in grid]
                ax.plot(grid, [q["step_s"] * 1e3 for q in planned], "--", color=c, lw=1.2,
                        label=f"{fw}: planner (one device's arithmetic)")
                if turn / 1e6 <= grid[-1]:  # where the planner's line turns network-bound
                    ax.plot(turn / 1e6, predict(pts[0], turn)["step_s"] * 1e3, "x", color=c, ms=9, mew=2)
                loop = float(np.median([p.loopback_s for p in pts]))
                ax.plot(grid, [(loop + q["communication_s"]) * 1e3 for q in planned], "-.", color=c, lw=0.8,
                        alpha=0.7, label=f"{fw}: planner on the loopback step")
                ax.plot(x, [p.loopback_s * 1e3 for p in pts], ":", color=c, lw=1, label=f"{fw}: over loopback")
                rate, said = turning_rate(pts)
                verdict.append((c, f"{fw}: {said}"))
                if rate:  # the verdict's words name it, in the panel's corner
                    ax.axvline(rate / 1e6, color=c, lw=0.8, alpha=0.6)
                ax.plot([], [], "o", color=c, label=f"{fw}: measured (filled: network-bound; square: offload on)")
                ax.plot([], [], "x", color=c, mew=2, label=f"{fw}: the planner turns network-bound")
            ax.set_xscale("log")
            ax.set_yscale("log")
            if ceiling:
                ax.axvline(ceiling / 1e6, color="grey", lw=0.8, ls=(0, (1, 3)))
                ax.text(ceiling / 1e6, 0.02, "the link's ceiling ", rotation=90, fontsize=7, color="grey",
                        va="bottom", ha="right", transform=ax.get_xaxis_transform())
            for i, (c, text) in enumerate(verdict):
                # top right: where step times that fall with the rate leave room
                ax.text(0.97, 0.96 - 0.06 * i, text, transform=ax.transAxes, fontsize=7, color=c, ha="right", va="top")
            ax.set_xlabel("link rate, Mbit/s each way (log)")
            ax.set_ylabel("step time, ms (log)")
            ax.set_title(f"{size} {mesh}, 2 hosts")
            ax.grid(True, which="both", alpha=0.25)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=4, frameon=False)
        machine = next((p.machine for p in points if p.machine), "")
        fig.suptitle(f"Step time against the link's rate ({size}; {machine}; median and IQR)", fontsize=10)
        fig.tight_layout(rect=(0, 0.1, 1, 1))
        path = out / f"sweep-{size}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write(paths: list[str | os.PathLike], out: str | os.PathLike, ceiling: str | os.PathLike | None = None) -> Path:
    """``sweep.md`` (the verdicts, the planner's record, every point), ``sweep.json`` and the plots."""
    points = load(paths)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    top, delay = None, None
    if ceiling:
        try:
            measured = json.loads(Path(ceiling).read_text())
            top, delay = float(measured["sustained_bits_per_s"]), measured.get("delay")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise MTCoreError(f"sweep: --ceiling {ceiling}: {e}") from None
    rows = judged(points)
    figures = plot(points, out, top)
    held = [r for r in rows if r["planner_held"]]
    within = [r for r in held if r["planner_within"]]
    lines = ["# The link sweep", ""]
    if top:
        lines += [f"The emulated link sustained {top / 1e6:.0f} Mbit/s each way with both cores computing, one TCP "
                  "segment a frame: the top of the grid below it (points above it ran with segmentation offload on).",
                  ""]
    if delay:
        lines += [f"Links with a delay: {delay}", ""]
    lines += ["## Was the network the bottleneck?", "", *verdicts(points), "",
              "## The planner against measurement", "",
              f"Where communication was at least half the step ({len(held)} of {len(rows)} points), the planner's "
              f"step is within {PLANNER_TOLERANCE:.0%} of the measured median at {len(within)}"
              + (": " + ", ".join(f"{r['size']} {r['mesh']} {r['framework']} at {r['rate'] / 1e6:g} Mbit/s "
                                  f"({r['planner_ratio']:.2f})" for r in held if not r["planner_within"])
                 + " are not." if len(within) < len(held) else "."), "",
              f"On each mesh's own arithmetic (its step over loopback) instead of one device's by FLOP share, the "
              f"planner's communication lands within {PLANNER_TOLERANCE:.0%} at "
              f"{sum(1 for r in held if r['planner_on_loopback_within'])} of those {len(held)} points.", "",
              "## Every point", "", table(rows), "", *[f"![{f.stem}]({f.name})" for f in figures], ""]
    (out / "sweep.md").write_text("\n".join(lines))
    (out / "sweep.json").write_text(json.dumps({"ceiling_bits_per_s": top, "points": rows}, indent=1))
    return out / "sweep.md"


def bottleneck(name: str, transport: str, step_s: float | None, arithmetic_s: float | None,
               wire_bytes: float | None, rate: float | None) -> str:
    """Whether the network was the bottleneck of a run (``name``: its framework and mesh) at the
    rate it ran, in one sentence for ``report.md``: its communication (the step less its
    arithmetic: one device's step by FLOP share) against that arithmetic, as the sweep judges a
    point, and how much of the step the link was busy with the step's bytes on the wire."""
    if wire_bytes is None:
        return f"{name}: no network was crossed ({transport})."
    busy = wire_bytes * 8 / rate if rate else None
    link = (f"the link was busy {busy * 1e3:,.0f} ms of it ({busy / step_s:.0%}) with the step's "
            f"{wire_bytes / 1e6:,.2f} MB on the wire" if busy is not None and step_s else
            f"{wire_bytes / 1e6:,.2f} MB a step crossed a link of unknown rate")
    if step_s is None or arithmetic_s is None:
        verdict = ("the network was the bottleneck" if busy is not None and step_s and busy > step_s / 2 else
                   "the network's share cannot be told without a one-device run to weigh the arithmetic")
        return f"{name} ({transport}): {verdict}; {link}."
    communication = step_s - arithmetic_s
    bound = network_bound(step_s, arithmetic_s)
    words = "was" if bound else "was not"
    waiting = (" (the rest waited on messages, not bytes)" if bound and busy is not None and busy < communication / 2
               else "")
    return (f"{name} ({transport}): the network {words} the bottleneck: of its {step_s * 1e3:,.0f} ms step, "
            f"arithmetic took about {arithmetic_s * 1e3:,.0f} ms (one device's step by its share of the FLOPs) and "
            f"communication the other {max(communication, 0) * 1e3:,.0f} ms; {link}{waiting}.")
