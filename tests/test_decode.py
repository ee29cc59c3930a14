"""Decoding: greedy output agrees token for token across mtcore-torch, mtcore-jax and Hugging Face;
beam search agrees across frameworks; JAX decodes in a while_loop, not an unrolled Python loop."""

import concurrent.futures
import threading

import jax
import numpy as np
import pytest
from helpers import CONFIGS, compile_counter, hf_model, random_tree
from hypothesis import given
from hypothesis import strategies as st

from mtcore import GenerateConfig, random_batch
from mtcore.jax import decode as jax_decode

pytestmark = [pytest.mark.torch, pytest.mark.jax]
MAX_LEN = 12


def _check_well_formed(cfg, out, max_len):
    assert out.dtype == np.int32 and out.shape[1] == max_len
    for row in out:
        assert cfg.pad_id not in row[: np.argmax(row == cfg.eos_id)] if cfg.eos_id in row else cfg.pad_id not in row
        if cfg.eos_id in row:  # only padding after the first eos
            assert (row[np.argmax(row == cfg.eos_id) + 1 :] == cfg.pad_id).all()


@pytest.mark.hf
@given(cfg=st.sampled_from(CONFIGS), seed=st.integers(0, 2**16))
def test_greedy_torch_jax_hf_agree(backends, cfg, seed):
    import torch

    tree = random_tree(cfg, seed)
    batch = random_batch(cfg, 3, 7, 1, seed=seed)
    outs = {
        name: be.generate(be.from_numpy(cfg, tree), cfg, batch.src_ids, batch.src_mask, max_len=MAX_LEN)
        for name, be in backends.items()
    }
    hf = hf_model(cfg, tree).generate(
        input_ids=torch.from_numpy(batch.src_ids).long(),
        attention_mask=torch.from_numpy(batch.src_mask).long(),
        num_beams=1, do_sample=False, max_new_tokens=MAX_LEN, bad_words_ids=[[cfg.pad_id]],
    )[:, 1:].numpy()  # drop the start token
    hf = np.pad(hf, ((0, 0), (0, MAX_LEN - hf.shape[1])), constant_values=cfg.pad_id)
    np.testing.assert_array_equal(outs["torch"], hf)
    np.testing.assert_array_equal(outs["jax"], hf)
    _check_well_formed(cfg, outs["jax"], MAX_LEN)


@given(cfg=st.sampled_from(CONFIGS), seed=st.integers(0, 2**16))
def test_beam_search_agrees_across_frameworks(backends, cfg, seed):
    tree = random_tree(cfg, seed)
    batch = random_batch(cfg, 2, 7, 1, seed=seed)
    outs = {
        name: be.generate(be.from_numpy(cfg, tree), cfg, batch.src_ids, batch.src_mask, max_len=MAX_LEN, num_beams=3)
        for name, be in backends.items()
    }
    np.testing.assert_array_equal(outs["torch"], outs["jax"])
    _check_well_formed(cfg, outs["torch"], MAX_LEN)


def _sequence_logprob(be, params, cfg, src_ids, src_mask, out):
    """Sum of log-probabilities the model gives each output row (teacher forcing)."""
    from mtcore import Batch

    tgt_in = np.concatenate([np.full((len(out), 1), cfg.decoder_start_id, np.int32), out[:, :-1]], 1)
    tgt_mask = (np.cumsum(out == cfg.eos_id, axis=1) - (out == cfg.eos_id) == 0).astype(np.int32)  # through eos
    batch = Batch(src_ids, src_mask, tgt_in, out, tgt_mask)
    logits = be.forward(params, cfg, batch).astype(np.float64)
    logits[..., cfg.pad_id] = -np.inf
    logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    picked = np.take_along_axis(logp, out[..., None], -1)[..., 0]
    return np.where(tgt_mask == 1, picked, 0.0).sum(-1)


def test_beam_finds_sequences_at_least_as_likely_as_greedy(jax_backend):
    cfg = CONFIGS[0]
    params = jax_backend.from_numpy(cfg, random_tree(cfg, 11))
    batch = random_batch(cfg, 4, 7, 1, seed=11)
    greedy = jax_backend.generate(params, cfg, batch.src_ids, batch.src_mask, max_len=MAX_LEN)
    beam = jax_backend.generate(params, cfg, batch.src_ids, batch.src_mask, max_len=MAX_LEN, num_beams=4, length_penalty=0.0)
    g = _sequence_logprob(jax_backend, params, cfg, batch.src_ids, batch.src_mask, greedy)
    b = _sequence_logprob(jax_backend, params, cfg, batch.src_ids, batch.src_mask, beam)
    # Without a length penalty beam search maximises the sum of log-probabilities; over the same
    # hypotheses greedy is one candidate among them, so beam may not score lower (up to fp noise).
    assert (b >= g - 1e-3).all(), (b, g)


