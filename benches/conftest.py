"""The one place that owns the benches' framework x device x size (x variant) parametrisation,
what each case needs (weights, batch, reference results, the GEMM peak), the machine_info stored
with every run, and the terminal summary of what pytest-benchmark does not print itself."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from functools import cache

import numpy as np
import pytest

import mtcore
from mtcore.config import PRESETS
from mtcore.devices import DEVICE_KINDS, missing

FRAMEWORKS = ("torch", "jax", "hf")
DEFAULT_SIZES = ("tiny", "small")
# (batch, source length, target length) per size; marian-en-hu is the 8 x 64 tokens.
SHAPES = {"tiny": (16, 32, 32), "small": (16, 48, 48), "base": (8, 64, 64), "marian-en-hu": (8, 64, 64)}
# Timed rounds on a CPU; accelerators take ACCEL_ROUNDS whatever the size.
CPU_ROUNDS = {"tiny": 20, "small": 8, "base": 4, "marian-en-hu": 4}
ACCEL_ROUNDS = 30
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
    variant: str = ""  # torch: eager | compile; jax: scan | loop

    def __post_init__(self):
        if not self.variant:
            object.__setattr__(self, "variant", DEFAULT_VARIANT[self.framework])

    @property
    def id(self) -> str:
        parts = [self.framework, self.device, self.size, self.precision]
        if self.variant != DEFAULT_VARIANT[self.framework]:
            parts.append(self.variant)
        return "-".join(parts)

    def model_config(self, **changes) -> mtcore.ModelConfig:
        stacking = {"layer_stacking": self.variant} if self.framework == "jax" else {}
        return mtcore.ModelConfig.preset(self.size, **stacking, **changes)

    def train_config(self) -> mtcore.TrainConfig:
        return mtcore.TrainConfig(precision=self.precision)

    def backend(self):
        return _backend(self.framework, self.device)

    @property
    def rounds(self) -> int:
        return CPU_ROUNDS[self.size] if self.device == "cpu" else ACCEL_ROUNDS

    def missing(self) -> str | None:
        return missing(self.framework, self.device)


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
    if unknown:
        raise pytest.UsageError(f"unknown {what} {', '.join(unknown)}; choose from {', '.join(known)} or 'all'")
    return items


def pytest_addoption(parser):
    group = parser.getgroup("mtcore benches")
    group.addoption("--framework", help=f"comma list of {', '.join(FRAMEWORKS)} (default: all)")
    group.addoption("--device", help=f"comma list of {', '.join(DEVICE_KINDS)} (default: all; absent ones skip)")
    group.addoption("--size", help=f"comma list of {', '.join(PRESETS)}, or 'all' (default: {','.join(DEFAULT_SIZES)})")
    group.addoption("--rounds", type=int, help="timed rounds per benchmark (default: by size and device)")


def _selection(config) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    frameworks = _csv(config.getoption("--framework"), FRAMEWORKS, "framework") or FRAMEWORKS
    devices = _csv(config.getoption("--device"), DEVICE_KINDS, "device") or DEVICE_KINDS
    sizes = _csv(config.getoption("--size"), tuple(PRESETS), "size") or DEFAULT_SIZES
    return frameworks, devices, sizes


def _cases(kind: str, frameworks, devices, sizes) -> list[Case]:
    """The cases a bench of ``kind`` runs. Variants ride on the default precision only, and
    precision on the default variant only: each comparison a user would make, not every product."""
    cases = []
    for device in devices:
        for size in sizes:
            for fw in ("torch", "jax"):
                if fw not in frameworks:
                    continue
                if kind == "train":
                    cases += [Case(fw, device, size), Case(fw, device, size, "bf16"),
                              Case(fw, device, size, variant=OTHER_VARIANT[fw])]
                elif kind == "compile":
                    cases += [Case(fw, device, size, variant="compile")] if fw == "torch" else [
                        Case(fw, device, size), Case(fw, device, size, variant="loop")]
                elif kind == "decode":
                    cases.append(Case(fw, device, size))
            if kind == "train" and "hf" in frameworks:
                cases.append(Case("hf", device, size))
    if kind == "depth":  # a property of layer stacking, measured on tiny layers
        cases = [Case("jax", d, "tiny", variant=v) for d in devices for v in ("scan", "loop") if "jax" in frameworks]
    return cases


def _marks(case: Case, kind: str) -> list:
    marks = []
    if case.device in ("gpu", "tpu"):
        marks.append(getattr(pytest.mark, case.device))
    if case.size in ("base", "marian-en-hu") or case.variant == "compile":
        marks.append(pytest.mark.slow)
    # The two slowest families share a process each under `-n 2 --dist loadgroup`: torch.compile
    # cases reuse the kernels the first of them built, and the unrolled-loop compiles (minutes at
    # 24 layers on a CPU) do not queue behind them.
    # JAX's compile and train benches of one program share a process too, so the train bench runs
    # the program the compile bench just built instead of compiling it again.
    if case.variant == "compile":
        marks.append(pytest.mark.xdist_group("torch-compile"))
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


def pytest_configure(config):
    config.addinivalue_line("markers", "cases(kind): parametrise a bench over the cases of that kind")
    config.addinivalue_line("markers", "xdist_group(name): keep these cases on one process under --dist loadgroup")
    # Identical arithmetic in fp32: XLA would otherwise run fp32 matmuls as TF32 on NVIDIA GPUs,
    # which PyTorch does not by default. bf16 cases are the fast path, in both frameworks.
    if mtcore.available("jax") is None:
        import jax

        jax.config.update("jax_default_matmul_precision", "highest")
    if mtcore.available("torch") is None:
        import torch

        torch.set_float32_matmul_precision("highest")
        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        if workers > 1:
            # Processes sharing the CPU (pytest -n): each takes its share of the cores, else every
            # process's intra-op pool spans all of them and they oversubscribe the machine.
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


# ---- what the benches share ------------------------------------------------------------------
@pytest.fixture(scope="session")
def rounds(request):
    override = request.config.getoption("--rounds")
    return lambda case: override or case.rounds


@cache
def weights(size: str) -> dict[str, np.ndarray]:
    """The initial weights every framework starts from, per size."""
    from mtcore.weights import init_tree

    return init_tree(mtcore.ModelConfig.preset(size), seed=0)


@cache
def batch(size: str) -> mtcore.Batch:
    """A full (unpadded) batch: every framework does exactly the same work."""
    return mtcore.random_batch(mtcore.ModelConfig.preset(size), *SHAPES[size], seed=0, full=True)


def other_framework(framework: str) -> str | None:
    """An installed mtcore implementation other than ``framework``'s (for ``hf`` either one is):
    what each bench checks its own result against. None when there is none."""
    for other in ("torch", "jax"):
        if other != framework and mtcore.available(other) is None:
            return other
    return None


@cache
def reference_logits(size: str, framework: str) -> np.ndarray | None:
    """fp32 CPU logits of ``other_framework(framework)`` on the shared weights and batch."""
    other = other_framework(framework)
    if other is None:
        return None
    be = _backend(other, "cpu")
    cfg = mtcore.ModelConfig.preset(size)
    return be.forward(be.from_numpy(cfg, weights(size)), cfg, batch(size))


_peaks: dict[tuple[str, str], dict[str, float]] = {}


def gemm_peak(device: str, precision: str) -> float:
    """The best matmul FLOP/s any installed framework reaches on ``device``: MFU's denominator."""
    from mtcore.timing import gemm_peak as measure

    key = (device, precision)
    if key not in _peaks:
        _peaks[key] = {fw: measure(fw, device, precision) for fw in ("torch", "jax") if missing(fw, device) is None}
    return max(_peaks[key].values())


