"""mtcore/perf/allocator.py: the memory a thread frees stays in the process, so a later round that
allocates as much again makes no page faults (the cause of the JAX train step's per-process modes)."""

import platform
import subprocess
import sys

import pytest
from helpers import as_users_run

# In a thread of its own (a glibc arena other than the main one, like XLA's worker): four rounds of
# three 25 MB buffers, written, then freed; prints the thread's minor page faults per round.
PROBE = """
import ctypes, resource, sys, threading
if sys.argv[1] == "keep":
    from mtcore.perf.allocator import keep_freed_memory
    assert isinstance(keep_freed_memory()["mallopt"], dict)
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
faults = []
def rounds():
    for _ in range(4):
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        buffers = [libc.malloc(25 << 20) for _ in range(3)]
        for b in buffers:
            ctypes.memset(b, 1, 25 << 20)
        for b in buffers:
            libc.free(b)
        faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
t = threading.Thread(target=rounds)
t.start()
t.join()
print(*faults)
"""


# glibc as it comes: no allocator settings inherited from the environment of the test run; XLA's
# optimised programs, whose buffers are what the probes count.
CLEAN_ENV = {k: v for k, v in as_users_run().items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}


def _run(script: str, *args: str) -> list[str]:
    """What a fresh Python process running ``script`` prints, split into words."""
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                         timeout=120, check=True, env=CLEAN_ENV).stdout
    return out.split()


def _faults(probe: str, *args: str) -> list[int]:
    return [int(x) for x in _run(probe, *args)]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt; other C libraries are left alone")
def test_freed_memory_is_reused_without_page_faults():
    pages = 3 * (25 << 20) // 4096
    plain, kept = _faults(PROBE, "plain"), _faults(PROBE, "keep")
    assert all(f >= 0.9 * pages for f in (plain[0], kept[0])), (plain, kept)  # the first round maps everything
    # glibc as it comes hands the buffers back and faults them in again (the probe's own check that it
    # reproduces the problem), with the settings the later rounds reuse them.
    assert max(plain[1:]) >= pages // 4, plain
    assert max(kept[1:]) < pages // 100, kept


# A jitted JAX program with ~128 MB of intermediates (XLA's temporary buffer, taken per run: twice
# the 64 MB heap a glibc arena other than the main one holds), run argv[2] times; prints the process's
# minor page faults per run.
JAX_PROBE = """
import resource, sys
from mtcore.perf import threads
from mtcore.perf.allocator import keep_freed_memory
threads.apply(1)  # as a bench with --threads 1: XLA's pool sized before JAX starts
if "mallopt" in sys.argv[1]:
    assert isinstance(keep_freed_memory()["mallopt"], dict)
if "sync" in sys.argv[1]:
    from mtcore.jax.backend import run_on_calling_thread
    run_on_calling_thread()
import jax, jax.numpy as jnp
@jax.jit
def f(x):
    a = jnp.sin(x)
    b = jnp.cumsum(a, axis=0)  # a and b are both alive: neither fuses away
    return (b * a[::-1]).sum()
x = jnp.ones((4096, 4096), jnp.float32)  # 64 MB
faults = []
for _ in range(int(sys.argv[2])):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(*faults)
"""


@pytest.mark.slow
@pytest.mark.jax
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt; other C libraries are left alone")
def test_jax_temporary_buffers_are_reused_without_page_faults():
    pages = (64 << 20) // 4096  # one 64 MB array: the temporary buffer holds two
    # As JAX comes, and with the mallopt half alone (XLA's worker thread maps the buffer afresh,
    # its arena cannot hold it): every run faults the buffer in again.
    for mode in ("plain", "mallopt"):
        runs = _faults(JAX_PROBE, mode, "4")
        assert min(runs[1:]) >= pages // 2, (mode, runs)
    # Both halves: the buffer comes from the main heap, kept; once the heap has grown, runs fault
    # nothing. How many runs the heap takes to grow varies (on a busy machine the first four faulted
    # once, and a stray run can map its buffer again): three quiet runs of seven, against none above.
    both = _faults(JAX_PROBE, "mallopt+sync", "8")
    assert sum(f < pages // 100 for f in both[1:]) >= 3, both


@pytest.mark.jax
def test_jax_dispatch_setting_says_what_the_backend_read():
    def answers(script):
        return _run("import jax\nfrom mtcore.jax.backend import run_on_calling_thread as run\n" + script)

    word = "print(run().split()[0])\n"
    # In time, and asked again once the backend runs: synchronous both times.
    assert answers(word + "jax.devices()\n" + word) == ["synchronous", "synchronous"]
    # Too late (the backend started first, asynchronous): it says so instead of claiming the setting.
    assert answers("jax.devices()\n" + word) == ["asynchronous"]
