"""The terminal summary of what pytest-benchmark keeps in ``extra_info`` but does not print:
medians with IQR and rounds, tokens/s, MFU, memory, compile seconds; the paired ratios; ratios of
medians within each group; each framework at its best, against the bars on accelerators; what
each mesh costs; the benchmarks too noisy here to gate."""

from __future__ import annotations

import math
import os

from inputs import session

from mtcore.devices import BF16_CPU_FLAGS, cpu_bf16


def _fmt(value, scale=1.0, digits=1, suffix=""):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value * scale:,.{digits}f}{suffix}"


def write(terminalreporter, config):
    benchmark_session = getattr(config, "_benchmarksession", None)
    benchmarks = [b for b in getattr(benchmark_session, "benchmarks", []) if b.extra_info]
    if not benchmarks or session.setup is None:
        return
    tr = terminalreporter
    tr.section("mtcore: throughput, MFU, memory, compile (pytest-benchmark's extra_info)")
    for line in session.setup.describe():
        tr.write_line(line)
    if os.environ.get("XLA_FLAGS"):
        tr.write_line(f"XLA_FLAGS: {os.environ['XLA_FLAGS']}")
    header = (f"{'benchmark':58} {'median ms':>10} {'IQR %':>6} {'rounds':>6} {'tokens/s':>10} "
              f"{'TFLOP/s':>8} {'MFU':>7} {'mem MB':>8} {'compile s':>9}")
    tr.write_line(header)
    for b in sorted(benchmarks, key=lambda b: (b.group or "", b.name)):
        e = b.extra_info
        median = b.stats.median if b.stats else None
        iqr = b.stats.iqr / median if b.stats and median else None
        tr.write_line(
            f"{b.name:58} {_fmt(median, 1e3, 2):>10} {_fmt(iqr, 100, 1):>6} "
            f"{_fmt(b.stats.rounds if b.stats else None, 1, 0):>6} {_fmt(e.get('tokens_per_s'), 1, 0):>10} "
            f"{_fmt(e.get('achieved_flops'), 1e-12, 3):>8} {_fmt(e.get('mfu'), 100, 1, '%'):>7} "
            f"{_fmt(e.get('memory_bytes'), 1e-6, 0):>8} {_fmt(e.get('compile_s'), 1, 2):>9}"
        )
    _print_paired(tr, benchmarks)
    _print_ratios(tr, benchmarks)
    _print_fair_fight(tr, benchmarks)
    _print_mesh_costs(tr, benchmarks)
    _print_too_noisy(tr, benchmarks)
    if config.getoption("benchmark_compare", None):  # [] unless given
        tr.write_line("note: --benchmark-compare sets one run against one run, and cannot see how much a benchmark's "
                      "speed differs from one run to the next here; make bench-check judges against this "
                      "machine's history, make bench-gate pairs base and head (docs/regression-gate.md)", yellow=True)


def _print_too_noisy(tr, benchmarks):
    """The benchmarks whose rounds spread wider within this run than the threshold a check would
    judge them by: no single run of them can resolve it here."""
    from mtcore.perf.history import DRIFT

    # The compile benches time a few cold compiles and are judged at their own, looser threshold
    # (mtcore.perf.regression.METRICS): a wide IQR of theirs says nothing about the 15%.
    lines = [f"{b.name}: IQR {100 * b.stats.iqr / b.stats.median:.0f}%" for b in sorted(benchmarks, key=lambda b: b.name)
             if b.stats and b.stats.median and b.stats.iqr / b.stats.median > DRIFT
             and not b.name.startswith("test_compile_time")]
    _write_section(tr, f"too noisy on this machine to gate at {100 * DRIFT:g}% (rounds' IQR within this run; "
                       "make bench-check also weighs the spread between runs):", lines)


