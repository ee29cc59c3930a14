"""Data: parallel-text readers and a synthetic corpus, tokenizers, length-bucketed batches."""

from mtcore.data.batching import BUCKETS, Encoded, PlannedBatch, encode, plan_batches
from mtcore.data.corpus import (
    Corpus,
    Splits,
    load_corpus,
    read_hf_dataset,
    read_parallel,
    read_tsv,
    split,
    synthetic_corpus,
)
from mtcore.data.tokenizer import MarianTokenizer, SentencePieceTokenizer, load_tokenizer

__all__ = [
    "BUCKETS", "Corpus", "Encoded", "MarianTokenizer", "PlannedBatch", "SentencePieceTokenizer", "Splits", "encode",
    "load_corpus", "load_tokenizer", "plan_batches", "read_hf_dataset", "read_parallel", "read_tsv", "split",
    "synthetic_corpus",
]
