"""Greedy and beam-search decoding in PyTorch with a key/value cache. Mirrors ``mtcore/jax/decode.py``."""

from __future__ import annotations

import torch

from mtcore.config import ModelConfig
from mtcore.torch.model import Transformer, init_cache


def _next_logprobs(cfg: ModelConfig, logits: torch.Tensor) -> torch.Tensor:
    # The pad id doubles as the decoder start token: never a word to emit.
    logp = torch.log_softmax(logits.float(), dim=-1)
    logp[:, cfg.pad_id] = -torch.inf
    return logp


@torch.no_grad()
def greedy(model: Transformer, src_ids: torch.Tensor, src_mask: torch.Tensor, max_len: int) -> torch.Tensor:
    """``(B, max_len)`` token ids, eos included, pad after it."""
    cfg = model.cfg
    b = src_ids.shape[0]
    enc = model.encode(src_ids, src_mask)  # (B, S, D)
    cache = init_cache(cfg, b, max_len, enc.dtype, enc.device)
    token = torch.full((b,), cfg.decoder_start_id, dtype=torch.long, device=enc.device)
    out = torch.full((b, max_len), cfg.pad_id, dtype=torch.long, device=enc.device)
    done = torch.zeros(b, dtype=torch.bool, device=enc.device)
    for i in range(max_len):
        logp = _next_logprobs(cfg, model.decode_step(token, i, cache, enc, src_mask))  # (B, V)
        token = torch.where(done, cfg.pad_id, logp.argmax(-1))
        out[:, i] = token
        done |= token == cfg.eos_id
        if bool(done.all()):
            break
    return out


@torch.no_grad()
def beam_search(
    model: Transformer,
    src_ids: torch.Tensor,
    src_mask: torch.Tensor,
    max_len: int,
    num_beams: int = 4,
    length_penalty: float = 1.0,
) -> torch.Tensor:
    """``(B, max_len)`` best hypothesis per row by ``sum log p / length ** length_penalty``."""
    cfg = model.cfg
    b, k = src_ids.shape[0], num_beams
    dev = src_ids.device
    enc = model.encode(src_ids, src_mask).repeat_interleave(k, 0)  # (B*K, S, D)
    src_mask = src_mask.repeat_interleave(k, 0)  # (B*K, S)
    cache = init_cache(cfg, b * k, max_len, enc.dtype, enc.device)
    token = torch.full((b * k,), cfg.decoder_start_id, dtype=torch.long, device=dev)
    seqs = torch.full((b, k, max_len), cfg.pad_id, dtype=torch.long, device=dev)
    scores = torch.full((b, k), -torch.inf, device=dev)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    done = torch.zeros((b, k), dtype=torch.bool, device=dev)
    finished_row = torch.full((cfg.vocab_size,), -torch.inf, device=dev)
    finished_row[cfg.pad_id] = 0.0  # a finished hypothesis only grows padding, at no cost
    for i in range(max_len):
        logp = _next_logprobs(cfg, model.decode_step(token, i, cache, enc, src_mask))
        logp = logp.view(b, k, -1)  # (B, K, V)
        logp = torch.where(done[..., None], finished_row, logp)
        scores, flat = (scores[..., None] + logp).view(b, -1).topk(k, dim=-1)  # (B, K)
        beam, token = flat // cfg.vocab_size, flat % cfg.vocab_size
        rows = (torch.arange(b, device=dev)[:, None] * k + beam).view(-1)  # (B*K,)
        for layer in cache:
            for name in layer:
                if name in ("k", "v"):
                    layer[name] = layer[name].index_select(0, rows)
        seqs = seqs.gather(1, beam[..., None].expand(-1, -1, max_len))
        seqs[:, :, i] = token
        done = done.gather(1, beam) | (token == cfg.eos_id)
        token = token.view(-1)
        if bool(done.all()):
            break
    lengths = (seqs != cfg.pad_id).sum(-1).clamp_min(1).float()  # (B, K)
    best = (scores / lengths**length_penalty).argmax(-1)  # (B,)
    return seqs[torch.arange(b, device=dev), best]
