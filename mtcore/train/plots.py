"""The report's PNG plots, the one module that imports matplotlib (inside each function, so nothing
else pays for it): each function draws into the compare directory and returns ``{key: file name}``
for ``report`` to link.

A new report section draws here; what it reads and computes goes to ``runs``, its markdown to ``report``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mtcore.devices import PALETTE
from mtcore.train.runs import _torch_mode, speed_claim, steady

PLOTS = {"time": "epoch_time.png", "throughput": "tokens_per_sec.png", "loss": "loss.png", "quality": "bleu.png"}


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


# ---- scaling: one device against many, from the rank files alone -------------------------------------
def _scaling_plots(rows: list[dict[str, Any]], directory: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {"time": "training_time_comparison.png", "throughput": "tokens_per_second_comparison.png"}
    labels = [f"{r['framework']}\n{r['world_size']} dev" for r in rows]
    for key, mean, sd, ylabel, title in (
        ("time", "time_mean", "time_sd", "seconds per epoch", "Training time per epoch (mean over ranks; ± sd over epochs)"),
        ("throughput", "tps_mean", "tps_sd", "tokens / s", "System throughput (sum over ranks; ± sd over epochs)"),
    ):
        fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 4))
        bars = ax.bar(labels, [r[mean] for r in rows], yerr=[r[sd] for r in rows], capsize=6,
                      color=[PALETTE.get(r["framework"], "tab:gray") for r in rows])
        ax.bar_label(bars, labels=[f"{r[mean]:,.0f}" if r[mean] >= 100 else f"{r[mean]:.2f}" for r in rows],
                     label_type="center", color="white", fontweight="bold")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        fig.tight_layout()
        fig.savefig(directory / files[key], dpi=120)
        plt.close(fig)
    return files


# ---- parallelism: every framework on every mesh ------------------------------------------------------
PARALLELISM_PLOTS = {"time": "parallelism_time.png", "memory": "parallelism_memory.png",
                     "communication": "parallelism_communication.png"}


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
    # Under each mesh, how its devices talked (each framework's where they differ).
    tick_labels = []
    for m in meshes:
        ways = {r["framework"]: r.get("transport") for r in rows if r["mesh"] == m and r.get("transport")}
        said = set(ways.values())
        tick_labels.append(m if not said else f"{m}\n{said.pop()}" if len(said) == 1 else
                     m + "".join(f"\n{fw}: {t}" for fw, t in ways.items()))
    width = 0.8 / len(frameworks)
    x = np.arange(len(meshes))
    row = {(r["mesh"], r["framework"]): r for r in rows}
    wrapped = caption.replace("; ", "\n", 1)

    def grouped(ax, value, sd=None, label=None, predicted=None, scale=1.0, wire=None):
        """One bar per (mesh, framework), labelled with its value; ``predicted`` as a tick, ``wire``
        (what crossed a network) as a ring."""
        for j, fw in enumerate(frameworks):
            got = [row.get((m, fw)) for m in meshes]
            heights = [np.nan if g is None or value(g) is None else value(g) / scale for g in got]
            errors = None if sd is None else [0 if g is None or sd(g) is None else sd(g) / scale for g in got]
            pos = x - 0.4 + width * (j + 0.5)
            bars = ax.bar(pos, heights, width, yerr=errors, capsize=5, color=PALETTE.get(fw, "tab:gray"), label=fw)
            ax.bar_label(bars, labels=[("" if np.isnan(h) else label(h)) for h in heights], fontsize=7, padding=2)
            if predicted is not None:
                ticks = [np.nan if g is None or predicted(g) is None else predicted(g) / scale for g in got]
                ax.scatter(pos, ticks, marker="_", s=600 * width, color="black", zorder=3,
                           label="predicted" if j == 0 else None)
            if wire is not None:
                rings = [np.nan if g is None or wire(g) is None else wire(g) / scale for g in got]
                if not all(np.isnan(rings)):
                    ax.scatter(pos, rings, marker="o", s=40, facecolors="none", edgecolors="black", zorder=4,
                               label="on the wire (kernel's counters)" if j == 0 else None)
        ax.set_xticks(x, tick_labels, fontsize=8)
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
            predicted=lambda r: r["sent_per_step_predicted"], wire=lambda r: r.get("wire_per_step"))
    top.set_ylabel("MB a device sends per step (mean over the epochs' steps)")
    grouped(bottom, lambda r: r["bandwidth_mean"], lambda r: r["bandwidth_sd"], label=_short, scale=1e6)
    bottom.set_ylabel("MB/s the step's bytes needed (mean ± sd over epochs)")
    save(fig, "Communication per device: bytes a step sends, and the bandwidth they needed at the measured speed",
         "communication")
    return PARALLELISM_PLOTS


# ---- where a step's time went (--profile) ------------------------------------------------------------
BREAKDOWN_PLOT = "step_breakdown.png"
# The parts that add up to a step, bottom to top, and how each is drawn.
_PARTS = (("arithmetic", "arithmetic (the framework's colour)", None), ("exposed", "communication, exposed", "tab:red"),
          ("compiling", "compiling", "tab:purple"), ("idle", "idle (no event)", "lightgray"),
          ("unaccounted", "unaccounted", "black"))


def _breakdown_plot(rows: list[dict[str, Any]], directory: Path) -> str:
    """A stacked bar per framework x mesh x process: the median traced step split into its parts
    (arithmetic in the framework's colour), the hidden communication as a hatched band over the
    arithmetic, busy (arithmetic over the step) above each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['framework']} {r['mesh']}\n{r['transport']}" + (f"\nprocess {r['process']}" if r["processes"] > 1 else "")
              for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(1.5 * len(rows) + 5, 5.2))
    bottom = np.zeros(len(rows))
    for key, label, colour in _PARTS:
        heights = np.array([max(r[key], 0.0) * 1e3 for r in rows])
        colours = [colour or PALETTE.get(r["framework"], "tab:gray") for r in rows]
        ax.bar(x, heights, 0.6, bottom=bottom, color=colours, label=label, edgecolor="white", linewidth=0.5)
        if key == "arithmetic":
            hidden = np.array([min(r["hidden"], r["arithmetic"]) * 1e3 for r in rows])
            ax.bar(x, hidden, 0.6, bottom=bottom + heights - hidden, fill=False, hatch="//", edgecolor="tab:red",
                   linewidth=0, label="communication under arithmetic")
        bottom += heights
    for i, r in enumerate(rows):
        ax.annotate(f"busy {r['busy']:.0%}", (x[i], bottom[i]), xytext=(0, 3), textcoords="offset points",
                    ha="center", fontsize=8)
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylim(0, bottom.max() * 1.1)
    ax.set_ylabel("ms, the median traced step")
    ax.set_title("Where a step's time went (traced steps; arithmetic in the framework's colour)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(directory / BREAKDOWN_PLOT, dpi=120)
    plt.close(fig)
    return BREAKDOWN_PLOT
