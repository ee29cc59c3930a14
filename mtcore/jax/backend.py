"""The JAX backend: numpy at the edges, ``jax`` inside. Mirrors ``mtcore/torch/backend.py``."""

from __future__ import annotations

import contextlib
import sys
from functools import cache
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtcore.backend import read_hf_checkpoint
from mtcore.batch import Batch, check_source
from mtcore.config import ModelConfig, TrainConfig
from mtcore.costs import HeldBytes, Layout
from mtcore.errors import MTCoreError
from mtcore.jax import decode, parallel, train
from mtcore.jax.model import Transformer
from mtcore.jax.parallel import initialize as initialize_distributed  # noqa: F401  (Framework: jax.distributed)
from mtcore.jax.parallel import interconnect  # noqa: F401  (Framework: the interface the processes talk over)
from mtcore.jax.variables import from_flax_leaves, to_flax_variables
from mtcore.parallel import MeshShape
from mtcore.perf import threads
from mtcore.perf.trace import STEP_EVENT
from mtcore.weights import Tree, check_tree

PLATFORMS = {"cpu": "cpu", "gpu": "gpu", "tpu": "tpu"}


# ---- the framework in this process (mtcore.backend.Framework) ----------------------------------
PACKAGES = ("jax", "jaxlib", "flax", "optax")
PROCESS_PER_DEVICE = False  # one process drives all its local devices; hosts join with initialize_distributed


def launch_ranks(nproc: int, argv: list[str], *, log_dir, cpu_threads: int | None = None) -> None:
    raise MTCoreError("JAX runs one process over all its local devices: there are no ranks to launch")


def rank_command(nproc: int, argv: list[str], *, log_dir) -> list[str]:
    """One process drives every local device: ``python ARGV``."""
    return [sys.executable, *argv]


COORDINATOR_PORT = 1234  # the docs' two-node line's


def node_command(node: int, nodes: int, nproc: int, head: str, argv: list[str], *, log_dir, run_id: str) -> list[str]:
    """``python ARGV`` (``-m mtcore train ...``, or a script that takes the same three options) as
    host ``node`` of ``nodes`` runs it: one process over the host's devices, joined through
    ``jax.distributed`` with its coordinator on ``head`` (the docs' two-node line)."""
    return [sys.executable, *argv, "--coordinator", f"{head}:{COORDINATOR_PORT}", "--num-processes", str(nodes),
            "--process-id", str(node)]


def collective_engine(device: str) -> str:
    return {"cpu": "xla-gloo", "gpu": "xla-nccl"}.get(device, "xla-ici")


def engine_version(device: str) -> str:
    """The version of ``collective_engine(device)``: XLA's collectives are built into jaxlib."""
    import jaxlib

    return f"jaxlib {jaxlib.__version__}"


# Where JAX's compiled step departs from the textbook's collectives (XLA reduces the tied embedding's
# gradient per use; its CPU backend all-reduces where FSDP reduce-scatters): mtcore plan --framework jax.
LAYOUT = Layout(embedding_gathered_once=True, embedding_reduced_per_use=True, fsdp_gradients_all_reduced_on=("cpu",))


def unsupported(device: str) -> str | None:
    return None


# ---- traces (mtcore.perf.trace) ---------------------------------------------------------------------
@contextlib.contextmanager
def profiled(path, device: str = "cpu"):
    """JAX's profiler over the block, its Chrome-JSON (perfetto) trace moved to ``path``
    (``.json.gz``): the XLA program's thunks on every thread that runs them, collectives included.
    Python's own tracer is left off: its events are not work and it slows the host."""
    import glob
    import shutil
    import tempfile
    from pathlib import Path

    path = Path(path)
    where = tempfile.mkdtemp(prefix="jax-trace-", dir=path.parent)
    options = jax.profiler.ProfileOptions()
    options.python_tracer_level = 0
    jax.profiler.start_trace(where, create_perfetto_trace=True, profiler_options=options)
    written: list[str] = []
    try:
        yield
    finally:
        try:
            jax.profiler.stop_trace()
            written = glob.glob(f"{where}/plugins/profile/*/perfetto_trace.json.gz")
            if written:
                shutil.move(written[0], path)
        finally:
            shutil.rmtree(where, ignore_errors=True)
    if not written:
        raise MTCoreError(f"JAX's profiler wrote no perfetto trace under {where}")


