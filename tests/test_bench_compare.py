"""mtcore bench-compare / bench-history / bench-export (mtcore.perf.regression, mtcore.perf.history) on pytest-benchmark JSON written here:
A/A noise, real slowdowns, outlier pairs, memory, tokens/s, missing values, new and removed
benchmarks, other hardware and files that are not runs at all. Offline, no framework needed."""

from __future__ import annotations

import itertools
import json
import os
import re
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest

from mtcore.cli import main
from mtcore.perf import regression

TRAIN = "benches/test_train.py::test_train_step[jax-cpu-tiny-fp32]"
DECODE = "benches/test_decode.py::test_decode_latency[torch-cpu-tiny-fp32-greedy]"
GROUPS = {TRAIN: "train_step cpu-tiny-fp32 1thr", DECODE: "decode-greedy cpu-tiny 1thr"}
SECONDS = {TRAIN: 0.030, DECODE: 0.014}


def machine_info(cpu="AMD EPYC 7763", cores=2, jax="0.10.2", threads=1, accelerators=()) -> dict:
    """machine_info as benches/conftest.py stores it (the parts bench-compare reads, and noise)."""
    return {
        "node": "runner-1", "processor": "x86_64", "machine": "x86_64", "python_version": "3.11.7",
        "cpu": {"brand_raw": cpu, "count": cores, "arch": "X86_64"},
        "mtcore": {
            "hardware": {"cpu_count": cores, "frameworks": {
                "jax": {"versions": {"jax": jax, "flax": "0.12.8"}, "device_counts": {"cpu": 1},
                        "accelerators": list(accelerators)},
                "torch": {"versions": {"torch": "2.13.0+cpu"}, "device_counts": {"cpu": 1}, "accelerators": []}}},
            "threads": {"threads": threads, "cores": [0], "pinned": True, "affinity": True},
        },
    }


