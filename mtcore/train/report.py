"""``report.md`` from the ``metrics.json`` files ``mtcore compare`` wrote: ``write_report`` and the
markdown of each section. The numbers come from ``runs`` (run folders, rank files, statistics), the
PNG plots from ``plots``.

A new report section writes its markdown here (a ``*_section`` function that ``write_report``
calls); what it reads and computes goes to ``runs``, its drawing to ``plots``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mtcore.errors import MTCoreError
from mtcore.files import read_json, write_text
from mtcore.train.plots import _breakdown_plot, _parallelism_plots, _plots, _scaling_plots
from mtcore.train.runs import (
    _torch_mode,
    breakdown_rows,
    load_rank_files,
    load_runs,
    loss_agreement,
    scaling_rows,
    speed_claim,
    steady,
    time_to_loss,
)


def _process(run: dict[str, Any]) -> str:
    """The process set-up the run recorded (mtcore.perf.setup): the compile cache, which decides
    what the first epoch's compile costs, and the fp32 matmul precision, the same in both."""
    process = run.get("process") or {}
    if "compile_cache" not in process:
        return "process set-up not recorded"
    precision = {fw["fp32_matmul_precision"] for fw in process.get("frameworks", {}).values()}
    return (f"compile cache {process['compile_cache']} (both frameworks)"
            + (f", fp32 matmuls {precision.pop()}" if len(precision) == 1 else ""))


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
                                   always=True)), *breakdown_section(directory)]
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
    lines += breakdown_section(directory)
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
def _mb(n: float | None, digits: int = 2) -> str:
    return "-" if n is None else f"{n / 1e6:,.{digits}f}"


def _percent(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


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
             "(docs/parallelism.md says what each counts). The transport says how the devices talked: in one "
             "process (a memory copy), processes over loopback (nothing crossed a network), or emulated hosts over "
             "links of their own; there, on the wire is what the busiest host's interface sent a step (the kernel's "
             "counters, less the idle background), predicted from the engine's algorithms and TCP/IP framing, and "
             "the link used is the busier direction's share of the link's rate (docs/hosts.md).", "",
             "| framework | mesh | transport | s / epoch (mean ± sd) | tokens/s (mean ± sd) | speed-up | held per "
             "device MB (predicted) | step memory MB | sent per step MB (predicted) | bandwidth needed MB/s (mean ± sd) "
             "| on the wire per step MB (predicted) | link used | validation loss | BLEU |",
             "|" + " --- |" * 14]
    for r in rows:
        held, want = r["held"], r["held_predicted"]
        speedup = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"  # none without the framework's data:1
        lines.append(
            f"| {r['framework']} | {r['mesh']} | {r['transport']} | {r['time_mean']:.2f} ± {r['time_sd']:.2f} | "
            f"{r['tps_mean']:,.0f} ± {r['tps_sd']:,.0f} | {speedup} | "
            f"{_mb(held and held['total'])} ({_mb(want and want['total'])}) | {_mb(r['step_memory'])} | "
            f"{_mb(r['sent_per_step'])} ({_mb(r['sent_per_step_predicted'])}) | "
            f"{_mb(r['bandwidth_mean'])} ± {_mb(r['bandwidth_sd'])} | "
            f"{_mb(r['wire_per_step'])} ({_mb(r['wire_per_step_predicted'])}) | "
            f"{_percent(r['utilisation'])} | {_f(r['validation_loss'], 3)} | "
            f"{_f(r['bleu'], 1)} |")
    if any(r["wire_per_step"] is not None for r in rows):
        lines += ["", "Was the network the bottleneck?", "",
                  *[f"- {_bottleneck(r, rows, runs)}" for r in rows]]
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


