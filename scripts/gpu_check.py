"""The GPU fight in one call: on a machine with one GPU and no package registry, run the benches
the docs' GPU rows promise, within a time budget, and print one table.

    python3 scripts/gpu_check.py             # on the GPU machine, in the repository root (make gpu-check)
    python3 scripts/gpu_check.py --dry-run   # the same stages on this CPU with `tiny` (tests/test_gpu_check.py)

mtcore runs from the checkout with the machine's own packages (their versions are printed and
written; a missing one is refused in one line, exit 2: nothing is installed). The benches run in
stages, each a pytest-benchmark session of its own, most wanted first, each under its share of
``--budget``; a stage still running at its limit is stopped, and what it measured so far stays,
since the benches rewrite their --benchmark-json after every case:

1. ``steps``: the train step of ``marian-en-hu`` at B8 and B64 (x 64 tokens) in fp32 and bf16, JAX
   (``nn.scan``) and torch eager; greedy decode in both;
2. ``compiled``: the same steps under ``torch.compile`` (fp32) and CUDA graphs (fp32 and bf16), and
   greedy decode compiled and CUDA-graphed;
3. ``paired``: torch eager and JAX alternating round by round, fp32 and bf16 (the docs' headline);
4. ``compile``: one from-scratch compile of each framework's train step.

Every bench checks its result against the other framework before timing (benches/inputs.py).
The table (step ms, tokens/s, MFU against the session's measured bf16 GEMM peak, compile s) and the
verdicts against the bars of docs/benchmarks.md (torch's best within 1.25x of JAX's step, bf16 at
most 0.6x of fp32, greedy torch within 1.5x of JAX, MFU at B64 bf16 at least half the peak) go to
``--out`` (default ``$OUT``, else ``.tmp/gpu-check``) as ``table.md``, with each stage's
``bench-STAGE.json`` and ``gpu_check.log``, all written as the run goes.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
# mtcore runs from this checkout, installed or not: the table reads the benches' summary module,
# which imports it.
sys.path[:0] = [str(ROOT), str(ROOT / "benches")]

# The modules mtcore and the benches import on this path; nothing else is needed here.
REQUIRED = ("torch", "jax", "jaxlib", "flax", "optax", "numpy", "safetensors", "sentencepiece", "sacrebleu",
            "pytest", "pytest_benchmark", "cpuinfo")
# Shown when present: what else decides the numbers.
SHOWN = ("triton", "threadpoolctl", "transformers")


@dataclass(frozen=True)
class Stage:
    name: str
    files: tuple[str, ...]
    select: str  # pytest -k
    share: float  # of the budget left when the stage starts, among the stages still to run
    what: str


TRAIN, DECODE = "benches/test_train.py", "benches/test_decode.py"
COMPILED = "(compile or cudagraphs)"
# Within a stage, pytest runs the files in the order given: decoding (two cases) before the train
# steps (eight, or six), so a stage stopped at its limit loses the more numerous.
STAGES = (
    Stage("steps", (DECODE, TRAIN), f"(test_train_step and not loop and not {COMPILED}) or "
                                    f"(test_decode_latency and greedy and not {COMPILED})", 0.3,
          "train steps (JAX scan, torch eager) and greedy decode"),
    Stage("compiled", (DECODE, TRAIN), f"(test_train_step and {COMPILED}) or (test_decode_latency and greedy and {COMPILED})",
          0.4, "torch.compile and CUDA graphs: train steps and greedy decode"),
    Stage("paired", ("benches/test_paired.py",), "test_paired_train_step", 0.15,
          "torch eager and JAX alternating, fp32 and bf16"),
    Stage("compile", ("benches/test_compile.py",), "not loop and not cudagraphs", 0.15,
          "one from-scratch compile of each framework's train step"),
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="this CPU, the `tiny` preset, 3 rounds: the script checked "
                                                          "before a GPU is ever lent")
    p.add_argument("--budget", type=float, default=300.0, help="seconds for all stages together (default: %(default)s)")
    p.add_argument("--rounds", type=int, help="timed rounds per bench (default: 20; dry run 3)")
    p.add_argument("--out", type=Path, help="where the table, JSON and log go (default: $OUT, else .tmp/gpu-check)")
    p.add_argument("--stages", help=f"comma list of {', '.join(s.name for s in STAGES)} (default: all)")
    args = p.parse_args(argv)
    try:
        stages = _stages(args.stages)
        if args.budget <= 0 or args.rounds is not None and args.rounds < 1:
            raise ValueError("--budget and --rounds must be positive")
    except ValueError as e:
        print(f"gpu_check: {e}", file=sys.stderr)
        return 2
    device, size = ("cpu", "tiny") if args.dry_run else ("gpu", "marian-en-hu")
    budget = args.budget
    rounds = args.rounds or (3 if args.dry_run else 20)
    out = (args.out or Path(os.environ.get("OUT") or ROOT / ".tmp" / "gpu-check")).resolve()
    out.mkdir(parents=True, exist_ok=True)

    versions, missing = _versions(gpu=not args.dry_run)
    log = open(out / "gpu_check.log", "a", buffering=1)
    say = _sayer(log)
    say(f"gpu_check: {'dry run: ' if args.dry_run else ''}device {device}, {size}, {rounds} rounds, "
        f"budget {budget:g} s, out {out}")
    say("found: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if missing:
        say(f"gpu_check: missing package(s): {', '.join(missing)}; this script installs nothing and runs mtcore "
            "with the machine's own packages (where a registry is reached: python scripts/install.py)")
        return 2

    end = time.monotonic() + budget
    results = []
    # torch.compile takes a minute a case on a 2-core CPU, and CUDA graphs exist on a GPU only.
    left_out = {"compiled"} if args.dry_run else set()
    running = [s for s in stages if s.name not in left_out]
    for stage in stages:
        if stage.name in left_out:
            results.append({"stage": stage.name, "status": "left out of a dry run", "seconds": 0.0,
                            "json": out / f"bench-{stage.name}.json"})
            continue
        left = end - time.monotonic()
        limit = left * stage.share / sum(s.share for s in running[running.index(stage):])
        say(f"\n== stage {stage.name}: {stage.what} (at most {limit:.0f} s)")
        results.append(_run_stage(stage, device, size, rounds, limit, out, say, dry_run=args.dry_run))
        _write_table(out, device, size, versions, results, say=None)
    say("")
    _write_table(out, device, size, versions, results, say=say)
    failed = [r for r in results if r["status"] not in ("passed", "nothing selected", "left out of a dry run")]
    return 1 if failed else 0


def _stages(names: str | None) -> list[Stage]:
    if names is None:
        return list(STAGES)
    known = {s.name: s for s in STAGES}
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in known]
    if unknown or not chosen:
        raise ValueError(f"--stages: unknown stage {', '.join(unknown) or repr(names)}; choose from {', '.join(known)}")
    return [known[n] for n in chosen]


def _versions(gpu: bool) -> tuple[dict[str, str], list[str]]:
    """Versions of what the run uses, and the required distributions that are missing."""
    found, missing = {"python": sys.version.split()[0]}, []
    dists = importlib.metadata.packages_distributions()
    for name in REQUIRED + SHOWN:
        if importlib.util.find_spec(name) is None:  # found without importing it
            if name in REQUIRED:
                missing.append(name)
            continue
        dist = (dists.get(name) or [name])[0]
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "?"
    if gpu:  # JAX sees a GPU only through its CUDA plugin
        plugins = sorted({d.metadata["Name"] for d in importlib.metadata.distributions()
                          if re.fullmatch(r"jax[-_]cuda\d+[-_]plugin", d.metadata["Name"] or "")})
        if plugins:
            found.update({p: importlib.metadata.version(p) for p in plugins})
        else:
            missing.append("jax-cudaNN-plugin (JAX's CUDA support)")
    return found, missing


def _sayer(log):
    lock = threading.Lock()

    def say(line: str = "") -> None:
        with lock:
            print(line, flush=True)
            log.write(line + "\n")

    return say


def _run_stage(stage: Stage, device: str, size: str, rounds: int, limit: float, out: Path, say,
               dry_run: bool = False) -> dict:
    """One pytest-benchmark session, stopped at ``limit`` seconds (SIGTERM, then SIGKILL)."""
    json_path = out / f"bench-{stage.name}.json"
    json_path.unlink(missing_ok=True)
    # A dry run leaves torch.compile out, as it leaves out the `compiled` stage.
    select = f"({stage.select}) and not fp32-compile" if dry_run else stage.select
    cmd = [sys.executable, "-m", "pytest", *stage.files, "-k", select, "-p", "no:cacheprovider", "-q", "-rs",
           "--device", device, "--size", size, "--framework", "torch,jax", "--threads", "all",
           "--rounds", str(rounds), "--compile-rounds", "1", "--benchmark-json", str(json_path)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    pump = threading.Thread(target=lambda: [say(line.rstrip("\n")) for line in proc.stdout], daemon=True)
    pump.start()
    cut = False
    try:
        proc.wait(timeout=max(limit, 1.0))
    except subprocess.TimeoutExpired:
        cut = True
        stop(proc)
    pump.join(timeout=5)
    seconds = time.monotonic() - start
    status = ("cut at its time limit" if cut else
              {0: "passed", 5: "nothing selected"}.get(proc.returncode, f"failed (pytest exit {proc.returncode})"))
    say(f"== stage {stage.name}: {status} after {seconds:.0f} s")
    return {"stage": stage.name, "status": status, "seconds": seconds, "json": json_path}


def stop(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """End ``proc`` and its process group: SIGTERM, then, after ``grace`` seconds or as soon as
    ``proc`` is gone, SIGKILL to whatever of the group is left (a JAX process waiting on a
    collective can ignore SIGTERM)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _load(results: list[dict]) -> tuple[list, dict]:
    """The benchmarks of every stage's JSON (as objects the bench summary reads) and the first
    machine_info."""
    benchmarks, machine_info = [], {}
    for r in results:
        if not r["json"].exists():
            continue
        try:
            data = json.loads(r["json"].read_text())
        except json.JSONDecodeError:  # cut while writing: the stage's earlier flush is lost too
            continue
        machine_info = machine_info or data.get("machine_info", {})
        for b in data.get("benchmarks", []):
            stats = SimpleNamespace(**{k: b["stats"].get(k) for k in ("median", "iqr", "rounds")})
            benchmarks.append(SimpleNamespace(name=b["name"], group=b.get("group") or "", stats=stats,
                                              extra_info=b.get("extra_info") or {}))
    return benchmarks, machine_info


