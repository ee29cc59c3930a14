"""The ``mtcore`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from mtcore.errors import BackendUnavailable, MTCoreError


def cmd_info(args: argparse.Namespace) -> int:
    from mtcore.devices import info

    data = info()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"python {data['python']} on {data['platform']} ({data['cpu_count']} CPUs)")
    for name, fw in data["frameworks"].items():
        if not fw["available"]:
            print(f"{name}: not available: {fw['reason']}")
            continue
        versions = ", ".join(f"{k} {v}" for k, v in fw["versions"].items())
        print(f"{name}: {versions}")
        for d in fw["devices"]:
            print(f"  {d}")
    print(f"transformers: {data['transformers'] or 'not installed'}")
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    from mtcore.config import ModelConfig

    cfg = ModelConfig.of(args.model)
    print(f"{args.model}: {cfg.num_params():,} trainable parameters")
    print(json.dumps(cfg.__dict__, indent=2))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from mtcore.backend import framework
    from mtcore.config import ModelConfig
    from mtcore.costs import compute_seconds, format_plan, plan
    from mtcore.parallel import MeshShape

    cfg = ModelConfig.of(args.model)
    meshes = MeshShape.parse_all(args.meshes)
    bandwidth = None if args.bandwidth is None else _per_axis(args.bandwidth, "--bandwidth", "GB/s", 1e9)
    latency = None if args.latency is None else _per_axis(args.latency, "--latency", "µs", 1e-6)
    flops = None if args.flops is None else args.flops * 1e12
    if args.compute_ms is not None and args.compute_from is not None:
        raise MTCoreError("--compute-ms and --compute-from both give the step's arithmetic: give one")
    compute_s = compute_seconds(args.compute_from) if args.compute_from else (
        None if args.compute_ms is None else args.compute_ms / 1e3)
    if compute_s is not None and flops is not None:
        raise MTCoreError("--flops and a measured compute time both give the step's arithmetic: give one")
    rows = plan(cfg, meshes, args.global_batch_size, args.src_len, args.tgt_len, value_bytes=2 if args.precision == "bf16" else 4,
                bandwidth=bandwidth, flops=flops, latency=latency, compute_s=compute_s, engine=args.engine,
                layout=framework(args.framework).LAYOUT if args.framework else None, device=args.device)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{args.model}: {cfg.num_params():,} parameters; a global batch of {args.global_batch_size} rows x "
          f"{args.src_len} source / {args.tgt_len} target tokens; {args.precision} values throughout. Predicted "
          "from the shapes and the mesh, no step run (docs/parallelism.md says what is counted)"
          + (f"; the collectives {args.framework} runs on a {args.device.upper()}" if args.framework else "")
          + (f"; the links carry what {args.engine} puts on a wire between hosts" if args.engine else "") + ".")
    print()
    print(format_plan(rows, bandwidth=bandwidth, flops=flops, latency=latency, compute_s=compute_s))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from mtcore.sweep import write

    print(f"mtcore sweep: wrote {write(args.runs, args.out, args.ceiling)}")
    return 0


def _per_axis(given: list[str], what: str, unit: str, scale: float) -> dict[str, float]:
    """``--bandwidth 450 data=50`` -> bytes/s per axis (GB/s x 1e9), ``""`` for the axes not named;
    ``--latency 5 data=30`` the same way, in seconds (µs x 1e-6)."""
    rates = {}
    for item in given:
        axis, _, value = item.rpartition("=")
        if ":" in item:  # a mesh's spelling, not a rate's
            raise MTCoreError(f"{what}: expected {unit} or AXIS={unit} (450, data=50), got {item!r}")
        if axis in rates:
            noun = "rate" if what == "--bandwidth" else "value"
            raise MTCoreError(f"{what}: {f'a {noun} for ' + axis if axis else f'one {noun} for every axis'} is given twice")
        try:
            rates[axis] = float(value) * scale
        except ValueError:
            raise MTCoreError(f"{what}: expected {unit} or AXIS={unit} (450, data=50), got {item!r}") from None
    return rates


def _run_config(args: argparse.Namespace, **changes):
    from mtcore.train.options import RunConfig

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig) if hasattr(args, f.name)}
    return RunConfig(**{**given, **changes})


def _summary(metrics: dict) -> str:
    last = metrics["epochs"][-1]
    test = metrics.get("test") or {}

    def score(x):
        return "-" if x is None else f"{x:.1f}"

    return (f"{metrics['run']['framework']}: {len(metrics['epochs'])} epochs, last epoch {last['training_time']:.1f} s "
            f"({last['tokens_per_sec']:,.0f} tokens/s), train loss {last['train_loss']:.3f}, validation loss "
            f"{last['validation_loss']:.3f}, BLEU {score(last['bleu'])}, "
            f"test BLEU {score(test.get('test_bleu'))}, test chrF {score(test.get('test_chrf'))}")


def cmd_train(args: argparse.Namespace) -> int:
    import os

    from mtcore.train.run import train_command

    metrics, ranks = train_command(_run_config(args), args.out, args.argv, resume=args.resume,
                                   overwrite=args.overwrite, given=args.given, own_process=args.own_process,
                                   progress=not args.quiet)
    if metrics is not None and (ranks or not os.environ.get("MTCORE_LAUNCHED")):  # once, where the user looks
        print(_summary(metrics))
        rank_files = f"rank files: {args.out}/rank*_results_epoch*.json; " if ranks else ""
        traces = ""
        if args.profile == "on":
            import pathlib

            traces = (f"; traces: {args.out}/traces (where each step's time went: the rank files' profile)"
                      if (pathlib.Path(args.out) / "traces").is_dir() else "; --profile: no epoch had steps to trace "
                      "past the first three")
        print(f"metrics: {args.out}/metrics.json; {rank_files}checkpoint: {args.out}/checkpoints{traces}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from mtcore.train.run import compare_command

    frameworks = tuple(f.strip() for f in args.frameworks.split(",") if f.strip())
    if not frameworks:
        raise MTCoreError(f"--frameworks: expected a comma list like torch,jax, got {args.frameworks!r}")
    try:
        devices = tuple(int(n) for n in args.devices.split(",") if n.strip())
    except ValueError:
        raise MTCoreError(f"--devices: expected a comma list of device counts like 1,2, got {args.devices!r}") from None
    report = compare_command(_run_config(args, framework=frameworks[0], devices=1), args.out, frameworks=frameworks,
                             devices=devices, meshes=tuple(args.meshes or ()), own_process=args.own_process,
                             scaling=args.scaling, target_loss=args.target_loss, progress=not args.quiet,
                             overwrite=args.overwrite)
    print(report.read_text(encoding="utf-8").split("## Quality")[0].strip())
    print(f"\nreport: {report}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from mtcore.train.report import write_report

    print(f"report: {write_report(args.dir)}")
    return 0


def cmd_bench_compare(args: argparse.Namespace) -> int:
    from mtcore.perf import regression

    result = regression.compare(args.base, args.head, threshold=args.threshold, floor=args.floor, alpha=args.alpha)
    text = regression.markdown(result)
    if result.failed and args.allow_regression:
        text += "\nThe regression is allowed (--allow-regression: the pull request's perf-regression-ok label).\n"
    print(text, end="")
    regression.step_summary(text)
    if args.json:
        regression.write_json(result, args.json)
    return 1 if result.failed and not args.allow_regression else 0


def cmd_bench_history(args: argparse.Namespace) -> int:
    from mtcore.perf import history

    if args.add:
        print(f"stored: {history.store(args.add, args.dir, commit=args.commit)}")
    by_fingerprint = history.load_history(args.dir)
    lines = []
    for fp_id, runs in by_fingerprint.items():
        drifted = history.drift(runs, fp_id, window=args.window, threshold=args.drift)
        lines.append(f"{fp_id}: {len(runs)} runs, latest {history.short_commit(runs[-1])}; "
                     + (f"{len(drifted)} drifted" if drifted else "no drift")
                     + (f" (fewer than {history.BEFORE_LATEST + 1} runs: drift needs {history.BEFORE_LATEST} before "
                        "the latest)" if len(runs) <= history.BEFORE_LATEST else ""))
        for d in drifted:
            lines.append(f"  DRIFT {d.benchmark}: median {d.latest * 1e3:.2f} ms is {d.ratio:.2f}x the rolling "
                         f"median {d.baseline * 1e3:.2f} ms of the {d.runs} runs before it (past {d.limit:.2f}x: "
                         f"+{100 * d.threshold:g}% and {history.BAND:g}x their largest deviation, {100 * d.spread:.0f}%)")
    for path in history.plot_history(by_fingerprint, args.out or args.dir):
        lines.append(f"plot: {path}")
    print("\n".join(lines) or f"{args.dir}: no runs")
    return 0


def cmd_bench_check(args: argparse.Namespace) -> int:
    import glob

    from mtcore.perf import history

    paths = args.runs or sorted(glob.glob(history.CHECK_RUNS))
    result = history.check(paths, k=args.k, window=args.window, threshold=args.threshold)
    print(history.check_report(result))
    return 1 if result.failed else 0


def cmd_bench_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mtcore.perf import history, records

    bigger, smaller = history.export(records.load_run(args.run, samples=False))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, entries in (("bigger_is_better.json", bigger), ("smaller_is_better.json", smaller)):
        (out / name).write_text(json.dumps(entries, indent=1, allow_nan=False))
        print(f"{out / name}: {len(entries)} values")
    return 0


def _fraction(value: str) -> float:
    try:
        number = float(value.rstrip("%")) / (100 if value.endswith("%") else 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a fraction (0.1) or a percentage (10%)") from None
    if not 0 <= number < 10:
        raise argparse.ArgumentTypeError(f"{value!r} is out of range")
    return number


def _add_run_options(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One option per ``RunConfig`` field (its default, help and choices), so a new run option is
    declared once, in ``mtcore/train/options.py``."""
    from mtcore.train.options import RunConfig, option_flag

    types = {"int": int, "float": float, "str": str, "int | None": int, "float | None": float, "str | None": str,
             "float | int": _count_or_fraction,
             "MeshShape | None": str}  # RunConfig parses the mesh
    for f in dataclasses.fields(RunConfig):
        if f.name in skip:
            continue
        extra = {k: v for k, v in f.metadata.items() if k != "help"}
        p.add_argument(option_flag(f.name), type=types[f.type], default=f.default,
                       help=f"{f.metadata['help']} (default: {f.default})", **extra)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _count_or_fraction(value: str) -> int | float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    return int(number) if number >= 1 and number.is_integer() else number


