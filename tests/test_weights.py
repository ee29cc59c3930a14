import numpy as np
import pytest

from mtcore import ModelConfig, MTCoreError
from mtcore.backend import read_hf_checkpoint
from mtcore.weights import (
    check_tree,
    from_hf_state_dict,
    init_tree,
    load_safetensors,
    param_shapes,
    save_safetensors,
    sinusoidal_positions,
    to_hf_state_dict,
)

CFG = ModelConfig.preset("tiny")


def test_param_shapes_count_matches_config():
    for name in ("tiny", "marian-en-hu"):
        cfg = ModelConfig.preset(name)
        shapes = param_shapes(cfg)
        trainable = sum(int(np.prod(s)) for k, s in shapes.items() if k != "final_logits_bias")
        assert trainable == cfg.num_params()
    assert ModelConfig.preset("marian-en-hu").num_params() == 76_149_760


def test_hf_state_dict_round_trip():
    tree = init_tree(CFG, seed=1)
    back = from_hf_state_dict(CFG, to_hf_state_dict(CFG, tree))
    assert back.keys() == tree.keys()
    assert all(np.array_equal(back[k], tree[k]) for k in tree)


def test_check_tree_rejects_another_architecture():
    tree = init_tree(CFG)
    other = init_tree(CFG.replace(d_model=32))
    with pytest.raises(MTCoreError, match="has shape .* the config needs"):
        check_tree(CFG, other)
    with pytest.raises(MTCoreError, match="unexpected 1 .*encoder.layers.2.mlp.fc1.bias"):
        check_tree(CFG, dict(tree, **{"encoder.layers.2.mlp.fc1.bias": tree["encoder.layers.0.mlp.fc1.bias"]}))
    with pytest.raises(MTCoreError, match="missing"):
        check_tree(CFG, {k: v for k, v in tree.items() if "decoder" not in k})


def test_safetensors_round_trip(tmp_path):
    tree = init_tree(CFG, seed=2)
    path = tmp_path / "w.safetensors"
    save_safetensors(path, tree, {"preset": "tiny"})
    back = load_safetensors(path)
    assert all(np.array_equal(back[k], tree[k]) for k in tree)
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temporary left behind
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(MTCoreError, match="unreadable safetensors"):
        load_safetensors(tmp_path / "bad.safetensors")


def test_read_hf_checkpoint_errors(tmp_path):
    with pytest.raises(MTCoreError, match="not a directory"):
        read_hf_checkpoint(tmp_path / "nope")
    (tmp_path / "config.json").write_text('{"model_type": "t5"}')
    with pytest.raises(MTCoreError, match="model_type is 't5'"):
        read_hf_checkpoint(tmp_path)


@pytest.mark.hf
def test_positions_match_hf():
    from transformers.models.marian.modeling_marian import MarianSinusoidalPositionalEmbedding

    for n, d in [(16, 8), (32, 7), (512, 512)]:
        emb = MarianSinusoidalPositionalEmbedding(n, d)
        np.testing.assert_allclose(sinusoidal_positions(n, d), emb.create_weight().numpy(), atol=1e-6)


@pytest.mark.hf
def test_hf_checkpoint_dir_and_wrong_config(tmp_path):
    from helpers import hf_model

    tree = init_tree(CFG, seed=3)
    hf_model(CFG, tree).save_pretrained(tmp_path)
    cfg, back = read_hf_checkpoint(tmp_path)
    assert cfg == CFG
    assert all(np.array_equal(back[k], tree[k]) for k in tree)
    # Weights of another architecture under a config that promises this one.
    with pytest.raises(MTCoreError, match="the config needs"):
        read_hf_checkpoint(tmp_path, CFG.replace(ffn_dim=256))
    with pytest.raises(MTCoreError, match="no tensor 'model.encoder.layers.2"):
        read_hf_checkpoint(tmp_path, CFG.replace(encoder_layers=3))
