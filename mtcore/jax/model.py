"""The Transformer in JAX/Flax. Mirrors ``mtcore/torch/model.py`` class for class and name for name.

Layers are stacked with ``nn.scan`` (one compiled layer body whatever the depth) unless
``cfg.layer_stacking == "loop"``, which unrolls a Python loop so the two can be compared.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from mtcore.config import ModelConfig
from mtcore.weights import sinusoidal_positions

ACTIVATIONS = {"swish": nn.swish, "relu": nn.relu, "gelu": lambda x: nn.gelu(x, approximate=False)}

# A decoding cache per layer: self-attention keys/values written step by step, and the
# cross-attention keys/values of the source, computed at the first step.
LayerCache = dict[str, jax.Array]

_init = nn.initializers.normal(stddev=0.02)


def _rows(x):
    """``(..., D)`` as ``(N, D)``, every token a row: what a product with a weight matrix works on,
    as torch's ``F.linear`` flattens its input. On the ``(B, T, D)`` arrays themselves, autodiff's
    weight gradient contracts two axes at once, which XLA:CPU ran in Eigen with both operands
    transposed (plus a copy to transpose one); as rows it is one ``(N, D)^T (N, O)`` matrix
    product (docs/findings/2026-11-27-jax-small-cpu-step.md, item 3)."""
    return x.reshape(-1, x.shape[-1])  # (N, D), N = the product of the leading axes


def _dot_rows(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """``nn.Dense``'s product ``(..., I) @ (I, O)`` computed on ``_rows(lhs)``."""
    if dimension_numbers != (((lhs.ndim - 1,), (0,)), ((), ())):
        raise ValueError(f"_dot_rows: only the last axis times the kernel's first, got {dimension_numbers}")
    out = jax.lax.dot_general(_rows(lhs), rhs, (((1,), (0,)), ((), ())), precision=precision,
                              preferred_element_type=preferred_element_type)  # (N, O)
    return out.reshape(*lhs.shape[:-1], rhs.shape[-1])  # (..., O)


def _dense(features: int, dtype: Any, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, kernel_init=_init, name=name, dot_general=_dot_rows)


def _layer_norm(dtype: Any, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=1e-5, dtype=dtype, name=name)


class _MlpBlock(nn.Module):
    cfg: ModelConfig
    dtype: Any = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, x):
        h = checkpoint_name(_dense(self.cfg.ffn_dim, self.dtype, "fc1")(x), "fc1")  # (B, T, F)
        h = ACTIVATIONS[self.cfg.activation](h)
        h = nn.Dropout(self.cfg.activation_dropout)(h, deterministic=self.deterministic)
        return _dense(self.cfg.d_model, self.dtype, "fc2")(h)


# The backward pass recomputes the activation (and fc2's input) from fc1's saved output, instead of
# keeping them: under nn.scan every saved (B, T, F) array is written into a stacked buffer in the
# forward loop and read back in the backward one, which cost more than the elementwise work
# (docs/findings/2026-11-27-jax-small-cpu-step.md, item 4; the step also keeps fewer arrays).
# JAX's "gradient checkpointing" guide: jax.checkpoint with a names policy. An activation_dropout
# mask is drawn again in the backward pass, from the same key (a test checks the gradients).
MlpBlock = nn.remat(_MlpBlock, policy=jax.checkpoint_policies.save_only_these_names("fc1"))


class Attention(nn.Module):
    """Multi-head attention; keys and values are projected separately so decoding can cache them."""

    cfg: ModelConfig
    dtype: Any = jnp.float32

    def setup(self):
        d = self.cfg.d_model
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            _dense(d, self.dtype, name) for name in ("q_proj", "k_proj", "v_proj", "out_proj")
        )

    def heads(self, x):
        b, t, _ = x.shape
        return x.reshape(b, t, self.cfg.num_heads, self.cfg.head_dim)  # (B, T, H, Dh)

    def project_kv(self, x):
        return self.heads(self.k_proj(x)), self.heads(self.v_proj(x))  # (B, S, H, Dh) each

    def __call__(self, x, k, v, mask=None, is_causal=False):
        q = self.heads(self.q_proj(x))  # (B, T, H, Dh)
        o = jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask, is_causal=is_causal)
        b, t, _, _ = o.shape
        return self.out_proj(o.reshape(b, t, -1))  # (B, T, D)


