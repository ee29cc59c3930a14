"""The canonical weight tree (mtcore.weights) <-> Flax's variables.

mtcore/jax's modules name their variables as Flax does: ``params/encoder/layers/self_attn/q_proj/kernel``
(``nn.scan``: every layer's array stacked on a leading axis) or ``.../layers_{i}/...`` (a Python
loop), kernels (in, out) where torch and HF keep (out, in); ``consts`` holds the fixed arrays.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from mtcore.config import ModelConfig
from mtcore.weights import Tree

_LAYER = re.compile(r"^(encoder|decoder)\.layers\.(\d+)\.(.+)$")


def to_flax_variables(cfg: ModelConfig, tree: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The canonical tree as Flax variables (numpy leaves), stacked or looped as ``cfg.layer_stacking``."""
    variables: dict[str, Any] = {"params": {}, "consts": {"final_logits_bias": tree["final_logits_bias"]}}
    variables["params"]["shared"] = {"embedding": tree["shared.weight"]}
    per_layer: dict[tuple, list[tuple[int, np.ndarray]]] = {}
    for name, value in tree.items():
        m = _LAYER.match(name)
        if not m:
            continue
        side, i, rest = m.group(1), int(m.group(2)), m.group(3).split(".")
        parent, leaf = rest[:-1], rest[-1]
        if leaf == "weight":
            leaf = "scale" if parent[-1].endswith("layer_norm") else "kernel"
            value = value if leaf == "scale" else value.T  # torch (out, in) -> flax (in, out)
        per_layer.setdefault((side, *parent, leaf), []).append((i, value))
    for (side, *path), items in per_layer.items():
        items.sort(key=lambda t: t[0])
        if cfg.layer_stacking == "scan":
            _put(variables["params"], (side, "layers", *path), np.stack([v for _, v in items]))
        else:
            for i, v in items:
                _put(variables["params"], (side, f"layers_{i}", *path), v)
    return variables


def from_flax_leaves(flat: Mapping[tuple[str, ...], np.ndarray]) -> Tree:
    """The canonical tree from Flax variables given as ``{path: array}`` (either stacking)."""
    tree: Tree = {}
    for path, value in flat.items():
        collection, *parts = path
        if collection == "consts":
            tree[parts[-1]] = value
        elif parts[0] == "shared":
            tree["shared.weight"] = value
        elif parts[1] == "layers":  # scanned: a leading layer axis
            for i, layer_value in enumerate(value):
                tree[_canonical(parts[0], i, parts[2:])] = _to_torch_layout(parts[-1], layer_value)
        else:  # looped: layers_{i}
            i = int(parts[1].removeprefix("layers_"))
            tree[_canonical(parts[0], i, parts[2:])] = _to_torch_layout(parts[-1], value)
    return tree


def _canonical(side: str, i: int, parts: list[str]) -> str:
    *parent, leaf = parts
    if leaf in ("kernel", "scale"):
        leaf = "weight"
    return ".".join([side, "layers", str(i), *parent, leaf])


def _to_torch_layout(leaf: str, value: np.ndarray) -> np.ndarray:
    return value.T if leaf == "kernel" else value


def _put(tree: dict, path: tuple[str, ...], value: Any) -> None:
    *parents, leaf = path
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value
