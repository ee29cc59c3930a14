"""torch parallelism: one process per device, launched by torch's own launcher (``torchrun`` /
``torch.distributed.run``'s elastic agent). Data parallel (``--mesh data:N``) is
``DistributedDataParallel``; a mesh with ``fsdp`` or ``tensor`` is composed as torchtitan does it, on
``init_device_mesh`` with the axes ``("data", "fsdp", "tensor")``: tensor parallel inside
(``parallelize_module``: ``ColwiseParallel`` for q/k/v and fc1, ``RowwiseParallel`` for the
attention output and fc2), then FSDP2 ``fully_shard`` per layer and at the root (the tied embedding
/ output projection and what is left in one group) over ``data`` x ``fsdp`` (HSDP when both are
above 1). Mirrors ``mtcore/jax/parallel.py``.

Under an existing ``torchrun`` (``RANK``/``WORLD_SIZE`` in the environment) a process joins its
process group; ``launch`` starts such processes for ``mtcore train --devices N`` on one node.
"""

from __future__ import annotations

import datetime
import os
import sys
import uuid
from pathlib import Path

import torch
import torch.distributed as dist

from mtcore.errors import MTCoreError
from mtcore.parallel import MESH_AXES, TENSOR_PLAN, MeshShape, World, under_launcher
from mtcore.perf import threads

# How long a collective waits for a rank that went silent before every rank fails. A rank that
# dies is noticed sooner: torchrun's agent stops the others as soon as one process exits.
TIMEOUT = datetime.timedelta(seconds=float(os.environ.get("MTCORE_DIST_TIMEOUT", 300)))


def init(device_kind: str, devices: int) -> tuple[World, torch.device]:
    """Join (or, single-device, skip) the process group; ``(world, this rank's device)``."""
    if not dist.is_initialized() and not (under_launcher() and int(os.environ["WORLD_SIZE"]) > 1):
        if devices > 1:
            raise MTCoreError(
                f"torch trains on {devices} devices as {devices} processes: start them with "
                f"`torchrun --nproc-per-node {devices} -m mtcore train ...` (or `mtcore train --devices {devices}`, "
                f"which does)"
            )
        return World(), torch.device("cuda" if device_kind == "gpu" else "cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device_kind == "gpu":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        global _LINK
        _LINK = _agree_link(device_kind)
        if device_kind == "cpu" and _LINK.iface != "lo":
            # gloo binds to, and advertises, the address of the interface that reaches the other
            # nodes; by default it takes the hostname's, which many hosts map to loopback.
            os.environ.setdefault("GLOO_SOCKET_IFNAME", _LINK.iface)
        dist.init_process_group("nccl" if device_kind == "gpu" else "gloo", timeout=TIMEOUT,
                                device_id=device if device_kind == "gpu" else None)
    size, rank = dist.get_world_size(), dist.get_rank()
    if devices not in (size, None):
        raise MTCoreError(f"--devices {devices}, but torchrun started {size} processes (one per device)")
    return World(devices=size, processes=size, process=rank), device


_LINK = None  # where this rank's collectives go, once the ranks agreed it (mtcore.hosts.Link)


def interconnect():
    """This rank's ``mtcore.hosts.Link``: None for one process."""
    return _LINK


def _agree_link(device_kind: str):
    """Where this rank's collectives go, before its process group exists: every rank tells the
    others, through the store torchrun's agent hosts (``MASTER_ADDR``), its hostname and the
    address it reached that host at, and ``mtcore.hosts.agree_link`` picks the interface
    (--net-iface, ``MTCORE_NET_IFACE``, or ``GLOO_SOCKET_IFNAME`` where set). Without the agent's
    store (another launcher), every rank is taken to be on this host unless told an interface."""
    import json
    import socket

    from mtcore.hosts import Link, agree_link, resolve

    given = os.environ.get("MTCORE_NET_IFACE")
    gloo = os.environ.get("GLOO_SOCKET_IFNAME")
    if given and gloo and gloo.split(",")[0] != given:
        raise MTCoreError(f"--net-iface {given}, but GLOO_SOCKET_IFNAME={gloo}: gloo would use the one and the other "
                          "would be counted; give one")
    given = given or (gloo.split(",")[0] if gloo else None)
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    master = os.environ.get("MASTER_ADDR", "localhost")
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        local = int(os.environ.get("LOCAL_RANK", 0))
        return Link(given or "lo", 1, int(os.environ.get("LOCAL_WORLD_SIZE", world)), local == 0)
    store = dist.TCPStore(master, int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=datetime.timedelta(seconds=60))
    prefix = f"mtcore/link/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', 0)}"
    store.set(f"{prefix}/{rank}", json.dumps([socket.gethostname(), resolve(master)]))
    keys = [f"{prefix}/{r}" for r in range(world)]
    store.wait(keys)
    everyone = [tuple(json.loads(store.get(k))) for k in keys]
    return agree_link(rank, everyone, given, master, strict=device_kind == "cpu",
                      hint="pass --net-iface IFACE or set GLOO_SOCKET_IFNAME=IFACE")


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP around ``model``: gradients averaged over ranks during backward. Buffers (positions,
    ``final_logits_bias``) never change, so they are not re-broadcast every step."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    # torch 2.13 renamed the switch; older releases know only broadcast_buffers.
    known = inspect.signature(DistributedDataParallel).parameters
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in known else {"broadcast_buffers": False}
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None, **no_sync)


