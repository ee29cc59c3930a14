"""What a strategy costs a device, predicted from the shapes and the mesh (mtcore.costs), and
`mtcore plan`, which prints it. The measured side: test_parallel's held-bytes tests."""

from __future__ import annotations

import json

import pytest

from mtcore.cli import main
from mtcore.config import ModelConfig
from mtcore.costs import FP32, plan, predicted_bytes, predicted_traffic, sent_bytes
from mtcore.parallel import MeshShape

MARIAN = ModelConfig.preset("marian-en-hu")


@pytest.mark.parametrize("model", ["tiny", "marian-en-hu"])
def test_one_device_holds_every_parameter_and_two_moments(model):
    cfg = ModelConfig.preset(model)
    held = predicted_bytes(cfg, MeshShape())
    assert held.params == cfg.num_params() * FP32 and held.optimizer == 2 * held.params


def test_the_textbook_volumes():
    """Per device and step, P bytes of gradients over N devices: data parallel all-reduces them,
    2P(N-1)/N sent; FSDP gathers the weights twice and reduce-scatters the gradients, 3P(N-1)/N;
    tensor parallel moves activations, which grow with the batch, not with P."""
    p = MARIAN.num_params() * FP32
    for n in (2, 8, 64):
        (data,) = predicted_traffic(MARIAN, MeshShape(data=n), 8 * n, 128, 128)
        assert (data.kind, data.axis, data.sent) == ("all-reduce", "data", round(2 * p * (n - 1) / n))
        fsdp = predicted_traffic(MARIAN, MeshShape(fsdp=n), 8 * n, 128, 128)
        assert [(c.kind, c.calls) for c in fsdp] == [("all-gather", 2), ("reduce-scatter", 1)]
        assert sent_bytes(fsdp) == pytest.approx(3 * p * (n - 1) / n, abs=2)
    small, large = (sent_bytes(predicted_traffic(MARIAN, MeshShape(tensor=2), rows, 128, 128)) for rows in (32, 64))
    assert large == 2 * small


def test_fsdp_is_compute_bound_above_about_2200_tokens_a_device_on_h100_links():
    """The rule of thumb (bf16, 989 TFLOP/s and 450 GB/s a GPU): FSDP's 3P(N-1)/N bytes take as long
    as its 6P FLOPs a token at about FLOPS / bandwidth = 2,198 tokens a device. A token of the rule
    passes through every weight; here a row's source tokens pass through the encoder's and its
    target tokens through the decoder's and the output projection, so with source and target of
    one length a row of 2 x 64 tokens is 64 tokens through the whole model."""
    def balance(rows_per_device: int) -> float:
        (row,) = plan(MARIAN, [MeshShape(fsdp=64)], 64 * rows_per_device, 64, 64, value_bytes=2, bandwidth=450e9,
                      flops=989e12)
        assert row["tokens_per_device"] == rows_per_device * 128
        return row["communication_s"] / row["arithmetic_s"]

    below, above = balance(8), balance(64)  # 512 and 4,096 whole-model tokens a device
    assert below > 1 > above, (below, above)
    # Communication is fixed and arithmetic grows with the tokens: they balance at 512 x below.
    # Within 10% of the rule's 2,200 (attention adds FLOPs it leaves out).
    assert 1980 < 8 * 64 * below < 2420, 8 * 64 * below


