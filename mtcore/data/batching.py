"""Length-bucketed batches of a few fixed shapes, so neither framework recompiles per batch.

Every batch has shape ``(batch_size, L, L)`` for ``L`` in ``buckets``: a pair goes to the smallest
bucket holding both its sides, a bucket's last short batch is filled with copies of a real pair
whose labels are masked out (they add nothing to loss or accuracy), and the plan depends only on
the data, the batch size and the seed — the same numpy arrays for PyTorch and for JAX.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mtcore.batch import Batch
from mtcore.config import ModelConfig
from mtcore.errors import MTCoreError

BUCKETS = (16, 32, 64, 128)


@dataclass(frozen=True)
class PlannedBatch:
    batch: Batch
    rows: np.ndarray  # (B,) index of each row's pair in the encoded data; -1 for filler rows

    @property
    def num_tokens(self) -> int:
        """Real source and target tokens: what tokens/s counts."""
        return self.tokens_in(slice(None))

    def tokens_in(self, rows: slice) -> int:
        """Real tokens of the rows ``rows`` (one process's share of a global batch)."""
        real = self.rows[rows] >= 0
        return int(self.batch.src_mask[rows][real].sum() + self.batch.tgt_mask[rows][real].sum())


@dataclass(frozen=True)
class Encoded:
    """A corpus as token ids, eos included; pairs too long for the largest bucket are cut
    (``truncated``) or left out (``dropped``), and counted."""

    source: tuple[tuple[int, ...], ...]
    target: tuple[tuple[int, ...], ...]
    index: tuple[int, ...]  # each kept pair's index in the corpus
    truncated: int = 0
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.source)


def encode(tokenizer, sources: Sequence[str], targets: Sequence[str], *, max_len: int, too_long: str = "drop") -> Encoded:
    """``too_long="drop"`` for training (a cut target teaches a wrong translation), ``"truncate"``
    for evaluation (every sentence is scored)."""
    if too_long not in ("drop", "truncate"):
        raise MTCoreError(f"too_long must be 'drop' or 'truncate', got {too_long!r}")
    src_all, tgt_all = tokenizer.encode_source(sources), tokenizer.encode_target(targets)
    src, tgt, index, truncated, dropped = [], [], [], 0, 0
    for i, (x, y) in enumerate(zip(src_all, tgt_all, strict=True)):
        if len(x) > max_len or len(y) > max_len:
            if too_long == "drop":
                dropped += 1
                continue
            truncated += 1
            x = x if len(x) <= max_len else [*x[: max_len - 1], tokenizer.eos_id]
            y = y if len(y) <= max_len else [*y[: max_len - 1], tokenizer.eos_id]
        src.append(tuple(x))
        tgt.append(tuple(y))
        index.append(i)
    if not src:
        raise MTCoreError(f"no sentence pair fits in {max_len} tokens")
    return Encoded(tuple(src), tuple(tgt), tuple(index), truncated, dropped)


def buckets_for(max_len: int, buckets: Sequence[int] = BUCKETS) -> tuple[int, ...]:
    """The bucket lengths up to ``max_len``, which closes the list."""
    out = tuple(b for b in buckets if b < max_len)
    return (*out, max_len)


def plan_batches(cfg: ModelConfig, data: Encoded, batch_size: int, *, max_len: int, shuffle: bool = True,
                 seed: int = 0, epoch: int = 0, buckets: Sequence[int] = BUCKETS) -> list[PlannedBatch]:
    """One epoch of batches. With ``shuffle`` the order of pairs within buckets and of batches
    depends on ``(seed, epoch)`` alone, so a resumed run sees the batches it would have seen."""
    if batch_size < 1:
        raise MTCoreError(f"batch size must be positive, got {batch_size}")
    lengths = buckets_for(max_len, buckets)
    longest = np.array([max(len(x), len(y)) for x, y in zip(data.source, data.target, strict=True)])
    if longest.max() > max_len:
        raise MTCoreError(f"a pair of {longest.max()} tokens exceeds max_len {max_len}: encode() with this max_len first")
    which = np.searchsorted(lengths, longest)  # bucket of each pair: the first length >= its longest side
    rng = np.random.default_rng([seed, epoch])
    planned = []
    for b, length in enumerate(lengths):
        members = np.flatnonzero(which == b)
        if shuffle:
            members = rng.permutation(members)
        for start in range(0, len(members), batch_size):
            rows = members[start : start + batch_size]
            planned.append(_make(cfg, data, rows, batch_size, length))
    if shuffle:
        planned = [planned[i] for i in rng.permutation(len(planned))]
    return planned


def _make(cfg: ModelConfig, data: Encoded, rows: np.ndarray, batch_size: int, length: int) -> PlannedBatch:
    filler = batch_size - len(rows)
    picks = np.concatenate([rows, np.full(filler, rows[0])])
    batch = Batch.from_sequences(cfg, [data.source[i] for i in picks], [data.target[i] for i in picks], length, length)
    if filler:
        tgt_mask = batch.tgt_mask.copy()
        tgt_mask[len(rows):] = 0  # (filler, L): no label of a filler row counts
        batch = Batch(batch.src_ids, batch.src_mask, batch.tgt_in, batch.tgt_out, tgt_mask)
    return PlannedBatch(batch, np.concatenate([rows, np.full(filler, -1)]).astype(np.int64))
