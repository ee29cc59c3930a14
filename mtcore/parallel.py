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


def under_launcher() -> bool:
    """Whether a launcher started this process as one rank of a job: torchrun's elastic agent, or
    any that sets its environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``)."""
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


def global_batch_size(mesh: MeshShape | int, batch_size: int | None, global_batch: int | None) -> int:
    """``--batch-size`` is per batch shard (a device, under data parallelism: global = B x N);
    ``--global-batch-size`` fixes the global batch. ``mesh``: a MeshShape, or N for ``data:N``."""
    mesh = mesh if isinstance(mesh, MeshShape) else MeshShape.of(mesh)
    if global_batch is not None:
        mesh.check_batch(global_batch)
        return global_batch
    if batch_size is None or batch_size < 1:
        raise MTCoreError(f"--batch-size must be positive, got {batch_size}")
    return batch_size * mesh.batch_shards


# ---- device meshes ----------------------------------------------------------------------------
# Megatron's tensor-parallel plan, declared once by parameter role and read by ``mtcore.costs``
# (what a device holds) and both frameworks' ``parallel.py`` (torch's ``parallelize_module`` plan,
# JAX's logical axes): layer name -> (how the layer splits, which units it splits). A ``column``
# layer splits its output units (weight and bias), a ``row`` layer its input units (its bias,
# added after the all-reduce, stays whole); ``heads`` whole attention heads to a device, ``mlp``
# the FFN's hidden units. Every other parameter is whole along ``tensor``.
TENSOR_PLAN: dict[str, tuple[str, str]] = {
    "q_proj": ("column", "heads"), "k_proj": ("column", "heads"), "v_proj": ("column", "heads"),
    "out_proj": ("row", "heads"),
    "fc1": ("column", "mlp"), "fc2": ("row", "mlp"),
}

# The axes a mesh may have, outermost first (as MaxText and torchtitan order them: the tensor axis
# innermost, on the devices that talk fastest). ``data`` replicates the model and splits the batch;
# ``fsdp`` splits the batch and shards parameters, gradients and optimizer state (ZeRO-3);
# ``tensor`` splits attention heads and FFN columns/rows (Megatron), the batch replicated along it.
MESH_AXES = ("data", "fsdp", "tensor")


