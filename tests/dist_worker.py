"""Run by tests/test_parallel.py in child processes (under torchrun, or as one of several
jax.distributed processes): three AdamW steps on the same global batches as the single-device
reference, then the main process saves its losses and weights.

    python tests/dist_worker.py torch DIR JOB [JOB ...]
    python tests/dist_worker.py jax OUT COORDINATOR NUM_PROCESSES PROCESS_ID DEVICES

torch: one launch (one process group) takes every JOB in turn, since each launch costs every rank
its imports and a group to join. A JOB is ``data`` (DDP) or a mesh (``fsdp:2``, ``tensor:2``,
``fsdp:2,tensor:2``), saved as ``DIR/JOB.npz`` (``job_file``); on a mesh also the weights and
AdamW moments after two steps, the canonical checkpoint tree, as ``JOB-2.npz``, and each rank's
``JOB-rankR.json``: its shard of a weight, the third step's loss from that tree loaded afresh as a
resumed run does, and the bytes of parameters and optimizer state it holds; for every JOB but
dropout, the rank file also holds the collectives a fourth step ran (``recorded_step``) and what
``all_reduce_probe`` ran for their all-reduced bytes. ``MESH+dropout``
trains with dropout on and writes each rank's losses and a digest of its weights to
``JOB-rankR.txt``.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
from helpers import PARALLEL_CFG, train_steps, uneven_batches


def job_file(directory, job: str, suffix: str = ".npz") -> Path:
    """Where ``job``'s results go: ``fsdp:2,tensor:2`` -> ``fsdp2-tensor2.npz``."""
    return Path(directory) / (job.replace(":", "").replace(",", "-") + suffix)


def torch_job(directory: str, job: str, tcfg) -> None:
    from mtcore import backend

    mesh, _, dropout = job.partition("+")
    be = backend("torch", "cpu", devices=int(os.environ["WORLD_SIZE"]), mesh=None if mesh == "data" else mesh)
    rank = be.world.process
    if dropout:
        # Dropout on: what every rank of a tensor-parallel group holds a copy of must stay one copy.
        cfg = PARALLEL_CFG.replace(dropout=0.1, activation_dropout=0.1)
        be.reseed(0)  # as the Trainer seeds every epoch
        losses, tree = train_steps(be, cfg, tcfg, uneven_batches(cfg))
        # Parameters tensor parallelism does not split come back as this rank's own copy.
        digest = hashlib.sha256(b"".join(tree[k].tobytes() for k in sorted(tree))).hexdigest()[:16]
        job_file(directory, job, f"-rank{rank}.txt").write_text(f"losses {losses} weights {digest}")
        return
    from mtcore.weights import init_tree

    batches = uneven_batches(PARALLEL_CFG)
    state = be.init_train_state(be.from_numpy(PARALLEL_CFG, init_tree(PARALLEL_CFG, 0)), tcfg)
    step, losses = be.make_train_step(PARALLEL_CFG, tcfg), []
    for i, batch in enumerate(batches):
        if i == 2 and mesh != "data":  # the checkpoint a run would save here, gathered on every rank
            weights, (count, moments) = be.to_numpy(be.state_params(state)), be.optimizer_to_numpy(state)
            if be.world.main:
                np.savez(job_file(directory, job, "-2.npz"), count=count, **weights,
                         **{f"moment.{k}": v for k, v in moments.items()})
            # --resume's path: that whole tree (any mesh's, one device's) sharded afresh onto this mesh.
            resumed = be.train_state_from_numpy(PARALLEL_CFG, tcfg, weights, count, moments)
            resumed_loss = float(step(resumed, batch)[1]["loss"])
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    tree = be.to_numpy(be.state_params(state))
    report = {}
    if mesh != "data":
        # Each rank holds its shard, not a replica (tensor: half the FFN units of fc1; fsdp: half its rows).
        local = state.model.encoder.layers[0].mlp.fc1.weight
        report = {"fc1_local": list(local.to_local().shape), "fc1": list(local.shape), "resumed_loss": resumed_loss,
                  "held": be.held_bytes(state).as_dict()}
    # What a fourth step (past DDP's bucket rebuild on the second) moves, on the last batch's shape.
    state, _, report["collectives"] = be.recorded_step(step, state, batches[-1])
    # The scaling bench's probe: the step's all-reduce alone, one call of all its bytes.
    from mtcore.torch.parallel import recorded_collectives

    probe = be.all_reduce_probe(sum(c["payload"] for c in report["collectives"] if c["kind"] == "all-reduce"))
    with recorded_collectives() as record:
        probe()
    report["probe"] = record.calls
    report["batch"] = [*batches[-1].src_ids.shape, batches[-1].tgt_in.shape[1]]  # rows, source, target tokens
    job_file(directory, job, f"-rank{rank}.json").write_text(json.dumps(report))  # ranks' output lines may interleave
    if be.world.main:
        np.savez(job_file(directory, job), losses=np.array(losses), **tree)
    print(f"{job}: process {be.world.process} of {be.world.processes}: {be.world.devices} devices, losses {losses}")


def main(argv: list[str]) -> None:
    from mtcore import TrainConfig, backend
    from mtcore.perf import threads

    tcfg = TrainConfig(warmup_steps=1, eps=1e-6)
    if argv[0] == "torch":
        threads.apply(1, slot=int(os.environ["LOCAL_RANK"]), slots=int(os.environ["LOCAL_WORLD_SIZE"]))
        for job in argv[2:]:
            torch_job(argv[1], job, tcfg)
        return
    from mtcore.jax import parallel

    out, coordinator, processes, process, devices = argv[1], argv[2], int(argv[3]), int(argv[4]), int(argv[5])
    parallel.initialize(coordinator, processes, process, cpu_devices=devices // processes)
    be = backend("jax", "cpu", devices=devices)
    losses, tree = train_steps(be, PARALLEL_CFG, tcfg, uneven_batches(PARALLEL_CFG))
    if be.world.main:
        np.savez(out, losses=np.array(losses), **tree)
    print(f"process {be.world.process} of {be.world.processes}: {be.world.devices} devices, losses {losses}")


if __name__ == "__main__":
    main(sys.argv[1:])
