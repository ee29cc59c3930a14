"""The framework-neutral batch: padded int32 numpy arrays."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from mtcore.config import ModelConfig
from mtcore.errors import MTCoreError


@dataclass(frozen=True)
class Batch:
    """One padded batch. Masks are 1 on real tokens, 0 on padding.

    ``tgt_in`` is the decoder input (decoder start token, then the target shifted right) and
    ``tgt_out`` the labels it is trained to predict, position by position.
    """

    src_ids: np.ndarray  # (B, S)
    src_mask: np.ndarray  # (B, S)
    tgt_in: np.ndarray  # (B, T)
    tgt_out: np.ndarray  # (B, T)
    tgt_mask: np.ndarray  # (B, T)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(B, S, T)."""
        b, s = self.src_ids.shape
        return b, s, self.tgt_in.shape[1]

    @property
    def num_tgt_tokens(self) -> int:
        return int(self.tgt_mask.sum())

    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def validate(self, cfg: ModelConfig) -> Batch:
        """Check shapes, dtypes, id ranges and masks against ``cfg``; return self."""
        for name, a in self.arrays().items():
            if not isinstance(a, np.ndarray):
                raise MTCoreError(f"Batch.{name} must be a numpy array, got {type(a).__name__}")
            if a.dtype != np.int32:
                raise MTCoreError(f"Batch.{name} must have dtype int32, got {a.dtype}")
            if a.ndim != 2:
                raise MTCoreError(f"Batch.{name} must be 2-D (batch, length), got shape {a.shape}")
        b, s, t = self.shape
        for name, a in self.arrays().items():
            want = (b, s) if name.startswith("src") else (b, t)
            if a.shape != want:
                raise MTCoreError(f"Batch.{name} has shape {a.shape}, expected {want} to match the other arrays")
        if b == 0 or s == 0 or t == 0:
            raise MTCoreError(f"empty batch: (B, S, T) = {(b, s, t)}")
        for side, length in (("source", s), ("target", t)):
            if length > cfg.max_len:
                raise MTCoreError(f"{side} length {length} exceeds the model's max_len {cfg.max_len}")
        for name in ("src_ids", "tgt_in", "tgt_out"):
            a = getattr(self, name)
            lo, hi = int(a.min()), int(a.max())
            if lo < 0 or hi >= cfg.vocab_size:
                bad = lo if lo < 0 else hi
                raise MTCoreError(f"Batch.{name} holds id {bad}, outside the vocabulary [0, {cfg.vocab_size})")
        for name in ("src_mask", "tgt_mask"):
            a = getattr(self, name)
            if not np.isin(a, (0, 1)).all():
                raise MTCoreError(f"Batch.{name} must hold only 0 and 1")
        empty = np.flatnonzero(self.src_mask.sum(axis=1) == 0)
        if empty.size:
            raise MTCoreError(f"Batch.src_mask: row {int(empty[0])} has no real source token")
        return self

    @classmethod
    def from_sequences(
        cls,
        cfg: ModelConfig,
        sources: Sequence[Sequence[int]],
        targets: Sequence[Sequence[int]],
        src_len: int | None = None,
        tgt_len: int | None = None,
    ) -> Batch:
        """Pad token-id sequences (each ending in eos, or not: eos is appended when missing).

        ``src_len``/``tgt_len`` fix the padded shape; by default the longest sequence decides. A
        target of n tokens (eos included) becomes ``tgt_in = [start, y1..y(n-1)]``, ``tgt_out = y``.
        """
        if len(sources) != len(targets):
            raise MTCoreError(f"{len(sources)} sources but {len(targets)} targets")

        def with_eos(seq: Sequence[int]) -> list[int]:
            seq = [int(x) for x in seq]
            return seq if seq and seq[-1] == cfg.eos_id else seq + [cfg.eos_id]

        sources = [with_eos(x) for x in sources]
        targets = [with_eos(y) for y in targets]
        s = src_len or max(map(len, sources))
        t = tgt_len or max(map(len, targets))
        b = len(sources)
        src = np.full((b, s), cfg.pad_id, np.int32)
        tgt_in = np.full((b, t), cfg.pad_id, np.int32)
        tgt_out = np.full((b, t), cfg.pad_id, np.int32)
        src_mask = np.zeros((b, s), np.int32)
        tgt_mask = np.zeros((b, t), np.int32)
        for i, (x, y) in enumerate(zip(sources, targets, strict=True)):
            if len(x) > s or len(y) > t:
                raise MTCoreError(
                    f"sequence pair {i} has lengths ({len(x)}, {len(y)}), longer than the padded shape ({s}, {t})"
                )
            src[i, : len(x)] = x
            src_mask[i, : len(x)] = 1
            tgt_out[i, : len(y)] = y
            tgt_in[i, 0] = cfg.decoder_start_id
            tgt_in[i, 1 : len(y)] = y[:-1]
            tgt_mask[i, : len(y)] = 1
        return cls(src, src_mask, tgt_in, tgt_out, tgt_mask).validate(cfg)