def _print_paired(tr, benchmarks):
    paired = [b for b in benchmarks if "ratio" in b.extra_info]
    if not paired:
        return
    tr.write_line("")
    tr.write_line("who is faster, paired: the frameworks' steps alternate round by round in one process, so drift "
                  "hits both alike")
    for b in sorted(paired, key=lambda b: b.name):
        e, r = b.extra_info, b.extra_info["ratio"]
        a, c = e["frameworks"]
        faster, factor = (c, 1 / r["median"]) if r["median"] < 1 else (a, r["median"])
        tr.write_line(
            f"  {e['case']}: {c}/{a} step time {r['median']:.3f} (IQR {r['q1']:.3f}-{r['q3']:.3f}, "
            f"{r['confidence']:.0%} CI of the median {r['ci_low']:.3f}-{r['ci_high']:.3f}, {r['n']} pairs, "
            f"{e['threads']['threads']} thread(s) each): {faster} {factor:.2f}x faster")


# The bars a fair fight clears on an accelerator (docs/benchmarks.md, "each framework at its best"): torch's
# fastest variant against JAX's, bf16 against the same framework and variant's fp32, and the faster
# framework's MFU at bf16 against the measured bf16 GEMM peak.
TORCH_WITHIN = {"train_step": 1.25, "decode-greedy": 1.5}
BF16_AT_MOST = 0.6
MFU_AT_LEAST = 0.5


def _bf16_note(flags: tuple[str, ...]) -> str:
    """What a CPU's bf16 ratio means: without bf16 instructions the frameworks emulate it."""
    if flags:
        return f" (this CPU has bf16 arithmetic: {', '.join(flags)})"
    return (f" (this CPU has no bf16 arithmetic ({' / '.join(BF16_CPU_FLAGS)} absent): bf16 is emulated here, "
            "so this ratio is no verdict on bf16)")


def _fair_fight(benchmarks, cpu_bf16: tuple[str, ...] = ()) -> list[str]:
    """Lines comparing each framework at its best: per train-step and greedy-decode group, the
    fastest variant of each framework (torch: eager, compile, cudagraphs), the torch/JAX ratio of
    those, bf16's median over the same variant's fp32 one, and the best MFU at bf16; on
    accelerators, against the bars."""
    medians: dict[tuple[str, str], dict[str, dict[str, tuple[float, float | None]]]] = {}
    for b in benchmarks:
        e, kind, where = b.extra_info, *(b.group or "  ").split(" ")[:2]
        if not b.stats or e.get("framework") not in ("torch", "jax") or kind not in TORCH_WITHIN or where == "scaling":
            continue
        medians.setdefault((kind, where), {}).setdefault(e["framework"], {})[e.get("variant", "")] = (
            b.stats.median, e.get("mfu"))

    def fastest(variants: dict[str, tuple[float, float | None]]) -> str:
        return min(variants, key=lambda v: variants[v][0])

    def verdict(ok: bool, accelerator: bool, bar: str) -> str:
        return f" (bar {bar}: {'met' if ok else 'NOT met'})" if accelerator else ""

    lines = []
    for (kind, where), fws in sorted(medians.items()):
        accelerator = not where.startswith("cpu")
        best = {fw: fastest(variants) for fw, variants in fws.items()}
        if {"torch", "jax"} <= set(fws):
            t, j = fws["torch"][best["torch"]][0], fws["jax"][best["jax"]][0]
            ratio, bar = t / j, TORCH_WITHIN[kind]
            lines.append(f"{kind} {where}: torch ({best['torch']}) {t * 1e3:.2f} ms, jax ({best['jax']}) {j * 1e3:.2f} "
                         f"ms: torch/jax {ratio:.2f}" + verdict(ratio <= bar, accelerator, f"<= {bar}"))
        if kind == "train_step" and where.endswith("-bf16"):
            fp32 = medians.get((kind, where[: -len("bf16")] + "fp32"), {})
            for fw in sorted(fws):
                v = best[fw]
                if v in fp32.get(fw, {}):
                    ratio = fws[fw][v][0] / fp32[fw][v][0]
                    lines.append(f"{kind} {where}: {fw} ({v}) bf16/fp32 step time {ratio:.2f}"
                                 + verdict(ratio <= BF16_AT_MOST, accelerator, f"<= {BF16_AT_MOST}")
                                 + ("" if accelerator else _bf16_note(cpu_bf16)))
            winner = min(fws, key=lambda fw: fws[fw][best[fw]][0])
            mfu = fws[winner][best[winner]][1]
            if mfu is not None:
                lines.append(f"{kind} {where}: MFU of the faster framework ({winner}, {best[winner]}) {mfu:.1%} of the "
                             "measured bf16 GEMM peak" + verdict(mfu >= MFU_AT_LEAST, accelerator, f">= {MFU_AT_LEAST:.0%}"))
    return lines


