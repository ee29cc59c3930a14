"""What a way of splitting the model costs one device, predicted from the parameter shapes and the
mesh alone (no framework, no step run): the bytes of trained parameters and of AdamW's two moments
that one device holds. Each backend's ``held_bytes`` measures the same from its own sharded arrays
(torch: DTensor local shards; JAX: the shards on each device); docs/parallelism.md says what each
counts and where the frameworks' layouts differ from this prediction.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

from mtcore.config import ModelConfig
from mtcore.parallel import TENSOR_PLAN, MeshShape
from mtcore.weights import BUFFERS, param_shapes

FP32 = 4


def split_by_tensor(name: str) -> bool:
    """Whether tensor parallelism splits the canonical parameter ``name`` (``TENSOR_PLAN``: a
    column layer's weight and bias, a row layer's weight)."""
    module, _, leaf = name.rpartition(".")
    split, _ = TENSOR_PLAN.get(module.rpartition(".")[2], (None, None))
    return split == "column" or (split == "row" and leaf == "weight")


@dataclasses.dataclass(frozen=True)
class HeldBytes:
    """Bytes one device holds: trained parameters and the optimizer's moments (AdamW: two per
    parameter, laid out as the parameter). Gradients, while a step runs, take what the parameters
    take."""

    params: int
    optimizer: int

    @property
    def total(self) -> int:
        return self.params + self.optimizer

    def as_dict(self) -> dict[str, int]:
        return {"params": self.params, "optimizer": self.optimizer, "total": self.total}



def costs_record(cfg: ModelConfig, mesh: MeshShape, batch_shape, *, held: HeldBytes, collectives: list[dict],
                 step_memory: tuple[int | None, str]) -> dict:
    """What a device of a mesh costs, measured beside predicted, in the one set of keys the trainer's
    rank files, the bench workers and the mesh bench's extra_info share: the bytes it holds (from
    its shards, ``held``), the collectives a recorded step ran on it (``Backend.recorded_step``)
    and the bytes they sent, for the global batch of ``batch_shape`` (rows, source, target), and the
    framework's account of the step's memory (``Backend.step_memory``)."""
    memory, counted = step_memory
    return {"held_bytes": held.as_dict(), "held_bytes_predicted": predicted_bytes(cfg, mesh).as_dict(),
            "collectives": collectives, "sent_bytes_per_step": sum(c["sent"] for c in collectives),
            "sent_bytes_per_step_predicted": sent_bytes(predicted_traffic(cfg, mesh, *batch_shape)),
            "batch_shape": list(batch_shape), "step_memory_bytes": memory, "step_memory_counts": counted}


def predicted_bytes(cfg: ModelConfig, mesh: MeshShape, value_bytes: int = FP32) -> HeldBytes:
    """``fsdp`` shards every trained parameter (ZeRO-3: the optimizer state with it), ``tensor``
    the layers of ``split_by_tensor``, ``data`` nothing; a split that does not divide is rounded up
    (torch's FSDP2 pads the last shard). Buffers (``final_logits_bias``) are not trained and not
    counted."""
    params = 0
    for name, shape in param_shapes(cfg).items():
        if name in BUFFERS:
            continue
        ways = mesh.fsdp * (mesh.tensor if split_by_tensor(name) else 1)
        params += math.ceil(math.prod(shape) / ways) * value_bytes
    return HeldBytes(params=params, optimizer=2 * params)


@dataclasses.dataclass(frozen=True)
class Collective:
    """One kind of collective a train step runs on one device, over one mesh axis: ``calls`` per
    step, ``payload`` bytes (the whole tensor each call reduces or gathers, summed over calls) and
    ``sent``, the bytes a device sends for them with ring algorithms (all-reduce 2S(N-1)/N,
    all-gather and reduce-scatter S(N-1)/N, for a tensor of S bytes over N devices)."""

    kind: str
    axis: str
    calls: int
    payload: int
    sent: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a framework's train step departs from the textbook's collectives, each departure
    measured and explained in docs/parallelism.md ("What a step really moves"); every framework
    declares its own (``Framework.LAYOUT``), ``predicted_traffic`` applies it. E: the tied
    embedding's bytes; P: the trained parameters' bytes."""

    embedding_gathered_once: bool = False  # FSDP gathers the tied embedding once, not twice: 2P - E
    embedding_reduced_per_use: bool = False  # data parallel reduces its gradient once per use: P + 2E
    fsdp_gradients_all_reduced_on: tuple[str, ...] = ()  # devices on which FSDP all-reduces, not reduce-scatters


def ring_sent(kind: str, payload: float, n: int) -> int:
    """Bytes a device sends for a collective of ``payload`` bytes over ``n`` devices with ring
    algorithms: 2S(N-1)/N for an all-reduce, S(N-1)/N for the others."""
    return round((2 if kind == "all-reduce" else 1) * payload * (n - 1) / n)


def predicted_traffic(cfg: ModelConfig, mesh: MeshShape, global_batch: int, src_len: int, tgt_len: int,
                      value_bytes: int = FP32, *, layout: Layout | None = None, device: str = "cpu") -> list[Collective]:
    """The collectives of one train step on one device, from the textbook:

    - ``data`` (no fsdp): one all-reduce of the gradients, P bytes (of the parameters a device
      holds along ``tensor``): 2P(N-1)/N sent;
    - ``fsdp``: the weights all-gathered for the forward and again for the backward, the gradients
      reduce-scattered: 3P(N-1)/N; with ``data`` too (HSDP), the shards' gradients all-reduced over
      ``data``;
    - ``tensor`` (Megatron): an all-reduce of the activations after each row-parallel layer in the
      forward (two per encoder layer, three per decoder layer) and of the input gradient of each
      column-parallel projection in the backward, each the activations of a batch shard's rows.
      This model keeps q, k and v apart (Marian's layout), so the backward reduces each one's:
      four per encoder layer (q, k, v, fc1), seven per decoder layer (self-attention's q, k, v,
      cross-attention's q and fc1 on target rows; cross-attention's k and v on the encoder's
      output), where a fused q/k/v would reduce one gradient for the three.

    With a framework's ``layout`` (``Layout``), what it runs on ``device`` where it departs from
    the textbook: the tied embedding gathered once under FSDP (2P - E: XLA gathers it again for the
    backward on some batches, up to 2P), its gradient reduced once per use under data parallelism
    (P + 2E), FSDP's gradients all-reduced (P, each device keeping its half; on some batches XLA
    reduces the embedding's per use here too, up to P + 2E). The figures are the lower bounds.

    Not counted: the scalar all-reduces of the loss and token counts (bytes, not megabytes)."""
    layout = layout or Layout()
    out: list[Collective] = []

    def add(kind: str, axis: str, calls: int, payload: float, n: int) -> None:
        if n > 1 and calls:
            out.append(Collective(kind, axis, calls, round(payload), ring_sent(kind, payload, n)))

    held_along_tensor = predicted_bytes(cfg, MeshShape(tensor=mesh.tensor), value_bytes).params
    embedding = cfg.vocab_size * cfg.d_model * value_bytes  # kept whole along tensor
    if mesh.fsdp > 1:
        gathered = 2 * held_along_tensor - (embedding if layout.embedding_gathered_once else 0)
        add("all-gather", "fsdp", 2, gathered, mesh.fsdp)
        if device in layout.fsdp_gradients_all_reduced_on:
            add("all-reduce", "fsdp", 1, held_along_tensor, mesh.fsdp)
        else:
            add("reduce-scatter", "fsdp", 1, held_along_tensor, mesh.fsdp)
        add("all-reduce", "data", 1, held_along_tensor / mesh.fsdp, mesh.data)
    else:
        add("all-reduce", "data", 1, held_along_tensor + (2 * embedding if layout.embedding_reduced_per_use else 0),
            mesh.data)
    rows = global_batch // mesh.batch_shards
    src, tgt = rows * src_len * cfg.d_model * value_bytes, rows * tgt_len * cfg.d_model * value_bytes
    forward = cfg.encoder_layers * 2 * src + cfg.decoder_layers * 3 * tgt
    backward = cfg.encoder_layers * 4 * src + cfg.decoder_layers * (5 * tgt + 2 * src)
    calls = cfg.encoder_layers * 6 + cfg.decoder_layers * 10
    add("all-reduce", "tensor", calls, forward + backward, mesh.tensor)
    return out


def tally(calls) -> list[dict]:
    """Measured collectives, from ``(kind, devices, payload bytes[, operands])`` per call (each
    framework's record of a step), one row per kind and group size as ``recorded_step`` returns
    them: ``calls``, ``operands`` (the tensors they carry: a combined collective carries several,
    and an engine runs each on its own), ``payload`` (the whole tensor each reduces or gathers,
    summed) and ``sent`` (``ring_sent``). Groups of one device move nothing and are left out."""
    found: dict[tuple[str, int], dict] = {}
    for kind, n, payload, *operands in calls:
        if n < 2:
            continue
        row = found.setdefault((kind, n), {"kind": kind, "devices": n, "calls": 0, "operands": 0, "payload": 0,
                                           "sent": 0})
        row["calls"] += 1
        row["operands"] += operands[0] if operands else 1
        row["payload"] += payload
        row["sent"] += ring_sent(kind, payload, n)
    return sorted(found.values(), key=lambda r: (r["kind"], r["devices"]))


def sent_bytes(collectives: list[Collective]) -> int:
    return sum(c.sent for c in collectives)


def step_flops_per_device(cfg: ModelConfig, mesh: MeshShape, global_batch: int, src_len: int, tgt_len: int) -> float:
    """A train step's matmul FLOPs on one device (forward + backward, ``metrics.forward_flops``):
    the layers split over every device, the tied output projection (kept whole along ``tensor``)
    over the batch shards only."""
    from mtcore.metrics import forward_flops

    output = global_batch * 2 * tgt_len * cfg.d_model * cfg.vocab_size
    layers = forward_flops(cfg, global_batch, src_len, tgt_len) - output
    return 3 * (layers / mesh.devices + output / mesh.batch_shards)


def flop_share_seconds(cfg: ModelConfig, seconds: float, measured: tuple[MeshShape, int], to: tuple[MeshShape, int],
                       src_len: int, tgt_len: int) -> float:
    """``seconds`` measured for a step of ``measured`` = (mesh, global rows), carried to ``to`` by
    the FLOPs one device computes in each (``step_flops_per_device``): how a measured step's
    arithmetic becomes another mesh's or batch's (``plan``'s ``compute_s``, the sweep, the report)."""
    return seconds * step_flops_per_device(cfg, *to, src_len, tgt_len) / step_flops_per_device(
        cfg, *measured, src_len, tgt_len)


def link_rates(bandwidth: float | dict[str, float] | None, what: str = "--bandwidth", *,
               positive: bool = True) -> dict[str, float] | None:
    """``{axis: value}`` for every mesh axis from one value for all, or a dict with ``""`` for the
    axes it does not name (links differ: a node's NVLink for ``tensor`` and ``fsdp``, the network
    between nodes for ``data``): bytes/s for ``--bandwidth``, seconds for ``--latency`` (which may
    be 0: ``positive`` False)."""
    from mtcore.errors import MTCoreError
    from mtcore.parallel import MESH_AXES

    if bandwidth is None:
        return None
    rates = dict(bandwidth) if isinstance(bandwidth, dict) else {"": bandwidth}
    for axis, value in rates.items():
        if axis and axis not in MESH_AXES:
            raise MTCoreError(f"{what} {axis}=...: unknown axis {axis!r}; choose {', '.join(MESH_AXES)}")
        if positive and not value > 0:
            raise MTCoreError(f"{what} must be positive, got {value / 1e9:g}")
        if not positive and not value >= 0:
            raise MTCoreError(f"{what} must not be negative, got {value * 1e6:g}")
    missing = [a for a in MESH_AXES if a not in rates]
    if missing and "" not in rates:
        raise MTCoreError(f"{what}: no {'rate' if positive else 'value'} for {', '.join(missing)} (give one number for "
                          "every other axis)")
    return {a: rates.get(a, rates.get("")) for a in MESH_AXES}


def message_steps(kind: str, n: int) -> int:
    """The messages one device waits for, one after another, in a ring collective over ``n``
    devices: 2(N-1) for an all-reduce (its reduce-scatter, then its all-gather), N-1 otherwise.
    The planner's latency term charges each of them once per call."""
    return (2 if kind == "all-reduce" else 1) * (n - 1) if n > 1 else 0


def plan(cfg: ModelConfig, meshes: list[MeshShape], global_batch: int, src_len: int, tgt_len: int, *,
         value_bytes: int = FP32, bandwidth: float | dict[str, float] | None = None,
         flops: float | None = None, latency: float | dict[str, float] | None = None,
         compute_s: float | None = None, engine: str | None = None, layout: Layout | None = None,
         device: str = "cpu") -> list[dict]:
    """One row per mesh of what it would cost per device and step: held bytes, collectives, bytes
    sent, FLOPs; with ``bandwidth`` (bytes/s a device sends: one rate, or per axis as
    ``link_rates`` takes it) the seconds the collectives take, plus, with ``latency`` (seconds a
    message waits on the link: one figure, or per axis), that latency for every message a ring
    waits for (``message_steps``) in every call; with ``flops`` (FLOP/s a device computes) the
    seconds of arithmetic, or ``compute_s``, one device's measured seconds of a step's arithmetic on
    one device, carried to each mesh by its share of the FLOPs. With ``engine`` (``gloo``,
    ``xla-gloo``: ``engine_sent``) the bytes over the links are what that engine puts on a wire
    between hosts, one process each (its algorithms, its preambles, TCP/IP framing: ``wire``),
    not the textbook ring's; with a framework's ``layout`` the collectives it runs on ``device``
    (``predicted_traffic``). No overlap assumed. Refuses what
    cannot run: a mesh that does not divide the model or the batch, a non-positive rate, a
    negative latency."""
    from mtcore.errors import MTCoreError

    rates = link_rates(bandwidth)
    if flops is not None and not flops > 0:
        raise MTCoreError(f"--flops must be positive, got {flops / 1e12:g}")
    if compute_s is not None and not compute_s > 0:
        raise MTCoreError(f"--compute-ms must be positive, got {compute_s * 1e3:g}")
    waits = link_rates(latency, "--latency", positive=False)
    for name, value in (("--global-batch-size", global_batch), ("--src-len", src_len), ("--tgt-len", tgt_len)):
        if value < 1:
            raise MTCoreError(f"{name} must be at least 1, got {value}")
    rows = []
    for mesh in meshes:
        mesh.check_model(cfg)
        mesh.check_batch(global_batch)
        collectives = predicted_traffic(cfg, mesh, global_batch, src_len, tgt_len, value_bytes, layout=layout,
                                        device=device)
        row = {"mesh": str(mesh), "devices": mesh.devices, "held": predicted_bytes(cfg, mesh, value_bytes).as_dict(),
               "collectives": [c.as_dict() for c in collectives], "sent": sent_bytes(collectives),
               "flops": step_flops_per_device(cfg, mesh, global_batch, src_len, tgt_len),
               "tokens_per_device": global_batch * (src_len + tgt_len) // mesh.batch_shards}
        if engine is not None:
            row["wire"] = sum(framed_bytes(engine, c.kind, c.payload / c.calls, mesh.sizes[c.axis]) * c.calls
                              for c in collectives)
        if rates:
            row["communication_s"] = sum(
                (framed_bytes(engine, c.kind, c.payload / c.calls, mesh.sizes[c.axis]) * c.calls if engine else c.sent)
                / rates[c.axis] for c in collectives)
        if waits is not None:
            row["latency_s"] = sum(c.calls * message_steps(c.kind, mesh.sizes[c.axis]) * waits[c.axis]
                                   for c in collectives)
            row["communication_s"] = row.get("communication_s", 0.0) + row["latency_s"]
        if compute_s is not None:
            row["arithmetic_s"] = flop_share_seconds(cfg, compute_s, (MeshShape(), global_batch), (mesh, global_batch),
                                                     src_len, tgt_len)
        elif flops:
            row["arithmetic_s"] = row["flops"] / flops
        rows.append(row)
    return rows


def compute_seconds(run_dir: str | os.PathLike) -> float:
    """A one-device run's measured seconds per step (its last epoch's training time over its
    steps; ``mtcore train`` or a compare run's directory), for ``plan``'s ``compute_s``."""
    from mtcore.errors import MTCoreError
    from mtcore.files import read_json

    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise MTCoreError(f"--compute-from {run_dir}: no metrics.json there (a run directory of mtcore train)")
    metrics = read_json(path)
    run, epochs = metrics.get("run") or {}, metrics.get("epochs") or []
    if run.get("devices") != 1 or not epochs or not epochs[-1].get("steps"):
        raise MTCoreError(f"--compute-from {run_dir}: needs a finished epoch of a one-device run (this one trained on "
                          f"{run.get('devices')} device(s), {len(epochs)} epoch(s))")
    return epochs[-1]["training_time"] / epochs[-1]["steps"]


def format_plan(rows: list[dict], *, bandwidth: float | dict[str, float] | None = None,
                flops: float | None = None, latency: float | dict[str, float] | None = None,
                compute_s: float | None = None) -> str:
    """``plan``'s rows as a markdown table."""
    def mb(n: float) -> str:
        return f"{n / 1e6:,.1f} MB"

    def per_axis(value, scale: float, unit: str) -> str:
        values = value if isinstance(value, dict) else {"": value}
        return ", ".join(f"{a + ' ' if a else ''}{v / scale:g}" for a, v in values.items()) + f" {unit}"

    timed = any("communication_s" in r for r in rows)
    computed = any("arithmetic_s" in r for r in rows)
    head = ["mesh", "devices", "tokens a device trains on (source + target)", "held per device (params + AdamW)",
            "sent per step per device", "collectives", "FLOPs per device"]
    if timed:
        head.append("communication at " + " + ".join(
            ([per_axis(bandwidth, 1e9, "GB/s")] if bandwidth else []) +
            ([per_axis(latency, 1e-6, "µs a message")] if latency is not None else [])))
    if computed:
        head.append(f"arithmetic at {flops / 1e12:g} TFLOP/s" if compute_s is None else
                    f"arithmetic ({compute_s * 1e3:g} ms a step on one device, by FLOP share)")
    wired = any("wire" in r for r in rows)
    if wired:
        head.append("on a wire between hosts, per step per device")
    if timed and computed:
        head.append("longer, unless overlapped")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        kinds = ", ".join(f"{c['calls']} {c['kind']} ({c['axis']}, {mb(c['sent'])})" for c in r["collectives"]) or "none"
        cells = [r["mesh"], str(r["devices"]), f"{r['tokens_per_device']:,}",
                 f"{mb(r['held']['total'])} ({mb(r['held']['params'])} + {mb(r['held']['optimizer'])})", mb(r["sent"]),
                 kinds, f"{r['flops']:.3g}"]
        if timed:
            cells.append(f"{r['communication_s'] * 1e3:,.2f} ms" + (
                f" ({r['latency_s'] * 1e3:,.2f} ms of it latency)" if "latency_s" in r else ""))
        if computed:
            cells.append(f"{r['arithmetic_s'] * 1e3:,.2f} ms")
        if wired:
            cells.append(mb(r["wire"]))
        if timed and computed:
            cells.append("communication" if r["communication_s"] > r["arithmetic_s"] else "arithmetic")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- what crosses a wire ------------------------------------------------------------------------------
# A frame as an interface's byte counters see it: Ethernet 14 + IPv4 20 + TCP 20 + TCP's timestamps
# option 12 around at most one MSS of payload (a 1500-byte MTU less the IPv4 and TCP headers).
FRAME_HEADERS = 66
MSS = 1448
# Pure ACK frames per segment received. In a collective both ends send as much as they receive, so
# Linux's ACKs ride on the data going the other way: the interfaces count about one frame per
# segment sent (docs/findings/2026-12-04-wire-bytes.md).
ACKS_PER_SEGMENT = 0.0


# gloo's TCP transport (gloo/transport/tcp/pair.h): every message carries a 48-byte preamble; a
# piece sent is announced (send-ready, 48) then sent (48 + payload), and its receiver answers
# recv-ready (48): a piece costs its sender 96 bytes and its receiver 48, three messages in all.
GLOO_PREAMBLE = 48
GLOO_SEGMENT = 1 << 20  # gloo's ring all-reduce cuts the tensor into pieces of at most 1 MiB (allreduce.cc)
MODELLED_ENGINES = ("gloo", "xla-gloo")  # torch's ProcessGroupGloo; XLA's CPU GlooCommunicator


def _ring_pieces(payload: float, n: int) -> int:
    """Pieces gloo's ring all-reduce cuts ``payload`` bytes into over ``n`` processes:
    ``roundUp(max(ceil(S / 1 MiB), 2N), N)`` (gloo/allreduce.cc)."""
    k = max(math.ceil(payload / GLOO_SEGMENT), 2 * n)
    return math.ceil(k / n) * n


def engine_sent(engine: str, kind: str, payload: float, n: int) -> tuple[float, float] | None:
    """``(bytes, messages)`` one process sends for one collective of ``payload`` bytes (the whole
    tensor reduced or gathered) over ``n`` processes as ``engine`` runs it, gloo's preambles
    included (docs/hosts.md names the sources); None for an engine or kind not modelled.

    - all-reduce (torch's ProcessGroupGloo and XLA's GlooCommunicator alike): gloo's ring, K pieces
      (``_ring_pieces``), 2K(N-1)/N of them sent and as many received: 2S(N-1)/N bytes;
    - reduce-scatter: torch's gloo runs an all-reduce of the whole tensor and keeps its shard (as
      an all-reduce); XLA's runs gloo's halving-doubling reduce-scatter: S(N-1)/N;
    - all-gather: gloo's ring, each process's part sent in two pieces per step: S(N-1)/N."""
    if engine not in MODELLED_ENGINES:
        return None
    ring = (n - 1) / n
    if kind == "all-reduce" or (kind == "reduce-scatter" and engine == "gloo"):
        pieces = 2 * _ring_pieces(payload, n) * ring
        data = 2 * ring * payload
    elif kind in ("reduce-scatter", "all-gather", "all-to-all"):
        pieces = 2 * (n - 1) if kind == "all-gather" else (n - 1)
        data = ring * payload
    else:
        return None
    # Each piece: send-ready and the piece from its sender, recv-ready from its receiver (each
    # process both sends and receives as many).
    return data + pieces * 3 * GLOO_PREAMBLE, pieces * 3


def wire_prediction(collectives: list[dict], engine: str, processes_per_host: int | None) -> dict | None:
    """What one host's interface carries for a step's ``collectives`` (``tally``'s rows) when every
    host runs one process, so every collective crosses the wire: what ``engine`` sends
    (``engine_sent``, per call), cut into segments of at most ``MSS`` with ``FRAME_HEADERS`` each
    (every message ends a segment of its own), plus ``ACKS_PER_SEGMENT``
    pure ACKs per segment it receives (as many as it sends: the algorithms are symmetric). None where a
    host runs several processes (some of their collectives stay on the host) or the engine or a
    collective is not modelled."""
    if processes_per_host != 1:
        return None
    sent = messages = 0.0
    for c in collectives:
        tensors = c.get("operands") or c["calls"]  # the engine's calls: one per tensor
        one = engine_sent(engine, c["kind"], c["payload"] / tensors, c["devices"])
        if one is None:
            return None
        sent += one[0] * tensors
        messages += one[1] * tensors
    segments = sent / MSS + messages
    wire = _framed(sent, messages)
    return {"engine": engine, "sent_bytes": sent, "tx_bytes": wire, "rx_bytes": wire, "segments": segments}


def _framed(sent: float, messages: float) -> float:
    """The bytes a wire carries for ``sent`` bytes in ``messages`` messages: cut into segments of at
    most ``MSS``, every message ending one, each with ``FRAME_HEADERS`` (and ``ACKS_PER_SEGMENT``)."""
    return sent + (sent / MSS + messages) * (1 + ACKS_PER_SEGMENT) * FRAME_HEADERS


def framed_bytes(engine: str, kind: str, payload: float, n: int) -> float:
    """The bytes one process's link carries each way for one collective of ``payload`` bytes over
    ``n`` processes on as many hosts, as ``engine`` runs it (``engine_sent``), framing included;
    for a kind the engine's model lacks, the textbook ring's bytes (``ring_sent``), framed as one
    message a step. An engine not in ``MODELLED_ENGINES`` (NCCL, say) is refused."""
    from mtcore.errors import MTCoreError

    if engine not in MODELLED_ENGINES:
        raise MTCoreError(f"--engine {engine!r}: the wire is modelled for {' and '.join(MODELLED_ENGINES)}")
    one = engine_sent(engine, kind, payload, n)
    if one is None:
        return _framed(ring_sent(kind, payload, n), message_steps(kind, n))
    return _framed(*one)
