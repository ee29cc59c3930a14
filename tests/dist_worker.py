"""Run by tests/test_parallel.py in child processes (under torchrun, or as one of several
jax.distributed processes): three AdamW steps on the same global batches as the single-device
reference, then the main process saves its losses and weights to OUT.npz.

    python tests/dist_worker.py torch OUT
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
        be = backend("torch", "cpu", devices=int(os.environ["WORLD_SIZE"]))
    else:
        from mtcore.jax import parallel

        coordinator, processes, process, devices = argv[2], int(argv[3]), int(argv[4]), int(argv[5])
        parallel.initialize(coordinator, processes, process, cpu_devices=devices // processes)
        be = backend("jax", "cpu", devices=devices)
    tcfg = TrainConfig(warmup_steps=1, eps=1e-6)
    losses, tree = train_steps(be, PARALLEL_CFG, tcfg, uneven_batches(PARALLEL_CFG))
    if be.world.main:
        np.savez(out, losses=np.array(losses), **tree)
    print(f"process {be.world.process} of {be.world.processes}: {be.world.devices} devices, losses {losses}")


if __name__ == "__main__":
    main(sys.argv[1:])
