"""Proof of sameness: mtcore-torch, mtcore-jax and Hugging Face MarianMTModel compute the same
function of the same weights."""

import numpy as np
import pytest
from helpers import CONFIGS, SHAPES, hf_logits, hf_model, random_tree
from hypothesis import given
from hypothesis import strategies as st

from mtcore import Batch, ModelConfig, random_batch
from mtcore.weights import from_hf_state_dict, to_hf_state_dict

TOL = 1e-4
configs = st.sampled_from(CONFIGS)
shapes = st.sampled_from(SHAPES)
seeds = st.integers(0, 2**16)


@pytest.mark.torch
@pytest.mark.jax
@pytest.mark.hf
@given(cfg=configs, shape=shapes, seed=seeds)
def test_logits_torch_jax_hf_agree(backends, cfg, shape, seed):
    tree = random_tree(cfg, seed)
    batch = random_batch(cfg, *shape, seed=seed)
    t = backends["torch"].forward(backends["torch"].from_numpy(cfg, tree), cfg, batch)
    j = backends["jax"].forward(backends["jax"].from_numpy(cfg, tree), cfg, batch)
    h = hf_logits(hf_model(cfg, tree), batch)
    assert t.shape == j.shape == h.shape == (shape[0], shape[2], cfg.vocab_size)
    assert t.dtype == j.dtype == np.float32
    assert np.abs(t - h).max() < TOL
    assert np.abs(j - h).max() < TOL


def _repad(cfg, batch: Batch, extra: int, rng) -> Batch:
    """The same sentences with ``extra`` more padding columns and garbage ids under every pad."""
    def widen(ids, mask):
        ids = np.concatenate([ids, np.zeros((ids.shape[0], extra), np.int32)], 1)
        mask = np.concatenate([mask, np.zeros((mask.shape[0], extra), np.int32)], 1)
        garbage = rng.integers(0, cfg.vocab_size, ids.shape, dtype=np.int32)
        return np.where(mask == 1, ids, garbage), mask

    src, src_mask = widen(batch.src_ids, batch.src_mask)
    tgt_in, tgt_mask = widen(batch.tgt_in, batch.tgt_mask)
    tgt_out, _ = widen(batch.tgt_out, batch.tgt_mask)
    return Batch(src, src_mask, tgt_in, tgt_out, tgt_mask)


@pytest.mark.torch
@pytest.mark.jax
@given(cfg=configs, seed=seeds, framework=st.sampled_from(["torch", "jax"]))
def test_padding_does_not_change_real_logits(backends, cfg, seed, framework):
    be = backends[framework]
    params = be.from_numpy(cfg, random_tree(cfg, seed))
    batch = random_batch(cfg, 3, 7, 5, seed=seed)
    padded = _repad(cfg, batch, extra=4, rng=np.random.default_rng(seed))
    a = be.forward(params, cfg, batch)
    b = be.forward(params, cfg, padded)[:, :5]
    real = batch.tgt_mask.astype(bool)
    assert np.abs(a[real] - b[real]).max() < TOL


@pytest.mark.slow
@pytest.mark.jax
@given(cfg=configs, shape=shapes, seed=seeds)
def test_scan_equals_python_loop(jax_backend, cfg, shape, seed):
    tree = random_tree(cfg, seed)
    loop = cfg.replace(layer_stacking="loop")
    batch = random_batch(cfg, *shape, seed=seed)
    scanned_params = jax_backend.from_numpy(cfg, tree)
    looped_params = jax_backend.from_numpy(loop, tree)
    assert "layers" in scanned_params["params"]["encoder"]
    assert f"layers_{cfg.encoder_layers - 1}" in looped_params["params"]["encoder"]
    a = jax_backend.forward(scanned_params, cfg, batch)
    b = jax_backend.forward(looped_params, loop, batch)
    assert np.abs(a - b).max() < TOL
    # The parameter trees are the same weights, laid out differently.
    sa, sb = jax_backend.to_numpy(scanned_params), jax_backend.to_numpy(looped_params)
    assert all(np.array_equal(sa[k], sb[k]) for k in tree)


@pytest.mark.torch
@pytest.mark.jax
@given(cfg=configs, seed=seeds, stacking=st.sampled_from(["scan", "loop"]))
def test_weights_survive_hf_numpy_frameworks_numpy(backends, cfg, seed, stacking):
    cfg = cfg.replace(layer_stacking=stacking)
    tree = from_hf_state_dict(cfg, to_hf_state_dict(cfg, random_tree(cfg, seed)))
    for be in backends.values():
        back = be.to_numpy(be.from_numpy(cfg, tree))
        assert back.keys() == tree.keys()
        for k in tree:
            assert back[k].dtype == np.float32
            assert np.array_equal(back[k], tree[k]), k
    # And across: torch -> numpy -> jax -> numpy.
    via = backends["jax"].to_numpy(backends["jax"].from_numpy(cfg, backends["torch"].to_numpy(backends["torch"].from_numpy(cfg, tree))))
    assert all(np.array_equal(via[k], tree[k]) for k in tree)


@pytest.mark.torch
@pytest.mark.jax
@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_marian_en_hu_parameter_count(backends, framework):
    cfg = ModelConfig.preset("marian-en-hu")
    be = backends[framework]
    assert be.num_params(be.init_params(cfg, seed=0)) == 76_149_760


@pytest.mark.hf
def test_marian_en_hu_parameter_count_hf():
    import torch
    from transformers import MarianMTModel

    from mtcore.torch.hf import marian_config

    with torch.device("meta"):  # shapes without 76M random weights drawn: the count is all it asks
        model = MarianMTModel(marian_config(ModelConfig.preset("marian-en-hu")))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 76_149_760


@pytest.mark.torch
@pytest.mark.jax
@pytest.mark.hf
def test_load_hf_checkpoint_directory(backends, tmp_path):
    cfg = CONFIGS[1]
    tree = random_tree(cfg, 7)
    hf = hf_model(cfg, tree)
    hf.save_pretrained(tmp_path)
    batch = random_batch(cfg, 2, 7, 5, seed=7)
    want = hf_logits(hf, batch)
    for be in backends.values():
        got = be.forward(be.load_hf(tmp_path), ModelConfig.from_hf(tmp_path), batch)
        assert np.abs(got - want).max() < TOL
