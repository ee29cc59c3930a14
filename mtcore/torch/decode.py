"""Greedy and beam-search decoding in PyTorch with a key/value cache. Mirrors ``mtcore/jax/decode.py``,
whose docstring says how both follow Hugging Face's ``generate`` for a Marian checkpoint.

The cache is static: allocated once for ``max_len`` positions and written in place, with the
position a device tensor, so every step runs the same shapes. The loop runs to ``max_len`` with
finished rows masked, as JAX's ``while_loop`` does; the host asks whether to stop (a sync with
the device) every token on a CPU, where it costs nothing, and every ``SYNC_EVERY`` tokens on an
accelerator, where each ask stalls the queue (PyTorch's performance tuning guide: avoid
unnecessary CPU-GPU synchronization). Steps past the end change nothing, so the output is the same.

With ``compile`` every step after the first is one ``torch.compile`` program (the position is a
tensor input, so one graph serves every position); with ``compile="reduce-overhead"`` on a GPU that
program is a CUDA graph, replayed with one launch per token instead of one per kernel. The beam
bookkeeping between steps stays eager.
"""

from __future__ import annotations

import functools
import threading

import torch

from mtcore.config import ModelConfig
from mtcore.torch.model import Transformer, init_cache

MASKED = -1.0e9  # HF's score for a candidate that may not be chosen
SYNC_EVERY = 8  # tokens between "stop?" checks on an accelerator


def _next_logprobs(cfg: ModelConfig, logits: torch.Tensor, index: torch.Tensor, max_len: int) -> torch.Tensor:
    """Log-probabilities of the token at position ``index`` (a 0-d tensor) ``(N, V)``, as HF's logits
    processors leave them: pad banned (it doubles as the decoder start token), eos forced at the
    last position."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    logp[:, cfg.pad_id] = -torch.inf
    only_eos = torch.full_like(logp[0], -torch.inf)  # (V,)
    only_eos[cfg.eos_id] = 0.0
    return torch.where(index == max_len - 1, only_eos, logp)


def _logprobs(model: Transformer, token, index, cache, enc, src_mask, max_len: int) -> torch.Tensor:
    """The next token's log-probabilities ``(N, V)``; the step's keys and values are written into
    ``cache`` in place, so nothing else is returned (the cross-attention arrays must be there)."""
    logits, _ = model.decode_step(token, index, cache, enc, src_mask)
    return _next_logprobs(model.cfg, logits, index, max_len)


@functools.cache
def _compiled(mode: str | None, shapes: tuple):
    # One compiled function per mode and shapes (rows, source length, max_len, config, dtype,
    # device), every decode call and model of those shapes reusing its graph. Each has its own
    # recompile budget (isolate_recompiles): sharing dynamo's default one (8 graphs per function)
    # made the ninth shape of a process run eagerly under a compiled label. fullgraph: a graph
    # break raises instead of splitting the step. Static shapes, as a CUDA graph is recorded per
    # shape anyway.
    return torch.compile(_logprobs, mode=mode, dynamic=False, fullgraph=True, isolate_recompiles=True)


# reduce-overhead only: cache arrays at fixed addresses, per thread, the few most recent shapes
# each. Per thread as torch's CUDA graph trees are (each thread records and replays its own): two
# threads decoding the same shapes at once must not write into one cache, and one thread's shapes
# must not push out another's while it decodes. The lock guards the dict, not the arrays.
_STATIC: dict[int, dict[tuple, dict[str, torch.Tensor]]] = {}  # thread ident -> shapes -> arrays
_STATIC_LOCK = threading.Lock()
STATIC_KEPT = 4  # per thread


def _static_cache(cache: dict[str, torch.Tensor], shapes: tuple) -> dict[str, torch.Tensor]:
    """``cache``'s values in arrays at fixed addresses. A CUDA graph replays into the addresses it
    recorded: the cache, written in place, must be a static input (else the graph is skipped for
    "mutated inputs"), and a new address makes it record again, so each call of the same shapes
    from the same thread reuses an earlier call's arrays. They stay allocated: ``STATIC_KEPT`` sets
    per thread, the least recently used dropped first (a beam cache of a big model is hundreds of
    MB), and a finished thread's sets at the next call from any thread; ``release()`` frees them."""
    mine = _STATIC.get(threading.get_ident())
    if mine is not None and mine.get(shapes) is cache:
        return cache  # every step after a call's first: its own arrays already, no bookkeeping per token
    with _STATIC_LOCK:
        alive = {t.ident for t in threading.enumerate()}
        for ident in [i for i in _STATIC if i not in alive]:
            del _STATIC[ident]
        mine = _STATIC.setdefault(threading.get_ident(), {})
        kept = mine.pop(shapes, None)
        if kept is None:
            kept = {name: torch.empty_like(a) for name, a in cache.items()}
            for a in kept.values():
                torch._dynamo.mark_static_address(a)
        mine[shapes] = kept  # the most recent last
        while len(mine) > STATIC_KEPT:
            mine.pop(next(iter(mine)))
    if kept is not cache:
        for name, a in cache.items():
            kept[name].copy_(a)
    return kept


