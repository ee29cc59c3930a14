"""Compile time, a real from-scratch compile every round, reported apart from step time.

JAX: a new function object, in-memory caches cleared, persistent cache off; timed from tracing to
a compiled executable. torch.compile: dynamo reset and an empty inductor cache; timed as the first
call, which compiles and takes one step. Also: compile time against depth for nn.scan vs a Python
loop, the reason the JAX model scans.
"""

from __future__ import annotations

import math

import pytest
from inputs import batch, reference_logits, thread_budget, weights

from mtcore.metrics import smoothed_loss


def fresh_compile(case, cfg, tcfg, tree, data):
    be = case.backend()
    state = be.init_train_state(be.from_numpy(cfg, tree), tcfg)
    _, seconds, state, metrics = be.compile_train_step(cfg, tcfg, state, data, compile=case.compile or True)
    loss = float(be.sync(metrics["loss"]))
    assert math.isfinite(loss), f"{case.id}: loss {loss} after the freshly compiled step"
    return seconds, loss


@pytest.mark.cases("compile")
def test_compile_time(benchmark, case, request):
    benchmark.group = f"compile {case.device}-{case.size}-{case.precision} {thread_budget().threads}thr"
    cfg, tcfg = case.model_config(), case.train_config()
    data = case.backend().device_batch(batch(case.size), cfg)
    results = []

    def compile_once():
        results.append(fresh_compile(case, cfg, tcfg, weights(case.size), data))

    rounds = request.config.getoption("--compile-rounds") or (2 if case.device == "cpu" else 3)
    benchmark.pedantic(compile_once, rounds=rounds, iterations=1, warmup_rounds=0)
    seconds = [s for s, _ in results]
    # Each fresh compile trained a real first step: its loss must match another framework's on the
    # same weights (dropout draws differ between rounds, hence the tolerance).
    reference = reference_logits(case.size, case.framework)
    if reference is not None:
        b = batch(case.size)
        want = smoothed_loss(reference, b.tgt_out, b.tgt_mask, tcfg.label_smoothing)
        for _, loss in results:
            assert loss == pytest.approx(want, rel=2e-2), f"{case.id}: loss {loss} after a fresh compile vs {want}"
    benchmark.extra_info.update(case=case.id, framework=case.framework, variant=case.variant, precision=case.precision,
                                compile_s=min(seconds), what=(
        "trace + lower + XLA compile" if case.framework == "jax" else "first call: torch.compile + one step"))
