"""Greedy and beam-search decoding in JAX with a key/value cache. Mirrors ``mtcore/torch/decode.py``.

Both follow Hugging Face's ``generate`` for a Marian checkpoint with its own settings: pad is never
generated (its ``bad_words_ids``), the last position is forced to eos when the length limit is
reached (``forced_eos_token_id``), and beam search is HF's: ``2 * num_beams`` candidates per step,
the best ``num_beams`` unfinished ones run on, finished ones enter a set of the ``num_beams`` best
by ``sum log p / length ** length_penalty``, and the search ends when no running beam can beat
that set (``early_stopping``: False, True or "never", as in HF). The masks (-1e9) and the order of
operations are HF's, so ties and rounding break the same way.

The token loop is a ``lax.while_loop``: one compiled step whatever the output length. The first
step runs before the loop because it also fills the cross-attention cache, which changes the
cache's structure.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from mtcore.config import ModelConfig
from mtcore.jax.model import Transformer, init_cache

MASKED = -1.0e9  # HF's score for a candidate that may not be chosen


def _next_logprobs(cfg: ModelConfig, logits: jax.Array, i, max_len: int) -> jax.Array:
    """Log-probabilities of the token at position ``i`` ``(N, V)``, as HF's logits processors
    leave them: pad banned (it doubles as the decoder start token), eos forced at the last position."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    logp = logp.at[:, cfg.pad_id].set(-jnp.inf)
    only_eos = jnp.full(logp.shape[-1:], -jnp.inf).at[cfg.eos_id].set(0.0)  # (V,)
    return jnp.where(i == max_len - 1, only_eos, logp)


@partial(jax.jit, static_argnames=("cfg", "max_len"))
def greedy(variables, src_ids, src_mask, cfg: ModelConfig, max_len: int) -> jax.Array:
    """``(B, max_len)`` token ids, eos included, pad after it."""
    model = Transformer(cfg)
    b = src_ids.shape[0]
    enc = model.apply(variables, src_ids, src_mask, method=Transformer.encode)  # (B, S, D)

    def step(state):
        i, token, cache, out, done = state
        logits, cache = model.apply(variables, token, i, cache, enc, src_mask, method=Transformer.decode_step)
        token = jnp.where(done, cfg.pad_id, _next_logprobs(cfg, logits, i, max_len).argmax(-1))
        out = out.at[:, i].set(token)
        return i + 1, token, cache, out, done | (token == cfg.eos_id)

    start = jnp.full((b,), cfg.decoder_start_id, jnp.int32)
    out = jnp.full((b, max_len), cfg.pad_id, jnp.int32)
    state = step((0, start, init_cache(cfg, b, max_len, enc.dtype), out, jnp.zeros((b,), bool)))
    state = jax.lax.while_loop(lambda s: (s[0] < max_len) & ~s[4].all(), step, state)
    return state[3]


def _gather(x: jax.Array, index: jax.Array) -> jax.Array:
    """``x[b, index[b, j]]`` for ``x`` ``(B, N, ...)`` and ``index`` ``(B, M)``: ``(B, M, ...)``."""
    return jax.vmap(lambda row, idx: row[idx])(x, index)


@partial(jax.jit, static_argnames=("cfg", "max_len", "num_beams", "length_penalty", "early_stopping"))
def beam_search(
    variables, src_ids, src_mask, cfg: ModelConfig, max_len: int, num_beams: int = 4, length_penalty: float = 1.0,
    early_stopping: bool | str = False,
) -> jax.Array:
    """``(B, max_len)`` the best finished hypothesis per row."""
    model = Transformer(cfg)
    b, k, v = src_ids.shape[0], num_beams, cfg.vocab_size
    keep = 2 * k  # candidates per row: k may end at once and k still run on
    enc = model.apply(variables, src_ids, src_mask, method=Transformer.encode)
    enc = jnp.repeat(enc, k, axis=0)  # (B*K, S, D)
    src_mask = jnp.repeat(src_mask, k, axis=0)  # (B*K, S)
    in_top_k = jnp.arange(keep) < k  # (2K,): only the best k candidates may finish

    def step(state):
        i, token, cache, running, running_scores, seqs, scores, finished, improvable, _ = state
        logits, cache = model.apply(variables, token, i, cache, enc, src_mask, method=Transformer.decode_step)
        logp = _next_logprobs(cfg, logits, i, max_len).reshape(b, k, v) + running_scores[..., None]  # (B, K, V)
        cand_scores, flat = jax.lax.top_k(logp.reshape(b, k * v), keep)  # (B, 2K)
        beam, cand_token = flat // v, flat % v
        cand_seqs = _gather(running, beam).at[:, :, i].set(cand_token)  # (B, 2K, T)
        ends = (cand_token == cfg.eos_id) | (i + 1 >= max_len)  # (B, 2K)

        # The best k candidates that did not end run on.
        run_scores = cand_scores + ends.astype(jnp.float32) * MASKED
        _, chosen = jax.lax.top_k(run_scores, k)  # (B, K)
        running, running_scores = _gather(cand_seqs, chosen), _gather(run_scores, chosen)
        rows = (jnp.arange(b)[:, None] * k + _gather(beam, chosen)).reshape(-1)  # (B*K,)
        # Cache arrays are (L, B*K, ...): reorder the hypotheses' self-attention history.
        cache = {name: a[:, rows] if name in ("k", "v") else a for name, a in cache.items()}

        # Candidates among the best k that ended enter the finished set, length-normalised.
        just_finished = ends & in_top_k
        fin_scores = cand_scores / ((i + 1) ** length_penalty)
        full = finished.all(-1, keepdims=True) & (early_stopping is True)
        fin_scores += full.astype(jnp.float32) * MASKED
        fin_scores += (~improvable).astype(jnp.float32) * MASKED
        fin_scores += (~just_finished).astype(jnp.float32) * MASKED
        _, best = jax.lax.top_k(jnp.concatenate([scores, fin_scores], 1), k)
        seqs = _gather(jnp.concatenate([seqs, cand_seqs], 1), best)
        scores = _gather(jnp.concatenate([scores, fin_scores], 1), best)
        finished = _gather(jnp.concatenate([finished, just_finished], 1), best)

        # Can a running beam still beat the worst finished one? (HF's heuristic.)
        length = max_len if (early_stopping == "never" and length_penalty > 0.0) else i + 1
        best_running = running_scores[:, :1] / (length**length_penalty)
        worst_finished = jnp.where(finished, scores.min(1, keepdims=True), MASKED)
        improvable = improvable & (best_running > worst_finished).any(-1, keepdims=True)
        go = improvable.any() & ~(finished.all() & (early_stopping is True)) & ~ends.all()
        token = _gather(cand_token, chosen).reshape(-1)
        return i + 1, token, cache, running, running_scores, seqs, scores, finished, improvable, go

    start = jnp.full((b * k,), cfg.decoder_start_id, jnp.int32)
    running = jnp.full((b, k, max_len), cfg.pad_id, jnp.int32)
    running_scores = jnp.full((b, k), MASKED).at[:, 0].set(0.0)  # all beams start identical: expand only the first
    state = (0, start, init_cache(cfg, b * k, max_len, enc.dtype), running, running_scores, running,
             jnp.full((b, k), MASKED), jnp.zeros((b, k), bool), jnp.ones((b, 1), bool), True)
    state = step(state)
    state = jax.lax.while_loop(lambda s: (s[0] < max_len) & s[9], step, state)
    return state[5][:, 0]
