"""The baseline: Hugging Face ``MarianMTModel`` under the torch backend's train step and optimizer,
what users would otherwise train."""

from __future__ import annotations

import numpy as np
import torch

from mtcore.batch import check_source
from mtcore.config import ModelConfig, TrainConfig
from mtcore.errors import MTCoreError
from mtcore.torch.backend import TorchBackend, compile_mode
from mtcore.weights import Tree, from_hf_state_dict, hf_name, init_tree, param_shapes, to_hf_state_dict


def marian_config(cfg: ModelConfig):
    """The ``transformers.MarianConfig`` equivalent to ``cfg``."""
    from transformers import MarianConfig

    return MarianConfig(**cfg.to_hf_dict())


class HFMarian(torch.nn.Module):
    """Hugging Face ``MarianMTModel`` behind mtcore's model interface: the baseline users would
    otherwise train."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        from transformers import MarianMTModel

        self.cfg = cfg
        self.hf = MarianMTModel(marian_config(cfg))

    def forward(self, src_ids, src_mask, tgt_in):
        return self.hf(input_ids=src_ids, attention_mask=src_mask, decoder_input_ids=tgt_in).logits


class HFBackend(TorchBackend):
    """The same train step and optimizer as ``TorchBackend``, around Hugging Face's model."""

    name = "hf"

    def __repr__(self) -> str:
        return f"HFBackend(device={self.device_kind!r}, devices={self.world.devices})"

    def init_params(self, cfg: ModelConfig, seed: int = 0) -> HFMarian:
        return self.from_numpy(cfg, init_tree(cfg, seed))

    def to_numpy(self, params: HFMarian) -> Tree:
        state = {k: v.detach().float().cpu().numpy() for k, v in params.hf.state_dict().items()}
        return from_hf_state_dict(params.cfg, state)

    def from_numpy(self, cfg: ModelConfig, tree: Tree) -> HFMarian:
        model = HFMarian(cfg)
        state = {k: torch.from_numpy(v) for k, v in to_hf_state_dict(cfg, tree).items()}
        _, unexpected = model.hf.load_state_dict(state, strict=False)
        if unexpected:
            raise MTCoreError(f"HF Marian did not take {unexpected[:3]}")
        return model.to(self.device)

    def _named_parameters(self, model: HFMarian) -> list[tuple[str, torch.Tensor]]:
        by_hf = dict(model.hf.named_parameters())
        return [(name, by_hf[hf_name(name)]) for name in param_shapes(model.cfg) if hf_name(name) in by_hf]

    @staticmethod
    def _eager_only(compile: bool | str | None) -> None:
        if compile_mode(compile):
            raise MTCoreError("the HF baseline runs eager only")

    def make_train_step(self, cfg: ModelConfig, tcfg: TrainConfig, compile: bool | str = False):
        self._eager_only(compile)
        return super().make_train_step(cfg, tcfg)

    def compile_train_step(self, cfg, tcfg, state, batch, compile: bool | str = False, fresh: bool = True):
        self._eager_only(compile)
        return super().compile_train_step(cfg, tcfg, state, batch)

    def generate(self, params: HFMarian, cfg: ModelConfig, src_ids, src_mask=None, *, max_len=64, num_beams=1,
                 length_penalty=1.0, early_stopping=False, compile=False) -> np.ndarray:
        self._eager_only(compile)
        src_ids, src_mask = check_source(cfg, src_ids, src_mask, max_len, num_beams, early_stopping)
        params.eval()
        with torch.no_grad():
            # A Marian checkpoint's generation settings, stated: a model built from a config alone
            # may not carry them.
            out = params.hf.generate(
                input_ids=torch.from_numpy(src_ids).to(self.device),
                attention_mask=torch.from_numpy(src_mask).to(self.device),
                num_beams=num_beams, do_sample=False, max_length=max_len + 1, length_penalty=length_penalty,
                early_stopping=early_stopping, bad_words_ids=[[cfg.pad_id]], forced_eos_token_id=cfg.eos_id,
            )[:, 1:].cpu().numpy()
        return np.pad(out, ((0, 0), (0, max_len - out.shape[1])), constant_values=cfg.pad_id).astype(np.int32)
