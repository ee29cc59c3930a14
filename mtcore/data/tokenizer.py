"""Subword tokenizers: a joint SentencePiece model trained on the training corpus and saved beside
the run, or a local Hugging Face Marian tokenizer directory (``source.spm``, ``target.spm``,
``vocab.json``) when the user brings a Marian checkpoint.

Both follow Marian's convention: every sequence ends in eos, pad doubles as the decoder start.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

from mtcore.errors import MTCoreError
from mtcore.files import write_bytes, write_json

MODEL_FILE = "spm.model"
INFO_FILE = "tokenizer.json"
# Marian's order for the first ids; pad is also the decoder start token.
EOS_ID, UNK_ID, PAD_ID = 0, 1, 2


class Tokenizer(Protocol):
    vocab_size: int
    pad_id: int
    eos_id: int
    unk_id: int

    def encode_source(self, texts: Sequence[str]) -> list[list[int]]: ...
    def encode_target(self, texts: Sequence[str]) -> list[list[int]]: ...
    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]: ...
    def save(self, directory: str | os.PathLike) -> None: ...


def _cut(ids: Sequence[int], eos_id: int, pad_id: int) -> list[int]:
    """Tokens before the first eos, pads dropped: what a decoded row says."""
    out = []
    for i in ids:
        i = int(i)
        if i == eos_id:
            break
        if i != pad_id:
            out.append(i)
    return out


class SentencePieceTokenizer:
    """One SentencePiece model for both languages (a joint vocabulary, as Marian shares its
    embeddings between encoder and decoder)."""

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.vocab_size = self.sp.get_piece_size()
        self.eos_id, self.unk_id, self.pad_id = self.sp.eos_id(), self.sp.unk_id(), self.sp.pad_id()

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, *, seed: int = 0) -> SentencePieceTokenizer:
        """A unigram model on ``texts``. ``vocab_size`` is an upper bound: a small corpus gets fewer
        pieces rather than an error. Byte fallback spells any unseen character in UTF-8 bytes, so
        every text round-trips; no normalisation, so what comes back is what went in."""
        import sentencepiece as spm

        texts = [t for t in texts if t]
        if not texts:
            raise MTCoreError("cannot train a tokenizer on an empty corpus")
        # 3 specials + 256 byte pieces + at least a few real pieces.
        if vocab_size < 300:
            raise MTCoreError(f"tokenizer vocab_size {vocab_size} is too small: byte fallback alone needs 259 ids")
        model = io.BytesIO()
        # One thread and a fixed seed: the same corpus gives the same model on every machine.
        spm.set_random_generator_seed(seed)
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type="unigram",
            hard_vocab_limit=False, byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
            remove_extra_whitespaces=False, split_digits=True,
            eos_id=EOS_ID, unk_id=UNK_ID, pad_id=PAD_ID, bos_id=-1,
            num_threads=1, minloglevel=2, input_sentence_size=2_000_000, shuffle_input_sentence=False,
        )
        return cls(model.getvalue())

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [ids + [self.eos_id] for ids in self.sp.encode(list(texts))]

    encode_source = _encode
    encode_target = _encode

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        return [self.sp.decode(_cut(row, self.eos_id, self.pad_id)) for row in ids]

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_bytes(directory / MODEL_FILE, self.model_proto)
        write_json(directory / INFO_FILE, {"kind": "sentencepiece", "vocab_size": self.vocab_size, "eos_id": self.eos_id,
                                           "pad_id": self.pad_id, "unk_id": self.unk_id})


class MarianTokenizer:
    """A Hugging Face Marian tokenizer directory (separate source and target SentencePiece models,
    one vocabulary), through ``transformers.MarianTokenizer``."""

    def __init__(self, directory: str | os.PathLike):
        try:
            from transformers import MarianTokenizer as HFMarianTokenizer
        except ImportError:
            raise MTCoreError("a Marian tokenizer directory needs transformers and sentencepiece") from None
        self.directory = Path(directory)
        try:
            self.tok = HFMarianTokenizer.from_pretrained(os.fspath(directory))
        except (OSError, ValueError, TypeError) as e:
            raise MTCoreError(f"{directory}: not a Marian tokenizer directory ({e})") from None
        self.vocab_size = len(self.tok)
        self.eos_id, self.unk_id, self.pad_id = self.tok.eos_token_id, self.tok.unk_token_id, self.tok.pad_token_id

    def encode_source(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tok(list(texts))["input_ids"]

    def encode_target(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tok(text_target=list(texts))["input_ids"]

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        return self.tok.batch_decode([_cut(row, self.eos_id, self.pad_id) for row in ids], skip_special_tokens=True)

    def save(self, directory: str | os.PathLike) -> None:
        self.tok.save_pretrained(os.fspath(directory))


def is_marian_dir(directory: str | os.PathLike) -> bool:
    d = Path(directory)
    return d.is_dir() and (d / "source.spm").is_file() and (d / "vocab.json").is_file()


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """What ``save`` wrote, or a Marian tokenizer directory."""
    d = Path(directory)
    if (d / MODEL_FILE).is_file():
        return SentencePieceTokenizer((d / MODEL_FILE).read_bytes())
    if is_marian_dir(d):
        return MarianTokenizer(d)
    raise MTCoreError(f"{d}: no tokenizer here (expected {MODEL_FILE}, or a Marian source.spm + vocab.json)")


def check_fits(tokenizer: Tokenizer, cfg) -> None:
    """A tokenizer and a model must agree on the vocabulary and the special ids."""
    problems = []
    if tokenizer.vocab_size > cfg.vocab_size:
        problems.append(f"vocab_size {tokenizer.vocab_size} > the model's {cfg.vocab_size}")
    for name in ("pad_id", "eos_id"):
        if getattr(tokenizer, name) != getattr(cfg, name):
            problems.append(f"{name} {getattr(tokenizer, name)} != the model's {getattr(cfg, name)}")
    if problems:
        raise MTCoreError("the tokenizer does not fit the model: " + "; ".join(problems))
