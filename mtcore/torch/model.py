"""The Transformer in PyTorch. Mirrors ``mtcore/jax/model.py`` class for class and name for name."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mtcore.config import ModelConfig
from mtcore.weights import sinusoidal_positions

ACTIVATIONS = {"swish": F.silu, "relu": F.relu, "gelu": F.gelu}

# A decoding cache per layer: self-attention keys/values written step by step, and the
# cross-attention keys/values of the source, computed at the first step. The decoder's cache
# stacks them over layers (``init_cache``), as the JAX one does; unlike JAX's scan, which hands
# each layer its slice, a torch layer is handed the stacked arrays and writes its own rows.
LayerCache = dict[str, torch.Tensor]


def _layer_norm(cfg: ModelConfig) -> nn.LayerNorm:
    return nn.LayerNorm(cfg.d_model, eps=1e-5)


def _init_weights(module: nn.Module) -> None:
    # Marian/BART initialisation: N(0, 0.02) weights, zero biases.
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


class MlpBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.ffn_dim)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.d_model)
        self.act = ACTIVATIONS[cfg.activation]
        self.activation_dropout = nn.Dropout(cfg.activation_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_dropout(self.act(self.fc1(x))))


class Attention(nn.Module):
    """Multi-head attention; keys and values are projected separately so decoding can cache them."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.head_dim = cfg.head_dim
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        # (B, T, H, Dh); under tensor parallelism this rank's H / tensor heads (its columns of q/k/v).
        return x.view(b, t, -1, self.head_dim)

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.k_proj(x)), self.heads(self.v_proj(x))  # (B, S, H, Dh) each

    def forward(self, x, k, v, mask=None, is_causal=False) -> torch.Tensor:
        q = self.heads(self.q_proj(x))  # (B, T, H, Dh)
        # SDPA takes (B, H, T, Dh): transposed views, the last axis stays contiguous (what its
        # fused kernels need), so nothing is copied.
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, is_causal=is_causal
        )  # (B, H, T, Dh)
        b, _, t, _ = o.shape
        return self.out_proj(o.transpose(1, 2).reshape(b, t, -1))  # (B, T, D)


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.self_attn_layer_norm = _layer_norm(cfg)
        self.mlp = MlpBlock(cfg)
        self.final_layer_norm = _layer_norm(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        k, v = self.self_attn.project_kv(x)
        x = self.self_attn_layer_norm(x + self.dropout(self.self_attn(x, k, v, mask=src_mask)))
        x = self.final_layer_norm(x + self.dropout(self.mlp(x)))
        return x


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int = 0):
        super().__init__()
        self.layer = layer  # this layer's rows in the decoder's stacked cache
        # The same as an index tensor, made once: a cache write then launches no kernel to make it.
        self.register_buffer("layer_index", torch.tensor([layer]), persistent=False)
        self.self_attn = Attention(cfg)
        self.self_attn_layer_norm = _layer_norm(cfg)
        self.encoder_attn = Attention(cfg)
        self.encoder_attn_layer_norm = _layer_norm(cfg)
        self.mlp = MlpBlock(cfg)
        self.final_layer_norm = _layer_norm(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, y, enc, src_mask, cache: LayerCache | None, index: torch.Tensor | None):
        """Whole target sequence (``cache`` None) or one step at position ``index`` (a 0-d tensor:
        one program for every position); returns this layer's cache as the second output. The
        cache passed in is the decoder's, stacked over layers; this layer's rows are ``self.layer``."""
        k, v = self.self_attn.project_kv(y)
        if cache is None:
            a = self.self_attn(y, k, v, is_causal=True)
            ck, cv = self.encoder_attn.project_kv(enc)
        else:
            # In place, so the cache keeps its buffers from step to step (what a CUDA graph
            # replays), and into the stacked arrays at (layer, :, index) rather than through a
            # per-layer view: torch.compile turns a write into a view of an input into a copy of
            # the whole stacked array per layer (docs/findings/2026-11-27-torch-compiled-decoding.md).
            at = (self.layer_index, slice(None), index.view(1))
            for name, new in (("k", k), ("v", v)):
                cache[name][at] = new.transpose(0, 1).to(cache[name].dtype)  # (1, B, H, Dh)
            k, v = cache["k"][self.layer], cache["v"][self.layer]  # (B, Tmax, H, Dh)
            seen = (torch.arange(k.shape[1], device=y.device) <= index)[None, None, None, :]  # (1, 1, 1, Tmax)
            a = self.self_attn(y, k, v, mask=seen)
            has_cross = "ck" in cache
            ck, cv = (cache["ck"][self.layer], cache["cv"][self.layer]) if has_cross else self.encoder_attn.project_kv(enc)
            cache = {"k": k, "v": v, "ck": ck, "cv": cv}
        y = self.self_attn_layer_norm(y + self.dropout(a))
        y = self.encoder_attn_layer_norm(y + self.dropout(self.encoder_attn(y, ck, cv, mask=src_mask)))
        y = self.final_layer_norm(y + self.dropout(self.mlp(y)))
        return y, cache


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))

    def forward(self, x, src_mask):
        for layer in self.layers:
            x = layer(x, src_mask)
        return x


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.decoder_layers))

    def forward(self, y, enc, src_mask, cache: LayerCache | None = None, index: torch.Tensor | None = None):
        """``(y, cache)``: the cache's arrays are stacked over layers, ``(L, ...)``."""
        if cache is None:
            for layer in self.layers:
                y, _ = layer(y, enc, src_mask, None, None)
            return y, None
        outs = []
        for layer in self.layers:
            y, out = layer(y, enc, src_mask, cache, index)
            outs.append(out)
        # k and v were written into the stacked arrays in place; the first step adds ck and cv.
        return y, {name: cache[name] if name in cache else torch.stack([o[name] for o in outs]) for name in outs[0]}


