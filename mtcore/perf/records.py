"""pytest-benchmark runs as mtcore reads them, and the hardware fingerprint they are stored,
keyed and refused by: what the gate (``mtcore.perf.regression``) and the history
(``mtcore.perf.history``) both read, apart from how either judges."""

from __future__ import annotations

import hashlib
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtcore.errors import MTCoreError


class BadRuns(MTCoreError):
    """Runs that cannot be compared: unreadable, not pytest-benchmark JSON, other hardware."""



# ---- reading runs ----------------------------------------------------------------------------
@dataclass
class Run:
    """One pytest-benchmark JSON file."""

    path: Path
    machine_info: dict
    commit_info: dict
    datetime: str
    benchmarks: dict[str, dict]  # fullname -> pytest-benchmark's entry
    costs: dict[str, dict] = field(default_factory=dict)  # case id -> what a step of it moves and a device holds (``gated_costs``)

    @property
    def fingerprint(self) -> dict:
        return fingerprint(self.machine_info)

    @property
    def threads(self) -> dict:
        t = as_dict(as_dict(self.machine_info.get("mtcore")).get("threads"))
        return {k: t.get(k) for k in ("threads", "pinned") if k in t}


def load_run(path: str | Path, samples: bool = True) -> Run:
    """Read and check one pytest-benchmark JSON file; BadRuns names the file and what is wrong.
    ``samples``: every benchmark must carry its raw rounds (``stats.data``), as the gate's rank
    test needs; without, its median is enough (an export, a history plot)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise BadRuns(f"{path}: cannot read it ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        where = f" at line {e.lineno}" if isinstance(e, json.JSONDecodeError) else ""
        raise BadRuns(f"{path}: not JSON ({getattr(e, 'msg', e)}{where})") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list) or not isinstance(
            data.get("machine_info"), dict):
        raise BadRuns(f"{path}: not a pytest-benchmark JSON file (no 'benchmarks' list and 'machine_info')")
    benchmarks = {}
    for entry in data["benchmarks"]:
        name = entry.get("fullname") if isinstance(entry, dict) else None
        stats = entry.get("stats") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not isinstance(stats, dict):
            raise BadRuns(f"{path}: not a pytest-benchmark JSON file (a benchmark without 'fullname' and 'stats')")
        rounds = stats.get("data")
        has_rounds = isinstance(rounds, list) and rounds and all(finite(x) for x in rounds)
        if not has_rounds and (samples or not finite(stats.get("median"))):
            raise BadRuns(f"{path}: {name} has no raw samples (stats.data); write runs with --benchmark-json, "
                          "or add --benchmark-save-data to --benchmark-autosave")
        benchmarks[name] = entry
    if not benchmarks:
        raise BadRuns(f"{path}: no timed benchmark in it (was it run with --benchmark-disable?)")
    return Run(path, data["machine_info"], as_dict(data.get("commit_info")), str(data.get("datetime", "")), benchmarks,
               run_costs(data, path))


# ---- what a step moves and a device holds: fixed by the program, gated exactly ---------------------------
COSTS_KEY = "mtcore_costs"  # where a bench run's JSON keeps them (benches/conftest.py writes it)


def gated_costs(framework: str, mesh: str, engine: str, engine_version: str, record: dict) -> dict:
    """What the gate judges of one framework x mesh from a ``costs.costs_record`` (the most
    loaded device's): the bytes a step sends, the collectives it runs by kind (calls and bytes
    sent), the bytes a device holds; keyed by the engine that carried them and its version
    (gloo, XLA's CPU collectives and NCCL move other bytes for the same step)."""
    kinds: dict[str, dict[str, int]] = {}
    for c in record["collectives"]:
        row = kinds.setdefault(c["kind"], {"calls": 0, "sent_bytes": 0})
        row["calls"] += int(c["calls"])
        row["sent_bytes"] += int(c["sent"])
    return {"framework": framework, "mesh": mesh, "engine": engine, "engine_version": engine_version,
            "batch_shape": list(record["batch_shape"]), "sent_bytes_per_step": int(record["sent_bytes_per_step"]),
            "held_bytes": int(record["held_bytes"]["total"]), "collectives": dict(sorted(kinds.items()))}


def costs_values(costs: dict) -> dict[str, int]:
    """One case's gated numbers by name: ``sent bytes/step``, ``held bytes``, ``KIND calls/step``
    and ``KIND bytes/step`` for every kind of collective it runs."""
    out = {"sent bytes/step": costs["sent_bytes_per_step"], "held bytes": costs["held_bytes"]}
    for kind, row in costs["collectives"].items():
        out[f"{kind} calls/step"] = row["calls"]
        out[f"{kind} bytes/step"] = row["sent_bytes"]
    return out


def run_costs(data: dict, path: Path) -> dict[str, dict]:
    """The costs a run's JSON keeps (``COSTS_KEY``): ``{case id: gated_costs}``; none where it has none."""
    block = data.get(COSTS_KEY)
    if block is None:
        return {}
    cases = as_dict(block).get("cases")
    if not isinstance(cases, dict) or not all(isinstance(c, dict) and {"engine", "engine_version", "collectives",
                                                                        "sent_bytes_per_step", "held_bytes"} <= set(c)
                                              for c in cases.values()):
        raise BadRuns(f"{path}: its {COSTS_KEY} block is not what the benches write (cases of framework x mesh)")
    return cases


def median_time(entry: dict) -> float:
    """A benchmark's median round in seconds: from its raw rounds where the run kept them, else
    pytest-benchmark's own median."""
    data = entry["stats"].get("data")
    return float(statistics.median(data)) if data else float(entry["stats"]["median"])


def finite(x: Any) -> bool:
    """A real number (not bool, NaN or inf): JSON from other tools may hold any of them."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fingerprint(machine_info: dict) -> dict:
    """What a run's speed depends on and a commit does not change: the CPU model and core count,
    the accelerators and the framework versions. Runs compare only within one fingerprint."""
    cpu = as_dict(machine_info.get("cpu"))
    hardware = as_dict(as_dict(machine_info.get("mtcore")).get("hardware"))
    frameworks = {fw: as_dict(info) for fw, info in as_dict(hardware.get("frameworks")).items()}
    return {
        "cpu": str(cpu.get("brand_raw") or machine_info.get("processor") or "unknown CPU"),
        "cores": hardware.get("cpu_count") or cpu.get("count"),
        "accelerators": {fw: list(info.get("accelerators") or []) for fw, info in sorted(frameworks.items())},
        "versions": {fw: as_dict(info.get("versions")) for fw, info in sorted(frameworks.items())},
    }


def as_dict(x: Any) -> dict:
    """``x`` where it is a dict, else empty: a hand-edited machine_info must not crash the reading."""
    return x if isinstance(x, dict) else {}


def fingerprint_id(fp: dict) -> str:
    """A directory name for a fingerprint: readable, and unique through a hash of all of it."""
    accelerators = sorted({a.split(" ", 1)[-1] for devices in fp["accelerators"].values() for a in devices})
    words = [fp["cpu"], f"{fp['cores']}c", *accelerators]
    slug = re.sub(r"[^a-z0-9]+", "-", " ".join(str(w) for w in words).lower()).strip("-")[:60].rstrip("-")
    digest = hashlib.sha1(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:8]
    return f"{slug}-{digest}"


def describe(fp: dict) -> str:
    """One line naming a fingerprint's hardware and versions."""
    versions = "; ".join(f"{fw} " + ", ".join(f"{k} {v}" for k, v in sorted(vs.items()))
                         for fw, vs in fp["versions"].items())
    accelerators = sorted({a for devices in fp["accelerators"].values() for a in devices})
    return f"{fp['cpu']}, {fp['cores']} cores, accelerators: {', '.join(accelerators) or 'none'}; {versions}"


def check_comparable(runs: list[Run]) -> None:
    """One fingerprint and one thread budget across the runs, else BadRuns naming the odd one."""
    first = runs[0]
    for run in runs[1:]:
        if run.fingerprint != first.fingerprint:
            differs = [k for k in first.fingerprint if first.fingerprint[k] != run.fingerprint[k]]
            raise BadRuns(f"{run.path}: DIFFERENT HARDWARE from {first.path} (differs: {', '.join(differs)}; "
                          f"{describe(run.fingerprint)} vs {describe(first.fingerprint)}): refusing to compare")
        if run.threads != first.threads:
            raise BadRuns(f"{run.path}: a different thread budget from {first.path} ({run.threads} vs "
                          f"{first.threads}): refusing to compare")


