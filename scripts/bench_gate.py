"""The pull-request performance gate: the head's benches against the base's and the head's mtcore,
base and head sessions taking turns round by round on one core, three pairs, then
``mtcore bench-compare``.

    python scripts/bench_gate.py --base origin/main            # what the workflow runs
    python scripts/bench_gate.py --base HEAD                    # an A/A run: the gate's own noise
    python scripts/bench_gate.py --base HEAD --head-plugin tests/perf/slower_step.py   # a real slowdown
    python scripts/bench_gate.py --once run.json                # the subset once (main's history)

Base and head are checked out side by side, ``TMP/base`` and ``TMP/head`` (git worktrees; the head
also gets this checkout's uncommitted ``mtcore/``), and this checkout's ``benches/``,
``conftest.py`` and ``pytest.ini`` are copied into both: the same benches measure both trees, only
``mtcore/`` differs, and both run from the same kind of path. (With the head in the checkout and
the base in a worktree, A/A gates had the head's train steps faster in every median; the cause is
not pinned down, the symmetry removes it whatever it is: docs/findings/2026-12-01-figures-moved-from-code-comments.md.)

First, once per tree and both trees at once, the ``costs`` bench (untimed): what each framework x
mesh's step moves and a device holds, fixed by the program, the shapes and the engine; every timed
session carries its tree's into its JSON (``--costs-from``) and ``mtcore bench-compare`` judges them
exactly: any increase fails the gate (``--head-plugin tests/perf/extra_collective.py`` shows it).

Every session runs the ``gate`` subset (train step and decode, tiny and small, fp32, default
variants) on one pinned core (``--threads 1``: torch, XLA and BLAS pools of one), writing
``--benchmark-json`` files into ``--out``. A pair's two sessions run at once on that same core but
never together: they take turns through two pipes (``benches/turns.py``), handing over before every
timed round, so base and head rounds alternate and a slow spell of the machine hits both alike. The
side that holds the first turn alternates between pairs (base, head, base). Run one after the other,
whole sessions of an unchanged tree landed further apart than the regressions worth catching (a
step's rounds switch between two speeds for seconds at a time: docs/findings/2026-11-27-gate-calibration.md).

Exit status: bench-compare's (0 no regression, 1 regression, 2 runs that cannot be compared); 1 when
the head's benches fail; 0 with a warning when the base cannot run the head's benches (the gate is
skipped, not failed: the change may be the benches themselves).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benches"))
import turns  # noqa: E402 (the harness's turn-taking protocol, which both sessions speak)

HARNESS = ("benches", "conftest.py", "pytest.ini")
# pytest's exit status when nothing was selected, and on options it does not know: benches without a
# costs bench (or pytest_args that deselect it) have nothing to judge exactly; the timed pairs still run.
NO_COSTS = (4, 5)
# One pinned core per session, the same pools for every library: the gate's numbers are per core.
PINNED_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
SESSION_ARGS = ["-m", "gate", "--threads", "1", "-q", "-p", "no:cacheprovider", "--benchmark-max-time", "1"]


def warn(message: str) -> None:
    prefix = "::warning title=performance gate skipped::" if os.environ.get("GITHUB_ACTIONS") else "WARNING: "
    print(prefix + message, flush=True)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a") as f:
            f.write(f"## Performance gate skipped\n\n{message}\n")


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def _env() -> dict[str, str]:
    """This process's environment, pinned, without a PYTHONPATH that would pick another mtcore."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | PINNED_ENV


def _pytest(args: list[str], plugin: Path | None) -> tuple[list[str], dict[str, str]]:
    """``pytest benches ARGS`` in the tree it is started in (whose mtcore is imported: ``python -m``
    puts the working directory first on sys.path), with ``plugin`` loaded where one is given."""
    env = _env()
    command = [sys.executable, "-m", "pytest", "benches", *args]
    if plugin is not None:
        env["PYTHONPATH"] = str(plugin.parent)
        command += ["-p", plugin.stem]
    return command, env


def _command(json_path: Path, plugin: Path | None, extra: list[str]) -> tuple[list[str], dict[str, str]]:
    """One pytest session of the gate subset."""
    return _pytest([*SESSION_ARGS, "--benchmark-json", str(json_path), *extra], plugin)


