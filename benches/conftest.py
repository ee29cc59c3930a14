"""The one place that owns the benches' framework x device x size (x variant) parametrisation,
the thread budget every case runs under, what each case needs (weights, batch, reference results,
the GEMM peak), the machine_info stored with every run, and the terminal summary of what
pytest-benchmark does not print itself."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from functools import cache
from math import ceil
from pathlib import Path

import numpy as np
import pytest
from turns import Turns

import mtcore
from mtcore.config import PRESETS
from mtcore.devices import DEVICE_KINDS, device_counts, missing
from mtcore.errors import MTCoreError
from mtcore.perf import threads
from mtcore.perf.setup import ProcessSetup, set_up

FRAMEWORKS = ("torch", "jax", "hf")
DEFAULT_SIZES = ("tiny", "small")
# (batch, source length, target length) per size; marian-en-hu is the 8 x 64 tokens.
SHAPES = {"tiny": (16, 32, 32), "small": (16, 48, 48), "base": (8, 64, 64), "marian-en-hu": (8, 64, 64)}
# On accelerators the big presets also train at the source experiment's batch: 64 sentences per
# device (x 64 tokens), where launch overhead no longer hides the arithmetic.
BIG_BATCH = 64
BIG_BATCH_SIZES = ("base", "marian-en-hu")
# Timed work per case, when --benchmark-max-time is not given: pytest-benchmark's calibration
# runs as many rounds as fit (at least --benchmark-min-rounds). Measured on a 2-core CPU, one
# thread: 2 s per case kept tiny/small train-step medians within a few percent run to run.
MAX_TIME_S = 2.0
MIN_ROUNDS = 10
# The paired bench alternates the frameworks; its ratio needs enough pairs for a tight interval.
MIN_PAIRS = 20
DEFAULT_VARIANT = {"torch": "eager", "jax": "scan", "hf": "eager"}
OTHER_VARIANT = {"torch": "compile", "jax": "loop"}
DEPTHS = (2, 6, 12, 24)


@dataclass(frozen=True)
class Case:
    """One benchmarked configuration; ``id`` is what pytest shows, e.g. ``jax-cpu-small-fp32``."""

    framework: str  # torch | jax | hf (Hugging Face MarianMTModel, torch eager)
    device: str  # cpu | gpu | tpu
    size: str  # a ModelConfig preset
    precision: str = "fp32"
    variant: str = ""  # torch: eager | compile | cudagraphs; jax: scan | loop
    devices: int | None = None  # data parallel over this many devices (the scaling bench)
    rows: int | None = None  # batch rows, when not the size's default (SHAPES)

    def __post_init__(self):
        if not self.variant:
            object.__setattr__(self, "variant", DEFAULT_VARIANT[self.framework])

    @property
    def id(self) -> str:
        parts = [self.framework, self.device, self.size] + ([f"b{self.rows}"] if self.rows else []) + [self.precision]
        if self.variant != DEFAULT_VARIANT[self.framework]:
            parts.append(self.variant)
        if self.devices is not None:
            parts.append(f"{self.devices}dev")
        return "-".join(parts)

    def model_config(self, **changes) -> mtcore.ModelConfig:
        stacking = {"layer_stacking": self.variant} if self.framework == "jax" else {}
        return mtcore.ModelConfig.preset(self.size, **stacking, **changes)

    def train_config(self) -> mtcore.TrainConfig:
        return mtcore.TrainConfig(precision=self.precision)

    def backend(self):
        return _backend(self.framework, self.device)

    def missing(self) -> str | None:
        return missing(self.framework, self.device)

    @property
    def default(self) -> bool:
        """fp32 and the framework's default variant: the configuration the regression gate tracks."""
        return self.precision == "fp32" and self.variant == DEFAULT_VARIANT[self.framework]

    @property
    def compile(self) -> bool | str:
        """torch's ``compile`` argument: ``torch.compile`` (default mode) or with CUDA graphs
        (``reduce-overhead``: the whole step replayed as one graph, no per-kernel launch cost)."""
        return {"compile": True, "cudagraphs": "reduce-overhead"}.get(self.variant, False)