def build_parser() -> argparse.ArgumentParser:
    from mtcore.costs import MODELLED_ENGINES
    from mtcore.devices import FRAMEWORKS

    # No abbreviations: a resumed run compares the options written out against the saved ones.
    parser = argparse.ArgumentParser(
        prog="mtcore", allow_abbrev=False,
        description="Train one machine-translation Transformer in PyTorch and JAX/Flax, compare the two, and track "
                    "benchmark runs. Each command's --help lists its options and their defaults.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="framework versions and the devices each framework sees")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("params", help="a model preset's (or HF checkpoint's) config and parameter count")
    p.add_argument("model", help="preset name (tiny, small, base, marian-en-hu) or HF checkpoint directory")
    p.set_defaults(func=cmd_params)
    p = sub.add_parser("plan", help="what each mesh would cost per device and step (memory, bytes sent, FLOPs, and "
                                    "the time at a given bandwidth and FLOP rate), predicted without running a step")
    p.add_argument("--model", required=True, help="preset name or HF checkpoint directory")
    p.add_argument("--mesh", nargs="+", dest="meshes", required=True, metavar="MESH", help="meshes, e.g. data:8 fsdp:8 fsdp:4,tensor:2")
    p.add_argument("--global-batch-size", type=int, default=256, help="rows of a step, over all devices (default: %(default)s)")
    p.add_argument("--src-len", type=int, default=128, help="source tokens per row, padded (default: %(default)s)")
    p.add_argument("--tgt-len", type=int, default=128, help="target tokens per row, padded (default: %(default)s)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bytes per value held and sent: 4 or 2 (default: %(default)s)")
    p.add_argument("--bandwidth", nargs="+", metavar="GBPS", help="GB/s each device sends (e.g. 450 for an H100's NVLink), "
                   "and per mesh axis where links differ: 450 data=50 (NVLink in a node, 400 Gb/s InfiniBand between)")
    p.add_argument("--flops", type=float, help="TFLOP/s each device computes (e.g. 989 for an H100's dense bf16)")
    p.add_argument("--latency", nargs="+", metavar="US", help="microseconds each message of a collective waits on the "
                   "link (a ring all-reduce waits for 2(N-1) of them a call, the others N-1), and per mesh axis where "
                   "links differ: 5 data=30")
    p.add_argument("--compute-ms", type=float, help="measured milliseconds of a step's arithmetic on one device (instead "
                   "of --flops), carried to each mesh by its share of the FLOPs")
    p.add_argument("--compute-from", metavar="RUN", help="the same from a one-device run's directory (its last epoch's "
                   "time per step)")
    p.add_argument("--framework", choices=FRAMEWORKS, help="the collectives that framework's layout runs where it "
                   "departs from the textbook (docs/parallelism.md: what a step really moves); default: the textbook's")
    p.add_argument("--device", choices=("cpu", "gpu", "tpu"), default="cpu",
                   help="with --framework: the device it runs on (JAX's CPU backend all-reduces FSDP's gradients; "
                        "default: %(default)s)")
    p.add_argument("--engine", choices=MODELLED_ENGINES, help="charge the links what this engine puts on a wire "
                   "between hosts, one process each (its algorithms, preambles and TCP/IP framing: docs/hosts.md), "
                   "not the textbook ring's bytes")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=cmd_plan)
    p = sub.add_parser("sweep", help="the link sweep's points (pytest benches -m sweep, scripts/link_sweep.py) judged: "
                                     "was the network the bottleneck, the planner against each point; sweep.md + plots")
    p.add_argument("runs", nargs="+", metavar="JSON", help="pytest-benchmark JSON files of the link sweep bench")
    p.add_argument("--out", required=True, help="directory for sweep.md, sweep.json and a plot per size")
    p.add_argument("--ceiling", metavar="JSON", help="scripts/link_sweep.py's ceiling.json: marks the link's ceiling")
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("train", help="train one framework epoch by epoch; metrics.json and checkpoints in --out")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out after its last checkpoint; options that conflict with the saved "
                        "run are refused (only --epochs, --devices, the batch split, --threads, --compile-cache and the JAX process "
                        "options may change)")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out (default: refuse to touch it)")
    _add_run_options(p)
    p.set_defaults(func=cmd_train, argv=None)
    p = sub.add_parser("compare", help="train both frameworks from the same weights on the same batches; report.md + plots")
    p.add_argument("--frameworks", default="torch,jax", help="comma list of torch, jax, hf (default torch,jax)")
    p.add_argument("--devices", default="1", help="device counts to train at, a comma list (e.g. 1,2; default 1)")
    p.add_argument("--scaling", default="weak", choices=("weak", "strong"),
                   help="weak: --batch-size per device, the global batch grows; strong: the global batch is fixed "
                        "(default: weak)")
    p.add_argument("--target-loss", type=float, default=None,
                   help="report the time to this validation loss (default: the best loss every run reaches)")
    p.add_argument("--out", required=True, help="output directory (must be new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace the comparison in --out (default: refuse)")
    p.add_argument("--mesh", nargs="+", dest="meshes", metavar="MESH",
                   help="device meshes to train on, every framework on each (data:1 data:2 fsdp:2 tensor:2), each in "
                        "processes of its own, on the same global batches (instead of --devices)")
    _add_run_options(p, skip=("framework", "devices", "mesh", "coordinator", "num_processes", "process_id"))
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("report", help="rewrite report.md and the plots of a compare directory")
    p.add_argument("dir", help="a directory written by mtcore compare (its framework runs and compare.json)")
    p.set_defaults(func=cmd_report)
    _add_bench_commands(sub)
    for command in sub.choices.values():
        command.allow_abbrev = False
    return parser


