"""Data parallel training is the same training: N devices on a global batch make the update one
device makes on that batch, in both frameworks, in one process and across processes and "nodes"
(all on this CPU: JAX host devices, gloo processes on 127.0.0.1)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dist_worker import job_file
from helpers import PARALLEL_CFG, train_steps, uneven_batches

from mtcore import MTCoreError, TrainConfig, backend
from mtcore.backend import framework
from mtcore.costs import predicted_bytes, predicted_traffic
from mtcore.parallel import MeshShape, World, global_batch_size

HERE = Path(__file__).parent
TCFG = TrainConfig(warmup_steps=1, eps=1e-6)  # see test_train: eps=1e-9 turns rounding noise into lr-sized steps
TOLERANCE = 1e-5


def test_local_rows_count_what_a_process_trains_on():
    from mtcore.parallel import local_rows

    one = MeshShape.parse
    assert local_rows(World(4, 4, 1), one("fsdp:2,tensor:2"), 32) == 16  # a torch rank of a 2-D mesh
    assert local_rows(World(2, 2, 1), one("tensor:2"), 32) == 32  # the group shares its rows
    assert local_rows(World(2, 2, 1), one("fsdp:2"), 32) == 16
    assert local_rows(World(4, 1, 0), one("data:2,tensor:2"), 32) == 32  # one JAX process, every device
    assert local_rows(World(4, 2, 1), one("data:2,tensor:2"), 32) == 16  # two JAX processes: a group each
    assert local_rows(World(8, 2, 0), one("fsdp:2,tensor:4"), 32) == 16


def test_world_splits_rows_by_process():
    world = World(devices=4, processes=2, process=1)
    assert world.local_devices == 2 and not world.main
    assert world.rows(8) == slice(4, 8)
    with pytest.raises(MTCoreError, match="cannot be split evenly over 4 devices"):
        world.rows(6)
    with pytest.raises(MTCoreError, match="3 device"):
        World(devices=3, processes=2)
    assert global_batch_size(2, 32, None) == 64
    assert global_batch_size(2, 32, 48) == 48
    with pytest.raises(MTCoreError, match="multiple of 4"):
        global_batch_size(4, 32, 50)


@pytest.fixture(scope="module")
def reference():
    """One device (JAX) on the whole global batches: the losses and weights everyone must match."""
    pytest.importorskip("jax")
    return train_steps(backend("jax"), PARALLEL_CFG, TCFG, uneven_batches(PARALLEL_CFG))


def assert_same_training(got, want):
    losses, tree = got
    np.testing.assert_allclose(losses, want[0], rtol=1e-5)
    worst = max(float(np.abs(tree[k] - want[1][k]).max()) for k in want[1])
    assert worst < TOLERANCE, f"weights differ by {worst:.2e} after {len(losses)} steps"
    moved = max(float(np.abs(tree[k] - init).max()) for k, init in _initial().items())
    assert moved > 10 * TOLERANCE  # it trained: the comparison is not of untouched weights


def saved_training(path) -> tuple[list[float], dict[str, np.ndarray]]:
    """What tests/dist_worker.py saved: step losses and trained weights."""
    got = np.load(path)
    return list(got["losses"]), {k: got[k] for k in got.files if k != "losses"}


def _initial():
    from mtcore.weights import init_tree

    return init_tree(PARALLEL_CFG, 0)


@pytest.mark.jax
@pytest.mark.parametrize("devices", [2, 4])
def test_jax_devices_in_one_process_train_as_one(reference, devices):
    assert_same_training(train_steps(backend("jax", "cpu", devices=devices), PARALLEL_CFG, TCFG,
                                     uneven_batches(PARALLEL_CFG)), reference)


@pytest.mark.slow
@pytest.mark.jax
def test_jax_dropout_masks_do_not_depend_on_the_split():
    cfg = PARALLEL_CFG.replace(dropout=0.3)
    batches = uneven_batches(cfg)
    one = train_steps(backend("jax"), cfg, TCFG, batches)
    four = train_steps(backend("jax", "cpu", devices=4), cfg, TCFG, batches)
    assert_same_training(four, one)


@pytest.mark.jax
def test_jax_devices_beyond_what_it_sees_is_one_line():
    with pytest.raises(MTCoreError, match=r"--devices 64: jax sees 4 cpu device\(s\)"):
        backend("jax", "cpu", devices=64)


@pytest.mark.torch
def test_torch_several_devices_need_torchrun():
    with pytest.raises(MTCoreError, match="torchrun --nproc-per-node 2"):
        backend("torch", "cpu", devices=2)


# ---- device meshes: data, fsdp, tensor ----------------------------------------------------------
# Tensor parallelism sums partial products in another order; measured differences stay far below
# (docs/findings/2026-12-02-mesh-parity.md): as strict as data parallelism.
MESH_TOLERANCE = 1e-5


def test_a_mesh_is_written_axis_colon_size():
    mesh = MeshShape.parse("fsdp:2,tensor:2")
    assert (mesh.data, mesh.fsdp, mesh.tensor, mesh.devices, mesh.batch_shards) == (1, 2, 2, 4, 2)
    assert str(MeshShape.parse("tensor:2,data:2")) == "data:2,tensor:2" and str(MeshShape.parse("data:1")) == "data:1"
    assert MeshShape.data_parallel(3) == MeshShape.parse("data:3") and not MeshShape.parse("data:4").sharded
    for bad, why in [("wide:2", "unknown axis 'wide'; the axes are data, fsdp, tensor"), ("data:0", "at least 1, got 0"),
                     ("fsdp:2,fsdp:2", "axis fsdp is given twice"), ("fsdp", "expected AXIS:N"),
                     ("tensor:two", "must be a whole number")]:
        with pytest.raises(MTCoreError, match=why):
            MeshShape.parse(bad)


def test_a_mesh_axis_must_divide_what_it_splits():
    from mtcore import ModelConfig

    tiny = ModelConfig.preset("tiny")  # 4 heads, 128 FFN units, d_model 64
    with pytest.raises(MTCoreError, match=r"tensor:3 does not divide num_heads=4 \(the model's attention heads"):
        MeshShape.parse("tensor:3").check_model(tiny)
    with pytest.raises(MTCoreError, match="fsdp:3 does not divide d_model=64"):
        MeshShape.parse("fsdp:3").check_model(tiny)
    # Marian's 62,522-word vocabulary does not divide 4, but the tied embedding is kept whole along
    # tensor (docs/parallelism.md): heads (8) and FFN units (2048) split.
    MeshShape.parse("tensor:4,fsdp:2").check_model(ModelConfig.preset("marian-en-hu"))


@pytest.mark.jax
def test_every_jax_parameter_has_a_sharding_rule():
    """A parameter no rule names would be replicated silently on every mesh."""
    import jax
    import jax.numpy as jnp
    from helpers import CONFIGS

    from mtcore.jax.model import Transformer
    from mtcore.jax.parallel import unsharded_parameters

    ids = jnp.zeros((1, 1), jnp.int32)
    for cfg in [PARALLEL_CFG, PARALLEL_CFG.replace(layer_stacking="loop"), *CONFIGS[1:]]:
        shapes = jax.eval_shape(Transformer(cfg).init, jax.random.key(0), ids, ids, ids)  # the tree, nothing computed
        assert unsharded_parameters(shapes["params"]) == [], cfg


@pytest.mark.jax
@pytest.mark.parametrize("mesh", ["fsdp:2", "tensor:2", "fsdp:2,tensor:2", "data:2,tensor:2", "fsdp:4"])
def test_jax_meshes_train_as_one_device(reference, mesh):
    """fp32, dropout 0, 3 AdamW steps on global batches whose shards hold different numbers of
    real tokens: every mesh takes one device's steps."""
    losses, tree = train_steps(backend("jax", "cpu", mesh=mesh), PARALLEL_CFG, TCFG, uneven_batches(PARALLEL_CFG))
    np.testing.assert_allclose(losses, reference[0], rtol=1e-5)
    worst = max(float(np.abs(tree[k] - reference[1][k]).max()) for k in reference[1])
    assert worst < MESH_TOLERANCE, f"{mesh}: weights differ by {worst:.2e}"


