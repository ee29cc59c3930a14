"""The benches' cases: framework x device x size (x variant), their readable ids
(``jax-cpu-small-fp32``), the pairs of the paired bench, and the marks that skip what the machine
lacks, pick the quick and gate subsets, and keep what shares a program on one xdist process."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
from inputs import backend, session

import mtcore
from mtcore.backend import BACKENDS
from mtcore.config import PRESETS
from mtcore.devices import DEVICE_KINDS, device_counts, missing
from mtcore.errors import MTCoreError
from mtcore.parallel import MeshShape
from mtcore.perf import threads

FRAMEWORKS = tuple(BACKENDS)  # torch, jax, hf: every backend is benchmarked
DEFAULT_SIZES = ("tiny", "small")
# On accelerators the big presets also train at the source experiment's batch: 64 sentences per
# device (x 64 tokens), where launch overhead no longer hides the arithmetic.
BIG_BATCH = 64
BIG_BATCH_SIZES = ("base", "marian-en-hu")
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
    mesh: str | None = None  # a device mesh (the mesh bench): ``fsdp:2``; ``devices`` is its size
    hosts: int | None = None  # the workers spread over this many emulated hosts (--hosts)

    def __post_init__(self):
        if not self.variant:
            object.__setattr__(self, "variant", DEFAULT_VARIANT[self.framework])

    @property
    def id(self) -> str:
        parts = [self.framework, self.device, self.size] + ([f"b{self.rows}"] if self.rows else []) + [self.precision]
        if self.variant != DEFAULT_VARIANT[self.framework]:
            parts.append(self.variant)
        if self.mesh is not None:
            parts.append(self.mesh.replace(":", "").replace(",", "-"))
        elif self.devices is not None:
            parts.append(f"{self.devices}dev")
        if self.hosts:
            parts.append(f"{self.hosts}hosts")
        return "-".join(parts)

    def model_config(self, **changes) -> mtcore.ModelConfig:
        stacking = {"layer_stacking": self.variant} if self.framework == "jax" else {}
        return mtcore.ModelConfig.preset(self.size, **stacking, **changes)

    def train_config(self) -> mtcore.TrainConfig:
        return mtcore.TrainConfig(precision=self.precision)

    def backend(self):
        return backend(self.framework, self.device)

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

    def missing(self) -> str | None:
        return next((f"{c.framework}: {r}" for c in self.cases if (r := c.missing())), None)


def csv(value: str | None, known: tuple[str, ...], what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if items == ("all",):
        return known
    unknown = [v for v in items if v not in known]
    if unknown or not items:
        raise MTCoreError(f"--{what}: unknown {what} {', '.join(unknown) or repr(value)}; choose from {', '.join(known)} or 'all'")
    return items


def selection(config) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    frameworks = csv(config.getoption("--framework"), FRAMEWORKS, "framework") or FRAMEWORKS
    devices = csv(config.getoption("--device"), DEVICE_KINDS, "device") or DEVICE_KINDS
    sizes = csv(config.getoption("--size"), tuple(PRESETS), "size") or DEFAULT_SIZES
    return frameworks, devices, sizes


def over_hosts(chosen: list, hosts: int | None) -> list:
    """The worker cases spread over ``hosts`` emulated hosts (--hosts) where their devices split
    evenly over them; the others run on this host as before."""
    if not hosts:
        return chosen
    return [dataclasses.replace(c, hosts=hosts) if c.devices and c.devices >= hosts and c.devices % hosts == 0 else c
            for c in chosen]


def cases(kind: str, frameworks, devices, sizes) -> list:
    """The cases a bench of ``kind`` runs. Variants ride on the default precision only, and
    precision on the default variant only: each comparison a user would make, not every product."""
    cases = []
    smallest = min(sizes, key=list(PRESETS).index)  # the costs bench's size
    for device in devices:
        for size in sizes:
            if kind == "paired" and {"torch", "jax"} <= set(frameworks):
                # bf16 pairs on accelerators only: on a CPU both bf16 steps are conversion paths
                # nobody trains on (docs/findings/2026-11-27-cpu-bf16.md); the train bench still
                # times each, and the summary says whether the CPU has bf16 arithmetic.
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
                elif kind == "mesh":
                    cases += [Case(fw, device, size, devices=MeshShape.parse(m).devices, mesh=m) for m in MESHES]
                elif kind == "costs" and size == smallest:  # what the gate holds exactly: every mesh of two
                    cases += [Case(fw, device, size, devices=2, mesh=m) for m in SWEEP_MESHES]
                elif kind == "sweep" and device == "cpu":  # emulated hosts are processes of this machine
                    cases += [Case(fw, device, size, devices=2, mesh=m, hosts=2) for m in SWEEP_MESHES]
            if kind == "train" and "hf" in frameworks:
                cases.append(Case("hf", device, size))
            if kind == "train" and device != "cpu" and size in BIG_BATCH_SIZES:
                cases += [dataclasses.replace(c, rows=BIG_BATCH) for c in cases
                          if c.device == device and c.size == size and c.rows is None]
    if kind == "depth":  # a property of layer stacking, measured on tiny layers
        cases = [Case("jax", d, "tiny", variant=v) for d in devices for v in ("scan", "loop") if "jax" in frameworks]
    return cases


# The mesh bench's meshes: each way of splitting over two devices, and the 2-D one over four.
MESHES = ("data:2", "fsdp:2", "tensor:2", "fsdp:2,tensor:2")


# The link sweep (benches/test_sweep.py): each way of splitting over two hosts, at each rate of a grid.
SWEEP_MESHES = ("data:2", "fsdp:2", "tensor:2")
QUICK_RATES = ("200mbit", "50mbit", "10mbit")  # the quick grid; scripts/link_sweep.py runs the full one
SMOKE_POINT = ("torch-cpu-tiny-fp32-data2-2hosts", "10mbit")  # the one point a smoke run takes
POINT_SECONDS = 10.0  # timed work per point, at least MIN_STEPS steps, at most MAX_STEPS
MIN_STEPS, MAX_STEPS = 5, 30


def sweep_marks(case, rate: str, smoke: bool, selected: bool) -> list:
    """A sweep point's marks: its own marker, one worker process at a time; skipped unless the
    sweep was asked for (-m sweep), and in a smoke run all but ``SMOKE_POINT``."""
    marks = [pytest.mark.sweep, pytest.mark.xdist_group("scaling"), pytest.mark.multidevice]
    if smoke and (case.id, rate) != SMOKE_POINT:
        marks.append(pytest.mark.skip(reason="a smoke run takes one point of the link sweep"))
    elif not smoke and not selected:
        marks.append(pytest.mark.skip(reason="the link sweep runs when asked for: pytest benches -m sweep "
                                             "(make sweep-quick), or its full grid: make sweep"))
    elif session.hosts_missing:
        marks.append(pytest.mark.skip(reason=f"{case.id}: {session.hosts_missing}"))
    elif visible(case.framework, case.device) < case.devices:
        marks.append(pytest.mark.skip(reason=f"{case.id}: needs {case.devices} cores for one thread each"))
    return marks + _hardware_and_size(case) + _missing(case)


def scaling_counts(framework: str, device: str) -> list[int]:
    """1, 2 and every device the framework sees (on a CPU: a device per --threads cores)."""
    return sorted({1, 2, max(visible(framework, device), 1)})


def visible(framework: str, device: str) -> int:
    if device == "cpu":
        # The session's budget, as its set-up parsed --threads (benches/conftest.py): a device per
        # pinned budget of cores, or per core with the whole machine.
        budget = session.setup.threads if session.setup else None
        return len(threads.usable_cores()) // (budget.threads if budget and budget.pinned else 1)
    return device_counts(framework).get(device, 0)


def marks(case, kind: str) -> list:
    """A case's marks, or a pair's (``pair_marks``)."""
    if isinstance(case, Pairing):
        return pair_marks(case)
    marks = []
    if kind == "costs":
        marks += [pytest.mark.costs, pytest.mark.quick]
    if kind in ("scaling", "mesh", "costs"):
        # Worker processes, one case at a time: two cases' ranks would share the cores.
        marks.append(pytest.mark.xdist_group("scaling"))
        if case.hosts and session.hosts_missing:
            marks.append(pytest.mark.skip(reason=f"{case.id}: {session.hosts_missing}"))
        if case.devices > 1:
            marks.append(pytest.mark.multidevice)
            seen = visible(case.framework, case.device)
            if case.devices > seen:
                what = "cores for one thread each" if case.device == "cpu" else f"{case.device.upper()}s"
                marks.append(pytest.mark.skip(reason=f"{case.id}: needs {case.devices} devices; "
                                                     f"{case.framework} sees {seen} ({what})"))
    marks += _hardware_and_size(case)
    if case.compile:
        marks.append(pytest.mark.slow)
    # The quick subset: what the regression gate tracks. fp32, default variants, the default
    # sizes; train steps of mtcore's two implementations and decoding (the paired headline too:
    # pair_marks). The pull-request gate's subset (scripts/bench_gate.py) is the same cases:
    # each framework's own numbers.
    if kind in ("train", "decode") and case.default and case.size in DEFAULT_SIZES and case.framework != "hf":
        marks += [pytest.mark.quick, pytest.mark.gate]
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
    return marks + _missing(case)


def pair_marks(pair: Pairing) -> list:
    """The paired headline: in the quick subset (fp32, default sizes), never in the gate's: it is a
    torch-vs-JAX comparison, not a property of one tree."""
    quick = [pytest.mark.quick] if pair.precision == "fp32" and pair.size in DEFAULT_SIZES else []
    return _hardware_and_size(pair) + quick + _missing(pair)


def _hardware_and_size(case) -> list:
    marks = [getattr(pytest.mark, case.device)] if case.device in ("gpu", "tpu") else []
    return marks + ([pytest.mark.slow] if case.size in ("base", "marian-en-hu") else [])


def _missing(case) -> list:
    reason = case.missing()
    return [pytest.mark.skip(reason=f"{case.id}: {reason}")] if reason else []
