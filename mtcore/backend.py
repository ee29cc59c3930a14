"""The seam between mtcore and a framework.

A backend turns a ``ModelConfig`` into parameters and compiled functions and speaks numpy at its
edges, so the benches, the CLI and the tests never touch a framework directly. Adding a framework
is one folder and one line in ``BACKENDS``.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Protocol

import numpy as np

from mtcore.batch import Batch
from mtcore.config import ModelConfig, TrainConfig
from mtcore.costs import HeldBytes
from mtcore.errors import BackendUnavailable, MTCoreError
from mtcore.parallel import MeshShape, World
from mtcore.weights import Tree, from_hf_state_dict, load_safetensors

# name -> (module, class, the framework it runs on, the packages that must be importable, the pip
# extra that installs them). A framework ``F`` is the folder ``mtcore/F/``; its ``backend.py`` holds
# its Backend classes' home and the process-wide functions of ``Framework``.
BACKENDS = {
    "torch": ("mtcore.torch.backend", "TorchBackend", "torch", ("torch",), "torch"),
    "jax": ("mtcore.jax.backend", "JaxBackend", "jax", ("jax", "flax", "optax"), "jax"),
    # The baseline: Hugging Face MarianMTModel under the torch backend's train step.
    "hf": ("mtcore.torch.hf", "HFBackend", "torch", ("torch", "transformers"), "hf"),
}


class Framework(Protocol):
    """What a framework does for the process as a whole, apart from any one model: module-level
    functions of ``mtcore/<framework>/backend.py``, reached through ``framework(name)``, so no
    module outside a framework's folder imports it."""

    PACKAGES: tuple[str, ...]  # whose versions a run records

    def set_threads(self, n: int) -> None: ...
    # The process set-up's part (mtcore.perf.setup): fp32 matmuls in full precision, CPU dispatch,
    # the persistent compile cache; returns what it did, for the run's record.
    def configure(self, *, synchronous_cpu: bool, compile_cache: str | None) -> dict: ...
    def visible_devices(self) -> list[str]: ...
    def device_counts(self) -> dict[str, int]: ...
    def gemm_peak(self, device: str, dtype: str = "fp32", n: int | None = None, repeats: int = 5) -> float: ...
    # Refuses, in one line naming the API it lacks, a mesh the framework cannot train on.
    def check_mesh(self, mesh: MeshShape, device: str = "cpu", precision: str = "fp32") -> None: ...
    # How a run on several devices is laid out in processes. ``PROCESS_PER_DEVICE`` (torch): one
    # process per device, started here by the framework's launcher (``launch_ranks``: torch's
    # elastic agent); else (JAX) one process drives all its local devices, and processes on several
    # hosts join with ``initialize_distributed`` (jax.distributed).
    PROCESS_PER_DEVICE: bool
    def launch_ranks(self, nproc: int, argv: list[str], *, log_dir, cpu_threads: int | None = None) -> None: ...
    # The command line that starts ``python ARGV`` as a run's processes on this host, for a caller
    # that goes on while they run (the benches' workers): the same launcher, not waited for.
    def rank_command(self, nproc: int, argv: list[str], *, log_dir) -> list[str]: ...
    def initialize_distributed(self, coordinator: str | None, num_processes: int | None, process_id: int | None,
                               cpu_devices: int | None = None, interface: str | None = None) -> None: ...
    # The command line that runs ``python ARGV`` as host ``node`` of ``nodes`` in a multi-node run
    # of ``nproc`` processes per node with ``head`` as its rendezvous (the docs' two-node lines:
    # torchrun's c10d rendezvous, jax.distributed's coordinator): what runs on emulated hosts.
    def node_command(self, node: int, nodes: int, nproc: int, head: str, argv: list[str], *, log_dir,
                     run_id: str) -> list[str]: ...
    # Where this process's collectives go (mtcore.hosts.Link: the interface, "lo" when every process
    # runs on this host; the hosts; the processes on this one), as the processes agreed it when
    # they joined: None for one process.
    def interconnect(self) -> Any: ...
    # What carries the collectives on ``device`` ("gloo", "nccl", "xla-gloo"): costs.wire_prediction
    # predicts the bytes each sends.
    def collective_engine(self, device: str) -> str: ...
    # Its version, part of what the regression gate keys the bytes a step moves by.
    def engine_version(self, device: str) -> str: ...
    # Where the framework's step departs from the textbook's collectives (costs.Layout): what
    # mtcore plan --framework predicts.
    LAYOUT: Any
    # Why the framework cannot run on ``device`` at all in mtcore, after its name ("on TPU (...) is
    # not supported"); None: it can, where it sees one.
    def unsupported(self, device: str) -> str | None: ...
    # Traces (mtcore.perf.trace): the framework's profiler over a block, its Chrome-JSON trace
    # written to ``path``; the span one traced step runs in; and what each of its events is to the
    # breakdown ("compute", "comm", "compile", "step": the step's span, or None: not work of its own).
    def profiled(self, path: Any, device: str = "cpu") -> Any: ...
    def step_annotation(self, step: int, name: str | None = None) -> Any: ...
    def trace_kind(self, event: dict) -> str | None: ...


