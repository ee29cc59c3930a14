"""Run by tests/test_parallel.py in child processes (under torchrun, or as one of several
jax.distributed processes): three AdamW steps on the same global batches as the single-device
reference, then the main process saves its losses and weights to OUT.npz (on a MESH also the
weights and AdamW moments after two steps, the canonical checkpoint tree, as OUT-2.npz, and
each rank's OUT-rankR.json: its shard of a weight, the third step's loss from that tree loaded
afresh as a resumed run does, and the bytes of parameters and optimizer state it holds).

    python tests/dist_worker.py torch OUT [MESH [dropout]]
    python tests/dist_worker.py jax OUT COORDINATOR NUM_PROCESSES PROCESS_ID DEVICES
"""

import os
import sys

import numpy as np
from helpers import PARALLEL_CFG, train_steps, uneven_batches


def main(argv: list[str]) -> None:
    framework, out = argv[0], argv[1]
    from mtcore import TrainConfig, backend
    from mtcore.perf import threads

    if framework == "torch":
        local, local_size = int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_WORLD_SIZE"])
        threads.apply(1, slot=local, slots=local_size)
        mesh = argv[2] if len(argv) > 2 else None
        be = backend("torch", "cpu", devices=int(os.environ["WORLD_SIZE"]), mesh=mesh)
    else:
        from mtcore.jax import parallel

        coordinator, processes, process, devices = argv[2], int(argv[3]), int(argv[4]), int(argv[5])
        parallel.initialize(coordinator, processes, process, cpu_devices=devices // processes)
        be = backend("jax", "cpu", devices=devices)
    tcfg = TrainConfig(warmup_steps=1, eps=1e-6)
    if framework == "torch" and len(argv) > 3 and argv[3] == "dropout":
        # Dropout on: what every rank of a tensor-parallel group holds a copy of must stay one copy.
        cfg = PARALLEL_CFG.replace(dropout=0.1, activation_dropout=0.1)
        be.reseed(0)  # as the Trainer seeds every epoch
        import hashlib

        losses, tree = train_steps(be, cfg, tcfg, uneven_batches(cfg))
        # Parameters tensor parallelism does not split come back as this rank's own copy.
        digest = hashlib.sha256(b"".join(tree[k].tobytes() for k in sorted(tree))).hexdigest()[:16]
        with open(out.replace(".npz", f"-rank{be.world.process}.txt"), "w") as f:
            f.write(f"losses {losses} weights {digest}")
        return
    if framework == "torch" and mesh:
        from mtcore.weights import init_tree

        state = be.init_train_state(be.from_numpy(PARALLEL_CFG, init_tree(PARALLEL_CFG, 0)), tcfg)
        step, losses = be.make_train_step(PARALLEL_CFG, tcfg), []
        for i, batch in enumerate(uneven_batches(PARALLEL_CFG)):
            if i == 2:  # the checkpoint a run would save here, gathered on every rank
                weights, (count, moments) = be.to_numpy(be.state_params(state)), be.optimizer_to_numpy(state)
                if be.world.main:
                    np.savez(out.replace(".npz", "-2.npz"), count=count, **weights,
                             **{f"moment.{k}": v for k, v in moments.items()})
                # --resume's path: that whole tree (any mesh's, one device's) sharded afresh onto this mesh.
                resumed = be.train_state_from_numpy(PARALLEL_CFG, tcfg, weights, count, moments)
                resumed_loss = float(step(resumed, batch)[1]["loss"])
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
        tree = be.to_numpy(be.state_params(state))
        # Each rank holds its shard, not a replica (tensor: half the FFN units of fc1; fsdp: half its rows).
        import json

        local = state.model.encoder.layers[0].mlp.fc1.weight
        with open(out.replace(".npz", f"-rank{be.world.process}.json"), "w") as f:  # lines of ranks' output may interleave
            json.dump({"fc1_local": list(local.to_local().shape), "fc1": list(local.shape), "resumed_loss": resumed_loss,
                       "held": be.held_bytes(state).as_dict()}, f)
    else:
        losses, tree = train_steps(be, PARALLEL_CFG, tcfg, uneven_batches(PARALLEL_CFG))
    if be.world.main:
        np.savez(out, losses=np.array(losses), **tree)
    print(f"process {be.world.process} of {be.world.processes}: {be.world.devices} devices, losses {losses}")


if __name__ == "__main__":
    main(sys.argv[1:])
