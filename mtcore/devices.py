"""What hardware each framework sees, asked of each framework through ``mtcore.backend.framework``.
Drives ``mtcore info`` and the benches' skip marks, so the two always agree."""

from __future__ import annotations

import importlib.metadata
import os
import platform

FRAMEWORKS = ("torch", "jax")
# Each backend's colour in every plot (the reports', the link sweep's): the frameworks, then HF's baseline.
PALETTE = dict(zip((*FRAMEWORKS, "hf"), ("tab:orange", "tab:blue", "tab:green"), strict=True))
DEVICE_KINDS = ("cpu", "gpu", "tpu")
# The x86 instructions that do bf16 arithmetic; without them a CPU's bf16 step is an emulation.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_bf16() -> tuple[str, ...]:
    """Which of ``BF16_CPU_FLAGS`` this CPU has (Linux's /proc/cpuinfo; elsewhere py-cpuinfo's flags)."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        try:
            from cpuinfo import get_cpu_info

            flags = set(get_cpu_info().get("flags", []))
        except ImportError:
            pass
    return tuple(f for f in BF16_CPU_FLAGS if f in flags)


def device_counts(name: str) -> dict[str, int]:
    """How many devices of each kind backend ``name`` sees; empty if it is not installed."""
    from mtcore.backend import available, framework

    if available(name):
        return {}
    return {kind: framework(name).device_counts().get(kind, 0) for kind in DEVICE_KINDS}


def missing(name: str, device: str) -> str | None:
    """None if backend ``name`` can run on ``device``, else a reason naming what is missing."""
    from mtcore.backend import available, framework

    reason = available(name)
    if reason:
        return reason
    why = framework(name).unsupported(device)
    if why:
        return f"{name} {why}"
    if device_counts(name).get(device, 0) == 0:
        package = framework(name).PACKAGES[0]
        return f"{name} sees no {device.upper()} device (installed build: {package} {_version(package)})"
    return None


def info() -> dict:
    """Framework versions and the devices each framework sees."""
    from mtcore.backend import available, framework

    out = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "frameworks": {},
    }
    for name in FRAMEWORKS:
        reason = available(name)
        if reason:
            out["frameworks"][name] = {"available": False, "reason": reason}
            continue
        fw = framework(name)
        out["frameworks"][name] = {
            "available": True,
            "versions": {p: _version(p) for p in fw.PACKAGES},
            "devices": fw.visible_devices(),
            "device_counts": device_counts(name),
        }
    out["transformers"] = _version("transformers")
    return out
