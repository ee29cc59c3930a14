"""The seam between mtcore and a framework.

A backend turns a ``ModelConfig`` into parameters and compiled functions and speaks numpy at its
edges, so the benches, the CLI and the tests never touch a framework directly. Adding a framework
is one folder and one line in ``BACKENDS``.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

import numpy as np

from mtcore.batch import Batch
from mtcore.config import ModelConfig, TrainConfig
from mtcore.errors import BackendUnavailable, MTCoreError

# name -> (module, class, the packages that must be importable, the pip extra that installs them)
BACKENDS = {
    "torch": ("mtcore.torch.backend", "TorchBackend", ("torch",), "torch"),
    "jax": ("mtcore.jax.backend", "JaxBackend", ("jax", "flax", "optax"), "jax"),
    # The baseline: Hugging Face MarianMTModel under the torch backend's train step.
    "hf": ("mtcore.torch.backend", "HFBackend", ("torch", "transformers"), "hf"),
}


class Backend(Protocol):
    name: str
    device_kind: str

    def init_params(self, cfg: ModelConfig, seed: int = 0) -> Any: ...
    def load_hf(self, path: Any, cfg: ModelConfig | None = None) -> Any: ...
    def to_numpy(self, params: Any) -> dict[str, np.ndarray]: ...
    def from_numpy(self, cfg: ModelConfig, tree: dict[str, np.ndarray]) -> Any: ...
    def num_params(self, params: Any) -> int: ...
    def device_batch(self, batch: Batch | dict, cfg: ModelConfig | None = None) -> dict: ...
    def forward(self, params: Any, cfg: ModelConfig, batch: Batch) -> np.ndarray: ...
    def init_train_state(self, params: Any, tcfg: TrainConfig) -> Any: ...
    def make_train_step(self, cfg: ModelConfig, tcfg: TrainConfig): ...
    def make_eval_step(self, cfg: ModelConfig, tcfg: TrainConfig): ...
    def compile_train_step(self, cfg: ModelConfig, tcfg: TrainConfig, state: Any, batch: Batch, compile: bool = ...) -> tuple: ...
    def peak_memory(self, reset: bool = False) -> int | None: ...
    def state_params(self, state: Any) -> Any: ...
    def generate(self, params: Any, cfg: ModelConfig, src_ids: np.ndarray, src_mask=None, **kw) -> np.ndarray: ...
    def sync(self, value: Any = None) -> Any: ...
    def devices(self) -> list[str]: ...


def available(name: str) -> str | None:
    """None if backend ``name`` can be used, else why not."""
    if name not in BACKENDS:
        return f"unknown backend {name!r}"
    _, _, packages, extra = BACKENDS[name]
    for package in packages:
        try:
            importlib.import_module(package)
        except ImportError as e:
            return f"{package} is not installed ({e}); pip install 'mtcore[{extra}]'"
    return None


def backend(name: str, device: str = "cpu") -> Backend:
    """The backend of framework ``name`` ("torch" or "jax") on ``device`` ("cpu", "gpu", "tpu")."""
    if name not in BACKENDS:
        raise MTCoreError(f"unknown backend {name!r}; known backends: {', '.join(BACKENDS)}")
    reason = available(name)
    if reason:
        raise BackendUnavailable(f"backend {name!r} unavailable: {reason}")
    module, cls, _, _ = BACKENDS[name]
    return getattr(importlib.import_module(module), cls)(device)