def _write_section(tr, heading: str, lines: list[str]) -> None:
    """A blank line, ``heading`` and ``lines`` indented under it; nothing when there are no lines."""
    if lines:
        tr.write_line("")
        tr.write_line(heading)
        for line in lines:
            tr.write_line("  " + line)


def _print_fair_fight(tr, benchmarks):
    _write_section(tr, "each framework at its best (fastest variant per group; cases ran one after another, so this "
                       "is an indication; bars apply on accelerators):", _fair_fight(benchmarks, cpu_bf16()))


def _mesh_costs(benchmarks) -> list[str]:
    """A line per mesh case: what a device holds and what a step makes it send, measured against
    predicted, and the bandwidth the sending needed at the measured step time; a line per
    data-parallel scaling case: the bytes and how long their all-reduce takes alone."""
    lines = []
    for b in sorted(benchmarks, key=lambda b: b.name):
        e = b.extra_info
        if e.get("all_reduce_alone_s") is not None:  # the data-parallel scaling bench
            lines.append(f"{e['case']}: sends {e['sent_bytes_per_step'] / 1e6:,.3f} MB a step; its all-reduce alone "
                         f"{e['all_reduce_alone_s'] * 1e3:,.2f} ms, {100 * e['all_reduce_share']:.0f}% of the median step "
                         "(an upper bound: in the step it overlaps the backward pass)")
        if "held_bytes" not in e:
            continue
        held, want = e["held_bytes"]["total"], e["held_bytes_predicted"]["total"]
        sent, predicted = e["sent_bytes_per_step"], e["sent_bytes_per_step_predicted"]
        kinds = ", ".join(f"{c['calls']} {c['kind']}" for c in e["collectives"]) or "none"
        line = (f"{e['case']}: holds {held / 1e6:,.2f} MB (predicted {want / 1e6:,.2f}); sends {sent / 1e6:,.3f} MB "
                f"a step (predicted {predicted / 1e6:,.3f}; {kinds})")
        if e.get("bandwidth_needed_bytes_per_s") is not None:
            line += f"; {e['bandwidth_needed_bytes_per_s'] / 1e9:.3f} GB/s at the median step"
        lines.append(line)
    return lines


def _print_mesh_costs(tr, benchmarks):
    _write_section(tr, "what each mesh costs a device (params + AdamW held; bytes sent a step, ring algorithms; "
                       "data parallel: its all-reduce timed alone; docs/parallelism.md):", _mesh_costs(benchmarks))


def _print_ratios(tr, benchmarks):
    """Ratios of medians within each group (same device, size, precision)."""
    by_group: dict[str, dict[str, float]] = {}
    for b in benchmarks:
        if b.stats and b.group and "ratio" not in b.extra_info:
            by_group.setdefault(b.group, {})[b.extra_info.get("case", b.name)] = b.stats.median
    lines = []
    for group, medians in sorted(by_group.items()):
        if len(medians) < 2:
            continue
        fastest = min(medians, key=medians.get)
        ranked = sorted(medians.items(), key=lambda kv: kv[1])[1:]
        rest = ", ".join(f"{name} {t / medians[fastest]:.2f}x" for name, t in ranked)
        lines.append(f"{group}: fastest {fastest}; slower: {rest}")
    _write_section(tr, "ratios of medians within each group (cases ran one after another, so drift between them is "
                       "NOT cancelled: an indication; the paired lines above are the measurement):", lines)
