"""What the benches share: the process set-up the session runs under, timing (warm-up, calibrated
rounds, the gate's turns), the inputs every framework gets (weights, batches), the reference each
result is checked against before it is timed, and the GEMM peak MFU is measured against."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import cache
from math import ceil
from typing import Any

import numpy as np
import pytest
from turns import Turns

import mtcore
from mtcore.devices import missing
from mtcore.perf import threads
from mtcore.perf.setup import ProcessSetup

# (batch, source length, target length) per size; marian-en-hu is the 8 x 64 tokens.
SHAPES = {"tiny": (16, 32, 32), "small": (16, 48, 48), "base": (8, 64, 64), "marian-en-hu": (8, 64, 64)}
# Timed work per case, when --benchmark-max-time is not given: pytest-benchmark's calibration
# runs as many rounds as fit (at least --benchmark-min-rounds): enough timed work for tiny/small
# train-step medians to hold still run to run (docs/measurement.md).
MAX_TIME_S = 2.0
MIN_ROUNDS = 10
# The paired bench alternates the frameworks; its ratio needs enough pairs for a tight interval.
MIN_PAIRS = 20


@dataclass
class Session:
    """What the session's pytest_configure set (benches/conftest.py): the options, the process
    set-up, and the gate's turns (benches/turns.py; alone, they do nothing)."""

    config: Any = None
    setup: ProcessSetup | None = None
    turns: Turns = field(default_factory=Turns)
    hosts: int | None = None  # --hosts: the worker benches spread over emulated hosts
    rate: str | None = None  # --rate: their links' rate
    hosts_missing: str | None = None  # why this machine cannot build them (no root, no iproute2)
    rates: tuple[str, ...] = ()  # --rates: the link sweep's grid
    delay: float | None = None  # --delay: milliseconds netem holds each frame (the link sweep)
    offload: bool = False  # --offload: the link sweep's hosts keep segmentation offload
    # What each framework x mesh's step moves and a device holds (records.gated_costs), by case id:
    # saved with the run's JSON (conftest.py), judged exactly by the gate.
    costs: dict = field(default_factory=dict)
    plugins: tuple[str, ...] = ()  # the session's -p plugins, which its worker processes load too
    profile: Any = None  # --profile DIR: where the train benches write a trace of a few steps after timing


session = Session()


@cache
def backend(framework: str, device: str):
    return mtcore.backend(framework, device)


def thread_budget() -> threads.ThreadBudget:
    assert session.setup is not None, "pytest_configure sets the process up first"
    return session.setup.threads


def timed(benchmark, fn, rounds: int | None, warmup_rounds: int = 2, min_rounds: int | None = None, on_start=None):
    """Time ``fn`` (which ends with a device sync) after ``warmup_rounds`` untimed calls: ``rounds``
    rounds when given (--rounds), else as many as fill --benchmark-max-time, at least
    --benchmark-min-rounds (or ``min_rounds``). ``on_start`` is called as the timed rounds begin.
    Returns ``fn``'s last result."""
    if not benchmark.enabled:  # --benchmark-disable: one untimed call
        return benchmark(fn)
    start = time.perf_counter()
    for _ in range(max(warmup_rounds, 1)):
        fn()
    one = (time.perf_counter() - start) / max(warmup_rounds, 1)
    n = rounds or max(min_rounds or int(session.config.getoption("benchmark_min_rounds")),
                      ceil(float(session.config.getoption("benchmark_max_time")) / max(one, 1e-9)))
    # In the gate, base and head time the same rounds (the larger count), so their rounds keep
    # alternating to the end of the case. Alone, n as it is.
    n = session.turns.agree(benchmark.name, n)
    if on_start is not None:
        on_start()
    before = speed_probe()
    # ``setup`` runs untimed before every round: in the gate, the partner session's round, then one
    # more call of ``fn`` (benches/turns.py). Alone, nothing.
    result = benchmark.pedantic(fn, setup=session.turns.before_round(fn), rounds=n, iterations=1, warmup_rounds=0)
    # How fast this core was just before and just after the rounds, on a fixed workload: the
    # machine's own drift, recorded next to the rounds it may have moved (never gated on).
    benchmark.extra_info["probe_s"] = [before, speed_probe()]
    return result


