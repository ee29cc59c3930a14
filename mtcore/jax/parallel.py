"""JAX data parallelism: one process drives all its local devices, ``jax.jit`` over a
``Mesh(("data",))`` with the batch split along ``data`` and the train state replicated; several
processes and hosts join through ``jax.distributed``. Mirrors ``mtcore/torch/parallel.py``.

XLA inserts the gradient all-reduce itself (GSPMD). With ``jax_threefry_partitionable`` (JAX's
default since 0.5) dropout masks do not depend on how the batch is split, so N devices train
exactly as one device on the same global batch, dropout included.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mtcore.errors import MTCoreError
from mtcore.parallel import World


def _started() -> bool:
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()


def _distributed() -> bool:
    from jax._src import distributed

    return distributed.global_state.client is not None


def set_cpu_devices(n: int) -> None:
    """CPU host devices for this process: JAX reads the count once, when it creates its backends."""
    if _started():
        have = len(jax.local_devices(backend="cpu"))
        if have < n:
            raise MTCoreError(
                f"JAX's CPU backend already started with {have} device(s); {n} must be asked for before "
                f"JAX starts (jax.config.update('jax_num_cpu_devices', {n}) or XLA_FLAGS="
                f"--xla_force_host_platform_device_count={n})"
            )
        return
    jax.config.update("jax_num_cpu_devices", max(n, jax.config.jax_num_cpu_devices))


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               cpu_devices: int | None = None) -> None:
    """Join a multi-process JAX run. Without arguments JAX finds them itself where it can (TPU
    pods, SLURM); on CPU the processes all-reduce over gloo."""
    if cpu_devices:
        set_cpu_devices(cpu_devices)
    if _started():
        raise MTCoreError("jax.distributed must be initialised before JAX starts its backends")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id, initialization_timeout=120)
    except (RuntimeError, ValueError) as e:
        raise MTCoreError(f"jax.distributed.initialize failed: {e}") from None


def make_mesh(platform: str, devices: int) -> tuple[Mesh, World]:
    """A 1-D ``data`` mesh over ``devices`` devices of ``platform``, the same number from every
    process, in process order."""
    if platform == "cpu" and devices > 1 and not _started() and not _distributed():
        set_cpu_devices(devices)  # one process: all of them are its own
    try:
        seen = jax.devices(platform)
    except RuntimeError:
        raise MTCoreError(f"jax sees no {platform} device") from None
    processes = jax.process_count()
    if devices > len(seen) or devices % processes:
        hint = ("; on CPU, host devices come from jax_num_cpu_devices, set before JAX starts"
                if platform == "cpu" else "")
        raise MTCoreError(
            f"--devices {devices}: jax sees {len(seen)} {platform} device(s) over {processes} process(es): "
            f"{', '.join(f'{d.platform}:{d.id}' for d in seen)}{hint}"
        )
    per_process = devices // processes
    chosen = [d for p in range(processes) for d in [d for d in seen if d.process_index == p][:per_process]]
    if len(chosen) != devices:
        raise MTCoreError(f"--devices {devices}: every one of the {processes} processes needs {per_process} device(s)")
    mesh = Mesh(np.array(chosen), ("data",))
    return mesh, World(devices=devices, processes=processes, process=jax.process_index())


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def split_batch(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def local_copy(tree, device):
    """Each array as a single-device array on ``device`` (this process's copy of replicated state),
    for evaluation, decoding and saving."""

    def one(x):
        if isinstance(x, jax.Array) and len(x.sharding.device_set) > 1:
            return jax.device_put(x.addressable_data(0), device)
        return x

    return jax.tree.map(one, tree)
