"""The CPU thread budget: pinned cores, pool sizes, one clear error on a bad budget. Each case
runs in a fresh process: affinity and XLA's pool size are process-wide and set once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mtcore.errors import MTCoreError
from mtcore.threads import parse, usable_cores

PROBE = """
import json, os, sys
from mtcore import threads
budget = threads.apply({threads}, slot={slot}, slots={slots})
out = {{"budget": budget.as_dict(), "affinity": sorted(os.sched_getaffinity(0))}}
try:
    import torch
    out["torch"] = torch.get_num_threads()
except ImportError:
    pass
print(json.dumps(out))
"""


def _probe(threads, slot=0, slots=1) -> dict:
    code = PROBE.format(threads=threads, slot=slot, slots=slots)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_parse():
    assert parse("3") == 3 and parse(None) is None and parse("all") is None and parse(" ALL ") is None
    for bad in ("0", "-1", "two", ""):
        with pytest.raises(MTCoreError, match="positive number of threads or 'all'"):
            parse(bad)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_one_thread_pins_one_core_and_sizes_torch():
    out = _probe(1)
    assert out["budget"] == {"threads": 1, "cores": [usable_cores()[0]], "pinned": True, "affinity": True}
    assert out["affinity"] == out["budget"]["cores"]
    if "torch" in out:
        assert out["torch"] == 1


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(usable_cores()) < 2, reason="needs 2 cores")
def test_parallel_workers_get_their_own_cores():
    first, second = _probe(1, slot=0, slots=2), _probe(1, slot=1, slots=2)
    assert first["affinity"] != second["affinity"]
    whole = _probe(None, slot=1, slots=2)  # the whole machine, shared: a slice each, not pinned
    assert whole["budget"]["pinned"] is False and len(whole["affinity"]) == len(usable_cores()) // 2


def test_more_threads_than_cores_is_an_error():
    from mtcore.threads import apply

    with pytest.raises(MTCoreError, match=r"may use \d+ core"):
        apply(len(usable_cores()) + 1)
