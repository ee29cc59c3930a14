"""Small configs and weights for property tests. Few distinct shapes: each one compiles anew."""

from __future__ import annotations

import os

import numpy as np

from mtcore import ModelConfig
from mtcore.weights import init_tree, to_hf_state_dict

CONFIGS = [
    ModelConfig.preset("tiny", dropout=0.0),
    # Uneven depths, ReLU, unscaled embeddings.
    ModelConfig(vocab_size=97, d_model=32, encoder_layers=1, decoder_layers=3, num_heads=2, ffn_dim=48,
                activation="relu", scale_embedding=False, max_len=32, dropout=0.0, pad_id=96, decoder_start_id=96),
    # Six heads of 8, GELU, special ids away from Marian's convention.
    ModelConfig(vocab_size=120, d_model=48, encoder_layers=3, decoder_layers=1, num_heads=6, ffn_dim=64,
                activation="gelu", max_len=32, dropout=0.0, pad_id=3, eos_id=2, decoder_start_id=1),
]
SHAPES = [(1, 1, 1), (2, 7, 5), (3, 12, 4)]  # (B, S, T)

# The tests' XLA flag (tests/conftest.py sets it for the session): machine code compiled at -O0, so
# a compile costs less and a step of it runs slower (docs/testing.md).
FAST_COMPILE = "--xla_backend_optimization_level=0"


def as_users_run(env: dict | None = None) -> dict:
    """``env`` (this process's by default) without the tests' XLA flag: for a process that runs as
    users run it, many steps or XLA's optimised buffers."""
    env = dict(os.environ if env is None else env)
    flags = " ".join(f for f in env.get("XLA_FLAGS", "").split() if f != FAST_COMPILE)
    if flags:
        env["XLA_FLAGS"] = flags
    else:
        env.pop("XLA_FLAGS", None)
    return env


def random_tree(cfg: ModelConfig, seed: int) -> dict[str, np.ndarray]:
    """Weights big enough that logits and greedy outputs vary, with a random final_logits_bias."""
    tree = init_tree(cfg, seed, std=0.25)
    rng = np.random.default_rng(seed + 1)
    tree["final_logits_bias"] = rng.normal(0, 1.0, cfg.vocab_size).astype(np.float32)
    for name in tree:
        if name.endswith("layer_norm.weight"):
            tree[name] = (1 + rng.normal(0, 0.1, tree[name].shape)).astype(np.float32)
    return tree


def hf_model(cfg: ModelConfig, tree: dict[str, np.ndarray]):
    """A Hugging Face ``MarianMTModel`` holding ``tree``."""
    import torch
    from transformers import MarianMTModel

    from mtcore.torch.hf import marian_config

    model = MarianMTModel(marian_config(cfg)).eval()
    state = {k: torch.from_numpy(v) for k, v in to_hf_state_dict(cfg, tree).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("embed_positions" in k for k in missing), (missing, unexpected)
    return model


def hf_logits(model, batch) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(batch.src_ids).long(),
            attention_mask=torch.from_numpy(batch.src_mask).long(),
            decoder_input_ids=torch.from_numpy(batch.tgt_in).long(),
        )
    return out.logits.numpy()


# ---- data parallel ---------------------------------------------------------------------------
PARALLEL_CFG = ModelConfig.preset("tiny", dropout=0.0)


def uneven_batches(cfg: ModelConfig, n: int = 3, batch_size: int = 8):
    """Global batches whose first rows are long and last rows short, so every device split gives
    shards with different numbers of real tokens (a per-shard mean would weigh them wrongly)."""
    from mtcore.batch import Batch

    rng = np.random.default_rng(7)
    out = []
    for _ in range(n):
        lengths = np.linspace(11, 2, batch_size).astype(int)
        sources = [rng.integers(3, cfg.vocab_size - 1, k - 1).tolist() for k in lengths]
        targets = [rng.integers(3, cfg.vocab_size - 1, k - 1).tolist() for k in lengths[::-1] // 2 + 1]
        out.append(Batch.from_sequences(cfg, sources, targets, 12, 12))
    return out


def train_steps(be, cfg: ModelConfig, tcfg, batches) -> tuple[list[float], dict[str, np.ndarray]]:
    """Step losses and the trained weights after one step per global batch."""
    from mtcore.weights import init_tree

    state = be.init_train_state(be.from_numpy(cfg, init_tree(cfg, 0)), tcfg)
    step = be.make_train_step(cfg, tcfg)
    losses = []
    for batch in batches:
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return losses, be.to_numpy(be.state_params(state))


def compile_counter(framework: str):
    """A context manager yielding a function that returns how many programs were compiled inside it."""
    import contextlib

    @contextlib.contextmanager
    def jax_counter():
        import jax.monitoring

        events: list[str] = []

        # A program XLA compiled, or one the persistent compile cache handed back (the tests keep
        # one, tests/conftest.py): either way the step was traced and lowered again.
        def listener(event, duration_secs, **kwargs):
            if event == "/jax/core/compile/backend_compile_duration":
                events.append(event)

        def hit(event, **kwargs):
            if event == "/jax/compilation_cache/cache_hits":
                events.append(event)

        jax.monitoring.register_event_duration_secs_listener(listener)
        jax.monitoring.register_event_listener(hit)
        try:
            yield lambda: len(events)
        finally:
            jax.monitoring.unregister_event_duration_listener(listener)
            jax.monitoring.unregister_event_listener(hit)

    @contextlib.contextmanager
    def torch_counter():
        import torch._dynamo
        from torch._dynamo.utils import counters

        torch._dynamo.reset()  # earlier tests' compiled frames would hide or add compilations
        counters.clear()
        yield lambda: int(counters["stats"]["unique_graphs"])

    return jax_counter() if framework == "jax" else torch_counter()
