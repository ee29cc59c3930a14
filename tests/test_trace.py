"""Traces (``--profile``) and where a step's time went (``mtcore.perf.trace``): the reader of both
frameworks' Chrome-JSON, the breakdown's interval arithmetic on a trace built by hand, and real
traced steps of both frameworks whose parts account for the step's clock."""

from __future__ import annotations

import gzip
import json

import pytest

import mtcore
from mtcore.backend import framework
from mtcore.errors import MTCoreError
from mtcore.perf.trace import STEP_EVENT, breakdown, innermost, minus, read_trace, summary, union

US = 1e-6  # the traces' microseconds, in seconds


def event(name, ts, dur, tid=1, **args):
    return {"ph": "X", "name": name, "ts": ts, "dur": dur, "pid": 7, "tid": tid, "args": args}


def kind(e):
    return {"op": "compute", "collective": "comm", "compile": "compile", STEP_EVENT: "step"}.get(e["name"])


# ---- the reader and the interval arithmetic ----------------------------------------------------------
def test_the_reader_takes_both_frameworks_files_and_jaxs_trailing_empty_event(tmp_path):
    events = [event(STEP_EVENT, 0, 10), event("op", 1, 2)]
    plain = tmp_path / "t.json"
    plain.write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}))
    zipped = tmp_path / "t.json.gz"
    with gzip.open(zipped, "wt") as f:
        json.dump({"traceEvents": [*events, {}]}, f)  # as JAX's perfetto trace ends
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(events))
    assert read_trace(plain) == read_trace(zipped) == read_trace(bare) == events
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(MTCoreError, match="bad.json: not a readable Chrome-JSON trace"):
        read_trace(tmp_path / "bad.json")


def test_intervals_union_and_subtract():
    assert union([(5, 7), (0, 2), (1, 3), (7, 8), (9, 9)]) == [(0, 3), (5, 8)]
    assert minus([(0, 10), (20, 30)], [(2, 3), (8, 22), (29, 40)]) == [(0, 2), (3, 8), (22, 29)]


def test_nested_events_resolve_innermost_first():
    # An op that waits on a collective inside it: the collective's time is communication.
    assert innermost([(0, 100, "compute"), (40, 60, "comm"), (70, 80, "compute")]) == [
        (0, 40, "compute"), (40, 60, "comm"), (60, 70, "compute"), (70, 80, "compute"), (80, 100, "compute")]


def test_the_breakdown_of_a_step_built_by_hand():
    """Compute 0-100 on the main thread with a collective waited on inside it (40-60); the engine's
    thread sends 80-150; the compiler 160-170; nothing 150-160 and 170-200."""
    events = [event(STEP_EVENT, 0, 200), event("op", 0, 100), event("collective", 40, 20),
              event("collective", 80, 70, tid=2), event("compile", 160, 10), event("annotation", 0, 200)]
    (step,) = breakdown(events, kind)
    assert step.arithmetic == pytest.approx(80 * US)  # 0-40, 60-100
    assert step.communication == pytest.approx(90 * US)  # 40-60, 80-150
    assert step.exposed == pytest.approx(70 * US) and step.hidden == pytest.approx(20 * US)  # 80-100 hid
    assert step.compiling == pytest.approx(10 * US)
    assert step.idle == pytest.approx(40 * US)  # the gaps, measured
    assert step.unaccounted == pytest.approx(0, abs=1e-12) and step.busy == pytest.approx(0.4)
    # The loop's clock held 10 us more than the trace's window: unaccounted says so.
    (clocked,) = breakdown(events, kind, clock=[210 * US])
    assert clocked.unaccounted == pytest.approx(10 * US)
    with pytest.raises(MTCoreError, match="the trace holds 1 steps, the loop timed 2"):
        breakdown(events, kind, clock=[1.0, 1.0])
    with pytest.raises(MTCoreError, match="no step was traced"):
        breakdown([event("op", 0, 1)], kind)


def test_the_summary_is_the_median_step_whose_parts_add_up():
    events = [event(STEP_EVENT, t, d) for t, d in ((0, 30), (100, 10), (200, 20))]
    s = summary(breakdown([*events, event("op", 0, 5), event("op", 100, 5), event("op", 200, 5)], kind))
    assert s["step"] == pytest.approx(20 * US) and s["idle"] == pytest.approx(15 * US)
    assert (s["steps"], s["step_min"], s["step_max"]) == (3, pytest.approx(10 * US), pytest.approx(30 * US))