def random_batch(
    cfg: ModelConfig,
    batch_size: int,
    src_len: int,
    tgt_len: int,
    seed: int = 0,
    full: bool = False,
) -> Batch:
    """A padded batch of random real tokens (never pad, eos or the start id) with random lengths.

    With ``full=True`` every row fills the whole shape, as a benchmark wants.
    """
    rng = np.random.default_rng(seed)
    ordinary = np.setdiff1d(np.arange(cfg.vocab_size), [cfg.pad_id, cfg.eos_id, cfg.decoder_start_id])

    def lengths(n: int) -> np.ndarray:
        return np.full(batch_size, n) if full else rng.integers(1, n + 1, batch_size)

    sources = [list(rng.choice(ordinary, n - 1)) for n in lengths(src_len)]
    targets = [list(rng.choice(ordinary, n - 1)) for n in lengths(tgt_len)]
    return Batch.from_sequences(cfg, sources, targets, src_len, tgt_len)


def check_source(
    cfg: ModelConfig, src_ids, src_mask, max_len: int, num_beams: int, early_stopping: bool | str = False
) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(src_ids, src_mask)`` int32 arrays for ``generate``; the mask defaults to
    ``src_ids != pad``."""
    src_ids = np.asarray(src_ids)
    if src_ids.ndim != 2 or not np.issubdtype(src_ids.dtype, np.integer):
        raise MTCoreError(f"src_ids must be a 2-D integer array (B, S), got {src_ids.dtype} array of shape {src_ids.shape}")
    src_mask = (src_ids != cfg.pad_id) if src_mask is None else np.asarray(src_mask)
    if src_mask.shape != src_ids.shape:
        raise MTCoreError(f"src_mask has shape {src_mask.shape}, expected {src_ids.shape} like src_ids")
    if not (np.issubdtype(src_mask.dtype, np.integer) or src_mask.dtype == bool):
        raise MTCoreError(f"src_mask must be an integer or bool array, got {src_mask.dtype}")
    if not (isinstance(max_len, int) and 1 <= max_len <= cfg.max_len):
        raise MTCoreError(f"max_len must be an int in [1, {cfg.max_len}], got {max_len!r}")
    if not (isinstance(num_beams, int) and num_beams >= 1):
        raise MTCoreError(f"num_beams must be an int >= 1, got {num_beams!r}")
    if early_stopping not in (True, False, "never"):
        raise MTCoreError(f"early_stopping must be True, False or 'never' (as in Hugging Face), got {early_stopping!r}")
    src_ids, src_mask = src_ids.astype(np.int32), src_mask.astype(np.int32)
    # Validate as a batch with a one-token dummy target.
    ids, mask = np.full((len(src_ids), 1), cfg.eos_id, np.int32), np.ones((len(src_ids), 1), np.int32)
    Batch(src_ids, src_mask, ids, ids, mask).validate(cfg)
    return src_ids, src_mask