@dataclass(frozen=True)
class Pairing:
    """torch and JAX (default variants) timed alternately in one process: ``id`` ``cpu-tiny-fp32``."""

    device: str
    size: str
    precision: str = "fp32"

    @property
    def id(self) -> str:
        return f"{self.device}-{self.size}-{self.precision}"

    @property
    def cases(self) -> tuple[Case, Case]:
        return Case("torch", self.device, self.size, self.precision), Case("jax", self.device, self.size, self.precision)

    @property
    def framework(self) -> str:
        return "torch+jax"

    @property
    def default(self) -> bool:
        return self.precision == "fp32"

    @property
    def variant(self) -> str:
        return ""

    @property
    def compile(self) -> bool:
        return False  # the pair is of the default variants

    def missing(self) -> str | None:
        return next((f"{c.framework}: {r}" for c in self.cases if (r := c.missing())), None)


@cache
def _backend(framework: str, device: str):
    return mtcore.backend(framework, device)


# ---- options and parametrisation ---------------------------------------------------------------
def _csv(value: str | None, known: tuple[str, ...], what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if items == ("all",):
        return known
    unknown = [v for v in items if v not in known]
    if unknown or not items:
        raise MTCoreError(f"--{what}: unknown {what} {', '.join(unknown) or repr(value)}; choose from {', '.join(known)} or 'all'")
    return items


def pytest_addoption(parser):
    group = parser.getgroup("mtcore benches")
    group.addoption("--framework", help=f"comma list of {', '.join(FRAMEWORKS)} (default: all)")
    group.addoption("--device", help=f"comma list of {', '.join(DEVICE_KINDS)} (default: all, absent ones skip; "
                                     "a device named here must be visible, else the run stops)")
    group.addoption("--size", help=f"comma list of {', '.join(PRESETS)}, or 'all' (default: {','.join(DEFAULT_SIZES)})")
    group.addoption("--threads", default="1",
                    help="CPU thread budget per process, the same for every framework: a number (pinned to that many "
                         "cores: stable, what the regression gate uses) or 'all' (the whole machine, as users run). "
                         "Default: %(default)s")
    group.addoption("--compile-budget", type=float, default=120.0,
                    help="compile-vs-depth: skip a depth whose compile, extrapolated from the shallower ones and "
                         "doubled, would take longer than this many seconds (an unrolled program's compile grows faster "
                         "than its depth; the figure must finish on any device). Default: %(default)s")
    group.addoption("--rounds", type=int,
                    help=f"fixed timed rounds per benchmark (default: calibrated, {MAX_TIME_S:g} s of timed work per "
                         f"case, at least {MIN_ROUNDS} rounds; see --benchmark-max-time / --benchmark-min-rounds)")


def _selection(config) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    frameworks = _csv(config.getoption("--framework"), FRAMEWORKS, "framework") or FRAMEWORKS
    devices = _csv(config.getoption("--device"), DEVICE_KINDS, "device") or DEVICE_KINDS
    sizes = _csv(config.getoption("--size"), tuple(PRESETS), "size") or DEFAULT_SIZES
    return frameworks, devices, sizes


def _cases(kind: str, frameworks, devices, sizes) -> list:
    """The cases a bench of ``kind`` runs. Variants ride on the default precision only, and
    precision on the default variant only: each comparison a user would make, not every product."""
    cases = []
    for device in devices:
        for size in sizes:
            if kind == "paired" and {"torch", "jax"} <= set(frameworks):
                # bf16 pairs on accelerators only: this CPU has no bf16 matmul units, so both bf16
                # steps are conversion paths nobody trains on (make bench, 2026-11-27: JAX's 1.16-1.19x
                # its fp32 step, torch's 0.79-2.34x); the train bench still times each.
                cases += [Pairing(device, size)] + ([Pairing(device, size, "bf16")] if device != "cpu" else [])
            for fw in ("torch", "jax"):
                if fw not in frameworks:
                    continue
                # CUDA graphs where kernel launches cost something: on a GPU.
                graphs = [Case(fw, device, size, variant="cudagraphs")] if fw == "torch" and device == "gpu" else []
                if kind == "train":
                    # bf16 in CUDA graphs too: torch's best bf16 step, for the fair-fight line.
                    cases += [Case(fw, device, size), Case(fw, device, size, "bf16"),
                              Case(fw, device, size, variant=OTHER_VARIANT[fw])] + graphs + [
                        dataclasses.replace(c, precision="bf16") for c in graphs]
                elif kind == "compile":
                    cases += [Case(fw, device, size, variant="compile")] + graphs if fw == "torch" else [
                        Case(fw, device, size), Case(fw, device, size, variant="loop")]
                elif kind == "decode":
                    # torch's compiled decode step everywhere (what compile buys a CPU is worth
                    # seeing too), replayed as a CUDA graph on a GPU; JAX always compiles.
                    cases += [Case(fw, device, size)] + (
                        [Case(fw, device, size, variant="compile")] + graphs if fw == "torch" else [])
                elif kind == "scaling":
                    cases += [Case(fw, device, size, devices=n) for n in scaling_counts(fw, device)]
            if kind == "train" and "hf" in frameworks:
                cases.append(Case("hf", device, size))
            if kind == "train" and device != "cpu" and size in BIG_BATCH_SIZES:
                cases += [dataclasses.replace(c, rows=BIG_BATCH) for c in cases
                          if c.device == device and c.size == size and c.rows is None]
    if kind == "depth":  # a property of layer stacking, measured on tiny layers
        cases = [Case("jax", d, "tiny", variant=v) for d in devices for v in ("scan", "loop") if "jax" in frameworks]
    return cases


def scaling_counts(framework: str, device: str) -> list[int]:
    """1, 2 and every device the framework sees (on a CPU: a device per --threads cores)."""
    return sorted({1, 2, max(_visible(framework, device), 1)})


def _visible(framework: str, device: str) -> int:
    if device == "cpu":
        budget = threads.parse(_config.getoption("--threads")) if _config else None
        return (os.cpu_count() or 1) // (budget or 1)
    return device_counts(framework).get(device, 0)


def _marks(case, kind: str) -> list:
    marks = []
    if kind == "scaling":
        # Worker processes, one case at a time: two cases' ranks would share the cores.
        marks.append(pytest.mark.xdist_group("scaling"))
        if case.devices > 1:
            marks.append(pytest.mark.multidevice)
            seen = _visible(case.framework, case.device)
            if case.devices > seen:
                what = "cores for one thread each" if case.device == "cpu" else f"{case.device.upper()}s"
                marks.append(pytest.mark.skip(reason=f"{case.id}: needs {case.devices} devices; "
                                                     f"{case.framework} sees {seen} ({what})"))
    if case.device in ("gpu", "tpu"):
        marks.append(getattr(pytest.mark, case.device))
    if case.size in ("base", "marian-en-hu") or case.compile:
        marks.append(pytest.mark.slow)
    # The quick subset: what the regression gate tracks. fp32, default variants, the default
    # sizes; train steps of mtcore's two implementations, decoding, and the paired headline.
    if kind in ("train", "decode", "paired") and case.default and case.size in DEFAULT_SIZES and case.framework != "hf":
        marks.append(pytest.mark.quick)
        # The pull-request gate's subset (scripts/bench_gate.py): each framework's own numbers.
        # The paired bench is a torch-vs-JAX comparison, not a property of one tree.
        if kind != "paired":
            marks.append(pytest.mark.gate)
    # The two slowest families share a process each under `-n 2 --dist loadgroup`: torch.compile
    # cases reuse the kernels the first of them built, and the unrolled-loop compiles (minutes at
    # 24 layers on a CPU) do not queue behind them.
    # JAX's compile and train benches of one program share a process too, so the train bench runs
    # the program the compile bench just built instead of compiling it again.
    if case.compile:
        marks.append(pytest.mark.xdist_group("torch-compile"))
    elif kind == "depth":
        # Shallow to deep in one process: each depth extrapolates its compile from the ones before.
        marks.append(pytest.mark.xdist_group(f"depth-{case.id}"))
    elif case.variant == "loop":
        marks.append(pytest.mark.xdist_group("jax-loop"))
    elif case.framework == "jax" and case.precision == "fp32" and kind in ("compile", "train"):
        marks.append(pytest.mark.xdist_group(f"jax-{case.device}-{case.size}"))
    reason = case.missing()
    if reason:
        marks.append(pytest.mark.skip(reason=f"{case.id}: {reason}"))
    return marks


def pytest_generate_tests(metafunc):
    marker = metafunc.definition.get_closest_marker("cases")
    if marker is None or "case" not in metafunc.fixturenames:
        return
    cases = _cases(marker.args[0], *_selection(metafunc.config))
    params = [pytest.param(c, id=c.id, marks=_marks(c, marker.args[0])) for c in cases]
    metafunc.parametrize("case", params or [pytest.param(None, marks=pytest.mark.skip(reason="no case selected"))])


def _stop(message: str) -> None:
    """One line and exit status 2 for a run that cannot do what it was asked, never a traceback."""
    pytest.exit(f"mtcore benches: {message}", returncode=2)


_setup: ProcessSetup | None = None
_config = None
# The regression gate's base and head sessions take turns round by round (benches/turns.py);
# alone, this does nothing.
_turns = Turns()


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark reads its options
def pytest_configure(config):
    global _setup, _config
    _turns.start()  # a gate session works only in its turns, start-up included
    _config = config
    config.addinivalue_line("markers", "cases(kind): parametrise a bench over the cases of that kind")
    config.addinivalue_line("markers", "xdist_group(name): keep these cases on one process under --dist loadgroup")
    config.addinivalue_line("markers", "quick: the quick subset: the gate's, and the paired headline (pytest benches -m quick)")
    config.addinivalue_line("markers", "gate: what the pull-request regression gate runs on base and head (scripts/bench_gate.py)")
    try:
        frameworks, devices, _ = _selection(config)
        budget = threads.parse(config.getoption("--threads"))
        worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
        slots = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        # The one process set-up (mtcore/perf/setup.py), before any framework starts and before
        # the storage fingerprint below asks JAX for its devices: XLA sizes its pool and reads its
        # dispatch flag once, when the CPU backend starts. Freed memory stays in the process, so no
        # round pays for the previous one's page faults; fp32 matmuls in full precision in both
        # frameworks (XLA would otherwise run them as TF32 on NVIDIA GPUs); bf16 cases are the fast
        # path. The compile benches compile from scratch whatever the cache setting.
        _setup = set_up(frameworks, threads=budget, slot=int(worker.removeprefix("gw") or 0), slots=slots)
    except MTCoreError as e:
        _stop(str(e))
    if any(config.getoption(o) for o in ("benchmark_autosave", "benchmark_save", "benchmark_compare")):
        _store_by_fingerprint()
    if not _given(config, "--benchmark-max-time"):
        config.option.benchmark_max_time = str(MAX_TIME_S)
    if not _given(config, "--benchmark-min-rounds"):
        config.option.benchmark_min_rounds = MIN_ROUNDS
    # A gen-2 collection of a whole pytest session's heap would land in a random round.
    config.option.benchmark_disable_gc = True
    if config.getoption("--device") is not None:
        # Asked for by name (tox -e gpu / tpu): a machine without it must fail, not pass on skips.
        for device in devices:
            seen = [fw for fw in frameworks if missing(fw, device) is None]
            if not seen:
                reasons = "; ".join(missing(fw, device) for fw in frameworks)
                _stop(f"--device {device}: no selected framework sees a {device.upper()} ({reasons})")


def _store_by_fingerprint() -> None:
    """Save and compare runs under ``.benchmarks/<hardware fingerprint>/`` (CPU model and cores,
    accelerators, framework versions: mtcore.perf.records.fingerprint) instead of pytest-benchmark's
    ``Linux-CPython-3.11-64bit``, which a GPU box and a laptop share: a GPU run is then never the
    baseline of a CPU run. pytest-benchmark builds its storage from this function when it
    configures, after this hook."""
    import pytest_benchmark.session
    from cpuinfo import get_cpu_info

    from mtcore.perf.records import fingerprint, fingerprint_id

    info = {"cpu": {"brand_raw": get_cpu_info().get("brand_raw")}, "mtcore": {"hardware": hardware()}}
    key = fingerprint_id(fingerprint(info))
    pytest_benchmark.session.get_machine_id = lambda: key


def _given(config, flag: str) -> bool:
    """Whether the user set ``flag`` (command line, PYTEST_ADDOPTS or the ini's addopts)."""
    import shlex

    args = [*config.invocation_params.args, *shlex.split(os.environ.get("PYTEST_ADDOPTS", "")), *config.getini("addopts")]
    return any(str(a) == flag or str(a).startswith(flag + "=") for a in args)


# ---- what the benches share ------------------------------------------------------------------
def thread_budget() -> threads.ThreadBudget:
    assert _setup is not None, "pytest_configure sets the process up first"
    return _setup.threads


def timed(benchmark, fn, rounds: int | None, warmup_rounds: int = 2, min_rounds: int | None = None, on_start=None):
    """Time ``fn`` (which ends with a device sync) after ``warmup_rounds`` untimed calls: ``rounds``
    rounds when given (--rounds), else as many as fill --benchmark-max-time, at least
    --benchmark-min-rounds (or ``min_rounds``). ``on_start`` is called as the timed rounds begin.
    Returns ``fn``'s last result."""
    if not benchmark.enabled:  # --benchmark-disable: one untimed call
        return benchmark(fn)
    start = time.perf_counter()
    for _ in range(max(warmup_rounds, 1)):
        fn()
    one = (time.perf_counter() - start) / max(warmup_rounds, 1)
    n = rounds or max(min_rounds or int(_config.getoption("benchmark_min_rounds")),
                      ceil(float(_config.getoption("benchmark_max_time")) / max(one, 1e-9)))
    if on_start is not None:
        on_start()
    before = speed_probe()
    # ``setup`` runs untimed before every round: in the gate, the partner session's round, then one
    # more call of ``fn`` (benches/turns.py). Alone, nothing.
    result = benchmark.pedantic(fn, setup=_turns.before_round(fn), rounds=n, iterations=1, warmup_rounds=0)
    # How fast this core was just before and just after the rounds, on a fixed workload: the
    # machine's own drift, recorded next to the rounds it may have moved (never gated on).
    benchmark.extra_info["probe_s"] = [before, speed_probe()]
    return result


def speed_probe(reps: int = 9) -> float:
    """Median seconds of one fixed float32 matmul (512 x 512, ~3 ms on one core), on the
    thread budget's BLAS pool: a yardstick of the core's speed at this moment."""
    a = np.random.default_rng(0).standard_normal((512, 512), dtype=np.float32)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - start)
    return float(np.median(times))