def test_jax_decoding_is_a_while_loop_not_unrolled(jax_backend):
    cfg = CONFIGS[0]
    params = jax_backend.from_numpy(cfg, random_tree(cfg, 0))
    batch = random_batch(cfg, 2, 7, 1)
    sizes = {}
    for max_len in (4, 32):
        jaxpr = jax.make_jaxpr(lambda p, s, m, max_len=max_len: jax_decode.greedy(p, s, m, cfg=cfg, max_len=max_len))(
            params, batch.src_ids, batch.src_mask
        )
        text = str(jaxpr)
        assert "while" in text
        sizes[max_len] = len(text)
    # The program does not grow with the number of decoded tokens.
    assert abs(sizes[32] - sizes[4]) < 0.02 * sizes[4]
    beam = str(jax.make_jaxpr(lambda p, s, m: jax_decode.beam_search(p, s, m, cfg=cfg, max_len=32, num_beams=2))(
        params, batch.src_ids, batch.src_mask))
    assert "while" in beam


def test_generation_stops_at_eos(backends):
    cfg = CONFIGS[0]
    tree = random_tree(cfg, 1)
    # Make eos overwhelmingly likely: every row stops after one token.
    tree["final_logits_bias"][cfg.eos_id] = 1e4
    batch = random_batch(cfg, 2, 5, 1)
    for be in backends.values():
        for beams in (1, 3):
            out = be.generate(be.from_numpy(cfg, tree), cfg, batch.src_ids, max_len=6, num_beams=beams)
            assert out[:, 0].tolist() == [cfg.eos_id] * 2
            assert (out[:, 1:] == cfg.pad_id).all()


# (num_beams, length_penalty, early_stopping) of the checkpoints below: greedy, HF's default beam
# search, and its other two stopping rules with a penalty that favours long or short outputs.
SETTINGS = [(1, 1.0, False), (3, 1.0, False), (3, 2.0, "never"), (4, 0.5, True)]


@pytest.mark.hf
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: f"beams{s[0]}-lp{s[1]}-es{s[2]}")
@given(cfg=st.sampled_from(CONFIGS[:2]), seed=st.integers(0, 2**16), eos_bias=st.sampled_from([0.0, 4.0, 6.0]))
def test_generate_is_hf_generate_with_the_checkpoints_own_settings(backends, tmp_path_factory, settings, cfg, seed,
                                                                   eos_bias):
    """A saved random Marian checkpoint whose generation config sets the length limit, the beams,
    the length penalty and early stopping: mtcore, reading those settings from the directory, gives
    what ``MarianMTModel.generate`` gives with no arguments but the source. Random weights rarely
    say eos, so most rows run into the length limit (where eos is forced); ``eos_bias`` makes eos
    likely enough that hypotheses also finish early, among the candidates and in the finished set."""
    import torch
    from transformers import MarianMTModel

    num_beams, length_penalty, early_stopping = settings
    tree = random_tree(cfg, seed)
    tree["final_logits_bias"][cfg.eos_id] += eos_bias
    path = tmp_path_factory.mktemp("marian")
    model = hf_model(cfg, tree)
    model.generation_config.update(max_length=MAX_LEN + 1, num_beams=num_beams, length_penalty=length_penalty,
                                   early_stopping=early_stopping, bad_words_ids=[[cfg.pad_id]],
                                   forced_eos_token_id=cfg.eos_id, decoder_start_token_id=cfg.decoder_start_id)
    model.save_pretrained(path)
    batch = random_batch(cfg, 3, 7, 1, seed=seed)
    with torch.no_grad():
        hf = MarianMTModel.from_pretrained(path).eval().generate(
            input_ids=torch.from_numpy(batch.src_ids).long(), attention_mask=torch.from_numpy(batch.src_mask).long(),
        )[:, 1:].numpy()  # drop the start token
    hf = np.pad(hf, ((0, 0), (0, MAX_LEN - hf.shape[1])), constant_values=cfg.pad_id)
    gen = GenerateConfig.from_hf(path)
    assert gen == GenerateConfig(MAX_LEN, num_beams, length_penalty, early_stopping)
    for name, be in backends.items():
        out = be.generate(be.load_hf(path), cfg, batch.src_ids, batch.src_mask, **gen.kwargs())
        np.testing.assert_array_equal(out, hf, err_msg=f"{name} {settings}")
        _check_well_formed(cfg, out, MAX_LEN)
    # Rows that reach the limit end with the forced eos.
    assert all(row[-1] in (cfg.eos_id, cfg.pad_id) for row in hf)


