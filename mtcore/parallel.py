"""Data parallelism, framework-neutral: where this process sits, and which rows of a global batch
are its own.

mtcore never launches, rendezvous or all-reduces by itself: torch processes come from torchrun
(``torch.distributed`` / elastic, see ``mtcore/torch/parallel.py``) and JAX processes from
``jax.distributed`` (``mtcore/jax/parallel.py``). Both frameworks train on the same *global* batch:
every process plans the same batches from the same seed and keeps the rows of its own devices, so
N devices on a global batch do the arithmetic of one device on that batch (the loss is a token sum
divided by the token count over all devices).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mtcore.batch import Batch
from mtcore.errors import MTCoreError


def under_torchrun() -> bool:
    """Whether torchrun (or its elastic agent) started this process as one rank of a job."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


@dataclass(frozen=True)
class World:
    """The devices training one model. torch runs one process per device; a JAX process drives all
    its local devices (a GPU node, a TPU VM, CPU host devices)."""

    devices: int = 1  # over all processes
    processes: int = 1
    process: int = 0  # this process's index: torch's RANK, jax.process_index()

    def __post_init__(self) -> None:
        if self.devices < 1 or self.processes < 1 or self.devices % self.processes:
            raise MTCoreError(f"{self.devices} device(s) cannot be split evenly over {self.processes} process(es)")
        if not 0 <= self.process < self.processes:
            raise MTCoreError(f"process {self.process} is not among {self.processes}")

    @property
    def local_devices(self) -> int:
        return self.devices // self.processes

    @property
    def main(self) -> bool:
        """The process that writes metrics.json, checkpoints and the progress bar."""
        return self.process == 0

    def check_batch_size(self, global_batch_size: int) -> None:
        if global_batch_size % self.devices:
            raise MTCoreError(
                f"a global batch of {global_batch_size} rows cannot be split evenly over {self.devices} devices; "
                f"choose a multiple of {self.devices}"
            )

    def rows(self, global_batch_size: int) -> slice:
        """This process's rows of a global batch: its devices' blocks, in device order."""
        self.check_batch_size(global_batch_size)
        per_process = global_batch_size // self.processes
        return slice(self.process * per_process, (self.process + 1) * per_process)

    def local(self, batch: Batch) -> Batch:
        """The rows of ``batch`` this process feeds to its devices."""
        if self.processes == 1:
            return batch
        rows = self.rows(batch.shape[0])
        return Batch(*(a[rows] for a in batch.arrays().values()))

    def as_dict(self) -> dict:
        return {"devices": self.devices, "processes": self.processes, "process": self.process,
                "local_devices": self.local_devices}


def global_batch_size(devices: int, batch_size: int | None, global_batch: int | None) -> int:
    """``--batch-size`` is per device (global = B x N); ``--global-batch-size`` fixes the global batch."""
    if global_batch is not None:
        World(devices).check_batch_size(global_batch)
        return global_batch
    if batch_size is None or batch_size < 1:
        raise MTCoreError(f"--batch-size must be positive, got {batch_size}")
    return batch_size * devices
