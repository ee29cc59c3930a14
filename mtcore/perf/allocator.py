"""Keep the memory a step frees inside the process, so a timed round never pays for page faults
that the previous one caused by handing memory back to the OS.

glibc hands emptied heaps back and maps large buffers afresh; how often depends on the process's
allocation history, so whole runs of an unchanged tree landed in different "modes". The settings,
through ``mallopt`` at run time (environment variables would have to be set before Python starts):
``M_TOP_PAD``, so an arena keeps an emptied heap; ``M_MMAP_THRESHOLD`` at glibc's largest, so
buffers up to it come from the arenas instead of a fresh ``mmap``; ``M_MMAP_MAX`` 0 with trimming
off, so the main arena grows its heap instead of mapping and keeps what it grew. The other half
is JAX's: an arena other than the main one maps anything past its heap size afresh whatever these
say, so JAX's CPU programs run on the calling thread (``mtcore.jax.backend.run_on_calling_thread``)
and take their buffers from the main heap. ``MALLOC_ARENA_MAX=1`` also works, at a cost per step.
Other C libraries (macOS, musl) have their own allocators: nothing is changed there, and the run
says so. The investigation and its figures: docs/findings/2026-11-27-allocator-page-faults.md.
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
