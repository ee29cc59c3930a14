"""The benches as users drive them: autosave a run, compare against it (storage outside the working
directory, as a CI cache puts it), be warned only when the saved run came from other hardware or
another thread budget, and get one line, exit 2, for what cannot run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SELECT = ["--framework", "torch,jax", "--device", "cpu", "--size", "tiny",
          "-k", "test_train_step and not scaling and not bf16 and not compile and not loop"]


def _pytest_benches(cwd, *args, select=SELECT, timeout=600, xla_flags=None):
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "benches"), "-c", str(ROOT / "pytest.ini"), "--rootdir", str(ROOT),
           "-p", "no:cacheprovider", *select, *args]
    # A pytest run of its own: nothing of this run's xdist worker (which would disable the timing).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.pop("XLA_FLAGS", None)
    if xla_flags:
        env["XLA_FLAGS"] = xla_flags
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.jax
def test_autosave_then_compare(tmp_path):
    cwd, store = tmp_path / "work", tmp_path / "store"  # storage outside the working directory
    cwd.mkdir()
    storage = f"--benchmark-storage=file://{store}"
    first = _pytest_benches(cwd, "--rounds", "3", storage, "--benchmark-autosave")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = first.stdout
    assert "train_step cpu-tiny-fp32" in out and "MFU" in out, out[-3000:]
    assert "thread budget: 1 thread per framework, pinned" in out, out[-3000:]
    assert "train_step cpu-tiny-fp32: torch (eager)" in out, out[-3000:]  # each framework at its best
    saved = sorted(store.rglob("*.json"))
    assert len(saved) == 1
    data = json.loads(saved[0].read_text())
    # A saved run keeps its raw rounds (bench-compare's rank test reads them) and exports as it is.
    assert all(len(b["stats"]["data"]) == 3 for b in data["benchmarks"])
    from mtcore.cli import main

    assert main(["bench-export", str(saved[0]), "--out", str(tmp_path / "export")]) == 0
    mtcore_info = data["machine_info"]["mtcore"]
    assert mtcore_info["hardware"]["frameworks"]["torch"]["device_counts"]["cpu"] == 1
    assert mtcore_info["threads"]["threads"] == 1 and mtcore_info["threads"]["pinned"] is True
    # Set before the storage fingerprint asked JAX for its devices (after, it would be ignored).
    assert mtcore_info["frameworks"]["jax"]["cpu_dispatch"].startswith("synchronous"), mtcore_info["frameworks"]
    assert "CPU dispatch synchronous" in out, out[-3000:]
    # One process set-up: full-precision fp32 matmuls in both frameworks, recorded as run.json has it.
    assert {fw["fp32_matmul_precision"] for fw in mtcore_info["frameworks"].values()} == {"highest"}
    assert set(mtcore_info["frameworks"]) == {"torch", "jax"} and mtcore_info["compile_cache"] == "off"  # cold compiles in the benches
    # What varies from run to run on one machine stays out of machine_info.
    assert "gemm_peak_flops" not in mtcore_info and "hz_actual" not in data["machine_info"]["cpu"]
    rows = {b["param"]: b for b in data["benchmarks"]}
    assert set(rows) == {"torch-cpu-tiny-fp32", "jax-cpu-tiny-fp32"}
    for row in rows.values():
        info = row["extra_info"]
        assert info["tokens_per_s"] > 0 and 0 < info["mfu"] < 1 and info["flops_per_step"] > 0
        assert info["gemm_peak_flops"] > 0 and info["threads"]["threads"] == 1
        assert row["stats"]["rounds"] == 3

    # The same machine: compared without a machine_info warning, and never a crash. The compares
    # time torch alone: one matching bench is enough, and JAX would compile again.
    torch_only = ["--framework", "torch", "--device", "cpu", "--size", "tiny", "-k", SELECT[-1]]
    again = _pytest_benches(cwd, "--rounds", "3", storage, "--benchmark-compare", select=torch_only)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-3000:]
    assert "0001" in out and "DIFFERENT" not in out, out[-3000:]
    assert "machine_info is different" not in out and "machine_info differs" not in out, out[-3000:]
    # One run against one cannot see between-process variation: one line says so, and where to go.
    assert out.count("note: --benchmark-compare sets one run against one run") == 1, out[-3000:]
    assert "note: --benchmark-compare" not in first.stdout  # not without it

    # Saved under the hardware fingerprint, not pytest-benchmark's OS-Python folder.
    from mtcore.perf.records import fingerprint, fingerprint_id

    assert saved[0].parent.name == fingerprint_id(fingerprint(data["machine_info"]))

    # Pretend the saved run was ten times faster, with another thread budget and other XLA flags now:
    # one line says the budget differs, one the flags, and the compare gate fails the run (exit 1)
    # with one line, not a traceback.
    for row in data["benchmarks"]:
        for key in ("min", "max", "mean", "median"):
            row["stats"][key] /= 10
    saved[0].write_text(json.dumps(data))
    other = _pytest_benches(cwd, "--rounds", "3", storage, "--benchmark-compare", "--threads", "all",
                            "--benchmark-compare-fail=median:15%", select=torch_only,
                            xla_flags="--xla_cpu_enable_fast_math=false")  # XLA's default: changes nothing
    out = other.stdout + other.stderr
    assert other.returncode == 1, out[-3000:]
    assert "DIFFERENT THREAD BUDGET" in out and "machine_info is different" not in out, out[-3000:]
    assert "the compared run had XLA_FLAGS='', this one '--xla_cpu_enable_fast_math=false'" in out, out[-3000:]
    assert "XLA_FLAGS: --xla_cpu_enable_fast_math=false" in out, out[-3000:]  # the summary says so too
    assert "mtcore benches: performance has regressed past --benchmark-compare-fail" in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]

    # A run from other hardware (copied into this fingerprint's folder): refused, exit 2, one line.
    data["machine_info"]["mtcore"]["hardware"]["cpu_count"] = 96
    saved[0].write_text(json.dumps(data))
    refused = _pytest_benches(cwd, "--rounds", "3", storage, "--benchmark-compare", select=torch_only)
    out = refused.stdout + refused.stderr
    assert refused.returncode == 2, out[-3000:]
    assert "DIFFERENT HARDWARE (differs: cpu_count): refusing to compare" in out, out[-3000:]
    assert "Traceback" not in out and "passed" not in out, out[-3000:]


@pytest.mark.parametrize("args, message", [
    (["--size", "huge"], "--size: unknown size huge; choose from tiny, small, base, marian-en-hu or 'all'"),
    (["--framework", "tensorflow"], "--framework: unknown framework tensorflow"),
    (["--threads", "zero"], "expected a positive number of threads or 'all', got 'zero'"),
])
def test_bad_options_are_one_line_and_exit_2(tmp_path, args, message):
    done = _pytest_benches(tmp_path, *args, select=[], timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 2, out[-3000:]
    assert message in out and "Traceback" not in out, out[-3000:]
    assert len([line for line in out.splitlines() if "mtcore benches:" in line]) == 1, out


@pytest.mark.jax
def test_a_named_device_that_is_absent_fails(tmp_path):
    # tox -e tpu / -e gpu on a machine without one must not pass green on skips.
    from mtcore.devices import missing

    if missing("jax", "tpu") is None:
        pytest.skip("this machine has a TPU")
    done = _pytest_benches(tmp_path, "--framework", "jax", "--device", "tpu", "-m", "tpu", select=[], timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 2, out[-3000:]
    assert "--device tpu: no selected framework sees a TPU (jax sees no TPU device" in out, out[-3000:]


@pytest.mark.slow
@pytest.mark.jax
def test_compile_vs_depth_stops_where_the_budget_runs_out(tmp_path):
    # The first depth has nothing to extrapolate from and compiles; the next is predicted from it
    # (linear in depth at least) and skipped, naming what was measured.
    select = ["--framework", "jax", "--device", "cpu", "-k", "compile_time_vs_depth and not loop and (2layers or 6layers) and not 12layers"]
    done = _pytest_benches(tmp_path, "--compile-budget", "0.5", "--benchmark-disable", "-rs", select=select, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "1 passed, 1 skipped" in out, out[-3000:]
    assert "compile vs depth: 6 layers would take ~" in out and "(2 layers " in out, out[-3000:]
    assert "over --compile-budget 0.5 s" in out, out[-3000:]


def _bench_module(name: str):
    """A module of benches/ (they import one another plainly, as pytest puts benches/ on sys.path)."""
    import importlib

    sys.path.insert(0, str(ROOT / "benches"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "benches"))


def test_the_summary_compares_each_framework_at_its_best_against_the_bars():
    from types import SimpleNamespace

    def bench(group, framework, variant, median, mfu=None):
        return SimpleNamespace(group=group, stats=SimpleNamespace(median=median),
                               extra_info={"framework": framework, "variant": variant, "mfu": mfu})

    g32, g16 = "train_step gpu-marian-en-hu-b64-fp32 16thr", "train_step gpu-marian-en-hu-b64-bf16 16thr"
    benchmarks = [
        bench(g32, "torch", "eager", 0.100), bench(g32, "torch", "cudagraphs", 0.060), bench(g32, "jax", "scan", 0.050),
        bench(g32, "jax", "loop", 0.045),
        bench(g16, "torch", "eager", 0.050, mfu=0.2), bench(g16, "torch", "cudagraphs", 0.033, mfu=0.3),
        bench(g16, "jax", "scan", 0.025, mfu=0.55),
        bench("decode-greedy gpu-marian-en-hu 16thr", "torch", "cudagraphs", 0.2),
        bench("decode-greedy gpu-marian-en-hu 16thr", "jax", "scan", 0.1),
        bench("train_step scaling cpu-tiny-fp32 1thr/device", "torch", "eager", 1.0),  # not a variant comparison
        bench("train_step cpu-tiny-fp32 1thr", "torch", "eager", 0.03), bench("train_step cpu-tiny-fp32 1thr", "jax", "scan", 0.02),
        bench("train_step cpu-tiny-fp32 1thr", "hf", "eager", 0.01),  # the HF baseline is not mtcore's torch at its best
    ]
    lines = _bench_module("summary")._fair_fight(benchmarks)
    assert lines == [
        "decode-greedy gpu-marian-en-hu: torch (cudagraphs) 200.00 ms, jax (scan) 100.00 ms: torch/jax 2.00 "
        "(bar <= 1.5: NOT met)",
        "train_step cpu-tiny-fp32: torch (eager) 30.00 ms, jax (scan) 20.00 ms: torch/jax 1.50",  # no bar on a CPU
        "train_step gpu-marian-en-hu-b64-bf16: torch (cudagraphs) 33.00 ms, jax (scan) 25.00 ms: torch/jax 1.32 "
        "(bar <= 1.25: NOT met)",
        # Over the same variant's fp32 (scan 50 ms), not the fastest fp32 variant's (loop 45 ms).
        "train_step gpu-marian-en-hu-b64-bf16: jax (scan) bf16/fp32 step time 0.50 (bar <= 0.6: met)",
        "train_step gpu-marian-en-hu-b64-bf16: torch (cudagraphs) bf16/fp32 step time 0.55 (bar <= 0.6: met)",
        "train_step gpu-marian-en-hu-b64-bf16: MFU of the faster framework (jax, scan) 55.0% of the measured bf16 GEMM "
        "peak (bar >= 50%: met)",
        "train_step gpu-marian-en-hu-b64-fp32: torch (cudagraphs) 60.00 ms, jax (loop) 45.00 ms: torch/jax 1.33 "
        "(bar <= 1.25: NOT met)",
    ]


def test_a_cpu_bf16_ratio_says_whether_the_cpu_has_bf16_arithmetic():
    from types import SimpleNamespace

    def bench(group, framework, median):
        return SimpleNamespace(group=group, stats=SimpleNamespace(median=median),
                               extra_info={"framework": framework, "variant": "eager", "mfu": None})

    benchmarks = [bench("train_step cpu-tiny-fp32 1thr", "torch", 0.01), bench("train_step cpu-tiny-bf16 1thr", "torch", 0.19)]
    summary = _bench_module("summary")
    without, = [line for line in summary._fair_fight(benchmarks, ()) if "bf16/fp32" in line]
    assert without.startswith("train_step cpu-tiny-bf16: torch (eager) bf16/fp32 step time 19.00")
    assert "no bf16 arithmetic (avx512_bf16 / amx_bf16 absent): bf16 is emulated here" in without
    with_amx, = [line for line in summary._fair_fight(benchmarks, ("amx_bf16",)) if "bf16/fp32" in line]
    assert with_amx.endswith("(this CPU has bf16 arithmetic: amx_bf16)")


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.jax
@pytest.mark.xdist_group("processes")
def test_a_plugin_that_adds_one_collective_fails_the_gate_and_an_unchanged_tree_passes(tmp_path):
    """The costs bench's numbers (untimed, as scripts/bench_gate.py collects them once per tree),
    carried into timed runs of identical times: the same tree's pass bench-compare; with
    tests/perf/extra_collective.py in the head's session and its workers, it fails, naming the
    collective that grew, in both frameworks."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_bench_compare import pairs, with_costs

    from mtcore.cli import main

    select = ["-m", "costs", "-k", "data2", "--threads", "1"]
    costs = {}
    for name, plugin in (("base", []), ("head", ["-p", "extra_collective"])):
        path = tmp_path / f"{name}-costs.json"
        env_path = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = str(ROOT / "tests" / "perf")  # where -p finds the plugin, in workers too
        try:
            run = _pytest_benches(tmp_path, f"--costs-json={path}", *plugin, select=select, timeout=300)
        finally:
            os.environ.pop("PYTHONPATH") if env_path is None else os.environ.__setitem__("PYTHONPATH", env_path)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        costs[name] = json.loads(path.read_text())["mtcore_costs"]["cases"]
    assert set(costs["base"]) == {"torch-cpu-tiny-fp32-data2", "jax-cpu-tiny-fp32-data2"}
    base, head = pairs(tmp_path, [1.0] * 3, [1.0] * 3)
    for side, files, which in (("unchanged", head, "base"), ("plugin", head, "head")):
        for p in base:
            with_costs(Path(p), costs["base"])
        for p in files:
            with_costs(Path(p), costs[which])
        verdicts = tmp_path / f"{side}.json"
        rc = main(["bench-compare", "--base", *base, "--head", *files, "--json", str(verdicts)])
        regressed = json.loads(verdicts.read_text())["costs"]["regressed"]
        if side == "unchanged":
            assert rc == 0 and regressed == []
        else:
            assert rc == 1
            grew = {(x["case"], x["name"]): (x["base"], x["head"]) for x in regressed}
            for fw in ("torch", "jax"):
                before, after = grew[(f"{fw}-cpu-tiny-fp32-data2", "all-reduce calls/step")]
                assert after == before + 1, grew


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.xdist_group("processes")
def test_profile_traces_every_worker_process_after_the_timed_rounds(tmp_path):
    """``--profile=DIR``: the mesh bench's two torch ranks each write a trace and answer with
    their breakdown, which lands in extra_info beside the traces' paths."""
    traces = tmp_path / "traces"
    run = _pytest_benches(tmp_path, f"--profile={traces}", f"--benchmark-json={tmp_path / 'run.json'}", "--rounds", "2",
                          select=["--framework", "torch", "--size", "tiny", "-k", "test_train_step_mesh and data2"],
                          timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (entry,) = json.loads((tmp_path / "run.json").read_text())["benchmarks"]
    info = entry["extra_info"]
    assert sorted(Path(t).name for t in info["traces"]) == [f"torch-cpu-tiny-fp32-data2-torch-rank{r}.trace.json.gz"
                                                            for r in (0, 1)]
    assert all(Path(t).is_file() for t in info["traces"])
    assert sorted(b["process"] for b in info["breakdown"]) == [0, 1]
    for b in info["breakdown"]:
        assert b["steps"] == 3 and b["communication"] > 0 and abs(b["unaccounted"]) < 0.05 * b["step"], b
