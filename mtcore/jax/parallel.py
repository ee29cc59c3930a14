"""JAX parallelism: one process drives all its local devices, one ``jax.jit`` over a
``Mesh(("data", "fsdp", "tensor"))``: the batch split along ``data`` and ``fsdp``, parameters and
optimizer state placed by ``PartitionSpec``s that one table derives from the parameter names
(``fsdp`` shards the model dimension of every weight, ``tensor`` the attention heads and FFN units);
several processes and hosts join through ``jax.distributed``. Mirrors ``mtcore/torch/parallel.py``.

XLA inserts every collective itself (GSPMD): the gradient all-reduce of data parallelism, the
all-gathers and reduce-scatters of FSDP, the activation all-reduces of tensor parallelism. With ``jax_threefry_partitionable`` (JAX's
default since 0.5) dropout masks do not depend on how the batch is split, so N devices train
exactly as one device on the same global batch, dropout included.
"""

from __future__ import annotations

import math
import re
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mtcore.costs import tally
from mtcore.errors import MTCoreError
from mtcore.parallel import MESH_AXES, TENSOR_PLAN, MeshShape, World

# The logical axes of each parameter's trailing dimensions, by its module and parameter name; a
# scanned stack's leading layer axis is never sharded (each scan step reads one whole layer). The
# tensor-parallel layers' follow mtcore.parallel.TENSOR_PLAN: a column layer's kernel (in, out)
# splits its outputs, with its bias; a row layer's its inputs, its bias whole.
LOGICAL_AXES: dict[tuple[str, str], tuple[str, ...]] = {
    **{(layer, p): axes for layer, (split, units) in TENSOR_PLAN.items() for p, axes in (
        {"kernel": ("embed", units), "bias": (units,)} if split == "column" else
        {"kernel": (units, "embed"), "bias": ("embed",)}).items()},
    **{(norm, p): ("embed",) for norm in ("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm",
                                          "layernorm_embedding", "layer_norm") for p in ("scale", "bias")},
    # The tied embedding / output projection: sharded along the model dimension by fsdp, kept whole
    # along tensor (a vocabulary-parallel split would need the vocabulary to divide the axis;
    # Marian's 62,522 words do not divide 4), so both of its uses see the same layout.
    ("shared", "embedding"): ("vocab", "embed"),
}
# Logical axes -> mesh axes (flax's logical partitioning rules): the one place a strategy is defined.
AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", None),
    ("layers", None),
    # The activations between layers (model.BETWEEN_LAYERS): rows split as the batch is, the model
    # dimension whole. Left free, GSPMD may keep the weights' fsdp split and move activations
    # instead, whose bytes grow with the batch (docs/parallelism.md); pinned, fsdp gathers weights.
    ("length", None),
    ("activation_embed", None),
)


def laid_out(fn, mesh: Mesh):
    """``fn`` traced with the rule table and ``mesh`` in force, so the model's
    ``nn.with_logical_constraint`` on its activations takes effect (without them, as on one
    device outside a mesh, it is a no-op)."""

    def traced(*args):
        with nn.logical_axis_rules(AXIS_RULES), jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args)

    return traced


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
               cpu_devices: int | None = None, interface: str | None = None) -> None:
    """Join a multi-process JAX run. Without arguments JAX finds them itself where it can (TPU
    pods, SLURM); on CPU the processes all-reduce over gloo, on the interface ``interconnect``
    chooses (``interface``: --net-iface)."""
    if cpu_devices:
        set_cpu_devices(cpu_devices)
    if _started():
        raise MTCoreError("jax.distributed must be initialised before JAX starts its backends")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id, initialization_timeout=120)
    except (RuntimeError, ValueError) as e:
        raise MTCoreError(f"jax.distributed.initialize failed: {e}") from None
    if coordinator:
        global _LINK
        _LINK = _agree_link(coordinator, interface, strict=bool(cpu_devices))
        if cpu_devices:
            _use_interface(_LINK.iface)


_LINK = None  # where this process's collectives go, once the processes agreed it (mtcore.hosts.Link)


def interconnect():
    """This process's ``mtcore.hosts.Link``: None for one process (or processes JAX found itself)."""
    return _LINK


def _agree_link(coordinator: str, given: str | None, *, strict: bool, timeout_s: float = 60):
    """The processes tell each other, through the coordinator's key-value store, their hostnames
    and the address each reached the coordinator at; ``mtcore.hosts.agree_link`` picks this
    process's interface from that."""
    import json
    import socket

    from jax._src import distributed

    from mtcore.hosts import agree_link, resolve

    client, me = distributed.global_state.client, distributed.global_state.process_id
    head = coordinator.rsplit(":", 1)[0].strip("[]")
    client.key_value_set(f"mtcore/net/{me}", json.dumps([socket.gethostname(), resolve(head)]))
    try:
        everyone = [json.loads(client.blocking_key_value_get(f"mtcore/net/{p}", int(timeout_s * 1000)))
                    for p in range(distributed.global_state.num_processes)]
    except Exception as e:  # noqa: BLE001  (jaxlib raises its own XlaRuntimeError)
        raise MTCoreError(f"jax.distributed: the other processes did not say where they run within {timeout_s:g} s "
                          f"({str(e).splitlines()[0]})") from None
    return agree_link(me, [tuple(x) for x in everyone], given, head, strict=strict)


