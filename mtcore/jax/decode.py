"""Greedy and beam-search decoding in JAX with a key/value cache. Mirrors ``mtcore/torch/decode.py``.

The token loop is a ``lax.while_loop`` that stops once every row has emitted eos: one compiled step
whatever the output length. The first step runs before the loop because it also fills the
cross-attention cache, which changes the cache's structure.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from mtcore.config import ModelConfig
from mtcore.jax.model import Transformer, init_cache


def _next_logprobs(cfg: ModelConfig, logits: jax.Array) -> jax.Array:
    # The pad id doubles as the decoder start token: never a word to emit.
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return logp.at[:, cfg.pad_id].set(-jnp.inf)


@partial(jax.jit, static_argnames=("cfg", "max_len"))
def greedy(variables, src_ids, src_mask, cfg: ModelConfig, max_len: int) -> jax.Array:
    """``(B, max_len)`` token ids, eos included, pad after it."""
    model = Transformer(cfg)
    b = src_ids.shape[0]
    enc = model.apply(variables, src_ids, src_mask, method=Transformer.encode)  # (B, S, D)

    def step(state):
        i, token, cache, out, done = state
        logits, cache = model.apply(variables, token, i, cache, enc, src_mask, method=Transformer.decode_step)
        token = jnp.where(done, cfg.pad_id, _next_logprobs(cfg, logits).argmax(-1))
        out = out.at[:, i].set(token)
        return i + 1, token, cache, out, done | (token == cfg.eos_id)

    start = jnp.full((b,), cfg.decoder_start_id, jnp.int32)
    out = jnp.full((b, max_len), cfg.pad_id, jnp.int32)
    state = step((0, start, init_cache(cfg, b, max_len, enc.dtype), out, jnp.zeros((b,), bool)))
    state = jax.lax.while_loop(lambda s: (s[0] < max_len) & ~s[4].all(), step, state)
    return state[3]


@partial(jax.jit, static_argnames=("cfg", "max_len", "num_beams", "length_penalty"))
def beam_search(
    variables, src_ids, src_mask, cfg: ModelConfig, max_len: int, num_beams: int = 4, length_penalty: float = 1.0
) -> jax.Array:
    """``(B, max_len)`` best hypothesis per row by ``sum log p / length ** length_penalty``."""
    model = Transformer(cfg)
    b, k, v = src_ids.shape[0], num_beams, cfg.vocab_size
    enc = model.apply(variables, src_ids, src_mask, method=Transformer.encode)
    enc = jnp.repeat(enc, k, axis=0)  # (B*K, S, D)
    src_mask = jnp.repeat(src_mask, k, axis=0)  # (B*K, S)
    finished_row = jnp.full((v,), -jnp.inf).at[cfg.pad_id].set(0.0)  # only padding, at no cost

    def step(state):
        i, token, cache, seqs, scores, done = state
        logits, cache = model.apply(variables, token, i, cache, enc, src_mask, method=Transformer.decode_step)
        logp = _next_logprobs(cfg, logits).reshape(b, k, v)  # (B, K, V)
        logp = jnp.where(done[..., None], finished_row, logp)
        scores, flat = jax.lax.top_k((scores[..., None] + logp).reshape(b, k * v), k)  # (B, K)
        beam, token = flat // v, flat % v
        rows = (jnp.arange(b)[:, None] * k + beam).reshape(-1)  # (B*K,)
        # Cache arrays are (L, B*K, ...): reorder the hypotheses' self-attention history.
        cache = {name: a[:, rows] if name in ("k", "v") else a for name, a in cache.items()}
        seqs = jnp.take_along_axis(seqs, beam[..., None], axis=1).at[:, :, i].set(token)
        done = jnp.take_along_axis(done, beam, axis=1) | (token == cfg.eos_id)
        return i + 1, token.reshape(-1), cache, seqs, scores, done

    start = jnp.full((b * k,), cfg.decoder_start_id, jnp.int32)
    seqs = jnp.full((b, k, max_len), cfg.pad_id, jnp.int32)
    scores = jnp.full((b, k), -jnp.inf).at[:, 0].set(0.0)  # all beams start identical: expand only the first
    state = (0, start, init_cache(cfg, b * k, max_len, enc.dtype), seqs, scores, jnp.zeros((b, k), bool))
    state = step(state)
    state = jax.lax.while_loop(lambda s: (s[0] < max_len) & ~s[5].all(), step, state)
    _, _, _, seqs, scores, _ = state
    lengths = jnp.maximum((seqs != cfg.pad_id).sum(-1), 1).astype(jnp.float32)  # (B, K)
    best = (scores / lengths**length_penalty).argmax(-1)  # (B,)
    return seqs[jnp.arange(b), best]
