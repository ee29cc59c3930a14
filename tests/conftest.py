from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# numpy.fft up front: torch.compile imports it lazily, from whichever thread compiles first, and a
# numpy extension whose import was interrupted cannot be imported again in that process ("cannot
# load module more than once per process"); one xdist worker's later HF tests failed so.
import numpy.fft  # noqa: F401
import pytest
from helpers import FAST_COMPILE

import mtcore
from mtcore.perf import threads
from mtcore.perf.setup import compile_cache_dir

# The tests compile JAX programs with LLVM's code generation at -O0 (XLA's own HLO passes, fusion
# included, run as always): on a 2-core machine compiling is most of a JAX test's time and the
# tests' programs are tiny and run a few steps. Every process the tests start inherits it, but those
# that run as users run them: the real-text run and the allocator probes (helpers.as_users_run),
# and test_benches_cli's bench sessions (started without XLA_FLAGS). The optimised code is checked
# by the benches, which assert each result against the other framework before timing it
# (docs/testing.md). XLA reads the variable when JAX starts its backends: before any test does.
if FAST_COMPILE not in os.environ.get("XLA_FLAGS", "").split():
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + FAST_COMPILE).strip()

# The compile caches mtcore keeps between runs (mtcore.perf.setup) start empty for every test
# session and go with it: a test never depends on an earlier session's compiles, and nothing is
# left behind. (torch's own inductor cache stays where TORCHINDUCTOR_CACHE_DIR says.)
if "MTCORE_CACHE_DIR" not in os.environ:
    os.environ["MTCORE_CACHE_DIR"] = tempfile.mkdtemp(prefix="mtcore-test-cache-")
    atexit.register(shutil.rmtree, os.environ["MTCORE_CACHE_DIR"], ignore_errors=True)

try:
    import jax

    # Four CPU host devices for the data-parallel tests; JAX reads this once, before it starts its
    # backends. Single-device code uses the first.
    jax.config.update("jax_num_cpu_devices", 4)
    # The tests' own processes keep JAX's compiled programs where the runs they start keep theirs
    # (the session's cache above, shared by both xdist workers, which inherit it from the
    # controller): the same model, step and shape compiled by several tests and processes is
    # compiled once. Programs quicker to compile than to store stay out. torch's inductor cache is
    # on by default, in TORCHINDUCTOR_CACHE_DIR. A test that needs a cold compile asks for one
    # (the backends' fresh_compile turns the cache off).
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(compile_cache_dir() / "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
except ImportError:
    pass

# Under pytest -n N each worker's torch and BLAS pools take their share of the cores (no affinity:
# a test that starts processes gives them every core), as the benches' workers do.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    threads.apply(None, slot=int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0),
                  slots=int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
# The pytest and bench sessions the tests start are sessions of their own, not xdist workers
# (pytest-benchmark reads PYTEST_XDIST_WORKER and would turn itself off); xdist itself keeps what
# it needs in the worker's config.
for _name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
    os.environ.pop(_name, None)


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