def step_annotation(step: int, name: str | None = None):
    """The span a traced step runs in (``name``, by default ``mtcore.perf.trace.STEP_EVENT``)."""
    return jax.profiler.StepTraceAnnotation(name or STEP_EVENT, step_num=step)


# HLO's collectives, as the thunks that run them are named (``all-reduce.12``, ``all-gather-start.3``).
_COLLECTIVES = (*parallel.HLO_COLLECTIVES, "ragged-all-to-all", "collective-broadcast", "send", "recv")


# What jit does for a program it has not compiled yet: trace, lower, and XLA's compile.
_COMPILING = ("trace_to_jaxpr", "lower_sharding_computation", "backend_compile")


def trace_kind(event: dict) -> str | None:
    """What a trace event of JAX's profiler is to the breakdown: a thunk of the XLA program (it
    names its HLO op) is "comm" when the op is a collective, else "compute"; jit tracing, lowering
    or compiling a program is "compile"; anything else (the runtime's umbrellas, markers, the
    dispatching thread's waits) is None."""
    op = (event.get("args") or {}).get("hlo_op")
    if not isinstance(op, str):
        name = str(event.get("name", ""))
        return "step" if name == STEP_EVENT else "compile" if name.startswith(_COMPILING) else None
    return "comm" if op.rsplit(".", 1)[0].startswith(_COLLECTIVES) else "compute"


def set_threads(n: int) -> None:
    """XLA:CPU sizes its thread pool from the cores the process may use when its backend starts
    (``mtcore.perf.threads`` pins them); afterwards nothing changes it, so say so rather than pretend."""
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        import warnings

        warnings.warn(f"JAX's CPU backend already started: its thread pool keeps its size, not {n}", stacklevel=3)


threads.on_import(set_threads)  # a budget given before JAX's backend module was imported


def configure(*, synchronous_cpu: bool, compile_cache: str | None) -> dict:
    """The process set-up's part (``mtcore.perf.setup``), before JAX starts its backends: fp32
    matmuls in full precision (XLA would run them as TF32 on NVIDIA GPUs, torch does not), CPU
    programs on the calling thread (``synchronous_cpu``), and the persistent compilation cache in
    ``compile_cache`` (None: off). Returns what was done."""
    jax.config.update("jax_default_matmul_precision", "highest")
    if compile_cache:
        jax.config.update("jax_enable_compilation_cache", True)
        jax.config.update("jax_compilation_cache_dir", compile_cache)
    else:
        jax.config.update("jax_enable_compilation_cache", False)
    out = {"fp32_matmul_precision": "highest", "compile_cache": compile_cache or "off"}
    if synchronous_cpu:
        out["cpu_dispatch"] = run_on_calling_thread()
    return out


def run_on_calling_thread() -> str:
    """Turn JAX's asynchronous CPU dispatch off (before its CPU backend exists; it reads the flag
    once), so XLA's per-run buffers come from the main heap that ``mtcore.perf.allocator`` keeps;
    a timed step is waited for anyway. Returns what the backend runs with."""
    from jax._src import xla_bridge  # as set_threads: no public API asks this

    if not xla_bridge.backends_are_initialized():
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    elif jax.config.read("jax_cpu_enable_async_dispatch"):
        # Too late to change: the CPU client read the flag when it started. Say what it read.
        return "asynchronous (JAX's backends had started before it could be changed)"
    return "synchronous (programs run on the calling thread)"


def visible_devices() -> list[str]:
    return [f"{d.platform}:{d.id} {d.device_kind}" for d in jax.devices()] + (
        [] if jax.default_backend() == "cpu" else [f"cpu:{d.id} {d.device_kind}" for d in jax.devices("cpu")]
    )


def device_counts() -> dict[str, int]:
    counts = {}
    for kind in PLATFORMS:
        try:
            counts[kind] = len(jax.devices(PLATFORMS[kind]))
        except RuntimeError:
            counts[kind] = 0
    return counts


def gemm_peak(device: str, dtype: str = "fp32", n: int | None = None, repeats: int = 5) -> float:
    """Best measured FLOP/s of an ``n x n @ n x n`` matmul on ``device`` (``mtcore.perf.timing.peak_flops``)."""
    from mtcore.perf.timing import peak_flops

    n = n or (8192 if device != "cpu" else 1024)
    dt = jnp.bfloat16 if dtype == "bf16" else jnp.float32
    dev = jax.devices(PLATFORMS[device])[0]
    keys = jax.random.split(jax.random.key(0))
    a = jax.device_put(jax.random.normal(keys[0], (n, n), dt), dev)
    b = jax.device_put(jax.random.normal(keys[1], (n, n), dt), dev)
    # Full fp32 precision: XLA would otherwise use TF32 on GPUs for fp32 matmuls.
    f = jax.jit(lambda x, y: jnp.matmul(x, y, precision="highest" if dtype == "fp32" else None))
    return peak_flops(lambda: f(a, b), jax.block_until_ready, n, repeats)