def _add_bench_commands(sub) -> None:
    from mtcore.perf import history as h
    from mtcore.perf import regression as r

    p = sub.add_parser("bench-compare", help="paired base/head pytest-benchmark runs: regressions, as a markdown table; "
                                             "exit 1 on a regression, 2 on runs that cannot be compared")
    p.add_argument("--base", nargs="+", required=True, metavar="JSON", help="the base's runs, in the order they ran")
    p.add_argument("--head", nargs="+", required=True, metavar="JSON",
                   help="the head's runs: head_i is paired with base_i")
    p.add_argument("--threshold", type=_fraction, default=r.TIME_THRESHOLD,
                   help=f"time and tokens/s: the median pair ratio must be worse than this (default: {r.TIME_THRESHOLD * 100:g}%%)")
    p.add_argument("--floor", type=_fraction, default=r.TIME_FLOOR,
                   help=f"... and every pair worse than this (default: {r.TIME_FLOOR * 100:g}%%)")
    p.add_argument("--alpha", type=float, default=r.ALPHA,
                   help="... and the Mann-Whitney U test on the pooled rounds below this p (default: %(default)s)")
    p.add_argument("--allow-regression", action="store_true",
                   help="report a regression but exit 0 (an intended slowdown: the perf-regression-ok label)")
    p.add_argument("--json", metavar="PATH", help="also write the verdicts as JSON")
    p.set_defaults(func=cmd_bench_compare)
    p = sub.add_parser("bench-history", help="plots of runs over commits per hardware fingerprint, and drift of the latest")
    p.add_argument("dir", help="HISTORY/<fingerprint>/<commit>.json, the bench-history branch's layout")
    p.add_argument("--add", metavar="JSON", help="first store this run under its fingerprint and commit")
    p.add_argument("--commit", help="with --add: the commit (default: the run's commit_info.id)")
    p.add_argument("--out", help="where the PNGs go (default: DIR)")
    p.add_argument("--window", type=int, default=h.WINDOW, help="rolling median over this many runs (default: %(default)s)")
    p.add_argument("--drift", type=_fraction, default=h.DRIFT,
                   help=f"flag a latest median this much slower than the rolling one (default: {h.DRIFT * 100:g}%%)")
    p.set_defaults(func=cmd_bench_history)
    p = sub.add_parser("bench-check", help="the newest saved run against this machine's own history (make bench-check): "
                                           "exit 1 on a regression past both the threshold and the history's band")
    p.add_argument("runs", nargs="*", metavar="JSON", help=f"saved runs, newest judged (default: {h.CHECK_RUNS})")
    p.add_argument("--k", type=int, default=h.K, help="saved runs of this machine needed before judging (default: %(default)s)")
    p.add_argument("--window", type=int, default=h.WINDOW, help="judge against at most this many (default: %(default)s)")
    p.add_argument("--threshold", type=_fraction, default=h.DRIFT,
                   help=f"never flag less than this much slower (default: {h.DRIFT * 100:g}%%)")
    p.set_defaults(func=cmd_bench_check)
    p = sub.add_parser("bench-export", help="github-action-benchmark's customBiggerIsBetter / customSmallerIsBetter JSON")
    p.add_argument("run", help="a pytest-benchmark JSON file")
    p.add_argument("--out", required=True, help="directory for bigger_is_better.json and smaller_is_better.json")
    p.set_defaults(func=cmd_bench_export)


def _given(argv: list[str]) -> set[str]:
    """The options written on the command line (``--batch-size 8`` -> ``batch_size``), as opposed
    to those left at their defaults: what a resumed run must not silently ignore."""
    return {a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}


def main(argv: list[str] | None = None) -> int:
    own_process = argv is None  # mtcore is the program (console script, python -m mtcore)
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.given = _given(argv)
    args.own_process = own_process
    if getattr(args, "argv", "") is None:
        args.argv = argv  # what launched ranks are told: this command, not the calling program's sys.argv
    try:
        return args.func(args)
    except (MTCoreError, BackendUnavailable) as e:
        print(f"mtcore: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
