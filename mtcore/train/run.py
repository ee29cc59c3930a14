"""Whole training runs, the experiment behind ``mtcore train`` and ``mtcore compare``: the checks
made before anything is written, then ``train`` (one framework) and ``compare`` (every framework).

``prepare`` does everything that must be identical between frameworks once — read and split the
corpus, train (or load) the tokenizer, encode, choose the initial weights — and ``Trainer`` runs one
framework over it epoch by epoch: train, evaluate (loss, token accuracy, greedy-decoded BLEU/chrF),
checkpoint, and rewrite ``metrics.json``. ``compare`` interleaves two trainers epoch by epoch in
one process, so machine drift hits both alike.

A run directory holds::

    run.json             what was asked (RunConfig) and the model config it resolved to
    tokenizer/           the tokenizer the run used
    metrics.json         initial evaluation, one record per epoch, test metrics, status
    checkpoints/latest   which checkpoint is current; checkpoints/epoch-N/{model,optimizer}.safetensors
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

from mtcore.errors import MTCoreError
from mtcore.files import read_json, write_json
from mtcore.train.launch import check_devices, check_mesh, launch, set_up_process, starts_processes
from mtcore.train.options import RESUMABLE, RunConfig, main_process, option_flag
from mtcore.train.prepare import prepare
from mtcore.train.trainer import Trainer

# ---- entry points ------------------------------------------------------------------------------------
# What a run directory holds (train's and compare's): its presence means --out holds a run.
RUN_FILES = ("run.json", "metrics.json", "checkpoints", "tokenizer", "compare.json", "report.md")


def check_device(rc: RunConfig) -> None:
    """The device asked for is there: checked before anything is written (a missing GPU found
    after the tokenizer was trained would leave a half-made run behind)."""
    if rc.device == "cpu":
        return
    from mtcore.devices import missing

    reason = missing(rc.framework, rc.device)
    if reason:
        raise MTCoreError(f"--device {rc.device}: {reason}")


def claim_out(out: Path, overwrite: bool) -> bool:
    """May a new run be written to ``out``? An absent or empty directory: yes. One that holds a
    run: only with ``overwrite`` (returns True: clear it before the first write). Anything else
    in it: never, so --overwrite cannot delete files that are not a run's."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise MTCoreError(f"--out {out}: exists and is not a directory")
    # logs/: what torchrun's ranks of this very command write (the launcher makes it first).
    entries = [e for e in out.iterdir() if e.name != "logs"]
    if not entries:
        return False
    if not any((out / name).exists() for name in RUN_FILES):
        raise MTCoreError(f"--out {out}: holds files that are not a run's ({entries[0].name}, ...); choose another "
                          "directory")
    if not overwrite:
        raise MTCoreError(f"--out {out} holds a run: --resume continues it, --overwrite replaces it, or choose "
                          "another --out")
    return True


def _clear(out: Path) -> None:
    for entry in out.iterdir():
        if entry.name == "logs":  # the launcher's, this command's ranks are writing there
            continue
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def resumed_config(rc: RunConfig, out: Path, given: set[str] | None) -> RunConfig:
    """The saved run's config with the options a resume may change taken from ``rc``. An option
    given (``given``: the CLI's explicit flags; None: every field of ``rc``) that conflicts with
    the saved run is refused, named, rather than silently ignored or silently applied."""
    if not (out / "run.json").is_file():
        what = "nothing" if not out.exists() else "no run.json (it is not a finished or running run's directory)"
        raise MTCoreError(f"--resume: {out} holds {what}; train without --resume to start a run there")
    saved = RunConfig(**read_json(out / "run.json")["run_config"])
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    asked = fields if given is None else fields & set(given)
    conflicts = [name for name in sorted(asked - RESUMABLE) if getattr(rc, name) != getattr(saved, name)]
    if conflicts:
        was = ", ".join(f"{option_flag(n)} {getattr(saved, n)}" for n in conflicts)
        now = ", ".join(f"{option_flag(n)} {getattr(rc, n)}" for n in conflicts)
        raise MTCoreError(f"--resume: the run in {out} was trained with {was}, not {now}; drop those options to "
                          "continue it, or train into another --out")
    # The checkpoint holds no device count: resume on the devices asked for now, on the global
    # batch the run had, so the next steps are the ones it would have taken.
    return dataclasses.replace(saved, epochs=rc.epochs if "epochs" in asked else saved.epochs, devices=rc.devices,
                               mesh=rc.mesh,
                               global_batch_size=saved.global_batch(), coordinator=rc.coordinator,
                               num_processes=rc.num_processes, process_id=rc.process_id, threads=rc.threads,
                               compile_cache=rc.compile_cache, hosts=rc.hosts, rate=rc.rate, net_iface=rc.net_iface)


