"""Whole training runs, the experiment behind ``mtcore train`` and ``mtcore compare``.

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
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import mtcore
from mtcore.config import COMPILE_MODES, PRECISIONS, PRESETS, ModelConfig, TrainConfig
from mtcore.data.batching import Encoded, PlannedBatch, encode, plan_batches
from mtcore.data.corpus import Corpus, Splits, load_corpus, split
from mtcore.data.tokenizer import SentencePieceTokenizer, check_fits, is_marian_dir, load_tokenizer
from mtcore.devices import DEVICE_KINDS, FRAMEWORKS
from mtcore.errors import MTCoreError
from mtcore.files import read_json, write_json
from mtcore.metrics import bleu, chrf
from mtcore.parallel import global_batch_size
from mtcore.weights import init_tree, load_safetensors, read_hf_checkpoint, save_safetensors


def option(default: Any, help: str, **argparse: Any) -> Any:
    """A ``RunConfig`` field and its command-line option, declared together."""
    return field(default=default, metadata={"help": help, **argparse})


@dataclass(frozen=True)
class RunConfig:
    """What ``mtcore train`` is asked. One config serves both frameworks; ``framework``,
    ``device`` and ``devices`` only say where it runs. Every field is a command-line option
    (``mtcore/cli.py`` generates them), declared here once."""

    framework: str = option("torch", "torch or jax", choices=FRAMEWORKS)
    device: str = option("cpu", "the kind of device to train on", choices=DEVICE_KINDS)
    devices: int = option(1, "devices to train on, data parallel (torch: one process each, through torchrun; jax: "
                             "one process drives its devices)")
    model: str = option("tiny", "preset (tiny, small, base, marian-en-hu) or Hugging Face Marian checkpoint dir")
    data: str = option("synthetic", "'synthetic', a prefix PATH with PATH.en and PATH.hu beside it, a .tsv file, a "
                                    "saved HF dataset dir, or hf:NAME")
    source_lang: str = option("en", "source language code")
    target_lang: str = option("hu", "target language code")
    # The defaults are a recipe that works: tiny on the synthetic corpus reaches BLEU > 90 in 6 epochs.
    epochs: int = option(6, "training epochs")
    batch_size: int = option(32, "sentence pairs per device per step (global batch = this x --devices)")
    global_batch_size: int | None = option(None, "sentence pairs per step over all devices (overrides --batch-size; "
                                                 "a multiple of --devices)")
    lr: float = option(3e-3, "peak learning rate (linear warm-up, then 1/sqrt decay)")
    warmup_steps: int = option(200, "learning-rate warm-up steps")
    precision: str = option("fp32", "compute precision", choices=PRECISIONS)
    compile: str = option("none", "torch: the train step's forward and loss through torch.compile ('default' mode, "
                                  "or 'reduce-overhead': CUDA graphs on a GPU); JAX always compiles",
                          choices=COMPILE_MODES)
    seed: int = option(0, "seed of the data split, the tokenizer, the initial weights and dropout")
    dropout: float | None = option(None, "override the model's dropout")
    max_len: int = option(64, "longest sentence pair in tokens; longer training pairs are dropped and counted")
    validation: float | int = option(0.05, "held-out pairs (count or fraction)")
    test: float | int = option(0.05, "test pairs (count or fraction)")
    eval_sentences: int = option(200, "validation sentences translated for BLEU/chrF each epoch")
    synthetic_size: int = option(4000, "pairs in the synthetic corpus")
    vocab_size: int | None = option(None, "pieces of the tokenizer trained on the data (default: the preset's; a "
                                          "small corpus may give fewer, and the model's vocabulary follows)")
    on_error: str = option("raise", "malformed pairs in the corpus: stop (raise), or skip and count them",
                           choices=("raise", "skip"))
    # jax.distributed: several JAX processes (hosts). None: JAX finds them itself where it can
    # (TPU pods, SLURM), or the run is one process.
    coordinator: str | None = option(None, "JAX: the coordinator's HOST:PORT (process 0's), for several processes; "
                                           "'auto' where JAX finds it (TPU pod slices, SLURM)")
    num_processes: int | None = option(None, "JAX: how many processes train together")
    process_id: int | None = option(None, "JAX: this process's index among them")
    tokenizer: str | None = option(None, "a saved tokenizer directory to use instead of training one")
    threads: int | None = option(None, "CPU: cores per device, pinned (default: every core the process may use)")

    def __post_init__(self):
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise MTCoreError(what)

        need(self.framework in (*FRAMEWORKS, "hf"), f"--framework: unknown framework {self.framework!r}; choose torch or jax")
        need(self.device in DEVICE_KINDS, f"--device: unknown device {self.device!r}; choose {', '.join(DEVICE_KINDS)}")
        need(self.precision in PRECISIONS, f"--precision: unknown precision {self.precision!r}; choose fp32 or bf16")
        need(self.compile in COMPILE_MODES, f"--compile: unknown mode {self.compile!r}; choose {', '.join(COMPILE_MODES)}")
        need(self.compile == "none" or self.framework != "hf", "--compile: the HF baseline runs eager only")
        need(self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}")
        need(self.devices >= 1, f"--devices must be at least 1, got {self.devices}")
        need(self.batch_size >= 1, f"--batch-size must be positive, got {self.batch_size}")
        self.global_batch()  # raises on a global batch the devices cannot split
        need(math.isfinite(self.lr) and self.lr > 0, f"--lr (learning rate) must be a positive number, got {self.lr}")
        need(self.max_len >= 4, f"--max-len must be at least 4, got {self.max_len}")
        need(self.eval_sentences >= 0, f"--eval-sentences must be >= 0, got {self.eval_sentences}")
        need(self.on_error in ("raise", "skip"), f"--on-error must be raise or skip, got {self.on_error!r}")
        if self.model not in PRESETS and not Path(self.model).is_dir():
            raise MTCoreError(
                f"--model {self.model!r}: not a preset ({', '.join(PRESETS)}) nor a Hugging Face checkpoint directory"
            )

    def global_batch(self) -> int:
        return global_batch_size(self.devices, self.batch_size, self.global_batch_size)

    def train_config(self) -> TrainConfig:
        return TrainConfig(learning_rate=self.lr, warmup_steps=self.warmup_steps, precision=self.precision,
                           seed=self.seed)


@dataclass
class Prepared:
    """Everything both frameworks share: the same data, tokens, batches and initial weights."""

    cfg: ModelConfig
    tokenizer: Any
    splits: Splits
    train: Encoded
    validation: Encoded
    test: Encoded
    initial: dict[str, np.ndarray]
    notes: list[str]
    max_len: int  # longest pair in tokens: the run's limit within the model's


class NonFiniteLoss(MTCoreError):
    pass


# ---- preparation ---------------------------------------------------------------------------------
def prepare(rc: RunConfig, out: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None,
            before_write=None) -> Prepared:
    """Read and split the data, get a tokenizer (the run's saved one, the checkpoint's Marian one,
    or a new one trained on the training split), encode, and fix the initial weights.
    ``before_write`` is called once the data has been read, before the first file is written."""
    out = Path(out)
    notes = []
    corpus = load_corpus(rc.data, source_lang=rc.source_lang, target_lang=rc.target_lang, on_error=rc.on_error,
                         synthetic_size=rc.synthetic_size, seed=rc.seed)
    if corpus.skipped:
        notes.append(f"skipped {len(corpus.skipped)} pairs with an empty side (first: {corpus.skipped[0]})")
    splits = split(corpus, validation=rc.validation, test=rc.test, seed=rc.seed)

    hf_dir = None if rc.model in PRESETS else Path(rc.model)
    tokenizer_dir = tokenizer_dir or rc.tokenizer
    if tokenizer_dir is not None:
        tokenizer = load_tokenizer(tokenizer_dir)
    elif hf_dir is not None:
        if not is_marian_dir(hf_dir):
            raise MTCoreError(f"{hf_dir}: a checkpoint needs its own tokenizer (source.spm and vocab.json) beside it")
        tokenizer = load_tokenizer(hf_dir)
    else:
        # By default the tokenizer's vocabulary is the preset's (tiny 512, small 8000, ...); a small
        # corpus gets fewer pieces. The model's embedding follows the tokenizer.
        vocab = rc.vocab_size or PRESETS[rc.model].vocab_size
        tokenizer = SentencePieceTokenizer.train([*splits.train.source, *splits.train.target], vocab, seed=rc.seed)
    if before_write is not None:
        before_write()
    if _main_process(rc):  # every process trains the same tokenizer (seeded); one saves it
        tokenizer.save(out / "tokenizer")

    if hf_dir is not None:
        cfg, initial = read_hf_checkpoint(hf_dir)
    else:
        cfg = ModelConfig.preset(rc.model, vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id,
                                 eos_id=tokenizer.eos_id, decoder_start_id=tokenizer.pad_id)
        initial = None
    if rc.dropout is not None:
        cfg = cfg.replace(dropout=rc.dropout)
    check_fits(tokenizer, cfg)
    max_len = min(rc.max_len, cfg.max_len)
    train = encode(tokenizer, splits.train.source, splits.train.target, max_len=max_len, too_long="drop")
    validation = encode(tokenizer, splits.validation.source, splits.validation.target, max_len=max_len,
                        too_long="truncate")
    test = encode(tokenizer, splits.test.source, splits.test.target, max_len=max_len, too_long="truncate")
    if train.dropped:
        notes.append(f"dropped {train.dropped} training pairs longer than {max_len} tokens")
    for name, data in (("validation", validation), ("test", test)):
        if data.truncated:
            notes.append(f"truncated {data.truncated} {name} pairs to {max_len} tokens")
    if initial is None:
        initial = init_tree(cfg, seed=rc.seed)
    return Prepared(cfg, tokenizer, splits, train, validation, test, initial, notes, max_len)


# ---- one framework's run ---------------------------------------------------------------------------
class RunIO:
    """What a run leaves on disk besides the rank files: ``run.json``, ``metrics.json``,
    checkpoints and the progress bar. Off the main process it does nothing, so the Trainer keeps
    one loop however many processes run it."""

    def __init__(self, out: Path, main: bool, progress: bool):
        self.out, self.main, self.progress = out, main, progress

    def write(self, name: str, data: Any) -> None:
        if self.main:
            write_json(self.out / name, data)

    def bar(self, total: int, desc: str):
        return _progress(total, desc, self.progress and self.main)

    def save_checkpoint(self, be, state, epoch: int, cfg: ModelConfig, framework: str) -> None:
        """``checkpoints/epoch-N/{model,optimizer}.safetensors`` in framework-neutral names (any
        framework, any device count resumes from it), then the ``latest`` pointer."""
        if not self.main:
            return
        root = self.out / "checkpoints"
        directory = root / f"epoch-{epoch}"
        directory.mkdir(parents=True, exist_ok=True)
        params = be.to_numpy(be.state_params(state))
        step, moments = be.optimizer_to_numpy(state)
        meta = {"framework": framework, "epoch": str(epoch), "step": str(step)}
        save_safetensors(directory / "model.safetensors", params, meta)
        save_safetensors(directory / "optimizer.safetensors", moments, meta)
        # The pointer moves last, atomically: a crash mid-save leaves the previous checkpoint current.
        write_json(root / "latest", {"epoch": epoch, "step": step, "dir": directory.name,
                                     "model_config": dataclasses.asdict(cfg)})
        for old in root.glob("epoch-*"):
            if old.name != directory.name:
                shutil.rmtree(old, ignore_errors=True)


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
        self.be = mtcore.backend(rc.framework, rc.device, devices=rc.devices)
        self.world = self.be.world
        self.io = RunIO(self.out, self.world.main, progress)
        self.global_batch = rc.global_batch()
        self.max_len = prepared.max_len
        self.step_fn = self.be.make_train_step(self.cfg, self.tcfg, compile=rc.compile)
        self.eval_fn = self.be.make_eval_step(self.cfg, self.tcfg)
        if resume:
            self.metrics = read_json(self.out / "metrics.json")
            self.epoch, self.state = self._load_checkpoint()
            self.metrics["epochs"] = [e for e in self.metrics["epochs"] if e["epoch"] <= self.epoch]
            self.metrics["status"] = "running"
            self.metrics["run"].update(devices=rc.devices, world=self.world.as_dict(),
                                       global_batch_size=self.global_batch, devices_used=self._devices_used())
            self.metrics.pop("test", None)
        else:
            self.epoch = 0
            self.state = self.be.init_train_state(self.be.from_numpy(self.cfg, prepared.initial), self.tcfg)
            self.metrics = {
                "run": {**dataclasses.asdict(rc), "model_config": dataclasses.asdict(self.cfg),
                        "num_params": self.cfg.num_params(), "devices_used": self._devices_used(),
                        "world": self.world.as_dict(), "global_batch_size": self.global_batch,
                        "train_pairs": len(prepared.train), "validation_pairs": len(prepared.validation),
                        "test_pairs": len(prepared.test), "notes": prepared.notes},
                "initial": None, "epochs": [], "test": None, "status": "running",
            }
            self.io.write("run.json", {"run_config": dataclasses.asdict(rc), "model_config": dataclasses.asdict(self.cfg)})
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
        rows = self.world.rows(self.global_batch)
        my_tokens = sum(b.tokens_in(rows) for b in batches)
        first_step_s = None
        start = time.perf_counter()
        for i, planned in enumerate(batches):
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
        self.be.sync(self.state)
        seconds = time.perf_counter() - start
        bar.close()
        self.epoch = epoch
        record = {
            "epoch": epoch,
            "steps": len(batches),
            "training_time": seconds,
            "first_step_time": first_step_s,
            "tokens": tokens,
            "tokens_per_sec": tokens / seconds,
            "train_loss": float(np.mean(losses)),
            "train_accuracy": float(np.mean(accuracies)),
            "step_losses": losses,
        }
        record.update(self._validate())
        self.io.save_checkpoint(self.be, self.state, epoch, self.cfg, self.rc.framework)
        self.metrics["epochs"].append(record)
        self.io.write("metrics.json", self.metrics)
        # Every process: what it did (its rows' tokens, its own clock), for time averaged and
        # tokens/s summed over ranks.
        write_json(rank_file(self.out, self.world.process, epoch), {
            "epoch": epoch, "process": self.world.process, "pid": os.getpid(), "framework": self.rc.framework,
            "device": self.rc.device,
            "training_time": seconds, "tokens_per_sec": my_tokens / seconds, "tokens": my_tokens,
            "validation_loss": record["validation_loss"], "bleu": record["bleu"],
            "world_size": self.world.devices, "processes": self.world.processes,
            "devices": self.world.local_devices, "local_batch": self.global_batch // self.world.processes,
            "global_batch": self.global_batch, "threads": _threads(),
        })
        return record

    def _stop(self, epoch: int, step: int, loss: float, bar) -> None:
        bar.close()
        last = self.epoch
        where = (f"the last good checkpoint is {self.out / 'checkpoints' / f'epoch-{last}'} (epoch {last})"
                 if last else "no checkpoint was written (it diverged in the first epoch)")
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


def _main_process(rc: RunConfig) -> bool:
    """Whether this is process 0, known before any framework starts (torchrun's RANK, or the
    JAX process id given)."""
    if rc.process_id is not None:
        return rc.process_id == 0
    return int(os.environ.get("RANK", 0)) == 0


def _threads() -> dict[str, Any]:
    """What one process had: the cores it may run on, and torch's intra-op threads if torch runs."""
    import sys

    from mtcore.perf.threads import usable_cores

    torch = sys.modules.get("torch")
    return {"cores": list(usable_cores()), "torch_threads": torch.get_num_threads() if torch else None}


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=not enabled, leave=False, dynamic_ncols=True)


