"""``Trainer``: one framework training the prepared model epoch by epoch: train, evaluate (loss,
token accuracy, greedy-decoded BLEU/chrF), checkpoint, and rewrite ``metrics.json``; ``RunIO``
writes what the main process alone writes."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import mtcore
from mtcore.config import ModelConfig
from mtcore.data.batching import Encoded, PlannedBatch, plan_batches
from mtcore.data.corpus import Corpus
from mtcore.errors import MTCoreError
from mtcore.files import read_json, write_json
from mtcore.metrics import bleu, chrf
from mtcore.parallel import counted_rows, local_rows
from mtcore.perf import setup
from mtcore.train.options import RunConfig
from mtcore.train.prepare import Prepared
from mtcore.weights import load_safetensors, save_safetensors


class NonFiniteLoss(MTCoreError):
    pass



# ---- one framework's run ---------------------------------------------------------------------------
class RunIO:
    """What a run leaves on disk besides the rank files: ``run.json``, ``metrics.json``,
    checkpoints and the progress bar. Off the main process it does nothing, so the Trainer keeps
    one loop however many processes run it."""

    def __init__(self, out: Path, main: bool, progress: bool, sharded: bool = False):
        self.out, self.main, self.progress, self.sharded = out, main, progress, sharded

    def write(self, name: str, data: Any) -> None:
        if self.main:
            write_json(self.out / name, data)

    def bar(self, total: int, desc: str):
        return _progress(total, desc, self.progress and self.main)

    def save_checkpoint(self, be, state, epoch: int, cfg: ModelConfig, framework: str) -> None:
        """``checkpoints/epoch-N/{model,optimizer}.safetensors`` in framework-neutral names (any
        framework, any device count resumes from it), then the ``latest`` pointer."""
        # A sharded state's parts are on every process: all of them gather it (a collective), the
        # main one writes it. A replicated one the main process copies alone.
        if not self.main and not self.sharded:
            return
        params = be.to_numpy(be.state_params(state))
        step, moments = be.optimizer_to_numpy(state)
        if not self.main:
            return
        root = self.out / "checkpoints"
        directory = root / f"epoch-{epoch}"
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"framework": framework, "epoch": str(epoch), "step": str(step)}
        save_safetensors(directory / "model.safetensors", params, meta)
        save_safetensors(directory / "optimizer.safetensors", moments, meta)
        # The pointer moves last, atomically: a crash mid-save leaves the previous checkpoint current.
        write_json(root / "latest", {"epoch": epoch, "step": step, "dir": directory.name,
                                     "model_config": dataclasses.asdict(cfg)})
        for old in root.glob("epoch-*"):
            if old.name != directory.name:
                shutil.rmtree(old, ignore_errors=True)


def last_checkpoint(out: Path, resume: bool = True) -> str:
    """The sentence every stopped or failed run ends with: where its last good checkpoint is (and,
    with ``resume``, that ``--resume`` continues from it)."""
    latest = Path(out) / "checkpoints" / "latest"
    if not latest.is_file():
        return "no checkpoint was written"
    info = read_json(latest)
    where = f"the last good checkpoint is {Path(out) / 'checkpoints' / info['dir']} (epoch {info['epoch']})"
    return where + ("; --resume continues" if resume else "")


def rank_file(out: Path, process: int, epoch: int) -> Path:
    return out / f"rank{process}_results_epoch{epoch}.json"


class Trainer:
    """One framework training the prepared model: ``evaluate_initial()``, then ``run_epoch(e)``
    for e = 1..epochs, then ``finish()``. Every epoch ends with a checkpoint and ``metrics.json``
    (main process) and ``rank{r}_results_epoch{e}.json`` (every process).

    On several devices every process runs this same loop over the same global batches; the
    backend keeps each process's rows and reduces the loss over all of them."""

    def __init__(self, rc: RunConfig, prepared: Prepared, out: str | os.PathLike, *, progress: bool = True,
                 resume: bool = False):
        self.rc, self.p, self.out = rc, prepared, Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.cfg = prepared.cfg
        self.tcfg = rc.train_config()
        self.be = mtcore.backend(rc.framework, rc.device, devices=rc.devices, mesh=rc.mesh)
        self.world = self.be.world
        self.io = RunIO(self.out, self.world.main, progress, sharded=rc.mesh_shape().sharded)
        self.global_batch = rc.global_batch()
        self.max_len = prepared.max_len
        self.step_fn = self.be.make_train_step(self.cfg, self.tcfg, compile=rc.compile)
        self.costs: dict[str, Any] | None = None  # what a device holds and a step moves, from one recorded step
        self.profile: dict[str, Any] | None = None  # the traced steps' breakdown (--profile), once per run
        self.eval_fn = self.be.make_eval_step(self.cfg, self.tcfg)
        self.wire, self.link = _wire_meter(rc)
        # Every process of a run whose collectives cross a network measures the background together, once.
        self.wire_idle_pending = self.link is not None and self.link.iface != "lo"
        if resume:
            self.metrics = read_json(self.out / "metrics.json")
            self.epoch, self.state = self._load_checkpoint()
            self.metrics["epochs"] = [e for e in self.metrics["epochs"] if e["epoch"] <= self.epoch]
            self.metrics["status"] = "running"
            self.metrics["run"].update(devices=rc.devices, mesh=rc.as_dict()["mesh"], world=self.world.as_dict(), process=setup.current(),
                                       global_batch_size=self.global_batch, devices_used=self._devices_used())
            self.metrics.pop("test", None)
        else:
            self.epoch = 0
            self.state = self.be.init_train_state(self.be.from_numpy(self.cfg, prepared.initial), self.tcfg)
            self.metrics = {
                "run": {**rc.as_dict(), "model_config": dataclasses.asdict(self.cfg),
                        "num_params": self.cfg.num_params(), "devices_used": self._devices_used(),
                        "world": self.world.as_dict(), "global_batch_size": self.global_batch,
                        "train_pairs": len(prepared.train), "validation_pairs": len(prepared.validation),
                        "test_pairs": len(prepared.test), "notes": prepared.notes, "process": setup.current()},
                "initial": None, "epochs": [], "test": None, "status": "running",
            }
        # What was asked, and the process set-up it runs under now (a resume may change it).
        self.io.write("run.json", {"run_config": rc.as_dict(), "model_config": dataclasses.asdict(self.cfg),
                                   "process": self.metrics["run"]["process"]})
        self.validation_batches = plan_batches(self.cfg, prepared.validation, rc.batch_size, max_len=self.max_len,
                                               shuffle=False)
        self.test_batches = plan_batches(self.cfg, prepared.test, rc.batch_size, max_len=self.max_len, shuffle=False)

    # ---- evaluation ----------------------------------------------------------------------------
    def evaluate(self, batches: list[PlannedBatch], data: Encoded, corpus: Corpus, limit: int | None) -> dict[str, Any]:
        """Teacher-forced loss and token accuracy over every pair; BLEU and chrF of greedy
        translations of the first ``limit`` pairs (all when None), with a few examples."""
        params = self.be.state_params(self.state)
        loss_sum = correct = tokens = 0.0
        for planned in batches:
            m = self.eval_fn(params, planned.batch)
            n = planned.batch.num_tgt_tokens
            loss_sum += float(m["loss"]) * n
            correct += float(m["accuracy"]) * n
            tokens += n
        result: dict[str, Any] = {"loss": loss_sum / max(tokens, 1), "token_accuracy": correct / max(tokens, 1),
                                  "bleu": None, "chrf": None, "examples": []}
        wanted = len(data) if limit is None else min(limit, len(data))
        if not wanted:
            return result
        hypotheses: dict[int, str] = {}
        for planned in batches:
            rows = planned.rows
            if not ((rows >= 0) & (rows < wanted)).any():
                continue
            b = planned.batch
            # A bucket of length L holds targets of at most L tokens, eos included.
            out = self.be.generate(params, self.cfg, b.src_ids, b.src_mask, max_len=b.shape[2])
            for row, text in zip(rows, self.p.tokenizer.decode(out), strict=True):
                if 0 <= row < wanted:
                    hypotheses[int(row)] = text
        hyps = [hypotheses[i] for i in range(wanted)]
        refs = [corpus.target[data.index[i]] for i in range(wanted)]
        result.update(bleu=bleu(hyps, refs), chrf=chrf(hyps, refs), examples=[
            {"source": corpus.source[data.index[i]], "reference": refs[i], "hypothesis": hyps[i]}
            for i in range(min(3, wanted))])
        return result

    def _validate(self) -> dict[str, Any]:
        r = self.evaluate(self.validation_batches, self.p.validation, self.p.splits.validation, self.rc.eval_sentences)
        return {"validation_loss": r["loss"], "token_accuracy": r["token_accuracy"], "bleu": r["bleu"],
                "chrf": r["chrf"], "examples": r["examples"]}

    def evaluate_initial(self) -> dict[str, float]:
        self.metrics["initial"] = self._validate()
        self.io.write("metrics.json", self.metrics)
        return self.metrics["initial"]

    # ---- training ------------------------------------------------------------------------------
    def run_epoch(self, epoch: int) -> dict[str, Any]:
        if epoch != self.epoch + 1:
            raise MTCoreError(f"epoch {epoch} asked for after epoch {self.epoch}")
        batches = plan_batches(self.cfg, self.p.train, self.global_batch, max_len=self.max_len, seed=self.rc.seed,
                               epoch=epoch)
        self.be.reseed(self.rc.seed * 100_003 + epoch)
        bar = self.io.bar(len(batches), f"{self.rc.framework} epoch {epoch}")
        losses, accuracies, pending = [], [], []
        tokens = sum(b.num_tokens for b in batches)
        rows = counted_rows(self.world, self.rc.mesh_shape(), self.global_batch)
        my_tokens = sum(b.tokens_in(rows) for b in batches)
        first_step_s = None
        # The step whose collectives are recorded: the third, past DDP's bucket rebuild on the second.
        record_at = min(2, len(batches) - 1) if self.costs is None else -1
        tracer = StepTracer.for_epoch(self, epoch, len(batches), after=record_at)
        if self.wire_idle_pending:
            self._measure_idle()
        if self.wire:
            self.wire.start()
        start = time.perf_counter()
        try:
            for i, planned in enumerate(batches):
                if i == record_at:
                    self.be.peak_memory(reset=True)  # the step's own peak, where the allocator keeps one
                    self.state, m, moved = self.be.recorded_step(self.step_fn, self.state, planned.batch)
                    self.costs = self._costs(planned.batch, moved, epoch, i + 1)
                elif tracer and tracer.traces(i):
                    self.state, m = tracer.step(i, self.step_fn, self.state, planned.batch)
                else:
                    self.state, m = self.step_fn(self.state, planned.batch)
                pending.append(m)
                if i == 0:
                    self.be.sync(m["loss"])
                    first_step_s = time.perf_counter() - start
                # Reading a loss waits for the device: every 10 steps is often enough to stop a
                # diverging run early without serialising the whole epoch.
                if len(pending) == 10 or i == len(batches) - 1:
                    for m in pending:
                        loss = float(m["loss"])
                        if not math.isfinite(loss):
                            self._stop(epoch, len(losses) + 1, loss, bar)
                        losses.append(loss)
                        accuracies.append(float(m["accuracy"]))
                    pending = []
                    bar.update(10 if i != len(batches) - 1 else len(batches) - bar.n)
                    bar.set_postfix(loss=f"{losses[-1]:.3f}")
        except BaseException:  # the profiler, if it runs, stops with the error
            if tracer:
                tracer.abandon()
            raise
        self.be.sync(self.state)
        seconds = time.perf_counter() - start
        if tracer:
            self.profile = tracer.result()
        sent, sent_predicted = epoch_sent_bytes(self.cfg, self.rc.mesh_shape(), self.costs, [b.batch.shape for b in batches])
        wire = self._wire_record(len(batches), sent) if self.wire else None
        bar.close()
        self.epoch = epoch
        record = {
            "epoch": epoch,
            "mesh": str(self.rc.mesh_shape()),  # a resumed run may go on on another mesh
            "steps": len(batches),
            "training_time": seconds,
            "first_step_time": first_step_s,
            "tokens": tokens,
            "tokens_per_sec": tokens / seconds,
            "train_loss": float(np.mean(losses)),
            "train_accuracy": float(np.mean(accuracies)),
            "step_losses": losses,
            "sent_bytes_per_step": sent / len(batches),
            "sent_bytes_per_step_predicted": sent_predicted / len(batches),
            "bandwidth_needed_bytes_per_s": sent / seconds,
            "wire": wire,  # this host's (the main process's) interface: rank files hold every host's
        }
        record.update(self._validate())
        self.io.save_checkpoint(self.be, self.state, epoch, self.cfg, self.rc.framework)
        self.metrics["epochs"].append(record)
        self.metrics["run"]["costs"] = self.costs
        self.io.write("metrics.json", self.metrics)
        # Every process: what it did (its rows' tokens, its own clock), for time averaged and
        # tokens/s summed over ranks.
        write_json(rank_file(self.out, self.world.process, epoch), {
            "epoch": epoch, "process": self.world.process, "pid": os.getpid(), "framework": self.rc.framework,
            "device": self.rc.device,
            "training_time": seconds, "tokens_per_sec": my_tokens / seconds, "tokens": my_tokens,
            "validation_loss": record["validation_loss"], "bleu": record["bleu"],
            "world_size": self.world.devices, "mesh": str(self.rc.mesh_shape()), "processes": self.world.processes,
            "devices": self.world.local_devices, "local_batch": local_rows(self.world, self.rc.mesh_shape(), self.global_batch),
            "global_batch": self.global_batch, "threads": _threads(),
            "steps": len(batches), "sent_bytes": sent, "sent_bytes_predicted": sent_predicted, "costs": self.costs,
            "wire": wire, "profile": self.profile if tracer else None,
        })
        return record

    def _measure_idle(self) -> None:
        """The background every host's interface carries while the run's processes wait: all of
        them join one small collective, then sleep through the same window (the host's first
        process reading its counters), once per run."""
        from mtcore.hosts import IDLE_WINDOW_S

        probe = self.be.all_reduce_probe(4)
        if probe:
            probe()
        if self.wire:
            self.wire.measure_idle(IDLE_WINDOW_S)
        else:
            time.sleep(IDLE_WINDOW_S)
        self.wire_idle_pending = False

    def _wire_record(self, steps: int, sent: float) -> dict:
        """This host's wire over the epoch (``WireMeter.stop``) beside what mtcore predicts the
        engine sends for the recorded step's collectives, framing included (``costs.wire_prediction``),
        carried to the epoch's batch shapes as ``sent`` (the epoch's ``epoch_sent_bytes``) is."""
        from mtcore.costs import wire_prediction

        record = self.wire.stop(steps)
        if record["crossed_network"] and self.costs:
            from mtcore.backend import framework

            engine = framework(self.rc.framework).collective_engine(self.rc.device)
            per_step = wire_prediction(self.costs["collectives"], engine, processes_per_host=self.link.per_host)
            if per_step:
                scale = sent / steps / self.costs["sent_bytes_per_step"] if self.costs["sent_bytes_per_step"] else 1.0
                per_step = {**per_step, **{k: per_step[k] * scale for k in ("tx_bytes", "rx_bytes", "sent_bytes")}}
            record["predicted_per_step"] = per_step
        return record

    def _costs(self, batch, collectives: list[dict], epoch: int, step: int) -> dict[str, Any]:
        """What one device of this process holds (measured from its shards, and predicted from the
        shapes and the mesh) and what the recorded step moved (measured and predicted), with the
        framework's account of the step's memory where it keeps one."""
        from mtcore.costs import costs_record

        return {**costs_record(self.cfg, self.rc.mesh_shape(), batch.shape, held=self.be.held_bytes(self.state),
                               collectives=collectives, step_memory=self.be.step_memory()),
                "recorded_at": {"epoch": epoch, "step": step}}

    def _stop(self, epoch: int, step: int, loss: float, bar) -> None:
        bar.close()
        # No resume hint: the same steps would diverge again; a new --out from it, with a lower --lr.
        where = (last_checkpoint(self.out, resume=False) if self.epoch
                 else "no checkpoint was written (it diverged in the first epoch)")
        message = f"{self.rc.framework}: loss became {loss} at epoch {epoch}, step {step} of the epoch; stopped. {where}"
        self.metrics["status"] = f"stopped: {message}"
        self.io.write("metrics.json", self.metrics)
        raise NonFiniteLoss(message + " (try a lower --lr)")

    def finish(self) -> dict[str, float]:
        r = self.evaluate(self.test_batches, self.p.test, self.p.splits.test, None)
        self.metrics["test"] = {"test_loss": r["loss"], "test_token_accuracy": r["token_accuracy"],
                                "test_bleu": r["bleu"], "test_chrf": r["chrf"], "examples": r["examples"]}
        self.metrics["status"] = "finished"
        self.io.write("metrics.json", self.metrics)
        return self.metrics["test"]

    def _devices_used(self) -> list[str]:
        # The framework lists everything it sees ("cpu (16 threads)", "gpu:0 NVIDIA H100 ..."); the
        # report names what this run trained on.
        seen = self.be.devices()
        return [d for d in seen if d.startswith(self.rc.device)] or seen

    # ---- checkpoints ---------------------------------------------------------------------------
    def _load_checkpoint(self):
        latest = read_json(self.out / "checkpoints" / "latest")
        if latest.get("model_config") != dataclasses.asdict(self.cfg):
            raise MTCoreError(f"{self.out}: the checkpoint is of another model configuration")
        directory = self.out / "checkpoints" / latest["dir"]
        tree = load_safetensors(directory / "model.safetensors")
        moments = load_safetensors(directory / "optimizer.safetensors")
        state = self.be.train_state_from_numpy(self.cfg, self.tcfg, tree, int(latest["step"]), moments)
        return int(latest["epoch"]), state




