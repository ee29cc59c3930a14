"""Training step in PyTorch. Mirrors ``mtcore/jax/train.py``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mtcore.config import ModelConfig, TrainConfig
from mtcore.torch.model import Transformer


@dataclass
class TrainState:
    """The model's parameters live in ``model``; ``step`` counts completed updates."""

    model: torch.nn.Module  # the Transformer, or DDP around it
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
    # fused=True runs the whole AdamW update as one kernel per dtype/device, where supported; with
    # sharded (DTensor) parameters the per-parameter loop (a tensor-parallel model mixes DTensors
    # and plain tensors, which neither fused nor foreach takes).
    fused = device.type in ("cuda", "cpu", "xpu", "mps") and not any(_is_dtensor(p) for _, p in params)
    return torch.optim.AdamW(
        groups, lr=tcfg.lr_at(0), betas=(tcfg.beta1, tcfg.beta2), eps=tcfg.eps, fused=fused
    )


def _is_dtensor(t: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor  # public since torch 2.5
    except ImportError:  # an older torch trains on no mesh with DTensors
        return False
    return isinstance(t, DTensor)


def clip_sharded(params: list[torch.Tensor], clip_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` over gradients that are DTensors on different meshes (FSDP over the batch
    axes, tensor parallel inside) or plain tensors: the squares of each rank's own shards summed per
    layout (mesh and placements), each sum all-reduced once over the mesh dimensions its gradients
    are split along, as torchtitan takes the norm in one reduction rather than one per parameter;
    then the same clipping (``max_norm / (norm + 1e-6)``, at most 1) as torch's."""
    import torch.distributed as dist
    from torch.distributed.tensor import Shard

    squares: dict[tuple, list] = {}  # layout -> [its mesh, the sum of its squares on this rank]
    for p in params:
        g = p.grad
        if _is_dtensor(g):
            key = (id(g.device_mesh), tuple(i for i, pl in enumerate(g.placements) if isinstance(pl, Shard)))
            meshes = squares.setdefault(("mesh", *key), [g.device_mesh, torch.zeros((), device=g.to_local().device)])
            meshes[1] = meshes[1] + g.to_local().float().pow(2).sum()
        else:
            plain = squares.setdefault(("plain",), [None, torch.zeros((), device=g.device)])
            plain[1] = plain[1] + g.float().pow(2).sum()
    total_sq = None
    for key, (mesh, sq) in squares.items():
        for dim in key[2] if key[0] == "mesh" else ():  # a replicated dimension holds the whole already
            dist.all_reduce(sq, group=mesh.get_group(dim))
        total_sq = sq if total_sq is None else total_sq + sq
    total = total_sq.sqrt()
    if clip_norm > 0:
        coef = float((clip_norm / (total + 1e-6)).clamp(max=1.0))
        for p in params:
            p.grad.mul_(coef)
    return total


def init_train_state(model: Transformer, tcfg: TrainConfig) -> TrainState:
    return TrainState(model, make_optimizer(model, tcfg))


def loss_fn(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, label_smoothing: float):
    """``(loss_sum, correct, count)`` over real target tokens: label-smoothed cross-entropy summed,
    correct predictions, and the token count that divides both once summed over devices.

    A prediction is correct when the label's logit is the row's largest (a tie counts), compared
    with a max rather than an argmax: XLA:CPU runs an argmax as a scalar loop
    (docs/findings/2026-11-27-jax-small-cpu-step.md, item 2), and both frameworks must count alike."""
    v = logits.shape[-1]
    per_token = F.cross_entropy(
        logits.float().reshape(-1, v), labels.reshape(-1).long(), reduction="none", label_smoothing=label_smoothing
    ).view(labels.shape)  # (B, T)
    weights = mask.float()
    hit = logits.gather(-1, labels[..., None].long()).squeeze(-1) >= logits.amax(-1)  # (B, T)
    correct = (hit.float() * weights).sum()
    return (per_token * weights).sum(), correct, weights.sum()


def autocast(tcfg: TrainConfig, device: torch.device):
    if tcfg.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_train_step(cfg: ModelConfig, tcfg: TrainConfig, compile: bool | str = False, *, world_size: int = 1,
                    sum_over_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None, sharded: bool = False):
    """``train_step(state, batch) -> (state, metrics)``: forward, backward, clip, AdamW.

    ``batch`` is a dict of device tensors (see ``TorchBackend.device_batch``), this rank's rows of
    the global batch. With ``compile`` the forward and loss (and so their backward) run through
    ``torch.compile``, a string being its ``mode`` ("reduce-overhead": CUDA graphs on a GPU); the
    fused optimizer stays eager. Under DDP (``world_size`` ranks, ``sum_over_ranks`` an
    all-reduce) the loss is the global token sum over the global token count, so N ranks make the
    update one device makes on the whole batch, however unevenly real tokens fall on the ranks.
    On a sharded mesh (``sharded``: FSDP2 summing gradients, tensor parallel) ``world_size`` is 1
    and the gradient norm is taken over DTensors.
    """

    def forward_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]):
        with autocast(tcfg, batch["src_ids"].device):
            logits = model(batch["src_ids"], batch["src_mask"], batch["tgt_in"])  # (B, T, V)
        return loss_fn(logits, batch["tgt_out"], batch["tgt_mask"], tcfg.label_smoothing)

    mode = compile if isinstance(compile, str) else None
    run = torch.compile(forward_loss, mode=mode) if compile else forward_loss

    def train_step(state: TrainState, batch: dict[str, torch.Tensor]) -> tuple[TrainState, dict[str, Any]]:
        if mode == "reduce-overhead":
            # A new iteration: the graphs' output buffers of the last step may be overwritten
            # (torch.compiler docs, "CUDAGraph Trees").
            torch.compiler.cudagraph_mark_step_begin()
        model = state.model
        model.train()
        loss_sum, correct, count = run(model, batch)
        totals = torch.stack([loss_sum.detach(), correct.detach(), count.detach()])  # (3,): this rank's
        if sum_over_ranks is not None:
            totals = sum_over_ranks(totals)  # (3,): the global batch's
        denominator = totals[2].clamp_min(1.0)
        # DDP averages gradients over ranks: world_size x (this rank's sum / global count), averaged,
        # is the gradient of the global sum over the global count.
        (loss_sum * (world_size / denominator)).backward()
        params = [p for p in model.parameters() if p.grad is not None]
        if sharded:
            grad_norm = clip_sharded(params, tcfg.clip_norm)
        elif tcfg.clip_norm > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, tcfg.clip_norm, foreach=True)
        else:
            grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        lr = tcfg.lr_at(state.step)
        for group in state.optimizer.param_groups:
            group["lr"] = lr
        state.optimizer.step()
        state.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        metrics = {"loss": totals[0] / denominator, "accuracy": totals[1] / denominator,
                   "grad_norm": grad_norm.detach(), "lr": lr, "tokens": totals[2]}
        return state, metrics

    return train_step


@torch.no_grad()
def eval_step(model: Transformer, batch: dict[str, torch.Tensor], tcfg: TrainConfig) -> dict[str, Any]:
    model.eval()
    with autocast(tcfg, batch["src_ids"].device):
        logits = model(batch["src_ids"], batch["src_mask"], batch["tgt_in"])
    loss_sum, correct, count = loss_fn(logits, batch["tgt_out"], batch["tgt_mask"], 0.0)
    denominator = count.clamp_min(1.0)
    return {"loss": loss_sum / denominator, "accuracy": correct / denominator}
