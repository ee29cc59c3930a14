"""``RunConfig``: what ``mtcore train`` is asked, every option declared once (``mtcore/cli.py``
generates the command line from its fields), and how a config is written back as options."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

from mtcore.backend import BACKENDS
from mtcore.config import COMPILE_MODES, PRECISIONS, PRESETS, TrainConfig, is_checkpoint_dir
from mtcore.devices import DEVICE_KINDS
from mtcore.errors import MTCoreError
from mtcore.parallel import MeshShape, global_batch_size


def option(default: Any, help: str, **argparse: Any) -> Any:
    """A ``RunConfig`` field and its command-line option, declared together."""
    return field(default=default, metadata={"help": help, **argparse})


# What a run may train: every backend (mtcore's two implementations, the HF baseline on torch's
# train step).
RUN_FRAMEWORKS = tuple(BACKENDS)


@dataclass(frozen=True)
class RunConfig:
    """What ``mtcore train`` is asked. One config serves both frameworks; ``framework``,
    ``device`` and ``devices`` only say where it runs. Every field is a command-line option
    (``mtcore/cli.py`` generates them), declared here once."""

    framework: str = option("torch", "torch, jax, or hf (Hugging Face MarianMTModel under torch's train step: the "
                                     "baseline, one device)", choices=RUN_FRAMEWORKS)
    device: str = option("cpu", "the kind of device to train on", choices=DEVICE_KINDS)
    devices: int = option(1, "devices to train on, data parallel (torch: one process each, through torchrun; jax: "
                             "one process drives its devices); the same as --mesh data:N")
    mesh: MeshShape | None = option(None, "device mesh AXIS:N[,AXIS:N...] over the axes data (replicate, split the batch), fsdp "
                                    "(split the batch, shard weights, gradients and AdamW state) and tensor (split heads "
                                    "and FFN units): fsdp:2, tensor:2, fsdp:2,tensor:2 (docs/parallelism.md)")
    model: str = option("tiny", "preset (tiny, small, base, marian-en-hu) or Hugging Face Marian checkpoint dir")
    data: str = option("synthetic", "'synthetic', a prefix PATH with PATH.en and PATH.hu beside it, a .tsv file, a "
                                    "saved HF dataset dir, or hf:NAME")
    source_lang: str = option("en", "source language code")
    target_lang: str = option("hu", "target language code")
    # The defaults are a recipe that works: tiny on the synthetic corpus reaches BLEU > 90 in 6 epochs.
    epochs: int = option(6, "training epochs")
    batch_size: int = option(32, "sentence pairs per device per step (global batch = this x --devices; on a mesh, x "
                                 "data x fsdp: a tensor-parallel group shares its rows)")
    global_batch_size: int | None = option(None, "sentence pairs per step over all devices (overrides --batch-size; "
                                                 "a multiple of --devices)")
    lr: float = option(3e-3, "peak learning rate (linear warm-up, then 1/sqrt decay)")
    warmup_steps: int = option(200, "learning-rate warm-up steps")
    precision: str = option("fp32", "compute precision", choices=PRECISIONS)
    compile: str = option("none", "torch: the train step's forward and loss through torch.compile ('default' mode, "
                                  "or 'reduce-overhead': CUDA graphs on a GPU); JAX always compiles",
                          choices=COMPILE_MODES)
    compile_cache: str = option("on", "keep compiled programs between runs, both frameworks alike (torch: inductor's "
                                      "cache; JAX: its persistent compilation cache), or compile every program from "
                                      "scratch", choices=("on", "off"))
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
    # Emulated hosts (mtcore.hosts): the run's processes spread over hosts with a network of their own.
    hosts: int | None = option(None, "CPU: spread the run over N emulated hosts on this machine (network namespaces, "
                                     "each its own address, hostname and link; needs root): one process per host for "
                                     "JAX, devices/N ranks per host for torch, each host pinned to its own cores "
                                     "(docs/hosts.md)")
    rate: str | None = option(None, "with --hosts: each host's link shaped to this rate (tc's spelling: 100mbit, 1gbit, "
                                    "500kbit); default unshaped")
    net_iface: str | None = option(None, "the network interface the run's collectives cross to other hosts (default: "
                                         "the one that routes to the rendezvous / coordinator address): its byte counters "
                                         "are recorded, and gloo is bound to it")
    tokenizer: str | None = option(None, "a saved tokenizer directory to use instead of training one")
    threads: int | None = option(None, "CPU: cores per device, pinned (default: every core the process may use)")
    profile: str = option("off", "write one Chrome-JSON trace per process (the framework's profiler) of a few steps "
                                 "of the first epoch, after compilation and DDP's bucket rebuild, and where each "
                                 "step's time went (docs/measurement.md#traces); --profile alone: on",
                          choices=("off", "on"), nargs="?", const="on")

    def __post_init__(self):
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise MTCoreError(what)

        need(self.framework in RUN_FRAMEWORKS,
             f"--framework: unknown framework {self.framework!r}; choose {', '.join(RUN_FRAMEWORKS)}")
        need(self.framework != "hf" or self.devices == 1, "--devices: the HF baseline trains on one device")
        need(self.device in DEVICE_KINDS, f"--device: unknown device {self.device!r}; choose {', '.join(DEVICE_KINDS)}")
        need(self.precision in PRECISIONS, f"--precision: unknown precision {self.precision!r}; choose fp32 or bf16")
        need(self.compile in COMPILE_MODES, f"--compile: unknown mode {self.compile!r}; choose {', '.join(COMPILE_MODES)}")
        need(self.compile == "none" or self.framework != "hf", "--compile: the HF baseline runs eager only")
        need(self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}")
        need(self.devices >= 1, f"--devices must be at least 1, got {self.devices}")
        if self.mesh is not None:
            need(self.framework != "hf", "--mesh: the HF baseline trains on one device")
            # The one MeshShape from here on (--mesh is parsed once), and the device count every
            # launcher reads.
            shape = MeshShape.of(self.devices, self.mesh)
            object.__setattr__(self, "mesh", shape)
            object.__setattr__(self, "devices", shape.devices)
        if self.hosts is not None:
            need(self.hosts >= 1, f"--hosts must be at least 1, got {self.hosts}")
            need(self.device == "cpu", f"--hosts: emulated hosts share this machine's CPU; not --device {self.device}")
        need(self.rate is None or self.hosts is not None, "--rate shapes the links of emulated hosts: give --hosts N too")
        from mtcore.hosts import parse_rate

        parse_rate(self.rate)  # one line on a spelling tc would not take
        need(self.batch_size >= 1, f"--batch-size must be positive, got {self.batch_size}")
        self.global_batch()  # raises on a global batch the devices cannot split
        need(math.isfinite(self.lr) and self.lr > 0, f"--lr (learning rate) must be a positive number, got {self.lr}")
        need(self.max_len >= 4, f"--max-len must be at least 4, got {self.max_len}")
        need(self.eval_sentences >= 0, f"--eval-sentences must be >= 0, got {self.eval_sentences}")
        need(self.on_error in ("raise", "skip"), f"--on-error must be raise or skip, got {self.on_error!r}")
        if self.model not in PRESETS and not is_checkpoint_dir(self.model):
            raise MTCoreError(
                f"--model {self.model!r}: not a preset ({', '.join(PRESETS)}) nor a Hugging Face checkpoint directory"
            )

    def mesh_shape(self) -> MeshShape:
        """The device mesh: ``--mesh``, or ``data:N`` for ``--devices N`` (``MeshShape.of``)."""
        return self.mesh or MeshShape.of(self.devices)

    def as_dict(self) -> dict[str, Any]:
        """The options as run.json keeps them: the mesh as it is written (``fsdp:2,tensor:2``)."""
        return {**dataclasses.asdict(self), "mesh": None if self.mesh is None else str(self.mesh)}

    def global_batch(self) -> int:
        return global_batch_size(self.mesh_shape(), self.batch_size, self.global_batch_size)

    def train_config(self) -> TrainConfig:
        return TrainConfig(learning_rate=self.lr, warmup_steps=self.warmup_steps, precision=self.precision,
                           seed=self.seed)



# Options a resumed run may change: how long and on what it runs, not what it learns or from what.
RESUMABLE = frozenset({"epochs", "devices", "mesh", "global_batch_size", "batch_size", "coordinator", "num_processes",
                       "process_id", "threads", "compile_cache", "hosts", "rate", "net_iface", "profile"})


def option_flag(name: str) -> str:
    """A RunConfig field as its command-line option: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")



def run_arguments(rc: RunConfig) -> list[str]:
    """``rc`` as ``mtcore train`` options: what a launched rank is told."""
    args = []
    for f in dataclasses.fields(rc):
        value = getattr(rc, f.name)
        if value is not None:
            args += [option_flag(f.name), str(value)]
    return args


def main_process(rc: RunConfig) -> bool:
    """Whether this is process 0, known before any framework starts (torchrun's RANK, or the
    JAX process id given)."""
    if rc.process_id is not None:
        return rc.process_id == 0
    return int(os.environ.get("RANK", 0)) == 0