def test_plan_prints_a_row_per_mesh(capsys):
    assert main(["plan", "--model", "marian-en-hu", "--mesh", "data:8", "fsdp:8", "fsdp:4,tensor:2",
                 "--bandwidth", "450", "--flops", "989", "--precision", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "76,149,760 parameters" in out and "no step run" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith(("| mesh", "| ---"))]
    assert [r.split(" | ")[0] for r in rows] == ["| data:8", "| fsdp:8", "| fsdp:4,tensor:2"]
    assert "communication at 450 GB/s" in out and "arithmetic at 989 TFLOP/s" in out
    assert main(["plan", "--model", "tiny", "--mesh", "fsdp:2", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["held"] == predicted_bytes(ModelConfig.preset("tiny"), MeshShape(fsdp=2)).as_dict()
    assert "communication_s" not in row  # no bandwidth given, no time claimed


@pytest.mark.parametrize("args, message", [
    (["--model", "huge", "--mesh", "fsdp:2"], "unknown model preset 'huge'"),
    (["--model", "tiny", "--mesh", "tensor:3"], "tensor:3 does not divide num_heads=4"),
    (["--model", "marian-en-hu", "--mesh", "wide:2"], "unknown axis 'wide'"),
    (["--model", "tiny", "--mesh", "fsdp:2", "--bandwidth", "0"], "--bandwidth must be positive, got 0"),
    (["--model", "tiny", "--mesh", "fsdp:2", "--flops", "-5"], "--flops must be positive, got -5"),
    (["--model", "tiny", "--mesh", "fsdp:2", "--bandwidth", "450", "wide=5"], "unknown axis 'wide'"),
    (["--model", "tiny", "--mesh", "fsdp:2", "--bandwidth", "fast"], "expected GB/s or AXIS=GB/s"),
    (["--model", "tiny", "--mesh", "fsdp:2", "--bandwidth", "450", "data:50"], "expected GB/s or AXIS=GB/s"),
    (["--model", "tiny", "--mesh", "data:2,fsdp:2", "fsdp:2,data:2"], "a mesh is given twice (data:2,fsdp:2 data:2,fsdp:2)"),
    (["--model", "tiny", "--mesh", "fsdp:2", "--bandwidth", "data=50"], "no rate for fsdp, tensor"),
    (["--model", "tiny", "--mesh", "fsdp:2", "--bandwidth", "450", "400"], "one rate for every axis is given twice"),
    (["--model", "tiny", "--mesh", "fsdp:3", "--global-batch-size", "8"], "fsdp:3 does not divide d_model=64"),
    (["--model", "tiny", "--mesh", "data:3", "--global-batch-size", "8"], "8 rows cannot be split evenly over 3 devices"),
    (["--model", "tiny", "--mesh", "fsdp:2", "--global-batch-size", "0"], "--global-batch-size must be at least 1, got 0"),
    (["--model", "tiny", "--mesh", "fsdp:2", "--latency", "-3"], "--latency must not be negative, got -3"),
    (["--model", "tiny", "--mesh", "fsdp:2", "--latency", "data=30"], "--latency: no value for fsdp, tensor"),
    (["--model", "tiny", "--mesh", "fsdp:2", "--compute-ms", "0"], "--compute-ms must be positive, got 0"),
    (["--model", "tiny", "--mesh", "fsdp:2", "--compute-ms", "5", "--flops", "1"], "--flops and a measured compute"),
    (["--model", "tiny", "--mesh", "fsdp:2", "--compute-from", "/nonexistent"], "--compute-from /nonexistent: no metrics"),
])
def test_plan_refuses_in_one_line(capsys, args, message):
    assert main(["plan", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mtcore: error: ") and message in err and err.count("\n") == 1, err


def test_plan_times_each_axis_at_its_own_links():
    """HSDP over 8 nodes of 8: the shards' gathers ride a node's links, the data all-reduce the
    network between nodes; each collective's bytes over its own axis's rate."""
    mesh = MeshShape(data=8, fsdp=8)
    (one,) = plan(MARIAN, [mesh], 4096, 64, 64, value_bytes=2, bandwidth=450e9)
    (two,) = plan(MARIAN, [mesh], 4096, 64, 64, value_bytes=2, bandwidth={"": 450e9, "data": 50e9})
    by_axis = {c["axis"]: 0 for c in two["collectives"]}
    for c in two["collectives"]:
        by_axis[c["axis"]] += c["sent"]
    assert one["communication_s"] == pytest.approx(two["sent"] / 450e9)
    assert two["communication_s"] == pytest.approx(by_axis["fsdp"] / 450e9 + by_axis["data"] / 50e9)


def test_plan_charges_a_latency_per_message_and_takes_a_measured_compute_time(tmp_path, capsys):
    """A ring all-reduce waits for 2(N-1) messages a call, the others N-1: the latency term is
    calls x messages x latency on each collective's axis, on top of bytes over bandwidth; a
    measured one-device step time is carried to each mesh by its share of the FLOPs."""
    from mtcore.costs import message_steps, step_flops_per_device

    cfg = ModelConfig.preset("tiny")
    mesh = MeshShape(fsdp=2)
    (bare,) = plan(cfg, [mesh], 32, 16, 16, bandwidth=1e8)
    (row,) = plan(cfg, [mesh], 32, 16, 16, bandwidth=1e8, latency=50e-6, compute_s=0.02)
    waits = sum(c["calls"] * message_steps(c["kind"], 2) for c in row["collectives"])
    assert message_steps("all-reduce", 4) == 6 and message_steps("all-gather", 4) == 3 and message_steps("x", 1) == 0
    assert row["latency_s"] == pytest.approx(waits * 50e-6) and waits == 3  # two gathers, one reduce-scatter
    assert row["communication_s"] == pytest.approx(bare["communication_s"] + row["latency_s"])
    one = step_flops_per_device(cfg, MeshShape(), 32, 16, 16)
    assert row["arithmetic_s"] == pytest.approx(0.02 * row["flops"] / one)
    (hsdp,) = plan(cfg, [MeshShape(data=2, fsdp=2)], 32, 16, 16, latency={"": 5e-6, "data": 30e-6})
    by_axis = {"fsdp": 0, "data": 0}
    for c in hsdp["collectives"]:
        by_axis[c["axis"]] += c["calls"] * message_steps(c["kind"], 2)
    assert by_axis == {"fsdp": 3, "data": 2}
    assert hsdp["latency_s"] == pytest.approx(3 * 5e-6 + 2 * 30e-6)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"run": {"devices": 1}, "epochs": [
        {"training_time": 3.0, "steps": 100}, {"training_time": 2.0, "steps": 100}]}))
    assert main(["plan", "--model", "tiny", "--mesh", "fsdp:2", "--global-batch-size", "32", "--src-len", "16",
                 "--tgt-len", "16", "--bandwidth", "0.0125", "--latency", "50", "--compute-from", str(run)]) == 0
    out = capsys.readouterr().out
    assert "communication at 0.0125 GB/s + 50 µs a message" in out and "arithmetic (20 ms a step on one device" in out
    assert "ms of it latency)" in out
    (run / "metrics.json").write_text(json.dumps({"run": {"devices": 2}, "epochs": [{"training_time": 1, "steps": 1}]}))
    assert main(["plan", "--model", "tiny", "--mesh", "fsdp:2", "--compute-from", str(run)]) == 2
    assert "needs a finished epoch of a one-device run" in capsys.readouterr().err
