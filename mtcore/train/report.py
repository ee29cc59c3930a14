"""``report.md`` and PNG plots from the ``metrics.json`` files ``mtcore compare`` wrote.

Speed is compared on epochs 2..N only: the first epoch holds compilation (reported on its own).
Epochs ran interleaved in one process, so each epoch gives a paired ratio of the two frameworks'
times; the speed-up is the median of those ratios, with their min-max spread.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mtcore.errors import MTCoreError
from mtcore.files import read_json, write_text
from mtcore.perf.timing import ratio_stats

PLOTS = {"time": "epoch_time.png", "throughput": "tokens_per_sec.png", "loss": "loss.png", "quality": "bleu.png"}


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


def _process(run: dict[str, Any]) -> str:
    """The process set-up the run recorded (mtcore.perf.setup): the compile cache, which decides
    what the first epoch's compile costs, and the fp32 matmul precision, the same in both."""
    process = run.get("process") or {}
    if "compile_cache" not in process:
        return "process set-up not recorded"
    precision = {fw["fp32_matmul_precision"] for fw in process.get("frameworks", {}).values()}
    return (f"compile cache {process['compile_cache']} (both frameworks)"
            + (f", fp32 matmuls {precision.pop()}" if len(precision) == 1 else ""))


def _setting(run: dict[str, Any]) -> str:
    return (f"model {run['model']}, {run.get('device', 'cpu')} x{run.get('devices', 1)}, batch {run['batch_size']}, "
            f"{run['precision']}, {_torch_mode(run)}")