class Transformer(nn.Module):
    """Marian-style encoder-decoder; ``forward`` returns logits ``(B, T, V)``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.register_buffer("final_logits_bias", torch.zeros(cfg.vocab_size))
        positions = torch.from_numpy(sinusoidal_positions(cfg.max_len, cfg.d_model))
        self.register_buffer("positions", positions, persistent=False)
        self.embed_scale = math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0
        self.apply(_init_weights)

    def embed(self, ids: torch.Tensor, offset: int | torch.Tensor = 0) -> torch.Tensor:
        x = self.shared(ids) * self.embed_scale  # (B, T, D)
        pos = self.positions[torch.arange(ids.shape[1], device=ids.device) + offset]  # (T, D); offset may be a tensor
        return self.dropout(x + pos.to(x.dtype))

    @staticmethod
    def key_mask(src_mask: torch.Tensor) -> torch.Tensor:
        return src_mask.bool()[:, None, None, :]  # (B, 1, 1, S): which keys attention may read

    def encode(self, src_ids, src_mask):
        return self.encoder(self.embed(src_ids), self.key_mask(src_mask))  # (B, S, D)

    def logits(self, y: torch.Tensor) -> torch.Tensor:
        return F.linear(y, self.shared.weight) + self.final_logits_bias  # (B, T, V)

    def decode(self, tgt_in, enc, src_mask):
        y, _ = self.decoder(self.embed(tgt_in), enc, self.key_mask(src_mask))
        return self.logits(y)

    def forward(self, src_ids, src_mask, tgt_in):
        return self.decode(tgt_in, self.encode(src_ids, src_mask), src_mask)

    def decode_step(self, token, index: torch.Tensor, cache, enc, src_mask):
        """Logits ``(B, V)`` for the next token after ``token`` ``(B,)`` at position ``index``, and
        the updated cache."""
        y = self.embed(token[:, None], offset=index)  # (B, 1, D)
        y, cache = self.decoder(y, enc, self.key_mask(src_mask), cache, index)
        return self.logits(y)[:, 0], cache


def init_cache(cfg: ModelConfig, batch_size: int, max_len: int, dtype=torch.float32, device=None) -> LayerCache:
    """Empty self-attention keys/values ``(L, B, Tmax, H, Dh)``; the first step adds the
    cross-attention ones."""
    shape = (cfg.decoder_layers, batch_size, max_len, cfg.num_heads, cfg.head_dim)
    return {"k": torch.zeros(shape, dtype=dtype, device=device), "v": torch.zeros(shape, dtype=dtype, device=device)}