def write_run(path: Path, scale: dict[str, float] | float = 1.0, seed: int = 0, extra: dict | None = None,
              names=(TRAIN, DECODE), info: dict | None = None, commit: str = "a" * 40, when: str = "2026-11-01T00:00:00",
              rounds: int = 30) -> Path:
    """A pytest-benchmark --benchmark-json file: ``rounds`` samples per benchmark around
    SECONDS[name] * scale (5% noise), and the extra_info the benches write."""
    rng = np.random.default_rng(seed)
    benchmarks = []
    for name in names:
        factor = scale.get(name, 1.0) if isinstance(scale, dict) else scale
        data = list(SECONDS[name] * factor * np.exp(rng.normal(0, 0.05, rounds)))
        median = statistics.median(data)
        q1, q3 = np.quantile(data, [0.25, 0.75])
        info_ = {"case": name, "tokens_per_s": 1000 / median}
        if name == TRAIN:
            info_ |= {"memory_bytes": 50_000_000, "memory_kind": "XLA compiled-program account", "compile_s": 9.0,
                      "mfu": 0.25, "achieved_flops": 1e10}
        info_ |= (extra or {}).get(name, {})
        benchmarks.append({
            "group": GROUPS[name], "name": name.split("::")[1], "fullname": name, "params": None,
            "stats": {"min": min(data), "max": max(data), "mean": float(np.mean(data)), "median": median,
                      "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1), "rounds": rounds, "data": data},
            "extra_info": info_,
        })
    path.write_text(json.dumps({
        "machine_info": info or machine_info(), "commit_info": {"id": commit, "time": when, "dirty": False},
        "benchmarks": benchmarks, "datetime": when, "version": "5.3.1"}))
    return path


def pairs(tmp_path: Path, base_scales, head_scales, **kwargs) -> tuple[list[str], list[str]]:
    """Three (or len) pairs; a scale per run is that run's machine drift, or a dict per benchmark."""
    base = [str(write_run(tmp_path / f"base-{i}.json", s, seed=2 * i, **kwargs.get("base", {})))
            for i, s in enumerate(base_scales)]
    head = [str(write_run(tmp_path / f"head-{i}.json", s, seed=2 * i + 1, **kwargs.get("head", {})))
            for i, s in enumerate(head_scales)]
    return base, head


def run_cli(*args: str) -> int:
    return main(["bench-compare", *args])


def test_a_a_noise_with_drift_between_pairs_is_no_regression(tmp_path, capsys):
    # The machine drifts by 20% between pairs, and one pair's head ran 8% slow: noise, not a change.
    base, head = pairs(tmp_path, [1.0, 1.2, 0.9], [1.08, 1.17, 0.92])
    assert run_cli("--base", *base, "--head", *head) == 0
    out = capsys.readouterr().out
    assert "No regression in 2 benchmarks" in out and "REGRESSED" not in out


def test_a_slowdown_in_every_pair_regresses(tmp_path, capsys):
    base, head = pairs(tmp_path, [1.0, 1.2, 0.9], [1.3, 1.56, 1.17])
    assert run_cli("--base", *base, "--head", *head) == 1
    out = capsys.readouterr().out
    assert out.count("**REGRESSED**: time, tokens/s") == 2
    time = next(c for c in regression.compare(base, head).rows[TRAIN] if c.metric.key == "time")
    assert time.median_ratio == pytest.approx(1.3, rel=0.05) and f"**{time.median_ratio:.3f}" in out


def test_the_slowdown_of_one_benchmark_names_only_it(tmp_path, capsys):
    base, head = pairs(tmp_path, [1.0] * 3, [{TRAIN: 1.3}] * 3)
    result = regression.compare(base, head)
    assert list(result.regressed) == [TRAIN]
    assert [c.verdict for c in result.rows[DECODE] if c.metric.key == "time"] == ["ok"]


@pytest.mark.parametrize("head_scales", [[1.0, 1.6, 1.01], [1.35, 1.3, 0.99]], ids=["one-slow-pair", "one-pair-disagrees"])
def test_one_outlier_pair_is_not_a_regression(tmp_path, head_scales):
    base, head = pairs(tmp_path, [1.0] * 3, head_scales)
    result = regression.compare(base, head)
    assert not result.regressed
    time = next(c for c in result.rows[TRAIN] if c.metric.key == "time")
    assert time.ratios == pytest.approx(head_scales, rel=0.05)


def test_a_faster_head_is_reported_not_failed(tmp_path, capsys):
    base, head = pairs(tmp_path, [1.0] * 3, [0.7] * 3)
    assert run_cli("--base", *base, "--head", *head) == 0
    assert "better: time, tokens/s" in capsys.readouterr().out


def test_compiled_memory_is_gated_tightly(tmp_path):
    more = {"head": {"extra": {TRAIN: {"memory_bytes": 52_500_000}}}}  # +5%, times unchanged
    result = regression.compare(*pairs(tmp_path, [1.0] * 3, [1.0] * 3, **more))
    assert [c.metric.key for c in result.regressed[TRAIN]] == ["memory_bytes"]
    slightly = {"head": {"extra": {TRAIN: {"memory_bytes": 50_200_000}}}}  # +0.4%
    assert not regression.compare(*pairs(tmp_path, [1.0] * 3, [1.0] * 3, **slightly)).regressed


def test_memory_of_a_cpu_process_is_not_gated(tmp_path):
    rss = {TRAIN: {"memory_bytes": 90_000_000, "memory_kind": "not measured (CPU allocator has no peak counter)"}}
    result = regression.compare(*pairs(tmp_path, [1.0] * 3, [1.0] * 3, head={"extra": rss}, base={"extra": {
        TRAIN: {**rss[TRAIN], "memory_bytes": 50_000_000}}}))
    assert not result.regressed


def test_falling_tokens_per_second_regresses_with_the_time_unchanged(tmp_path):
    # The same step time for fewer tokens (say, a batch that lost its padding-free packing).
    fewer = {TRAIN: {"tokens_per_s": 1000 / 0.030 * 0.7}}
    result = regression.compare(*pairs(tmp_path, [1.0] * 3, [1.0] * 3, head={"extra": fewer}))
    assert [c.metric.key for c in result.regressed[TRAIN]] == ["tokens_per_s"]


def test_compile_seconds_are_gated_loosely_and_only_past_a_second(tmp_path):
    slower = {"head": {"extra": {TRAIN: {"compile_s": 20.0}}}}
    assert [c.metric.key for c in regression.compare(*pairs(tmp_path, [1.0] * 3, [1.0] * 3, **slower)).regressed[TRAIN]] \
        == ["compile_s"]
    wander = {"head": {"extra": {TRAIN: {"compile_s": 12.0}}}}  # +33%: compile times wander that much
    assert not regression.compare(*pairs(tmp_path, [1.0] * 3, [1.0] * 3, **wander)).regressed
    tiny = {"base": {"extra": {TRAIN: {"compile_s": 0.1}}}, "head": {"extra": {TRAIN: {"compile_s": 0.4}}}}
    result = regression.compare(*pairs(tmp_path, [1.0] * 3, [1.0] * 3, **tiny))
    assert not result.regressed
    assert next(c for c in result.rows[TRAIN] if c.metric.key == "compile_s").verdict == "too small"


def test_mfu_is_reported_not_gated(tmp_path, capsys):
    base, head = pairs(tmp_path, [1.0] * 3, [1.0] * 3, head={"extra": {TRAIN: {"mfu": 0.1}}})
    assert run_cli("--base", *base, "--head", *head) == 0
    assert "25.0% → 10.0%" in capsys.readouterr().out


def test_a_missing_value_is_shown_not_gated_and_never_exported_as_null(tmp_path, capsys):
    none = {TRAIN: {"tokens_per_s": None, "mfu": None}}
    base, head = pairs(tmp_path, [1.0] * 3, [1.0] * 3, head={"extra": none})
    assert run_cli("--base", *base, "--head", *head) == 0
    result = regression.compare(base, head)
    assert next(c for c in result.rows[TRAIN] if c.metric.key == "tokens_per_s").verdict == "no value"
    assert main(["bench-export", head[0], "--out", str(tmp_path / "export")]) == 0
    for name in ("bigger_is_better.json", "smaller_is_better.json"):
        text = (tmp_path / "export" / name).read_text()
        assert "null" not in text and "NaN" not in text
    bigger = json.loads((tmp_path / "export" / "bigger_is_better.json").read_text())
    assert [e["name"] for e in bigger] == [f"{DECODE} tokens/s"]  # TRAIN has no tokens/s, no MFU
    smaller = json.loads((tmp_path / "export" / "smaller_is_better.json").read_text())
    assert {e["unit"] for e in smaller} == {"ms"} and len(smaller) == 2
    assert all(e["value"] > 0 and "IQR" in e["range"] for e in smaller)


def test_new_and_removed_benchmarks_are_listed_not_failed(tmp_path, capsys):
    base, head = pairs(tmp_path, [1.0] * 3, [1.0] * 3, base={"names": (TRAIN,)}, head={"names": (DECODE,)})
    assert run_cli("--base", *base, "--head", *head) == 0
    out = capsys.readouterr().out
    assert f"New (in every head run, in no base run; not compared): `{DECODE}`" in out
    assert f"Removed (in every base run, in no head run): `{TRAIN}`" in out


@pytest.mark.parametrize("other, says", [
    (dict(cpu="Intel Xeon 8375C"), "DIFFERENT HARDWARE"),
    (dict(cores=4), "DIFFERENT HARDWARE"),
    (dict(jax="0.10.3"), "differs: versions"),
    (dict(accelerators=["cuda:0 NVIDIA H100"]), "differs: accelerators"),
    (dict(threads=2), "different thread budget"),
], ids=["cpu", "cores", "jax-version", "accelerator", "threads"])
def test_runs_of_other_hardware_are_refused(tmp_path, capsys, other, says):
    base, head = pairs(tmp_path, [1.0] * 3, [1.0] * 3, head={"info": machine_info(**other)})
    assert run_cli("--base", *base, "--head", *head) == 2
    err = capsys.readouterr().err
    assert says in err and "head-0.json" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("content, says", [
    ("{not json", "not JSON"),
    ('{"benchmarks": "x"}', "not a pytest-benchmark JSON file"),
    ("[1, 2]", "not a pytest-benchmark JSON file"),
    ('{"machine_info": {}, "benchmarks": [{"fullname": "t", "stats": {"median": 1}}]}', "no raw samples"),
    ('{"machine_info": {}, "benchmarks": []}', "no timed benchmark"),
    ('{"machine_info": {"cpu": 3, "mtcore": []}, "benchmarks": [{"fullname": "t", "stats": {"data": [1.0]}}]}',
     "DIFFERENT HARDWARE"),
    (None, "cannot read it"),
], ids=["not-json", "benchmarks-not-a-list", "a-list", "no-samples", "no-benchmarks", "odd-machine-info", "missing"])
def test_bad_files_are_one_line_and_exit_2(tmp_path, capsys, content, says):
    base, head = pairs(tmp_path, [1.0] * 3, [1.0] * 3)
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    assert run_cli("--base", *base, "--head", *head[:2], str(bad)) == 2
    err = capsys.readouterr().err
    assert says in err and "bad.json" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unpaired_runs_are_refused(tmp_path, capsys):
    base, head = pairs(tmp_path, [1.0] * 3, [1.0] * 2)
    assert run_cli("--base", *base, "--head", *head) == 2
    assert "3 base files but 2 head files" in capsys.readouterr().err


def test_allowed_regression_and_the_job_summary(tmp_path, capsys, monkeypatch):
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    base, head = pairs(tmp_path, [1.0] * 3, [1.4] * 3)
    assert run_cli("--base", *base, "--head", *head, "--allow-regression", "--json", str(tmp_path / "v.json")) == 0
    text = summary.read_text()
    assert "| benchmark | time |" in text and "REGRESSED" in text and "allowed" in text
    verdicts = json.loads((tmp_path / "v.json").read_text())
    assert sorted(verdicts["regressed"]) == sorted([TRAIN, DECODE])
    assert verdicts["benchmarks"][TRAIN]["time"]["verdict"] == "regressed"


def test_history_stores_by_fingerprint_plots_per_group_and_flags_drift(tmp_path, capsys):
    history, runs = tmp_path / "history", tmp_path / "runs"
    runs.mkdir()
    for i in range(6):
        drift = 1.3 if i == 5 else 1.0 + 0.02 * (i % 3)  # the latest run is 30% slower
        path = write_run(runs / f"{i}.json", {TRAIN: drift}, seed=i, commit=f"{i:x}" * 40,
                         when=f"2026-11-0{i + 1}T00:00:00")
        out = capsys.readouterr().out
        assert main(["bench-history", str(history), "--add", str(path)]) == 0
    drifted = [line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("DRIFT")]
    assert len(drifted) == 1 and TRAIN in drifted[0]
    ratio = float(drifted[0].split(" is ")[1].split("x the rolling")[0])
    assert 1.2 < ratio < 1.4
    assert "no drift" in out  # the run before the slow one
    # Another machine's run goes to its own fingerprint, and is never the baseline of this one.
    write_run(runs / "gpu.json", info=machine_info(accelerators=["cuda:0 NVIDIA H100"]), commit="f" * 40)
    assert main(["bench-history", str(history), "--add", str(runs / "gpu.json"), "--out", str(tmp_path / "plots")]) == 0
    assert sorted(len(list(f.glob("*.json"))) for f in history.iterdir()) == [1, 6]
    pngs = sorted((tmp_path / "plots").rglob("*.png"))
    assert len(pngs) == 4  # two fingerprints x two bench groups
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_history_needs_a_commit(tmp_path, capsys):
    path = write_run(tmp_path / "run.json", commit="")
    assert main(["bench-history", str(tmp_path / "h"), "--add", str(path)]) == 2
    assert "no commit id" in capsys.readouterr().err


# ---- end to end: real pytest-benchmark sessions ----------------------------------------------
BENCH = """
import os


def work(n):
    return sum(i * i for i in range(n))


def test_work(benchmark):
    n = int(os.environ["WORK"])
    assert benchmark(work, n) == sum(i * i for i in range(n))
"""


@pytest.mark.slow
def test_timed_twice_through_benchmark_json(pytester, tmp_path, capsys, monkeypatch):
    pytester.makepyfile(test_tiny=BENCH)

    def timed(name: str, work: int) -> str:
        monkeypatch.setenv("WORK", str(work))
        path = tmp_path / f"{name}.json"
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--benchmark-json", str(path),
                                               "--benchmark-min-rounds", "20", "--benchmark-max-time", "0.2")
        assert result.ret == 0, result.stdout.str()[-2000:]
        return str(path)

    small, large = timed("small", 20_000), timed("large", 80_000)  # four times the work
    assert run_cli("--base", small, "--head", large) == 1
    assert "**REGRESSED**: time" in capsys.readouterr().out
    assert run_cli("--base", large, "--head", small) == 0
    assert "better: time" in capsys.readouterr().out
    (tmp_path / "broken.json").write_text(Path(large).read_text()[:100])
    assert run_cli("--base", small, "--head", str(tmp_path / "broken.json")) == 2
    assert "broken.json: not JSON" in capsys.readouterr().err


