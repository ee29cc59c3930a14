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
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from inputs import batch, check_first_loss, median_seconds, thread_budget, timed

HERE = Path(__file__).parent
# tokens/s of each (framework, device, size) at one device, this session: the efficiency's base.
_ONE_DEVICE: dict[tuple, float] = {}


class Workers:
    """The processes of one case, on loopback; killed with their process group whatever happens."""

    def __init__(self, case, per_device_threads: int, timeout: float = 600):
        self.case, self.timeout = case, timeout
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(timeout)
        port = self.server.getsockname()[1]
        script = [str(HERE / "scaling_worker.py"), case.framework, case.device, str(case.devices), case.size,
                  case.precision, str(per_device_threads), str(port)]
        # torchrun's logs, removed on exit (without --log-dir it leaves a torchelastic_* folder behind).
        self.logs = tempfile.mkdtemp(prefix="mtcore-scaling-")
        if case.framework == "torch" and case.devices > 1:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--log-dir", self.logs,
                       "--nproc-per-node", str(case.devices), *script]
            self.processes = case.devices
        else:
            command = [sys.executable, *script]
            self.processes = 1
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                     start_new_session=True)
        self.streams, self.ready = [], []

    def __enter__(self):
        try:
            for _ in range(self.processes):
                conn, _ = self.server.accept()
                conn.settimeout(self.timeout)
                stream = conn.makefile("rw")
                self.streams.append(stream)
                self.ready.append(json.loads(stream.readline()))
        except (OSError, ValueError) as e:
            self.__exit__()
            pytest.fail(f"{self.case.id}: the worker processes did not start ({e}):\n{self.output()[-3000:]}")
        return self

    def step(self) -> None:
        for stream in self.streams:
            stream.write("step\n")
            stream.flush()
        for stream in self.streams:
            assert stream.readline().strip() == "ok", f"{self.case.id}: a worker stopped"

    def output(self) -> str:
        try:
            return self.proc.communicate(timeout=5)[0] or ""
        except subprocess.TimeoutExpired:
            return ""

    def __exit__(self, *exc) -> None:
        for stream in self.streams:
            try:
                stream.write("quit\n")
                stream.flush()
            except OSError:
                pass
        deadline = time.monotonic() + 10
        while self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.server.close()
        shutil.rmtree(self.logs, ignore_errors=True)


@pytest.mark.cases("scaling")
def test_train_step_scaling(benchmark, case, rounds):
    budget = thread_budget()
    per_device = budget.threads if budget.pinned else 1
    benchmark.group = f"train_step scaling {case.device}-{case.size}-{case.precision} {per_device}thr/device"
    with Workers(case, per_device) as workers:
        for ready in workers.ready:
            check_first_loss(case, ready["first_loss"])  # the tiled batch's loss is the one-batch loss
        timed(benchmark, workers.step, rounds)
    b = batch(case.size)
    tokens = int(b.src_mask.sum() + b.tgt_mask.sum()) * case.devices
    benchmark.extra_info.update(case=case.id, world_size=case.devices, processes=workers.processes,
                                compile_s=workers.ready[0]["compile_s"], threads_per_device=per_device,
                                global_batch_rows=b.shape[0] * case.devices, tokens_per_step=tokens)
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
        # The all-reduce's share of the step is not separated here: XLA fuses it into the step
        # program, and DDP overlaps it with the backward pass.
        all_reduce_share=None,
    )
