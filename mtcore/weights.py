"""The framework-neutral weight tree and its conversions.

The *canonical tree* is a flat ``dict[str, np.ndarray]`` named and laid out like mtcore's PyTorch
``state_dict`` (Linear weights are ``(out, in)``). Every framework converts to and from it, Hugging
Face Marian checkpoints map onto it by renaming, and it is what checkpoints store (safetensors).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from mtcore.config import ModelConfig
from mtcore.errors import MTCoreError

Tree = dict[str, np.ndarray]

# Buffers: stored and converted like parameters, never trained.
BUFFERS = ("final_logits_bias",)


def _attention(prefix: str, d: int) -> dict[str, tuple[int, ...]]:
    out = {}
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        out[f"{prefix}.{proj}.weight"] = (d, d)
        out[f"{prefix}.{proj}.bias"] = (d,)
    return out


def _norm(prefix: str, d: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (d,), f"{prefix}.bias": (d,)}


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every canonical name with its shape, parameters and buffers alike."""
    d, f, v = cfg.d_model, cfg.ffn_dim, cfg.vocab_size
    mlp = {"mlp.fc1.weight": (f, d), "mlp.fc1.bias": (f,), "mlp.fc2.weight": (d, f), "mlp.fc2.bias": (d,)}
    shapes: dict[str, tuple[int, ...]] = {"shared.weight": (v, d), "final_logits_bias": (v,)}
    for i in range(cfg.encoder_layers):
        p = f"encoder.layers.{i}"
        shapes |= _attention(f"{p}.self_attn", d) | _norm(f"{p}.self_attn_layer_norm", d)
        shapes |= {f"{p}.{k}": s for k, s in mlp.items()} | _norm(f"{p}.final_layer_norm", d)
    for i in range(cfg.decoder_layers):
        p = f"decoder.layers.{i}"
        shapes |= _attention(f"{p}.self_attn", d) | _norm(f"{p}.self_attn_layer_norm", d)
        shapes |= _attention(f"{p}.encoder_attn", d) | _norm(f"{p}.encoder_attn_layer_norm", d)
        shapes |= {f"{p}.{k}": s for k, s in mlp.items()} | _norm(f"{p}.final_layer_norm", d)
    return shapes


def check_tree(cfg: ModelConfig, tree: Mapping[str, np.ndarray], where: str = "weights") -> Tree:
    """Raise unless ``tree`` holds exactly the canonical names and shapes of ``cfg``; return it as
    float32 numpy arrays."""
    want = param_shapes(cfg)
    missing = sorted(set(want) - set(tree))
    extra = sorted(set(tree) - set(want))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {missing[0]!r})")
        if extra:
            parts.append(f"unexpected {len(extra)} (e.g. {extra[0]!r})")
        raise MTCoreError(f"{where} do not match the model config: " + ", ".join(parts))
    out: Tree = {}
    for name, shape in want.items():
        a = np.asarray(tree[name])
        if a.shape != shape:
            raise MTCoreError(f"{where}: {name!r} has shape {a.shape}, the config needs {shape}")
        out[name] = a.astype(np.float32, copy=False)
    return out


def init_tree(cfg: ModelConfig, seed: int = 0, std: float = 0.02) -> Tree:
    """Framework-neutral initial weights: N(0, std) matrices, zero biases, unit LayerNorm scales.

    Both frameworks load the same tree, so comparisons start from identical weights.
    """
    rng = np.random.default_rng(seed)
    tree: Tree = {}
    for name, shape in param_shapes(cfg).items():
        if name.endswith("layer_norm.weight"):
            tree[name] = np.ones(shape, np.float32)
        elif name.endswith(".bias") or name in BUFFERS:
            tree[name] = np.zeros(shape, np.float32)
        else:
            tree[name] = rng.normal(0.0, std, shape).astype(np.float32)
    return tree


def sinusoidal_positions(max_len: int, d_model: int) -> np.ndarray:
    """Marian's static position table ``(max_len, d_model)``: sin features, then cos features."""
    half = (d_model + 1) // 2
    pos = np.arange(max_len, dtype=np.float64)[:, None]
    inv_freq = np.power(10000.0, -2.0 * np.arange(half) / d_model)[None, :]
    angles = pos * inv_freq  # (max_len, half)
    table = np.concatenate([np.sin(angles), np.cos(angles[:, : d_model // 2])], axis=1)
    return table.astype(np.float32)


# ---- Hugging Face Marian ------------------------------------------------------------------------
def hf_name(name: str) -> str:
    if name == "final_logits_bias":
        return name
    return "model." + name.replace("mlp.fc", "fc")


def from_hf_state_dict(cfg: ModelConfig, state: Mapping[str, np.ndarray], where: str = "checkpoint") -> Tree:
    """Canonical tree from a ``MarianMTModel`` state dict (numpy arrays)."""
    state = dict(state)
    if "model.shared.weight" not in state:
        # Tied copies: a checkpoint may store the shared matrix under any of its names.
        for alias in ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight"):
            if alias in state:
                state["model.shared.weight"] = state[alias]
                break
    for side in ("encoder", "decoder"):
        table = state.get(f"model.{side}.embed_positions.weight")
        if table is not None:
            want = sinusoidal_positions(*np.shape(table))
            if np.shape(table) != (cfg.max_len, cfg.d_model) or not np.allclose(table, want, atol=1e-4):
                raise MTCoreError(f"{where}: {side} position embeddings are not Marian's sinusoidal table")
    if "final_logits_bias" not in state:
        state["final_logits_bias"] = np.zeros(cfg.vocab_size, np.float32)
    tree = {}
    for name in param_shapes(cfg):
        hf = hf_name(name)
        if hf not in state:
            raise MTCoreError(f"{where}: no tensor {hf!r}; is this a Marian checkpoint of this config?")
        tree[name] = np.asarray(state[hf]).reshape(-1) if name == "final_logits_bias" else np.asarray(state[hf])
    return check_tree(cfg, tree, where)


def to_hf_state_dict(cfg: ModelConfig, tree: Mapping[str, np.ndarray]) -> Tree:
    """A ``MarianMTModel`` state dict (numpy) from a canonical tree, tied copies included."""
    tree = check_tree(cfg, tree)
    state = {hf_name(k): v for k, v in tree.items()}
    state["final_logits_bias"] = tree["final_logits_bias"][None, :]
    for alias in ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight"):
        state[alias] = tree["shared.weight"]
    return state


# ---- safetensors --------------------------------------------------------------------------------
def save_safetensors(path: str | os.PathLike, tree: Mapping[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write atomically: a crash leaves the old file or the new one, never half of one."""
    from safetensors.numpy import save_file

    from mtcore.files import atomic_path

    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in tree.items()}, os.fspath(tmp), metadata=metadata)


def load_safetensors(path: str | os.PathLike) -> Tree:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(os.fspath(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise MTCoreError(f"{os.fspath(path)}: unreadable safetensors file ({e})") from None
