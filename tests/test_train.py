"""Training steps: the same loss and the same update in both frameworks, and they learn."""

import numpy as np
import pytest
from helpers import CONFIGS, compile_counter, random_tree
from hypothesis import example, given
from hypothesis import strategies as st

from mtcore import TrainConfig, random_batch
from mtcore.weights import init_tree

pytestmark = [pytest.mark.torch, pytest.mark.jax]


def _steps(be, cfg, tcfg, tree, batches):
    state = be.init_train_state(be.from_numpy(cfg, tree), tcfg)
    step = be.make_train_step(cfg, tcfg)
    losses = []
    for batch in batches:
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return losses, be.to_numpy(be.state_params(state)), metrics


@pytest.mark.slow
@given(cfg=st.sampled_from(CONFIGS), seed=st.integers(0, 2**16))
@example(cfg=CONFIGS[2], seed=59649)  # a tied-embedding row whose gradient is rounding noise (eps 1e-6 failed it)
def test_loss_and_update_agree_across_frameworks(backends, cfg, seed):
    # Adam divides by sqrt(v) + eps: with Marian's eps=1e-9 a gradient that is pure rounding noise
    # (k_proj biases get ~0 analytically) becomes a full +-lr step of random sign, and with eps=1e-6
    # a noise gradient of 1e-8 still moves a weight by 1% of lr, past the tolerance below. eps=1e-4
    # keeps such updates far below it while real gradients still take steps of about lr, so what
    # is compared is the arithmetic (docs/findings/2026-12-04-house-moves.md).
    tcfg = TrainConfig(warmup_steps=1, eps=1e-4)
    tree = init_tree(cfg, seed)
    batches = [random_batch(cfg, 2, 7, 5, seed=seed + i) for i in range(2)]
    lt, pt, mt = _steps(backends["torch"], cfg, tcfg, tree, batches)
    lj, pj, mj = _steps(backends["jax"], cfg, tcfg, tree, batches)
    np.testing.assert_allclose(lt, lj, rtol=1e-5)
    assert float(mt["grad_norm"]) == pytest.approx(float(mj["grad_norm"]), rel=1e-4)
    assert float(mt["lr"]) == pytest.approx(float(mj["lr"]), rel=1e-6)
    for k in tree:
        update_t, update_j = pt[k] - tree[k], pj[k] - tree[k]
        # Two AdamW updates move weights by up to ~2 * lr; they agree to 0.1% of lr.
        assert np.abs(update_t - update_j).max() < 1e-3 * tcfg.learning_rate, k
    assert any(np.abs(pt[k] - tree[k]).max() > 0.5 * tcfg.learning_rate for k in tree)


def test_loss_matches_a_hand_computed_cross_entropy(backends):
    cfg = CONFIGS[0]
    tree = random_tree(cfg, 0)
    batch = random_batch(cfg, 2, 6, 5, seed=0)
    logits = backends["torch"].forward(backends["torch"].from_numpy(cfg, tree), cfg, batch).astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    nll = -np.take_along_axis(logp, batch.tgt_out[..., None], -1)[..., 0]
    smooth = -logp.mean(-1)
    per_token = 0.9 * nll + 0.1 * smooth
    want = (per_token * batch.tgt_mask).sum() / batch.tgt_mask.sum()
    tcfg = TrainConfig(label_smoothing=0.1)
    for be in backends.values():
        _, _, metrics = _steps(be, cfg, tcfg, tree, [batch])
        assert float(metrics["loss"]) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_default_train_config_learns_a_batch(backends, framework):
    cfg = CONFIGS[0]
    batch = random_batch(cfg, 8, 10, 10, seed=1)
    losses, _, metrics = _steps(backends[framework], cfg, TrainConfig(), init_tree(cfg, 1), [batch] * 60)
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.8 * losses[0], losses[::10]
    assert 0.0 <= float(metrics["accuracy"]) <= 1.0


@pytest.mark.parametrize("framework", ["torch", pytest.param("jax", marks=pytest.mark.slow)])
def test_bf16_step_is_close_to_fp32(backends, framework):
    cfg = CONFIGS[0]
    tree = init_tree(cfg, 2)
    batch = random_batch(cfg, 2, 7, 5, seed=2)
    (l32,), _, _ = _steps(backends[framework], cfg, TrainConfig(), tree, [batch])
    (l16,), p16, _ = _steps(backends[framework], cfg, TrainConfig(precision="bf16"), tree, [batch])
    assert l16 == pytest.approx(l32, rel=2e-2)
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in p16.values())  # fp32 master weights


@pytest.mark.parametrize("framework", ["torch", pytest.param("jax", marks=pytest.mark.slow)])
def test_dropout_is_applied_in_training_only(backends, framework):
    """A step with dropout computes another loss and update than one without. The weights are
    random_tree's: at init_tree's scale the logits are all near zero and the loss is log(vocab)
    whatever is dropped, so the losses alone could agree to 1e-5 for some masks (torch draws them
    from its global RNG: the test order chose them)."""
    be = backends[framework]
    be.reseed(3)
    cfg = CONFIGS[0].replace(dropout=0.3)
    tree = random_tree(cfg, 3)
    batch = random_batch(cfg, 2, 7, 5, seed=3)
    (with_dropout,), moved, metrics = _steps(be, cfg, TrainConfig(), tree, [batch])
    (without,), kept, _ = _steps(be, CONFIGS[0], TrainConfig(), tree, [batch])
    assert with_dropout != pytest.approx(without, rel=1e-2)
    # Adam's first step moves a weight by about lr either way: some gradient changed sign.
    assert max(np.abs(moved[k] - kept[k]).max() for k in tree) > float(metrics["lr"])
    # Inference ignores dropout.
    a = be.forward(be.from_numpy(cfg, tree), cfg, batch)
    b = be.forward(be.from_numpy(CONFIGS[0], tree), CONFIGS[0], batch)
    assert np.array_equal(a, b)