# ---- real traced steps, both frameworks --------------------------------------------------------------
# One batch shape (pairs of at most 16 tokens), a dozen steps: compiled once, traced past the third.
QUICK = dict(model="tiny", data="synthetic", synthetic_size=500, max_len=16, batch_size=16, validation=16, test=16,
             eval_sentences=0, epochs=1, profile="on")


@pytest.mark.slow
@pytest.mark.parametrize("name, mesh", [("torch", None), ("jax", None), ("jax", "data:2")])
def test_traced_steps_account_for_the_step_in_both_frameworks(name, mesh, tmp_path):
    """A traced run writes one trace per process, named by run, framework and rank, that the
    reader reads; every traced step's parts account for its clock within 5%, and a mesh's
    collectives appear as communication."""
    if mtcore.available(name):
        pytest.skip(mtcore.available(name))
    from mtcore.train import RunConfig, train

    out = tmp_path / "run"
    train(RunConfig(framework=name, mesh=mesh, **QUICK), out, progress=False)
    record = json.loads((out / "rank0_results_epoch1.json").read_text())["profile"]
    assert record["trace"] == f"traces/run-{name}-rank0-epoch1.trace.json.gz" and record["steps_traced"] == [4, 6]
    events = read_trace(out / record["trace"])
    assert any(framework(name).trace_kind(e) == "compute" for e in events)
    for step in record["steps"]:
        assert abs(step["unaccounted"]) < 0.05 * step["step"], step
        assert all(step[k] >= 0 for k in ("arithmetic", "communication", "exposed", "compiling", "idle")), step
        assert 0.2 < step["busy"] <= 1 and step["exposed"] <= step["communication"] + 1e-9
        assert (step["communication"] > 0) == (mesh is not None), step
    # The stored breakdown is the trace's: read again, the same steps.
    again = breakdown(events, framework(name).trace_kind, clock=[s["step"] for s in record["steps"]])
    assert [round(s.arithmetic, 9) for s in again] == [round(s["arithmetic"], 9) for s in record["steps"]]


def test_profile_is_off_by_default_and_on_as_a_bare_flag(tmp_path):
    from mtcore.train import RunConfig

    assert RunConfig().profile == "off"
    from mtcore.cli import build_parser

    args = build_parser().parse_args(["train", "--out", str(tmp_path), "--profile"])
    assert args.profile == "on"
    assert build_parser().parse_args(["train", "--out", str(tmp_path)]).profile == "off"


@pytest.mark.torch
def test_torchs_backward_nodes_are_not_arithmetic_of_their_own():
    """FSDP2's post-backward hook waits for its reduce-scatter inside the autograd node that runs
    it: the wait (no op of its own) is communication where gloo's thread works, not arithmetic."""
    if mtcore.available("torch"):
        pytest.skip(mtcore.available("torch"))
    kind = framework("torch").trace_kind

    def op(name, ts, dur, tid=1, cat="cpu_op"):
        return {**event(name, ts, dur, tid=tid), "cat": cat}

    events = [op(STEP_EVENT, 0, 100, cat="user_annotation"),
              op("autograd::engine::evaluate_function: RegisterPostBackwardFunctionBackward", 0, 100),
              op("RegisterPostBackwardFunctionBackward", 0, 100), op("aten::mm", 10, 20),
              op("gloo:all_reduce", 40, 50, tid=2, cat="user_annotation")]
    (step,) = breakdown(events, kind)
    assert step.arithmetic == pytest.approx(20 * US) and step.exposed == pytest.approx(50 * US)
    assert step.idle == pytest.approx(30 * US)


@pytest.mark.torch
def test_a_gpu_traces_copy_of_the_step_span_is_not_a_second_step():
    """On a GPU torch's profiler copies each span onto the device's track: one step, not two."""
    if mtcore.available("torch"):
        pytest.skip(mtcore.available("torch"))
    events = [{**event(STEP_EVENT, 0, 100), "cat": "user_annotation"},
              {**event(STEP_EVENT, 5, 90, tid=9), "cat": "gpu_user_annotation"},
              {**event("ampere_sgemm", 10, 50, tid=9), "cat": "kernel"}]
    (step,) = breakdown(events, framework("torch").trace_kind)
    assert step.arithmetic == pytest.approx(50 * US)
