from __future__ import annotations

import pytest

import mtcore


@pytest.fixture(scope="session")
def torch_backend():
    reason = mtcore.available("torch")
    if reason:
        pytest.skip(reason)
    return mtcore.backend("torch")


@pytest.fixture(scope="session")
def jax_backend():
    reason = mtcore.available("jax")
    if reason:
        pytest.skip(reason)
    return mtcore.backend("jax")


@pytest.fixture(scope="session")
def backends(torch_backend, jax_backend):
    return {"torch": torch_backend, "jax": jax_backend}
