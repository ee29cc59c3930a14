"""Model and training configuration shared by both frameworks.

One frozen dataclass describes the network; PyTorch and JAX build the same model from it. Variants
are derived with ``dataclasses.replace`` rather than mode flags in the model code.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import Any

from mtcore.errors import MTCoreError

ACTIVATIONS = ("swish", "relu", "gelu")
LAYER_STACKINGS = ("scan", "loop")
PRECISIONS = ("fp32", "bf16")
# torch.compile's modes, "none" (eager) and "default" as mtcore spells them: --compile's choices and
# what the torch backend takes (JAX always compiles).
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class ModelConfig:
    """An encoder-decoder Transformer with Marian's layout.

    Post-LayerNorm blocks, static sinusoidal positions (sin in the first half of the features, cos
    in the second, as Marian does), one embedding matrix shared by encoder input, decoder input and
    output projection, and a non-trainable ``final_logits_bias``.
    """

    vocab_size: int = 62522
    d_model: int = 512
    encoder_layers: int = 6
    decoder_layers: int = 6
    num_heads: int = 8
    ffn_dim: int = 2048
    activation: str = "swish"
    # Longest sequence the position table covers, on either side.
    max_len: int = 512
    dropout: float = 0.1
    activation_dropout: float = 0.0
    # Marian multiplies token embeddings by sqrt(d_model) before adding positions.
    scale_embedding: bool = True
    # Marian's convention: eos is 0, pad is the last id and doubles as the decoder start token.
    pad_id: int = 62521
    eos_id: int = 0
    decoder_start_id: int = 62521
    # JAX only: "scan" compiles one layer body whatever the depth; "loop" unrolls a Python loop
    # (kept to measure what scanning saves). PyTorch ignores it.
    layer_stacking: str = "scan"

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise MTCoreError(f"invalid ModelConfig: {what}")

        for name in ("vocab_size", "d_model", "num_heads", "ffn_dim", "max_len"):
            value = getattr(self, name)
            need(isinstance(value, int) and value > 0, f"{name} must be a positive int, got {value!r}")
        for name in ("encoder_layers", "decoder_layers"):
            value = getattr(self, name)
            need(isinstance(value, int) and value >= 1, f"{name} must be an int >= 1, got {value!r}")
        need(
            self.d_model % self.num_heads == 0,
            f"num_heads={self.num_heads} does not divide d_model={self.d_model}",
        )
        need(self.activation in ACTIVATIONS, f"activation {self.activation!r} not in {ACTIVATIONS}")
        need(
            self.layer_stacking in LAYER_STACKINGS,
            f"layer_stacking {self.layer_stacking!r} not in {LAYER_STACKINGS}",
        )
        for name in ("dropout", "activation_dropout"):
            value = getattr(self, name)
            need(0.0 <= value < 1.0, f"{name} must be in [0, 1), got {value!r}")
        for name in ("pad_id", "eos_id", "decoder_start_id"):
            value = getattr(self, name)
            need(
                isinstance(value, int) and 0 <= value < self.vocab_size,
                f"{name}={value!r} is outside the vocabulary [0, {self.vocab_size})",
            )
        need(self.pad_id != self.eos_id, f"pad_id and eos_id are both {self.pad_id}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named configuration (``tiny``, ``small``, ``base``, ``marian-en-hu``), optionally overridden."""
        if name not in PRESETS:
            raise MTCoreError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    @classmethod
    def of(cls, model: str) -> ModelConfig:
        """What ``--model`` names: a preset, or else a local Hugging Face checkpoint directory
        (relative or absolute), decided the same way everywhere (``mtcore train``, ``compare``,
        ``params``)."""
        if model in PRESETS:
            return cls.preset(model)
        if is_checkpoint_dir(model):
            return cls.from_hf(model)
        return cls.preset(model)  # the unknown-preset error, naming the presets

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Trainable parameters, counted from the architecture (the static positions and
        ``final_logits_bias`` are buffers, as in Hugging Face)."""
        d, f = self.d_model, self.ffn_dim
        attention = 4 * (d * d + d)
        mlp = d * f + f + f * d + d
        norm = 2 * d
        encoder_layer = attention + mlp + 2 * norm
        decoder_layer = 2 * attention + mlp + 3 * norm
        return (
            self.vocab_size * d
            + self.encoder_layers * encoder_layer
            + self.decoder_layers * decoder_layer
        )

    # ---- Hugging Face Marian -------------------------------------------------------------------
    @classmethod
    def from_hf(cls, path_or_config: Any, **overrides: Any) -> ModelConfig:
        """The config of a local Hugging Face Marian checkpoint directory, ``config.json`` file,
        ``MarianConfig`` or plain dict. Anything mtcore cannot reproduce exactly raises."""
        raw = _read_hf_config(path_or_config)
        where = raw.pop("_source", "the given config")

        def get(key: str, default: Any = None) -> Any:
            return raw.get(key, default)

        def need(ok: bool, what: str) -> None:
            if not ok:
                raise MTCoreError(f"{where}: {what}")

        need(get("model_type") == "marian", f"model_type is {get('model_type')!r}, expected 'marian'")
        need(get("share_encoder_decoder_embeddings", True), "unshared encoder/decoder embeddings are not supported")
        need(get("tie_word_embeddings", True), "an output layer untied from the embeddings is not supported")
        need(get("static_position_embeddings", True), "learned position embeddings are not supported")
        need(not get("normalize_before", False), "pre-LayerNorm Marian variants are not supported")
        need(not get("normalize_embedding", False), "an embedding LayerNorm is not supported")
        need(not get("add_final_layer_norm", False), "a final LayerNorm is not supported")
        heads = (get("encoder_attention_heads"), get("decoder_attention_heads"))
        need(heads[0] == heads[1], f"encoder/decoder heads differ {heads}")
        ffn = (get("encoder_ffn_dim"), get("decoder_ffn_dim"))
        need(ffn[0] == ffn[1], f"encoder/decoder FFN sizes differ {ffn}")
        vocab = get("vocab_size")
        decoder_vocab = get("decoder_vocab_size") or vocab
        need(decoder_vocab == vocab, f"decoder_vocab_size {decoder_vocab} differs from vocab_size {vocab}")
        activation = get("activation_function", "gelu")
        activation = {"silu": "swish"}.get(activation, activation)
        eos = get("eos_token_id", 0)
        if isinstance(eos, list):
            need(len(eos) == 1, f"several eos ids {eos} are not supported")
            eos = eos[0]
        fields = dict(
            vocab_size=vocab,
            d_model=get("d_model"),
            encoder_layers=get("encoder_layers"),
            decoder_layers=get("decoder_layers"),
            num_heads=heads[0],
            ffn_dim=ffn[0],
            activation=activation,
            max_len=get("max_position_embeddings"),
            dropout=float(get("dropout", 0.1)),
            activation_dropout=float(get("activation_dropout", 0.0)),
            scale_embedding=bool(get("scale_embedding", False)),
            pad_id=get("pad_token_id"),
            eos_id=eos,
            decoder_start_id=get("decoder_start_token_id", get("pad_token_id")),
        )
        fields.update(overrides)
        try:
            return cls(**fields)
        except MTCoreError as e:
            raise MTCoreError(f"{where}: {e}") from None
        except TypeError as e:
            raise MTCoreError(f"{where}: incomplete Marian config ({e})") from None

    def to_hf_dict(self) -> dict[str, Any]:
        return dict(
            vocab_size=self.vocab_size,
            decoder_vocab_size=self.vocab_size,
            d_model=self.d_model,
            encoder_layers=self.encoder_layers,
            decoder_layers=self.decoder_layers,
            encoder_attention_heads=self.num_heads,
            decoder_attention_heads=self.num_heads,
            encoder_ffn_dim=self.ffn_dim,
            decoder_ffn_dim=self.ffn_dim,
            activation_function=self.activation,
            max_position_embeddings=self.max_len,
            dropout=self.dropout,
            attention_dropout=0.0,
            activation_dropout=self.activation_dropout,
            scale_embedding=self.scale_embedding,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_id,
            decoder_start_token_id=self.decoder_start_id,
            forced_eos_token_id=self.eos_id,
            share_encoder_decoder_embeddings=True,
            tie_word_embeddings=True,
        )


def _read_hf_config(path_or_config: Any) -> dict[str, Any]:
    if isinstance(path_or_config, dict):
        return dict(path_or_config)
    if hasattr(path_or_config, "to_dict"):
        raw = path_or_config.to_dict()
        raw["_source"] = type(path_or_config).__name__
        return raw
    path = os.fspath(path_or_config)
    file = os.path.join(path, "config.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise MTCoreError(f"{path}: not a Hugging Face checkpoint (no config.json)")
    try:
        with open(file, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MTCoreError(f"{file}: unreadable config.json ({e})") from None
    if not isinstance(raw, dict):
        raise MTCoreError(f"{file}: config.json is not a JSON object")
    raw["_source"] = path
    return raw


# fmt: off
PRESETS: dict[str, ModelConfig] = {
    # Seconds to compile and step on a laptop CPU: CI and property tests.
    "tiny": ModelConfig(vocab_size=512, d_model=64, encoder_layers=2, decoder_layers=2, num_heads=4,
                        ffn_dim=128, max_len=128, pad_id=511, decoder_start_id=511),
    "small": ModelConfig(vocab_size=8000, d_model=256, encoder_layers=3, decoder_layers=3, num_heads=4,
                         ffn_dim=1024, max_len=256, pad_id=7999, decoder_start_id=7999),
    # Vaswani et al. transformer-base, with a 32k joint vocabulary.
    "base": ModelConfig(vocab_size=32000, d_model=512, encoder_layers=6, decoder_layers=6, num_heads=8,
                        ffn_dim=2048, activation="relu", max_len=512, pad_id=31999, decoder_start_id=31999),
    # Helsinki-NLP/opus-mt-en-hu: 76,149,760 trainable parameters.
    "marian-en-hu": ModelConfig(),
}
# fmt: on


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings, identical in meaning for both frameworks.

    The learning rate warms up linearly for ``warmup_steps`` and then decays with the inverse square
    root of the step, as in "Attention Is All You Need" and Marian.
    """

    learning_rate: float = 1e-3
    warmup_steps: int = 100
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-9
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    # Global-norm gradient clipping; 0 turns it off.
    clip_norm: float = 1.0
    precision: str = "fp32"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise MTCoreError(f"invalid TrainConfig: precision {self.precision!r} not in {PRECISIONS}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise MTCoreError(f"invalid TrainConfig: learning_rate must be > 0, got {self.learning_rate!r}")
        if not (isinstance(self.warmup_steps, int) and self.warmup_steps >= 1):
            raise MTCoreError(f"invalid TrainConfig: warmup_steps must be an int >= 1, got {self.warmup_steps!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise MTCoreError(f"invalid TrainConfig: label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if self.clip_norm < 0:
            raise MTCoreError(f"invalid TrainConfig: clip_norm must be >= 0, got {self.clip_norm!r}")

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def lr_at(self, step: int) -> float:
        """Learning rate of the update that follows ``step`` completed updates."""
        n = step + 1
        return self.learning_rate * min(n / self.warmup_steps, math.sqrt(self.warmup_steps / n))


@dataclass(frozen=True)
class GenerateConfig:
    """``generate``'s settings, as a Hugging Face checkpoint's generation config gives them. mtcore
    always decodes as a Marian checkpoint asks (pad never generated, eos forced at the length
    limit); a checkpoint that asks for anything else is refused rather than decoded differently."""

    max_len: int = 64  # output positions, eos included: HF's max_length less the decoder start token
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``backend.generate``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_hf(cls, path: str | os.PathLike, cfg: ModelConfig | None = None) -> GenerateConfig:
        """Read ``generation_config.json`` (else the generation keys of ``config.json``) in a local
        checkpoint directory; ``cfg`` (default: ``ModelConfig.from_hf(path)``) checks the token ids."""
        cfg = cfg or ModelConfig.from_hf(path)
        raw: dict[str, Any] = {}
        for name in ("config.json", "generation_config.json"):  # the second wins, as in transformers
            file = os.path.join(os.fspath(path), name)
            if os.path.exists(file):
                try:
                    with open(file) as f:
                        raw.update(json.load(f))
                except (OSError, ValueError) as e:
                    raise MTCoreError(f"{file}: not a readable JSON file ({e})") from None
        where = os.path.join(os.fspath(path), "generation_config.json")
        unsupported = {
            "do_sample": (False, None), "num_beam_groups": (1, None), "no_repeat_ngram_size": (0, None),
            "repetition_penalty": (1.0, None), "min_length": (0, None), "num_return_sequences": (1, None),
            "forced_eos_token_id": (cfg.eos_id, [cfg.eos_id], None),
            "bad_words_ids": ([[cfg.pad_id]], None), "forced_bos_token_id": (None,),
            "renormalize_logits": (False, None), "diversity_penalty": (0.0, None),
        }
        for key, allowed in unsupported.items():
            if raw.get(key) not in allowed:
                raise MTCoreError(f"{where}: {key}={raw[key]!r} is not supported (mtcore decodes as Marian does: "
                                  f"{key}={allowed[0]!r})")
        max_length = raw.get("max_length", cls.max_len + 1)
        if "max_new_tokens" in raw and raw["max_new_tokens"] is not None:
            max_length = raw["max_new_tokens"] + 1
        try:
            return cls(max_len=min(int(max_length) - 1, cfg.max_len), num_beams=int(raw.get("num_beams") or 1),
                       length_penalty=float(raw.get("length_penalty", 1.0)),
                       early_stopping=raw.get("early_stopping", False))
        except (TypeError, ValueError) as e:
            raise MTCoreError(f"{where}: {e}") from None


def is_checkpoint_dir(model: str) -> bool:
    """Whether ``--model`` names a checkpoint directory rather than a preset: any existing
    directory that is not a preset's name."""
    import os

    return model not in PRESETS and os.path.isdir(model)
