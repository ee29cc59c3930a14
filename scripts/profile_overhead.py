"""Does ``--profile`` cost a run anything when it is off, and what does it cost when on? Paired,
interleaved ``mtcore train`` runs of one framework, read from their own step clocks:

- ``off`` against ``before``: this tree with ``--profile off`` against a base commit (a git
  worktree of ``--base``, which has no ``--profile``): the trainer's loop as it was, and as it is;
- ``on`` against ``off``: this tree both ways.

Each pair runs its two sides one after the other, the side that goes first alternating; a run is
two epochs of ``tiny`` on the synthetic corpus, one process, one pinned thread. The figure per run
is the mean step of epoch 2 (its steps' time over its steps: epoch 1 holds compilation and, with
``--profile on``, the traced steps), and epoch 1's time for the traced epoch.

    python scripts/profile_overhead.py --base 68a0e88 --framework torch --pairs 5 --out DIR

Prints the paired ratios (median and range) and writes ``DIR/overhead.json``.
Findings: docs/findings/ (the page that used this script names it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = ["--model", "tiny", "--epochs", "2", "--synthetic-size", "4000", "--max-len", "16", "--eval-sentences", "0",
       "--validation", "16", "--test", "16", "--threads", "1", "--quiet"]


def run(tree: Path, framework: str, out: Path, profile: str | None) -> dict:
    """One run in ``tree``; its epochs' times per step."""
    args = [sys.executable, "-m", "mtcore", "train", "--framework", framework, "--out", str(out), *RUN]
    if profile is not None:
        args += ["--profile", profile]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    subprocess.run(args, cwd=tree, env=env, check=True, capture_output=True)
    epochs = json.loads((out / "metrics.json").read_text())["epochs"]
    shutil.rmtree(out)
    return {"epoch1_s": epochs[0]["training_time"], "step_s": epochs[1]["training_time"] / epochs[1]["steps"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="a commit before --profile")
    parser.add_argument("--framework", default="torch", choices=("torch", "jax"))
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[tuple[dict, dict]]] = {"off vs before": [], "on vs off": []}
    with tempfile.TemporaryDirectory(prefix="mtcore-overhead-") as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), args.base], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            for i in range(args.pairs):
                for name, a, b in (("off vs before", (ROOT, "off"), (base, None)), ("on vs off", (ROOT, "on"),
                                                                                   (ROOT, "off"))):
                    sides = [a, b] if i % 2 == 0 else [b, a]
                    got = {id(s): run(s[0], args.framework, Path(tmp) / "run", s[1]) for s in sides}
                    results[name].append((got[id(a)], got[id(b)]))
                    print(f"pair {i + 1} {name}: step {got[id(a)]['step_s'] * 1e3:.2f} / {got[id(b)]['step_s'] * 1e3:.2f} ms, "
                          f"epoch 1 {got[id(a)]['epoch1_s']:.2f} / {got[id(b)]['epoch1_s']:.2f} s", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, capture_output=True)
    summary = {}
    for name, rows in results.items():
        for key in ("step_s", "epoch1_s"):
            ratios = [a[key] / b[key] for a, b in rows]
            summary[f"{name} {key}"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
            print(f"{args.framework} {name}, {key}: ratio median {statistics.median(ratios):.3f} "
                  f"({min(ratios):.3f}-{max(ratios):.3f}, {len(ratios)} pairs)")
    (args.out / "overhead.json").write_text(json.dumps({"framework": args.framework, "base": args.base, "summary": summary,
                                                        "pairs": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