def median_seconds(benchmark) -> float | None:
    """The timed median, or None under --benchmark-disable (each bench then runs once, untimed)."""
    stats = getattr(benchmark, "stats", None)
    return stats.stats.median if stats is not None else None


# ---- stored and printed results --------------------------------------------------------------
def hardware() -> dict:
    """What the results depend on: device kinds and counts per framework, thread counts."""
    from mtcore.devices import info

    data = info()
    out = {"cpu_count": data["cpu_count"], "frameworks": {}}
    for name, fw in data["frameworks"].items():
        if fw["available"]:
            out["frameworks"][name] = {"versions": fw["versions"], "devices": fw["devices"],
                                       "device_counts": fw["device_counts"]}
    return out


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["mtcore"] = {
        "hardware": hardware(),
        "gemm_peak_flops": {f"{d}-{p}": v for (d, p), v in _peaks.items()},
        "transformers": mtcore.devices.info()["transformers"],
    }


def pytest_benchmark_compare_machine_info(config, benchmarksession, machine_info, compared_benchmark):
    saved = (compared_benchmark.get("machine_info") or {}).get("mtcore", {}).get("hardware")
    current = machine_info.get("mtcore", {}).get("hardware")
    if saved is None or current is None:
        return
    saved_devices = {k: v.get("devices") for k, v in saved.get("frameworks", {}).items()}
    current_devices = {k: v.get("devices") for k, v in current.get("frameworks", {}).items()}
    if saved_devices != current_devices or saved.get("cpu_count") != current.get("cpu_count"):
        benchmarksession.logger.warning(
            "MTCORE: the compared run was measured on DIFFERENT HARDWARE: "
            f"saved {json.dumps(saved_devices)} ({saved.get('cpu_count')} CPUs) vs now "
            f"{json.dumps(current_devices)} ({current.get('cpu_count')} CPUs). Time differences are "
            "not regressions."
        )