def check_request(rc: RunConfig, out: Path, *, resume: bool, overwrite: bool,
                  given: set[str] | None) -> tuple[RunConfig, bool]:
    """What ``train`` checks before writing anything (also what the CLI checks before launching
    torchrun's ranks): ``(the config to run, whether --out must be cleared before the first
    write)``. Writes nothing."""
    if resume and overwrite:
        raise MTCoreError("--resume continues the run in --out, --overwrite replaces it: choose one")
    check_device(rc)
    if resume:
        rc = resumed_config(rc, out, given)
        check_mesh(rc)
        return rc, False
    check_mesh(rc)
    # One process claims --out: the others would find the main one's first files there.
    return rc, claim_out(out, overwrite) if main_process(rc) else False


def train(rc: RunConfig, out: str | os.PathLike, *, progress: bool = True, resume: bool = False,
          overwrite: bool = False, given: set[str] | None = None) -> dict[str, Any] | None:
    """``mtcore train``: one framework, epochs 1..rc.epochs (continuing after the last checkpoint
    with ``resume``), then test metrics. Returns the final metrics.json content on the main
    process, None on the others. Nothing is written before the device, the data and ``out`` are
    known to be usable (``check_request``)."""
    out = Path(out)
    rc, clear = check_request(rc, out, resume=resume, overwrite=overwrite, given=given)
    if resume:
        prepared = prepare(rc, out, tokenizer_dir=out / "tokenizer")
    else:
        prepared = prepare(rc, out, before_write=(lambda: _clear(out)) if clear else None)
    trainer = Trainer(rc, prepared, out, progress=progress, resume=resume)
    if not resume:
        trainer.evaluate_initial()
    for epoch in range(trainer.epoch + 1, rc.epochs + 1):
        trainer.run_epoch(epoch)
    trainer.finish()
    return trainer.metrics if trainer.world.main else None


def train_command(rc: RunConfig, out: str | os.PathLike, argv: list[str], *, resume: bool = False,
                  overwrite: bool = False, given: set[str] | None = None, own_process: bool = True,
                  progress: bool = True) -> tuple[dict[str, Any] | None, bool]:
    """``mtcore train ARGV`` wherever it must run, the one place that decides: as ranks started from
    here where the framework runs a process per device or the run spreads over emulated hosts
    (``launch.starts_processes``; checked first as
    ``train`` checks, so that no rank is started to fail), else in this process, set up for the run
    (a resumed run as it was trained: its framework, device, threads). ``(the final metrics on the
    main process, else None; whether ranks were started)``."""
    out = Path(out)
    check_devices(rc)
    if starts_processes(rc):
        check_request(rc, out, resume=resume, overwrite=overwrite, given=given)
        launch(rc, out, argv)
        return read_json(out / "metrics.json"), True
    set_up_process(resumed_config(rc, out, given) if resume else rc, own_process=own_process)
    return train(rc, out, progress=progress, resume=resume, overwrite=overwrite, given=given), False


def compare_command(rc: RunConfig, out: str | os.PathLike, *, frameworks: tuple[str, ...], devices: tuple[int, ...],
                    meshes: tuple[str, ...] = (), own_process: bool = True, **options) -> Path:
    """``mtcore compare`` as the command line runs it: where every run trains in this process (one
    device each, no mesh), the process is set up for all the frameworks first; then ``compare``."""
    if meshes and set(devices) - {1}:
        raise MTCoreError("compare: --mesh and --devices both say where to train: give one (--devices N is --mesh data:N)")
    if rc.hosts and set(devices) <= {1} and not meshes:
        raise MTCoreError(f"compare --hosts {rc.hosts}: spreads meshes over hosts; give --mesh (data:{rc.hosts} ...) or "
                          f"--devices")
    if set(devices) <= {1} and not meshes:
        for fw in frameworks:  # an unknown framework refused as train refuses it, before any is set up
            check_devices(dataclasses.replace(rc, framework=fw, devices=1))
        set_up_process(dataclasses.replace(rc, devices=1), own_process=own_process, frameworks=frameworks)
    return compare(dataclasses.replace(rc, devices=1), out, frameworks=frameworks, devices=devices or (1,),
                   meshes=meshes or None, **options)