def test_rows_that_reach_the_length_limit_end_with_eos(backends):
    cfg = CONFIGS[0]
    tree = random_tree(cfg, 2)
    tree["final_logits_bias"][cfg.eos_id] = -1e4  # eos never chosen freely: every row runs to the limit
    batch = random_batch(cfg, 2, 5, 1)
    for name, be in backends.items():
        for beams in (1, 3):
            out = be.generate(be.from_numpy(cfg, tree), cfg, batch.src_ids, max_len=6, num_beams=beams)
            assert (out[:, -1] == cfg.eos_id).all() and (out[:, :-1] != cfg.eos_id).all(), (name, beams, out)


@pytest.mark.parametrize("text, error", [
    ('{"do_sample": true}', "do_sample=True is not supported"),
    ('{"forced_eos_token_id": 5}', "forced_eos_token_id=5 is not supported"),
    ('{"num_beams": "many"}', "invalid literal"),
    ("{not json", "not a readable JSON file"),
])
def test_generation_settings_mtcore_cannot_follow_are_refused(tmp_path, text, error):
    from mtcore import MTCoreError

    cfg = CONFIGS[0]
    (tmp_path / "generation_config.json").write_text(text)
    with pytest.raises(MTCoreError, match=error):
        GenerateConfig.from_hf(tmp_path, cfg)


def _hf_with_marian_settings(cfg, tree):
    """HF's model of ``tree`` with a Marian checkpoint's generation settings (pad banned, eos forced)."""
    model = hf_model(cfg, tree)
    model.generation_config.update(bad_words_ids=[[cfg.pad_id]], forced_eos_token_id=cfg.eos_id)
    return model


def _hf_generate(model, cfg, batch, **kwargs) -> np.ndarray:
    """HF's ``generate`` output as mtcore's: ``(B, MAX_LEN)``, without the start token, pad after eos."""
    import torch

    with torch.no_grad():
        out = model.generate(input_ids=torch.from_numpy(batch.src_ids).long(),
                             attention_mask=torch.from_numpy(batch.src_mask).long(),
                             max_length=MAX_LEN + 1, **kwargs)[:, 1:].numpy()
    return np.pad(out, ((0, 0), (0, MAX_LEN - out.shape[1])), constant_values=cfg.pad_id)


@pytest.mark.hf
@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_beam_search_is_hfs_on_many_rows_that_finish_early(backends, framework):
    """HF's candidate and finished-set rules matter only where hypotheses end before the limit
    and compete: with eos made likely, 320 rows (one compiled shape), each equal to HF's."""

    cfg, be = CONFIGS[0], backends[framework]
    early = 0
    for seed in range(5):
        for eos_bias in (6.0, 8.0):
            tree = random_tree(cfg, seed)
            tree["final_logits_bias"][cfg.eos_id] += eos_bias
            batch = random_batch(cfg, 32, 7, 1, seed=seed)
            hf = _hf_generate(_hf_with_marian_settings(cfg, tree), cfg, batch, num_beams=3)
            out = be.generate(be.from_numpy(cfg, tree), cfg, batch.src_ids, batch.src_mask, max_len=MAX_LEN, num_beams=3)
            np.testing.assert_array_equal(out, hf, err_msg=f"seed {seed}, eos bias {eos_bias}")
            early += int((hf[:, :-1] == cfg.eos_id).any(1).sum())
    assert early >= 50, f"only {early} of 320 rows finished before the limit: the test lost its point"


