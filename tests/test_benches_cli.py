"""The benches as users drive them: autosave a run, compare against it, and be warned when the
saved run came from other hardware."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SELECT = ["--framework", "torch,jax,hf", "--device", "cpu", "--size", "tiny",
          "-k", "test_train_step and not bf16 and not compile and not loop"]


def _pytest_benches(tmp_path, *args):
    # Run from tmp_path with storage below it: pytest-benchmark reports storage relative to the cwd.
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "benches"), "-c", str(ROOT / "pytest.ini"), "--rootdir", str(ROOT),
           "-p", "no:cacheprovider", *SELECT, "--rounds", "3", "--benchmark-storage=file://./store", *args]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.jax
def test_autosave_then_compare(tmp_path):
    first = _pytest_benches(tmp_path, "--benchmark-autosave")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "train_step cpu-tiny-fp32" in first.stdout and "MFU" in first.stdout, first.stdout[-3000:]
    saved = sorted(tmp_path.rglob("*.json"))
    assert len(saved) == 1
    data = json.loads(saved[0].read_text())
    mtcore_info = data["machine_info"]["mtcore"]
    assert mtcore_info["hardware"]["frameworks"]["torch"]["device_counts"]["cpu"] == 1
    assert mtcore_info["gemm_peak_flops"]["cpu-fp32"]["torch"] > 0  # measured per framework
    rows = {b["param"]: b for b in data["benchmarks"]}
    assert set(rows) == {"torch-cpu-tiny-fp32", "jax-cpu-tiny-fp32", "hf-cpu-tiny-fp32"}
    for row in rows.values():
        info = row["extra_info"]
        assert info["tokens_per_s"] > 0 and 0 < info["mfu"] < 1 and info["flops_per_step"] > 0

    # Pretend the saved run came from another machine: the comparison must say so.
    data["machine_info"]["mtcore"]["hardware"]["cpu_count"] = 96
    saved[0].write_text(json.dumps(data))
    second = _pytest_benches(tmp_path, "--benchmark-compare", "--benchmark-compare-fail=median:25%")
    out = second.stdout + second.stderr
    assert "DIFFERENT HARDWARE" in out
    assert "0001" in out  # the saved run appears in the comparison table
    # On a drifting 2-core machine a 25% slowdown can happen for real: then pytest-benchmark must
    # fail the run and name the regression, never crash.
    assert second.returncode == 0 or (second.returncode == 1 and "Performance has regressed" in out), out[-3000:]