def _hosts_for(rc: RunConfig, devices: int) -> dict[str, Any]:
    """A compared run's hosts: spread over ``rc.hosts`` emulated hosts where its devices split over
    them (``data:1`` beside two-host meshes runs on one host, in one process)."""
    spread = bool(rc.hosts) and devices % rc.hosts == 0
    return {"hosts": rc.hosts if spread else None, "rate": rc.rate if spread else None,
            "net_iface": rc.net_iface if spread else None}


def compare(rc: RunConfig, out: str | os.PathLike, *, frameworks=("torch", "jax"), devices=(1,),
            scaling: str = "weak", target_loss: float | None = None, progress: bool = True,
            overwrite: bool = False, meshes: tuple[str, ...] | None = None) -> Path:
    """``mtcore compare``: every framework from the same initial weights on the same batches, then
    ``report.md`` and plots. On one device the frameworks' epochs interleave (the order
    alternates), so drift hits both alike; with ``devices`` (e.g. ``(1, 2)``) every framework
    trains at every device count, weak scaling (per-device batch fixed) or strong (global batch
    fixed), torch's multi-device runs as torchrun ranks. With ``meshes`` (``data:1``, ``fsdp:2``,
    ...) every framework trains on every mesh instead, each in its own process(es), on the same
    global batches (the global batch fixed, as strong scaling has it)."""
    from mtcore.parallel import MeshShape
    from mtcore.train.report import write_report

    out = Path(out)
    shapes = MeshShape.parse_all(meshes or ())
    if meshes:
        scaling = "strong"  # the same global batches on every mesh
        devices = tuple(m.devices for m in shapes)
    devices = tuple(sorted(set(devices)))
    if scaling not in ("weak", "strong"):
        raise MTCoreError(f"--scaling must be weak or strong, got {scaling!r}")
    fixed = rc.global_batch_size or rc.batch_size if scaling == "strong" else None
    if fixed is not None and not shapes and fixed % max(devices):
        raise MTCoreError(f"--scaling strong: the global batch {fixed} must split evenly over --devices {max(devices)}")
    for fw in frameworks:  # each run checked as train checks it, before anything is written
        check_device(dataclasses.replace(rc, framework=fw))
        for n in devices if not shapes else ():
            check_devices(dataclasses.replace(rc, framework=fw, devices=n, **_hosts_for(rc, n)))
        for m in shapes:
            # RunConfig checks the global batch against the mesh's batch shards.
            check_devices(dataclasses.replace(rc, framework=fw, mesh=m, devices=1, global_batch_size=fixed,
                                              **_hosts_for(rc, m.devices)))
    clear = claim_out(out, overwrite)
    # The data is read before an old comparison goes (a bad --data must not cost it); the
    # tokenizer every run uses is trained once, here.
    prepared = prepare(rc, out, before_write=(lambda: _clear(out)) if clear else None)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "compare.json", {"frameworks": list(frameworks), "devices": list(devices), "scaling": scaling,
                                      "target_loss": target_loss, "meshes": [str(m) for m in shapes] or None})
    if devices == (1,) and not shapes:
        trainers = {fw: Trainer(dataclasses.replace(rc, framework=fw), prepared, out / fw, progress=progress)
                    for fw in frameworks}
        for t in trainers.values():
            t.evaluate_initial()
        for epoch in range(1, rc.epochs + 1):
            order = list(trainers) if epoch % 2 else list(reversed(trainers))
            for fw in order:
                trainers[fw].run_epoch(epoch)
        for t in trainers.values():
            t.finish()
        return write_report(out)

    threads = rc.threads
    if rc.device == "cpu" and threads is None:
        # On a CPU a device is a share of the cores: the same share at every device count, so one
        # device is not a whole machine against N devices of half a machine each.
        from mtcore.perf.threads import share

        threads = share(max(devices))
    plan = [(m.devices, str(m), f"{m}".replace(":", "").replace(",", "-")) for m in shapes] or \
        [(n, None, str(n)) for n in devices]
    for n, mesh, label in plan:
        for fw in frameworks:
            run = dataclasses.replace(rc, framework=fw, devices=n, mesh=mesh, global_batch_size=fixed,
                                      threads=threads, tokenizer=str(out / "tokenizer"), **_hosts_for(rc, n))
            # Each run in a process of its own: its own thread budget and framework start-up
            # (XLA sizes its CPU pool and host devices once per process).
            launch(run, out / f"{fw}-{label}")
    return write_report(out)


