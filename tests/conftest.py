from __future__ import annotations

import os
from pathlib import Path

import pytest

import mtcore

try:
    import jax

    # Four CPU host devices for the data-parallel tests; JAX reads this once, before it starts its
    # backends. Single-device code uses the first.
    jax.config.update("jax_num_cpu_devices", 4)
except ImportError:
    pass


def _backend_or_skip(name: str):
    reason = mtcore.available(name)
    if reason:
        pytest.skip(reason)
    return mtcore.backend(name)


@pytest.fixture(scope="session")
def torch_backend():
    return _backend_or_skip("torch")


@pytest.fixture(scope="session")
def jax_backend():
    return _backend_or_skip("jax")


@pytest.fixture(scope="session")
def backends(torch_backend, jax_backend):
    return {"torch": torch_backend, "jax": jax_backend}


# The English-Hungarian text lives beside the project, never inside it; MTCORE_DATA points elsewhere.
DATA_DIR = Path(os.environ.get("MTCORE_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    here = DATA_DIR / "en-hu"
    if not (here / "tatoeba.en").is_file():
        pytest.skip(f"no English-Hungarian text at {here} (set MTCORE_DATA to the folder holding en-hu/)")
    return here