def _bottleneck(row: dict[str, Any], rows: list[dict[str, Any]], runs: dict[str, dict[str, Any]]) -> str:
    """``sweep.bottleneck``'s sentence for a row, its arithmetic the framework's one-device step
    (its data:1 run) carried to the mesh by the share of the FLOPs a device computes."""
    from mtcore.config import ModelConfig
    from mtcore.costs import flop_share_seconds
    from mtcore.parallel import MeshShape
    from mtcore.sweep import bottleneck

    one = next((r for r in rows if r["framework"] == row["framework"] and r["world_size"] == 1), None)
    arithmetic = None
    model = (runs.get(row["run"]) or {}).get("run", {}).get("model")
    if one is not None and one["step_s"] and model:
        try:
            cfg = ModelConfig.of(model)
        except MTCoreError:
            cfg = None
        if cfg is not None:  # the share at a nominal 32 + 32 tokens a row: it hardly depends on them
            arithmetic = flop_share_seconds(cfg, one["step_s"], *((MeshShape.parse(r["mesh"]), r["global_batch"])
                                                                   for r in (one, row)), 32, 32)
    return bottleneck(f"{row['framework']} {row['mesh']}", row["transport"], row["step_s"], arithmetic,
                      row["wire_per_step"], row["link_rate"])


def _parallelism_caption(rows: list[dict[str, Any]], runs: dict[str, dict[str, Any]]) -> str:
    first = next(iter(runs.values()))["run"] if runs else {}
    epochs = min(len(r["epochs"]) for r in rows)
    model = f"model {first['model']} ({first['num_params']:,} parameters)" if first else "model ?"
    device = rows[0]["device"]
    return (f"{model}, {device}, global batch {rows[0]['global_batch']}, {first.get('precision', '?')}, "
            f"{_torch_mode(first) if first else ''}; {epochs} timed epoch{'s' if epochs != 1 else ''} per run; "
            f"a device: {_one_device(rows[0]).split(',')[0]}")


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:,.1f}".replace("-0.0", "0.0")  # no signed zero


def breakdown_section(directory: Path) -> list[str]:
    """Where a traced step's time went (``--profile``), per run and process: the median of each
    part over the traced steps, the planner's communication over emulated links, and the traces."""
    rows = breakdown_rows(directory)
    if not rows:
        return []
    file = _breakdown_plot(rows, directory)
    lines = ["", "## Where a step's time went (--profile: traced steps)", "",
             "Each process traced three steps with its framework's profiler (steps 4-6 of the first epoch long enough: "
             "past compilation, DDP's bucket rebuild and the recorded step), each step synced; below, the median "
             "traced step: "
             "arithmetic is the union of compute spans over the process's threads, communication the union of "
             "collective spans (the engine's own threads included; it counts waiting for the other devices), "
             "hidden the part of it under arithmetic, exposed the rest; compiling is the compiler at work (a batch "
             "shape not seen before); idle the gaps no event covers (the host between ops, or every thread "
             "waiting), measured as gaps; unaccounted what the step's clock holds beyond them. Busy: arithmetic "
             "over the step. Planned: what `mtcore plan` gives the recorded step's collectives on the emulated "
             "link's rate (bytes only). How each part is computed: docs/measurement.md#traces.", "",
             "| framework | mesh | transport | process | steps | step ms | arithmetic ms (busy) | communication ms "
             "(hidden / exposed) | planned ms | compiling ms | idle ms | unaccounted ms | trace |",
             "|" + " --- |" * 13]
    for r in rows:
        lines.append(
            f"| {r['framework']} | {r['mesh']} | {r['transport']} | {r['process']} | "
            f"{r['steps_traced'][0]}-{r['steps_traced'][1]} | {_ms(r['step'])} | {_ms(r['arithmetic'])} "
            f"({r['busy']:.0%}) | {_ms(r['communication'])} ({_ms(r['hidden'])} / {_ms(r['exposed'])}) | "
            f"{_ms(r['planned_communication'])} | {_ms(r['compiling'])} | {_ms(r['idle'])} | "
            f"{_ms(r['unaccounted'])} | [{Path(r['trace']).name}]({r['trace']}) |")
    return lines + ["", "Open a trace in https://ui.perfetto.dev or chrome://tracing (both read the .json.gz as it is).",
                    "", f"![breakdown]({file})"]
