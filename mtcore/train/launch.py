"""Starting runs, once for ``mtcore train`` and ``mtcore compare``: the process set-up of a run's
process (``set_up_process``), whether a run's processes are started here (``starts_processes``),
and the one launcher (``launch``) that runs ``mtcore train`` in processes of its own — spread over
emulated hosts with ``--hosts`` (each host runs the framework's own multi-node line: torchrun's
rendezvous, jax.distributed's coordinator), a rank per device through the framework's own
launcher where it runs a process per device, any other run as one child process — and, when one
fails, records it in the run's ``metrics.json`` with the last good checkpoint, the same way
whoever launched it. No framework is named here: each says through
``mtcore.backend.framework`` how its processes start and join."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from mtcore.backend import framework
from mtcore.config import ModelConfig
from mtcore.errors import MTCoreError
from mtcore.files import read_json, write_json
from mtcore.parallel import MeshShape, under_launcher
from mtcore.perf import threads
from mtcore.perf.setup import ProcessSetup, set_up
from mtcore.train.options import RunConfig, run_arguments
from mtcore.train.trainer import last_checkpoint


def check_mesh(rc: RunConfig) -> None:
    """The framework trains on the mesh, and the mesh splits the model evenly: checked before
    anything is written or set up, once per process (the command line, ``train`` and ``compare``
    all ask)."""
    if rc.mesh:
        _check_mesh(rc.framework, rc.mesh, rc.device, rc.precision, rc.model)


@functools.cache  # a check that passed: a failed one raises every time
def _check_mesh(name: str, mesh: MeshShape, device: str, precision: str, model: str) -> None:
    framework(name).check_mesh(mesh, device, precision)
    mesh.check_model(ModelConfig.of(model))  # heads, FFN and model widths: not the vocabulary


def check_devices(rc: RunConfig) -> None:
    """A CPU device is a process's share of the cores (torch: a gloo rank; JAX: a host device):
    more of them than cores is not a measurement of anything. GPUs are counted before torch's
    ranks start, each to fail the same way; JAX counts its own when it starts. The mesh too
    (``check_mesh``)."""
    check_mesh(rc)
    if rc.hosts and not on_host():
        _check_hosts(rc)
    elif rc.net_iface and not on_host():
        from mtcore.hosts import iface_counters

        iface_counters(rc.net_iface)  # one line naming this host's interfaces
    asked = f"--mesh {rc.mesh} ({rc.devices} devices)" if rc.mesh else f"--devices {rc.devices}"
    if rc.device == "cpu" and rc.devices > 1 and not under_launcher() and not rc.num_processes:
        cores = len(threads.usable_cores())
        if rc.devices > cores:
            raise MTCoreError(f"{asked} on CPU: this process may use {cores} core(s), one per CPU device")
    per_device = framework(rc.framework).PROCESS_PER_DEVICE
    if (rc.coordinator or rc.num_processes) and per_device:
        raise MTCoreError(f"--coordinator and --num-processes join processes that each drive all their devices; "
                          f"{rc.framework} runs a process per device, started by its launcher (RANK, WORLD_SIZE, "
                          "MASTER_ADDR: docs/multi-device.md)")
    if rc.device == "gpu" and starts_ranks(rc) and not under_launcher():
        gpus = [d for d in framework(rc.framework).visible_devices() if d.startswith("gpu")]
        if rc.devices > len(gpus):
            raise MTCoreError(f"{asked}: {rc.framework} sees {len(gpus)} GPU(s){': ' if gpus else ''}"
                              f"{', '.join(gpus)}")


def _check_hosts(rc: RunConfig) -> None:
    from mtcore.hosts import HOST_IFACE, missing_privilege

    if rc.coordinator or rc.num_processes:
        raise MTCoreError("--hosts starts the run's processes itself: drop --coordinator and --num-processes")
    why = missing_privilege()
    if why:
        raise MTCoreError(f"--hosts {rc.hosts}: {why}")
    if rc.devices % rc.hosts:
        raise MTCoreError(f"--hosts {rc.hosts}: the run's {rc.devices} device(s) do not split evenly over {rc.hosts} hosts "
                          "(each host runs the same number)")
    cores = len(threads.usable_cores())
    if rc.hosts > cores:
        raise MTCoreError(f"--hosts {rc.hosts}: this process may use {cores} core(s), and each host needs one of its own")
    if rc.net_iface and rc.net_iface != HOST_IFACE:
        raise MTCoreError(f"--net-iface {rc.net_iface}: the emulated hosts talk over {HOST_IFACE} (each has {HOST_IFACE} "
                          "and lo)")


def on_host() -> bool:
    """Whether this process runs on an emulated host that a launcher of this run built."""
    return "MTCORE_HOST" in os.environ


def starts_processes(rc: RunConfig) -> bool:
    """Whether ``rc``'s processes are started from this one (``launch``): a run spread over
    emulated hosts, not yet on them, or a run of ranks (``starts_ranks``) not yet under its launcher."""
    if rc.hosts:
        return not on_host()
    return starts_ranks(rc) and not under_launcher()


def starts_ranks(rc: RunConfig) -> bool:
    """Whether ``rc`` runs as ranks, one process per device, that its framework's launcher starts
    (``launch``), rather than as one process: a framework with a process per device, on more than
    one device. (A process that is one of those ranks already: ``under_launcher``.)"""
    return rc.devices > 1 and framework(rc.framework).PROCESS_PER_DEVICE


def set_up_process(rc: RunConfig, *, own_process: bool = True, frameworks: tuple[str, ...] | None = None) -> ProcessSetup:
    """This process's set-up for ``rc`` (``mtcore.perf.setup``), before any framework starts: on a
    CPU its cores pinned (a torch rank its share; with --threads, T cores per device), freed memory
    kept where mtcore is the program (``own_process``), JAX's CPU programs on the calling thread;
    fp32 matmuls in full precision and the compile cache as asked, for every framework in
    ``frameworks`` (default: the run's); then jax.distributed joined when asked to."""
    budget, slot, slots = None, 0, 1
    if rc.device == "cpu":
        cores = len(threads.usable_cores())
        if under_launcher() and framework(rc.framework).PROCESS_PER_DEVICE:  # a rank: its share of the cores
            slot, slots = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
            share = rc.threads or int(os.environ.get("MTCORE_RANK_THREADS", 0)) or threads.share(slots)
            budget = min(share, cores)
        elif rc.threads:
            # A process that drives several host devices (JAX) does so on T cores for each of them.
            budget = rc.threads * (rc.devices // (rc.num_processes or 1))
    # The allocator and JAX's dispatch are a CPU run's (a GPU run's host memory is given back as usual).
    setup = set_up(frameworks or (rc.framework,), threads=budget, slot=slot, slots=slots,
                   own_process=own_process and rc.device == "cpu", compile_cache=rc.compile_cache == "on")
    if rc.net_iface:
        os.environ["MTCORE_NET_IFACE"] = rc.net_iface  # torch's ranks bind gloo to it (torch.parallel.interconnect)
    if rc.coordinator or rc.num_processes:
        # "auto": JAX finds the coordinator, process count and id itself (TPU pods, SLURM).
        coordinator = None if rc.coordinator == "auto" else rc.coordinator
        framework(rc.framework).initialize_distributed(coordinator, rc.num_processes, rc.process_id,
                                                cpu_devices=rc.devices // (rc.num_processes or 1)
                                                if rc.device == "cpu" else None, interface=rc.net_iface)
    return setup


def launch(rc: RunConfig, out: str | os.PathLike, argv: list[str] | None = None) -> None:
    """Run ``mtcore train ARGV`` (default: ``rc`` as options, into ``out``, quietly) in processes of
    its own: a rank per device through the framework's launcher where ``starts_ranks`` (torch's
    elastic agent; rank 0 prints here, every rank's output is kept in ``out/logs``), else one
    child process. A failure stops
    every process, is written into ``out/metrics.json``'s status as ``failed: ...`` with the last
    good checkpoint, and raised as one MTCoreError saying the same."""
    out = Path(out)
    argv = argv if argv is not None else ["train", *run_arguments(rc), "--out", str(out), "--quiet"]
    try:
        if rc.hosts and not on_host():
            launch_on_hosts(rc, argv, log_dir=out / "logs")
        elif starts_ranks(rc):
            framework(rc.framework).launch_ranks(rc.devices, argv, log_dir=out / "logs")
        else:
            _run_child([sys.executable, "-m", "mtcore", *argv], what=f"{rc.framework} on {rc.devices} device(s)")
    except MTCoreError as e:
        message = str(e) if "last good checkpoint" in str(e) else f"{e}; {last_checkpoint(out)}"
        metrics_file = out / "metrics.json"
        if metrics_file.is_file():
            metrics = read_json(metrics_file)
            # A run that stopped itself (a non-finite loss) has said why; a killed one still says running.
            if metrics.get("status") == "running":
                metrics["status"] = f"failed: {message}"
                write_json(metrics_file, metrics)
        raise MTCoreError(message) from None


def launch_on_hosts(rc: RunConfig, argv: list[str], *, log_dir: Path) -> None:
    """``mtcore ARGV`` spread over ``rc.hosts`` emulated hosts (``mtcore.hosts``), each link shaped
    to ``rc.rate``: every host runs the framework's own multi-node line (``node_command``) with
    host 0 as the rendezvous / coordinator, by hostname, pinned to its own share of the cores
    (``EmulatedHosts.start``). Each host's output goes to ``log_dir/HOST.log``. The first host seen
    to fail stops every other (its processes are killed with the hosts) and is raised as one line;
    the hosts are removed however the run ends."""
    from mtcore.hosts import EmulatedHosts

    fw = framework(rc.framework)
    per_host = rc.devices // rc.hosts if fw.PROCESS_PER_DEVICE else 1
    log_dir.mkdir(parents=True, exist_ok=True)
    failed = None
    with EmulatedHosts(rc.hosts, rc.rate) as hosts:
        share = max(1, len(threads.cores_for(0, rc.hosts)) // per_host)
        env = {**os.environ, "MTCORE_LAUNCHED": "1", "PYTHONUNBUFFERED": "1", "MTCORE_RANK_THREADS": str(share)}
        logs = []
        running = []
        try:
            for h in hosts.hosts:
                logs.append(open(log_dir / f"{h.hostname}.log", "w"))  # noqa: SIM115  (closed below, whatever happens)
            running = hosts.start_nodes(fw, rc.devices, ["-m", "mtcore", *argv], log_dir=log_dir,
                                        run_id=uuid.uuid4().hex[:8], env=env, output=lambda h: logs[h.index],
                                        stderr=subprocess.STDOUT)
            while failed is None and any(proc.poll() is None for _, proc in running):
                failed = next(((h, proc.returncode) for h, proc in running if proc.poll()), None)
                time.sleep(0.2)
            failed = failed or next(((h, proc.returncode) for h, proc in running if proc.poll()), None)
        finally:
            for _, proc in running:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            for log in logs:
                log.close()
    if failed:
        h, returncode = failed
        log = log_dir / f"{h.hostname}.log"
        raise MTCoreError(f"{h.hostname} failed: {_last_error(log, returncode)}; every host was stopped (its output: "
                          f"{log})")


def _last_error(log: Path, returncode: int) -> str:
    """What a host's output says went wrong: mtcore's own error line if it printed one (torchrun's
    report of its rank follows it), else the last line."""
    lines = log.read_text(errors="replace").strip().splitlines() if log.is_file() else []
    ours = [line for line in lines if "mtcore: error: " in line]
    if ours:
        return ours[-1].split("mtcore: error: ", 1)[1]
    if returncode < 0:
        return f"killed by signal {signal.Signals(-returncode).name}"
    return lines[-1] if lines else f"exit code {returncode} (no output)"


def _run_child(command: list[str], what: str) -> None:
    """``command`` as a child in a process group of its own, killed with everything it started if
    this process is interrupted; its last line of error output names a failure."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.returncode:
        if proc.returncode < 0:
            last = f"killed by signal {signal.Signals(-proc.returncode).name}"
        else:
            last = (err.strip().splitlines() or ["(no output)"])[-1].removeprefix("mtcore: error: ")
        raise MTCoreError(f"{what} failed: {last}")
