"""Reading a compare directory and the statistics the report states: the runs' ``metrics.json``
(``load_runs``), the per-process rank files (``load_rank_files``), and what they add up to (speed-up,
loss agreement, the scaling and parallelism rows, time to a loss). No markdown, no plots.

Speed is compared on epochs 2..N only: the first epoch holds compilation (reported on its own).
Epochs ran interleaved in one process, so each epoch gives a paired ratio of the two frameworks'
times; the speed-up is the median of those ratios, with their min-max spread.

A new report section reads and computes here; its markdown goes to ``report``, its drawing to ``plots``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mtcore.errors import MTCoreError
from mtcore.files import read_json
from mtcore.perf.timing import ratio_stats


def load_runs(directory: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """``{framework: metrics}`` for every ``*/metrics.json`` under ``directory``."""
    directory = Path(directory)
    runs = {}
    for path in sorted(directory.glob("*/metrics.json")):
        runs[path.parent.name] = read_json(path)
    if not runs:
        raise MTCoreError(f"{directory}: no */metrics.json (run `mtcore compare --out {directory}` first)")
    for name, m in runs.items():
        if not isinstance(m, dict) or not isinstance(m.get("epochs"), list):
            raise MTCoreError(f"{directory / name / 'metrics.json'}: not an mtcore metrics file")
    return runs


def steady(metrics: dict[str, Any], key: str) -> np.ndarray:
    """``key`` of epochs 2..N (all epochs when there is only one)."""
    epochs = metrics["epochs"]
    chosen = epochs[1:] if len(epochs) > 1 else epochs
    return np.array([e[key] for e in chosen], dtype=np.float64)


def speedup(runs: dict[str, dict[str, Any]], slow: str, fast: str) -> dict[str, float] | None:
    """How many times faster ``fast`` trained than ``slow``: per-epoch paired time ratios
    (epochs 2..N, both frameworks did those epochs), their median and spread."""
    a, b = runs[slow]["epochs"], runs[fast]["epochs"]
    pairs = [(x["training_time"], y["training_time"]) for x, y in zip(a, b, strict=False)][1:]
    if not pairs:
        return None
    stats = ratio_stats(*zip(*pairs, strict=True))
    return {"median": stats["median"], "min": stats["min"], "max": stats["max"], "epochs": stats["n"]}


def loss_agreement(runs: dict[str, dict[str, Any]], steps: int = 20) -> float | None:
    """Largest relative difference of two frameworks' training losses over the first ``steps``."""
    names = list(runs)
    if len(names) != 2:
        return None
    first = []
    for name in names:
        losses = [x for e in runs[name]["epochs"] for x in e["step_losses"]][:steps]
        first.append(np.array(losses))
    n = min(len(first[0]), len(first[1]))
    if n == 0:
        return None
    a, b = first[0][:n], first[1][:n]
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


MIN_TIMED_EPOCHS = 3  # paired epoch ratios needed before a spread, and so a winner, is claimed


def speed_claim(runs: dict[str, dict[str, Any]]) -> tuple[str, str | None]:
    """``(sentence, short title)`` on which framework trained faster, claiming a winner only with
    at least ``MIN_TIMED_EPOCHS`` paired timed epochs (title None: nothing to claim)."""
    names = list(runs)
    if len(names) != 2:
        return "", None
    means = {n: steady(runs[n], "training_time").mean() for n in names}
    slow, fast = sorted(names, key=lambda n: -means[n])
    s = speedup(runs, slow, fast)
    if s is None or s["epochs"] < MIN_TIMED_EPOCHS:
        n = 0 if s is None else s["epochs"]
        return (f"**No winner is named**: {n} timed epoch{'s' if n != 1 else ''} after the first (which holds "
                f"compilation) give{'s' if n == 1 else ''} {n} paired time ratio{'s' if n != 1 else ''}; a spread needs at least "
                f"{MIN_TIMED_EPOCHS} (run --epochs {MIN_TIMED_EPOCHS + 1} or more)."), None
    return (f"**{fast} trained {s['median']:.2f}x faster than {slow}** (median of {s['epochs']} paired epoch-time "
            f"ratios, epochs 2..N run interleaved; spread {s['min']:.2f}x-{s['max']:.2f}x).",
            f"{fast} {s['median']:.2f}x faster than {slow} (median of {s['epochs']} paired epochs, "
            f"{s['min']:.2f}-{s['max']:.2f}x)")


def _torch_mode(run: dict[str, Any]) -> str:
    """How torch ran: said wherever a speed is, since torch.compile changes it (JAX always compiles)."""
    mode = run.get("compile", "none")
    return "torch eager" if mode == "none" else f"torch.compile {mode}"


# ---- scaling: one device against many, from the rank files alone -------------------------------------
def load_rank_files(directory: str | os.PathLike) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """``{run: {epoch: [one record per process]}}`` from every ``*/rank{r}_results_epoch{e}.json``."""
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for path in sorted(Path(directory).glob("*/rank*_results_epoch*.json")):
        record = read_json(path)
        runs.setdefault(path.parent.name, {}).setdefault(int(record["epoch"]), []).append(record)
    return runs


