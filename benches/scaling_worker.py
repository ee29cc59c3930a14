"""One process of ``test_train_step_scaling``: a train step of FRAMEWORK on DEVICES devices (weak
scaling: each device holds the bench's batch of SIZE), stepped on command from the bench.

Started as its own process (torch ranks by torchrun), so neither the bench process's thread
budget nor its framework state leaks into it. It connects to the bench's Unix socket SOCKET, compiles
and takes the first step, reports ``{"first_loss", "compile_s"}``, then for every ``step`` line runs
one synced step and answers ``ok`` (every rank answers; the bench waits for all); for every ``comm``
line, one all-reduce of the bytes the step all-reduces, alone, and ``ok``; for every ``latency``
line, ``LATENCY_CALLS`` all-reduces of one float after a few to warm up, and ``ok SECONDS``, the
median call (the link sweep's latency per message, as scripts/link_latency.py measures it); for a
``profile DIR NAME`` line, a few steps under the framework's profiler, the trace written to
``DIR/NAME-FRAMEWORK-rankR.trace.json.gz``, and ``ok JSON``: where the median step's time went.

    python benches/scaling_worker.py FRAMEWORK DEVICE DEVICES SIZE PRECISION THREADS SOCKET [MESH]
        [--coordinator HOST:PORT --num-processes N --process-id I]

With MESH (``test_train_step_mesh``) the devices form that mesh, and the first message also
says what one device holds and what a step moves (``mtcore.costs.costs_record``). The last three
options join a JAX process to the others on emulated hosts (``node_command``), as ``mtcore train``'s.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import sys

import numpy as np

LATENCY_CALLS = 200


def main(framework: str, device: str, devices: int, size: str, precision: str, threads_per_device: int,
         address: str, mesh: str | None = None, coordinator: str | None = None, num_processes: int = 1,
         process_id: int = 0) -> None:
    from mtcore.backend import framework as fw
    from mtcore.costs import costs_record
    from mtcore.perf.setup import set_up
    from mtcore.perf.timing import call_seconds

    local = int(os.environ.get("LOCAL_RANK", 0))
    # The one process set-up, as the bench process and mtcore train have it; a torch rank per
    # device, each its share of the cores; one JAX process drives all its host devices. JAX
    # dispatches multi-device programs asynchronously whatever the flag says: left as it comes.
    ranks = fw(framework).PROCESS_PER_DEVICE
    per_process = threads_per_device if ranks else threads_per_device * devices // num_processes
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", devices))
    set_up((framework,), threads=per_process if device == "cpu" else None,
           slot=local if ranks else 0, slots=local_ranks if ranks else 1, synchronous_cpu=False)
    if coordinator:
        fw(framework).initialize_distributed(coordinator, num_processes, process_id,
                                             cpu_devices=devices // num_processes if device == "cpu" else None)

    from inputs import PROFILED_STEPS, batch, weights

    import mtcore

    # The bench session's -p plugins that change a worker's step too (tests/perf/extra_collective.py):
    # those that define ``mtcore_worker_configure(framework)``; any other plugin is the session's own.
    for name in filter(None, os.environ.get("MTCORE_WORKER_PLUGINS", "").split(",")):
        try:
            plugin = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(plugin, "mtcore_worker_configure"):
            plugin.mtcore_worker_configure(framework)

    be = mtcore.backend(framework, device, devices=devices, mesh=mesh)
    cfg, tcfg = mtcore.ModelConfig.preset(size), mtcore.TrainConfig(precision=precision)
    one = batch(size)
    # (N x B, S, T): every device gets the bench's batch, so the global loss is the one-device loss.
    tiled = mtcore.Batch(*(np.tile(a, (devices, 1)) for a in one.arrays().values()))
    data = be.device_batch(tiled, cfg)
    state = be.init_train_state(be.from_numpy(cfg, weights(size)), tcfg)
    step, compile_s, state, metrics = be.compile_train_step(cfg, tcfg, state, data, compile=False, fresh=False)
    first_loss = float(be.sync(metrics["loss"]))
    costs = None
    if mesh is not None or devices > 1:
        # What one device holds and what a step moves, past DDP's bucket rebuild on the second step.
        state, metrics = step(state, data)
        state, metrics, collectives = be.recorded_step(step, state, data)
        costs = costs_record(cfg, be.mesh_shape, tiled.shape, held=be.held_bytes(state), collectives=collectives,
                             step_memory=be.step_memory())

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(600)
        conn.connect(address)
        stream = conn.makefile("rw")
        stream.write(json.dumps({"process": be.world.process, "first_loss": first_loss, "compile_s": compile_s,
                                 "world": be.world.as_dict(), "costs": costs}) + "\n")
        stream.flush()
        # The step's all-reduces alone: one call of all their bytes (``comm`` lines).
        probe = be.all_reduce_probe(sum(c["payload"] for c in (costs or {}).get("collectives", [])
                                        if c["kind"] == "all-reduce"))
        ping = be.all_reduce_probe(4)

        def one_step():  # synced: done when its loss exists
            nonlocal state
            state, metrics = step(state, data)
            be.sync(metrics["loss"])

        for line in stream:
            answer = ""
            if line.strip() == "step":
                one_step()
            elif line.strip() == "comm" and probe is not None:
                probe()
            elif line.strip() == "latency" and ping is not None:
                answer = f" {float(np.median(call_seconds(ping, LATENCY_CALLS, warmup=20)))!r}"
            elif line.startswith("profile "):  # DIR NAME: a trace of a few steps in DIR (trace.trace_path)
                from mtcore.perf.trace import summary, trace_path, traced_steps

                where, name = line.split(" ", 2)[1:]
                path = trace_path(where, name.strip(), framework, be.world.process)
                steps = traced_steps(fw(framework), path, device, one_step, PROFILED_STEPS)
                answer = " " + json.dumps({"process": be.world.process, "trace": str(path), **summary(steps)})
            else:
                break
            stream.write(f"ok{answer}\n")
            stream.flush()



if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import argparse

    parser = argparse.ArgumentParser()
    for name in ("framework", "device", "devices", "size", "precision", "per_device", "address"):
        parser.add_argument(name)
    parser.add_argument("mesh", nargs="?")
    parser.add_argument("--coordinator")
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    a = parser.parse_args()
    main(a.framework, a.device, int(a.devices), a.size, a.precision, int(a.per_device), a.address, a.mesh,
         a.coordinator, a.num_processes, a.process_id)