def _gate_repo(root: Path, work: int) -> Path:
    """A git repository shaped like mtcore's, small enough to gate in seconds: the real gate
    script and turn taking, an ``mtcore`` whose ``WORK`` sets how much a bench does, one bench in
    the gate subset that logs each round's side and time to ``$ROUNDS_LOG``."""
    import shutil
    import subprocess

    here = Path(__file__).resolve().parent.parent
    (root / "scripts").mkdir(parents=True)
    shutil.copy(here / "scripts" / "bench_gate.py", root / "scripts")
    (root / "mtcore").mkdir()
    (root / "mtcore" / "__init__.py").write_text(f"WORK = {work}\n")
    (root / "benches").mkdir()
    shutil.copy(here / "benches" / "turns.py", root / "benches")
    (root / "benches" / "conftest.py").write_text(
        "from turns import Turns\n\nTURNS = Turns()\n\n\n"
        "def pytest_addoption(parser):\n    parser.addoption('--threads')\n\n\n"
        "def pytest_configure(config):\n    TURNS.start()\n"
        "    config.addinivalue_line('markers', 'gate: the gate subset')\n\n\n"
        "def pytest_unconfigure(config):\n    TURNS.finish()\n")
    (root / "benches" / "test_work.py").write_text(
        "import os\nimport time\n\nimport pytest\nfrom conftest import TURNS\nfrom mtcore import WORK\n\n\n"
        "def work():\n    sum(i * i for i in range(WORK))\n"
        "    with open(os.environ['ROUNDS_LOG'], 'a') as f:\n"
        "        f.write(f'{os.getcwd()} {time.monotonic()}\\n')\n\n\n"
        "@pytest.mark.gate\ndef test_work(benchmark):\n"
        "    benchmark.pedantic(work, setup=TURNS.swap, rounds=20)\n")
    (root / "conftest.py").write_text("")
    (root / "pytest.ini").write_text("[pytest]\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(git + ["add", "-A"], cwd=root, check=True)
    subprocess.run(git + ["commit", "-qm", "base"], cwd=root, check=True)
    return root


def _gate(root: Path, *args: str):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "GITHUB_"))}
    env["ROUNDS_LOG"] = str(root / "rounds.log")
    return subprocess.run([sys.executable, "scripts/bench_gate.py", "--base", "HEAD", "--out", "gate", *args],
                          cwd=root, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.slow
def test_gate_takes_turns_between_base_and_head_and_catches_a_slower_head(tmp_path):
    root = _gate_repo(tmp_path / "repo", work=20_000)
    (root / "mtcore" / "__init__.py").write_text("WORK = 80_000\n")  # the head: four times the work
    done = _gate(root)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.findall(r"taking turns, (\w+) first", done.stdout) == ["base", "head", "base"]
    # Each pair's 40 rounds alternate between the trees: no two rounds of one side in a row.
    sides = [Path(line.split()[0]).name for line in (root / "rounds.log").read_text().splitlines()]
    assert len(sides) == 120 and set(sides) == {"base", "head"}
    for i in range(0, 120, 40):
        assert all(a != b for a, b in itertools.pairwise(sides[i:i + 40])), sides[i:i + 40]
    assert [sides[0], sides[40], sides[80]] == ["base", "head", "base"]
    assert "**REGRESSED**: time" in done.stdout
    assert sorted(p.name for p in (root / "gate").glob("*.json")) == [
        "base-1.json", "base-2.json", "base-3.json", "head-1.json", "head-2.json", "head-3.json", "verdicts.json"]
    assert json.loads((root / "gate" / "verdicts.json").read_text())["regressed"] == ["benches/test_work.py::test_work"]
    # The worktree is gone again.
    import subprocess
    import sys

    assert len(subprocess.run(["git", "worktree", "list"], cwd=root, capture_output=True, text=True).stdout.splitlines()) == 1
    # main's history: the subset once, no base, no partner.
    once = subprocess.run([sys.executable, "scripts/bench_gate.py", "--once", "run.json"], cwd=root,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "ROUNDS_LOG": str(tmp_path / "once.log")})
    assert once.returncode == 0, once.stdout[-2000:]
    assert [b["name"] for b in json.loads((root / "run.json").read_text())["benchmarks"]] == ["test_work"]


