"""The PyTorch backend: numpy at the edges, ``torch`` inside. Mirrors ``mtcore/jax/backend.py``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mtcore.batch import Batch, check_source
from mtcore.config import ModelConfig, TrainConfig
from mtcore.errors import MTCoreError
from mtcore.torch import decode, train
from mtcore.torch.model import Transformer
from mtcore.weights import Tree, check_tree, read_hf_checkpoint

DEVICE_TYPES = {"cpu": "cpu", "gpu": "cuda"}


class TorchBackend:
    name = "torch"

    def __init__(self, device: str = "cpu"):
        if device not in DEVICE_TYPES:
            raise MTCoreError(f"torch backend: unknown device {device!r}; expected one of {sorted(DEVICE_TYPES)}")
        if device == "gpu" and not torch.cuda.is_available():
            raise MTCoreError("torch backend: device 'gpu' asked for, but torch.cuda.is_available() is False")
        self.device_kind = device
        self.device = torch.device(DEVICE_TYPES[device])

    def __repr__(self) -> str:
        return f"TorchBackend(device={self.device_kind!r})"

    # ---- parameters ----------------------------------------------------------------------------
    def init_params(self, cfg: ModelConfig, seed: int = 0) -> Transformer:
        torch.manual_seed(seed)
        return Transformer(cfg).to(self.device)

    def load_hf(self, path, cfg: ModelConfig | None = None) -> Transformer:
        cfg, tree = read_hf_checkpoint(path, cfg)
        return self.from_numpy(cfg, tree)

    def to_numpy(self, params: Transformer) -> Tree:
        return {k: v.detach().float().cpu().numpy() for k, v in params.state_dict().items()}

    def from_numpy(self, cfg: ModelConfig, tree: Tree) -> Transformer:
        tree = check_tree(cfg, tree)
        model = Transformer(cfg)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in tree.items()})
        return model.to(self.device)

    @staticmethod
    def num_params(params: Transformer) -> int:
        return sum(p.numel() for p in params.parameters() if p.requires_grad)

    # ---- compute -------------------------------------------------------------------------------
    def device_batch(self, batch: Batch | dict, cfg: ModelConfig | None = None) -> dict[str, torch.Tensor]:
        """Validated device tensors; a dict that already is one passes through."""
        if isinstance(batch, dict):
            return batch
        if cfg is not None:
            batch.validate(cfg)
        return {k: torch.from_numpy(v).to(self.device, non_blocking=True) for k, v in batch.arrays().items()}

    @torch.no_grad()
    def forward(self, params: Transformer, cfg: ModelConfig, batch: Batch) -> np.ndarray:
        params.eval()
        b = self.device_batch(batch, cfg)
        logits = params(b["src_ids"], b["src_mask"], b["tgt_in"])  # (B, T, V)
        return logits.float().cpu().numpy()

    def init_train_state(self, params: Transformer, tcfg: TrainConfig) -> train.TrainState:
        return train.init_train_state(params, tcfg)

    def make_train_step(self, cfg: ModelConfig, tcfg: TrainConfig, compile: bool = False):
        step = train.make_train_step(cfg, tcfg, compile=compile)

        def train_step(state, batch):
            return step(state, self.device_batch(batch, cfg))

        return train_step

    def make_eval_step(self, cfg: ModelConfig, tcfg: TrainConfig):
        return lambda params, batch: train.eval_step(params, self.device_batch(batch, cfg), tcfg)

    def state_params(self, state: train.TrainState) -> Transformer:
        return state.model

    def generate(
        self,
        params: Transformer,
        cfg: ModelConfig,
        src_ids: np.ndarray,
        src_mask: np.ndarray | None = None,
        *,
        max_len: int = 64,
        num_beams: int = 1,
        length_penalty: float = 1.0,
    ) -> np.ndarray:
        src_ids, src_mask = check_source(cfg, src_ids, src_mask, max_len, num_beams)
        params.eval()
        ids = torch.from_numpy(src_ids).to(self.device)
        mask = torch.from_numpy(src_mask).to(self.device)
        if num_beams == 1:
            out = decode.greedy(params, ids, mask, max_len)
        else:
            out = decode.beam_search(params, ids, mask, max_len, num_beams, length_penalty)
        return out.cpu().numpy().astype(np.int32)

    def sync(self, value: Any = None) -> Any:
        """Wait for queued device work (and so for ``value``); returns ``value``."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return value

    def devices(self) -> list[str]:
        from mtcore.devices import torch_devices

        return torch_devices()