@pytest.fixture(scope="session")
def rounds(request) -> int | None:
    """--rounds, or None: calibrated."""
    return request.config.getoption("--rounds")


@cache
def weights(size: str) -> dict[str, np.ndarray]:
    """The initial weights every framework starts from, per size."""
    from mtcore.weights import init_tree

    return init_tree(mtcore.ModelConfig.preset(size), seed=0)


@cache
def batch(size: str, rows: int | None = None) -> mtcore.Batch:
    """A full (unpadded) batch: every framework does exactly the same work. ``rows`` replaces the
    size's default number of sentences."""
    b, s, t = SHAPES[size]
    return mtcore.random_batch(mtcore.ModelConfig.preset(size), rows or b, s, t, seed=0, full=True)


def other_framework(framework: str) -> str | None:
    """An installed mtcore implementation other than ``framework``'s (for ``hf`` either one is):
    what each bench checks its own result against. None when there is none."""
    for other in ("torch", "jax"):
        if other != framework and mtcore.available(other) is None:
            return other
    return None


@cache
def reference_logits(size: str, framework: str, rows: int | None = None) -> np.ndarray | None:
    """fp32 CPU logits of ``other_framework(framework)`` on the shared weights and batch."""
    other = other_framework(framework)
    if other is None:
        return None
    be = _backend(other, "cpu")
    cfg = mtcore.ModelConfig.preset(size)
    return be.forward(be.from_numpy(cfg, weights(size)), cfg, batch(size, rows))


