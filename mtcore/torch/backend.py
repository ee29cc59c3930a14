"""The PyTorch backend: numpy at the edges, ``torch`` inside. Mirrors ``mtcore/jax/backend.py``."""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import tempfile
from typing import Any

import numpy as np
import torch

from mtcore.backend import read_hf_checkpoint
from mtcore.batch import Batch, check_source
from mtcore.config import COMPILE_MODES, ModelConfig, TrainConfig
from mtcore.costs import HeldBytes, Layout, tally
from mtcore.errors import MTCoreError
from mtcore.parallel import MeshShape
from mtcore.perf import threads
from mtcore.perf.trace import STEP_EVENT
from mtcore.torch import decode, parallel, train
from mtcore.torch.model import Transformer
from mtcore.torch.parallel import (
    interconnect,  # noqa: F401  (Framework: the interface the ranks talk over)
    node_command,  # noqa: F401  (Framework: a node of a multi-node run)
    rank_command,  # noqa: F401  (Framework: the same, as a command line)
)
from mtcore.torch.parallel import launch as launch_ranks  # noqa: F401  (Framework: torch's ranks)
from mtcore.weights import Tree, check_tree

DEVICE_TYPES = {"cpu": "cpu", "gpu": "cuda"}


def compile_mode(compile: bool | str | None) -> bool | str:
    """``compile`` as the train step and decoding take it: False (eager), True (``torch.compile``'s
    default mode) or a mode's name; an unknown name is refused here, not after a first eager step."""
    if compile in (None, False, "none"):
        return False
    if compile in (True, "default"):
        return True
    if compile in COMPILE_MODES:
        return compile
    raise MTCoreError(f"compile: unknown torch.compile mode {compile!r}; choose {', '.join(COMPILE_MODES)}")


# ---- the framework in this process (mtcore.backend.Framework) ----------------------------------
PACKAGES = ("torch",)
PROCESS_PER_DEVICE = True  # a rank per device, started by torch's elastic agent (launch_ranks)


def initialize_distributed(coordinator, num_processes, process_id, cpu_devices=None, interface=None) -> None:
    """torch's ranks join their process group as the backend starts, under torchrun (a run is
    refused this before it starts: train.launch.check_devices)."""
    raise MTCoreError("torch's processes join under torchrun (RANK, WORLD_SIZE, MASTER_ADDR), not through "
                      "--coordinator and --num-processes")


def collective_engine(device: str) -> str:
    return "nccl" if device == "gpu" else "gloo"


def engine_version(device: str) -> str:
    """The version of ``collective_engine(device)``: NCCL's own; gloo is built into torch."""
    if device == "gpu" and torch.cuda.is_available():
        return "NCCL " + ".".join(map(str, torch.cuda.nccl.version()))
    return f"torch {torch.__version__}"


# Where torch's step departs from the textbook's collectives (FSDP2 keeps the root group, the tied
# embedding, gathered from the forward to the backward): what mtcore plan --framework torch predicts.
LAYOUT = Layout(embedding_gathered_once=True)


def unsupported(device: str) -> str | None:
    return "on TPU (torch_xla) is not supported by mtcore" if device == "tpu" else None


