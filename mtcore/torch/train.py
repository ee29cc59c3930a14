"""Training step in PyTorch. Mirrors ``mtcore/jax/train.py``."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mtcore.config import ModelConfig, TrainConfig
from mtcore.torch.model import Transformer


@dataclass
class TrainState:
    """The model's parameters live in ``model``; ``step`` counts completed updates."""

    model: Transformer
    optimizer: torch.optim.Optimizer
    step: int = 0


def decays(name: str, p: torch.Tensor) -> bool:
    # Weight decay on matrices (linear weights, embeddings), never on biases or LayerNorm.
    return p.ndim >= 2


def make_optimizer(model: Transformer, tcfg: TrainConfig) -> torch.optim.Optimizer:
    params = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in params if decays(n, p)], "weight_decay": tcfg.weight_decay},
        {"params": [p for n, p in params if not decays(n, p)], "weight_decay": 0.0},
    ]
    device = next(model.parameters()).device
    # fused=True runs the whole AdamW update as one kernel per dtype/device, where supported.
    fused = device.type in ("cuda", "cpu", "xpu", "mps")
    return torch.optim.AdamW(
        groups, lr=tcfg.lr_at(0), betas=(tcfg.beta1, tcfg.beta2), eps=tcfg.eps, fused=fused
    )


def init_train_state(model: Transformer, tcfg: TrainConfig) -> TrainState:
    return TrainState(model, make_optimizer(model, tcfg))


def loss_fn(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, label_smoothing: float):
    """Label-smoothed cross-entropy averaged over real target tokens, and token accuracy."""
    v = logits.shape[-1]
    per_token = F.cross_entropy(
        logits.float().reshape(-1, v), labels.reshape(-1).long(), reduction="none", label_smoothing=label_smoothing
    ).view(labels.shape)  # (B, T)
    weights = mask.float()
    denom = weights.sum().clamp_min(1.0)
    loss = (per_token * weights).sum() / denom
    accuracy = ((logits.argmax(-1) == labels).float() * weights).sum() / denom
    return loss, accuracy


def autocast(tcfg: TrainConfig, device: torch.device):
    if tcfg.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_train_step(cfg: ModelConfig, tcfg: TrainConfig, compile: bool = False):
    """``train_step(state, batch) -> (state, metrics)``: forward, backward, clip, AdamW.

    ``batch`` is a dict of device tensors (see ``TorchBackend.device_batch``). With ``compile``
    the forward and backward run through ``torch.compile``; the fused optimizer stays eager.
    """

    def forward_backward(model: Transformer, batch: dict[str, torch.Tensor]):
        with autocast(tcfg, batch["src_ids"].device):
            logits = model(batch["src_ids"], batch["src_mask"], batch["tgt_in"])  # (B, T, V)
        loss, accuracy = loss_fn(logits, batch["tgt_out"], batch["tgt_mask"], tcfg.label_smoothing)
        loss.backward()
        return loss.detach(), accuracy.detach()

    run = torch.compile(forward_backward) if compile else forward_backward

    def train_step(state: TrainState, batch: dict[str, torch.Tensor]) -> tuple[TrainState, dict[str, Any]]:
        model = state.model
        model.train()
        loss, accuracy = run(model, batch)
        params = [p for p in model.parameters() if p.grad is not None]
        if tcfg.clip_norm > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, tcfg.clip_norm, foreach=True)
        else:
            grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        lr = tcfg.lr_at(state.step)
        for group in state.optimizer.param_groups:
            group["lr"] = lr
        state.optimizer.step()
        state.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        return state, {"loss": loss, "accuracy": accuracy, "grad_norm": grad_norm.detach(), "lr": lr}

    return train_step


@torch.no_grad()
def eval_step(model: Transformer, batch: dict[str, torch.Tensor], tcfg: TrainConfig) -> dict[str, Any]:
    model.eval()
    with autocast(tcfg, batch["src_ids"].device):
        logits = model(batch["src_ids"], batch["src_mask"], batch["tgt_in"])
    loss, accuracy = loss_fn(logits, batch["tgt_out"], batch["tgt_mask"], 0.0)
    return {"loss": loss, "accuracy": accuracy}
