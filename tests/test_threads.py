"""The CPU thread budget: pinned cores, pool sizes, one clear error on a bad budget. The budgets are
applied in a child process: affinity is process-wide, and this test process must keep its cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

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


@pytest.fixture
def masked_machine(monkeypatch):
    """A machine whose os.cpu_count() says 4 while this process may use cores {2, 3} (a
    container's or taskset's mask); affinity calls recorded, not made."""
    from mtcore.perf import threads

    pinned: list[tuple[int, ...]] = []
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    mask = {2, 3}
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(mask))

    def pin(pid, cores):
        pinned.append(tuple(sorted(cores)))
        mask.clear()
        mask.update(cores)

    monkeypatch.setattr(os, "sched_setaffinity", pin)
    monkeypatch.setattr(threads, "_limit_pools", lambda n: None)
    for name in (threads.JOB_CORES, threads.PINNED_TO, "MTCORE_RANK_THREADS", "MTCORE_LAUNCHED"):
        monkeypatch.setenv(name, "")  # so that what the code under test sets is undone afterwards
        monkeypatch.delenv(name)
    return SimpleNamespace(pinned=pinned, mask=mask)


def test_every_path_pins_inside_the_affinity_mask_each_process_to_its_own_core(masked_machine, monkeypatch):
    from mtcore.perf import threads
    from mtcore.train import launch as run_launch
    from mtcore.train.options import RunConfig

    assert threads.usable_cores() == (2, 3) and threads.share(2) == 1
    # The benches' processes (pytest -n 2, --threads 1) and a bench worker's ranks: apply.
    assert [threads.apply(1, slot=s, slots=2).cores for s in (0, 1)] == [(2,), (3,)]
    assert masked_machine.pinned == [(2,), (3,)]
    # The job's mask is kept for the processes this one starts, which inherit its pinned mask.
    assert os.environ[threads.JOB_CORES] == "2,3"
    # torch's ranks under the launcher: each its share of the mask, rank r on the r-th core.
    budgets = []
    monkeypatch.setattr(run_launch, "set_up", lambda fws, threads, slot, slots, **kw: budgets.append(
        run_launch.threads.apply(threads, slot=slot, slots=slots).cores))
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        run_launch.set_up_process(RunConfig(framework="torch", devices=2), own_process=False)
    assert budgets == [(2,), (3,)]
    # One JAX process driving two host devices, --threads 1 each: both cores of the mask.
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name)
    run_launch.set_up_process(RunConfig(framework="jax", devices=2, threads=1), own_process=False)
    assert budgets[-1] == (2, 3)
    # A whole-machine process started pinned by this job gets the job's cores back.
    threads.apply(1, slot=1, slots=2)
    assert threads.apply(None).cores == (2, 3) and masked_machine.mask == {2, 3}
    # A process started under a taskset of its own (not the mask this job pinned) keeps its mask.
    threads.apply(1, slot=0, slots=2)
    masked_machine.mask.clear()
    masked_machine.mask.add(3)
    assert threads.usable_cores() == (3,) and threads.apply(1).cores == (3,)


@pytest.mark.torch
def test_the_torch_launcher_gives_each_rank_its_share_of_the_mask(masked_machine, monkeypatch, tmp_path):
    import torch.distributed.launcher.api as api

    from mtcore.torch.parallel import launch

    seen = {}
    monkeypatch.setattr(api, "elastic_launch", lambda config, entry: lambda *args: seen.update(
        threads=os.environ["MTCORE_RANK_THREADS"], nproc=config.nproc_per_node))
    launch(2, ["train"], log_dir=tmp_path)
    assert seen == {"threads": "1", "nproc": 2}  # os.cpu_count() // 2 would be 2 each: both on both cores
