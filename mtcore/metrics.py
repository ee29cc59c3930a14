"""Loss in numpy (the cross-framework reference), FLOPs per step and MFU, BLEU and chrF (sacrebleu)."""

from __future__ import annotations

import numpy as np

from mtcore.batch import Batch
from mtcore.config import ModelConfig


def smoothed_loss(logits: np.ndarray, labels: np.ndarray, mask: np.ndarray, label_smoothing: float) -> float:
    """Label-smoothed cross-entropy over real tokens, in float64: the formula both train steps use."""
    logits = logits.astype(np.float64)
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))  # (B, T, V)
    nll = -np.take_along_axis(logp, labels[..., None].astype(np.int64), -1)[..., 0]
    per_token = (1 - label_smoothing) * nll - label_smoothing * logp.mean(-1)
    return float((per_token * mask).sum() / max(mask.sum(), 1))


def forward_flops(cfg: ModelConfig, batch_size: int, src_len: int, tgt_len: int) -> int:
    """Matmul FLOPs (2 per multiply-add) of one forward pass over padded ``(B, S)``/``(B, T)``.

    Padded positions count: they are computed. Attention scores count in full (no causal saving),
    as both frameworks compute them. Softmax, norms and activations are left out (< 2%).
    """
    d, f, v = cfg.d_model, cfg.ffn_dim, cfg.vocab_size
    s, t = src_len, tgt_len
    encoder_layer = 4 * 2 * s * d * d + 2 * 2 * s * d * f + 2 * 2 * s * s * d
    decoder_layer = (
        4 * 2 * t * d * d  # self-attention projections
        + 2 * 2 * t * d * d + 2 * 2 * s * d * d  # cross-attention: q/out on targets, k/v on sources
        + 2 * 2 * t * d * f  # MLP
        + 2 * 2 * t * t * d + 2 * 2 * t * s * d  # attention scores and weighted sums
    )
    output = 2 * t * d * v
    return batch_size * (cfg.encoder_layers * encoder_layer + cfg.decoder_layers * decoder_layer + output)


def train_step_flops(cfg: ModelConfig, batch: Batch) -> int:
    """Forward + backward: the backward pass costs twice the forward's matmuls."""
    b, s, t = batch.shape
    return 3 * forward_flops(cfg, b, s, t)


def mfu(flops_per_step: float, seconds_per_step: float, peak_flops_per_s: float) -> float:
    """Model FLOPs utilisation: achieved matmul throughput over the measured GEMM peak."""
    return flops_per_step / seconds_per_step / peak_flops_per_s


def bleu(hypotheses: list[str], references: list[str]) -> float:
    """Corpus BLEU (sacrebleu's defaults: 13a tokenisation, exponential smoothing off), 0-100."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)


def chrf(hypotheses: list[str], references: list[str]) -> float:
    """Corpus chrF (character 6-grams, beta 2), 0-100: kinder than BLEU to a young model and to
    Hungarian's long, inflected words."""
    import sacrebleu

    return float(sacrebleu.corpus_chrf(hypotheses, [references]).score)