def release() -> None:
    """Free the arrays CUDA-graphed decoding keeps between calls (every thread's)."""
    with _STATIC_LOCK:
        _STATIC.clear()


def _step(model: Transformer, token, index, cache, enc, src_mask, max_len: int, compile: bool | str):
    """``(logp, cache)`` for one token. The first step runs eagerly, as JAX's runs before its loop:
    it adds the cross-attention arrays, which changes the cache's structure; every later step is
    one program, compiled with ``compile`` (True, or ``torch.compile``'s mode)."""
    if not compile or "ck" not in cache:
        logits, cache = model.decode_step(token, index, cache, enc, src_mask)
        return _next_logprobs(model.cfg, logits, index, max_len), cache
    mode = compile if isinstance(compile, str) else None
    shapes = (model.cfg, tuple(token.shape), tuple(enc.shape), max_len, enc.dtype, enc.device)
    if mode == "reduce-overhead":
        cache = _static_cache(cache, shapes)
        # The last replay's output is dead before the next one (torch.compile docs, "CUDAGraph Trees").
        torch.compiler.cudagraph_mark_step_begin()
    return _compiled(mode, shapes)(model, token, index, cache, enc, src_mask, max_len), cache


def _stop(go: torch.Tensor, i: int) -> bool:
    """Whether to leave the loop, asked only where asking is cheap (see the module's docstring)."""
    every = 1 if go.device.type == "cpu" else SYNC_EVERY
    return (i + 1) % every == 0 and not bool(go)