def speed_probe(reps: int = 9) -> float:
    """Median seconds of one fixed float32 matmul (512 x 512), on the
    thread budget's BLAS pool: a yardstick of the core's speed at this moment."""
    a = np.random.default_rng(0).standard_normal((512, 512), dtype=np.float32)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - start)
    return float(np.median(times))


@cache
def weights(size: str) -> dict[str, np.ndarray]:
    """The initial weights every framework starts from, per size."""
    from mtcore.weights import init_tree

    return init_tree(mtcore.ModelConfig.preset(size), seed=0)


@cache
def batch(size: str, rows: int | None = None) -> mtcore.Batch:
    """A full (unpadded) batch: every framework does exactly the same work. ``rows`` replaces the
    size's default number of sentences."""
    b, s, t = SHAPES[size]
    return mtcore.random_batch(mtcore.ModelConfig.preset(size), rows or b, s, t, seed=0, full=True)


def other_framework(framework: str) -> str | None:
    """An installed mtcore implementation other than ``framework``'s (for ``hf`` either one is):
    what each bench checks its own result against. None when there is none."""
    for other in ("torch", "jax"):
        if other != framework and mtcore.available(other) is None:
            return other
    return None


@cache
def reference_logits(size: str, framework: str, rows: int | None = None) -> np.ndarray | None:
    """fp32 CPU logits of ``other_framework(framework)`` on the shared weights and batch."""
    other = other_framework(framework)
    if other is None:
        return None
    be = backend(other, "cpu")
    cfg = mtcore.ModelConfig.preset(size)
    return be.forward(be.from_numpy(cfg, weights(size)), cfg, batch(size, rows))


_peaks: dict[tuple[str, str], dict[str, float]] = {}


def gemm_peak(device: str, precision: str) -> float:
    """The best matmul FLOP/s any installed framework reaches on ``device``: MFU's denominator."""
    from mtcore.backend import framework

    key = (device, precision)
    if key not in _peaks:
        _peaks[key] = {fw: framework(fw).gemm_peak(device, precision) for fw in ("torch", "jax")
                       if missing(fw, device) is None}
    return max(_peaks[key].values())


def median_seconds(benchmark) -> float | None:
    """The timed median, or None under --benchmark-disable (each bench then runs once, untimed)."""
    stats = getattr(benchmark, "stats", None)
    return stats.stats.median if stats is not None else None


def check_first_loss(case, loss: float) -> None:
    """Correct before fast: a case's first real training step must give the loss another
    framework computes from the same weights and batch."""
    assert math.isfinite(loss), f"{case.id}: first loss {loss}"
    reference = reference_logits(case.size, case.framework, case.rows)
    if reference is None:
        return
    from mtcore.metrics import smoothed_loss

    b = batch(case.size, case.rows)
    want = smoothed_loss(reference, b.tgt_out, b.tgt_mask, case.train_config().label_smoothing)
    # The first step runs with dropout (different random masks in each framework) and, for bf16,
    # at lower precision; a freshly initialised model's loss is still pinned down to a few percent.
    # Forward logits in fp32 are checked to 1e-3 in test_forward_matches.
    tolerance = 5e-2 if case.precision == "bf16" else 2e-2
    assert loss == pytest.approx(want, rel=tolerance), f"{case.id}: loss {loss} vs {want}"




PROFILED_STEPS = 3


def profile_steps(benchmark, case, run) -> None:
    """--profile: after the timed rounds, ``PROFILED_STEPS`` more steps (``run``: one synced step)
    under the framework's profiler, the trace in the --profile folder named by case, framework and
    rank, and where the median step's time went in ``extra_info`` (mtcore.perf.trace)."""
    if session.profile is None or median_seconds(benchmark) is None:
        return
    from mtcore.backend import framework
    from mtcore.perf.trace import summary, trace_path, traced_steps

    path = trace_path(session.profile, case.id, case.framework, 0)
    steps = traced_steps(framework(case.framework), path, case.device, run, PROFILED_STEPS)
    benchmark.extra_info.update(traces=[str(path)], breakdown=[{"process": 0, **summary(steps)}])