def table(benchmarks: list) -> list[str]:
    """One markdown table: a row per bench; MFU against the session's measured bf16 GEMM peak."""
    from summary import _fmt

    peaks = [b.extra_info.get("gemm_peak_flops") for b in benchmarks
             if b.extra_info.get("precision") == "bf16" and b.extra_info.get("gemm_peak_flops")]
    bf16_peak = max(peaks) if peaks else None
    lines = ["| bench | framework (variant) | batch | precision | step ms | IQR % | rounds | tokens/s | "
             "MFU (bf16 peak) | compile s |", "|" + " --- |" * 10]
    for b in sorted(benchmarks, key=lambda b: (b.group, b.name)):
        e, kind = b.extra_info, b.group.split(" ")[0]
        median = b.stats.median
        if kind == "paired":
            continue  # in the ratios below
        batch = e.get("batch_shape") or ([e["batch"], None, e.get("max_len")] if "batch" in e else None)
        flops = e.get("flops_per_step")
        lines.append("| " + " | ".join([
            {"train_step": "train step", "compile": "compile (from scratch)"}.get(kind, kind),
            f"{e.get('framework', '-')} ({e.get('variant') or '-'})",
            "x".join(str(x) for x in batch if x is not None) if batch else "-",
            e.get("precision", "-"),
            _fmt(median, 1e3, 2) if kind != "compile" else "-",
            _fmt(b.stats.iqr / median if median and b.stats.iqr is not None else None, 100, 1),
            _fmt(b.stats.rounds, 1, 0),
            _fmt(e.get("tokens_per_s"), 1, 0),
            _fmt(flops / median / bf16_peak if flops and median and bf16_peak else None, 100, 1, "%"),
            _fmt(e.get("compile_s"), 1, 2),
        ]) + " |")
    return lines