_peaks: dict[tuple[str, str], dict[str, float]] = {}


def gemm_peak(device: str, precision: str) -> float:
    """The best matmul FLOP/s any installed framework reaches on ``device``: MFU's denominator."""
    from mtcore.backend import framework

    key = (device, precision)
    if key not in _peaks:
        _peaks[key] = {fw: framework(fw).gemm_peak(device, precision) for fw in ("torch", "jax")
                       if missing(fw, device) is None}
    return max(_peaks[key].values())


def median_seconds(benchmark) -> float | None:
    """The timed median, or None under --benchmark-disable (each bench then runs once, untimed)."""
    stats = getattr(benchmark, "stats", None)
    return stats.stats.median if stats is not None else None


def check_first_loss(case: Case, loss: float) -> None:
    """Correct before fast: a case's first real training step must give the loss another
    framework computes from the same weights and batch."""
    assert math.isfinite(loss), f"{case.id}: first loss {loss}"
    reference = reference_logits(case.size, case.framework, case.rows)
    if reference is None:
        return
    from mtcore.metrics import smoothed_loss

    b = batch(case.size, case.rows)
    want = smoothed_loss(reference, b.tgt_out, b.tgt_mask, case.train_config().label_smoothing)
    # The first step runs with dropout (different random masks in each framework) and, for bf16,
    # at lower precision; a freshly initialised model's loss is still pinned down to a few percent.
    # Forward logits in fp32 are checked to 1e-3 in test_forward_matches.
    tolerance = 5e-2 if case.precision == "bf16" else 2e-2
    assert loss == pytest.approx(want, rel=tolerance), f"{case.id}: loss {loss} vs {want}"


