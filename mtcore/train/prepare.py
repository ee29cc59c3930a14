"""``prepare``: everything that must be identical between frameworks, done once: read and split
the corpus, train (or load) the tokenizer, encode, choose the initial weights."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtcore.backend import read_hf_checkpoint
from mtcore.config import PRESETS, ModelConfig
from mtcore.data.batching import Encoded, encode
from mtcore.data.corpus import Splits, load_corpus, split
from mtcore.data.tokenizer import SentencePieceTokenizer, check_fits, is_marian_dir, load_tokenizer
from mtcore.errors import MTCoreError
from mtcore.train.options import RunConfig, main_process
from mtcore.weights import init_tree


@dataclass
class Prepared:
    """Everything both frameworks share: the same data, tokens, batches and initial weights."""

    cfg: ModelConfig
    tokenizer: Any
    splits: Splits
    train: Encoded
    validation: Encoded
    test: Encoded
    initial: dict[str, np.ndarray]
    notes: list[str]
    max_len: int  # longest pair in tokens: the run's limit within the model's



# ---- preparation ---------------------------------------------------------------------------------
def prepare(rc: RunConfig, out: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None,
            before_write=None) -> Prepared:
    """Read and split the data, get a tokenizer (the run's saved one, the checkpoint's Marian one,
    or a new one trained on the training split), encode, and fix the initial weights.
    ``before_write`` is called once the data has been read, before the first file is written."""
    out = Path(out)
    notes = []
    corpus = load_corpus(rc.data, source_lang=rc.source_lang, target_lang=rc.target_lang, on_error=rc.on_error,
                         synthetic_size=rc.synthetic_size, seed=rc.seed)
    if corpus.skipped:
        notes.append(f"skipped {len(corpus.skipped)} pairs with an empty side (first: {corpus.skipped[0]})")
    splits = split(corpus, validation=rc.validation, test=rc.test, seed=rc.seed)

    hf_dir = None if rc.model in PRESETS else Path(rc.model)
    tokenizer_dir = tokenizer_dir or rc.tokenizer
    if tokenizer_dir is not None:
        tokenizer = load_tokenizer(tokenizer_dir)
    elif hf_dir is not None:
        if not is_marian_dir(hf_dir):
            raise MTCoreError(f"{hf_dir}: a checkpoint needs its own tokenizer (source.spm and vocab.json) beside it")
        tokenizer = load_tokenizer(hf_dir)
    else:
        # By default the tokenizer's vocabulary is the preset's (tiny 512, small 8000, ...); a small
        # corpus gets fewer pieces. The model's embedding follows the tokenizer.
        vocab = rc.vocab_size or PRESETS[rc.model].vocab_size
        tokenizer = SentencePieceTokenizer.train([*splits.train.source, *splits.train.target], vocab, seed=rc.seed)
    if before_write is not None:
        before_write()
    if main_process(rc):  # every process trains the same tokenizer (seeded); one saves it
        tokenizer.save(out / "tokenizer")

    if hf_dir is not None:
        cfg, initial = read_hf_checkpoint(hf_dir)
    else:
        cfg = ModelConfig.preset(rc.model, vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id,
                                 eos_id=tokenizer.eos_id, decoder_start_id=tokenizer.pad_id)
        initial = None
    if rc.dropout is not None:
        cfg = cfg.replace(dropout=rc.dropout)
    check_fits(tokenizer, cfg)
    max_len = min(rc.max_len, cfg.max_len)
    train = encode(tokenizer, splits.train.source, splits.train.target, max_len=max_len, too_long="drop")
    validation = encode(tokenizer, splits.validation.source, splits.validation.target, max_len=max_len,
                        too_long="truncate")
    test = encode(tokenizer, splits.test.source, splits.test.target, max_len=max_len, too_long="truncate")
    if train.dropped:
        notes.append(f"dropped {train.dropped} training pairs longer than {max_len} tokens")
    for name, data in (("validation", validation), ("test", test)):
        if data.truncated:
            notes.append(f"truncated {data.truncated} {name} pairs to {max_len} tokens")
    if initial is None:
        initial = init_tree(cfg, seed=rc.seed)
    return Prepared(cfg, tokenizer, splits, train, validation, test, initial, notes, max_len)


