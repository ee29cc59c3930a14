"""The one process set-up: what every process that trains or times does before a framework starts
its work, and the record of it.

``mtcore train`` / ``compare``, the benches and every worker process call ``set_up``, so the two
frameworks always run under the same settings and every run says which:

- the thread budget (``mtcore.perf.threads``): cores pinned, pools sized, before XLA sizes its pool;
- the allocator (``mtcore.perf.allocator``): freed memory kept in the process, where mtcore is the
  program (a notebook or a test calling ``main()`` keeps its own);
- each framework's part (``Framework.configure``): fp32 matmuls in full precision in both (XLA
  would otherwise run them as TF32 on NVIDIA GPUs, torch does not), JAX's CPU programs on the
  calling thread, and the persistent compile cache, on or off for both alike.

The record (``ProcessSetup.as_dict``) goes into a run's ``run.json`` and the benches'
``machine_info`` in the same shape.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mtcore.perf import threads as thread_budget
from mtcore.perf.allocator import keep_freed_memory


def compile_cache_dir() -> Path:
    """Where compiled programs are kept between processes when the compile cache is on:
    ``$MTCORE_CACHE_DIR`` or ``~/.cache/mtcore`` (``$XDG_CACHE_HOME``), one folder per framework.
    torch keeps inductor's where ``TORCHINDUCTOR_CACHE_DIR`` says, if set."""
    root = os.environ.get("MTCORE_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mtcore"
    return Path(root)


@dataclass(frozen=True)
class ProcessSetup:
    threads: thread_budget.ThreadBudget
    allocator: dict
    frameworks: dict[str, dict] = field(default_factory=dict)
    compile_cache: bool = True

    def as_dict(self) -> dict:
        return {"threads": self.threads.as_dict(), "allocator": self.allocator, "frameworks": self.frameworks,
                "compile_cache": "on" if self.compile_cache else "off"}

    def describe(self) -> list[str]:
        """What a summary prints: one line each."""
        settings = self.allocator.get("mallopt")
        lines = [f"thread budget: {self.threads.describe()} (--threads)",
                 f"allocator: {self.allocator.get('allocator')}" + (
                     f", freed memory kept in the process (mallopt {settings})" if isinstance(settings, dict) else "")]
        for name, done in self.frameworks.items():
            parts = [f"fp32 matmuls {done['fp32_matmul_precision']}", f"compile cache {done['compile_cache']}"]
            if "cpu_dispatch" in done:
                parts.append(f"CPU dispatch {done['cpu_dispatch']}")
            lines.append(f"{name}: " + "; ".join(parts))
        return lines


def set_up(frameworks: Iterable[str], *, threads: int | None = None, slot: int = 0, slots: int = 1,
           own_process: bool = True, synchronous_cpu: bool = True, compile_cache: bool = True) -> ProcessSetup:
    """Set this process up for ``frameworks`` (backend names; ``hf`` runs on torch), before any of
    them starts its backends. ``threads``/``slot``/``slots``: ``mtcore.perf.threads.apply``'s.
    ``own_process``: mtcore is the program, so the allocator is its to set. ``synchronous_cpu``:
    JAX's CPU programs on the calling thread (timed and trained steps wait for them anyway).
    ``compile_cache``: keep compiled programs between processes (both frameworks), or compile
    each from scratch."""
    from mtcore.backend import available, framework, framework_of

    allocator = keep_freed_memory() if own_process else {"allocator": "left as it is (mtcore is not the program)"}
    # Alone on the whole machine, the frameworks size their pools themselves: nothing to change.
    budget = thread_budget.apply(threads, slot=slot, slots=slots) if threads or slots > 1 else thread_budget.whole_machine()
    done = {}
    for name in dict.fromkeys(framework_of(f) for f in frameworks):
        if available(name) is None:
            cache = str(compile_cache_dir() / name) if compile_cache else None
            done[name] = framework(name).configure(synchronous_cpu=synchronous_cpu and own_process,
                                                   compile_cache=cache)
    global _current
    _current = ProcessSetup(budget, allocator, done, compile_cache)
    return _current


_current: ProcessSetup | None = None


def current() -> dict:
    """The record of this process's set-up, for a run's files; what it is when mtcore did none
    (the library called from a program of its own)."""
    if _current is None:
        return {"set_up": "none: mtcore's process set-up was not run in this process (library use)"}
    return _current.as_dict()