# ---- entry points ------------------------------------------------------------------------------------
# What a run directory holds (train's and compare's): its presence means --out holds a run.
RUN_FILES = ("run.json", "metrics.json", "checkpoints", "tokenizer", "compare.json", "report.md")
# Options a resumed run may change: how long and on what it runs, not what it learns or from what.
RESUMABLE = frozenset({"epochs", "devices", "global_batch_size", "batch_size", "coordinator", "num_processes",
                       "process_id", "threads"})


def option_flag(name: str) -> str:
    """A RunConfig field as its command-line option: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


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
                               global_batch_size=saved.global_batch(), coordinator=rc.coordinator,
                               num_processes=rc.num_processes, process_id=rc.process_id, threads=rc.threads)


def check_request(rc: RunConfig, out: Path, *, resume: bool, overwrite: bool,
                  given: set[str] | None) -> tuple[RunConfig, bool]:
    """What ``train`` checks before writing anything (also what the CLI checks before launching
    torchrun's ranks): ``(the config to run, whether --out must be cleared before the first
    write)``. Writes nothing."""
    if resume and overwrite:
        raise MTCoreError("--resume continues the run in --out, --overwrite replaces it: choose one")
    check_device(rc)
    if resume:
        return resumed_config(rc, out, given), False
    # One process claims --out: the others would find the main one's first files there.
    return rc, claim_out(out, overwrite) if _main_process(rc) else False


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


def compare(rc: RunConfig, out: str | os.PathLike, *, frameworks=("torch", "jax"), devices=(1,),
            scaling: str = "weak", target_loss: float | None = None, progress: bool = True,
            overwrite: bool = False) -> Path:
    """``mtcore compare``: every framework from the same initial weights on the same batches, then
    ``report.md`` and plots. On one device the frameworks' epochs interleave (the order
    alternates), so drift hits both alike; with ``devices`` (e.g. ``(1, 2)``) every framework
    trains at every device count, weak scaling (per-device batch fixed) or strong (global batch
    fixed), torch's multi-device runs as torchrun ranks."""
    from mtcore.train.report import write_report

    out = Path(out)
    devices = tuple(sorted(set(devices)))
    if scaling not in ("weak", "strong"):
        raise MTCoreError(f"--scaling must be weak or strong, got {scaling!r}")
    fixed = rc.global_batch_size or rc.batch_size if scaling == "strong" else None
    if fixed is not None and fixed % max(devices):
        raise MTCoreError(f"--scaling strong: the global batch {fixed} must split evenly over --devices {max(devices)}")
    for fw in frameworks:
        check_device(dataclasses.replace(rc, framework=fw))
    clear = claim_out(out, overwrite)
    # The data is read before an old comparison goes (a bad --data must not cost it); the
    # tokenizer every run uses is trained once, here.
    prepared = prepare(rc, out, before_write=(lambda: _clear(out)) if clear else None)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "compare.json", {"frameworks": list(frameworks), "devices": list(devices), "scaling": scaling,
                                      "target_loss": target_loss})
    if devices == (1,):
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
        from mtcore.perf.threads import usable_cores

        threads = max(1, len(usable_cores()) // max(devices))
    for n in devices:
        for fw in frameworks:
            run = dataclasses.replace(rc, framework=fw, devices=n, global_batch_size=fixed, threads=threads,
                                      tokenizer=str(out / "tokenizer"))
            # Each run in a process of its own: its own thread budget and framework start-up
            # (XLA sizes its CPU pool and host devices once per process).
            _train_in_a_process(run, out / f"{fw}-{n}")
    return write_report(out)


def _train_in_a_process(rc: RunConfig, out: Path) -> None:
    import signal
    import subprocess
    import sys

    if rc.framework == "torch" and rc.devices > 1:
        from mtcore.torch.parallel import launch

        launch(rc.devices, ["train", *run_arguments(rc), "--out", str(out), "--quiet"], log_dir=out / "logs")
        return
    command = [sys.executable, "-m", "mtcore", "train", *run_arguments(rc), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.returncode:
        last = (err.strip().splitlines() or ["(no output)"])[-1]
        raise MTCoreError(f"{rc.framework} on {rc.devices} device(s) failed: {last}")


def run_arguments(rc: RunConfig) -> list[str]:
    """``rc`` as ``mtcore train`` options: what a launched rank is told."""
    args = []
    for f in dataclasses.fields(rc):
        value = getattr(rc, f.name)
        if value is not None:
            args += [option_flag(f.name), str(value)]
    return args