def device_mesh(shape: MeshShape, device: torch.device):
    """The job's ranks as a ``DeviceMesh`` of ``shape`` (row-major: rank = (d x fsdp + f) x tensor + t)."""
    from torch.distributed.device_mesh import init_device_mesh

    if dist.get_world_size() != shape.devices:
        raise MTCoreError(f"--mesh {shape} is {shape.devices} devices, but torchrun started {dist.get_world_size()} ranks")
    return init_device_mesh(device.type, tuple(shape.sizes[a] for a in MESH_AXES), mesh_dim_names=MESH_AXES)


def _layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [*model.encoder.layers, *model.decoder.layers]


def parallelize(model: torch.nn.Module, shape: MeshShape, mesh) -> torch.nn.Module:
    """``model`` (whole, the same weights on every rank) sharded in place over ``mesh``: tensor
    parallel inside each layer, then FSDP2 over the batch axes. Gradients are summed over the
    batch shards, not averaged (the loss is already the global token sum over the global token
    count; and FSDP2 over gloo summed where it should average, pytorch#162338)."""
    if shape.tensor > 1:
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        style = {"column": ColwiseParallel, "row": RowwiseParallel}
        for layer in _layers(model):
            plan = {name: style[TENSOR_PLAN[name.rpartition(".")[2]][0]]() for name, _ in layer.named_modules()
                    if name.rpartition(".")[2] in TENSOR_PLAN}
            parallelize_module(layer, mesh["tensor"], plan)
    if shape.batch_shards > 1:
        from torch.distributed.fsdp import FSDPModule, fully_shard

        batch_mesh = mesh["data", "fsdp"] if shape.data > 1 and shape.fsdp > 1 else mesh["fsdp" if shape.fsdp > 1 else "data"]
        if shape.fsdp == 1:
            # Replicated over data only (data:N,tensor:M): FSDP2 with nothing to shard would still
            # gather; a replicate-only group is DDP's job, which does not take DTensor parameters.
            raise MTCoreError(f"--mesh {shape}: data x tensor without fsdp is not supported by the torch backend (DDP "
                              "takes no DTensor parameters); use fsdp:N,tensor:M")
        for layer in _layers(model):
            fully_shard(layer, mesh=batch_mesh)
        fully_shard(model, mesh=batch_mesh)
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.set_gradient_divide_factor(1.0)
                # A plain SUM collective (gloo has no PREMUL_SUM, what a divide factor asks for).
                module.set_force_sum_reduction_for_comms(True)
    return model


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor gathered whole on every rank (a collective: every rank calls it); a plain tensor as it is."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def shard_like(whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``whole`` split as the DTensor ``like`` is (an optimizer moment for its parameter); a plain
    tensor where ``like`` is one."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(like, DTensor):
        return distribute_tensor(whole, like.device_mesh, like.placements)
    return whole


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(t)
    return t


# ---- what a step moves ----------------------------------------------------------------------------
# torch's collectives by dispatcher op: DDP's gradient buckets and FSDP2's gathers and reductions
# call the c10d ops, DTensor (tensor parallelism, gradient norms of sharded parameters) the
# functional ones. Which argument holds the tensor whose size is the payload: all-gather's output
# (the whole tensor gathered), reduce-scatter's input (the whole tensor reduced), else the tensors.
_C10D = {
    "allreduce_": ("all-reduce", 0), "allreduce_coalesced_": ("all-reduce", 0), "broadcast_": ("broadcast", 0),
    "_allgather_base_": ("all-gather", 0), "allgather_": ("all-gather", 0),
    "allgather_into_tensor_coalesced_": ("all-gather", 0), "_reduce_scatter_base_": ("reduce-scatter", 1),
    "reduce_scatter_": ("reduce-scatter", 1), "reduce_scatter_tensor_coalesced_": ("reduce-scatter", 1),
    "alltoall_base_": ("all-to-all", 1), "alltoall_": ("all-to-all", 1),
}
_FUNCTIONAL = {"all_reduce": "all-reduce", "all_reduce_coalesced": "all-reduce", "all_gather_into_tensor": "all-gather",
               "all_gather_into_tensor_coalesced": "all-gather", "reduce_scatter_tensor": "reduce-scatter",
               "reduce_scatter_tensor_coalesced": "reduce-scatter", "all_to_all_single": "all-to-all",
               "broadcast": "broadcast"}