@pytest.mark.slow
def test_a_base_that_cannot_collect_the_heads_benches_skips_the_gate(tmp_path):
    root = _gate_repo(tmp_path / "repo", work=20_000)
    (root / "mtcore" / "__init__.py").write_text("WORK = 20_000\nNEW = 1\n")
    (root / "benches" / "test_new.py").write_text("from mtcore import NEW\n\n\ndef test_new():\n    assert NEW\n")
    done = _gate(root)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "WARNING: the base" in done.stdout and "cannot collect the head's benches" in done.stdout
    assert "ImportError" in done.stdout or "NEW" in done.stdout


def test_a_paired_round_begins_with_an_untimed_call_after_the_hand_over(monkeypatch):
    # benches/ on sys.path for this test only: it also holds a conftest.py, which must not shadow others.
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benches"))
    from turns import Turns

    inbox, partner_out = os.pipe()  # what the partner sends this session
    partner_in, outbox = os.pipe()  # what this session sends the partner
    turns = Turns(f"{inbox},{outbox}")
    calls = []
    setup = turns.before_round(lambda: calls.append("call"))
    os.write(partner_out, b"tt")  # the partner hands the turn back twice
    setup()
    setup()
    assert calls == ["call", "call"] and os.read(partner_in, 8) == b"tt"  # one hand-over, one call a round
    os.close(partner_out)  # the partner has finished: alone, no extra call, nothing sent
    setup()
    assert calls == ["call", "call"] and not turns.paired
    os.close(partner_in)
    assert Turns("").before_round(lambda: calls.append("call"))() is None and len(calls) == 2  # no gate: nothing