def test_jax_mlp_recomputed_in_the_backward_pass_draws_the_same_dropout_mask():
    """JAX's MLP recomputes its activation in the backward pass (``nn.remat`` in model.py): with
    activation dropout, the recomputation must draw the forward pass's mask, so its gradients are
    the plain block's."""
    import jax
    import jax.numpy as jnp

    from mtcore.jax import model

    cfg = CONFIGS[0].replace(activation_dropout=0.3)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, cfg.d_model)), jnp.float32)
    params = model._MlpBlock(cfg).init(jax.random.key(0), x)

    def grads(block):
        loss = lambda p, x: (block.apply(p, x, rngs={"dropout": jax.random.key(1)}) ** 2).sum()
        return jax.tree.leaves(jax.grad(loss, argnums=(0, 1))(params, x))

    recomputed = grads(model.MlpBlock(cfg, deterministic=False))
    for got, want in zip(recomputed, grads(model._MlpBlock(cfg, deterministic=False)), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    without = grads(model._MlpBlock(cfg, deterministic=True))
    assert not all(np.allclose(a, b) for a, b in zip(recomputed, without, strict=True))  # a mask was drawn


def test_eval_step_agrees(backends):
    cfg, tcfg = CONFIGS[2], TrainConfig()
    tree = random_tree(cfg, 4)
    batch = random_batch(cfg, 3, 7, 5, seed=4)
    out = {}
    for name, be in backends.items():
        out[name] = be.make_eval_step(cfg, tcfg)(be.from_numpy(cfg, tree), batch)
    assert float(out["torch"]["loss"]) == pytest.approx(float(out["jax"]["loss"]), rel=1e-5)
    assert float(out["torch"]["accuracy"]) == pytest.approx(float(out["jax"]["accuracy"]))


def test_jax_ahead_of_time_step_is_reused_unless_fresh(jax_backend):
    be = jax_backend
    cfg = CONFIGS[0]
    tcfg = TrainConfig()
    batch = random_batch(cfg, 2, 8, 8, seed=0)
    state = be.init_train_state(be.from_numpy(cfg, init_tree(cfg, seed=0)), tcfg)
    first, seconds, state, m1 = be.compile_train_step(cfg, tcfg, state, batch, fresh=True)
    again, seconds_again, state, m2 = be.compile_train_step(cfg, tcfg, state, batch, fresh=False)
    # Same program, same compile it reports; and it trains on: the second call is the second step.
    assert again is first and seconds_again == seconds > 0
    assert np.isfinite(float(m2["loss"])) and float(m2["loss"]) != float(m1["loss"])
    fresh, _, state, _ = be.compile_train_step(cfg, tcfg, state, batch, fresh=True)
    assert fresh is not first


@pytest.mark.slow
def test_the_train_step_compiles_once(jax_backend):
    """Three steps of ``make_train_step`` compile one program: a retrace on the second call (its
    state comes from the step, not from ``init_train_state``) would make every run and every
    bucket shape pay twice. (torch.compile's step: test_run's compiled run counts its graphs over
    a whole epoch, which is this claim and more, for one cold compile instead of two.)"""
    framework, be, cfg = "jax", jax_backend, CONFIGS[0]
    # A train config no other test uses: its step is compiled here, not reused from an earlier test.
    tcfg = TrainConfig(seed=8713)
    batch = random_batch(cfg, 2, 7, 5, seed=0)
    state = be.init_train_state(be.from_numpy(cfg, init_tree(cfg, 0)), tcfg)
    with compile_counter(framework) as compiles:
        step = be.make_train_step(cfg, tcfg)
        counts = []
        for _ in range(3):
            state, metrics = step(state, batch)
            be.sync(metrics["loss"])
            counts.append(compiles())
    assert counts[0] >= 1, f"{framework}: the first step compiled nothing ({counts})"
    assert counts[1:] == [counts[0]] * 2, f"{framework}: compiled again after the first step: {counts}"


def test_accuracy_counts_the_labels_logit_being_the_largest(backends):
    # Four target tokens: a clear hit, a miss, a tie for the largest (counts: argmax would pick
    # whichever came first), and a hit on a padding position (not counted).
    logits = np.array([[[0.0, 3.0, 1.0], [2.0, 1.0, 0.0], [1.0, 5.0, 5.0], [9.0, 0.0, 0.0]]], np.float32)
    labels = np.array([[1, 2, 2, 0]], np.int32)
    mask = np.array([[1, 1, 1, 0]], np.int32)
    import jax.numpy as jnp
    import torch

    from mtcore.jax.train import loss_fn as jax_loss
    from mtcore.torch.train import loss_fn as torch_loss

    _, correct_j, count_j = jax_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask), 0.1)
    _, correct_t, count_t = torch_loss(torch.from_numpy(logits), torch.from_numpy(labels), torch.from_numpy(mask), 0.1)
    assert (float(correct_j), float(count_j)) == (2.0, 3.0)
    assert (float(correct_t), float(count_t)) == (2.0, 3.0)
