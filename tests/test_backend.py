"""The backend seam: each framework optional, clear errors for bad arguments."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import mtcore
from mtcore import BackendUnavailable, MTCoreError
from mtcore.weights import init_tree


def test_unknown_backend_and_device():
    with pytest.raises(MTCoreError, match="unknown backend 'mxnet'; known backends: torch, jax, hf"):
        mtcore.backend("mxnet")


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_unknown_or_absent_device(backends, framework):
    with pytest.raises(MTCoreError, match="unknown device 'npu'"):
        mtcore.backend(framework, "npu")
    from mtcore.devices import missing

    for device in ("gpu", "tpu"):
        reason = missing(framework, device)
        if reason:  # absent hardware: a clear error naming it, and the same reason the benches skip with
            assert device.upper() in reason or "not supported" in reason
            with pytest.raises(MTCoreError, match=device):
                mtcore.backend(framework, device)


# A fresh interpreter in which one framework cannot be imported, as on a TPU VM without torch.
_WITHOUT = """
import sys
sys.modules[{blocked!r}] = None
import mtcore
print(mtcore.available({name!r}))
try:
    mtcore.backend({name!r})
except mtcore.BackendUnavailable as e:
    print("unavailable:", e)
other = mtcore.backend({other!r})
cfg = mtcore.ModelConfig.preset("tiny")
print("other works", other.forward(other.init_params(cfg), cfg, mtcore.random_batch(cfg, 1, 3, 3)).shape)
"""


@pytest.mark.parametrize("name, blocked, other", [("torch", "torch", "jax"), ("jax", "flax", "torch")])
def test_each_framework_is_optional(backends, name, blocked, other):
    code = _WITHOUT.format(name=name, blocked=blocked, other=other)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"pip install 'mtcore[{name}]'" in out.stdout
    assert f"unavailable: backend '{name}' unavailable" in out.stdout
    assert "other works (1, 3, 512)" in out.stdout


def test_importing_mtcore_imports_no_framework():
    code = "import sys, mtcore, mtcore.cli; print(sorted({'torch', 'jax', 'flax'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr


def test_backend_unavailable_is_an_import_error():
    assert issubclass(BackendUnavailable, ImportError)
    assert issubclass(MTCoreError, ValueError)


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_bad_input_to_the_public_api(backends, framework, tmp_path):
    be = backends[framework]
    cfg = mtcore.ModelConfig.preset("tiny")
    params = be.from_numpy(cfg, init_tree(cfg))
    batch = mtcore.random_batch(cfg, 2, 5, 4)
    bad_ids = mtcore.Batch(**{**batch.arrays(), "src_ids": np.full_like(batch.src_ids, 9999)})
    with pytest.raises(MTCoreError, match="id 9999, outside the vocabulary"):
        be.forward(params, cfg, bad_ids)
    with pytest.raises(MTCoreError, match="dtype int32, got float64"):
        be.forward(params, cfg, mtcore.Batch(**{**batch.arrays(), "tgt_in": batch.tgt_in.astype(float)}))
    with pytest.raises(MTCoreError, match="expected"):
        be.forward(params, cfg, mtcore.Batch(**{**batch.arrays(), "tgt_mask": batch.tgt_mask[:, :2]}))
    with pytest.raises(MTCoreError, match="id 9999"):
        be.make_train_step(cfg, mtcore.TrainConfig())(be.init_train_state(params, mtcore.TrainConfig()), bad_ids)
    with pytest.raises(MTCoreError, match="outside the vocabulary"):
        be.generate(params, cfg, np.array([[1, 2, 600]]))
    with pytest.raises(MTCoreError, match="2-D integer array"):
        be.generate(params, cfg, np.array([[1.5, 2.0]]))
    with pytest.raises(MTCoreError, match="not a Hugging Face checkpoint"):
        be.load_hf(tmp_path)
    with pytest.raises(MTCoreError, match="do not match the model config"):
        be.from_numpy(cfg, init_tree(cfg.replace(decoder_layers=3)))


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_weights_and_moments_read_out_are_snapshots(backends, framework):
    """What ``to_numpy`` and ``optimizer_to_numpy`` return is a copy, and a state built from it
    owns its tensors: training either the original or the state resumed from the copy leaves the
    other and the copy alone (``.numpy()`` of a CPU tensor is a view of the live parameter)."""
    be, cfg, tcfg = backends[framework], mtcore.ModelConfig.preset("tiny", dropout=0.0), mtcore.TrainConfig()
    batch = mtcore.random_batch(cfg, 2, 5, 4)
    step = be.make_train_step(cfg, tcfg)
    state, _ = step(be.init_train_state(be.from_numpy(cfg, init_tree(cfg)), tcfg), batch)
    weights, (count, moments) = be.to_numpy(be.state_params(state)), be.optimizer_to_numpy(state)
    kept = {k: v.copy() for k, v in weights.items()}, {k: v.copy() for k, v in moments.items()}
    resumed, _ = step(be.train_state_from_numpy(cfg, tcfg, weights, count, moments), batch)
    state, _ = step(state, batch)  # after its resumed copy's step, which must not have moved it
    assert all(np.array_equal(weights[k], kept[0][k]) for k in weights), "the weights read out changed"
    assert all(np.array_equal(moments[k], kept[1][k]) for k in moments), "the moments read out changed"
    again, stepped = be.to_numpy(be.state_params(state)), be.to_numpy(be.state_params(resumed))
    differ = [k for k in again if not np.array_equal(again[k], stepped[k])]
    assert not differ, f"the same step from the same state gave other weights: {differ[:3]}"


@pytest.mark.jax
def test_jax_sync_without_a_value_waits_for_all_queued_work(backends):
    """``step(); be.sync()`` must time the step, not its dispatch: JAX returns arrays before their
    computation ends, so ``sync()`` waits for every live array."""
    import jax
    import jax.numpy as jnp

    be = backends["jax"]
    chain = jax.jit(lambda x: jax.lax.fori_loop(0, 40, lambda _, a: jnp.tanh(a @ a), x))
    x = jnp.full((768, 768), 1e-3, jnp.float32)
    be.sync(chain(x))  # compiled and run once: what follows is dispatch and execution only
    out = chain(x)  # ~0.5 s of matmuls on one core, queued
    assert be.sync() is None
    assert out.is_ready()


@pytest.mark.torch
@pytest.mark.hf
def test_compile_modes_are_checked_before_anything_runs(backends):
    from mtcore import TrainConfig, random_batch
    from mtcore.torch.backend import compile_mode

    assert [compile_mode(c) for c in (False, None, "none", True, "default", "reduce-overhead")] == [
        False, False, False, True, True, "reduce-overhead"]
    cfg, be = mtcore.ModelConfig.preset("tiny"), backends["torch"]
    params = be.from_numpy(cfg, init_tree(cfg, 0))
    batch = random_batch(cfg, 2, 5, 1, seed=0)
    eager = be.generate(params, cfg, batch.src_ids, batch.src_mask, max_len=6)
    assert np.array_equal(be.generate(params, cfg, batch.src_ids, batch.src_mask, max_len=6, compile="none"), eager)
    with pytest.raises(MTCoreError, match="unknown torch.compile mode 'fast'"):
        be.generate(params, cfg, batch.src_ids, batch.src_mask, max_len=6, compile="fast")
    with pytest.raises(MTCoreError, match="unknown torch.compile mode 'fast'"):
        be.make_train_step(cfg, TrainConfig(), compile="fast")
    hf = mtcore.backend("hf")
    for call in (lambda: hf.make_train_step(cfg, TrainConfig(), compile=True),
                 lambda: hf.generate(hf.from_numpy(cfg, init_tree(cfg, 0)), cfg, batch.src_ids, compile="default")):
        with pytest.raises(MTCoreError, match="the HF baseline runs eager only"):
            call()


def test_no_framework_is_imported_outside_its_folder():
    """A framework is one folder and one registry line: no module of mtcore outside mtcore/torch/ and
    mtcore/jax/ imports torch, JAX, Flax, optax or those folders, even lazily inside a function;
    they are reached through mtcore.backend.framework / backend."""
    import ast
    from pathlib import Path

    root = Path(mtcore.__file__).parent
    banned = ("torch", "jax", "flax", "optax", "mtcore.torch", "mtcore.jax")
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).parts[0] in ("torch", "jax"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if isinstance(node, ast.ImportFrom) and node.module == "mtcore":
                names = [f"mtcore.{a.name}" for a in node.names]
            found += [f"{path.relative_to(root.parent)}:{node.lineno} {n}" for n in names
                      if any(n == b or n.startswith(b + ".") for b in banned)]
    assert found == [], found


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_the_compile_cache_is_on_or_off_for_each_framework_alike(framework, tmp_path):
    """The process set-up's compile cache (mtcore.perf.setup): on, a framework keeps compiled
    programs under MTCORE_CACHE_DIR/<framework> (torch: unless TORCHINDUCTOR_CACHE_DIR says
    otherwise); off, it compiles from scratch; fp32 matmuls in full precision either way. In a
    process of its own: the settings are global."""
    if mtcore.available(framework):
        pytest.skip(mtcore.available(framework))
    script = (
        "import json, sys\n"
        "from mtcore.perf.setup import set_up\n"
        f"done = [set_up(('{framework}',), own_process=False, compile_cache=on).frameworks['{framework}'] "
        "for on in (True, False)]\n"
        + ("import jax\ndone.append(jax.config.jax_enable_compilation_cache)\n" if framework == "jax" else
           "from torch._inductor import config\ndone.append(config.fx_graph_cache)\n")
        + "print(json.dumps(done))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env["MTCORE_CACHE_DIR"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    on, off, still_caching = json.loads(out.stdout.strip().splitlines()[-1])
    assert on == {"fp32_matmul_precision": "highest", "compile_cache": str(tmp_path / framework)}
    assert off == {"fp32_matmul_precision": "highest", "compile_cache": "off"} and still_caching is False