# The compiled-decoding tests compile the same two decode graphs: on one worker, one after the
# other, the second finds them in inductor's cache instead of compiling them cold at the same time.
@pytest.mark.slow
@pytest.mark.hf
@pytest.mark.xdist_group("torch-decode-compile")
def test_compiled_torch_decoding_is_eager_decoding_and_compiles_once_per_shape(backends):
    """``generate(compile=True)``: every step after the first is one ``torch.compile`` program
    (what ``reduce-overhead`` turns into a CUDA graph on a GPU). Its greedy and beam output is the
    eager output and HF's, on checkpoints whose rows finish early and run into the length limit;
    and it compiles once per batch shape, whatever the position, the call or the model's weights."""
    cfg, be = CONFIGS[0], backends["torch"]
    ends = set()
    with compile_counter("torch") as compiles:
        for seed in range(2):
            tree = random_tree(cfg, seed)
            tree["final_logits_bias"][cfg.eos_id] += 6.0  # some rows end early, some at the limit
            batch = random_batch(cfg, 8, 7, 1, seed=seed)
            params = be.from_numpy(cfg, tree)
            model = _hf_with_marian_settings(cfg, tree)
            for beams in (1, 3):
                eager = be.generate(params, cfg, batch.src_ids, batch.src_mask, max_len=MAX_LEN, num_beams=beams)
                compiled = be.generate(params, cfg, batch.src_ids, batch.src_mask, max_len=MAX_LEN, num_beams=beams,
                                       compile=True)
                hf = _hf_generate(model, cfg, batch, num_beams=beams, do_sample=False)
                np.testing.assert_array_equal(compiled, eager, err_msg=f"seed {seed}, {beams} beams")
                np.testing.assert_array_equal(compiled, hf, err_msg=f"seed {seed}, {beams} beams")
                lengths = (compiled == cfg.eos_id).argmax(1)
                ends |= {"early" if n < MAX_LEN - 1 else "limit" for n in lengths}
        # Two batch shapes (8 rows greedy, 24 beam hypotheses), 11 positions, 2 checkpoints, 2 calls each.
        assert compiles() == 2
    assert ends == {"early", "limit"}, f"rows ended only {ends}: the checkpoints lost the test its point"


@pytest.mark.slow
@pytest.mark.xdist_group("torch-decode-compile")
def test_cuda_graphed_torch_decoding_keeps_its_cache_per_thread_and_shape(backends):
    """``compile="reduce-overhead"`` (on a CPU the graph is compiled, then run without CUDA graphs):
    the cache lives at the same addresses from call to call, whatever ran between, since a new
    address would make the graph record again; two threads decoding at once each have their own,
    as torch's CUDA graph trees are per thread (a shared one mixed their rows), and a finished
    thread's arrays are freed."""
    from mtcore.torch import decode

    cfg, be = CONFIGS[0], backends["torch"]
    decode.release()
    kept = []
    for seed in range(2):
        tree = random_tree(cfg, seed)
        batch = random_batch(cfg, 8, 7, 1, seed=seed)
        params = be.from_numpy(cfg, tree)
        for beams in (3, 1):  # alternating shapes
            eager = be.generate(params, cfg, batch.src_ids, batch.src_mask, max_len=MAX_LEN, num_beams=beams)
            graphed = be.generate(params, cfg, batch.src_ids, batch.src_mask, max_len=MAX_LEN, num_beams=beams,
                                  compile="reduce-overhead")
            np.testing.assert_array_equal(graphed, eager, err_msg=f"seed {seed}, {beams} beams, reduce-overhead")
        kept.append({shapes: dict(arrays) for shapes, arrays in decode._STATIC[threading.get_ident()].items()})
    assert len(kept[0]) == 2 and all(set(arrays) == {"k", "v", "ck", "cv"} for arrays in kept[0].values())
    assert all(kept[1][shapes][name] is a for shapes, arrays in kept[0].items() for name, a in arrays.items())

    decode.release()
    inputs = [(be.from_numpy(cfg, random_tree(cfg, seed)), random_batch(cfg, 8, 7, 1, seed=seed)) for seed in range(2)]
    want = [be.generate(p, cfg, b.src_ids, b.src_mask, max_len=MAX_LEN) for p, b in inputs]
    together = threading.Barrier(2, timeout=60)

    def decode_in_thread(params, batch):
        together.wait()  # two threads, decoding the same shapes at the same time
        return be.generate(params, cfg, batch.src_ids, batch.src_mask, max_len=MAX_LEN, compile="reduce-overhead")

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        got = [f.result(timeout=120) for f in [pool.submit(decode_in_thread, *pb) for pb in inputs]]
    for seed, (g, w) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_array_equal(g, w, err_msg=f"thread {seed}")
    assert len(decode._STATIC) == 2 and all(len(sets) == 1 for sets in decode._STATIC.values()), decode._STATIC.keys()
    # The pool's threads have finished: the next call (from this thread) frees their arrays.
    p, b = inputs[0]
    be.generate(p, cfg, b.src_ids, b.src_mask, max_len=MAX_LEN, compile="reduce-overhead")
    assert list(decode._STATIC) == [threading.get_ident()]
    decode.release()