def scaling_rows(directory: str | os.PathLike, scaling: str = "weak") -> list[dict[str, Any]]:
    """One row per run: epoch time (mean over ranks) and system tokens/s (sum over ranks) over
    epochs 2..N (the first holds compilation), mean and sd; speed-up and efficiency against the
    same framework's one-device run (weak: X_N / (N X_1) in tokens/s; strong: T_1 / (N T_N)).
    With the costs the runs recorded: what the most loaded device held (measured, predicted), the
    bytes it sent a step and the bandwidth they needed over each epoch (mean and sd), and the last
    epoch's validation loss and BLEU."""
    rows = []
    for name, epochs in load_rank_files(directory).items():
        chosen = sorted(epochs)[1:] or sorted(epochs)
        complete = [e for e in chosen if len(epochs[e]) == epochs[e][0]["processes"]]
        if not complete:
            continue
        first = epochs[complete[0]][0]
        times = np.array([np.mean([r["training_time"] for r in epochs[e]]) for e in complete])
        tps = np.array([np.sum([r["tokens_per_sec"] for r in epochs[e]]) for e in complete])
        # What a device holds and sends: the most loaded rank's (ranks differ where a split is uneven).
        costs = [r["costs"] for e in complete for r in epochs[e] if r.get("costs")]
        sent, sent_predicted = (_most(epochs, complete, key) for key in ("sent_bytes", "sent_bytes_predicted"))
        steps = np.array([epochs[e][0].get("steps") or np.nan for e in complete], dtype=np.float64)
        bandwidth = sent / times  # what a device's links carried while it trained
        last = epochs[max(epochs)][0]
        wire = [[r["wire"] for r in epochs[e] if (r.get("wire") or {}).get("crossed_network")] for e in complete]
        wired = [w for w in wire if w]
        rates = {h.get("link_rate_bits_per_s") for w in wired for h in w}
        rows.append({"transport": transport(first, wire[0] if wire else []),
                     "step_s": _finite(np.mean(times / steps)),
                     "link_rate": rates.pop() if len(rates) == 1 else None,
                     "wire_per_step": _finite(np.mean([max(h["tx_bytes_per_step"] for h in w) for w in wired]))
                     if wired else None,
                     "wire_per_step_predicted": (wired[-1][0].get("predicted_per_step") or {}).get("tx_bytes")
                     if wired else None,
                     "utilisation": _finite(np.mean([max(h["utilisation"] or 0 for h in w) for w in wired]))
                     if wired else None,
                     "run": name, "framework": first["framework"], "device": first["device"],
                     "world_size": first["world_size"], "processes": first["processes"],
                     "mesh": first.get("mesh") or f"data:{first['world_size']}",
                     "global_batch": first["global_batch"], "threads": first.get("threads"),
                     "epochs": complete, "time_mean": times.mean(), "time_sd": _sd(times),
                     "tps_mean": tps.mean(), "tps_sd": _sd(tps),
                     "held": max((c["held_bytes"] for c in costs), key=lambda h: h["total"], default=None),
                     "held_predicted": costs[0]["held_bytes_predicted"] if costs else None,
                     "step_memory": max((c["step_memory_bytes"] or 0 for c in costs), default=0) or None,
                     "step_memory_counts": costs[0]["step_memory_counts"] if costs else None,
                     "sent_per_step": _finite(np.mean(sent / steps)),
                     "sent_per_step_predicted": _finite(np.mean(sent_predicted / steps)),
                     "bandwidth_mean": _finite(bandwidth.mean()), "bandwidth_sd": _finite(_sd(bandwidth)),
                     "validation_loss": last.get("validation_loss"), "bleu": last.get("bleu"), "last_epoch": max(epochs)})
    for row in rows:
        base = next((r for r in rows if r["framework"] == row["framework"] and r["world_size"] == 1), None)
        n = row["world_size"]
        if base is None:
            row["speedup"] = row["efficiency"] = None
        elif scaling == "strong":
            row["speedup"] = base["time_mean"] / row["time_mean"]
            row["efficiency"] = row["speedup"] / n
        else:
            row["speedup"] = row["tps_mean"] / base["tps_mean"]
            row["efficiency"] = row["speedup"] / n
    return sorted(rows, key=lambda r: (r["framework"], r["world_size"], r["mesh"]))


def transport(record: dict[str, Any], wire: list[dict[str, Any]]) -> str:
    """How a run's devices talked, in a few words, from a rank file and its hosts' wire records:
    one device, one process's host devices (a memory copy), processes over loopback, or hosts
    over a network (with the link's rate where one is known)."""
    from mtcore.hosts import transport as said

    if not wire and "wire" not in record and record["processes"] > 1 and record["world_size"] > 1:
        return "processes"  # a rank file from before the wire was recorded
    rates = {w.get("link_rate_bits_per_s") for w in wire}
    return said(record["world_size"], record["processes"], len(wire), rates.pop() if len(rates) == 1 else None)


