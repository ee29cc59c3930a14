import numpy as np
import pytest

from mtcore import Batch, ModelConfig, MTCoreError, random_batch
from mtcore.batch import check_source

CFG = ModelConfig.preset("tiny")


def test_from_sequences_shifts_targets_and_pads():
    b = Batch.from_sequences(CFG, [[5, 6], [7]], [[8, 9, 10], [11]], src_len=4, tgt_len=5)
    assert b.shape == (2, 4, 5)
    assert b.src_ids[0].tolist() == [5, 6, 0, 511]  # eos appended, then pad
    assert b.src_mask[1].tolist() == [1, 1, 0, 0]
    assert b.tgt_out[0].tolist() == [8, 9, 10, 0, 511]
    assert b.tgt_in[0].tolist() == [511, 8, 9, 10, 511]  # start token, labels shifted right
    assert b.tgt_mask[0].tolist() == [1, 1, 1, 1, 0]
    assert b.num_tgt_tokens == 4 + 2
    assert all(a.dtype == np.int32 for a in b.arrays().values())


def test_random_batch_is_valid_and_seeded():
    a, b = random_batch(CFG, 4, 9, 7, seed=3), random_batch(CFG, 4, 9, 7, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a.arrays().values(), b.arrays().values(), strict=True))
    assert random_batch(CFG, 4, 9, 7, full=True).src_mask.all()


def _with(batch, **changes):
    return Batch(**{**batch.arrays(), **changes})


def test_bad_batches_raise_clear_errors():
    b = random_batch(CFG, 2, 5, 4)
    cases = [
        (_with(b, src_ids=b.src_ids.astype(np.float32)), "src_ids must have dtype int32, got float32"),
        (_with(b, src_ids=b.src_ids.astype(np.int64)), "dtype int32, got int64"),
        (_with(b, tgt_out=b.tgt_out[:, :3]), r"tgt_out has shape \(2, 3\), expected \(2, 4\)"),
        (_with(b, src_mask=b.src_mask[:1]), r"src_mask has shape \(1, 5\), expected \(2, 5\)"),
        (_with(b, src_ids=np.full_like(b.src_ids, 512)), "id 512, outside the vocabulary"),
        (_with(b, tgt_out=np.full_like(b.tgt_out, -1)), "id -1, outside the vocabulary"),
        (_with(b, src_mask=np.full_like(b.src_mask, 2)), "only 0 and 1"),
        (_with(b, src_mask=np.zeros_like(b.src_mask)), "row 0 has no real source token"),
        (_with(b, src_ids=b.src_ids[0]), "must be 2-D"),
        (_with(b, src_ids=b.src_ids.tolist()), "must be a numpy array"),
    ]
    for bad, message in cases:
        with pytest.raises(MTCoreError, match=message):
            bad.validate(CFG)


def test_too_long_for_the_model():
    with pytest.raises(MTCoreError, match="source length 129 exceeds the model's max_len 128"):
        random_batch(CFG, 1, 129, 4)


def test_check_source():
    ids = np.array([[5, 6, 0, 511]])
    src, mask = check_source(CFG, ids, None, 8, 1)
    assert mask.tolist() == [[1, 1, 1, 0]]
    with pytest.raises(MTCoreError, match="2-D integer array"):
        check_source(CFG, ids.astype(float), None, 8, 1)
    with pytest.raises(MTCoreError, match="max_len must be an int in"):
        check_source(CFG, ids, None, 1000, 1)
    with pytest.raises(MTCoreError, match="num_beams"):
        check_source(CFG, ids, None, 8, 0)
    with pytest.raises(MTCoreError, match="src_mask has shape"):
        check_source(CFG, ids, np.ones((1, 3), int), 8, 1)
