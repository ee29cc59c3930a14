"""Compile time against depth (2, 6, 12, 24 layers each side) for nn.scan vs Python-loop layer
stacking: the figure that shows why the JAX model scans. A fresh compile every round.

An unrolled program's compile grows faster than its depth (this CPU, tiny layers: 4.9, 10.1,
21.4, 78.2 s for 2, 6, 12, 24 layers), and on a GPU the same sweep did not finish in 9 minutes.
So depths run shallow to deep, each case extrapolates its next compile from the last two it
measured, and a depth whose doubled prediction exceeds ``--compile-budget`` is skipped, saying
what it measured: the figure ends where the device's compiler makes it too slow to draw, instead
of never.
"""

from __future__ import annotations

from math import log

import pytest
from cases import DEPTHS
from inputs import thread_budget
from test_compile import fresh_compile

import mtcore
from mtcore.weights import init_tree

# Compiles above this take one round: a second would add minutes and little information.
ONE_ROUND_S = 8.0
MARGIN = 2.0  # see the skip below
# (case id without depth) -> [(depth, seconds of its fastest compile), ...], shallow to deep
_measured: dict[str, list[tuple[int, float]]] = {}


def predicted_seconds(history: list[tuple[int, float]], depth: int) -> float | None:
    """The next compile's seconds, extrapolated from the last two measured depths as a power law
    in depth (none from one point: the depth ratio alone, i.e. linear growth)."""
    if not history:
        return None
    (d1, t1) = history[-1]
    if len(history) == 1:
        return t1 * depth / d1
    (d0, t0) = history[-2]
    exponent = max(1.0, log(t1 / t0) / log(d1 / d0)) if t0 > 0 and t1 > 0 and d1 > d0 else 1.0
    return t1 * (depth / d1) ** exponent


@pytest.mark.cases("depth")
@pytest.mark.parametrize("depth", DEPTHS, ids=lambda d: f"{d}layers")
def test_compile_time_vs_depth(benchmark, case, depth, request):
    benchmark.group = f"compile_vs_depth {case.device}-{case.variant} {thread_budget().threads}thr"
    history = _measured.setdefault(case.id, [])
    budget = request.config.getoption("--compile-budget")
    expected = predicted_seconds(history, depth)
    # MARGIN times the extrapolation against the budget: growth steepens with depth
    # (docs/findings/2026-11-27-compile-vs-depth.md).
    if expected is not None and MARGIN * expected > budget:
        measured = ", ".join(f"{d} layers {t:.1f} s" for d, t in history)
        pytest.skip(f"compile vs depth: {depth} layers would take ~{expected:.0f} s to compile ({measured}; "
                    f"{MARGIN:g}x that is over --compile-budget {budget:g} s)")
    cfg = case.model_config(encoder_layers=depth, decoder_layers=depth)
    tcfg = case.train_config()
    tree = init_tree(cfg, seed=0)
    data = mtcore.random_batch(cfg, 8, 16, 16, seed=0, full=True)
    results = []

    def compile_once():
        results.append(fresh_compile(case, cfg, tcfg, tree, data))

    rounds = 1 if (history and history[-1][1] > ONE_ROUND_S) else 2
    benchmark.pedantic(compile_once, rounds=rounds, iterations=1, warmup_rounds=0)
    seconds = min(s for s, _ in results)
    history.append((depth, seconds))
    benchmark.extra_info.update(case=f"{case.id}-{depth}layers", depth=depth, stacking=case.variant,
                                compile_s=seconds, predicted_compile_s=expected)