class Backend(Protocol):
    """Everything the Trainer, the benches, the CLI and the tests call, with one meaning in every
    backend. Parameters (``params``) are one device's copy; a train state may be replicated over
    ``world.devices`` devices (torch: DDP ranks, one per process; JAX: a mesh)."""

    name: str
    device_kind: str
    world: World  # the devices this backend trains on, and this process's place among them

    # ---- parameters: numpy at the edges, framework-neutral names (mtcore.weights) --------------
    def init_params(self, cfg: ModelConfig, seed: int = 0) -> Any: ...
    def load_hf(self, path: Any, cfg: ModelConfig | None = None) -> Any: ...
    def to_numpy(self, params: Any) -> dict[str, np.ndarray]: ...
    def from_numpy(self, cfg: ModelConfig, tree: dict[str, np.ndarray]) -> Any: ...
    def num_params(self, params: Any) -> int: ...

    # ---- training ----------------------------------------------------------------------------
    def init_train_state(self, params: Any, tcfg: TrainConfig) -> Any: ...
    def state_params(self, state: Any) -> Any: ...
    def optimizer_to_numpy(self, state: Any) -> tuple[int, dict[str, np.ndarray]]: ...
    def train_state_from_numpy(self, cfg: ModelConfig, tcfg: TrainConfig, tree: dict[str, np.ndarray], step: int,
                               moments: dict[str, np.ndarray]) -> Any: ...
    def device_batch(self, batch: Batch | dict, cfg: ModelConfig | None = None) -> dict: ...
    # ``step(state, batch) -> (state, metrics)`` on a global batch; ``compile``: torch.compile
    # (JAX always compiles).
    def make_train_step(self, cfg: ModelConfig, tcfg: TrainConfig, compile: bool | str = ...): ...
    # ``(step, compile seconds, state, metrics)`` after the first update.
    def compile_train_step(self, cfg: ModelConfig, tcfg: TrainConfig, state: Any, batch: Any, compile: bool | str = ...,
                           fresh: bool = True) -> tuple: ...
    def reseed(self, seed: int) -> None: ...
    def step_memory(self) -> tuple[int | None, str]: ...
    # What one device holds of the trained parameters and optimizer state, from its shards.
    def held_bytes(self, state: Any) -> HeldBytes: ...
    # One call of ``step`` on ``batch``, a real training step, and the collectives it ran on a
    # device with their bytes (``costs.tally``'s rows): ``(state, metrics, collectives)``. JAX reads
    # them from the compiled HLO, torch records them as the step runs.
    def recorded_step(self, step: Any, state: Any, batch: Any) -> tuple[Any, dict, list[dict]]: ...
    def peak_memory(self, reset: bool = False) -> int | None: ...
    # ``run()`` that all-reduces ``nbytes`` of fp32 over every device of the world and waits for
    # it: a step's all-reduce alone, timed apart from the step (None on one device).
    def all_reduce_probe(self, nbytes: int) -> Any: ...

    # ---- evaluation and decoding (one device, whole batch) ---------------------------------------
    def forward(self, params: Any, cfg: ModelConfig, batch: Batch) -> np.ndarray: ...
    def make_eval_step(self, cfg: ModelConfig, tcfg: TrainConfig): ...
    def generate(self, params: Any, cfg: ModelConfig, src_ids: np.ndarray, src_mask=None, **kw) -> np.ndarray: ...

    def sync(self, value: Any = None) -> Any: ...
    def devices(self) -> list[str]: ...