def _nbytes(x) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    return sum(map(_nbytes, x)) if isinstance(x, (list, tuple)) else 0


def _group_size(func, args) -> int:
    for spec, a in zip(func._schema.arguments, args, strict=False):  # arguments left to their defaults
        if spec.name == "group_name":  # the functional collectives name their group
            return dist.distributed_c10d._resolve_process_group(a).size()
        if isinstance(a, torch.ScriptObject):  # the c10d ops take the group itself
            return dist.ProcessGroup.unbox(a).size()
    return 1


def recorded_collectives():
    """A dispatch mode that records every collective run inside it as ``(kind, devices, payload
    bytes)`` in its ``calls`` (``costs.tally`` sums them as JAX's HLO reading does). It sees
    what goes through torch's dispatcher: DDP's buckets, FSDP2 and DTensor alike; on gloo a
    reduce-scatter is run as an all-reduce of the whole tensor, which this records as asked for."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls: list[tuple[str, int, int]] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if func.namespace == "c10d" and name in _C10D:
                kind, which = _C10D[name]
                self.calls.append((kind, _group_size(func, args), _nbytes(args[which])))
            elif func.namespace == "_c10d_functional" and name in _FUNCTIONAL:
                kind, n = _FUNCTIONAL[name], _group_size(func, args)
                self.calls.append((kind, n, _nbytes(args[0]) * (n if kind == "all-gather" else 1)))
            return func(*args, **(kwargs or {}))

    return Record()


def rank_command(nproc: int, argv: list[str], *, log_dir: str | os.PathLike) -> list[str]:
    """The command line that runs ``python ARGV`` as ``nproc`` ranks on this host under torch's
    elastic agent (``torchrun --standalone``; one process where ``nproc`` is 1), for a caller that
    goes on while they run (a bench talking to its workers); ``launch`` is the same agent, waited for."""
    if nproc == 1:
        return [sys.executable, *argv]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--log-dir", os.fspath(log_dir),
            "--nproc-per-node", str(nproc), *argv]


RDZV_PORT = 29500  # the docs' two-node line's


def node_command(node: int, nodes: int, nproc: int, head: str, argv: list[str], *, log_dir: str | os.PathLike,
                 run_id: str) -> list[str]:
    """``python ARGV`` (``-m mtcore train ...``, or a script) as node ``node`` of ``nodes`` runs
    it: ``nproc`` ranks under torchrun's multi-node rendezvous on ``head`` (the docs' two-node
    line, c10d backend)."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--nproc-per-node", str(nproc),
            "--node-rank", str(node), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{head}:{RDZV_PORT}",
            "--rdzv-id", run_id, "--max-restarts", "0", "--log-dir", os.fspath(log_dir), *argv]


def launch(nproc: int, argv: list[str], *, log_dir: str | os.PathLike, cpu_threads: int | None = None) -> None:
    """Run ``python -m mtcore ARGV`` as ``nproc`` ranks on this node under torch's elastic agent
    (what ``torchrun --standalone`` does). Rank 0 prints to this terminal; every rank's output is
    also kept in ``log_dir``. A rank that fails stops the others and raises ``MTCoreError``
    naming it and its log."""
    from torch.distributed.elastic.multiprocessing.api import DefaultLogsSpecs, Std
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    run_id = str(uuid.uuid4())[:8]
    logs = DefaultLogsSpecs(log_dir=str(log_dir), redirects=dict.fromkeys(range(nproc), Std.ALL), tee={0: Std.ALL})
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=run_id, rdzv_backend="c10d",
        rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.5, logs_specs=logs,
    )
    # torchrun would set OMP_NUM_THREADS=1; mtcore pins each rank to its share of the cores instead:
    # ranks whose threads outnumber the cores fight over them (docs/findings/2026-11-23-thread-budget.md).
    os.environ.setdefault("MTCORE_RANK_THREADS", str(cpu_threads or threads.share(nproc)))
    os.environ["MTCORE_LAUNCHED"] = "1"  # the ranks leave the summary to this process
    try:
        elastic_launch(config, sys.executable)("-m", "mtcore", *argv)
    except ChildFailedError as e:
        # The first to fail is the cause; the others were stopped by the agent.
        rank, failure = e.get_first_failure()
        how = (f"killed by signal {failure.signal_name()}" if failure.exitcode < 0
               else f"exit code {failure.exitcode}")
        log = next(iter(sorted(Path(log_dir).glob(f"{run_id}*/attempt_0/{failure.local_rank}/stderr.log"))), None)
        where = f" (its output: {log})" if log else ""
        raise MTCoreError(f"rank {rank} of {nproc} failed ({how}){where}; every rank was stopped") from None