def _fmt(value, scale=1.0, digits=1, suffix=""):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value * scale:,.{digits}f}{suffix}"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    benchmarks = [b for b in getattr(session, "benchmarks", []) if b.extra_info]
    if not benchmarks:
        return
    tr = terminalreporter
    tr.section("mtcore: throughput, MFU, memory, compile (pytest-benchmark's extra_info)")
    header = f"{'benchmark':58} {'median ms':>10} {'tokens/s':>10} {'TFLOP/s':>8} {'MFU':>7} {'mem MB':>8} {'compile s':>9}"
    tr.write_line(header)
    for b in sorted(benchmarks, key=lambda b: (b.group or "", b.name)):
        e = b.extra_info
        median = b.stats.median if b.stats else None
        tr.write_line(
            f"{b.name:58} {_fmt(median, 1e3, 2):>10} {_fmt(e.get('tokens_per_s'), 1, 0):>10} "
            f"{_fmt(e.get('achieved_flops'), 1e-12, 3):>8} {_fmt(e.get('mfu'), 100, 1, '%'):>7} "
            f"{_fmt(e.get('memory_bytes'), 1e-6, 0):>8} {_fmt(e.get('compile_s'), 1, 2):>9}"
        )
    _print_ratios(tr, benchmarks)


def _print_ratios(tr, benchmarks):
    """Speed ratios within each group (same device, size, precision), measured in this process."""
    by_group: dict[str, dict[str, float]] = {}
    for b in benchmarks:
        if b.stats and b.group:
            by_group.setdefault(b.group, {})[b.extra_info.get("case", b.name)] = b.stats.median
    lines = []
    for group, medians in sorted(by_group.items()):
        if len(medians) < 2:
            continue
        fastest = min(medians, key=medians.get)
        ranked = sorted(medians.items(), key=lambda kv: kv[1])[1:]
        rest = ", ".join(f"{name} {t / medians[fastest]:.2f}x" for name, t in ranked)
        lines.append(f"{group}: fastest {fastest}; slower: {rest}")
    if lines:
        tr.write_line("")
        tr.write_line("ratios of medians within each group (one process, so machine drift affects all alike):")
        for line in lines:
            tr.write_line("  " + line)
