"""Data: readers (and their errors), the synthetic corpus, splits, tokenizers, bucketed batches."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import mtcore
from mtcore.data import (
    SentencePieceTokenizer,
    encode,
    load_corpus,
    load_tokenizer,
    plan_batches,
    read_hf_dataset,
    read_parallel,
    read_tsv,
    split,
    synthetic_corpus,
)
from mtcore.data.batching import buckets_for
from mtcore.data.tokenizer import check_fits


def write(path, text: str | bytes):
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


# ---- readers -----------------------------------------------------------------------------------
def test_read_parallel_reads_aligned_lines(tmp_path):
    write(tmp_path / "c.en", "Hello.\nThe cat sleeps.\r\n")
    write(tmp_path / "c.hu", "Szia.\nA macska alszik.\n")
    c = load_corpus(tmp_path / "c")
    assert c.source == ("Hello.", "The cat sleeps.") and c.target == ("Szia.", "A macska alszik.")


def test_unequal_line_counts_name_both_files(tmp_path):
    write(tmp_path / "c.en", "a\nb\nc\n")
    write(tmp_path / "c.hu", "a\nb\n")
    with pytest.raises(mtcore.MTCoreError, match=r"c\.en has 3 lines but .*c\.hu has 2"):
        read_parallel(tmp_path / "c.en", tmp_path / "c.hu")


def test_empty_line_names_file_and_line_or_is_skipped_and_counted(tmp_path):
    write(tmp_path / "c.en", "one\ntwo\nthree\n")
    write(tmp_path / "c.hu", "egy\n\nhárom\n")
    with pytest.raises(mtcore.MTCoreError, match=r"c\.hu:2: empty target"):
        read_parallel(tmp_path / "c.en", tmp_path / "c.hu")
    c = read_parallel(tmp_path / "c.en", tmp_path / "c.hu", on_error="skip")
    assert c.source == ("one", "three") and c.target == ("egy", "három")
    assert len(c.skipped) == 1 and c.skipped[0].endswith("c.hu:2")


def test_bad_encoding_names_file_and_line(tmp_path):
    write(tmp_path / "c.en", "one\ntwo\n")
    write(tmp_path / "c.hu", b"egy\nk\xe9t\n")  # latin-1, not UTF-8
    with pytest.raises(mtcore.MTCoreError, match=r"c\.hu:2: not UTF-8"):
        read_parallel(tmp_path / "c.en", tmp_path / "c.hu")


def test_missing_files_and_unknown_specs_are_clear(tmp_path):
    write(tmp_path / "c.en", "one\n")
    with pytest.raises(mtcore.MTCoreError, match=r"c\.hu: no such file"):
        load_corpus(tmp_path / "c")
    with pytest.raises(mtcore.MTCoreError, match="not 'synthetic'"):
        load_corpus(tmp_path / "nothing")


def test_tsv_reader_and_its_errors(tmp_path):
    c = read_tsv(write(tmp_path / "p.tsv", "a cat\tegy macska\nthe dog\ta kutya\n"))
    assert c.target == ("egy macska", "a kutya")
    with pytest.raises(mtcore.MTCoreError, match=r"q\.tsv:2: expected 2 tab-separated fields .* found 1"):
        read_tsv(write(tmp_path / "q.tsv", "a\tb\nno tab here\n"))


def test_hf_dataset_from_a_local_directory(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"en": "a cat", "hu": "egy macska"}, {"en": "the dog", "hu": "a kutya"}]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"translation": rows})}).save_to_disk(tmp_path / "dd")
    c = load_corpus(tmp_path / "dd")
    assert c.source == ("a cat", "the dog") and c.target == ("egy macska", "a kutya")
    datasets.Dataset.from_dict({"en": ["x"], "de": ["y"]}).save_to_disk(tmp_path / "flat")
    with pytest.raises(mtcore.MTCoreError, match="expected a 'translation' column or 'en' and 'hu' columns"):
        read_hf_dataset(str(tmp_path / "flat"))
    with pytest.raises(mtcore.MTCoreError, match="no split 'validation'"):
        read_hf_dataset(str(tmp_path / "dd"), split="validation")


@pytest.mark.data
def test_shared_en_hu_files_are_aligned(data_dir):
    c = load_corpus(data_dir / "tatoeba")
    assert len(c) == 13037 and not c.skipped


# ---- synthetic corpus and splits -----------------------------------------------------------------
def test_synthetic_corpus_is_deterministic_and_follows_its_rules():
    a, b = synthetic_corpus(300, seed=1), synthetic_corpus(300, seed=1)
    assert a == b and len(set(a.source)) == 300
    assert synthetic_corpus(300, seed=2).source != a.source
    from mtcore.data.synthetic import ADVERBS, NOUNS, VERBS, VOWELS

    for en, hu in zip(a.source, a.target, strict=True):
        words, out = en.split(), hu.split()
        verb = next(w for w in words if w in VERBS)
        nouns = [w for w in words if w in NOUNS]  # subject, object
        # SOV: the verb follows the object, which is accusative; 'az' before a vowel.
        assert out.index(VERBS[verb]) == out.index(NOUNS[nouns[1]][1]) + 1, (en, hu)
        assert out.index(NOUNS[nouns[0]][0]) < out.index(NOUNS[nouns[1]][1]), (en, hu)
        for article, following in zip(out, out[1:], strict=False):
            if article in ("a", "az"):
                assert (article == "az") == (following[0] in VOWELS), (en, hu)
        assert (words[-1] in ADVERBS) == (out[-1] in ADVERBS.values())
        # English articles agree with the next word: "an old dog", "a yellow egg", never "a apple".
        for article, following in zip(words, words[1:], strict=False):
            if article in ("a", "an"):
                assert (article == "an") == (following[0] in "aeiou"), en
    assert any(" an " in f" {en} " for en in a.source) and any(" a " in f" {en} " for en in a.source)


def test_split_is_disjoint_seeded_and_complete():
    c = synthetic_corpus(200)
    s = split(c, validation=20, test=0.1, seed=3)
    assert (len(s.train), len(s.validation), len(s.test)) == (160, 20, 20)
    assert set(s.train.source) | set(s.validation.source) | set(s.test.source) == set(c.source)
    assert split(c, validation=20, test=0.1, seed=3) == s
    assert split(c, validation=20, test=0.1, seed=4).validation != s.validation
    with pytest.raises(mtcore.MTCoreError, match="cannot give"):
        split(c, validation=150, test=50)


# ---- tokenizers ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spm_tokenizer():
    c = synthetic_corpus(500)
    return SentencePieceTokenizer.train([*c.source, *c.target], 512)


# Text from the corpus' alphabet plus characters it never saw (byte fallback must spell them).
TEXT = st.text(alphabet=st.sampled_from(list("abcdefghijklmnopqrstuvwxyz áéíóöőúüű.,?!ÁÉ0123456789ßж€")),
               min_size=1, max_size=40)


@given(TEXT)
def test_sentencepiece_round_trips_any_text(spm_tokenizer, text):
    ids = spm_tokenizer.encode_source([text])[0]
    assert ids[-1] == spm_tokenizer.eos_id and spm_tokenizer.pad_id not in ids
    assert spm_tokenizer.decode([ids + [spm_tokenizer.pad_id] * 3]) == [text]


def test_sentencepiece_save_load_and_fit(spm_tokenizer, tmp_path):
    spm_tokenizer.save(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    texts = ["a kutya egy piros macskát lát", "the big dog sees a cat"]
    assert again.encode_target(texts) == spm_tokenizer.encode_target(texts)
    cfg = mtcore.ModelConfig.preset("tiny", vocab_size=spm_tokenizer.vocab_size, pad_id=2, decoder_start_id=2)
    check_fits(spm_tokenizer, cfg)
    with pytest.raises(mtcore.MTCoreError, match="pad_id 2 != the model's 511"):
        check_fits(spm_tokenizer, mtcore.ModelConfig.preset("tiny"))
    with pytest.raises(mtcore.MTCoreError, match="no tokenizer here"):
        load_tokenizer(tmp_path)


def marian_tokenizer_dir(spm_tokenizer, directory):
    """A Hugging Face Marian tokenizer directory built from a SentencePiece model trained here."""
    import json

    transformers = pytest.importorskip("transformers")
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("source.spm", "target.spm"):
        (directory / name).write_bytes(spm_tokenizer.model_proto)
    vocab = {spm_tokenizer.sp.id_to_piece(i): i for i in range(spm_tokenizer.vocab_size)}
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    tok = transformers.MarianTokenizer(str(directory / "source.spm"), str(directory / "target.spm"),
                                       str(directory / "vocab.json"), source_lang="en", target_lang="hu")
    tok.save_pretrained(str(directory))
    return directory


def test_marian_tokenizer_directory_loads_and_round_trips(spm_tokenizer, tmp_path):
    pytest.importorskip("transformers")
    tok = load_tokenizer(marian_tokenizer_dir(spm_tokenizer, tmp_path / "marian"))
    assert (tok.eos_id, tok.pad_id) == (spm_tokenizer.eos_id, spm_tokenizer.pad_id)
    texts = ["the big dog sees a red cat", "a kutya egy piros macskát lát"]
    ids = tok.encode_source(texts)
    assert all(row[-1] == tok.eos_id for row in ids)
    assert tok.decode(ids) == texts


# ---- batching ------------------------------------------------------------------------------------
def _encoded(n=300, max_len=32):
    c = synthetic_corpus(n)
    tok = SentencePieceTokenizer.train([*c.source, *c.target], 512)
    cfg = mtcore.ModelConfig.preset("tiny", vocab_size=tok.vocab_size, pad_id=tok.pad_id, decoder_start_id=tok.pad_id)
    return cfg, tok, encode(tok, c.source, c.target, max_len=max_len)


@pytest.fixture(scope="module")
def encoded():
    return _encoded()


@given(batch_size=st.sampled_from([1, 7, 32]), seed=st.integers(0, 3), epoch=st.integers(0, 2))
def test_bucketed_batches_cover_every_pair_once_in_few_shapes(encoded, batch_size, seed, epoch):
    cfg, _, data = encoded
    plan = plan_batches(cfg, data, batch_size, max_len=32, seed=seed, epoch=epoch)
    shapes = {p.batch.shape for p in plan}
    assert shapes <= {(batch_size, length, length) for length in buckets_for(32)}
    rows = np.concatenate([p.rows[p.rows >= 0] for p in plan])
    assert sorted(rows.tolist()) == list(range(len(data)))
    for p in plan:
        p.batch.validate(cfg)
        filler = p.rows < 0
        assert not p.batch.tgt_mask[filler].any(), "filler rows must not count in the loss"
        for r, row in zip(p.rows[~filler], np.flatnonzero(~filler), strict=True):
            n = len(data.target[r])
            assert p.batch.tgt_out[row, :n].tolist() == list(data.target[r])


def test_batches_are_identical_for_a_seed_and_differ_between_epochs(encoded):
    cfg, _, data = encoded
    a = plan_batches(cfg, data, 16, max_len=32, seed=5, epoch=1)
    b = plan_batches(cfg, data, 16, max_len=32, seed=5, epoch=1)
    c = plan_batches(cfg, data, 16, max_len=32, seed=5, epoch=2)
    assert all(np.array_equal(x.batch.src_ids, y.batch.src_ids) and np.array_equal(x.rows, y.rows)
               for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x.rows, y.rows) for x, y in zip(a, c, strict=False))


def test_too_long_pairs_are_dropped_or_truncated_and_counted():
    cfg, tok, _ = _encoded(50)
    long_text = "the big red dog sees a small green cat " * 4
    kept = encode(tok, ["a cat", long_text], ["egy macska", long_text], max_len=16, too_long="drop")
    assert (len(kept), kept.dropped) == (1, 1)
    cut = encode(tok, ["a cat", long_text], ["egy macska", long_text], max_len=16, too_long="truncate")
    assert (len(cut), cut.truncated) == (2, 1) and len(cut.source[1]) == 16 and cut.source[1][-1] == tok.eos_id