def fresh_compile(fn, *args: Any, clear: bool = True, **jit_kwargs: Any) -> tuple[float, float, Any]:
    """(trace+lower seconds, XLA compile seconds, compiled) for a compile nothing can reuse: new
    function object, persistent cache off, in-memory caches cleared (unless ``clear`` is False)."""
    import time

    cache_on = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        if clear:
            jax.clear_caches()
        fresh = jax.jit(lambda *a: fn(*a), **jit_kwargs)  # a new function object: no tracing cache hit
        start = time.perf_counter()
        lowered = fresh.lower(*args)
        traced = time.perf_counter()
        compiled = lowered.compile()
    finally:
        jax.config.update("jax_enable_compilation_cache", cache_on)
    return traced - start, time.perf_counter() - traced, compiled


def compiled_memory(compiled: Any) -> int | None:
    """XLA's own account of a compiled program's memory: arguments + outputs + temporaries,
    less what donation lets outputs reuse."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        return None
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def check_mesh(mesh: MeshShape, device: str = "cpu", precision: str = "fp32") -> None:
    """Every mesh of ``data``, ``fsdp`` and ``tensor`` is one ``jax.jit`` (GSPMD): nothing to refuse."""


class JaxBackend:
    """On a mesh (``mesh``, or ``devices`` > 1: ``data:N``) of this process's devices (or, under
    ``jax.distributed``, the same number from every process): each global batch split along
    ``data`` x ``fsdp``, the train state placed by ``parallel.state_shardings`` (replicated under
    plain data parallelism), the step compiled with those shardings pinned in and out. Evaluation
    and decoding run on this process's first device, on a gathered copy."""

    name = "jax"

    def __init__(self, device: str = "cpu", devices: int = 1, mesh: MeshShape | None = None):
        if device not in PLATFORMS:
            raise MTCoreError(f"jax backend: unknown device {device!r}; expected one of {sorted(PLATFORMS)}")
        self.mesh_shape = mesh or MeshShape.of(devices)
        try:
            self.mesh, self.world = parallel.make_mesh(PLATFORMS[device], self.mesh_shape)
        except MTCoreError as e:
            raise MTCoreError(f"jax backend: {e}") from None
        # The first of the mesh's devices this process drives (process 0's device is another
        # process's to use).
        self.jax_device = next(d for d in self.mesh.devices.flat if d.process_index == jax.process_index())
        self.replicated = parallel.replicated(self.mesh)
        self.split = parallel.split_batch(self.mesh)
        self.device_kind = device
        self.last_compiled_memory = None

    def __repr__(self) -> str:
        return f"JaxBackend(device={self.device_kind!r}, mesh={str(self.mesh_shape)!r})"

    # ---- parameters ----------------------------------------------------------------------------
    def init_params(self, cfg: ModelConfig, seed: int = 0) -> dict[str, Any]:
        b, t = 1, 1
        ids = jnp.zeros((b, t), jnp.int32)
        with jax.default_device(self.jax_device):
            variables = jax.jit(Transformer(cfg).init)(jax.random.key(seed), ids, ids, ids)
        return jax.device_put(variables, self.jax_device)

    def load_hf(self, path, cfg: ModelConfig | None = None) -> dict[str, Any]:
        cfg, tree = read_hf_checkpoint(path, cfg)
        return self.from_numpy(cfg, tree)

    def to_numpy(self, params: dict[str, Any]) -> Tree:
        flat = {_path(p): np.asarray(v, np.float32) for p, v in jax.tree_util.tree_leaves_with_path(params)}
        return from_flax_leaves(flat)

    def from_numpy(self, cfg: ModelConfig, tree: Tree) -> dict[str, Any]:
        variables = to_flax_variables(cfg, check_tree(cfg, tree))
        return jax.device_put(jax.tree.map(jnp.asarray, variables), self.jax_device)

    @staticmethod
    def num_params(params: dict[str, Any]) -> int:
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params["params"]))

    # ---- compute -------------------------------------------------------------------------------
    def device_batch(self, batch: Batch | dict, cfg: ModelConfig | None = None) -> dict[str, jax.Array]:
        """A global batch as validated arrays split along the mesh (each process places its own
        rows), what the train step takes; a dict that already is one passes through."""
        if isinstance(batch, dict):
            return batch
        if cfg is not None:
            batch.validate(cfg)
        if self.world.processes == 1:
            return jax.device_put(batch.arrays(), self.split)
        # Every process planned the same global batch: each places the blocks its devices hold,
        # whatever the mesh (a tensor-parallel group may span processes).
        return {k: jax.make_array_from_callback(v.shape, self.split, lambda index, v=v: v[index])
                for k, v in batch.arrays().items()}

    def forward(self, params: dict[str, Any], cfg: ModelConfig, batch: Batch) -> np.ndarray:
        b = jax.device_put(batch.validate(cfg).arrays(), self.jax_device)
        logits = _forward(cfg)(params, b["src_ids"], b["src_mask"], b["tgt_in"])  # (B, T, V)
        return np.asarray(logits, np.float32)

    def state_shardings(self, state) -> Any:
        """Where every leaf of a train state (or its shapes) lives on the mesh."""
        return parallel.state_shardings(self.mesh, state)

    def init_train_state(self, params: dict[str, Any], tcfg: TrainConfig) -> train.TrainState:
        """A fresh optimizer state around ``params``, placed on the mesh (the step donates it, so
        the caller's params are copied, not taken)."""
        host = jax.tree.map(np.asarray, params)
        placed = jax.device_put(host, self.state_shardings(host))
        shapes = jax.eval_shape(lambda v: train.init_train_state(v, tcfg), host)
        return _init_train_state(tcfg, self.state_shardings(shapes))(placed)

    def _jit_kwargs(self, state) -> dict[str, Any]:
        """The step's shardings, pinned: the state comes back where it went in (so the next step
        compiles nothing new) and is donated; the metrics are replicated scalars."""
        shardings = self.state_shardings(state)
        return {"in_shardings": (shardings, self.split), "out_shardings": (shardings, self.replicated),
                "donate_argnums": 0}

    def make_train_step(self, cfg: ModelConfig, tcfg: TrainConfig, compile: bool | str = True):
        """``step(state, batch)`` on a global ``Batch`` or on arrays from ``device_batch``; JAX
        always compiles, so ``compile`` changes nothing."""
        self.mesh_shape.check_model(cfg)
        steps: dict[Any, Any] = {}

        def jitted(state):
            structure = jax.tree.structure(state)
            if structure not in steps:
                steps[structure] = _sharded_step(cfg, tcfg, self.mesh, self._jit_kwargs(state))
            return steps[structure]

        def train_step(state, batch):
            return jitted(state)(state, self.device_batch(batch, cfg))

        # The program a call would run, compiled (from jit's caches when it has run): recorded_step reads it.
        train_step.compiled = lambda state, batch: jitted(state).lower(state, self.device_batch(batch, cfg)).compile()
        return train_step

    def compile_train_step(self, cfg: ModelConfig, tcfg: TrainConfig, state, batch, compile: bool | str = True,
                           fresh: bool = True):
        """``(step, seconds, state, metrics)`` after the first update: the step compiled ahead of
        time (JAX always compiles, so ``compile`` changes nothing; with ``fresh`` the in-memory
        caches are cleared first, without it the last compile of the same program is reused); the
        seconds are that compile's tracing, lowering and compiling alone. The
        compiled step's XLA memory account is kept in ``self.last_compiled_memory``."""
        self.mesh_shape.check_model(cfg)
        batch = self.device_batch(batch, cfg)
        # The program is fixed by the configs, the device and the batch's shapes (the state's follow
        # from the configs). A fresh compile replaces the stored one; a non-fresh call reuses it, with
        # the seconds that compile took: a second compile of the same program would measure nothing new.
        key = (cfg, tcfg, str(self.mesh.devices.tolist()),
               tuple((k, v.shape, str(v.dtype)) for k, v in sorted(batch.items())))
        if fresh or key not in _COMPILED_STEPS:
            fn = _step_function(cfg, tcfg, self.mesh)
            trace_s, compile_s, compiled = fresh_compile(fn, state, batch, clear=fresh, **self._jit_kwargs(state))
            _COMPILED_STEPS[key] = (compiled, trace_s + compile_s)
        compiled, seconds = _COMPILED_STEPS[key]
        self.last_compiled_memory = compiled_memory(compiled)
        state, metrics = compiled(state, batch)
        return compiled, seconds, state, metrics

    def all_reduce_probe(self, nbytes: int):
        """``run()``: one all-reduce of ``nbytes`` over every device of the mesh (a ``psum`` in
        ``shard_map``), waited for (None on one device)."""
        if self.mesh.devices.size < 2:
            return None
        return parallel.all_reduce_probe(self.mesh, nbytes)

    def peak_memory(self, reset: bool = False) -> int | None:
        """Peak device bytes of this process (XLA's allocator; it cannot be reset), None on CPU."""
        if reset or self.device_kind == "cpu":
            return None
        stats = self.jax_device.memory_stats() or {}
        return stats.get("peak_bytes_in_use")

    def make_eval_step(self, cfg: ModelConfig, tcfg: TrainConfig):
        """``eval(params, batch)`` on the whole batch, on this process's first device."""
        step = train.make_eval_step(cfg, tcfg)
        return lambda params, batch: step(params, jax.device_put(batch.validate(cfg).arrays(), self.jax_device))

    def state_params(self, state: train.TrainState) -> dict[str, Any]:
        """The parameters being trained, as this process's single-device copy: what ``forward``,
        ``generate`` and ``to_numpy`` take."""
        return parallel.local_copy({"params": state.params, "consts": state.consts}, self.jax_device)

    def recorded_step(self, step, state, batch) -> tuple[train.TrainState, dict, list[dict]]:
        """One call of ``step`` (``make_train_step``'s, or a compiled step ``compile_train_step``
        returned) on ``batch``, and the collectives it runs on a device, per kind and group size,
        with their bytes, read from the compiled program's HLO: what GSPMD inserted
        (``parallel.step_collectives``). The program's XLA memory account is kept for
        ``step_memory``."""
        # Read before the call: the step donates the state's buffers.
        compiled = step.compiled(state, batch) if hasattr(step, "compiled") else step
        self.last_compiled_memory = compiled_memory(compiled)
        state, metrics = step(state, batch)
        return state, metrics, parallel.step_collectives(compiled.as_text())

    def held_bytes(self, state: train.TrainState) -> HeldBytes:
        """What the most loaded device of this process holds of the trained parameters and AdamW's
        moments, measured from the shards on each device."""
        moments = [optax.tree_utils.tree_get(state.opt_state, field) for field in ("mu", "nu")]

        def per_device(tree) -> dict:
            held: dict = {}
            for leaf in jax.tree.leaves(tree):
                for shard in leaf.addressable_shards:
                    held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
            return held

        params, optimizer = per_device(state.params), per_device(moments)
        device = max(params, key=lambda d: params[d] + optimizer.get(d, 0))
        return HeldBytes(params=params[device], optimizer=optimizer.get(device, 0))

    def step_memory(self) -> tuple[int | None, str]:
        """``(bytes, what they count)`` for the train step last compiled: XLA's account of the
        program (its allocator peak cannot be reset, so it would carry earlier work)."""
        return self.last_compiled_memory, "XLA compiled-program account (arguments + outputs + temporaries - donated)"

    def optimizer_to_numpy(self, state: train.TrainState) -> tuple[int, Tree]:
        """``(step, moments)``: AdamW's first and second moments as ``exp_avg.NAME`` and
        ``exp_avg_sq.NAME`` with the parameter names of ``to_numpy``; framework-neutral."""
        moments: Tree = {}
        opt_state = parallel.local_copy(state.opt_state, self.jax_device)
        for key, field in (("exp_avg", "mu"), ("exp_avg_sq", "nu")):
            tree = self.to_numpy({"params": optax.tree_utils.tree_get(opt_state, field), "consts": {}})
            moments.update({f"{key}.{name}": value for name, value in tree.items()})
        return int(parallel.local_copy(state.step, self.jax_device)), moments

    def train_state_from_numpy(self, cfg: ModelConfig, tcfg: TrainConfig, tree: Tree, step: int,
                               moments: Tree) -> train.TrainState:
        """The inverse of ``to_numpy`` + ``optimizer_to_numpy``: a train state to resume from."""
        state = self.init_train_state(self.from_numpy(cfg, tree), tcfg)
        fields = {}
        for key, field in (("exp_avg", "mu"), ("exp_avg_sq", "nu")):
            part = {name: moments.get(f"{key}.{name}") for name in tree if name != "final_logits_bias"}
            bad = [n for n, v in part.items() if v is None or v.shape != tree[n].shape]
            if bad:
                raise MTCoreError(f"optimizer state: {key}.{bad[0]} is missing or has the wrong shape")
            part["final_logits_bias"] = tree["final_logits_bias"]
            host = jax.tree.map(np.asarray, self.from_numpy(cfg, part)["params"])
            fields[field] = jax.device_put(host, self.state_shardings({"params": host})["params"])

        def count() -> jax.Array:
            # One buffer per counter: the step donates its state, and a buffer cannot be donated twice.
            return jax.device_put(np.asarray(step, np.int32), self.replicated)

        opt_state = optax.tree_utils.tree_set(state.opt_state, mu=fields["mu"], nu=fields["nu"])
        opt_state = jax.tree_util.tree_map_with_path(
            lambda path, x: count() if getattr(path[-1], "name", None) == "count" else x, opt_state
        )
        return state.replace(step=count(), opt_state=opt_state)

    def generate(
        self,
        params: dict[str, Any],
        cfg: ModelConfig,
        src_ids: np.ndarray,
        src_mask: np.ndarray | None = None,
        *,
        max_len: int = 64,
        num_beams: int = 1,
        length_penalty: float = 1.0,
        early_stopping: bool | str = False,
        compile: bool | str = True,
    ) -> np.ndarray:
        """``(B, max_len)`` int32 token ids, decoded as Hugging Face's ``generate`` does with a Marian
        checkpoint's own settings (``GenerateConfig.from_hf`` reads them: pass ``**gen.kwargs()``).
        JAX always compiles the whole decode, so ``compile`` changes nothing."""
        src_ids, src_mask = check_source(cfg, src_ids, src_mask, max_len, num_beams, early_stopping)
        ids, mask = jax.device_put((src_ids, src_mask), self.jax_device)
        if num_beams == 1:
            out = decode.greedy(params, ids, mask, cfg=cfg, max_len=max_len)
        else:
            out = decode.beam_search(
                params, ids, mask, cfg=cfg, max_len=max_len, num_beams=num_beams, length_penalty=float(length_penalty),
                early_stopping=early_stopping,
            )
        return np.asarray(out, np.int32)

    def reseed(self, seed: int) -> None:
        """Nothing to do: dropout keys derive from the train state's key and step."""

    def sync(self, value: Any = None) -> Any:
        """Wait for ``value``'s computation, or without one for all work queued in this process,
        as ``torch.cuda.synchronize()`` does (JAX is asynchronous per array: a user timing
        ``step(); sync()`` must not measure the dispatch alone); returns ``value``."""
        if value is None:
            jax.block_until_ready(jax.live_arrays())
            jax.effects_barrier()
            return None
        return jax.block_until_ready(value)

    def devices(self) -> list[str]:
        return visible_devices()


