"""Decoding latency, greedy and beam search, per framework: one call of ``generate`` from source
ids on the host to output ids on the host, compilation excluded by a warm-up call."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from inputs import SHAPES, median_seconds, other_framework, thread_budget, timed

import mtcore

MAX_LEN = 32
NUM_BEAMS = 4


@cache
def _reference(size: str, framework: str, strategy: str):
    """(framework id, output) of another installed framework decoding on the CPU, or None."""
    other = other_framework(framework)
    if other is None:
        return None
    be, cfg = mtcore.backend(other), mtcore.ModelConfig.preset(size)
    src = _source(size)
    beams = 1 if strategy == "greedy" else NUM_BEAMS
    out = be.generate(be.from_numpy(cfg, _decode_weights(cfg)), cfg, src.src_ids, src.src_mask,
                      max_len=MAX_LEN, num_beams=beams)
    return f"{other}-cpu", out


def _source(size: str) -> mtcore.Batch:
    return mtcore.random_batch(mtcore.ModelConfig.preset(size), SHAPES[size][0], SHAPES[size][1], 1, seed=2)


def _decode_weights(cfg):
    # Bigger than training's init, with a random output bias: outputs vary and arg-max ties, on
    # which frameworks may legitimately differ, become vanishingly rare.
    from mtcore.weights import init_tree

    tree = init_tree(cfg, seed=1, std=0.2)
    tree["final_logits_bias"] = np.random.default_rng(1).normal(0, 1, cfg.vocab_size).astype(np.float32)
    return tree


@pytest.mark.cases("decode")
@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_decode_latency(benchmark, case, strategy, rounds):
    benchmark.group = f"decode-{strategy} {case.device}-{case.size} {thread_budget().threads}thr"
    be, cfg = case.backend(), case.model_config()
    params = be.from_numpy(cfg, _decode_weights(cfg))
    b = SHAPES[case.size][0]
    src = _source(case.size)
    beams = 1 if strategy == "greedy" else NUM_BEAMS

    def decode():
        return be.generate(params, cfg, src.src_ids, src.src_mask, max_len=MAX_LEN, num_beams=beams,
                           compile=case.compile)

    out = decode()  # warm-up: compiles (JAX, torch's compile variants)
    reference = _reference(case.size, case.framework, strategy)
    if reference is not None:
        other_id, other = reference
        agree = (other == out).mean()
        # Identical on CPU in fp32; accelerators may round differently, and one flipped token
        # changes the rest of its row.
        need = 1.0 if case.device == "cpu" else 0.9
        assert agree >= need, f"{case.id} {strategy}: only {agree:.1%} of tokens agree with {other_id}"
    assert out.shape == (b, MAX_LEN)

    result = timed(benchmark, decode, rounds, warmup_rounds=1)
    assert np.array_equal(result, out), "decoding is not deterministic"
    median = median_seconds(benchmark)
    generated = int((out != cfg.pad_id).sum())
    benchmark.extra_info.update(case=case.id, framework=case.framework, variant=case.variant, strategy=strategy,
                                threads=thread_budget().as_dict(), batch=b, max_len=MAX_LEN, num_beams=beams,
                                generated_tokens=generated,
                                tokens_per_s=median and generated / median)