def _use_interface(iface: str) -> None:
    """gloo's collectives on ``iface`` (on ``lo``, JAX's default: the hostname's address). JAX
    builds them from its distributed client without an interface; this registers the same CPU
    client factory with collectives bound to ``iface``, before the backend starts."""
    if iface == "lo":
        return
    import functools

    from jax._src import distributed, xla_bridge
    from jax._src.lib import _jax

    collectives = _jax.make_gloo_tcp_collectives(distributed_client=distributed.global_state.client, interface=iface)
    xla_bridge.register_backend_factory("cpu", functools.partial(xla_bridge.make_cpu_client, collectives=collectives),
                                        priority=0, fail_quietly=False)


def make_mesh(platform: str, shape: MeshShape | int) -> tuple[Mesh, World]:
    """A ``("data", "fsdp", "tensor")`` mesh of ``shape`` (an int: ``data:N``) over devices of
    ``platform``, the same number from every process, in process order (the tensor axis innermost:
    a tensor-parallel group on one process's devices where it fits)."""
    shape = shape if isinstance(shape, MeshShape) else MeshShape.of(shape)
    devices = shape.devices
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
            f"{shape.flag}: jax sees {len(seen)} {platform} device(s) over {processes} process(es): "
            f"{', '.join(f'{d.platform}:{d.id}' for d in seen)}{hint}"
        )
    per_process = devices // processes
    chosen = [d for p in range(processes) for d in [d for d in seen if d.process_index == p][:per_process]]
    if len(chosen) != devices:
        raise MTCoreError(f"{shape.flag}: every one of the {processes} processes needs {per_process} device(s)")
    grid = np.array(chosen).reshape(*(shape.sizes[axis] for axis in MESH_AXES))  # (data, fsdp, tensor)
    mesh = Mesh(grid, MESH_AXES)
    return mesh, World(devices=devices, processes=processes, process=jax.process_index())


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def split_batch(mesh: Mesh) -> NamedSharding:
    """Rows over ``data`` x ``fsdp``; every device of a tensor-parallel group sees the same rows."""
    return NamedSharding(mesh, nn.logical_to_mesh_axes(("batch",), AXIS_RULES))


def _names(path) -> list[str]:
    return [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", "")))) for k in path]


def logical_axes(path, ndim: int) -> tuple[str | None, ...] | None:
    """The logical axes of the leaf at ``path`` (a parameter, or its AdamW moment: the same names),
    None for what is not a parameter (counters, the random key, constants)."""
    names = _names(path)
    if "consts" in names or len(names) < 2:
        return None
    axes = LOGICAL_AXES.get((names[-2], names[-1]))
    if axes is None or ndim < len(axes):
        return None
    return ("layers",) * (ndim - len(axes)) + axes  # (L, ...) under nn.scan


def state_shardings(mesh: Mesh, state) -> Any:
    """A ``NamedSharding`` for every leaf of ``state`` (arrays or their shapes): parameters and
    their optimizer moments by the rule tables, everything else replicated."""

    def one(path, leaf):
        axes = logical_axes(path, np.ndim(leaf) if not hasattr(leaf, "shape") else len(leaf.shape))
        if axes is None:
            return NamedSharding(mesh, P())
        return NamedSharding(mesh, nn.logical_to_mesh_axes(axes, AXIS_RULES))

    return jax.tree_util.tree_map_with_path(one, state)


def unsharded_parameters(params) -> list[str]:
    """Parameter paths no rule names: every parameter must have one, or a mesh would replicate it
    silently (a test checks the models' trees)."""
    return ["/".join(_names(path)) for path, leaf in jax.tree_util.tree_leaves_with_path(params)
            if logical_axes(path, leaf.ndim) is None]


def local_copy(tree, device):
    """Each array whole, as a single-device array on ``device``: a replicated array's local copy, a
    sharded one gathered (over processes too), for evaluation, decoding and saving."""
    from jax.experimental import multihost_utils

    def one(x):
        if not isinstance(x, jax.Array) or len(x.sharding.device_set) == 1:
            return x
        if x.is_fully_replicated:
            return jax.device_put(x.addressable_data(0), device)
        if x.is_fully_addressable:
            return jax.device_put(x, device)
        return jax.device_put(multihost_utils.process_allgather(x, tiled=True), device)

    return jax.tree.map(one, tree)


# ---- what a compiled step moves -------------------------------------------------------------------
# The collectives GSPMD inserts into a step, as HLO names them (the trace's collective thunks too).
HLO_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_COLLECTIVE = re.compile(r"^\s*(?:ROOT )?%\S+ = (.+?) (" + "|".join(HLO_COLLECTIVES) + ")"
                         r"(?:-start)?\((.*)$")
_WHILE = re.compile(r"^\s*(?:ROOT )?%\S+ = .+? while\(.*\bbody=%([\w.\-]+)")
_CALL = re.compile(r"\b(?:calls|to_apply|body|condition)=(%[\w.\-]+)|\bbranch_computations=\{([^}]*)\}")
_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16)\[([\d,]*)\]")
_BITS = {"pred": 8, "bf16": 16}