# The logical axes of the activations between layers (parallel.AXIS_RULES maps them on a mesh):
# a layer's input is pinned there, so a sharded step splits rows, never the model dimension.
BETWEEN_LAYERS = ("batch", "length", "activation_embed")


class EncoderLayer(nn.Module):
    cfg: ModelConfig
    dtype: Any = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, src_mask):
        x = nn.with_logical_constraint(x, BETWEEN_LAYERS)
        drop = nn.Dropout(self.cfg.dropout, deterministic=self.deterministic)
        attn = Attention(self.cfg, self.dtype, name="self_attn")
        k, v = attn.project_kv(x)
        x = _layer_norm(self.dtype, "self_attn_layer_norm")(x + drop(attn(x, k, v, mask=src_mask)))
        mlp = MlpBlock(self.cfg, self.dtype, self.deterministic, name="mlp")
        x = _layer_norm(self.dtype, "final_layer_norm")(x + drop(mlp(x)))
        return x, None


class DecoderLayer(nn.Module):
    cfg: ModelConfig
    dtype: Any = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, y, enc, src_mask, cache: LayerCache | None, index):
        """Whole target sequence (``cache`` None) or one step at position ``index``; returns the
        updated cache as the second output."""
        y, enc = nn.with_logical_constraint(y, BETWEEN_LAYERS), nn.with_logical_constraint(enc, BETWEEN_LAYERS)
        drop = nn.Dropout(self.cfg.dropout, deterministic=self.deterministic)
        self_attn = Attention(self.cfg, self.dtype, name="self_attn")
        encoder_attn = Attention(self.cfg, self.dtype, name="encoder_attn")
        k, v = self_attn.project_kv(y)
        if cache is None:
            a = self_attn(y, k, v, is_causal=True)
            ck, cv = encoder_attn.project_kv(enc)
        else:
            k = jax.lax.dynamic_update_slice_in_dim(cache["k"], k.astype(cache["k"].dtype), index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cache["v"], v.astype(cache["v"].dtype), index, axis=1)
            seen = (jnp.arange(k.shape[1]) <= index)[None, None, None, :]  # (1, 1, 1, Tmax)
            a = self_attn(y, k, v, mask=seen)
            ck, cv = (cache["ck"], cache["cv"]) if "ck" in cache else encoder_attn.project_kv(enc)
            cache = {"k": k, "v": v, "ck": ck, "cv": cv}
        y = _layer_norm(self.dtype, "self_attn_layer_norm")(y + drop(a))
        y = _layer_norm(self.dtype, "encoder_attn_layer_norm")(y + drop(encoder_attn(y, ck, cv, mask=src_mask)))
        mlp = MlpBlock(self.cfg, self.dtype, self.deterministic, name="mlp")
        y = _layer_norm(self.dtype, "final_layer_norm")(y + drop(mlp(y)))
        return y, cache


def _stack(layer_cls, cfg: ModelConfig, num_layers: int, in_axes, **kwargs):
    """``num_layers`` copies of a layer whose ``__call__`` is ``(carry, *xs) -> (carry, out)``.

    Scanned, parameters gain a leading layer axis under ``layers``; looped, each layer is
    ``layers_{i}`` and the per-layer inputs/outputs are sliced and stacked by hand.
    """
    if cfg.layer_stacking == "scan":
        scanned = nn.scan(
            layer_cls,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=in_axes,
            length=num_layers,
        )
        return scanned(cfg, name="layers", **kwargs)

    def looped(x, *args):
        layers = [layer_cls(cfg, name=f"layers_{i}", **kwargs) for i in range(num_layers)]
        outs = []
        for i, layer in enumerate(layers):
            xs = [a if ax is nn.broadcast else jax.tree.map(lambda t, i=i: t[i], a) for a, ax in zip(args, in_axes, strict=True)]
            x, out = layer(x, *xs)
            outs.append(out)
        stacked = None if outs[0] is None else jax.tree.map(lambda *t: jnp.stack(t), *outs)
        return x, stacked

    return looped