# ---- stored and printed results --------------------------------------------------------------
@cache  # device discovery, asked for by the storage key at configure and by machine_info at the end
def hardware() -> dict:
    """The hardware fingerprint results depend on: CPU model and cores, and per framework its
    versions and the devices it sees. Nothing that varies between runs on one machine (the
    thread budget is stored apart; the session's GEMM peak goes into each bench's extra_info)."""
    from mtcore.devices import info

    data = info()
    out = {"cpu_count": data["cpu_count"], "frameworks": {}}
    for name, fw in data["frameworks"].items():
        if fw["available"]:
            accelerators = [d for d in fw["devices"] if not d.startswith("cpu")]
            out["frameworks"][name] = {"versions": fw["versions"], "device_counts": fw["device_counts"],
                                       "accelerators": accelerators}
    return out


# py-cpuinfo's current clock reading changes from run to run on machines that scale frequency.
_VOLATILE_CPU_KEYS = ("hz_actual", "hz_actual_friendly")


def pytest_benchmark_update_machine_info(config, machine_info):
    for key in _VOLATILE_CPU_KEYS:
        machine_info.get("cpu", {}).pop(key, None)
    machine_info["mtcore"] = {
        "hardware": hardware(),
        **_setup.as_dict(),  # threads, allocator, each framework's settings, compile cache: as run.json has them
        "transformers": mtcore.devices.info()["transformers"],
        # XLA's compiler flags move JAX's numbers (README, "Why JAX's small CPU step is slower"):
        # a run says which it had, and a comparison says when they differ.
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        # Which tree's mtcore these benches measured: the gate runs them against a base checkout too.
        "source": str(Path(mtcore.__file__).resolve().parent.parent),
    }


