"""What a run stores about the machine, and how a compared run's machine is checked: the hardware
fingerprint runs are saved under, ``machine_info`` (the process set-up included, as run.json has
it), and one line naming what differs from a compared run instead of pytest-benchmark's dump."""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

import pytest
from inputs import session

import mtcore


def stop(message: str) -> None:
    """One line and exit status 2 for a run that cannot do what it was asked, never a traceback."""
    pytest.exit(f"mtcore benches: {message}", returncode=2)


_flush_info: dict = {}


def flush_json(config) -> None:
    """pytest-benchmark's --benchmark-json file, written now with what has run so far, atomically
    (pytest-benchmark writes it once, at the end of the session, as it always has); the saved runs
    (--benchmark-save/-autosave) are not touched. The machine and commit info are gathered once.
    Not under xdist, whose workers hand results to the controller; not where --benchmark-json is an
    open file (older pytest-benchmark), which only the session's end may write."""
    bs = getattr(config, "_benchmarksession", None)
    if (bs is None or not isinstance(bs.json, (str, os.PathLike)) or os.environ.get("PYTEST_XDIST_WORKER")
            or not any(b for b in bs.benchmarks)):
        return
    from pytest_benchmark.utils import safe_dumps

    from mtcore.files import atomic_path

    if not _flush_info:
        _flush_info.update(machine_info=bs.get_machine_info(),
                           commit_info=config.hook.pytest_benchmark_generate_commit_info(config=config))
    output = config.hook.pytest_benchmark_generate_json(config=config, benchmarks=bs.benchmarks, include_data=True,
                                                        **_flush_info)
    config.hook.pytest_benchmark_update_json(config=config, benchmarks=bs.benchmarks, output_json=output)
    with atomic_path(bs.json) as tmp:
        Path(tmp).write_text(safe_dumps(output, ensure_ascii=True, indent=4))


def store_by_fingerprint() -> None:
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


def update_machine_info(machine_info: dict) -> None:
    for key in _VOLATILE_CPU_KEYS:
        machine_info.get("cpu", {}).pop(key, None)
    machine_info["mtcore"] = {
        "hardware": hardware(),
        # Threads, allocator, each framework's settings, the compile cache: as run.json has them.
        **session.setup.as_dict(),
        "cpu_bf16": list(mtcore.devices.cpu_bf16()),  # bf16 instructions, or none: emulated
        "transformers": mtcore.devices.info()["transformers"],
        # XLA's compiler flags move JAX's numbers (docs/findings/2026-11-27-jax-small-cpu-step.md):
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


def compare_machine_info(benchmarksession, machine_info, compared_benchmark):
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
        yield  # pytest-benchmark's own check (the hook wrapper in conftest.py)
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
        stop(f"the compared run ({compared_benchmark.get('commit_info', {}).get('id', '?')[:12]}) was measured on "
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


