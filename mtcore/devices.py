"""What hardware each framework sees. Drives ``mtcore info`` and the benches' skip marks, so the
two always agree."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform

FRAMEWORKS = ("torch", "jax")
DEVICE_KINDS = ("cpu", "gpu", "tpu")
# Backends that run on PyTorch (the HF baseline too): they see what torch sees.
TORCH_BASED = ("torch", "hf")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def torch_devices() -> list[str]:
    import torch

    out = [f"cpu ({torch.get_num_threads()} threads)"]
    if torch.cuda.is_available():
        out += [f"gpu:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    return out


def jax_devices() -> list[str]:
    import jax

    return [f"{d.platform}:{d.id} {d.device_kind}" for d in jax.devices()] + (
        [] if jax.default_backend() == "cpu" else [f"cpu:{d.id} {d.device_kind}" for d in jax.devices("cpu")]
    )


def device_counts(framework: str) -> dict[str, int]:
    """How many devices of each kind ``framework`` sees; empty if it is not installed."""
    from mtcore.backend import available

    if available(framework):
        return {}
    counts = dict.fromkeys(DEVICE_KINDS, 0)
    if framework in TORCH_BASED:
        import torch

        counts["cpu"] = 1
        counts["gpu"] = torch.cuda.device_count() if torch.cuda.is_available() else 0
    else:
        import jax

        for kind in DEVICE_KINDS:
            try:
                counts[kind] = len(jax.devices(kind))
            except RuntimeError:
                pass
    return counts


def missing(framework: str, device: str) -> str | None:
    """None if ``framework`` can run on ``device``, else a reason naming what is missing."""
    from mtcore.backend import available

    reason = available(framework)
    if reason:
        return reason
    if device == "tpu" and framework in TORCH_BASED:
        return f"{framework} on TPU (torch_xla) is not supported by mtcore"
    if device_counts(framework).get(device, 0) == 0:
        package = "torch" if framework in TORCH_BASED else framework
        return f"{framework} sees no {device.upper()} device (installed build: {package} {_version(package)})"
    return None


def info() -> dict:
    """Framework versions and the devices each framework sees."""
    from mtcore.backend import available

    out = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "frameworks": {},
    }
    for name, lister in (("torch", torch_devices), ("jax", jax_devices)):
        reason = available(name)
        if reason:
            out["frameworks"][name] = {"available": False, "reason": reason}
            continue
        packages = ("torch",) if name == "torch" else ("jax", "jaxlib", "flax", "optax")
        out["frameworks"][name] = {
            "available": True,
            "versions": {p: _version(p) for p in packages},
            "devices": lister(),
            "device_counts": device_counts(name),
        }
    out["transformers"] = _version("transformers")
    return out
