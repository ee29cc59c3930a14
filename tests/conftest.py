from __future__ import annotations

import pytest

import mtcore


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
