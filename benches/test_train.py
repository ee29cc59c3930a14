"""Train step time: forward + backward + clip + AdamW, device-synced, compile and warm-up excluded.

torch (eager and torch.compile), jax (nn.scan and Python-loop stacking) and the Hugging Face
MarianMTModel baseline sit in one group per device, size and precision.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from inputs import (
    batch,
    check_first_loss,
    gemm_peak,
    median_seconds,
    profile_steps,
    reference_logits,
    thread_budget,
    timed,
    weights,
)

from mtcore.metrics import train_step_flops
from mtcore.perf.timing import HostMemory, process_max_rss_bytes


@pytest.mark.cases("train")
def test_train_step(benchmark, case, rounds):
    rows = f"-b{case.rows}" if case.rows else ""
    benchmark.group = f"train_step {case.device}-{case.size}{rows}-{case.precision} {thread_budget().threads}thr"
    be, cfg, tcfg = case.backend(), case.model_config(), case.train_config()
    data = be.device_batch(batch(case.size, case.rows), cfg)
    state = be.init_train_state(be.from_numpy(cfg, weights(case.size)), tcfg)

    # Correct before fast: the first real step's loss must match the loss another framework
    # computes from the same weights and batch.
    be.peak_memory(reset=True)
    host = HostMemory()
    compile = case.compile
    # Not fresh: compile time is the compile bench's measurement; here torch.compile may reuse the
    # kernels that bench already built in this process.
    step, first_call_s, state, metrics = be.compile_train_step(cfg, tcfg, state, data, compile=compile, fresh=False)
    first_loss = float(be.sync(metrics["loss"]))
    check_first_loss(case, first_loss)

    def one_step():
        nonlocal state
        state, metrics = step(state, data)
        return be.sync(metrics["loss"])  # the step is done only when its loss exists on the device

    loss = timed(benchmark, one_step, rounds)
    assert math.isfinite(float(loss)), f"{case.id}: loss became {float(loss)}"
    profile_steps(benchmark, case, one_step)  # --profile: a few more steps, traced, after the timed ones

    median = median_seconds(benchmark)
    b = batch(case.size, case.rows)
    flops = train_step_flops(cfg, b)
    benchmark.extra_info.update(case=case.id, first_call_s=first_call_s, first_loss=first_loss, last_loss=float(loss),
                                threads=thread_budget().as_dict())
    if median is None:  # --benchmark-disable: a smoke run, nothing timed
        return
    peak = gemm_peak(case.device, case.precision)
    # torch: the CUDA allocator's peak since this case began. JAX's allocator peak cannot be reset
    # (it would carry earlier cases), so JAX reports XLA's account of the compiled step instead.
    memory, memory_kind = be.step_memory()
    host_growth = host.growth()
    if memory is None and host_growth is not None:  # torch on a CPU: no allocator peak to read
        memory, memory_kind = host_growth, ("process RSS growth over the case (peak minus start; not deterministic: "
                                             "memory earlier cases freed stays in the process and is reused uncounted)")
    benchmark.extra_info.update(
        framework=case.framework,
        variant=case.variant,
        precision=case.precision,
        batch_shape=list(b.shape),
        tokens_per_step=int(b.src_mask.sum() + b.tgt_mask.sum()),
        target_tokens_per_step=b.num_tgt_tokens,
        tokens_per_s=float(b.src_mask.sum() + b.tgt_mask.sum()) / median,
        target_tokens_per_s=b.num_tgt_tokens / median,
        flops_per_step=flops,
        achieved_flops=flops / median,
        gemm_peak_flops=peak,
        mfu=flops / median / peak,
        compile_s=_compile_seconds(case, first_call_s, median),
        memory_bytes=memory,
        memory_kind=memory_kind,
        process_max_rss_bytes=process_max_rss_bytes(),
        host_rss_growth_bytes=host_growth,
    )


@pytest.mark.cases("decode")
def test_forward_matches(case):
    """Not timed: the fp32 forward pass on the bench weights matches the other framework's."""
    be, cfg = case.backend(), case.model_config()
    reference = reference_logits(case.size, case.framework)
    if reference is None:
        pytest.skip("no other framework installed to compare with")
    got = be.forward(be.from_numpy(cfg, weights(case.size)), cfg, batch(case.size))
    scale = np.abs(reference).max()
    assert np.abs(got - reference).max() <= 1e-3 * max(scale, 1.0)


def _compile_seconds(case, first_call_s: float, median: float) -> float | None:
    """JAX: its ahead-of-time compile; torch eager: the first call's overhead over a step;
    torch.compile: None, as its compile time is the compile bench's (here it may reuse that
    bench's kernels)."""
    if case.framework == "jax":
        return first_call_s
    if case.compile:
        return None
    return max(first_call_s - median, 0.0)