def available(name: str) -> str | None:
    """None if backend ``name`` can be used, else why not."""
    if name not in BACKENDS:
        return f"unknown backend {name!r}"
    _, _, _, packages, extra = BACKENDS[name]
    for package in packages:
        try:
            importlib.import_module(package)
        except ImportError as e:
            return f"{package} is not installed ({e}); pip install 'mtcore[{extra}]'"
    return None


def backend(name: str, device: str = "cpu", devices: int = 1, mesh: str | MeshShape | None = None) -> Backend:
    """The backend of framework ``name`` ("torch" or "jax") on ``device`` ("cpu", "gpu", "tpu"),
    training data-parallel on ``devices`` of them, or on the device ``mesh`` (``fsdp:2,tensor:2``;
    see ``mtcore.parallel``)."""
    if name not in BACKENDS:
        raise MTCoreError(f"unknown backend {name!r}; known backends: {', '.join(BACKENDS)}")
    reason = available(name)
    if reason:
        raise BackendUnavailable(f"backend {name!r} unavailable: {reason}")
    module, cls, _, _, _ = BACKENDS[name]
    if not (isinstance(devices, int) and devices >= 1):
        raise MTCoreError(f"devices must be a positive int, got {devices!r}")
    if mesh is not None:
        mesh = MeshShape.of(devices, mesh)
        return getattr(importlib.import_module(module), cls)(device, mesh.devices, mesh=mesh)
    return getattr(importlib.import_module(module), cls)(device, devices)


def framework(name: str) -> Framework:
    """The framework backend ``name`` runs on (``hf`` runs on torch), as its process-wide functions;
    BackendUnavailable where it is not installed."""
    reason = available(name)
    if reason:
        raise BackendUnavailable(f"backend {name!r} unavailable: {reason}")
    return importlib.import_module(_framework_module(name))


def imported_frameworks() -> list[Framework]:
    """The frameworks whose backend module this process has imported already; importing nothing
    to answer (``mtcore.perf.threads`` sizes these at once, the others as they are imported)."""
    modules = dict.fromkeys(_framework_module(b) for b in BACKENDS)  # hf shares torch's
    return [sys.modules[m] for m in modules if m in sys.modules]


def _framework_module(name: str) -> str:
    return f"mtcore.{framework_of(name)}.backend"


def framework_of(name: str) -> str:
    """The framework backend ``name`` runs on: ``hf`` -> ``torch``."""
    if name not in BACKENDS:
        raise MTCoreError(f"unknown backend {name!r}; known backends: {', '.join(BACKENDS)}")
    return BACKENDS[name][2]


# ---- loading Hugging Face checkpoints: every backend's load_hf, and --init-from -------------------
def read_hf_checkpoint(path: str | os.PathLike, cfg: ModelConfig | None = None) -> tuple[ModelConfig, Tree]:
    """Config and canonical tree of a local Hugging Face Marian checkpoint directory."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise MTCoreError(f"{path}: not a directory; expected a Hugging Face Marian checkpoint directory")
    cfg = cfg or ModelConfig.from_hf(path)
    st = os.path.join(path, "model.safetensors")
    bin_ = os.path.join(path, "pytorch_model.bin")
    if os.path.isfile(st):
        state = load_safetensors(st)
    elif os.path.isfile(bin_):
        if available("torch"):
            raise MTCoreError(f"{bin_}: reading .bin checkpoints needs PyTorch; convert it to safetensors")
        state = framework("torch").load_state_dict(bin_)
    else:
        raise MTCoreError(f"{path}: no model.safetensors or pytorch_model.bin (sharded checkpoints are not supported)")
    return cfg, from_hf_state_dict(cfg, state, where=path)