class Encoder(nn.Module):
    cfg: ModelConfig
    dtype: Any = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, src_mask):
        layers = _stack(
            EncoderLayer, self.cfg, self.cfg.encoder_layers, (nn.broadcast,),
            dtype=self.dtype, deterministic=self.deterministic,
        )
        x, _ = layers(x, src_mask)
        return x


class Decoder(nn.Module):
    cfg: ModelConfig
    dtype: Any = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, y, enc, src_mask, cache=None, index=None):
        layers = _stack(
            DecoderLayer, self.cfg, self.cfg.decoder_layers, (nn.broadcast, nn.broadcast, 0, nn.broadcast),
            dtype=self.dtype, deterministic=self.deterministic,
        )
        return layers(y, enc, src_mask, cache, index)


class Transformer(nn.Module):
    """Marian-style encoder-decoder; ``__call__`` returns logits ``(B, T, V)``."""

    cfg: ModelConfig
    dtype: Any = jnp.float32
    deterministic: bool = True

    def setup(self):
        cfg = self.cfg
        self.shared = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=self.dtype, embedding_init=_init)
        self.encoder = Encoder(cfg, self.dtype, self.deterministic)
        self.decoder = Decoder(cfg, self.dtype, self.deterministic)
        self.dropout = nn.Dropout(cfg.dropout, deterministic=self.deterministic)
        self.final_logits_bias = self.variable("consts", "final_logits_bias", jnp.zeros, (cfg.vocab_size,), jnp.float32)
        self.positions = jnp.asarray(sinusoidal_positions(cfg.max_len, cfg.d_model))
        self.embed_scale = math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0

    def embed(self, ids, offset=0):
        x = self.shared(ids) * self.embed_scale  # (B, T, D)
        pos = jax.lax.dynamic_slice_in_dim(self.positions, offset, ids.shape[1])  # (T, D)
        return self.dropout(x + pos.astype(x.dtype))

    @staticmethod
    def key_mask(src_mask):
        return src_mask.astype(bool)[:, None, None, :]  # (B, 1, 1, S): which keys attention may read

    def encode(self, src_ids, src_mask):
        return self.encoder(self.embed(src_ids), self.key_mask(src_mask))  # (B, S, D)

    def logits(self, y):
        logits = self.shared.attend(_rows(y)).reshape(*y.shape[:-1], -1)  # (B, T, V), as rows: see _rows
        return logits.astype(jnp.float32) + self.final_logits_bias.value

    def decode(self, tgt_in, enc, src_mask):
        y, _ = self.decoder(self.embed(tgt_in), enc, self.key_mask(src_mask))
        return self.logits(y)

    def __call__(self, src_ids, src_mask, tgt_in):
        return self.decode(tgt_in, self.encode(src_ids, src_mask), src_mask)

    def decode_step(self, token, index, cache, enc, src_mask):
        """Logits ``(B, V)`` for the next token after ``token`` ``(B,)`` at position ``index``, and
        the updated cache."""
        y = self.embed(token[:, None], offset=index)  # (B, 1, D)
        y, cache = self.decoder(y, enc, self.key_mask(src_mask), cache, index)
        return self.logits(y)[:, 0], cache


def init_cache(cfg: ModelConfig, batch_size: int, max_len: int, dtype=jnp.float32) -> LayerCache:
    """Empty self-attention keys/values ``(L, B, Tmax, H, Dh)``; the first step adds the
    cross-attention ones."""
    shape = (cfg.decoder_layers, batch_size, max_len, cfg.num_heads, cfg.head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
