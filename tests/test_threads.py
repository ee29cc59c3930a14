"""The CPU thread budget: pinned cores, pool sizes, one clear error on a bad budget. The budgets are
applied in a child process: affinity is process-wide, and this test process must keep its cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mtcore.errors import MTCoreError
from mtcore.perf.threads import parse, usable_cores

# Each budget applied in turn in one child: affinity can be changed again, and nothing here
# starts JAX's backend, whose pool size is the one thing fixed at first use. torch is started the
# way mtcore starts it (its backend module, after the first budget: it takes the budget given
# before), and sized again by each later one; no other framework is imported for it.
PROBE = """
import json, os, sys
from mtcore.perf import threads
out, everything = [], os.sched_getaffinity(0)
for n, slot, slots in json.loads(sys.argv[1]):
    os.sched_setaffinity(0, everything)
    budget = threads.apply(n, slot=slot, slots=slots)
    row = {"budget": budget.as_dict(), "affinity": sorted(os.sched_getaffinity(0))}
    try:
        from mtcore.backend import framework
        import torch
        framework("torch")
        row["torch"] = torch.get_num_threads()
    except ImportError:
        pass
    row["imported"] = sorted({"jax", "transformers"} & set(sys.modules))
    out.append(row)
print(json.dumps(out))
"""

needs_affinity = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")


@pytest.fixture(scope="module")
def probes():
    """Budgets (threads, slot, slots) -> what the child process then had."""
    budgets = [(1, 0, 1), (1, 0, 2), (1, 1, 2), (None, 1, 2)]
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(budgets)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(zip(budgets, json.loads(done.stdout.strip().splitlines()[-1]), strict=True))


def test_parse():
    assert parse("3") == 3 and parse(None) is None and parse("all") is None and parse(" ALL ") is None
    for bad in ("0", "-1", "two", ""):
        with pytest.raises(MTCoreError, match="positive number of threads or 'all'"):
            parse(bad)


@needs_affinity
def test_one_thread_pins_one_core_and_sizes_torch(probes):
    out = probes[(1, 0, 1)]
    assert out["budget"] == {"threads": 1, "cores": [usable_cores()[0]], "pinned": True, "affinity": True}
    assert out["affinity"] == out["budget"]["cores"]
    if "torch" in out:
        assert out["torch"] == 1
    # A budget imports no framework to size it: a torch process does not pay for JAX's imports.
    assert out["imported"] == [], out


@needs_affinity
@pytest.mark.skipif(len(usable_cores()) < 2, reason="needs 2 cores")
def test_parallel_workers_get_their_own_cores(probes):
    assert probes[(1, 0, 2)]["affinity"] != probes[(1, 1, 2)]["affinity"]
    whole = probes[(None, 1, 2)]  # the whole machine, shared: every core, torch takes its share
    assert whole["budget"]["pinned"] is False and whole["affinity"] == list(usable_cores())
    if "torch" in whole:
        assert whole["torch"] == len(usable_cores()) // 2


def test_more_threads_than_cores_is_an_error():
    from mtcore.perf.threads import apply

    with pytest.raises(MTCoreError, match=r"may use \d+ core"):
        apply(len(usable_cores()) + 1)
