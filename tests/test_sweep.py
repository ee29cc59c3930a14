"""The link sweep's judgement (mtcore/sweep.py): verdicts, the rate a series turns network-bound,
the planner's prediction of a point, the report's sentence, and `mtcore sweep` on bench JSON."""

from __future__ import annotations

import json

import pytest

from mtcore.backend import framework
from mtcore.cli import main
from mtcore.config import ModelConfig
from mtcore.costs import plan, step_flops_per_device
from mtcore.errors import MTCoreError
from mtcore.parallel import MeshShape
from mtcore.sweep import Point, bottleneck, judged, load, predict, turning_rate, write


def bench_json(points: list[dict]) -> dict:
    """A pytest-benchmark JSON file as benches/test_sweep.py writes it, one benchmark per point."""
    benchmarks = []
    for p in points:
        step, loop, wire, rate = p["step"], p["loopback"], p.get("wire", 1e6), p["rate"]
        benchmarks.append({
            "stats": {"median": step, "q1": step * 0.98, "q3": step * 1.03, "rounds": 7},
            "extra_info": {
                "framework": p.get("framework", "torch"), "size": "tiny", "mesh": p.get("mesh", "data:2"),
                "rate_bits_per_s": rate, "loopback": {"median_s": loop}, "one_device": {"median_s": p.get("one", 0.015)},
                "one_device_rows": 16, "global_batch_shape": [32, 32, 32],
                "wire": [{"host": "host0", "tx_bytes_per_step": wire, "rx_bytes_per_step": wire * 0.99,
                          "utilisation": wire * 8 / step / rate}],
                "predicted_wire_per_step": wire, "latency_unshaped_s": 50e-6}})
    return {"machine_info": {}, "benchmarks": benchmarks}


def series(loopback: float, rates_steps: list[tuple[float, float]], **kw) -> list[dict]:
    return [{"rate": r * 1e6, "step": s, "loopback": loopback, **kw} for r, s in rates_steps]


def points(tmp_path, rows: list[dict]) -> list[Point]:
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(bench_json(rows)))
    return load([path])


def test_a_point_is_network_bound_when_its_communication_exceeds_its_arithmetic(tmp_path):
    (a, b) = points(tmp_path, series(0.1, [(100, 0.19), (10, 0.21)]))
    assert a.communication_s == pytest.approx(0.09) and not a.network_bound
    assert b.communication_s == pytest.approx(0.11) and b.network_bound


def test_the_turning_rate_lies_between_the_last_point_that_was_not_network_bound_and_the_first_that_was(tmp_path):
    pts = points(tmp_path, series(0.1, [(200, 0.15), (100, 0.18), (50, 0.25), (10, 0.9)]))
    rate, said = turning_rate(pts)
    # communication / arithmetic: 0.8 at 100 Mbit/s, 1.5 at 50: equal to 1 in between (log-log).
    assert 50e6 < rate < 100e6 and "below about" in said
    assert turning_rate(pts[:2])[0] is None and "not network-bound down to 100" in turning_rate(pts[:2])[1]
    assert "at every rate swept (from 50" in turning_rate(pts[2:])[1]


def test_the_planner_predicts_a_point_from_one_devices_step_the_engines_wire_bytes_and_the_latency(tmp_path):
    (p,) = points(tmp_path, series(0.02, [(100, 0.1)], one=0.015))
    cfg = ModelConfig.preset("tiny")
    # The global batch of 32 rows on one device: twice the bench's 16 rows' FLOPs.
    ratio = step_flops_per_device(cfg, MeshShape(), 32, 32, 32) / step_flops_per_device(cfg, MeshShape(), 16, 32, 32)
    assert ratio == pytest.approx(2.0)
    (row,) = plan(cfg, [MeshShape(data=2)], 32, 32, 32, bandwidth=100e6 / 8, latency=50e-6, compute_s=0.03,
                  engine="gloo", layout=framework("torch").LAYOUT)
    got = predict(p)
    assert got["arithmetic_s"] == pytest.approx(0.015)  # half the global batch's FLOPs
    assert got["communication_s"] == pytest.approx(row["communication_s"])
    assert got["communication_s"] == pytest.approx(row["wire"] * 8 / 100e6 + 2 * 50e-6)  # one call, 2 messages
    assert got["step_s"] == pytest.approx(got["arithmetic_s"] + got["communication_s"])
    # Slower links, longer steps: bytes over the rate.
    assert predict(p, 10e6)["communication_s"] > 9 * got["communication_s"]


def test_the_planner_is_held_only_where_communication_is_at_least_half_the_step(tmp_path):
    rows = judged(points(tmp_path, series(0.09, [(200, 0.12), (10, 0.8)])))
    assert [r["planner_held"] for r in rows] == [False, True]
    assert rows[0]["planner_within"] is None and isinstance(rows[1]["planner_within"], bool)
    assert rows[1]["planner_within"] == (abs(rows[1]["planner_ratio"] - 1) <= 0.2)