def _most(epochs: dict[int, list[dict[str, Any]]], chosen: list[int], key: str) -> np.ndarray:
    """Per epoch, the most any rank recorded of ``key``; NaN where a rank file lacks it."""
    return np.array([max(r[key] for r in epochs[e]) if all(key in r and "steps" in r for r in epochs[e]) else np.nan
                     for e in chosen], dtype=np.float64)


def _sd(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _finite(x: float) -> float | None:
    """None for what the rank files did not record (runs from before a field was kept)."""
    return float(x) if np.isfinite(x) else None


def time_to_loss(runs: dict[str, dict[str, Any]], directory: Path, target: float | None = None):
    """``(target, {run: seconds of training until validation loss <= target, or None})``; the
    target defaults to the best validation loss every run reaches."""
    ranks = load_rank_files(directory)
    if target is None:
        bests = [min(e["validation_loss"] for e in m["epochs"]) for m in runs.values() if m["epochs"]]
        if not bests:
            return None, {}
        target = max(bests)
    out = {}
    for name, m in runs.items():
        elapsed, reached = 0.0, None
        for e in m["epochs"]:
            per_rank = ranks.get(name, {}).get(e["epoch"])
            elapsed += np.mean([r["training_time"] for r in per_rank]) if per_rank else e["training_time"]
            if e["validation_loss"] <= target + 1e-12:
                reached = elapsed
                break
        out[name] = reached
    return target, out


# ---- where a step's time went: the traced steps (--profile) ------------------------------------------
def breakdown_rows(directory: str | os.PathLike) -> list[dict[str, Any]]:
    """One row per run and process that traced steps (``--profile``): the median of each part over
    its traced steps (``mtcore.perf.trace``), the trace's path (relative to ``directory``), and,
    over emulated links of a known rate, what ``mtcore plan`` predicts the step's collectives take
    on them (``planned_communication``)."""
    rows = []
    directory = Path(directory)
    for name, epochs in load_rank_files(directory).items():
        traced = next((epochs[e] for e in sorted(epochs) if any(r.get("profile") for r in epochs[e])), [])
        wire = [r["wire"] for r in traced if (r.get("wire") or {}).get("crossed_network")]
        cfg = _model_config(directory / name) if traced else None
        for r in sorted((r for r in traced if (r.get("profile") or {}).get("median")), key=lambda r: r["process"]):
            p = r["profile"]
            rows.append({**_breakdown(directory / name, r), "run": name, "framework": r["framework"], "device": r["device"],
                         "mesh": r.get("mesh") or f"data:{r['world_size']}", "process": r["process"],
                         "processes": r["processes"], "epoch": p["epoch"], "steps_traced": p["steps_traced"],
                         "trace": f"{name}/{p['trace']}", "transport": transport(r, wire),
                         "planned_communication": planned_communication(r, cfg)})
    return rows


def _breakdown(run: Path, record: dict[str, Any]) -> dict[str, Any]:
    """The median traced step of a rank file's profile, computed again from its trace where the
    trace is there (the reader and the framework's account of its events as they are now, on the
    step clocks the run recorded), else as the run stored it."""
    from mtcore.backend import framework
    from mtcore.perf.trace import breakdown, read_trace, summary

    p = record["profile"]
    path = run / p["trace"]
    if not path.is_file() or not p["steps"]:
        return p["median"]
    try:  # a framework not installed here, a trace cut short: the run's own account stands
        return summary(breakdown(read_trace(path), framework(record["framework"]).trace_kind,
                                 clock=[s["step"] for s in p["steps"]]))
    except MTCoreError:
        return p["median"]


def _model_config(run: Path):
    from mtcore.config import ModelConfig

    path = run / "run.json"
    return ModelConfig(**read_json(path)["model_config"]) if path.is_file() else None


def planned_communication(record: dict[str, Any], cfg) -> float | None:
    """Seconds ``mtcore plan`` gives the recorded step's collectives over the rank's emulated link
    (the engine's framed bytes over the rate tc shaped it to; no latency term): None off such a link."""
    from mtcore.backend import framework
    from mtcore.costs import plan
    from mtcore.parallel import MeshShape

    wire, costs = record.get("wire") or {}, record.get("costs") or {}
    rate = wire.get("link_rate_bits_per_s")
    # A rate tc shaped is the link's; an unshaped veth reports a speed its host's core cannot reach.
    shaped = str(wire.get("link_rate_source", "")).startswith("shaped")
    if cfg is None or not (wire.get("crossed_network") and rate and shaped and costs.get("batch_shape")):
        return None
    fw = framework(record["framework"])
    row = plan(cfg, [MeshShape.parse(record["mesh"])], *costs["batch_shape"],
               bandwidth=rate / 8, engine=fw.collective_engine(record["device"]), layout=fw.LAYOUT,
               device=record["device"])[0]
    return row["communication_s"]