class StepTracer:
    """``--profile``: the framework's profiler over a few steps of the first epoch this process
    trains, each step in its own span and synced, so its work ends inside it; then the trace read
    back and each step broken down (``mtcore.perf.trace``). The window starts after the recorded
    step (the third: past the first step's compilation and DDP's bucket rebuild on the second)."""

    STEPS = 3

    def __init__(self, trainer: Trainer, first: int, last: int, epoch: int):
        from contextlib import ExitStack

        from mtcore.backend import framework
        from mtcore.perf.trace import trace_path

        self.trainer, self.first, self.last, self.epoch = trainer, first, last, epoch
        self.fw = framework(trainer.rc.framework)
        # The epoch in the name: a resumed run traces again, and leaves the first run's trace be.
        self.path = trace_path(trainer.out / "traces", trainer.out.name, trainer.rc.framework, trainer.world.process,
                               epoch)
        self.clock: list[float] = []
        self.stack = ExitStack()

    @classmethod
    def for_epoch(cls, trainer: Trainer, epoch: int, steps: int, after: int) -> StepTracer | None:
        """The tracer of this epoch, or None: off, traced already, or no step past ``after``."""
        if trainer.rc.profile != "on" or trainer.profile is not None or after + 1 >= steps:
            return None
        first = after + 1  # after is -1 where no step of this epoch is recorded
        return cls(trainer, first, min(first + cls.STEPS, steps) - 1, epoch)

    def traces(self, i: int) -> bool:
        return self.first <= i <= self.last

    def step(self, i: int, step_fn, state, batch):
        from mtcore.perf.trace import traced_step, warm_up

        be = self.trainer.be
        if i == self.first:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.stack.enter_context(self.fw.profiled(self.path, self.trainer.rc.device))
            warm_up(self.fw)

        def run():
            state_, m_ = step_fn(state, batch)
            be.sync(m_["loss"])
            return state_, m_

        try:
            (state, m), seconds = traced_step(self.fw, i, run)
            self.clock.append(seconds)
        except BaseException:
            self.abandon()
            raise
        if i == self.last:
            self.stack.close()  # the profiler stops and writes the trace
        return state, m

    def abandon(self) -> None:
        """The profiler stopped on an error's way out, its trace not read; the error is the step's."""
        try:
            self.stack.__exit__(*sys.exc_info())
        except Exception:  # noqa: BLE001 (the step's error is the one to see)
            pass

    def result(self) -> dict[str, Any]:
        """The trace's path (relative to the run directory), the window, each traced step's
        breakdown and their medians; where the trace cannot be read back, why (the run goes on)."""
        from mtcore.perf.trace import breakdown, read_trace, summary

        self.stack.close()
        record = {"trace": str(self.path.relative_to(self.trainer.out)), "epoch": self.epoch,
                  "steps_traced": [self.first + 1, self.last + 1],
                  "window": f"steps {self.first + 1}-{self.last + 1} of epoch {self.epoch}, each synced"
                            + (": past the first's compilation, DDP's bucket rebuild on the second and the recorded third"
                               if self.first >= 3 else "")}
        try:
            steps = breakdown(read_trace(self.path), self.fw.trace_kind, clock=self.clock)
        except MTCoreError as e:
            print(f"mtcore: --profile: {e}", file=sys.stderr)
            return {**record, "error": str(e), "steps": [], "median": None}
        return {**record, "steps": [s.as_dict() for s in steps], "median": summary(steps)}