def session(tree: Path, json_path: Path, plugin: Path | None, extra: list[str]) -> tuple[int, float]:
    """One session alone. Returns (exit status, seconds)."""
    args, env = _command(json_path, plugin, extra)
    start = time.perf_counter()
    with open(json_path.with_suffix(".log"), "w") as log:
        rc = subprocess.run(args, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    return rc, time.perf_counter() - start


def costs(sessions: dict[str, tuple[Path, Path, Path | None]], extra: list[str]) -> dict[str, tuple[int, float]]:
    """What each tree's step moves and a device holds (``pytest benches -m costs``, untimed), the
    trees at once: fixed by the program, so collected once per tree, not per pair, and carried
    into every timed session's JSON (``--costs-from``). Returns (exit status, seconds) per side."""
    procs, logs, done = {}, [], {}
    start = time.perf_counter()
    try:
        for side, (tree, json_path, plugin) in sessions.items():
            # OPTION=VALUE: pytest reads the command line for its rootdir before the benches' conftest
            # declares the option, and would take a separate path for one of the files to test.
            args, env = _pytest(["-m", "costs", "--threads", "1", "-q", "-p", "no:cacheprovider",
                                 f"--costs-json={json_path}", *extra], plugin)
            logs.append(open(json_path.with_suffix(".log"), "w"))  # noqa: SIM115 (closed below)
            procs[side] = subprocess.Popen(args, cwd=tree, env=env, stdout=logs[-1], stderr=subprocess.STDOUT)
        for side, proc in procs.items():
            done[side] = (proc.wait(), time.perf_counter() - start)
        return done
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()


def pair(sessions: list[tuple[Path, Path, Path | None]], extra: list[str]) -> list[tuple[int, float]]:
    """Two sessions at once, taking turns round by round (benches/turns.py): each holds the turn in
    turn, the first gets the first one. Returns (exit status, seconds) of each."""
    ends, fds = turns.connect()
    procs, logs = [], []
    start = time.perf_counter()
    try:
        for (tree, json_path, plugin, *own), (spec, passed) in zip(sessions, ends, strict=True):
            args, env = _command(json_path, plugin, extra + [a for more in own for a in more])
            env[turns.ENV] = spec
            logs.append(open(json_path.with_suffix(".log"), "w"))  # noqa: SIM115 (closed below)
            procs.append(subprocess.Popen(args, cwd=tree, env=env, stdout=logs[-1], stderr=subprocess.STDOUT,
                                          pass_fds=passed))
        # Only the sessions may hold the pipes: a session sees its partner finish as end of file.
        while fds:
            os.close(fds.pop())
        done = []
        for proc in procs:
            rc = proc.wait()
            done.append((rc, time.perf_counter() - start))
        return done
    finally:
        for proc in procs:  # a cancelled gate (SIGTERM) stops its sessions too
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
        for fd in fds:  # left open only when starting a session failed
            os.close(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", help="the base commit or ref (a PR's base sha)")
    parser.add_argument("--once", type=Path, metavar="JSON", help="no base: one session of this tree, into JSON")
    parser.add_argument("--out", type=Path, default=Path("gate"), help="where the JSON runs and logs go (default: gate)")
    parser.add_argument("--pairs", type=int, default=3, help="base/head pairs (default: %(default)s)")
    parser.add_argument("--head-plugin", type=Path,
                        help="a pytest plugin loaded in the head's sessions only (calibration: tests/perf/slower_step.py)")
    parser.add_argument("--allow-regression", action="store_true", help="report a regression but exit 0")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments for every session (after --)")
    args = parser.parse_args(argv)
    if args.once:
        path = args.once.resolve()
        costs_json = path.with_name(path.stem + "-costs.json")
        (rc_costs, costs_s), = costs({"this": (ROOT, costs_json, None)}, args.pytest_args).values()
        rc, seconds = session(ROOT, path, None, args.pytest_args + ([f"--costs-from={costs_json}"]
                                                                     if rc_costs == 0 and costs_json.is_file() else []))
        print(f"costs: {costs_s:.0f} s, pytest exit {rc_costs}; gate subset: {seconds:.0f} s, pytest exit {rc}; "
              f"{args.once} (log: {args.once.with_suffix('.log')})")
        return rc or (rc_costs if rc_costs not in NO_COSTS else 0)
    if not args.base:
        parser.error("give --base (or --once)")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    plugin = args.head_plugin.resolve() if args.head_plugin else None
    try:
        commit = git("rev-parse", "--verify", f"{args.base}^{{commit}}")
    except subprocess.CalledProcessError as e:
        print(f"bench_gate: --base {args.base}: not a commit here ({e.stderr.strip()})", file=sys.stderr)
        return 2
    # A cancelled job (SIGTERM) still removes the worktree and stops the session it was running.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    with tempfile.TemporaryDirectory(prefix="mtcore-gate-") as tmp:
        trees = {"base": Path(tmp) / "base", "head": Path(tmp) / "head"}
        try:
            git("worktree", "add", "--detach", str(trees["base"]), commit)
            git("worktree", "add", "--detach", str(trees["head"]), "HEAD")
            return _gate(trees, commit, out, args, plugin)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
            subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)


def _replace(source: Path, target: Path) -> None:
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    if source.is_dir():
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        shutil.copyfile(source, target)


def _gate(trees: dict[str, Path], commit: str, out: Path, args, plugin: Path | None) -> int:
    base = trees["base"]
    _replace(ROOT / "mtcore", trees["head"] / "mtcore")  # the head as it is here, committed or not
    for tree in trees.values():
        for name in HARNESS:  # this checkout's benches measure both trees
            _replace(ROOT / name, tree / name)
    env = _env()
    collect = subprocess.run([sys.executable, "-m", "pytest", "benches", "--collect-only", "-q", "-m", "gate",
                              "-p", "no:cacheprovider"], cwd=base, env=env, capture_output=True, text=True)
    if collect.returncode != 0:
        tail = " | ".join((collect.stdout + collect.stderr).strip().splitlines()[-5:])
        warn(f"the base {commit[:12]} cannot collect the head's benches (pytest exit {collect.returncode}): {tail}")
        return 0
    runs: dict[str, list[Path]] = {"base": [], "head": []}
    print(f"gate: base {commit[:12]} vs head {git('rev-parse', '--short=12', 'HEAD')} (+ working tree), "
          f"{args.pairs} pairs taking turns; JSON and logs in {out}", flush=True)
    # What each tree's step moves and a device holds: once per tree, both at once (untimed).
    costs_json = {side: out / f"{side}-costs.json" for side in trees}
    collected = costs({side: (trees[side], costs_json[side], plugin if side == "head" else None) for side in trees},
                      args.pytest_args)
    print("  costs (untimed, both trees at once): " + ", ".join(
        f"{side} {s:.0f} s (pytest exit {rc})" for side, (rc, s) in collected.items()), flush=True)
    if collected["head"][0] not in (0, *NO_COSTS):
        print(f"bench_gate: the head's costs bench failed; see {costs_json['head'].with_suffix('.log')}", file=sys.stderr)
        return 1
    if collected["base"][0] not in (0, *NO_COSTS):
        warn(f"the base {commit[:12]} failed the head's costs bench ({costs_json['base'].with_suffix('.log')}): "
             "what a step moves is not compared")
    carried = {side: [f"--costs-from={costs_json[side]}"] if collected[side][0] == 0 and costs_json[side].is_file()
               else [] for side in trees}
    for i in range(args.pairs):
        order = ("base", "head") if i % 2 == 0 else ("head", "base")
        paths = {side: out / f"{side}-{i + 1}.json" for side in order}
        results = pair([(trees[side], paths[side], plugin if side == "head" else None, carried[side]) for side in order],
                       args.pytest_args)
        result = dict(zip(order, results, strict=True))
        print(f"  pair {i + 1}/{args.pairs}, taking turns, {order[0]} first: "
              + ", ".join(f"{side} {result[side][1]:.0f} s (pytest exit {result[side][0]})" for side in order),
              flush=True)
        for side in ("head", "base"):  # broken benches fail the gate, even where the base broke too
            rc, path = result[side][0], paths[side]
            if rc != 0 and side == "base":
                warn(f"the base {commit[:12]} failed the head's benches (pytest exit {rc}; {path.with_suffix('.log')})")
                return 0
            if rc != 0:
                print(f"bench_gate: the head's benches failed (pytest exit {rc}); see {path.with_suffix('.log')}",
                      file=sys.stderr)
                return 1
            source = json.loads(path.read_text())["machine_info"].get("mtcore", {}).get("source")
            if source is not None and Path(source).resolve() != trees[side].resolve():
                print(f"bench_gate: the {side} session measured the mtcore in {source}, not {trees[side]}",
                      file=sys.stderr)
                return 2
            runs[side].append(path)
    # The installed mtcore (the head's, installed from this checkout) judges.
    from mtcore.cli import main as mtcore

    compare = ["bench-compare", "--base", *map(str, runs["base"]), "--head", *map(str, runs["head"]),
               "--json", str(out / "verdicts.json")]
    return mtcore(compare + (["--allow-regression"] if args.allow_regression else []))


if __name__ == "__main__":
    sys.exit(main())