def ratios(benchmarks: list) -> list[str]:
    """The paired ratios, then each framework at its best against the docs' bars (benches/summary.py)."""
    import summary

    lines = []
    for b in sorted(benchmarks, key=lambda b: b.name):
        e = b.extra_info
        if "ratio" in e:
            r = e["ratio"]
            lines.append(f"paired {e['case']}: {e['ratio_of']} {r['median']:.3f} (IQR {r['q1']:.3f}-{r['q3']:.3f}, "
                         f"{r['n']} pairs)")
    return lines + summary._fair_fight([b for b in benchmarks if b.stats.median is not None], summary.cpu_bf16())


def _write_table(out: Path, device: str, size: str, versions: dict, results: list[dict], say) -> None:
    benchmarks, machine_info = _load(results)
    hardware = machine_info.get("mtcore", {}).get("hardware", {})
    accelerators = sorted({a for fw in hardware.get("frameworks", {}).values() for a in fw.get("accelerators", [])})
    cpu = machine_info.get("cpu", {}).get("brand_raw")
    text = [f"# gpu_check: {device}, {size}, {time.strftime('%Y-%m-%d %H:%M %Z')}", "",
            f"machine: {cpu or '?'}; accelerators: {', '.join(accelerators) or 'none'}",
            "versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
            "stages: " + "; ".join(f"{r['stage']} {r['status']} ({r['seconds']:.0f} s)" for r in results), "",
            *table(benchmarks), "", *[f"- {line}" for line in ratios(benchmarks)]]
    tmp = out / "table.md.tmp"
    tmp.write_text("\n".join(text) + "\n")
    tmp.replace(out / "table.md")
    if say is not None:
        for line in text:
            say(line)


if __name__ == "__main__":
    sys.exit(main())
