"""Who is faster, measured so that machine drift cannot decide it: torch's and JAX's train steps
alternate round by round in one process (torch-jax, jax-torch, ...), each synced, on the same
weights, batch and thread budget. Each round gives one paired ratio; the bench reports their median
with quartiles and a confidence interval of the median, as ``mtcore compare`` does for epochs.

Timed single-framework cases run minutes apart, and on a shared machine their medians drift by
more than the frameworks differ; a ratio of pairs taken back to back holds still across processes
(docs/findings/2026-11-27-back-to-back-runs.md).
"""

from __future__ import annotations

import math
import statistics
import time

import pytest
from inputs import MIN_PAIRS, batch, check_first_loss, thread_budget, timed, weights

from mtcore.perf.timing import ratio_stats


@pytest.mark.cases("paired")
def test_paired_train_step(benchmark, case, rounds):
    benchmark.group = f"paired train_step {case.device}-{case.size}-{case.precision} {thread_budget().threads}thr"
    steps = {}
    for side in case.cases:
        be, cfg, tcfg = side.backend(), side.model_config(), side.train_config()
        data = be.device_batch(batch(side.size), cfg)
        state = be.init_train_state(be.from_numpy(cfg, weights(side.size)), tcfg)
        step, _, state, metrics = be.compile_train_step(cfg, tcfg, state, data, compile=False, fresh=False)
        check_first_loss(side, float(be.sync(metrics["loss"])))
        steps[side.framework] = [be, step, state, data]

    names = [side.framework for side in case.cases]
    times: dict[str, list[float]] = {name: [] for name in names}

    def one_pair():
        # Who goes first alternates, so neither always runs on the other's warm caches.
        order = names if len(times[names[0]]) % 2 == 0 else names[::-1]
        for name in order:
            be, step, state, data = steps[name]
            start = time.perf_counter()
            state, metrics = step(state, data)
            loss = be.sync(metrics["loss"])
            times[name].append(time.perf_counter() - start)
            steps[name][2] = state
        return float(loss)

    loss = timed(benchmark, one_pair, rounds, min_rounds=MIN_PAIRS,
                 on_start=lambda: [t.clear() for t in times.values()])
    assert math.isfinite(loss), f"{case.id}: loss became {loss}"

    benchmark.extra_info.update(case=case.id, frameworks=names, threads=thread_budget().as_dict())
    if not benchmark.enabled:  # --benchmark-disable: one untimed pair, nothing to compare
        return
    ratio = ratio_stats(times[names[1]], times[names[0]])
    benchmark.extra_info.update(
        ratio=ratio,  # names[1] / names[0] step time: below 1, names[1] is faster
        ratio_of=f"{names[1]}/{names[0]} step time",
        median_s={name: statistics.median(t) for name, t in times.items()},
    )