@torch.no_grad()
def greedy(model: Transformer, src_ids: torch.Tensor, src_mask: torch.Tensor, max_len: int,
           compile: bool | str = False) -> torch.Tensor:
    """``(B, max_len)`` token ids, eos included, pad after it."""
    cfg = model.cfg
    b = src_ids.shape[0]
    enc = model.encode(src_ids, src_mask)  # (B, S, D)
    cache = init_cache(cfg, b, max_len, enc.dtype, enc.device)
    positions = torch.arange(max_len, device=enc.device)  # a view per step: no host-to-device copy
    token = torch.full((b,), cfg.decoder_start_id, dtype=torch.long, device=enc.device)
    out = torch.full((b, max_len), cfg.pad_id, dtype=torch.long, device=enc.device)
    done = torch.zeros(b, dtype=torch.bool, device=enc.device)
    for i in range(max_len):
        logp, cache = _step(model, token, positions[i], cache, enc, src_mask, max_len, compile)
        token = torch.where(done, cfg.pad_id, logp.argmax(-1))
        out[:, i] = token
        done |= token == cfg.eos_id
        if _stop(~done.all(), i):
            break
    return out


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, index[b, j]]`` for ``x`` ``(B, N, ...)`` and ``index`` ``(B, M)``: ``(B, M, ...)``."""
    return x[torch.arange(x.shape[0], device=x.device)[:, None], index]


@torch.no_grad()
def beam_search(
    model: Transformer,
    src_ids: torch.Tensor,
    src_mask: torch.Tensor,
    max_len: int,
    num_beams: int = 4,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    compile: bool | str = False,
) -> torch.Tensor:
    """``(B, max_len)`` the best finished hypothesis per row."""
    cfg = model.cfg
    b, k, v = src_ids.shape[0], num_beams, cfg.vocab_size
    keep = 2 * k  # candidates per row: k may end at once and k still run on
    dev = src_ids.device
    enc = model.encode(src_ids, src_mask).repeat_interleave(k, 0)  # (B*K, S, D)
    src_mask = src_mask.repeat_interleave(k, 0)  # (B*K, S)
    in_top_k = torch.arange(keep, device=dev) < k  # (2K,): only the best k candidates may finish
    cache = init_cache(cfg, b * k, max_len, enc.dtype, enc.device)
    positions = torch.arange(max_len, device=dev)
    token = torch.full((b * k,), cfg.decoder_start_id, dtype=torch.long, device=dev)
    running = torch.full((b, k, max_len), cfg.pad_id, dtype=torch.long, device=dev)
    running_scores = torch.full((b, k), MASKED, device=dev)
    running_scores[:, 0] = 0.0  # all beams start identical: expand only the first
    seqs, scores = running.clone(), torch.full((b, k), MASKED, device=dev)
    finished = torch.zeros((b, k), dtype=torch.bool, device=dev)
    improvable = torch.ones((b, 1), dtype=torch.bool, device=dev)
    for i in range(max_len):
        logp, cache = _step(model, token, positions[i], cache, enc, src_mask, max_len, compile)
        logp = logp.view(b, k, v) + running_scores[..., None]  # (B, K, V)
        cand_scores, flat = logp.view(b, k * v).topk(keep, dim=-1)  # (B, 2K)
        beam, cand_token = flat // v, flat % v
        cand_seqs = _gather(running, beam)  # (B, 2K, T)
        cand_seqs[:, :, i] = cand_token
        ends = (cand_token == cfg.eos_id) | (i + 1 >= max_len)  # (B, 2K)

        # The best k candidates that did not end run on.
        run_scores = cand_scores + ends.float() * MASKED
        chosen = run_scores.topk(k, dim=-1).indices  # (B, K)
        running, running_scores = _gather(cand_seqs, chosen), _gather(run_scores, chosen)
        rows = (torch.arange(b, device=dev)[:, None] * k + _gather(beam, chosen)).view(-1)  # (B*K,)
        # Cache arrays are (L, B*K, ...): reorder the hypotheses' self-attention history, in place.
        for name in ("k", "v"):
            cache[name].copy_(cache[name].index_select(1, rows))

        # Candidates among the best k that ended enter the finished set, length-normalised.
        just_finished = ends & in_top_k
        fin_scores = cand_scores / ((i + 1) ** length_penalty)
        full = finished.all(-1, keepdim=True) & (early_stopping is True)
        fin_scores += full.float() * MASKED
        fin_scores += (~improvable).float() * MASKED
        fin_scores += (~just_finished).float() * MASKED
        best = torch.cat([scores, fin_scores], 1).topk(k, dim=-1).indices
        seqs = _gather(torch.cat([seqs, cand_seqs], 1), best)
        scores = _gather(torch.cat([scores, fin_scores], 1), best)
        finished = _gather(torch.cat([finished, just_finished], 1), best)

        # Can a running beam still beat the worst finished one? (HF's heuristic.)
        length = max_len if (early_stopping == "never" and length_penalty > 0.0) else i + 1
        best_running = running_scores[:, :1] / (length**length_penalty)
        worst_finished = torch.where(finished, scores.min(1, keepdim=True).values, MASKED)
        improvable = improvable & (best_running > worst_finished).any(-1, keepdim=True)
        go = improvable.any() & ~(finished.all() & (early_stopping is True)) & ~ends.all()
        token = _gather(cand_token, chosen).view(-1)
        if _stop(go, i):
            break
    return seqs[:, 0]