@pytest.mark.jax
@pytest.mark.parametrize("mesh, axis, dim", [("fsdp:2", "fsdp", 1), ("tensor:2", "tensor", 2)])
def test_jax_shards_are_shards(mesh, axis, dim):
    """Each device holds its part of a sharded weight and of its AdamW moments, not a replica:
    fsdp splits the model dimension, tensor the FFN units (fc1's kernel is (L, D, F))."""
    be = backend("jax", "cpu", mesh=mesh)
    state = be.init_train_state(be.init_params(PARALLEL_CFG), TCFG)
    mu = state.opt_state[1][0].mu
    for kernel in (state.params["encoder"]["layers"]["mlp"]["fc1"]["kernel"],
                   mu["encoder"]["layers"]["mlp"]["fc1"]["kernel"]):
        shards = kernel.addressable_shards
        assert len(shards) == 2 and len({s.device for s in shards}) == 2
        assert all(s.data.shape[dim] == kernel.shape[dim] // 2 and s.data.size == kernel.size // 2 for s in shards)
        assert shards[0].index != shards[1].index and kernel.sharding.spec[dim] == axis  # different halves
    halves = state.params["encoder"]["layers"]["mlp"]["fc1"]["kernel"].addressable_shards
    assert not np.array_equal(np.asarray(halves[0].data), np.asarray(halves[1].data))
    embedding = state.params["shared"]["embedding"]  # (V, D): fsdp splits D, tensor keeps it whole
    assert embedding.addressable_shards[0].data.shape == ((512, 32) if axis == "fsdp" else (512, 64))


@pytest.mark.jax
def test_jax_devices_hold_what_the_mesh_predicts():
    """Measured from the shards on each device, a device's parameter and AdamW bytes are what the
    shapes and the mesh alone predict (mtcore.costs); fsdp:2 holds at most 0.55x of data:2, and
    tensor:2 saves exactly half of what it splits. (torch's ranks: test_torch_meshes_train_as_one_device.)"""
    from mtcore.costs import FP32, split_by_tensor
    from mtcore.weights import init_tree, param_shapes

    tree, held = init_tree(PARALLEL_CFG, 0), {}
    for mesh in ("data:2", "fsdp:2", "tensor:2", "fsdp:2,tensor:2", "fsdp:4"):
        be = backend("jax", "cpu", mesh=mesh)
        held[mesh] = be.held_bytes(be.init_train_state(be.from_numpy(PARALLEL_CFG, tree), TCFG))
        predicted = predicted_bytes(PARALLEL_CFG, MeshShape.parse(mesh))
        assert held[mesh].params == pytest.approx(predicted.params, rel=0.05), (mesh, held[mesh], predicted)
        assert held[mesh].optimizer == pytest.approx(predicted.optimizer, rel=0.05), (mesh, held[mesh], predicted)
    assert held["data:2"] == predicted_bytes(PARALLEL_CFG, MeshShape.parse("data:1"))  # a whole replica, exactly
    assert held["fsdp:2"].total <= 0.55 * held["data:2"].total
    split = sum(np.prod(shape) * FP32 for name, shape in param_shapes(PARALLEL_CFG).items() if split_by_tensor(name))
    assert held["data:2"].params - held["tensor:2"].params == split // 2


@pytest.mark.jax
def test_jax_step_collectives_are_read_from_its_hlo():
    """Data parallel on 2 devices: the compiled step all-reduces every gradient once per step (the
    layers' inside the scan loops, once per trip) and the tied embedding's three times, once per
    use (source and target embedding, output projection), before adding them; plus the loss's
    scalars. The textbook's 2P(N-1)/N counts the embedding once (docs/parallelism.md)."""
    from mtcore.batch import random_batch
    from mtcore.jax.parallel import step_collectives
    from mtcore.weights import init_tree

    be = backend("jax", "cpu", mesh="data:2")
    state = be.init_train_state(be.from_numpy(PARALLEL_CFG, init_tree(PARALLEL_CFG, 0)), TCFG)
    step = be.make_train_step(PARALLEL_CFG, TCFG)
    _, _, (reduce,) = be.recorded_step(step, state, random_batch(PARALLEL_CFG, 8, 7, 5, seed=0))
    grads = predicted_bytes(PARALLEL_CFG, MeshShape()).params
    embedding = PARALLEL_CFG.vocab_size * PARALLEL_CFG.d_model * 4
    assert (reduce["kind"], reduce["devices"]) == ("all-reduce", 2)
    assert 0 <= reduce["payload"] - (grads + 2 * embedding) < 64, reduce  # a few f32 scalars
    # mtcore plan --framework jax knows it.
    (jax_layout,) = predicted_traffic(PARALLEL_CFG, MeshShape(data=2), 8, 7, 5, layout=framework("jax").LAYOUT)
    assert jax_layout.payload == grads + 2 * embedding
    # One per scan trip of each stack (2 encoder, 2 decoder layers) and two outside the loops.
    assert reduce["calls"] == PARALLEL_CFG.encoder_layers + PARALLEL_CFG.decoder_layers + 2, reduce
    # The scaling bench's all_reduce_share: the probe all-reduces those bytes (to the float) in one call.
    probe = be.all_reduce_probe(reduce["payload"])
    probe()
    (alone,) = step_collectives(probe.hlo())
    assert (alone["kind"], alone["devices"], alone["calls"]) == ("all-reduce", 2, 1)
    assert 0 <= reduce["payload"] - alone["payload"] < 4, (alone, reduce)


@pytest.mark.jax
def test_jax_fsdp_gathers_weights_whatever_the_batch():
    """fsdp:2 on a batch whose activations outweigh the weights: the compiled step gathers every
    weight for the forward and again for the backward (the tied embedding once) and reduces the
    gradients (P bytes, the embedding's perhaps thrice) whatever the batch, as FSDP does. Without the model's activation
    constraints GSPMD moved activations instead, bytes growing with the batch. XLA's CPU backend
    all-reduces the gradients where FSDP reduce-scatters them (docs/parallelism.md)."""
    from mtcore.batch import random_batch
    from mtcore.weights import init_tree

    be = backend("jax", "cpu", mesh="fsdp:2")
    state = be.init_train_state(be.from_numpy(PARALLEL_CFG, init_tree(PARALLEL_CFG, 0)), TCFG)
    step = be.make_train_step(PARALLEL_CFG, TCFG)
    moved = {c["kind"]: c for c in be.recorded_step(step, state, random_batch(PARALLEL_CFG, 64, 32, 32, seed=0))[2]}
    grads = predicted_bytes(PARALLEL_CFG, MeshShape()).params
    embedding = PARALLEL_CFG.vocab_size * PARALLEL_CFG.d_model * 4
    assert 2 * grads - embedding <= moved["all-gather"]["payload"] <= 2 * grads, moved
    # The tied embedding's gradient may be reduced once per use, as under data parallelism.
    assert grads <= moved["all-reduce"]["payload"] <= grads + 2 * embedding + 1024, moved
    # mtcore plan --framework jax: the lower bounds of both.
    jax_layout = {c.kind: c for c in predicted_traffic(PARALLEL_CFG, MeshShape(fsdp=2), 64, 32, 32,
                                                       layout=framework("jax").LAYOUT)}
    assert set(jax_layout) == {"all-gather", "all-reduce"} and jax_layout["all-reduce"].payload == grads
    assert jax_layout["all-gather"].payload == 2 * grads - embedding <= moved["all-gather"]["payload"], moved
    assert sum(c["sent"] for c in moved.values()) < 1.1 * (moved["all-gather"]["sent"] + moved["all-reduce"]["sent"])


@pytest.mark.jax
@pytest.mark.parametrize("first, then", [("fsdp:2", "data:1"), ("data:1", "tensor:2"), ("fsdp:2", "fsdp:2,tensor:2")])
def test_jax_checkpoints_do_not_depend_on_the_mesh(first, then):
    """The saved tree and AdamW moments are the canonical ones, gathered whole: a state taken
    off one mesh resumes on another with the next step's loss of never having stopped."""
    batches = uneven_batches(PARALLEL_CFG, n=3)
    be = backend("jax", "cpu", mesh=first)
    from mtcore.weights import init_tree

    state = be.init_train_state(be.from_numpy(PARALLEL_CFG, init_tree(PARALLEL_CFG, 0)), TCFG)
    step = be.make_train_step(PARALLEL_CFG, TCFG)
    for batch in batches[:2]:
        state, _ = step(state, batch)
    tree, (count, moments) = be.to_numpy(be.state_params(state)), be.optimizer_to_numpy(state)
    assert count == 2 and all(v.shape == tree[k.split(".", 1)[1]].shape for k, v in moments.items())
    _, straight = step(state, batches[2])

    other = backend("jax", "cpu", mesh=then)
    resumed = other.train_state_from_numpy(PARALLEL_CFG, TCFG, tree, count, moments)
    _, again = other.make_train_step(PARALLEL_CFG, TCFG)(resumed, batches[2])
    assert float(again["loss"]) == pytest.approx(float(straight["loss"]), rel=1e-5)


def test_bad_meshes_are_refused_before_anything_runs(tmp_path, capsys):
    from mtcore.cli import main
    from mtcore.train.options import RunConfig

    with pytest.raises(MTCoreError, match="--mesh fsdp:2 is 2 device"):
        RunConfig(framework="jax", mesh="fsdp:2", devices=4)
    with pytest.raises(MTCoreError, match="the HF baseline trains on one device"):
        RunConfig(framework="hf", mesh="tensor:2")
    assert RunConfig(framework="jax", mesh="tensor:2,fsdp:2").devices == 4
    # The mesh is one object from here on: parsed once, written as users spell it.
    rc = RunConfig(framework="jax", mesh="tensor:2,fsdp:2")
    assert rc.mesh == MeshShape(fsdp=2, tensor=2) and rc.mesh_shape() is rc.mesh
    assert rc.as_dict()["mesh"] == "fsdp:2,tensor:2" and RunConfig(**rc.as_dict()) == rc
    assert RunConfig(framework="jax", devices=3).mesh_shape() == MeshShape.of(3) == MeshShape(data=3)
    assert RunConfig(framework="jax", mesh="tensor:2", batch_size=16).global_batch() == 16  # the group shares rows
    assert RunConfig(framework="jax", mesh="fsdp:2,tensor:2", batch_size=16).global_batch() == 32
    with pytest.raises(MTCoreError, match=r"--mesh fsdp:2,tensor:2: a global batch of 33 rows .* 2 batch shards"):
        RunConfig(framework="jax", mesh="fsdp:2,tensor:2", global_batch_size=33)
    for argv, why in [(["--mesh", "wide:2"], "unknown axis 'wide'"), (["--mesh", "tensor:0"], "at least 1"),
                      (["--mesh", "tensor:3"], "tensor:3 does not divide num_heads=4"),
                      (["--mesh", "fsdp:2", "--devices", "3"], "is 2 device"),
                      (["--mesh", "data:512,tensor:2"], "(1024 devices) on CPU: this process may use"),
                      (["--mesh", "fsdp:2", "--global-batch-size", "33"], "cannot be split evenly over its 2 batch"),
                      (["--framework", "torch", "--mesh", "tensor:2", "--precision", "bf16"], "gloo"),
                      (["--framework", "torch", "--mesh", "data:2,tensor:2"], "DistributedDataParallel takes no DTensor")]:
        out = tmp_path / "_".join(argv).replace(":", "").replace("-", "")
        argv = ["train", "--framework", "jax", *argv] if "--framework" not in argv else ["train", *argv]
        assert main([*argv, "--out", str(out), "--epochs", "1"]) == 2, argv
        err = capsys.readouterr().err
        assert why in err and err.count("\n") == 1, (argv, err)  # one line
        assert not out.exists(), argv  # nothing written
    # compare checks every mesh before it runs any (the global batch is fixed across meshes).
    out = tmp_path / "cmp"
    assert main(["compare", "--frameworks", "jax", "--mesh", "data:1", "tensor:2", "fsdp:2",
                 "--global-batch-size", "33", "--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--mesh fsdp:2: a global batch of 33 rows cannot be split evenly over its 2 batch shards" in err, err
    assert err.count("\n") == 1, err
    assert not out.exists()


# ---- across processes ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_group(proc: subprocess.Popen) -> None:
    """Kill ``proc``'s whole process group (torchrun's workers too) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_together(commands: list[list[str]], timeout: float = 60) -> list[str]:
    """Start every command at once, each in its own process group; wait for all, and kill every
    group that is left (torchrun's workers included) whatever happens."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                              start_new_session=True) for c in commands]
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            kill_group(p)
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    return outputs


def torchrun(log_dir: Path, *args: str) -> list[str]:
    """torchrun's command line, its logs in ``log_dir`` (without one it makes a torchelastic_*
    folder in the temporary folder and leaves it there)."""
    return [sys.executable, "-m", "torch.distributed.run", "--log-dir", str(log_dir), *args]


def torch_ranks(directory: Path, ranks: int, jobs: list[str], timeout: float = 90) -> Path:
    """One torchrun of ``ranks`` gloo ranks taking ``jobs`` in turn (tests/dist_worker.py);
    their results in ``directory``."""
    run_together([torchrun(directory / "logs", "--standalone", "--nproc-per-node", str(ranks),
                           str(HERE / "dist_worker.py"), "torch", str(directory), *jobs)], timeout=timeout)
    return directory


@pytest.fixture(scope="module")
def two_torch_ranks(tmp_path_factory) -> Path:
    """Every two-rank claim below from one launch (each costs every rank its imports and a
    process group to join): DDP, fsdp:2, tensor:2, and tensor:2 with dropout, one after another."""
    pytest.importorskip("torch")
    return torch_ranks(tmp_path_factory.mktemp("two-ranks"), 2, ["data", "fsdp:2", "tensor:2", "tensor:2+dropout"],
                       timeout=180)


@pytest.mark.torch
@pytest.mark.jax
@pytest.mark.slow
@pytest.mark.xdist_group("processes")
@pytest.mark.parametrize("mesh, ranks", [("fsdp:2", 2), ("tensor:2", 2), ("fsdp:2,tensor:2", 4)])
def test_torch_meshes_train_as_one_device(reference, request, tmp_path, mesh, ranks):
    """FSDP2 and DTensor tensor parallel as gloo ranks take one device's steps; each rank holds
    half of a sharded weight; the checkpoint they gather after two steps is the canonical tree,
    which the mesh itself resumes from and JAX on one device reads, both continuing with torch's
    next loss."""
    where = request.getfixturevalue("two_torch_ranks") if ranks == 2 else torch_ranks(tmp_path, ranks, [mesh])
    losses, tree = saved_training(job_file(where, mesh))
    np.testing.assert_allclose(losses, reference[0], rtol=1e-5)
    worst = max(float(np.abs(tree[k] - reference[1][k]).max()) for k in reference[1])
    assert worst < MESH_TOLERANCE, f"torch {mesh}: weights differ by {worst:.2e}"
    shards = [json.loads(job_file(where, mesh, f"-rank{r}.json").read_text()) for r in range(ranks)]
    part = [32 if ranks == 4 else 64, 64]  # 2-D: a quarter
    assert all(s["fc1_local"] == part and s["fc1"] == [128, 64] for s in shards), shards
    # Resumed from the gathered tree onto the mesh, every rank takes the third step's loss again.
    for s in shards:
        assert s["resumed_loss"] == pytest.approx(losses[2], rel=1e-5), shards
    # What each rank holds, measured from its local shards, is what the mesh predicts.
    predicted = predicted_bytes(PARALLEL_CFG, MeshShape.parse(mesh)).as_dict()
    for s in shards:
        assert {k: v / predicted[k] for k, v in s["held"].items()} == pytest.approx(dict.fromkeys(predicted, 1.0), abs=0.05), (s, predicted)
    saved = np.load(job_file(where, mesh, "-2.npz"))
    be = backend("jax")
    moments = {k.removeprefix("moment."): saved[k] for k in saved.files if k.startswith("moment.")}
    weights = {k: saved[k] for k in saved.files if k != "count" and not k.startswith("moment.")}
    state = be.train_state_from_numpy(PARALLEL_CFG, TCFG, weights, int(saved["count"]), moments)
    _, metrics = be.make_train_step(PARALLEL_CFG, TCFG)(state, uneven_batches(PARALLEL_CFG)[2])
    assert float(metrics["loss"]) == pytest.approx(losses[2], rel=1e-5)


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.xdist_group("processes")
def test_torch_collectives_are_what_the_mesh_predicts(two_torch_ranks):
    """Recorded from torch's dispatcher as a step runs, per rank: DDP all-reduces the gradients
    once (P bytes, plus the loss's three scalars); FSDP2 reduce-scatters them once and gathers
    every layer's weights twice but the root's (the tied embedding) once, since it keeps the root
    gathered from forward to backward; DTensor all-reduces the activations the model's layout
    predicts. Besides, one all-reduce of the loss's three scalars and one of the gradient norm's
    sum of squares per layout split over ranks (one here: never one per parameter).
    (docs/parallelism.md)"""
    from mtcore.weights import param_shapes

    def measured_and_predicted(job):
        ranks = [json.loads(job_file(two_torch_ranks, job, f"-rank{r}.json").read_text()) for r in range(2)]
        assert ranks[0]["collectives"] == ranks[1]["collectives"], ranks  # every rank takes part in every one
        rows, src, tgt = ranks[0]["batch"]
        measured = {c["kind"]: c for c in ranks[0]["collectives"]}
        mesh = MeshShape.parse("data:2" if job == "data" else job)
        predicted = {c.kind: c for c in predicted_traffic(PARALLEL_CFG, mesh, rows, src, tgt)}
        return measured, predicted

    measured, predicted = measured_and_predicted("data")
    assert set(measured) == {"all-reduce"} and 0 < measured["all-reduce"]["payload"] - predicted["all-reduce"].payload <= 12
    # The scaling bench's all_reduce_share: the probe all-reduces those bytes (to the float) in one call.
    probe = json.loads(job_file(two_torch_ranks, "data", "-rank0.json").read_text())["probe"]
    assert [(kind, n) for kind, n, _ in probe] == [("all-reduce", 2)]
    assert 0 <= measured["all-reduce"]["payload"] - probe[0][2] < 4, (probe, measured)
    measured, predicted = measured_and_predicted("fsdp:2")
    root = np.prod(param_shapes(PARALLEL_CFG)["shared.weight"]) * 4
    assert measured["reduce-scatter"]["payload"] == predicted["reduce-scatter"].payload
    assert measured["all-gather"]["payload"] == predicted["all-gather"].payload - root
    # mtcore plan --framework torch knows it.
    rows, src, tgt = json.loads(job_file(two_torch_ranks, "fsdp:2", "-rank0.json").read_text())["batch"]
    torch_layout = {c.kind: c for c in predicted_traffic(PARALLEL_CFG, MeshShape(fsdp=2), rows, src, tgt,
                                                         layout=framework("torch").LAYOUT)}
    assert {k: torch_layout[k].payload for k in ("all-gather", "reduce-scatter")} == {
        k: measured[k]["payload"] for k in ("all-gather", "reduce-scatter")}
    assert measured["all-reduce"]["calls"] == 2 and measured["all-reduce"]["payload"] == 16  # the loss's sums, the norm
    measured, predicted = measured_and_predicted("tensor:2")
    scalars = measured["all-reduce"]["payload"] - predicted["all-reduce"].payload
    assert scalars == 16, (measured, predicted)  # the loss's three sums, the gradient norm's one
    assert measured["all-reduce"]["calls"] == predicted["all-reduce"].calls + 2


@pytest.mark.torch
@pytest.mark.jax
@pytest.mark.slow
@pytest.mark.xdist_group("processes")  # multi-process tests run one at a time, on one worker
def test_torch_ddp_two_processes_train_as_one(reference, two_torch_ranks):
    assert_same_training(saved_training(job_file(two_torch_ranks, "data")), reference)


@pytest.mark.torch
@pytest.mark.jax
@pytest.mark.slow
@pytest.mark.xdist_group("processes")
def test_torch_two_nodes_on_loopback_train_as_one(reference, tmp_path):
    endpoint = f"127.0.0.1:{free_port()}"
    node = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
            "--rdzv-id", "mtcore-test"]
    run_together([torchrun(tmp_path / f"logs-{r}", *node, "--node-rank", str(r), str(HERE / "dist_worker.py"), "torch",
                           str(tmp_path), "data") for r in range(2)])
    assert_same_training(saved_training(job_file(tmp_path, "data")), reference)


@pytest.mark.jax
@pytest.mark.slow
@pytest.mark.xdist_group("processes")
def test_jax_two_processes_of_two_devices_train_as_one(reference, tmp_path):
    out = tmp_path / "jax4.npz"
    coordinator = f"127.0.0.1:{free_port()}"
    run_together([[sys.executable, str(HERE / "dist_worker.py"), "jax", str(out), coordinator, "2", str(p), "4"]
                  for p in range(2)])
    assert_same_training(saved_training(out), reference)


# ---- the command line ----------------------------------------------------------------------------
# Pairs of at most 16 tokens: one batch shape, so each process compiles its steps once.
QUICK_RUN = ["--model", "tiny", "--synthetic-size", "1000", "--max-len", "16", "--validation", "32", "--test", "32",
             "--eval-sentences", "8", "--batch-size", "16", "--quiet"]


def mtcore_cli(*args: str, timeout: float = 120) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mtcore", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    finally:
        kill_group(proc)


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.xdist_group("processes")
def test_cli_torch_two_ranks_write_rank_files(tmp_path):
    out = tmp_path / "run"
    stdout, stderr = finish(mtcore_cli("train", "--framework", "torch", "--devices", "2", "--epochs", "2",
                                       "--out", str(out), *QUICK_RUN))
    assert "torch: 2 epochs" in stdout, stdout + stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["run"]["world"]["devices"] == 2
    for epoch in (1, 2):
        ranks = [json.loads((out / f"rank{r}_results_epoch{epoch}.json").read_text()) for r in range(2)]
        assert [r["process"] for r in ranks] == [0, 1]
        assert all(r["world_size"] == 2 and r["local_batch"] == 16 and r["global_batch"] == 32 for r in ranks)
        assert {"training_time", "tokens_per_sec", "validation_loss", "bleu"} <= set(ranks[0])
        # Each rank counts its own rows: together, every real token of the epoch once.
        assert sum(r["tokens"] for r in ranks) == metrics["epochs"][epoch - 1]["tokens"]


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.xdist_group("processes")
def test_torch_tensor_parallel_ranks_draw_the_same_dropout(two_torch_ranks):
    """With dropout on, the ranks of a tensor-parallel group hold one copy of what is not split
    (norms, the embedding, the residual stream): the same losses and weights on both ranks."""
    ranks = [job_file(two_torch_ranks, "tensor:2+dropout", f"-rank{r}.txt").read_text() for r in range(2)]
    assert ranks[0] == ranks[1] and "weights " in ranks[0], ranks


@pytest.fixture(scope="module")
def one_device_runs(tmp_path_factory):
    """Per framework, the one-device run every mesh of test_cli_mesh_gives_the_step_losses_of_one_device
    must match: its first epoch, and the second it takes when resumed (trained once for all meshes)."""
    from mtcore.train import train
    from mtcore.train.options import RunConfig

    runs = {}

    def run(framework: str) -> tuple[dict, dict]:
        if framework not in runs:
            rc = RunConfig(framework=framework, epochs=1, global_batch_size=32, dropout=0.0, model="tiny",
                           synthetic_size=1000, max_len=16, validation=32, test=32, eval_sentences=0, batch_size=16)
            out = tmp_path_factory.mktemp(f"one-{framework}")
            first = train(rc, out, progress=False)
            runs[framework] = first, train(dataclasses.replace(rc, epochs=2), out, progress=False, resume=True)
        return runs[framework]

    return run


@pytest.mark.slow
@pytest.mark.xdist_group("processes")
# One mesh per framework, one of each kind: the command line and launcher are the same for every
# mesh of a framework, and every mesh's arithmetic against one device is
# test_torch_meshes_train_as_one_device's and test_jax_meshes_train_as_one_device's.
@pytest.mark.parametrize("framework, mesh", [("jax", "tensor:2"), ("torch", "fsdp:2")])
def test_cli_mesh_gives_the_step_losses_of_one_device(tmp_path, framework, mesh, one_device_runs):
    """``mtcore train --mesh M --global-batch-size 32 --dropout 0`` takes the steps of
    ``--devices 1``: the rank files count each real token once, tensor-parallel ranks included; and
    ``mtcore train --resume --devices 1`` carries the mesh's run on where one device's would go.
    (One device onto a mesh: the workers of test_torch_meshes_train_as_one_device and
    test_jax_checkpoints_do_not_depend_on_the_mesh resume the gathered tree on each mesh.)"""
    from mtcore.cli import main

    pytest.importorskip(framework)
    # No translations to score: the claim is about the training steps (decoding would compile too).
    args = ["--framework", framework, "--epochs", "1", "--global-batch-size", "32", "--dropout", "0", *QUICK_RUN,
            "--eval-sentences", "0"]
    stdout, stderr = finish(mtcore_cli("train", "--mesh", mesh, "--out", str(tmp_path / "mesh"), *args))
    assert f"{framework}: 1 epochs" in stdout, stdout + stderr[-3000:]
    sharded = json.loads((tmp_path / "mesh" / "metrics.json").read_text())
    one, stayed = one_device_runs(framework)
    np.testing.assert_allclose(sharded["epochs"][0]["step_losses"], one["epochs"][0]["step_losses"], rtol=1e-5)
    assert sharded["run"]["mesh"] == mesh and sharded["run"]["world"]["devices"] == 2
    ranks = [json.loads(p.read_text()) for p in sorted((tmp_path / "mesh").glob("rank*_results_epoch1.json"))]
    assert sum(r["tokens"] for r in ranks) == sharded["epochs"][0]["tokens"] and {r["mesh"] for r in ranks} == {mesh}
    # The rows each process trained on: a torch fsdp rank half the batch, a tensor-parallel rank all of it.
    assert {r["local_batch"] for r in ranks} == {16 if (framework, mesh) == ("torch", "fsdp:2") else 32}, ranks
    # The mesh's checkpoint (the canonical tree, gathered) resumed on one device from the command line.
    assert main(["train", "--resume", "--epochs", "2", "--devices", "1", "--out", str(tmp_path / "mesh"), "--quiet"]) == 0
    moved = json.loads((tmp_path / "mesh" / "metrics.json").read_text())
    assert moved["run"]["mesh"] is None and moved["run"]["world"]["devices"] == 1, moved["run"]
    assert [e["mesh"] for e in moved["epochs"]] == [mesh, "data:1"]  # each epoch says where it trained
    np.testing.assert_allclose(moved["epochs"][1]["step_losses"], stayed["epochs"][1]["step_losses"], rtol=1e-5)


@pytest.mark.jax
@pytest.mark.slow
@pytest.mark.xdist_group("processes")
def test_compare_trains_every_framework_on_every_mesh(tmp_path):
    """``mtcore compare --mesh data:1 tensor:2``: each mesh in processes of its own, on the same
    global batches from the same weights (the same step losses), one report row per mesh with
    what a device held and sent, and the plots, which ``mtcore report`` redraws from the run files."""
    from mtcore.cli import main

    out = tmp_path / "cmp"
    stdout, stderr = finish(mtcore_cli("compare", "--frameworks", "jax", "--mesh", "data:1", "tensor:2", "--epochs", "1",
                                       "--global-batch-size", "32", "--dropout", "0", "--out", str(out), *QUICK_RUN,
                                       "--eval-sentences", "0"))
    assert "report:" in stdout, stdout + stderr[-3000:]
    assert json.loads((out / "compare.json").read_text())["meshes"] == ["data:1", "tensor:2"]
    one, split = (json.loads((out / run / "metrics.json").read_text()) for run in ("jax-data1", "jax-tensor2"))
    np.testing.assert_allclose(split["epochs"][0]["step_losses"], one["epochs"][0]["step_losses"], rtol=1e-5)
    report = (out / "report.md").read_text()
    # One row per framework x mesh, with what a device held and sent, measured and predicted.
    rows = {line.split(" | ")[1]: line for line in report.splitlines() if line.startswith("| jax | ") and "x |" in line}
    assert set(rows) == {"data:1", "tensor:2"}, report
    costs = json.loads((out / "jax-tensor2" / "rank0_results_epoch1.json").read_text())["costs"]
    held, want = costs["held_bytes"]["total"], costs["held_bytes_predicted"]["total"]
    assert abs(held / want - 1) < 0.05 and abs(costs["sent_bytes_per_step"] / costs["sent_bytes_per_step_predicted"] - 1) < 0.01
    assert f"{held / 1e6:,.2f} ({want / 1e6:,.2f})" in rows["tensor:2"], rows
    assert "| 0.00 (0.00) | 0.00 ± 0.00 |" in rows["data:1"], rows  # one device sends nothing
    plots = ["parallelism_time.png", "parallelism_memory.png", "parallelism_communication.png"]
    assert all((out / name).stat().st_size > 10_000 for name in plots)
    # `mtcore report` draws the same from the run files alone.
    for name in ["report.md", *plots]:
        (out / name).unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == report and all((out / name).is_file() for name in plots)


def kill_rank_one_mid_run(*argv: str, run) -> tuple[int, str, str]:
    """Start ``mtcore ARGV``, SIGKILL rank 1 of the 2-rank run writing into ``run`` once its first
    epoch is done, and check every rank stops soon after: ``(exit status, its stderr, run's
    metrics.json status)``."""
    import time

    proc = mtcore_cli(*argv, *QUICK_RUN)
    try:
        first = run / "rank1_results_epoch1.json"
        deadline = time.monotonic() + 90
        while not first.is_file() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert first.is_file(), "rank 1 never finished its first epoch"
        os.kill(json.loads(first.read_text())["pid"], signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = finish(proc, timeout=60)
    finally:
        finish(proc, timeout=1) if proc.poll() is None else None
    assert time.monotonic() - killed < 30, "the other rank kept running"
    return proc.returncode, stderr, json.loads((run / "metrics.json").read_text())["status"]


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.xdist_group("processes")
@pytest.mark.parametrize("where", [["--devices", "2"], ["--mesh", "fsdp:2"]], ids=["data", "fsdp"])
def test_a_rank_that_dies_stops_every_rank(tmp_path, where):
    """Under data parallelism and under a sharded mesh alike: the same launcher, the same record."""
    out = tmp_path / "run"
    code, stderr, status = kill_rank_one_mid_run("train", "--framework", "torch", *where, "--epochs", "50",
                                                 "--out", str(out), run=out)
    assert code != 0
    assert "mtcore: error: rank 1 of 2 failed (killed by signal SIGKILL)" in stderr, stderr[-2000:]
    assert status.startswith("failed: rank 1") and "checkpoints/epoch-" in status, status
    assert "the last good checkpoint is" in status and "--resume continues" in status, status


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.xdist_group("processes")
def test_a_rank_that_dies_under_compare_is_recorded_as_under_train(tmp_path):
    """compare's runs go through the same launcher as train's: a killed rank of the 2-device torch
    run stops every rank and leaves that run's metrics.json saying ``failed: ...`` with the last
    good checkpoint. (``--devices 2`` alone: a 1-device run first would only add its epochs.)"""
    out = tmp_path / "compare"
    code, stderr, status = kill_rank_one_mid_run("compare", "--frameworks", "torch", "--devices", "2", "--epochs", "50",
                                                 "--out", str(out), run=out / "torch-2")
    assert code == 2
    assert stderr.strip().splitlines()[-1].startswith("mtcore: error: rank 1 of 2 failed (killed by signal SIGKILL)")
    assert status.startswith("failed: rank 1 of 2 failed") and "checkpoints/epoch-" in status, status
    assert "the last good checkpoint is" in status and "--resume continues" in status, status


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_cli_devices_beyond_what_the_machine_has_is_one_line(tmp_path, framework):
    from mtcore.perf.threads import usable_cores

    proc = mtcore_cli("train", "--framework", framework, "--devices", "1024", "--epochs", "1",
                      "--out", str(tmp_path / "run"), *QUICK_RUN)
    stdout, stderr = finish(proc)
    assert proc.returncode == 2
    assert stderr.strip().splitlines() == [
        f"mtcore: error: --devices 1024 on CPU: this process may use {len(usable_cores())} core(s), one per CPU device"
    ], stderr


# One bucket (max_len 16): each new batch shape would compile again.
SMALL_RUN = dict(synthetic_size=400, validation=16, test=16, eval_sentences=0, max_len=16, dropout=0.0)


@pytest.mark.jax
@pytest.mark.slow
def test_checkpoints_resume_on_another_device_count(tmp_path):
    """Two devices train an epoch; resumed on one device and on two, the next steps' losses agree.
    (The same global batch on 1 and 2 devices: this is also strong scaling's promise.)"""
    import shutil

    from mtcore.train import RunConfig, Trainer, prepare

    rc = RunConfig(framework="jax", devices=2, global_batch_size=16, epochs=1, **SMALL_RUN)
    Trainer(rc, prepare(rc, tmp_path / "two"), tmp_path / "two", progress=False).run_epoch(1)
    shutil.copytree(tmp_path / "two", tmp_path / "one")
    losses = {}
    for name, devices in (("two", 2), ("one", 1)):
        again = RunConfig(framework="jax", devices=devices, global_batch_size=16, epochs=2, **SMALL_RUN)
        out = tmp_path / name
        trainer = Trainer(again, prepare(again, out, tokenizer_dir=out / "tokenizer"), out, progress=False,
                          resume=True)
        assert trainer.epoch == 1 and trainer.world.devices == devices
        losses[name] = trainer.run_epoch(2)["step_losses"]
    np.testing.assert_allclose(losses["one"], losses["two"], rtol=1e-5)


@pytest.mark.jax
@pytest.mark.slow
@pytest.mark.xdist_group("processes")
def test_compare_at_one_and_two_devices_reports_scaling(tmp_path):
    """The experiment end to end (JAX here: torch's ranks and their files are tested above), each
    run in a process of its own with one core per device."""
    from mtcore.train import RunConfig, compare
    from mtcore.train.report import write_report

    rc = RunConfig(epochs=2, batch_size=8, **{**SMALL_RUN, "eval_sentences": 4})
    report = compare(rc, tmp_path, frameworks=("jax",), devices=(1, 2), progress=False)
    text = report.read_text()
    assert "## Scaling" in text and "weak scaling" in text
    assert "| jax | 1 | data:1 | 1 | 8 |" in text and "| jax | 2 | data:2 | 1 | 16 |" in text and "1 CPU core(s), a JAX host device" in text
    for plot in ("training_time_comparison.png", "tokens_per_second_comparison.png"):
        assert (tmp_path / plot).stat().st_size > 1000
    runs = {n: json.loads((tmp_path / f"jax-{n}" / "metrics.json").read_text()) for n in (1, 2)}
    # Each run's process ran the one process set-up (mtcore train as its own program) and says so.
    for n in (1, 2):
        process = json.loads((tmp_path / f"jax-{n}" / "run.json").read_text())["process"]
        jax_setup = process["frameworks"]["jax"]
        assert jax_setup["fp32_matmul_precision"] == "highest" and jax_setup["cpu_dispatch"].startswith("synchronous")
        assert process["threads"]["pinned"] and process["threads"]["threads"] == n  # one core per device
        assert process["compile_cache"] == "on" and process["allocator"]["allocator"].startswith(("glibc", "not glibc"))
    # Weak scaling: two devices step on twice the rows, so half as many steps per epoch.
    assert runs[2]["epochs"][0]["steps"] < runs[1]["epochs"][0]["steps"]
    assert [len(r["threads"]["cores"]) for r in (json.loads((tmp_path / f"jax-{n}" / "rank0_results_epoch2.json")
                                                            .read_text()) for n in (1, 2))] == [1, 2]
    # The rank files alone are enough to redraw the scaling part.
    for metrics in tmp_path.glob("*/metrics.json"):
        metrics.unlink()
    again = write_report(tmp_path).read_text()
    assert "rank files alone" in again and "| jax | 2 | data:2 | 1 | 16 |" in again


def test_the_launcher_keeps_a_status_its_run_wrote_and_records_a_failure_once(tmp_path, monkeypatch):
    """A run that stopped itself (a non-finite loss) has said why in metrics.json: the launcher keeps
    that; a run that still says 'running' is marked failed with its last good checkpoint, once."""
    from mtcore.errors import MTCoreError
    from mtcore.train import RunConfig
    from mtcore.train import launch as launcher

    def fails(message):
        def run_child(command, what):
            raise MTCoreError(message)
        return run_child

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "latest").write_text(json.dumps({"epoch": 1, "dir": "epoch-1", "step": 3}))
    rc = RunConfig(framework="jax")
    for status, message, want in [
        ("running", "jax on 1 device(s) failed: killed by signal SIGKILL",
         f"failed: jax on 1 device(s) failed: killed by signal SIGKILL; the last good checkpoint is "
         f"{out / 'checkpoints' / 'epoch-1'} (epoch 1); --resume continues"),
        ("stopped: loss became nan ...", "jax on 1 device(s) failed: ... the last good checkpoint is X (epoch 1)",
         "stopped: loss became nan ..."),
    ]:
        (out / "metrics.json").write_text(json.dumps({"status": status}))
        monkeypatch.setattr(launcher, "_run_child", fails(message))
        with pytest.raises(MTCoreError) as raised:
            launcher.launch(rc, out)
        assert str(raised.value).count("last good checkpoint") == 1
        assert json.loads((out / "metrics.json").read_text())["status"] == want
