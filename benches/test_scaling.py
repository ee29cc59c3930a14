"""One device against many: the train step data parallel over N devices, weak scaling (each
device holds the bench's batch, so the global batch grows with N), in worker processes — torch as N
gloo/NCCL ranks under torchrun, JAX as one process over N devices — so the bench process's own
thread budget and framework state cannot leak into them.

A round sends ``step`` to every process and waits for every ``ok``: the timed region is a synced
step on all devices plus a loopback message (tens of microseconds). ``extra_info`` holds the world
size, global and per-device tokens/s, and the efficiency against this session's one-device case
of the same framework (tokens/s at N / (N x tokens/s at 1)). On a CPU, one device is one core; a
CPU's scaling says how well a framework's all-reduce and processes share one machine, nothing
about GPUs. Nothing is gated on it.

``test_train_step_mesh`` runs the same workers on a device mesh (``data:2``, ``fsdp:2``,
``tensor:2``, ``fsdp:2,tensor:2``) and records what each strategy costs a device in memory and
bytes moved, measured and predicted (docs/parallelism.md).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import pytest
from inputs import batch, check_first_loss, median_seconds, session, thread_budget, timed

from mtcore.backend import framework

HERE = Path(__file__).parent
# tokens/s of each (framework, device, size) at one device, this session: the efficiency's base.
_ONE_DEVICE: dict[tuple, float] = {}


class Workers:
    """The processes of one case, on this host or spread over emulated hosts (``case.hosts``),
    talking to the bench over a Unix socket (a path, which a process in another network namespace
    reaches too); killed with their process groups, and the hosts removed, whatever happens."""

    def __init__(self, case, per_device_threads: int, timeout: float = 600, rate: str | None = None,
                 offload: bool = False):
        self.case, self.timeout, self.offload = case, timeout, offload
        self.rate = session.rate if rate is None else rate  # the hosts' links (--rate)
        # torchrun's logs and the socket, removed on exit (without --log-dir it leaves a torchelastic_* folder behind).
        self.logs = tempfile.mkdtemp(prefix="mtcore-scaling-")
        address = os.path.join(self.logs, "bench.sock")
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(address)
        self.server.listen()
        script = [str(HERE / "scaling_worker.py"), case.framework, case.device, str(case.devices), case.size,
                  case.precision, str(per_device_threads), address, *([case.mesh] if case.mesh else [])]
        fw = framework(case.framework)
        self.processes = case.devices if fw.PROCESS_PER_DEVICE else (case.hosts or 1)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
        env["MTCORE_WORKER_PLUGINS"] = ",".join(session.plugins)  # a plugin that changes the step, there too
        self.hosts, self.procs = None, []
        try:
            if case.hosts:
                self._start_on_hosts(fw, script, env)
            else:
                # Started by the framework's own launcher (torch: a rank per device under its elastic agent).
                self.procs.append(subprocess.Popen(fw.rank_command(case.devices, script, log_dir=self.logs),
                                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                                   start_new_session=True))
        except BaseException:
            self.__exit__()
            raise
        self.streams, self.ready = [], []

    def _start_on_hosts(self, fw, script: list[str], env: dict) -> None:
        """Each host runs the framework's multi-node line (torchrun's rendezvous, jax.distributed's
        coordinator on host 0), pinned to its own share of the cores, as ``mtcore train --hosts``."""
        from mtcore.hosts import EmulatedHosts

        self.hosts = EmulatedHosts(self.case.hosts, self.rate, offload=self.offload).__enter__()
        self.procs += [proc for _, proc in self.hosts.start_nodes(
            fw, self.case.devices, script, log_dir=self.logs, run_id=f"bench-{os.getpid()}", env=env,
            output=lambda h: subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]

    def _accept(self) -> socket.socket:
        """The next worker's connection; a worker that died before connecting fails the case at
        once, not after the timeout."""
        deadline = time.monotonic() + self.timeout
        self.server.settimeout(1)
        while True:
            try:
                return self.server.accept()[0]
            except TimeoutError:
                if any(p.poll() is not None for p in self.procs) or time.monotonic() > deadline:
                    raise OSError(f"no worker connected (exit status {[p.poll() for p in self.procs]})") from None

    def __enter__(self):
        try:
            for _ in range(self.processes):
                conn = self._accept()
                conn.settimeout(self.timeout)
                stream = conn.makefile("rw")
                self.streams.append(stream)
                self.ready.append(json.loads(stream.readline()))
        except (OSError, ValueError) as e:
            self.__exit__()
            pytest.fail(f"{self.case.id}: the worker processes did not start ({e}):\n{self.output()[-3000:]}")
        return self

    def step(self, what: str = "step") -> list[str]:
        """One synced train step on every process (``comm``: the step's all-reduce alone;
        ``latency``: all-reduces of one float, each process answering its median call); every
        process's answer after ``ok``."""
        for stream in self.streams:
            stream.write(f"{what}\n")
            stream.flush()
        answers = []
        for stream in self.streams:
            ok, _, answer = stream.readline().strip().partition(" ")
            assert ok == "ok", f"{self.case.id}: a worker stopped"
            answers.append(answer)
        return answers

    def profile(self, benchmark) -> None:
        """--profile: after the timed rounds, a few more steps traced on every process (one trace
        each, in the --profile folder) and where each process's median step went, in ``extra_info``."""
        if session.profile is None or median_seconds(benchmark) is None:
            return
        answers = [json.loads(a) for a in self.step(f"profile {session.profile} {self.case.id}")]
        benchmark.extra_info.update(traces=[a["trace"] for a in answers],
                                    breakdown=[{k: v for k, v in a.items() if k != "trace"} for a in answers])

    def all_reduce_seconds(self, calls: int) -> float:
        """Median seconds of the step's all-reduce alone (one call of all its bytes), after one
        call that warms it up."""
        from mtcore.perf.timing import call_seconds

        times = sorted(call_seconds(lambda: self.step("comm"), calls, warmup=1))
        return times[len(times) // 2]

    def wire(self, steps: int = 3) -> dict | None:
        """On emulated hosts: what each host's interface carried per step over ``steps`` synced
        steps, less the background measured over an idle window first, beside what mtcore predicts
        the engine sends (``costs.wire_prediction``); None on this host."""
        if self.hosts is None:
            return None
        from mtcore.costs import wire_prediction
        from mtcore.hosts import IDLE_WINDOW_S, per_second, per_step

        def counters():
            return time.perf_counter(), [h.counters() for h in self.hosts.hosts]

        self.step()  # every worker past its set-up (JAX compiles its probe after saying it is ready)
        t0, idle0 = counters()
        time.sleep(IDLE_WINDOW_S)
        t1, idle1 = counters()
        for _ in range(steps):
            self.step()
        t2, end = counters()
        fw = framework(self.case.framework)
        predicted = wire_prediction(self.ready[0]["costs"]["collectives"], fw.collective_engine(self.case.device),
                                    processes_per_host=self.processes // self.case.hosts)
        per_host = []
        for h, a, b, c in zip(self.hosts.hosts, idle0, idle1, end, strict=True):
            idle = per_second(a, b, t1 - t0)
            per_host.append({"host": h.hostname, **per_step(b, c, t2 - t1, steps, idle),
                             "tx_packets_per_step": (c["tx_packets"] - b["tx_packets"]) / steps,
                             "idle_tx_bytes_per_s": idle["tx_bytes_per_s"]})
        return {"hosts": per_host, "rate": self.rate or "unshaped", "predicted_per_step": predicted}

    def output(self) -> str:
        out = []
        for p in self.procs:
            try:
                out.append(p.communicate(timeout=5)[0] or "")
            except (subprocess.TimeoutExpired, ValueError):
                pass
        return "\n".join(out)

    def __exit__(self, *exc) -> None:
        for stream in getattr(self, "streams", []):
            try:
                stream.write("quit\n")
                stream.flush()
            except OSError:
                pass
        deadline = time.monotonic() + 10
        while any(p.poll() is None for p in self.procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        if self.hosts is not None:
            self.hosts.close()
        self.server.close()
        shutil.rmtree(self.logs, ignore_errors=True)


def check_wire(workers: Workers) -> dict | None:
    """Before timing, on emulated hosts: the bytes each host's interface carried per step, within
    10% of what mtcore predicts the engine sends, framing included (docs/hosts.md)."""
    wire = workers.wire()
    predicted = wire and wire["predicted_per_step"]
    if wire and not predicted:  # several processes on a host: some collectives stay on it
        warnings.warn(f"{workers.case.id}: no wire prediction with {workers.processes // workers.case.hosts} processes "
                      "per host; the wire is recorded, not checked", stacklevel=2)
    if predicted:
        for host in wire["hosts"]:
            for d in ("tx", "rx"):
                got = host[f"{d}_bytes_per_step"]
                assert abs(got / predicted[f"{d}_bytes"] - 1) < 0.10, (workers.case.id, host, predicted)
    return wire


def keep_costs(case, workers: Workers) -> dict:
    """What the case's step moved and a device held, the most loaded device's (the one that sends
    most; the one that holds most, where a split is uneven), kept for the run's JSON as the gate
    judges it (``records.gated_costs``, keyed by the engine and its version); returned whole."""
    from mtcore.perf.records import gated_costs

    records = [r["costs"] for r in workers.ready]
    costs = {**max(records, key=lambda c: c["sent_bytes_per_step"]),
             "held_bytes": max((c["held_bytes"] for c in records), key=lambda h: h["total"])}
    fw = framework(case.framework)
    session.costs[case.id] = gated_costs(case.framework, case.mesh or f"data:{case.devices}",
                                         fw.collective_engine(case.device), fw.engine_version(case.device), costs)
    return costs


def transport(case, workers: Workers) -> str:
    """How the case's devices talked (as ``report.md`` says it)."""
    from mtcore.hosts import parse_rate
    from mtcore.hosts import transport as said

    return said(case.devices, workers.processes, case.hosts, parse_rate(workers.rate))


def sent_per_step(workers: Workers) -> int:
    """Bytes a device sent in a step, the most loaded one's (every device of a mesh sends alike)."""
    return max(r["costs"]["sent_bytes_per_step"] for r in workers.ready)


@pytest.mark.cases("scaling")
def test_train_step_scaling(benchmark, case, rounds):
    budget = thread_budget()
    per_device = budget.threads if budget.pinned else 1
    benchmark.group = f"train_step scaling {case.device}-{case.size}-{case.precision} {per_device}thr/device"
    with Workers(case, per_device) as workers:
        for ready in workers.ready:
            check_first_loss(case, ready["first_loss"])  # the tiled batch's loss is the one-batch loss
        wire = check_wire(workers)
        timed(benchmark, workers.step, rounds)
        workers.profile(benchmark)
        timing = median_seconds(benchmark) is not None
        all_reduce_s = workers.all_reduce_seconds(min(rounds or 10, 20)) if case.devices > 1 and timing else None
    b = batch(case.size)
    tokens = int(b.src_mask.sum() + b.tgt_mask.sum()) * case.devices
    benchmark.extra_info.update(case=case.id, world_size=case.devices, processes=workers.processes,
                                compile_s=workers.ready[0]["compile_s"], threads_per_device=per_device,
                                global_batch_rows=b.shape[0] * case.devices, tokens_per_step=tokens,
                                transport=transport(case, workers), wire=wire)
    if case.devices > 1:  # what data parallelism moves: the same fields as the mesh bench's
        keep_costs(case, workers)
        benchmark.extra_info.update(collectives=workers.ready[0]["costs"]["collectives"],
                                    sent_bytes_per_step=sent_per_step(workers))
    median = median_seconds(benchmark)
    if median is None:  # --benchmark-disable: a smoke run, nothing timed
        return
    key = (case.framework, case.device, case.size, case.precision)
    if case.devices == 1:
        _ONE_DEVICE[key] = tokens / median
    base = _ONE_DEVICE.get(key)
    benchmark.extra_info.update(
        tokens_per_s=tokens / median,
        tokens_per_s_per_device=tokens / median / case.devices,
        efficiency=None if base is None else tokens / median / (case.devices * base),
        # In the step the all-reduce is bucketed (DDP) or split by layer (XLA) and overlapped with
        # the backward pass, so its share cannot be cut out of the step's time: the same bytes
        # all-reduced alone, over the step's time, bound it from above.
        all_reduce_alone_s=all_reduce_s,
        all_reduce_share=0.0 if case.devices == 1 else all_reduce_s / median,
        bandwidth_needed_bytes_per_s=benchmark.extra_info["sent_bytes_per_step"] / median if case.devices > 1 else None,
    )


@pytest.mark.cases("mesh")
def test_train_step_mesh(benchmark, case, rounds):
    """The train step on a device mesh, the same global batch (the bench's, once per device) on
    every mesh of as many devices: what one device holds (measured from its shards, and
    predicted from the shapes and the mesh), the collectives a step runs and the bytes a device
    sends for them (measured: JAX's compiled HLO, torch's dispatcher; and predicted), and the
    bandwidth those bytes needed at the measured step time. Tokens/s per device divide the
    global tokens by every device, so tensor-parallel ranks, which see the same rows, are not
    counted twice. CPU timings of strategies on shared cores say little about GPUs: reported,
    never gated."""
    budget = thread_budget()
    per_device = budget.threads if budget.pinned else 1
    benchmark.group = f"train_step mesh {case.device}-{case.size}-{case.precision} {case.devices}dev {per_device}thr/device"
    b = batch(case.size)
    tokens = int(b.src_mask.sum() + b.tgt_mask.sum()) * case.devices
    with Workers(case, per_device) as workers:
        # Correct before timed: every mesh takes the one-device step's loss, and a device holds
        # what the mesh predicts (the most loaded one, where a split is uneven).
        for ready in workers.ready:
            check_first_loss(case, ready["first_loss"])
        costs = keep_costs(case, workers)
        held, predicted = costs["held_bytes"], costs["held_bytes_predicted"]
        assert abs(held["total"] / predicted["total"] - 1) < 0.05, (held, predicted)
        wire = check_wire(workers)
        timed(benchmark, workers.step, rounds)
        workers.profile(benchmark)
    sent = costs["sent_bytes_per_step"]
    benchmark.extra_info.update(
        case=case.id, mesh=case.mesh, world_size=case.devices, processes=workers.processes,
        compile_s=workers.ready[0]["compile_s"], threads_per_device=per_device, global_batch_rows=costs["batch_shape"][0],
        tokens_per_step=tokens, transport=transport(case, workers), wire=wire,
        **{k: v for k, v in costs.items() if k != "batch_shape"})
    median = median_seconds(benchmark)
    if median is None:  # --benchmark-disable: a smoke run, nothing timed
        return
    benchmark.extra_info.update(tokens_per_s=tokens / median, tokens_per_s_per_device=tokens / median / case.devices,
                                # Bytes a device sent per second of step: what its links had to carry.
                                bandwidth_needed_bytes_per_s=sent / median)
