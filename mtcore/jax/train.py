"""Training step in JAX. Mirrors ``mtcore/torch/train.py``."""

from __future__ import annotations

import warnings
from functools import lru_cache
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from mtcore.config import ModelConfig, TrainConfig
from mtcore.jax.model import Transformer

# The state is donated so XLA can update parameters in place; the CPU backend cannot reuse
# donated buffers and says so on every call.
warnings.filterwarnings("ignore", message="Some donated buffers were not usable")


@flax.struct.dataclass
class TrainState:
    """``params`` are trained, ``consts`` (``final_logits_bias``) are carried along; ``step``
    counts completed updates."""

    step: jax.Array
    params: Any
    consts: Any
    opt_state: Any
    rng: jax.Array


def decays(path: tuple, leaf: jax.Array) -> bool:
    # Weight decay on matrices (linear kernels, embeddings), never on biases or LayerNorm. Names,
    # not ranks, decide: nn.scan gives biases a leading layer axis.
    return path[-1].key in ("kernel", "embedding")


def learning_rate(tcfg: TrainConfig, count: jax.Array) -> jax.Array:
    """``TrainConfig.lr_at`` in jnp, for optax's update count."""
    n = count + 1
    return tcfg.learning_rate * jnp.minimum(n / tcfg.warmup_steps, jnp.sqrt(tcfg.warmup_steps / n))


def make_optimizer(tcfg: TrainConfig) -> optax.GradientTransformation:
    adamw = optax.adamw(
        lambda count: learning_rate(tcfg, count),
        b1=tcfg.beta1,
        b2=tcfg.beta2,
        eps=tcfg.eps,
        weight_decay=tcfg.weight_decay,
        mask=lambda params: jax.tree_util.tree_map_with_path(decays, params),
    )
    if tcfg.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(tcfg.clip_norm), adamw)
    return adamw


def init_train_state(variables: dict[str, Any], tcfg: TrainConfig) -> TrainState:
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        consts=variables["consts"],
        opt_state=make_optimizer(tcfg).init(params),
        rng=jax.random.key(tcfg.seed),
    )


def loss_fn(logits: jax.Array, labels: jax.Array, mask: jax.Array, label_smoothing: float):
    """``(loss_sum, correct, count)`` over real target tokens: label-smoothed cross-entropy summed,
    correct predictions (the label's logit is the largest: ``mtcore/torch/train.py`` says why not
    argmax), and the token count that divides both once summed over devices."""
    v = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, v, dtype=jnp.float32), label_smoothing)
    per_token = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)  # (B, T)
    weights = mask.astype(jnp.float32)
    hit = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0] >= logits.max(-1)  # (B, T)
    correct = (hit * weights).sum()
    return (per_token * weights).sum(), correct, weights.sum()


def compute_dtype(tcfg: TrainConfig):
    return jnp.bfloat16 if tcfg.precision == "bf16" else jnp.float32


@lru_cache(maxsize=64)
def make_train_step(cfg: ModelConfig, tcfg: TrainConfig, jit: bool = True):
    """``train_step(state, batch) -> (state, metrics)``: forward, backward, clip, AdamW, as one
    jitted function with the state donated.

    On a mesh (``JaxBackend`` with several devices) the batch arrives split along ``data`` and the
    state replicated: the sums below are over the global batch, so XLA all-reduces the gradient
    of the global token sum over the global count, what one device computes on the whole batch.

    Cached per config, so callers share compilations; ``jit=False`` gives the plain function, for
    whoever wants to compile it fresh (the compile-time benchmarks).
    """
    model = Transformer(cfg, compute_dtype(tcfg), deterministic=False)
    tx = make_optimizer(tcfg)

    def train_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, Any]]:
        dropout_rng = jax.random.fold_in(state.rng, state.step)

        def objective(params):
            logits = model.apply(
                {"params": params, "consts": state.consts},
                batch["src_ids"], batch["src_mask"], batch["tgt_in"],
                rngs={"dropout": dropout_rng},
            )  # (B, T, V)
            loss_sum, correct, count = loss_fn(logits, batch["tgt_out"], batch["tgt_mask"], tcfg.label_smoothing)
            denominator = jnp.maximum(count, 1.0)
            return loss_sum / denominator, (correct / denominator, count)

        (loss, (accuracy, count)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "accuracy": accuracy,
            "grad_norm": optax.tree.norm(grads),
            "lr": learning_rate(tcfg, state.step),
            "tokens": count,
        }
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return jax.jit(train_step, donate_argnums=0) if jit else train_step


@lru_cache(maxsize=64)
def make_eval_step(cfg: ModelConfig, tcfg: TrainConfig):
    model = Transformer(cfg, compute_dtype(tcfg), deterministic=True)

    @jax.jit
    def eval_step(variables, batch):
        logits = model.apply(variables, batch["src_ids"], batch["src_mask"], batch["tgt_in"])
        loss_sum, correct, count = loss_fn(logits, batch["tgt_out"], batch["tgt_mask"], 0.0)
        denominator = jnp.maximum(count, 1.0)
        return {"loss": loss_sum / denominator, "accuracy": correct / denominator}

    return eval_step