def test_mtcore_sweep_writes_the_verdicts_the_table_and_a_plot(tmp_path):
    path = tmp_path / "run.json"
    rows = (series(0.02, [(200, 0.05), (10, 0.7)]) + series(0.02, [(200, 0.4), (10, 1.0)], framework="jax")
            + series(0.1, [(200, 0.4), (10, 7.0)], mesh="tensor:2", wire=8.9e6))
    path.write_text(json.dumps(bench_json(rows)))
    ceiling = tmp_path / "ceiling.json"
    ceiling.write_text(json.dumps({"sustained_bits_per_s": 249e6}))
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--ceiling", str(ceiling)]) == 0
    md = (tmp_path / "out" / "sweep.md").read_text()
    assert "249 Mbit/s" in md and "tiny data:2 jax: network-bound at every rate swept" in md
    assert "tiny tensor:2 torch" in md and "![sweep-tiny](sweep-tiny.png)" in md
    assert (tmp_path / "out" / "sweep-tiny.png").stat().st_size > 10_000
    data = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert data["ceiling_bits_per_s"] == 249e6 and len(data["points"]) == 6


def test_mtcore_sweep_on_bad_input_says_so_in_one_line(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "missing.json"), "--out", str(tmp_path / "o")]) == 2
    assert "cannot read" in capsys.readouterr().err
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"benchmarks": [{"stats": {"median": 1}, "extra_info": {}}]}))
    assert main(["sweep", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "no link sweep points" in capsys.readouterr().err
    with pytest.raises(MTCoreError, match="no link sweep points"):
        write([empty], tmp_path / "o")


def test_the_reports_sentence_weighs_communication_against_arithmetic():
    said = bottleneck("torch fsdp:2", "2 hosts, 10 Mbit/s", 1.43, 0.03, 1.65e6, 10e6)
    assert said.startswith("torch fsdp:2 (2 hosts, 10 Mbit/s): the network was the bottleneck")
    assert "busy 1,320 ms of it (92%)" in said and "waited on messages" not in said
    waits = bottleneck("jax data:2", "2 hosts, 200 Mbit/s", 0.38, 0.015, 1.24e6, 200e6)
    assert "was the bottleneck" in waits and "waited on messages, not bytes" in waits
    fast = bottleneck("torch data:2", "2 hosts, 1000 Mbit/s", 0.03, 0.02, 0.85e6, 1e9)
    assert "was not the bottleneck" in fast
    assert bottleneck("jax data:2", "in one process", 0.02, 0.01, None, None) == \
        "jax data:2: no network was crossed (in one process)."
    unknown = bottleneck("torch data:2", "2 hosts, unshaped", 0.05, None, 0.85e6, None)
    assert "unknown rate" in unknown and "cannot be told" in unknown


def test_a_file_that_is_not_a_sweep_is_one_line(tmp_path):
    listed = tmp_path / "list.json"
    listed.write_text("[]")
    with pytest.raises(MTCoreError, match="not pytest-benchmark JSON"):
        load([listed])
    broken = bench_json(series(0.1, [(100, 0.2)]))
    del broken["benchmarks"][0]["extra_info"]["wire"]
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(MTCoreError, match="is not a link sweep point"):
        load([path])


def test_plan_with_a_frameworks_layout_and_an_engines_wire(capsys):
    """--framework: the collectives its layout runs (torch's FSDP gathers the embedding once);
    --engine: what gloo puts on the wire (its reduce-scatter a whole all-reduce), in a column."""
    args = ["plan", "--model", "tiny", "--mesh", "fsdp:2", "--global-batch-size", "8", "--src-len", "8", "--tgt-len", "8",
            "--bandwidth", "1", "--json"]
    assert main(args) == 0
    (textbook,) = json.loads(capsys.readouterr().out)
    assert main([*args, "--framework", "torch", "--engine", "gloo"]) == 0
    (torch_gloo,) = json.loads(capsys.readouterr().out)
    embedding = ModelConfig.preset("tiny").vocab_size * ModelConfig.preset("tiny").d_model * 4
    gathers = [sum(c["payload"] for c in r["collectives"] if c["kind"] == "all-gather") for r in (textbook, torch_gloo)]
    assert gathers[0] - gathers[1] == embedding
    assert "wire" not in textbook and torch_gloo["wire"] > 1.3 * torch_gloo["sent"]  # gloo's reduce-scatter
    assert torch_gloo["communication_s"] == pytest.approx(torch_gloo["wire"] / 1e9)
    assert main([*args[:-1], "--framework", "torch", "--engine", "gloo"]) == 0
    assert "on a wire between hosts" in capsys.readouterr().out