@dataclass(frozen=True)
class MeshShape:
    """How many devices each mesh axis spans; written ``AXIS:N[,AXIS:N...]`` (``fsdp:2,tensor:2``).
    An axis not written has size 1. The device count is the product of the sizes."""

    data: int = 1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self) -> None:
        for axis in MESH_AXES:
            size = getattr(self, axis)
            if not isinstance(size, int) or size < 1:
                raise MTCoreError(f"--mesh: axis {axis} must have a size of at least 1, got {size!r}")

    @classmethod
    def parse(cls, text: str) -> MeshShape:
        sizes: dict[str, int] = {}
        for part in str(text).split(","):
            axis, sep, size = part.strip().partition(":")
            if not sep or not axis:
                raise MTCoreError(f"--mesh {text!r}: expected AXIS:N[,AXIS:N...] with the axes {', '.join(MESH_AXES)}, "
                                  f"like fsdp:2,tensor:2")
            if axis not in MESH_AXES:
                raise MTCoreError(f"--mesh {text!r}: unknown axis {axis!r}; the axes are {', '.join(MESH_AXES)}")
            if axis in sizes:
                raise MTCoreError(f"--mesh {text!r}: axis {axis} is given twice")
            try:
                sizes[axis] = int(size)
            except ValueError:
                raise MTCoreError(f"--mesh {text!r}: the size of {axis} must be a whole number, got {size!r}") from None
            if sizes[axis] < 1:
                raise MTCoreError(f"--mesh {text!r}: the size of {axis} must be at least 1, got {sizes[axis]}")
        return cls(**sizes)

    @classmethod
    def parse_all(cls, texts) -> list[MeshShape]:
        """Several meshes (``--mesh data:1 fsdp:2``), each once: two spellings of one mesh
        (``data:2,fsdp:2`` and ``fsdp:2,data:2``) are the same mesh."""
        shapes = [cls.parse(t) for t in texts]
        if len({str(m) for m in shapes}) != len(shapes):
            raise MTCoreError(f"--mesh: a mesh is given twice ({' '.join(map(str, shapes))})")
        return shapes

    @classmethod
    def data_parallel(cls, devices: int) -> MeshShape:
        """What ``--devices N`` means: ``data:N``."""
        return cls(data=devices)

    @classmethod
    def of(cls, devices: int = 1, mesh: str | MeshShape | None = None) -> MeshShape:
        """The mesh a run trains on, the one place that decides it: ``mesh`` (``--mesh``, parsed
        here once), else ``data:N`` for ``--devices N``; a device count other than 1 or the mesh's
        is refused."""
        if mesh is None:
            return cls.data_parallel(devices)
        shape = mesh if isinstance(mesh, MeshShape) else cls.parse(mesh)
        if devices not in (1, shape.devices):
            raise MTCoreError(f"--mesh {shape} is {shape.devices} device(s), but --devices {devices} was asked for")
        return shape

    @property
    def devices(self) -> int:
        return self.data * self.fsdp * self.tensor

    @property
    def batch_shards(self) -> int:
        """Into how many parts a global batch is split: the tensor axis sees the whole of its part."""
        return self.data * self.fsdp

    def batch_shard(self, rank: int) -> int:
        """Which part of the global batch the rank-per-device process ``rank`` trains on (ranks
        row-major over the mesh: rank = (d x fsdp + f) x tensor + t): every rank of a
        tensor-parallel group the same one."""
        return rank // self.tensor

    def batch_rows(self, rank: int, global_batch: int) -> slice:
        """The rows of a global batch that rank ``rank`` trains on."""
        per = global_batch // self.batch_shards
        return slice(self.batch_shard(rank) * per, (self.batch_shard(rank) + 1) * per)

    def check_batch(self, global_batch: int) -> None:
        """A global batch must split evenly over the batch shards (data x fsdp)."""
        if not self.sharded:
            World(self.devices).check_batch_size(global_batch)
        elif global_batch % self.batch_shards:
            raise MTCoreError(f"--mesh {self}: a global batch of {global_batch} rows cannot be split evenly over its "
                              f"{self.batch_shards} batch shards (data x fsdp); choose a multiple of {self.batch_shards}")

    @property
    def flag(self) -> str:
        """The option that asks for this mesh, for error messages: ``--devices N`` for plain data
        parallelism (its shorthand), ``--mesh ...`` otherwise."""
        return f"--mesh {self}" if self.sharded else f"--devices {self.devices}"

    @property
    def sizes(self) -> dict[str, int]:
        return {axis: getattr(self, axis) for axis in MESH_AXES}

    @property
    def sharded(self) -> bool:
        """Whether any parameter is split (anything but replicated data parallelism)."""
        return self.fsdp > 1 or self.tensor > 1

    def __str__(self) -> str:
        # The axes of size > 1, in mesh order; one device is data:1.
        return ",".join(f"{axis}:{n}" for axis, n in self.sizes.items() if n > 1) or "data:1"

    def check_model(self, cfg) -> None:
        """Every dimension a mesh axis splits must split evenly: an axis never silently replicates
        what it was asked to shard. ``tensor`` splits the attention heads (whole heads to a device)
        and the FFN's hidden units; ``fsdp`` splits the model dimension of every weight."""
        splits = [("tensor", "num_heads", cfg.num_heads, "the model's attention heads"),
                  ("tensor", "ffn_dim", cfg.ffn_dim, "the model's FFN units"),
                  ("fsdp", "d_model", cfg.d_model, "the model's width, which fsdp shards")]
        for axis, name, dim, what in splits:
            n = getattr(self, axis)
            if dim % n:
                raise MTCoreError(f"--mesh {self}: {axis}:{n} does not divide {name}={dim} ({what}); "
                                  f"choose a size that divides {dim}")


def counted_rows(world: World, mesh: MeshShape, global_batch: int) -> slice:
    """The rows of a global batch whose tokens this process counts as its own work: its devices'
    rows; where it is one device of a tensor-parallel group (torch: a process per device), its
    group's rows on the group's first rank and none on the others, so that the processes' counts
    add up to every real token once (tensor-parallel ranks are not counted twice)."""
    if world.processes == 1:
        return slice(0, global_batch)
    if world.local_devices > 1 or mesh.tensor == 1 or world.processes != mesh.devices:
        return world.rows(global_batch)
    return mesh.batch_rows(world.process, global_batch) if world.process % mesh.tensor == 0 else slice(0, 0)


def local_rows(world: World, mesh: MeshShape, global_batch: int) -> int:
    """How many rows of a global batch this process's devices train on: the devices of a
    tensor-parallel group share theirs (devices in process order, row-major over the mesh)."""
    first = world.process * world.local_devices
    shards = {mesh.batch_shard(device) for device in range(first, first + world.local_devices)}
    return len(shards) * (global_batch // mesh.batch_shards)