def _differences(saved, current, prefix="") -> list[str]:
    """Dotted keys whose values differ between two machine_info dicts."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(saved) | set(current), key=str):
            out += _differences(saved.get(key), current.get(key), f"{prefix}{key}.")
        return out
    return [] if saved == current else [prefix.rstrip(".")]


@pytest.hookimpl(wrapper=True)
def pytest_benchmark_compare_machine_info(config, benchmarksession, machine_info, compared_benchmark):
    """Say in one line what differs from the compared run, instead of pytest-benchmark's dump of
    both whole machine_info dicts (5 KB on one line). Its own check also crashes when the storage
    is outside the working directory (it makes the path relative to it): not our users' problem."""
    logger = benchmarksession.logger
    plain_warning = logger.warning

    def warning(text, *args, **kwargs):
        if not str(text).startswith("Benchmark machine_info is different"):
            plain_warning(text, *args, **kwargs)

    logger.warning = warning
    try:
        yield
    except ValueError:  # pytest-benchmark's relative_to(cwd) on a storage path outside it
        pass
    finally:
        logger.warning = plain_warning
    saved_info = compared_benchmark.get("machine_info") or {}
    machine_info = json.loads(json.dumps(machine_info))  # as stored: tuples become lists
    saved, current = saved_info.get("mtcore", {}), machine_info.get("mtcore", {})
    if not saved:
        return None
    hardware_changes = _differences(saved.get("hardware"), current.get("hardware"))
    if hardware_changes:
        _stop(f"the compared run ({compared_benchmark.get('commit_info', {}).get('id', '?')[:12]}) was measured on "
              f"DIFFERENT HARDWARE (differs: {', '.join(hardware_changes)}): refusing to compare; its time differences "
              "are not regressions (runs are stored per hardware fingerprint, .benchmarks/<fingerprint>/)")
    budget_changes = _differences(saved.get("threads"), current.get("threads"), "threads.")
    if any(key in ("threads.threads", "threads.pinned") for key in budget_changes):
        plain_warning(
            f"MTCORE: the compared run had a DIFFERENT THREAD BUDGET ({json.dumps(saved.get('threads'))} vs now "
            f"{json.dumps(current.get('threads'))}). Time differences are not regressions.")
    if saved.get("xla_flags", "") != current.get("xla_flags", ""):
        plain_warning(f"MTCORE: the compared run had XLA_FLAGS={saved.get('xla_flags', '')!r}, this one "
                      f"{current.get('xla_flags', '')!r}: JAX's time differences may be the flags'.")
    others = [k for k in _differences(saved_info, machine_info) if not k.startswith("mtcore")]
    if others and not hardware_changes:
        plain_warning(f"MTCORE: machine_info differs from the compared run in {', '.join(others)}.")
    return None


