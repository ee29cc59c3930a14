"""Where a step's time went, read from a profiler's Chrome-JSON trace: one small reader for every
framework's trace, and the breakdown of each traced step into arithmetic, communication (and the
part of it no arithmetic hid), and idle.

A framework says which of its events are work and which of those communicate
(``Framework.trace_kind``: "compute", "comm", "compile" for its compiler at work, "step" for the
span of a traced step, or None for an annotation, a runtime umbrella or a marker); everything else
here is the same for every framework:

- On each thread, nested events resolve innermost first: a collective inside a loop or an op that
  waits on it is communication for as long as it runs, not the enclosing op's arithmetic.
- Over the process's threads (the intra-op pool, the collective engine's own threads), the union
  of compute time is **arithmetic**, the union of communication time **communication**;
  **exposed** communication is the part of it under no arithmetic on any thread.
- **Compiling** is the compiler's time under neither (a step whose batch shape is new).
- **Idle** is the union of the gaps no counted event covers, measured as gaps, not left over:
  the host between ops (Python, dispatch), or every thread waiting.
- The step's own time is the loop's clock around it (``perf_counter``, read outside its span); what
  the parts do not account for of it (``unaccounted``: step - arithmetic - exposed - compiling -
  idle) is reported, not hidden. The parts cover the span exactly, so ``unaccounted`` is what the
  span missed of the step: work that ran before or after it (an asynchronous step the span closed
  on before it finished), or the profiler's own cost of a span.
"""

from __future__ import annotations

import gzip
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mtcore.errors import MTCoreError

# The annotation every framework wraps a traced step in (its ``step_annotation``), and the one span
# opened before the first, so that the profiler's own set-up on its first span is not a step's.
STEP_EVENT = "mtcore.step"
WARM_UP_EVENT = "mtcore.profiler-warm-up"

Interval = tuple[float, float]