# ---- traces (mtcore.perf.trace) ---------------------------------------------------------------------
@contextlib.contextmanager
def profiled(path, device: str = "cpu"):
    """torch's profiler over the block, its Chrome-JSON trace written to ``path`` (``.json.gz``):
    the ops of every thread that runs them, and the collective engine's own spans (``gloo:*`` on
    gloo's threads; on a GPU, kernels)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "gpu" else [])
    with profile(activities=activities) as prof:
        yield
    prof.export_chrome_trace(os.fspath(path))


def step_annotation(step: int, name: str | None = None):
    """The span a traced step runs in (``name``, by default ``mtcore.perf.trace.STEP_EVENT``)."""
    return torch.profiler.record_function(name or STEP_EVENT)


# The collective engines' own spans: gloo's threads, NCCL's kernels; and the ops a rank calls them through.
_COMM_PREFIXES = ("gloo:", "nccl:", "ucc:", "mpi:", "c10d::", "c10d_functional::", "_c10d_functional::")


# The backward graph's nodes wrap the ops they run; outside those ops they are the autograd engine and
# the hooks it calls (FSDP's post-backward hook waits for its reduce-scatter there), not arithmetic.
_AUTOGRAD_NODE = "autograd::engine::evaluate_function"
_BACKWARD_NODE = ("Backward", "Backward0", "Backward1")

# torch.compile compiling a frame it has not seen (a new shape, a guard that failed).
_COMPILING = ("_compile.compile_inner", "compile_fx", "TorchDynamo")


def trace_kind(event: dict) -> str | None:
    """What a trace event of torch's profiler is to the breakdown: "comm" (a collective: the
    engine's spans, the c10d ops that launch and wait for them, NCCL kernels), "compute" (an op on
    a CPU thread, a GPU kernel or copy), "compile" (torch.compile at work), or None (annotations,
    markers: not work of their own)."""
    name, cat = str(event.get("name", "")), event.get("cat")
    if name == STEP_EVENT:  # on a GPU the profiler copies the span onto the device's track too
        return "step" if cat == "user_annotation" else None
    if cat in ("dynamo", "inductor") or name.startswith(_COMPILING):
        return "compile"
    if name.startswith(_COMM_PREFIXES) or (cat == "kernel" and "nccl" in name.lower()):
        return "comm" if cat in ("cpu_op", "user_annotation", "kernel") else None
    if cat == "cpu_op" and (name.startswith(_AUTOGRAD_NODE) or name.endswith(_BACKWARD_NODE)):
        return None  # a node of the backward graph: its ops count; its own time is the engine and hooks
    if cat in ("cpu_op", "kernel", "gpu_memcpy", "gpu_memset"):
        return "compute"
    return None


def set_threads(n: int) -> None:
    """Intra-op threads for CPU work (``mtcore.perf.threads`` pins the process's cores)."""
    torch.set_num_threads(n)


threads.on_import(set_threads)  # a budget given before torch's backend was imported


def configure(*, synchronous_cpu: bool, compile_cache: str | None) -> dict:
    """The process set-up's part (``mtcore.perf.setup``): fp32 matmuls in full precision (torch's
    default, stated, as JAX is told), and inductor's caches in ``compile_cache`` (None: off, each
    compile from scratch in a directory removed at exit). torch's CPU work runs on the calling
    thread anyway (``synchronous_cpu`` changes nothing). Returns what was done."""
    torch.set_float32_matmul_precision("highest")
    if compile_cache:
        # The environment's choice stands (a user's, or a test's cold cache).
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", compile_cache)
        where = os.environ["TORCHINDUCTOR_CACHE_DIR"]
    else:
        from torch._inductor import config as inductor

        inductor.fx_graph_cache = False
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = where = tempfile.mkdtemp(dir=_inductor_root())
    return {"fp32_matmul_precision": "highest", "compile_cache": where if compile_cache else "off"}


def visible_devices() -> list[str]:
    out = [f"cpu ({torch.get_num_threads()} threads)"]
    if torch.cuda.is_available():
        out += [f"gpu:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    return out


def device_counts() -> dict[str, int]:
    return {"cpu": 1, "gpu": torch.cuda.device_count() if torch.cuda.is_available() else 0, "tpu": 0}


def gemm_peak(device: str, dtype: str = "fp32", n: int | None = None, repeats: int = 5) -> float:
    """Best measured FLOP/s of an ``n x n @ n x n`` matmul on ``device`` (``mtcore.perf.timing.peak_flops``)."""
    from mtcore.perf.timing import peak_flops

    n = n or (8192 if device != "cpu" else 1024)
    dev = torch.device(DEVICE_TYPES[device])
    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    a = torch.randn(n, n, device=dev, dtype=dt)
    b = torch.randn(n, n, device=dev, dtype=dt)
    sync = (lambda x: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda x: x)
    return peak_flops(lambda: a @ b, sync, n, repeats)


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """A pickled PyTorch state dict (``pytorch_model.bin``) as float32 numpy arrays."""
    return {k: v.float().numpy() for k, v in torch.load(path, map_location="cpu", weights_only=True).items()}


def fresh_compile_env() -> str:
    """Reset dynamo and point inductor at an empty cache directory, so the next
    ``torch.compile``'d call compiles from scratch. Returns the directory."""
    import torch._dynamo

    torch._dynamo.reset()
    # An empty directory is enough to make this compile fresh; the caches stay on, so later
    # compiles of the same graph in this process (not timed as compiles) may reuse its work.
    # Each is a few MB: one parent per process, removed at exit, so benches do not fill /tmp.
    cache = tempfile.mkdtemp(dir=_inductor_root())
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    return cache


@functools.cache
def _inductor_root() -> str:
    root = tempfile.mkdtemp(prefix="mtcore-inductor-")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


def check_mesh(mesh: MeshShape, device: str = "cpu", precision: str = "fp32") -> None:
    """The meshes this backend trains on; any other is refused, never run as another strategy:
    ``data`` alone is DDP, anything with ``fsdp`` FSDP2 ``fully_shard`` (HSDP with ``data``), ``tensor``
    is ``parallelize_module`` inside. ``data`` x ``tensor`` without ``fsdp`` would need DDP over
    DTensor parameters, which DDP does not take."""
    if not mesh.sharded:
        return
    try:
        from torch.distributed.fsdp import FSDPModule, fully_shard  # noqa: F401  (public since torch 2.6)
    except ImportError:
        FSDPModule = None
    if FSDPModule is None or not hasattr(FSDPModule, "set_force_sum_reduction_for_comms"):
        raise MTCoreError(f"--mesh {mesh}: needs FSDP2's fully_shard with set_force_sum_reduction_for_comms, which "
                          f"torch {torch.__version__} lacks; a newer torch (2.13 is tested)")
    if device == "cpu" and mesh.tensor > 1 and precision == "bf16":
        raise MTCoreError(f"--mesh {mesh} --precision bf16 on CPU: tensor parallelism all-reduces bf16 activations, "
                          "and gloo (torch's CPU collectives) has no bf16; train fp32 on a CPU mesh")
    if mesh.data > 1 and mesh.tensor > 1 and mesh.fsdp == 1:
        raise MTCoreError(f"--mesh {mesh}: torch's DistributedDataParallel takes no DTensor (tensor-parallel) "
                          "parameters; use fsdp instead of data (FSDP2 fully_shard over the batch axis), e.g. "
                          f"fsdp:{mesh.data},tensor:{mesh.tensor}")


class TorchBackend:
    """``devices`` > 1: this process is one rank of a torchrun job (one process per device),
    training a DDP-wrapped model on its rows of each global batch."""

    name = "torch"

    def __init__(self, device: str = "cpu", devices: int = 1, mesh: MeshShape | None = None):
        if device not in DEVICE_TYPES:
            raise MTCoreError(f"torch backend: unknown device {device!r}; expected one of {sorted(DEVICE_TYPES)}")
        if mesh is not None:
            check_mesh(mesh, device)
        self.mesh_shape = mesh or MeshShape.of(devices)
        if device == "gpu" and not torch.cuda.is_available():
            raise MTCoreError("torch backend: device 'gpu' asked for, but torch.cuda.is_available() is False")
        if device == "gpu" and devices > torch.cuda.device_count() and not parallel.under_launcher():
            raise MTCoreError(f"--devices {devices}: torch sees {torch.cuda.device_count()} GPU(s)")
        self.device_kind = device
        self.world, self.device = parallel.init(device, devices)
        self.sharded = self.mesh_shape.sharded
        self.device_mesh = parallel.device_mesh(self.mesh_shape, self.device) if self.sharded else None

    def __repr__(self) -> str:
        return f"TorchBackend(device={self.device_kind!r}, mesh={str(self.mesh_shape)!r})"

    # ---- parameters ----------------------------------------------------------------------------
    def init_params(self, cfg: ModelConfig, seed: int = 0) -> Transformer:
        torch.manual_seed(seed)
        return Transformer(cfg).to(self.device)

    def load_hf(self, path, cfg: ModelConfig | None = None) -> Transformer:
        cfg, tree = read_hf_checkpoint(path, cfg)
        return self.from_numpy(cfg, tree)

    def all_reduce_probe(self, nbytes: int):
        """``run()``: one all-reduce of ``nbytes`` over every rank of the default group, waited
        for (None on one device)."""
        import torch.distributed as dist

        if self.world.devices < 2 or not dist.is_initialized():
            return None
        buffer = torch.zeros(max(1, nbytes // 4), dtype=torch.float32, device=self.device)

        def run() -> None:
            dist.all_reduce(buffer)
            self.sync(buffer)

        return run

    def peak_memory(self, reset: bool = False) -> int | None:
        """Peak device bytes since the last reset (CUDA allocator), or None on CPU. ``reset``:
        start a new window and return None."""
        if self.device.type != "cuda":
            return None
        if reset:
            torch.cuda.reset_peak_memory_stats(self.device)
            return None
        return int(torch.cuda.max_memory_allocated(self.device))

    def to_numpy(self, params: Transformer) -> Tree:
        # Copies: .numpy() of an fp32 CPU tensor is a view of the live parameter, which the next
        # step would change under whoever holds the tree.
        return {k: v.detach().float().cpu().numpy().copy() for k, v in params.state_dict().items()}

    def from_numpy(self, cfg: ModelConfig, tree: Tree) -> Transformer:
        tree = check_tree(cfg, tree)
        model = Transformer(cfg)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in tree.items()})
        return model.to(self.device)

    @staticmethod
    def num_params(params: Transformer) -> int:
        return sum(p.numel() for p in params.parameters() if p.requires_grad)

    # ---- compute -------------------------------------------------------------------------------
    def device_batch(self, batch: Batch | dict, cfg: ModelConfig | None = None) -> dict[str, torch.Tensor]:
        """This rank's rows of a global batch as validated device tensors, what the train step
        takes; a dict that already is one passes through."""
        if isinstance(batch, dict):
            return batch
        if cfg is not None:
            batch.validate(cfg)
        if self.sharded:
            # This rank's part of the data x fsdp split; a tensor-parallel group shares it.
            rows = self.mesh_shape.batch_rows(self.world.process, batch.shape[0])
            return self._tensors(Batch(*(a[rows] for a in batch.arrays().values())))
        return self._tensors(self.world.local(batch))

    def _tensors(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v).to(self.device, non_blocking=True) for k, v in batch.arrays().items()}

    @torch.no_grad()
    def forward(self, params: Transformer, cfg: ModelConfig, batch: Batch) -> np.ndarray:
        params.eval()
        b = self._tensors(batch.validate(cfg))
        logits = params(b["src_ids"], b["src_mask"], b["tgt_in"])  # (B, T, V)
        return logits.float().cpu().numpy()

    def init_train_state(self, params: Transformer, tcfg: TrainConfig) -> train.TrainState:
        """The optimizer over ``params``; on several ranks the model is wrapped in DDP (which
        starts every rank from rank 0's weights)."""
        if self.sharded:  # the optimizer over the sharded (DTensor) parameters
            return train.init_train_state(parallel.parallelize(params, self.mesh_shape, self.device_mesh), tcfg)
        state = train.init_train_state(params, tcfg)
        if self.world.devices > 1:
            state.model = parallel.wrap(params, self.device)
        return state

    def make_train_step(self, cfg: ModelConfig, tcfg: TrainConfig, compile: bool | str = False):
        """``step(state, batch)`` on a global ``Batch`` (this rank takes its rows) or on tensors
        from ``device_batch``. ``compile``: forward and loss through ``torch.compile`` (a string:
        its mode, e.g. "reduce-overhead" for CUDA graphs)."""
        many = self.world.devices > 1
        if self.sharded:
            # Gradients summed over the batch shards (parallel.parallelize); the token totals summed
            # over every rank count each shard once per tensor-parallel rank.
            tensor = self.mesh_shape.tensor
            step = train.make_train_step(cfg, tcfg, compile=compile_mode(compile), world_size=1, sharded=True,
                                         sum_over_ranks=lambda t: parallel.sum_over_ranks(t) / tensor)
        else:
            step = train.make_train_step(cfg, tcfg, compile=compile_mode(compile), world_size=self.world.devices,
                                         sum_over_ranks=parallel.sum_over_ranks if many else None)

        def train_step(state, batch):
            return step(state, self.device_batch(batch, cfg))

        return train_step

    def compile_train_step(self, cfg: ModelConfig, tcfg: TrainConfig, state, batch, compile: bool | str = False,
                           fresh: bool = True):
        """``(step, seconds, state, metrics)`` after the first update: the seconds are its call's
        (with ``compile``: ``torch.compile`` plus that update; from scratch with ``fresh``, else
        inductor may reuse kernels this process already built)."""
        import torch._dynamo

        from mtcore.perf.timing import timed

        compile = compile_mode(compile)
        if compile and fresh:
            fresh_compile_env()
        elif compile:
            torch._dynamo.reset()
        step = self.make_train_step(cfg, tcfg, compile=compile)
        batch = self.device_batch(batch, cfg)
        seconds, (state, metrics) = timed(lambda: step(state, batch), self.sync)
        return step, seconds, state, metrics

    def make_eval_step(self, cfg: ModelConfig, tcfg: TrainConfig):
        """``eval(params, batch)`` on the whole batch, on this process's device."""
        return lambda params, batch: train.eval_step(params, self._tensors(batch.validate(cfg)), tcfg)

    def state_params(self, state: train.TrainState) -> Transformer:
        """The model being trained (unwrapped from DDP; on a sharded mesh a whole copy gathered on
        every rank, a collective each rank calls): what ``forward``, ``generate`` and ``to_numpy``
        take."""
        if self.sharded:
            model = state.model
            whole = Transformer(model.cfg)
            whole.load_state_dict({k: parallel.full_tensor(v).detach() for k, v in model.state_dict().items()})
            return whole.to(self.device)
        return parallel.unwrap(state.model)

    def recorded_step(self, step, state, batch) -> tuple[train.TrainState, dict, list[dict]]:
        """One call of ``step`` (``make_train_step``'s) on ``batch``, and the collectives it ran on
        this rank, per kind and group size, with their bytes, recorded from torch's dispatcher as
        the step runs (``parallel.recorded_collectives``). Record the third step or a later one:
        DDP rebuilds its buckets on the second (a broadcast of their layout)."""
        with parallel.recorded_collectives() as record:
            state, metrics = step(state, batch)
        return state, metrics, tally(record.calls)

    def held_bytes(self, state: train.TrainState) -> HeldBytes:
        """What this rank holds of the trained parameters and AdamW's moments (a DTensor: its local
        shard; FSDP2 pads a first dimension the mesh does not divide), measured from the tensors."""
        from torch.distributed.tensor import DTensor

        def local(t: torch.Tensor) -> int:
            t = t.to_local() if isinstance(t, DTensor) else t
            return t.numel() * t.element_size()

        params = list(parallel.unwrap(state.model).parameters())
        moments = [v for p in params for k, v in state.optimizer.state.get(p, {}).items() if k in ("exp_avg", "exp_avg_sq")]
        return HeldBytes(params=sum(map(local, params)), optimizer=sum(map(local, moments)))

    def step_memory(self) -> tuple[int | None, str]:
        """``(bytes, what they count)`` for the train step last run: the CUDA allocator's peak
        since ``peak_memory(reset=True)``; the CPU allocator keeps no peak."""
        memory = self.peak_memory()
        if memory is None:
            return None, "not measured (CPU allocator has no peak counter; see process_max_rss_bytes)"
        return memory, "CUDA allocator peak"

    def optimizer_to_numpy(self, state: train.TrainState) -> tuple[int, Tree]:
        """``(step, moments)``: AdamW's first and second moments as ``exp_avg.NAME`` and
        ``exp_avg_sq.NAME`` with the parameter names of ``to_numpy``; framework-neutral."""
        moments: Tree = {}
        for name, p in self._named_parameters(parallel.unwrap(state.model)):
            slot = state.optimizer.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                value = slot.get(key)
                moments[f"{key}.{name}"] = (np.zeros(tuple(p.shape), np.float32) if value is None
                                            else parallel.full_tensor(value).detach().float().cpu().numpy().copy())
        return state.step, moments

    def train_state_from_numpy(self, cfg: ModelConfig, tcfg: TrainConfig, tree: Tree, step: int,
                               moments: Tree) -> train.TrainState:
        """The inverse of ``to_numpy`` + ``optimizer_to_numpy``: a train state to resume from."""
        state = self.init_train_state(self.from_numpy(cfg, tree), tcfg)
        fused = bool(state.optimizer.defaults.get("fused"))
        for name, p in self._named_parameters(parallel.unwrap(state.model)):
            slot = {"step": torch.tensor(float(step), dtype=torch.float32, device=p.device if fused else "cpu")}
            for key in ("exp_avg", "exp_avg_sq"):
                value = moments.get(f"{key}.{name}")
                if value is None or tuple(value.shape) != tuple(p.shape):
                    raise MTCoreError(f"optimizer state: {key}.{name} is missing or has the wrong shape")
                whole = torch.tensor(value, dtype=torch.float32, device=p.device)  # its own copy, not the caller's
                slot[key] = parallel.shard_like(whole, p)
            state.optimizer.state[p] = slot
        state.step = int(step)
        return state

    def _named_parameters(self, model) -> list[tuple[str, torch.Tensor]]:
        return list(model.named_parameters())

    def generate(
        self,
        params: Transformer,
        cfg: ModelConfig,
        src_ids: np.ndarray,
        src_mask: np.ndarray | None = None,
        *,
        max_len: int = 64,
        num_beams: int = 1,
        length_penalty: float = 1.0,
        early_stopping: bool | str = False,
        compile: bool | str = False,
    ) -> np.ndarray:
        """``(B, max_len)`` int32 token ids, decoded as Hugging Face's ``generate`` does with a Marian
        checkpoint's own settings (``GenerateConfig.from_hf`` reads them: pass ``**gen.kwargs()``).
        ``compile``: each token's step through ``torch.compile`` (a string: its mode,
        "reduce-overhead" for CUDA graphs); the first call of a shape compiles."""
        src_ids, src_mask = check_source(cfg, src_ids, src_mask, max_len, num_beams, early_stopping)
        compile = compile_mode(compile)
        params.eval()
        ids = torch.from_numpy(src_ids).to(self.device)
        mask = torch.from_numpy(src_mask).to(self.device)
        if num_beams == 1:
            out = decode.greedy(params, ids, mask, max_len, compile)
        else:
            out = decode.beam_search(params, ids, mask, max_len, num_beams, length_penalty, early_stopping, compile)
        return out.cpu().numpy().astype(np.int32)

    def reseed(self, seed: int) -> None:
        """Seed the global RNG dropout draws from, differently for every part of the batch (each
        drops out its own rows) and alike on the ranks of a tensor-parallel group, which hold
        copies of the same activations (different masks there would make the copies disagree);
        JAX keeps its key in the train state."""
        part = self.mesh_shape.batch_shard(self.world.process) if self.sharded else self.world.process
        torch.manual_seed(seed + 1_000_003 * part)

    def sync(self, value: Any = None) -> Any:
        """Wait for queued device work (and so for ``value``); returns ``value``."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return value

    def devices(self) -> list[str]:
        return visible_devices()