def _plots(runs: dict[str, dict[str, Any]], directory: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    names = list(runs)
    # As many runs as there are (frameworks x device counts or meshes): the palette and styles repeat.
    palette = ("tab:orange", "tab:blue", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray")
    colors = {n: palette[i % len(palette)] for i, n in enumerate(names)}
    # Line styles as well as colours: where two curves coincide (they should) both stay visible.
    styles = {n: ("-", "--", ":", "-.")[i % 4] for i, n in enumerate(names)}
    thousands = FuncFormatter(lambda x, _: f"{x:,.0f}")
    _, claim = speed_claim(runs)
    setting = _setting(runs[names[0]]["run"])

    def bars(key: str, ylabel: str, what: str, file: str, formatter=None):
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        values = [steady(runs[n], key) for n in names]
        spread = all(len(v) > 1 for v in values)
        ax.bar(names, [v.mean() for v in values], yerr=[v.std(ddof=1) for v in values] if spread else None,
               capsize=8, color=[colors[n] for n in names])
        if formatter is not None:
            ax.yaxis.set_major_formatter(formatter)
        ax.set_ylabel(ylabel)
        n = min(len(v) for v in values)
        bars_are = (f"bars: mean of epochs 2..N ({n}), error bars: ± 1 sd" if spread else
                    "one timed epoch: no spread (no error bars)")
        fig.suptitle(f"{what}\n{claim or 'too few timed epochs to name a faster framework'}", fontsize=10)
        ax.set_title(f"{setting}; {bars_are}", fontsize=8)
        fig.tight_layout()
        fig.savefig(directory / file, dpi=120)
        plt.close(fig)

    bars("training_time", "seconds per epoch", "Time per epoch", PLOTS["time"])
    bars("tokens_per_sec", "tokens / s", "Training throughput", PLOTS["throughput"], thousands)

    fig, ax = plt.subplots(figsize=(7, 4))
    for n in names:
        losses = [x for e in runs[n]["epochs"] for x in e["step_losses"]]
        ax.plot(np.arange(1, len(losses) + 1), losses, styles[n], label=f"{n} train (label-smoothed, dropout)",
                color=colors[n], alpha=0.8, lw=1.2)
        ends = np.cumsum([e["steps"] for e in runs[n]["epochs"]])
        ax.plot(ends, [e["validation_loss"] for e in runs[n]["epochs"]], "o" + styles[n], color=colors[n],
                mfc="none" if n != names[0] else colors[n], label=f"{n} validation (plain cross-entropy)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"Loss ({setting})", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(directory / PLOTS["loss"], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for n in names:
        epochs = [0] + [e["epoch"] for e in runs[n]["epochs"]]
        initial = runs[n].get("initial") or {}
        ax.plot(epochs, [initial.get("bleu")] + [e["bleu"] for e in runs[n]["epochs"]], "o" + styles[n],
                color=colors[n], label=f"{n} BLEU")
        ax.plot(epochs, [initial.get("chrf")] + [e["chrf"] for e in runs[n]["epochs"]], "s" + styles[n],
                color=colors[n], mfc="none", label=f"{n} chrF")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (0: before training)")
    ax.set_ylabel("score (validation)")
    ax.set_title(f"Translation quality ({setting})", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(directory / PLOTS["quality"], dpi=120)
    plt.close(fig)
    return PLOTS


def _f(x, digits=2):
    return "-" if x is None else f"{x:,.{digits}f}"


def write_report(directory: str | os.PathLike) -> Path:
    """Write ``report.md`` and the plots beside the runs; returns the report's path. Where only
    rank files are left (metrics.json lost with a node), the scaling part is drawn from them alone."""
    directory = Path(directory)
    settings = read_json(directory / "compare.json") if (directory / "compare.json").is_file() else {}
    if not list(directory.glob("*/metrics.json")) and load_rank_files(directory):
        lines = ["# mtcore compare (from the rank files alone: no metrics.json)",
                 *(parallelism_section(directory, {}, settings) if settings.get("meshes") else
                   scaling_section(directory, {}, settings.get("scaling", "weak"), settings.get("target_loss"),
                                   always=True))]
        path = directory / "report.md"
        write_text(path, "\n".join(lines) + "\n")
        return path
    runs = load_runs(directory)
    many = len(settings.get("devices") or [1]) > 1
    plots = _plots(runs, directory)
    names = list(runs)
    first = runs[names[0]]["run"]
    lines = [
        "# mtcore compare",
        "",
        f"Model `{first['model']}` ({first['num_params']:,} parameters), data `{first['data']}` "
        f"({first['train_pairs']:,} training pairs), batch {first['batch_size']}, lr {first['lr']}, "
        f"{first['precision']}, {_torch_mode(first)}, seed {first['seed']}, {len(runs[names[0]]['epochs'])} epochs; "
        f"{_process(first)}. "
        "Same initial weights "
        "and the same batches in every framework; " + ("each run in turn (see Scaling)." if many else
                                                       "epochs interleaved in one process."),
        "",
    ]
    lines += _model_notes(first)
    for note in first.get("notes") or []:
        lines.append(f"- note: {note}")
    heading = ("## Speed (epochs 2..N; epoch 1 holds compilation)" if len(runs[names[0]]["epochs"]) > 1 else
               "## Speed (one epoch only: it includes compilation; run 2 or more for steady-state figures)")
    lines += ["", heading, "",
              "| framework | timed epochs | s / epoch (mean ± sd) | tokens/s (mean ± sd) | epoch 1 s | first step s |",
              "| --- | --- | --- | --- | --- | --- |"]
    for n in names:
        t, tps = steady(runs[n], "training_time"), steady(runs[n], "tokens_per_sec")
        e1 = runs[n]["epochs"][0] if runs[n]["epochs"] else {}

        def sd(v, digits):  # one value has no spread: say so rather than print 0
            return f"{v.std(ddof=1):,.{digits}f}" if len(v) > 1 else "n/a"

        lines.append(f"| {n} | {len(t)} | {t.mean():.2f} ± {sd(t, 2)} | {tps.mean():,.0f} ± {sd(tps, 0)} | "
                     f"{_f(e1.get('training_time'))} | {_f(e1.get('first_step_time'))} |")
    if settings.get("meshes"):
        lines += parallelism_section(directory, runs, settings)
    elif many:
        lines += scaling_section(directory, runs, settings.get("scaling", "weak"), settings.get("target_loss"))
    elif len(names) == 2:
        lines += ["", speed_claim(runs)[0]]
        agree = loss_agreement(runs)
        if agree is not None:
            lines += ["", f"Training losses of the first 20 steps differ by at most {100 * agree:.2f}% "
                      "(relative) between the two frameworks."]
    lines += ["", "## Quality (validation, then test)", "",
              f"The train loss is label-smoothed (epsilon {_label_smoothing()}) and measured with dropout on, over "
              "the epoch's steps; the validation and test losses are plain cross-entropy without dropout. The "
              "train loss therefore sits above the validation loss by design, not because something is wrong. "
              "BLEU and chrF (sacrebleu) score greedy translations.", "",
              "| framework | epoch | train loss | validation loss | token accuracy | BLEU | chrF |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for n in names:
        init = runs[n].get("initial") or {}
        lines.append(f"| {n} | 0 | - | {_f(init.get('validation_loss'), 3)} | {_f(init.get('token_accuracy'), 3)} | "
                     f"{_f(init.get('bleu'), 1)} | {_f(init.get('chrf'), 1)} |")
        for e in runs[n]["epochs"]:
            lines.append(f"| {n} | {e['epoch']} | {e['train_loss']:.3f} | {e['validation_loss']:.3f} | "
                         f"{e['token_accuracy']:.3f} | {_f(e['bleu'], 1)} | {_f(e['chrf'], 1)} |")
    lines += ["", "| framework | test loss | test token accuracy | test BLEU | test chrF | status |",
              "| --- | --- | --- | --- | --- | --- |"]
    for n in names:
        t = runs[n].get("test") or {}
        lines.append(f"| {n} | {_f(t.get('test_loss'), 3)} | {_f(t.get('test_token_accuracy'), 3)} | "
                     f"{_f(t.get('test_bleu'), 1)} | {_f(t.get('test_chrf'), 1)} | {runs[n].get('status')} |")
    lines += _examples(runs)
    lines += ["", "## Plots", ""]
    lines += [f"![{key}]({file})" for key, file in plots.items()]
    lines += ["", "Devices: " + "; ".join(f"{n}: {', '.join(runs[n]['run'].get('devices_used') or [])}" for n in names), ""]
    path = directory / "report.md"
    write_text(path, "\n".join(lines))
    return path


def _label_smoothing() -> float:
    from mtcore.config import TrainConfig

    return TrainConfig().label_smoothing


def _model_notes(run: dict[str, Any]) -> list[str]:
    """Where the trained model differs from its preset (a tokenizer with fewer pieces than the
    preset's vocabulary shrinks the embedding), say so and why, with both parameter counts."""
    from mtcore.config import PRESETS

    preset = PRESETS.get(run["model"])
    cfg = run.get("model_config") or {}
    if preset is None or cfg.get("vocab_size") in (None, preset.vocab_size):
        return []
    asked = run.get("vocab_size") or preset.vocab_size
    return [f"- note: the tokenizer trained on this data has {cfg['vocab_size']:,} pieces (asked for {asked:,}: "
            f"SentencePiece stops where the corpus has no more to merge), so the model's vocabulary is "
            f"{cfg['vocab_size']:,}, not the preset's {preset.vocab_size:,}, and it has {run['num_params']:,} "
            f"parameters, not the preset's {preset.num_params():,}."]


def _examples(runs: dict[str, dict[str, Any]], limit: int = 3) -> list[str]:
    """Example translations of the last epoch: the same validation sentences in every framework."""
    names = list(runs)
    examples = {n: (runs[n]["epochs"][-1].get("examples") if runs[n]["epochs"] else None) or [] for n in names}
    count = min((len(e) for e in examples.values()), default=0)
    if not count:
        return []

    def cell(text: str) -> str:
        return text.replace("|", "\\|") if text.strip() else "*(empty: eos first)*"

    lines = ["", f"Example translations (validation, after epoch {runs[names[0]]['epochs'][-1]['epoch']}, greedy):",
             "", "| source | reference | " + " | ".join(names) + " |", "| --- | --- | " + " | ".join("---" for _ in names) + " |"]
    for i in range(min(count, limit)):
        first = examples[names[0]][i]
        lines.append(f"| {cell(first['source'])} | {cell(first['reference'])} | "
                     + " | ".join(cell(examples[n][i]["hypothesis"]) for n in names) + " |")
    return lines


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
        rows.append({"run": name, "framework": first["framework"], "device": first["device"],
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


def _scaling_plots(rows: list[dict[str, Any]], directory: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {"time": "training_time_comparison.png", "throughput": "tokens_per_second_comparison.png"}
    labels = [f"{r['framework']}\n{r['world_size']} dev" for r in rows]
    palette = {"torch": "tab:orange", "jax": "tab:blue", "hf": "tab:green"}
    for key, mean, sd, ylabel, title in (
        ("time", "time_mean", "time_sd", "seconds per epoch", "Training time per epoch (mean over ranks; ± sd over epochs)"),
        ("throughput", "tps_mean", "tps_sd", "tokens / s", "System throughput (sum over ranks; ± sd over epochs)"),
    ):
        fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 4))
        bars = ax.bar(labels, [r[mean] for r in rows], yerr=[r[sd] for r in rows], capsize=6,
                      color=[palette.get(r["framework"], "tab:gray") for r in rows])
        ax.bar_label(bars, labels=[f"{r[mean]:,.0f}" if r[mean] >= 100 else f"{r[mean]:.2f}" for r in rows],
                     label_type="center", color="white", fontweight="bold")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        fig.tight_layout()
        fig.savefig(directory / files[key], dpi=120)
        plt.close(fig)
    return files


def scaling_section(directory: Path, runs: dict[str, dict[str, Any]], scaling: str,
                    target: float | None, always: bool = False) -> list[str]:
    """The report's lines on one device against many (empty when every run had one device)."""
    rows = scaling_rows(directory, scaling)
    if not rows or (all(r["world_size"] == 1 for r in rows) and not always):
        return []
    files = _scaling_plots(rows, directory)
    what = ("weak scaling: the per-device batch is fixed, the global batch grows with the devices; "
            "efficiency = tokens/s at N / (N x tokens/s at 1)" if scaling == "weak" else
            "strong scaling: the global batch is fixed; efficiency = T_1 / (N x T_N) in epoch time")
    lines = ["", "## Scaling (epochs 2..N; time: mean over ranks, tokens/s: sum over ranks)", "", f"{what}.", "",
             "| framework | devices | mesh | processes | global batch | s / epoch (mean ± sd) | tokens/s (mean ± sd) | "
             "speed-up | efficiency | one device was |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        one = _one_device(r)
        lines.append(f"| {r['framework']} | {r['world_size']} | {r['mesh']} | {r['processes']} | {r['global_batch']} | "
                     f"{r['time_mean']:.2f} ± {r['time_sd']:.2f} | {r['tps_mean']:,.0f} ± {r['tps_sd']:,.0f} | "
                     f"{_f(r['speedup'])}x | {_f(r['efficiency'])} | {one} |")
    target, reached = time_to_loss(runs, directory, target) if runs else (None, {})
    if target is not None:
        lines += ["", f"Time to validation loss {target:.3f}: " + "; ".join(
            f"{name} {'not reached' if s is None else f'{s:.1f} s'}" for name, s in reached.items()) + "."]
    lines += ["", "Runs at different device counts ran one after another, not interleaved: machine drift between "
              "them is not cancelled.", "", *[f"![{k}]({v})" for k, v in files.items()]]
    return lines


# ---- parallelism: every framework on every mesh ------------------------------------------------------
PARALLELISM_PLOTS = {"time": "parallelism_time.png", "memory": "parallelism_memory.png",
                     "communication": "parallelism_communication.png"}


def _mb(n: float | None, digits: int = 2) -> str:
    return "-" if n is None else f"{n / 1e6:,.{digits}f}"


def _one_device(r: dict[str, Any]) -> str:
    """What one device of a run was: on a CPU, a share of the cores."""
    cores = len((r["threads"] or {}).get("cores") or [])
    per_device = cores / (r["world_size"] // r["processes"])
    return ("a GPU" if r["device"] == "gpu" else "a TPU core" if r["device"] == "tpu" else
            f"{per_device:g} CPU core(s)" + (", a JAX host device" if r["framework"] == "jax" else
                                               ", a gloo rank" if r["processes"] > 1 else ""))


def parallelism_section(directory: Path, runs: dict[str, dict[str, Any]], settings: dict[str, Any]) -> list[str]:
    """The report's lines on every framework on every mesh (``mtcore compare --mesh``): speed,
    what a device holds, what a step moves and the bandwidth it needed, and the quality reached."""
    rows = scaling_rows(directory, "strong")
    if not rows:
        return []
    order = {m: i for i, m in enumerate(settings.get("meshes") or [])}
    rows.sort(key=lambda r: (order.get(r["mesh"], len(order)), r["framework"]))
    caption = _parallelism_caption(rows, runs)
    files = _parallelism_plots(rows, directory, caption)
    lines = ["", "## Parallelism (epochs 2..N; time: mean over ranks, tokens/s: sum over ranks)", "",
             f"{caption}. Every mesh trains on the same global batches from the same weights; speed-up is the "
             "framework's data:1 epoch time over this mesh's. A device holds trained parameters and AdamW's two "
             "moments, measured from its own shards (the most loaded device), predicted from the shapes and the "
             "mesh; the step's bytes are what one device sends with ring algorithms for the collectives one step "
             "ran, recorded on one step (JAX: its compiled HLO; torch: its dispatcher) and carried to each "
             "batch's shape by the prediction; the bandwidth is an epoch's bytes over its time "
             "(docs/parallelism.md says what each counts).", "",
             "| framework | mesh | s / epoch (mean ± sd) | tokens/s (mean ± sd) | speed-up | held per device MB "
             "(predicted) | step memory MB | sent per step MB (predicted) | bandwidth needed MB/s (mean ± sd) | "
             "validation loss | BLEU |",
             "|" + " --- |" * 11]
    for r in rows:
        held, want = r["held"], r["held_predicted"]
        speedup = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"  # none without the framework's data:1
        lines.append(
            f"| {r['framework']} | {r['mesh']} | {r['time_mean']:.2f} ± {r['time_sd']:.2f} | "
            f"{r['tps_mean']:,.0f} ± {r['tps_sd']:,.0f} | {speedup} | "
            f"{_mb(held and held['total'])} ({_mb(want and want['total'])}) | {_mb(r['step_memory'])} | "
            f"{_mb(r['sent_per_step'])} ({_mb(r['sent_per_step_predicted'])}) | "
            f"{_mb(r['bandwidth_mean'])} ± {_mb(r['bandwidth_sd'])} | {_f(r['validation_loss'], 3)} | "
            f"{_f(r['bleu'], 1)} |")
    counts = {r["step_memory_counts"] for r in rows if r["step_memory_counts"]}
    lines += ["", "Step memory: " + ("; ".join(sorted(f"{fw}: {c}" for fw, c in {
        (r["framework"], r["step_memory_counts"]) for r in rows if r["step_memory_counts"]})) if counts else "not recorded") + ".",
              "", "Timings of strategies on shared CPU cores say little about GPUs: read them as what this machine did. "
              "Meshes ran one after another, not interleaved: machine drift between them is not cancelled."]
    target, reached = time_to_loss(runs, directory, settings.get("target_loss")) if runs else (None, {})
    if target is not None:
        lines += ["", f"Time to validation loss {target:.3f}: " + "; ".join(
            f"{name} {'not reached' if t is None else f'{t:.1f} s'}" for name, t in reached.items()) + "."]
    return lines + ["", *[f"![{k}]({v})" for k, v in files.items()]]


def _parallelism_caption(rows: list[dict[str, Any]], runs: dict[str, dict[str, Any]]) -> str:
    first = next(iter(runs.values()))["run"] if runs else {}
    epochs = min(len(r["epochs"]) for r in rows)
    model = f"model {first['model']} ({first['num_params']:,} parameters)" if first else "model ?"
    device = rows[0]["device"]
    return (f"{model}, {device}, global batch {rows[0]['global_batch']}, {first.get('precision', '?')}, "
            f"{_torch_mode(first) if first else ''}; {epochs} timed epoch{'s' if epochs != 1 else ''} per run; "
            f"a device: {_one_device(rows[0]).split(',')[0]}")


def _short(x: float) -> str:
    """A bar's value in three significant figures or so (12,345; 123; 12.3; 1.23; 0.123)."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _parallelism_plots(rows: list[dict[str, Any]], directory: Path, caption: str) -> dict[str, str]:
    """Bars per mesh, the frameworks side by side: epoch time (± sd over epochs), what a device
    holds (measured; the prediction as a black tick), the bytes a step sends and the bandwidth
    they needed (± sd over epochs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meshes = list(dict.fromkeys(r["mesh"] for r in rows))
    frameworks = list(dict.fromkeys(r["framework"] for r in rows))
    palette = {"torch": "tab:orange", "jax": "tab:blue", "hf": "tab:green"}
    width = 0.8 / len(frameworks)
    x = np.arange(len(meshes))
    row = {(r["mesh"], r["framework"]): r for r in rows}
    wrapped = caption.replace("; ", "\n", 1)

    def grouped(ax, value, sd=None, label=None, predicted=None, scale=1.0):
        """One bar per (mesh, framework), labelled with its value; ``predicted`` as a tick."""
        for j, fw in enumerate(frameworks):
            got = [row.get((m, fw)) for m in meshes]
            heights = [np.nan if g is None or value(g) is None else value(g) / scale for g in got]
            errors = None if sd is None else [0 if g is None or sd(g) is None else sd(g) / scale for g in got]
            pos = x - 0.4 + width * (j + 0.5)
            bars = ax.bar(pos, heights, width, yerr=errors, capsize=5, color=palette.get(fw, "tab:gray"), label=fw)
            ax.bar_label(bars, labels=[("" if np.isnan(h) else label(h)) for h in heights], fontsize=7, padding=2)
            if predicted is not None:
                ticks = [np.nan if g is None or predicted(g) is None else predicted(g) / scale for g in got]
                ax.scatter(pos, ticks, marker="_", s=600 * width, color="black", zorder=3,
                           label="predicted" if j == 0 else None)
        ax.set_xticks(x, meshes)
        ax.legend(fontsize=8)

    def save(fig, title, key):
        fig.suptitle(f"{title}\n{wrapped.replace(chr(92) + 'n', chr(10))}", fontsize=9)
        fig.tight_layout()
        fig.savefig(directory / PARALLELISM_PLOTS[key], dpi=120)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(2.2 * len(meshes) + 3, 4.8))
    grouped(ax, lambda r: r["time_mean"], lambda r: r["time_sd"], label=_short)
    for j, fw in enumerate(frameworks):  # the speed-up under each bar
        for i, m in enumerate(meshes):
            r = row.get((m, fw))
            if r is not None and r["speedup"] is not None:
                ax.annotate(f"{r['speedup']:.2f}x", (x[i] - 0.4 + width * (j + 0.5), 0), xytext=(0, 3),
                            textcoords="offset points", ha="center", fontsize=7, color="white", fontweight="bold")
    ax.set_ylabel("seconds per epoch (mean ± sd over epochs 2..N)")
    save(fig, "Time per epoch on each mesh (white: speed-up against data:1)", "time")

    fig, ax = plt.subplots(figsize=(2.2 * len(meshes) + 3, 4.8))
    grouped(ax, lambda r: r["held"] and r["held"]["total"], label=_short,
            predicted=lambda r: r["held_predicted"] and r["held_predicted"]["total"], scale=1e6)
    ax.set_ylabel("MB one device holds (parameters + AdamW moments)")
    save(fig, "Memory per device, measured from its shards (deterministic: no spread)", "memory")

    fig, (top, bottom) = plt.subplots(1, 2, figsize=(4.4 * len(meshes) / 2 + 5, 4.8))
    grouped(top, lambda r: r["sent_per_step"], label=_short, scale=1e6,
            predicted=lambda r: r["sent_per_step_predicted"])
    top.set_ylabel("MB a device sends per step (mean over the epochs' steps)")
    grouped(bottom, lambda r: r["bandwidth_mean"], lambda r: r["bandwidth_sd"], label=_short, scale=1e6)
    bottom.set_ylabel("MB/s the step's bytes needed (mean ± sd over epochs)")
    save(fig, "Communication per device: bytes a step sends, and the bandwidth they needed at the measured speed",
         "communication")
    return PARALLELISM_PLOTS
