import dataclasses
import json

import pytest

from mtcore import ModelConfig, MTCoreError, TrainConfig
from mtcore.config import PRESETS


def test_presets_exist_and_are_valid():
    assert {"tiny", "small", "base", "marian-en-hu"} <= set(PRESETS)
    for name in PRESETS:
        cfg = ModelConfig.preset(name)
        assert cfg.d_model % cfg.num_heads == 0


def test_marian_en_hu_is_opus_mt_en_hu():
    cfg = ModelConfig.preset("marian-en-hu")
    assert (cfg.d_model, cfg.encoder_layers, cfg.decoder_layers, cfg.num_heads, cfg.ffn_dim) == (512, 6, 6, 8, 2048)
    assert (cfg.vocab_size, cfg.activation, cfg.scale_embedding) == (62522, "swish", True)
    assert (cfg.pad_id, cfg.eos_id, cfg.decoder_start_id) == (62521, 0, 62521)
    assert cfg.num_params() == 76_149_760


def test_config_is_frozen_and_replace_validates():
    cfg = ModelConfig.preset("tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.d_model = 3
    assert cfg.replace(num_heads=8).num_heads == 8
    with pytest.raises(MTCoreError, match="num_heads=5 does not divide d_model=64"):
        cfg.replace(num_heads=5)


def test_preset_overrides():
    assert ModelConfig.preset("tiny", dropout=0.0).dropout == 0.0


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"num_heads": 3}, "does not divide"),
        ({"activation": "tanh"}, "activation 'tanh'"),
        ({"layer_stacking": "vmap"}, "layer_stacking"),
        ({"pad_id": 512}, "pad_id=512 is outside the vocabulary"),
        ({"encoder_layers": 0}, "encoder_layers must be an int >= 1"),
        ({"dropout": 1.0}, "dropout must be in"),
        ({"eos_id": 511}, "pad_id and eos_id"),
    ],
)
def test_invalid_configs_name_the_problem(changes, message):
    with pytest.raises(MTCoreError, match=message):
        ModelConfig.preset("tiny", **changes)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ValueError, match="unknown model preset 'huge'.*tiny, small, base, marian-en-hu"):
        ModelConfig.preset("huge")


def test_from_hf_dict_round_trip():
    for name in PRESETS:
        cfg = ModelConfig.preset(name)
        hf = dict(cfg.to_hf_dict(), model_type="marian")
        assert ModelConfig.from_hf(hf) == cfg


def test_from_hf_rejects_other_architectures(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bart", "d_model": 16}))
    with pytest.raises(MTCoreError, match="model_type is 'bart', expected 'marian'"):
        ModelConfig.from_hf(tmp_path)
    marian = dict(ModelConfig.preset("tiny").to_hf_dict(), model_type="marian")
    for change, message in [
        ({"share_encoder_decoder_embeddings": False}, "unshared"),
        ({"decoder_attention_heads": 2}, "heads differ"),
        ({"normalize_before": True}, "pre-LayerNorm"),
        ({"encoder_attention_heads": 3, "decoder_attention_heads": 3}, "does not divide"),
    ]:
        with pytest.raises(MTCoreError, match=message):
            ModelConfig.from_hf(dict(marian, **change))


def test_from_hf_not_a_checkpoint(tmp_path):
    with pytest.raises(MTCoreError, match="not a Hugging Face checkpoint"):
        ModelConfig.from_hf(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(MTCoreError, match="unreadable config.json"):
        ModelConfig.from_hf(tmp_path)


@pytest.mark.hf
def test_from_hf_marian_config_object():
    from transformers import MarianConfig

    cfg = ModelConfig.preset("small")
    assert ModelConfig.from_hf(MarianConfig(**cfg.to_hf_dict())) == cfg


def test_train_config_schedule_and_validation():
    t = TrainConfig(learning_rate=1e-3, warmup_steps=4)
    lrs = [t.lr_at(s) for s in range(8)]
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])  # linear warm-up
    assert lrs[7] == pytest.approx(1e-3 * (4 / 8) ** 0.5)  # then 1/sqrt(step)
    for bad, message in [({"precision": "fp8"}, "precision"), ({"warmup_steps": 0}, "warmup_steps"),
                         ({"learning_rate": -1.0}, "learning_rate"), ({"label_smoothing": 1.0}, "label_smoothing")]:
        with pytest.raises(MTCoreError, match=message):
            TrainConfig(**bad)


def test_readme_preset_table_is_true():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    rows = re.findall(r"^\| `([\w-]+)` \| (\d+) \| (\d+)\+(\d+) \| (\d+) \| (\d+) \| ([\d,]+) \| ([\d,]+) \|$", readme, re.M)
    assert {r[0] for r in rows} == set(PRESETS)
    for name, d, enc, dec, heads, ffn, vocab, params in rows:
        cfg = ModelConfig.preset(name)
        assert (cfg.d_model, cfg.encoder_layers, cfg.decoder_layers, cfg.num_heads, cfg.ffn_dim) == tuple(
            map(int, (d, enc, dec, heads, ffn))
        )
        assert (cfg.vocab_size, cfg.num_params()) == (int(vocab.replace(",", "")), int(params.replace(",", "")))
