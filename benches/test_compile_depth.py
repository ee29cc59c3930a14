"""Compile time against depth (2, 6, 12, 24 layers each side) for nn.scan vs Python-loop layer
stacking: the figure that shows why the JAX model scans. A fresh compile every round."""

from __future__ import annotations

import pytest
from test_compile import fresh_compile

import mtcore
from conftest import DEPTHS, thread_budget
from mtcore.weights import init_tree


@pytest.mark.cases("depth")
@pytest.mark.parametrize("depth", DEPTHS, ids=lambda d: f"{d}layers")
def test_compile_time_vs_depth(benchmark, case, depth):
    benchmark.group = f"compile_vs_depth {case.device}-{case.variant} {thread_budget().threads}thr"
    cfg = case.model_config(encoder_layers=depth, decoder_layers=depth)
    tcfg = case.train_config()
    tree = init_tree(cfg, seed=0)
    data = mtcore.random_batch(cfg, 8, 16, 16, seed=0, full=True)
    results = []

    def compile_once():
        results.append(fresh_compile(case, cfg, tcfg, tree, data))

    # An unrolled 24+24-layer program takes long to compile on a CPU: one round is the measurement.
    rounds = 1 if (case.device == "cpu" and case.variant == "loop" and depth >= 12) else 2
    benchmark.pedantic(compile_once, rounds=rounds, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(case=f"{case.id}-{depth}layers", depth=depth, stacking=case.variant,
                                compile_s=min(s for s, _ in results))
