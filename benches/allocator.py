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
"""

from __future__ import annotations

import ctypes
import ctypes.util

# glibc's malloc.h
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
TOP_PAD_BYTES = 64 << 20
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's maximum on 64-bit (HEAP_MAX_SIZE / 2)


def keep_freed_memory() -> dict:
    """Apply the settings above where glibc is the allocator; return what was done (stored in
    every run's machine_info, so a run says which allocator settings its numbers had)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        version = libc.gnu_get_libc_version
    except (OSError, AttributeError):
        return {"allocator": "not glibc: left as it is"}
    version.restype = ctypes.c_char_p
    applied = bool(libc.mallopt(M_TOP_PAD, TOP_PAD_BYTES)) and bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    return {
        "allocator": f"glibc {version().decode()}",
        "mallopt": {"M_TOP_PAD": TOP_PAD_BYTES, "M_MMAP_THRESHOLD": MMAP_THRESHOLD_BYTES} if applied else "refused",
    }