# (model config, train config, device, batch shapes) -> (compiled train step, its compile seconds)
_COMPILED_STEPS: dict[tuple, tuple[Any, float]] = {}


_STEPS: dict[Any, Any] = {}


def _step_function(cfg: ModelConfig, tcfg: TrainConfig, mesh):
    """The train step both compile paths trace: unjitted, with the mesh's activation layout."""
    return parallel.laid_out(train.make_train_step(cfg, tcfg, jit=False), mesh)


def _sharded_step(cfg: ModelConfig, tcfg: TrainConfig, mesh, jit_kwargs: dict[str, Any]):
    """The train step jitted with ``jit_kwargs``' shardings, one per config, mesh and state layout
    (shared by every caller, as ``train.make_train_step`` is on one device)."""
    key = (cfg, tcfg, mesh, jax.tree.structure(jit_kwargs["in_shardings"][0]),
           tuple(s.spec for s in jax.tree.leaves(jit_kwargs["in_shardings"][0])))
    if key not in _STEPS:
        _STEPS[key] = jax.jit(_step_function(cfg, tcfg, mesh), **jit_kwargs)
    return _STEPS[key]


def _init_train_state(tcfg: TrainConfig, sharding):
    # Not cached: the shardings are a tree (unhashable), and a state is initialised once a run.
    return jax.jit(lambda variables: train.init_train_state(variables, tcfg), out_shardings=sharding)


@cache
def _forward(cfg: ModelConfig):
    return jax.jit(Transformer(cfg).apply)


def _path(keypath) -> tuple[str, ...]:
    return tuple(str(k.key) for k in keypath)