def read_trace(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The events of a Chrome-JSON trace (``.json`` or ``.json.gz``; an object with
    ``traceEvents`` or a bare list), without the entries that are not events (JAX's perfetto
    trace ends with an empty one)."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, EOFError, ValueError) as e:
        raise MTCoreError(f"{path}: not a readable Chrome-JSON trace ({e})") from None
    events = data.get("traceEvents") if isinstance(data, dict) else data
    if not isinstance(events, list):
        raise MTCoreError(f"{path}: not a Chrome-JSON trace (no traceEvents list)")
    return [e for e in events if isinstance(e, dict) and "ph" in e]


def spans(events: Iterable[dict], name: str | None = None) -> list[dict]:
    """Complete events (``ph`` X, with a start and a duration, in microseconds), of ``name`` if given."""
    return [e for e in events if e.get("ph") == "X" and isinstance(e.get("ts"), (int, float))
            and isinstance(e.get("dur"), (int, float)) and (name is None or e.get("name") == name)]


def step_windows(events: list[dict], kind: Callable[[dict], str | None] | None = None) -> list[Interval]:
    """The traced steps' windows (start, end) in microseconds, in order: the ``STEP_EVENT`` spans
    the framework calls its step's (``kind``: a GPU trace copies each span onto the device's track)."""
    return sorted((e["ts"], e["ts"] + e["dur"]) for e in spans(events, STEP_EVENT) if kind is None or kind(e) == "step")


def trace_path(directory: str | os.PathLike, run: str, framework: str, rank: int, epoch: int | None = None) -> Path:
    """Where a process's trace goes: named by run, framework and rank (and the epoch it traced)."""
    return Path(directory) / (f"{run}-{framework}-rank{rank}" + (f"-epoch{epoch}" if epoch else "") + ".trace.json.gz")


# ---- tracing steps ---------------------------------------------------------------------------------
def warm_up(fw: Any) -> None:
    """One empty span under ``fw``'s profiler, before the first step's: the profiler's set-up on its
    first span lands here, not in a step."""
    with fw.step_annotation(-1, WARM_UP_EVENT):
        pass


def traced_step(fw: Any, i: int, run: Callable[[], Any]) -> tuple[Any, float]:
    """``run()`` (one step, synced) in the step's span of framework ``fw``'s profiler
    (``Framework.step_annotation``): its result and its seconds on the loop's clock, read around
    the span, so that what the span misses of the step is unaccounted, not lost."""
    start = time.perf_counter()
    with fw.step_annotation(i):
        out = run()
    return out, time.perf_counter() - start


def traced_steps(fw: Any, path: str | os.PathLike, device: str, run: Callable[[], Any],
                 steps: int = 3) -> list[StepBreakdown]:
    """``steps`` calls of ``run()`` (one synced step each) under ``fw``'s profiler, the trace
    written to ``path``, read back and broken down (what the benches' ``--profile`` does; the
    trainer's does the same inside its loop)."""
    clock = []
    with fw.profiled(path, device):
        warm_up(fw)
        for i in range(steps):
            clock.append(traced_step(fw, i, run)[1])
    return breakdown(read_trace(path), fw.trace_kind, clock)


# ---- interval arithmetic -------------------------------------------------------------------------
def union(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, disjoint intervals covering what ``intervals`` cover."""
    out: list[list[float]] = []
    for start, end in sorted(intervals):
        if end <= start:
            continue
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def length(intervals: Iterable[Interval]) -> float:
    return sum(b - a for a, b in intervals)


def clip(intervals: list[Interval], window: Interval) -> list[Interval]:
    lo, hi = window
    return [(max(a, lo), min(b, hi)) for a, b in intervals if b > lo and a < hi]


def minus(intervals: list[Interval], removed: list[Interval]) -> list[Interval]:
    """``intervals`` less ``removed`` (both disjoint and sorted)."""
    out, j = [], 0
    for a, b in intervals:
        while j < len(removed) and removed[j][1] <= a:
            j += 1
        k, start = j, a
        while k < len(removed) and removed[k][0] < b:
            if removed[k][0] > start:
                out.append((start, removed[k][0]))
            start = max(start, removed[k][1])
            k += 1
        if start < b:
            out.append((start, b))
    return out


def innermost(events: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """One thread's nested events as the segments each is the innermost open event of:
    ``(start, end, kind)``. A child that outlives its parent (clock rounding) ends with it."""
    segments: list[tuple[float, float, str]] = []
    stack: list[tuple[float, str]] = []  # (end, kind) of the open events, innermost last
    cursor = 0.0

    def close_until(t: float) -> None:
        nonlocal cursor
        while stack and stack[-1][0] <= t:
            end, kind = stack.pop()
            if end > cursor:
                segments.append((cursor, end, kind))
            cursor = max(cursor, end)

    for start, end, kind in sorted(events, key=lambda e: (e[0], -e[1])):
        close_until(start)
        if stack and start > cursor:
            segments.append((cursor, start, stack[-1][1]))
        cursor = max(cursor, start) if stack else start
        stack.append((min(end, stack[-1][0]) if stack else end, kind))
    close_until(float("inf"))
    return segments


# ---- the breakdown -------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepBreakdown:
    """One traced step of one process, in seconds."""

    step: float  # the loop's clock around the step (the traced window where none was given)
    arithmetic: float  # the union of compute over the process's threads
    communication: float  # the union of collective time over its threads
    exposed: float  # communication under no arithmetic
    compiling: float  # the compiler at work, under neither
    idle: float  # the gaps no counted event covers
    unaccounted: float  # step - arithmetic - exposed - compiling - idle

    @property
    def busy(self) -> float:
        """Arithmetic over the step: the utilisation the experiments asked about."""
        return self.arithmetic / self.step if self.step > 0 else 0.0

    @property
    def hidden(self) -> float:
        """Communication that ran under arithmetic."""
        return self.communication - self.exposed

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "busy": self.busy, "hidden": self.hidden}


def breakdown(events: list[dict], kind: Callable[[dict], str | None],
              clock: list[float] | None = None) -> list[StepBreakdown]:
    """Each traced step's breakdown (``step_windows``), its events classed by ``kind``
    (``Framework.trace_kind``); ``clock``: the loop's seconds for each step, in order."""
    windows = step_windows(events, kind)
    if not windows:
        raise MTCoreError(f"no {STEP_EVENT!r} event in the trace: no step was traced")
    if clock is not None and len(clock) != len(windows):
        raise MTCoreError(f"the trace holds {len(windows)} steps, the loop timed {len(clock)}")
    by_thread: dict[tuple, list[tuple[float, float, str]]] = {}
    for e in spans(events):
        k = kind(e)
        if k in ("compute", "comm", "compile"):  # not "step", not None
            by_thread.setdefault((e.get("pid"), e.get("tid")), []).append((float(e["ts"]), float(e["ts"] + e["dur"]), k))
    parts: dict[str, list[Interval]] = {"compute": [], "comm": [], "compile": []}
    for thread_events in by_thread.values():
        for start, end, k in innermost(thread_events):
            parts[k].append((start, end))
    compute, comm, compiling = (union(parts[k]) for k in ("compute", "comm", "compile"))
    covered = union(compute + comm + compiling)
    out = []
    for i, window in enumerate(windows):
        a = clip(compute, window)
        c = clip(comm, window)
        idle = minus([window], clip(covered, window))  # the gaps, as gaps
        step = clock[i] if clock is not None else (window[1] - window[0]) / 1e6
        arithmetic, communication = length(a) / 1e6, length(c) / 1e6
        exposed = length(minus(c, a)) / 1e6
        compile_s = length(minus(clip(compiling, window), union(a + c))) / 1e6
        idle_s = length(idle) / 1e6
        out.append(StepBreakdown(step, arithmetic, communication, exposed, compile_s, idle_s,
                                 step - arithmetic - exposed - compile_s - idle_s))
    return out


def summary(steps: list[StepBreakdown]) -> dict[str, float]:
    """The median step (by its clock; the lower of the middle two), every part of it, so they add
    up; the spread of the traced steps' times; the worst step's unaccounted share."""
    ordered = sorted(steps, key=lambda s: s.step)
    median = ordered[(len(ordered) - 1) // 2]
    return {**median.as_dict(), "steps": len(steps), "step_min": ordered[0].step, "step_max": ordered[-1].step,
            "unaccounted_share_max": max(abs(s.unaccounted) / s.step for s in steps if s.step > 0)}