def epoch_sent_bytes(cfg: ModelConfig, mesh, costs: dict[str, Any] | None,
                     shapes: list[tuple[int, int, int]]) -> tuple[float, float]:
    """``(sent, predicted)``: bytes a device sent over an epoch of batches of ``shapes``, the
    recorded step's measured bytes carried to each batch's shape by the prediction (data and FSDP
    move the same bytes whatever the batch; tensor parallelism's activations grow with it), and
    the prediction alone."""
    from mtcore.costs import predicted_traffic, sent_bytes

    if costs is None:
        return 0.0, 0.0
    predicted = float(sum(sent_bytes(predicted_traffic(cfg, mesh, *shape)) for shape in shapes))
    measured, expected = costs["sent_bytes_per_step"], costs["sent_bytes_per_step_predicted"]
    return (measured / expected * predicted if expected else float(measured * len(shapes))), predicted


def _wire_meter(rc: RunConfig):
    """``(the meter of this host's interface, or None; this process's Link, or None)``: the
    processes of a run agreed where their collectives go (``Framework.interconnect``); the first
    on each host reads its interface."""
    from mtcore.backend import framework
    from mtcore.hosts import WireMeter

    link = framework(rc.framework).interconnect()
    if link is None:
        return None, None
    return (WireMeter(link.iface) if link.first else None), link


def _threads() -> dict[str, Any]:
    """What one process had: the cores it may run on, and torch's intra-op threads if torch runs."""
    import sys

    from mtcore.perf.threads import current_cores

    torch = sys.modules.get("torch")
    return {"cores": list(current_cores()), "torch_threads": torch.get_num_threads() if torch else None}


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=not enabled, leave=False, dynamic_ncols=True)


