"""Keep the memory a step frees inside the process, so a timed round never pays for page faults
that the previous one caused by handing memory back to the OS.

Found on the 2-core CI-like VM (strace, and ``ru_minflt`` per round): JAX's tiny CPU train step
ran ~21 ms a round, except for bursts of 2-3 rounds at ~30 ms, each with ~5,700 minor page faults
(~22 MB made anew) where the other rounds had none. XLA's worker thread allocates from a glibc
arena of its own; when its use crossed the arena's 64 MB heap boundary glibc mapped a second heap
and, once that emptied, unmapped it again (``heap_trim`` ignores ``M_TRIM_THRESHOLD``: only
``M_TOP_PAD`` holds it back), 54 times in 300 steps. How often that happens depends on the
process's allocation history, so whole runs of an unchanged tree read 22 ms or 30 ms: the
"per-process modes" that failed back-to-back ``--benchmark-compare`` runs.

glibc's ``mallopt`` at run time (environment variables would have to be set before Python starts):
``M_TOP_PAD`` 64 MB, so an arena keeps an emptied heap and trims only beyond that pad, and
``M_MMAP_THRESHOLD`` 32 MB (glibc's largest), so buffers up to that size come from the arenas
(where the pad keeps them) instead of a fresh ``mmap`` each time; glibc's dynamic threshold would
drift there anyway, at a moment that depends on the run. ``MALLOC_ARENA_MAX=1`` also removed the
faults but cost ~8% per step (one arena, its lock shared by every thread). Other C libraries
(macOS, musl) have their own allocators: nothing is changed there, and the run says so.

The same faults, larger, were a fifth of JAX's ``small`` CPU step (perf, 2026-11-27): XLA takes
one temporary buffer per run of a program (301 MB for ``small`` at 16 x 48) and, with JAX's
asynchronous CPU dispatch, from its worker thread. A glibc arena other than the main one holds
heaps of at most 64 MB and maps anything larger afresh, whatever ``M_MMAP_MAX`` says, so every step
mapped, faulted in (77,099 minor faults) and unmapped 301 MB. The fix has two halves:
``M_MMAP_MAX`` 0 with trimming off (``M_TRIM_THRESHOLD`` -1), so the main arena grows its heap
instead of mapping and keeps what it grew, and ``run_jax_on_calling_thread``: JAX's
``jax_cpu_enable_async_dispatch`` off, so a CPU program runs on the thread that calls it and takes
its buffer from that heap. A timed step is waited for anyway, so nothing is lost to the
synchronous call. Paired, one pinned core, 15 steps per process: JAX 590 -> 466 ms a step, 0
faults; torch (which maps its own buffers over 32 MB) 372 -> 358 ms.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
TOP_PAD_BYTES = 64 << 20
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's maximum on 64-bit (HEAP_MAX_SIZE / 2)
SETTINGS = {  # in the order applied
    "M_TOP_PAD": (M_TOP_PAD, TOP_PAD_BYTES),
    "M_MMAP_THRESHOLD": (M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
    "M_MMAP_MAX": (M_MMAP_MAX, 0),  # the main arena never maps: it grows its heap
    "M_TRIM_THRESHOLD": (M_TRIM_THRESHOLD, -1),  # -1: never trim the main heap
}


def keep_freed_memory() -> dict:
    """Apply the settings above where glibc is the allocator; return what was done (stored in
    every run's machine_info, so a run says which allocator settings its numbers had)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        version = libc.gnu_get_libc_version
    except (OSError, AttributeError):
        return {"allocator": "not glibc: left as it is"}
    version.restype = ctypes.c_char_p
    refused = [name for name, (param, value) in SETTINGS.items() if not libc.mallopt(param, value)]
    return {
        "allocator": f"glibc {version().decode()}",
        "mallopt": {name: value for name, (_, value) in SETTINGS.items()} if not refused else f"refused: {', '.join(refused)}",
    }


def run_jax_on_calling_thread() -> dict:
    """Turn JAX's asynchronous CPU dispatch off (before its CPU backend exists; it reads the flag
    once), so XLA's per-run buffers come from the main heap that the settings above keep."""
    import jax
    from jax._src import xla_bridge  # as mtcore/jax/backend.py's set_threads: no public API asks this

    if not xla_bridge.backends_are_initialized():
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    elif jax.config.read("jax_cpu_enable_async_dispatch"):
        # Too late to change: the CPU client read the flag when it started. Say what it read.
        return {"jax_cpu_dispatch": "asynchronous (JAX's backends had started before it could be changed)"}
    return {"jax_cpu_dispatch": "synchronous (programs run on the calling thread)"}