def test_a_run_saved_without_raw_rounds_exports_from_its_medians_but_is_not_compared(tmp_path, capsys):
    """pytest-benchmark saves runs without ``stats.data`` unless told (--benchmark-save-data):
    bench-export needs only medians; bench-compare's rank test needs the rounds and says so."""
    path = tmp_path / "run.json"
    write_run(path)
    data = json.loads(path.read_text())
    medians = {}
    for b in data["benchmarks"]:
        medians[b["fullname"]] = b["stats"]["median"] = float(np.median(b["stats"].pop("data")))
    path.write_text(json.dumps(data))
    assert main(["bench-export", str(path), "--out", str(tmp_path / "export")]) == 0
    smaller = json.loads((tmp_path / "export" / "smaller_is_better.json").read_text())
    assert {e["name"]: e["value"] for e in smaller} == {f"{name} time": m * 1e3 for name, m in medians.items()}
    assert run_cli("--base", str(path), "--head", str(path)) == 2
    assert "has no raw samples (stats.data)" in capsys.readouterr().err


def _sessions(plans: dict[str, list[tuple[str, int]]]) -> list[tuple[str, str]]:
    """Two sessions taking turns in threads, as the gate runs base and head: each times its cases
    ``[(case, rounds it calibrated)]`` as ``timed`` does (agree on the rounds, then a hand-over
    before each round). Returns the ``(side, case)`` of every timed round in the order they ran."""
    import threading

    here = Path(__file__).resolve().parent.parent / "benches"
    sys.path.insert(0, str(here))
    try:
        from turns import Turns, connect
    finally:
        sys.path.remove(str(here))
    ends, _ = connect()
    log: list[tuple[str, str]] = []

    def session(side: str, spec: str) -> None:
        turns = Turns(spec)
        turns.start()
        for case, calibrated in plans[side]:
            for _ in range(turns.agree(case, calibrated)):
                turns.swap()
                log.append((side, case))
        turns.finish()

    threads = [threading.Thread(target=session, args=(side, spec), daemon=True)
               for side, (spec, _) in zip(plans, ends, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    # Each session closes its two ends as it finishes (``Turns.finish``): all four, so nothing here.
    assert not any(t.is_alive() for t in threads), "the sessions deadlocked"
    return log


def test_gate_sessions_agree_on_the_rounds_of_each_case():
    """A slower side calibrates fewer rounds; both time the larger count, so every case's rounds
    alternate to its end and no round of one case runs against the next case's."""
    log = _sessions({"base": [("a", 5), ("b", 3), ("c", 4)], "head": [("a", 3), ("b", 6), ("c", 4)]})
    for case, n in (("a", 5), ("b", 6), ("c", 4)):
        rounds = [side for side, c in log if c == case]
        assert rounds.count("base") == rounds.count("head") == n, (case, log)
    cases = [c for _, c in log]
    assert cases == sorted(cases), log  # each case's rounds before the next case's
    for (side, case), (other, then) in itertools.pairwise(log):
        assert side != other or case != then, log  # alternating within a case


def test_gate_sessions_with_different_cases_keep_their_own_counts():
    """A case only one side has (a new bench): neither waits for the other's count, and from there
    on each keeps its own counts, whatever arrives late from the other side."""
    log = _sessions({"base": [("a", 3), ("c", 2)], "head": [("a", 3), ("new", 4), ("c", 2)]})
    assert [c for s, c in log if s == "head"].count("new") == 4
    assert [c for s, c in log if s == "base"] == ["a"] * 3 + ["c"] * 2
    # Past the one-sided case, a count that arrives for another case is dropped, never taken for
    # this one: each case's rounds are the side's own count or the larger of the two.
    plans = {"base": [("a", 3), ("c", 5), ("d", 2)], "head": [("a", 4), ("new", 1), ("c", 2), ("d", 6)]}
    log = _sessions(plans)
    both = {case: max(n for plan in plans.values() for c, n in plan if c == case) for case in ("a", "c", "d")}
    for side, plan in plans.items():
        timed = [c for s, c in log if s == side]
        assert [c for c, _ in plan] == list(dict.fromkeys(timed)), log  # its cases, in order
        for case, own in plan:
            assert timed.count(case) in (own, both.get(case, own)), (side, case, log)
        assert timed.count("a") == 4, log  # agreed before the sides fell out of step


# ---- make bench-check: this machine's history ------------------------------------------------
def _check_history(tmp_path: Path, scales: list[dict], info: dict | None = None, start: int = 0) -> list[str]:
    """Saved bench-check runs, a minute apart, each with a scale per benchmark (its machine's mood)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    return [str(write_run(tmp_path / f"{i:04d}_check.json", scale, seed=i, info=info, when=f"2026-11-01T00:{i:02d}:00"))
            for i, scale in enumerate(scales, start=start)]


def check_cli(*paths: str) -> int:
    return main(["bench-check", *paths])


def test_bench_check_flags_a_quiet_benchmark_and_spares_a_noisy_one(tmp_path, capsys):
    """A history whose decode medians wandered by a fifth gives decode a band of twice that: a
    30% slower decode is no alarm there, and the report says it is too noisy to gate at 15%; the
    quiet train step 30% slower fails."""
    history = [{TRAIN: 1.0 + 0.01 * (i % 3), DECODE: (0.8, 1.2, 1.0, 0.9, 1.1)[i]} for i in range(5)]
    paths = _check_history(tmp_path, [*history, {TRAIN: 1.3, DECODE: 1.3}])
    assert check_cli(*paths) == 1
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0].strip("| "): line for line in out.splitlines() if line.startswith("| benches/")}
    assert "**REGRESSED**" in rows[TRAIN] and rows[DECODE].endswith("| ok |"), out
    noisy = [line for line in out.splitlines() if line.startswith("too noisy")]
    assert len(noisy) == 1 and noisy[0].startswith(f"too noisy on this machine to gate at 15%: {DECODE} (run-to-run "), out
    assert 15 < int(re.search(r"run-to-run (\d+)%", noisy[0]).group(1)) < 25, noisy
    # The same history, only decode slower: nothing regressed.
    assert check_cli(*_check_history(tmp_path / "b", [*history, {TRAIN: 1.0, DECODE: 1.3}])) == 0
    assert "0 regressed" in capsys.readouterr().out


def test_bench_check_needs_k_runs_of_this_machine(tmp_path, capsys):
    """Fewer than K saved runs before the newest: it says so and exits 0. Runs of other hardware
    or another thread budget never count, however many there are."""
    paths = _check_history(tmp_path, [1.0, 1.0, 1.5])
    assert check_cli(*paths) == 0
    assert "not enough history on this machine to judge the times (2 of 3 saved runs" in capsys.readouterr().out
    other = machine_info(accelerators=["cuda:0 NVIDIA H100"])
    elsewhere = _check_history(tmp_path, [1.0] * 5, info=other, start=10)
    budget = _check_history(tmp_path, [1.0] * 5, info=machine_info(threads=2), start=20)
    mine = _check_history(tmp_path, [1.0, 1.0, 1.5], start=30)
    assert check_cli(*elsewhere, *budget, *mine) == 0
    assert "(2 of 3 saved runs" in capsys.readouterr().out
    # With a third run of this machine it judges, and the 50% slower run fails.
    assert check_cli(*_check_history(tmp_path, [1.0, 1.0, 1.0, 1.5], start=40), *elsewhere) == 1
    assert "**REGRESSED**" in capsys.readouterr().out


# ---- what a step moves and a device holds: judged exactly ----------------------------------------------
def costs_case(all_reduces: int = 2, sent: int = 800_780, held: int = 2_402_304, engine_version: str = "torch 2.13.0+cpu",
               **kinds) -> dict:
    """One framework x mesh's costs as the benches keep them (records.gated_costs)."""
    collectives = {"all-reduce": {"calls": all_reduces, "sent_bytes": sent}, **kinds}
    return {"framework": "torch", "mesh": "data:2", "engine": "gloo", "engine_version": engine_version,
            "batch_shape": [32, 32, 32], "sent_bytes_per_step": sum(k["sent_bytes"] for k in collectives.values()),
            "held_bytes": held, "collectives": collectives}


def with_costs(path: Path, cases: dict) -> Path:
    data = json.loads(path.read_text())
    data["mtcore_costs"] = {"cases": cases}
    path.write_text(json.dumps(data))
    return path


def costs_pairs(tmp_path: Path, base: dict, head: dict, n: int = 3) -> tuple[list[str], list[str]]:
    b, h = pairs(tmp_path, [1.0] * n, [1.0] * n)
    return ([str(with_costs(Path(p), base)) for p in b], [str(with_costs(Path(p), head)) for p in h])


CASE = "torch-cpu-tiny-fp32-data2"


def test_unchanged_costs_pass_and_say_so(tmp_path, capsys):
    base, head = costs_pairs(tmp_path, {CASE: costs_case()}, {CASE: costs_case()})
    assert run_cli("--base", *base, "--head", *head) == 0
    out = capsys.readouterr().out
    assert "What a step moves and a device holds (exact: any increase regresses; 1 framework x mesh cases)" in out
    assert "4 of 4 numbers identical; 0 grew, 0 shrank." in out


@pytest.mark.parametrize("head, grew", [
    (costs_case(all_reduces=3, sent=800_784), ["all-reduce bytes/step", "all-reduce calls/step", "sent bytes/step"]),
    (costs_case(held=2_402_308), ["held bytes"]),
    (costs_case(**{"all-gather": {"calls": 1, "sent_bytes": 4}}), ["all-gather bytes/step", "all-gather calls/step",
                                                                  "sent bytes/step"]),
], ids=["one-all-reduce-more", "four-bytes-more-held", "a-new-kind"])
def test_any_increase_of_what_a_step_moves_or_a_device_holds_regresses(tmp_path, capsys, head, grew):
    """However small, and whatever the timing says: the timed runs here are the same."""
    base, heads = costs_pairs(tmp_path, {CASE: costs_case()}, {CASE: head})
    assert run_cli("--base", *base, "--head", *heads, "--json", str(tmp_path / "v.json")) == 1
    out = capsys.readouterr().out
    assert "No regression in 2 benchmarks." in out  # the times did not move
    assert "**REGRESSED**" in out and "grew:**" in out
    verdicts = json.loads((tmp_path / "v.json").read_text())["costs"]
    assert sorted(x["name"] for x in verdicts["regressed"]) == grew


def test_a_decrease_is_reported_not_failed(tmp_path, capsys):
    base, head = costs_pairs(tmp_path, {CASE: costs_case(all_reduces=86)}, {CASE: costs_case(all_reduces=2)})
    assert run_cli("--base", *base, "--head", *head) == 0
    assert "| `torch-cpu-tiny-fp32-data2` | all-reduce calls/step | 86 | 2 | smaller |" in capsys.readouterr().out


def test_costs_of_another_engine_version_are_not_compared(tmp_path, capsys):
    base, head = costs_pairs(tmp_path, {CASE: costs_case()},
                             {CASE: costs_case(all_reduces=9, engine_version="torch 2.14.0+cpu")})
    assert run_cli("--base", *base, "--head", *head) == 0
    assert "engines, their versions or the batch differ between the runs" in capsys.readouterr().out


def test_bench_check_judges_the_costs_against_the_last_earlier_run(tmp_path, capsys):
    paths = _check_history(tmp_path, [{}] * 2)
    with_costs(Path(paths[0]), {CASE: costs_case()})
    with_costs(Path(paths[1]), {CASE: costs_case(all_reduces=3, sent=800_784)})
    assert check_cli(*paths) == 1  # too little history to judge the times; enough for the exact numbers
    out = capsys.readouterr().out
    assert "not enough history on this machine to judge the times" in out
    assert "| `torch-cpu-tiny-fp32-data2` | all-reduce calls/step | 2 | 3 | **REGRESSED** |" in out


def test_a_costs_block_that_is_not_the_benches_is_one_line(tmp_path, capsys):
    (base,), (head,) = costs_pairs(tmp_path, {CASE: {"sent": 1}}, {CASE: costs_case()}, n=1)
    assert run_cli("--base", base, "--head", head) == 2
    assert "its mtcore_costs block is not what the benches write" in capsys.readouterr().err