def _nbytes(shape_text: str) -> int:
    total = 0
    for dtype, dims in _ARRAY.findall(shape_text):
        bits = _BITS.get(dtype) or int(dtype[1:])
        total += math.prod(int(d) for d in dims.split(",") if d) * bits // 8
    return total


def _group_size(attrs: str) -> int:
    """Devices per replica group, in any of XLA's spellings: ``{{0,1},{2,3}}``, the iota
    ``[2,2]<=[4]`` (groups x size) or ``mesh['axis_0'=2,'axis_1'=1] {'axis_0'}``; a collective-permute
    (``source_target_pairs``) as a pair."""
    m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attrs)
    if m:
        sizes = {k.strip("'"): int(v) for k, v in (part.split("=") for part in m.group(1).split(","))}
        return math.prod(sizes[a.strip().strip("'")] for a in m.group(2).split(",") if a.strip())
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", attrs)
    if m:
        return int(m.group(2))
    m = re.search(r"replica_groups=\{\{([\d,]*)\}", attrs)
    if m:
        return len(m.group(1).split(","))
    m = re.search(r"source_target_pairs=\{([^}]*)\}", attrs)
    return 2 if m else 1


def step_collectives(hlo_text: str) -> list[dict]:
    """The collectives of a compiled program (``compiled.as_text()``), one entry per kind and group
    size: ``calls`` per run of the program (those in a loop's body counted once per trip, from
    XLA's ``known_trip_count``), ``payload`` (the whole tensor each reduces or gathers: an
    all-reduce's or all-gather's result, a reduce-scatter's result times the group) and ``sent``
    (``costs.ring_sent``), in bytes (``costs.tally``)."""
    computations: dict[str, list[str]] = {}
    entry, name = None, None
    for line in hlo_text.splitlines():
        header = re.match(r"^(ENTRY )?%([\w.\-]+) ", line)
        if header and line.rstrip().endswith("{"):
            name = header.group(2)
            computations[name] = []
            entry = name if header.group(1) else entry
        elif name is not None:
            computations[name].append(line)
    runs: dict[str, int] = {}

    def visit(comp: str, times: int) -> None:
        runs[comp] = runs.get(comp, 0) + times
        for line in computations.get(comp, []):
            loop = _WHILE.match(line)
            trips = _TRIPS.search(line)
            for one, branches in _CALL.findall(line):
                for callee in (n.strip().lstrip("%") for n in (one or branches).split(",")):
                    if callee in computations and callee != comp:
                        body = loop and callee == loop.group(1)
                        visit(callee, times * (int(trips.group(1)) if body and trips else 1))

    if entry is None:
        return []
    visit(entry, 1)
    calls = []
    for comp, times in runs.items():
        for line in computations[comp]:
            m = _COLLECTIVE.match(line)
            if not m:
                continue
            shape, kind, attrs = m.groups()
            n = _group_size(attrs)
            payload = _nbytes(shape) * (n if kind == "reduce-scatter" else 1)
            # XLA:CPU runs a combined (tuple) collective as one engine call per operand.
            operands = max(1, len(_ARRAY.findall(shape)) // (2 if kind == "all-gather" and "-start" in line else 1))
            calls += [(kind, n, payload, operands)] * times
    return tally(calls)


def all_reduce_probe(mesh: Mesh, nbytes: int):
    """``run()``: a ``psum`` of ``nbytes`` of fp32 on each device over every axis of ``mesh``,
    compiled once, waited for."""
    axes = tuple(mesh.axis_names)
    per_device = max(1, nbytes // 4)
    # (devices x per_device,): each device holds its own per_device values and sums the others' in.
    values = jax.device_put(np.zeros(mesh.devices.size * per_device, np.float32), NamedSharding(mesh, P(axes)))
    summed = jax.jit(jax.shard_map(lambda v: jax.lax.psum(v, axes), mesh=mesh, in_specs=P(axes), out_specs=P(axes)))
    summed(values).block_until_ready()  # compiled here, not in the first timed call

    def run() -> None:
        summed(values).block_until_ready()

    run.hlo = lambda: summed.lower(values).compile().as_text()  # what it runs, for step_collectives
    return run
