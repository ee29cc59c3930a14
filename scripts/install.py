"""Install mtcore into the running Python with a CPU build of PyTorch, unless one is there already.

The one install step that `make`, `.ci/run`, the GitHub workflow and tox all call. pyproject.toml
declares a torch *range*, because users bring the build their hardware needs (CPU, CUDA, ROCm);
but on the public package index an unpinned torch -- and for Linux x86-64 even the pinned one -- is
the CUDA build, several GB. So:

1. a torch that already imports is kept (your CUDA or ROCm build stays yours);
2. otherwise ask pip, without downloading anything, which wheel the configured indexes would give
   for ``MTCORE_TORCH`` (default below): a wheel without CUDA dependencies is installed from there
   (macOS; a machine or mirror that serves the CPU build, as this project's CI machine does);
3. otherwise it comes from PyTorch's own CPU index.

Then ``pip install -e ".[EXTRAS]"`` (default: all). Usage:
    python scripts/install.py [--extras all|jax,test|...] [--no-torch]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The build CI tests against; any release in pyproject's range works (MTCORE_TORCH='torch==2.9.1').
DEFAULT_TORCH = "torch==2.13.0"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# Dependencies that only a CUDA build of torch declares.
CUDA_MARKERS = ("nvidia-", "triton")


def pip(*args: str, capture: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=not capture, text=True, capture_output=capture)


def resolves_to_cpu_build(spec: str) -> tuple[bool, str]:
    """Whether the configured indexes would install a CPU build for ``spec`` (metadata only)."""
    done = pip("install", "--dry-run", "--quiet", "--no-deps", "--ignore-installed", "--report", "-", spec, capture=True)
    if done.returncode != 0:
        return False, f"pip could not resolve {spec}: {done.stderr.strip().splitlines()[-1:] or ''}"
    try:
        chosen = json.loads(done.stdout)["install"][0]
    except (ValueError, KeyError, IndexError):
        return False, "pip's report was unreadable"
    requires = chosen.get("metadata", {}).get("requires_dist") or []
    version = chosen.get("metadata", {}).get("version", "?")
    cuda = [r for r in requires if r.lower().startswith(CUDA_MARKERS) and "extra ==" not in r]
    if cuda:
        return False, f"the configured index serves torch {version} with CUDA ({cuda[0].split(';')[0].strip()}, ...)"
    return True, f"the configured index serves torch {version} without CUDA dependencies"


def install_torch(spec: str) -> None:
    if importlib.util.find_spec("torch") is not None:
        import torch

        print(f"torch {torch.__version__} is already installed: kept", flush=True)
        return
    cpu, why = resolves_to_cpu_build(spec)
    print(why, flush=True)
    if cpu:
        pip("install", "--no-compile", spec)
    else:
        print(f"installing {spec} from PyTorch's CPU index instead", flush=True)
        pip("install", "--no-compile", "--index-url", CPU_INDEX, "--extra-index-url", "https://pypi.org/simple", spec)


# What mtcore's processes import, in two halves that write their bytecode side by side: the
# frameworks' own lazily imported parts (torch.compile, the distributed engines, the profiler) are
# named, since mtcore imports them only when a run asks for them.
WARM = (
    ["mtcore.torch.backend", "torch._dynamo", "torch._inductor.compile_fx",
     "torch._inductor.codegen.cpp", "torch.distributed.fsdp", "torch.distributed.tensor.parallel",
     "torch.distributed.tensor.debug", "torch.distributed.run", "torch.distributed.checkpoint", "torch.profiler",
     "torch.utils.cpp_extension", "torch._inductor.fx_passes.joint_graph", "transformers.models.marian.modeling_marian"],
    ["mtcore.jax.backend", "mtcore.cli", "mtcore.train.run", "mtcore.train.report", "mtcore.train.runs",
     "mtcore.train.plots", "matplotlib.pyplot", "sacrebleu", "sentencepiece", "tokenizers", "safetensors.numpy",
     "pytest", "xdist", "pytest_benchmark.plugin", "hypothesis.strategies", "anyio.pytest_plugin"],
)


def byte_compile() -> None:
    """The bytecode of what mtcore's processes import, written by importing it once: pip
    compiles file by file on one core (turned off above), and compiling all of site-packages
    spends most of its time on what no mtcore process imports (transformers' other models,
    packages' own tests; docs/findings/2026-12-03-test-time.md). Without it every process would
    compile its modules again where Python may not write them (PYTHONDONTWRITEBYTECODE), as it
    does for a module that nothing here imports."""
    # Importing torch's compiler makes its cache folder in the temporary folder: one of our own, removed after.
    scratch = tempfile.mkdtemp(prefix="mtcore-install-")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "", "TMPDIR": scratch}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    # An extra that was not installed leaves its modules out, not the install.
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    try: importlib.import_module(m)\n    except Exception: pass"
    halves = [subprocess.Popen([sys.executable, "-c", code, *modules], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL) for modules in WARM]
    print("+ bytecode of:", ", ".join(m for modules in WARM for m in modules), flush=True)
    for half in halves:
        half.wait()
    shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extras", default="all", help="mtcore extras to install (default: %(default)s)")
    parser.add_argument("--no-torch", action="store_true", help="install no torch (a TPU VM: JAX only)")
    args = parser.parse_args(argv)
    if not args.no_torch:
        install_torch(os.environ.get("MTCORE_TORCH", DEFAULT_TORCH))
    pip("install", "--quiet", "--no-compile", "-e", f"{ROOT}[{args.extras}]")
    byte_compile()
    return 0


if __name__ == "__main__":
    sys.exit(main())