def _fmt(value, scale=1.0, digits=1, suffix=""):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value * scale:,.{digits}f}{suffix}"


_session = None


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    _turns.finish()  # the gate's partner session runs alone from here


def pytest_sessionstart(session):
    global _session
    _session = session


@pytest.hookimpl(wrapper=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Our summary first; then pytest-benchmark's tables and --benchmark-compare-fail check, whose
    regression is a failed run (exit 1) and one line, not a traceback."""
    from pytest_benchmark.session import PerformanceRegression

    _summary(terminalreporter, config)
    try:
        return (yield)
    except PerformanceRegression:
        terminalreporter.write_line("mtcore benches: performance has regressed past --benchmark-compare-fail "
                                    "(the benchmarks are listed above)", red=True, bold=True)
        _session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    benchmarks = [b for b in getattr(session, "benchmarks", []) if b.extra_info]
    if not benchmarks or _setup is None:
        return
    tr = terminalreporter
    tr.section("mtcore: throughput, MFU, memory, compile (pytest-benchmark's extra_info)")
    for line in _setup.describe():
        tr.write_line(line)
    if os.environ.get("XLA_FLAGS"):
        tr.write_line(f"XLA_FLAGS: {os.environ['XLA_FLAGS']}")
    header = (f"{'benchmark':58} {'median ms':>10} {'IQR %':>6} {'rounds':>6} {'tokens/s':>10} "
              f"{'TFLOP/s':>8} {'MFU':>7} {'mem MB':>8} {'compile s':>9}")
    tr.write_line(header)
    for b in sorted(benchmarks, key=lambda b: (b.group or "", b.name)):
        e = b.extra_info
        median = b.stats.median if b.stats else None
        iqr = b.stats.iqr / median if b.stats and median else None
        tr.write_line(
            f"{b.name:58} {_fmt(median, 1e3, 2):>10} {_fmt(iqr, 100, 1):>6} "
            f"{_fmt(b.stats.rounds if b.stats else None, 1, 0):>6} {_fmt(e.get('tokens_per_s'), 1, 0):>10} "
            f"{_fmt(e.get('achieved_flops'), 1e-12, 3):>8} {_fmt(e.get('mfu'), 100, 1, '%'):>7} "
            f"{_fmt(e.get('memory_bytes'), 1e-6, 0):>8} {_fmt(e.get('compile_s'), 1, 2):>9}"
        )
    _print_paired(tr, benchmarks)
    _print_ratios(tr, benchmarks)
    _print_fair_fight(tr, benchmarks)


def _print_paired(tr, benchmarks):
    paired = [b for b in benchmarks if "ratio" in b.extra_info]
    if not paired:
        return
    tr.write_line("")
    tr.write_line("who is faster, paired: the frameworks' steps alternate round by round in one process, so drift "
                  "hits both alike")
    for b in sorted(paired, key=lambda b: b.name):
        e, r = b.extra_info, b.extra_info["ratio"]
        a, c = e["frameworks"]
        faster, factor = (c, 1 / r["median"]) if r["median"] < 1 else (a, r["median"])
        tr.write_line(
            f"  {e['case']}: {c}/{a} step time {r['median']:.3f} (IQR {r['q1']:.3f}-{r['q3']:.3f}, "
            f"{r['confidence']:.0%} CI of the median {r['ci_low']:.3f}-{r['ci_high']:.3f}, {r['n']} pairs, "
            f"{e['threads']['threads']} thread(s) each): {faster} {factor:.2f}x faster")


# The bars a fair fight clears on an accelerator (README: "each framework at its best"): torch's
# fastest variant against JAX's, bf16 against the same framework and variant's fp32, and the faster
# framework's MFU at bf16 against the measured bf16 GEMM peak.
TORCH_WITHIN = {"train_step": 1.25, "decode-greedy": 1.5}
BF16_AT_MOST = 0.6
MFU_AT_LEAST = 0.5


def _fair_fight(benchmarks) -> list[str]:
    """Lines comparing each framework at its best: per train-step and greedy-decode group, the
    fastest variant of each framework (torch: eager, compile, cudagraphs), the torch/JAX ratio of
    those, bf16's median over the same variant's fp32 one, and the best MFU at bf16; on
    accelerators, against the bars."""
    medians: dict[tuple[str, str], dict[str, dict[str, tuple[float, float | None]]]] = {}
    for b in benchmarks:
        e, kind, where = b.extra_info, *(b.group or "  ").split(" ")[:2]
        if not b.stats or e.get("framework") not in ("torch", "jax") or kind not in TORCH_WITHIN or where == "scaling":
            continue
        medians.setdefault((kind, where), {}).setdefault(e["framework"], {})[e.get("variant", "")] = (
            b.stats.median, e.get("mfu"))

    def fastest(variants: dict[str, tuple[float, float | None]]) -> str:
        return min(variants, key=lambda v: variants[v][0])

    def verdict(ok: bool, accelerator: bool, bar: str) -> str:
        return f" (bar {bar}: {'met' if ok else 'NOT met'})" if accelerator else ""

    lines = []
    for (kind, where), fws in sorted(medians.items()):
        accelerator = not where.startswith("cpu")
        best = {fw: fastest(variants) for fw, variants in fws.items()}
        if {"torch", "jax"} <= set(fws):
            t, j = fws["torch"][best["torch"]][0], fws["jax"][best["jax"]][0]
            ratio, bar = t / j, TORCH_WITHIN[kind]
            lines.append(f"{kind} {where}: torch ({best['torch']}) {t * 1e3:.2f} ms, jax ({best['jax']}) {j * 1e3:.2f} "
                         f"ms: torch/jax {ratio:.2f}" + verdict(ratio <= bar, accelerator, f"<= {bar}"))
        if kind == "train_step" and where.endswith("-bf16"):
            fp32 = medians.get((kind, where[: -len("bf16")] + "fp32"), {})
            for fw in sorted(fws):
                v = best[fw]
                if v in fp32.get(fw, {}):
                    ratio = fws[fw][v][0] / fp32[fw][v][0]
                    lines.append(f"{kind} {where}: {fw} ({v}) bf16/fp32 step time {ratio:.2f}"
                                 + verdict(ratio <= BF16_AT_MOST, accelerator, f"<= {BF16_AT_MOST}"))
            winner = min(fws, key=lambda fw: fws[fw][best[fw]][0])
            mfu = fws[winner][best[winner]][1]
            if mfu is not None:
                lines.append(f"{kind} {where}: MFU of the faster framework ({winner}, {best[winner]}) {mfu:.1%} of the "
                             "measured bf16 GEMM peak" + verdict(mfu >= MFU_AT_LEAST, accelerator, f">= {MFU_AT_LEAST:.0%}"))
    return lines


def _write_section(tr, heading: str, lines: list[str]) -> None:
    """A blank line, ``heading`` and ``lines`` indented under it; nothing when there are no lines."""
    if lines:
        tr.write_line("")
        tr.write_line(heading)
        for line in lines:
            tr.write_line("  " + line)


def _print_fair_fight(tr, benchmarks):
    _write_section(tr, "each framework at its best (fastest variant per group; cases ran one after another, so this "
                       "is an indication; bars apply on accelerators):", _fair_fight(benchmarks))


def _print_ratios(tr, benchmarks):
    """Ratios of medians within each group (same device, size, precision)."""
    by_group: dict[str, dict[str, float]] = {}
    for b in benchmarks:
        if b.stats and b.group and "ratio" not in b.extra_info:
            by_group.setdefault(b.group, {})[b.extra_info.get("case", b.name)] = b.stats.median
    lines = []
    for group, medians in sorted(by_group.items()):
        if len(medians) < 2:
            continue
        fastest = min(medians, key=medians.get)
        ranked = sorted(medians.items(), key=lambda kv: kv[1])[1:]
        rest = ", ".join(f"{name} {t / medians[fastest]:.2f}x" for name, t in ranked)
        lines.append(f"{group}: fastest {fastest}; slower: {rest}")
    _write_section(tr, "ratios of medians within each group (cases ran one after another, so drift between them is "
                       "NOT cancelled: an indication; the paired lines above are the measurement):", lines)
