"""Why whole runs of an unchanged tree land apart: one benchmark case timed in several fresh
processes, one after another, with what each round cost besides its wall time.

    python scripts/process_modes.py --case torch-tiny-greedy --processes 12 --out DIR
    python scripts/process_modes.py --case torch-tiny-greedy --processes 12 --out DIR --perf   # + perf samples
    python scripts/process_modes.py --case torch-tiny-greedy --processes 12 --out DIR --together  # in pairs

Every process sets itself up as a bench session does (``mtcore.perf.setup.set_up``, one pinned
thread, mtcore's allocator settings), builds the case's inputs, warms up, then times ``--rounds``
rounds. Each round is followed by a fixed reference, a numpy matmul on the same core, so a slow
spell of the machine (another tenant, a throttled core) shows in both where a slow process shows in
the case alone. Per round it records wall time, the process's CPU time, minor page faults, context
switches and the machine's steal time; per process the transparent huge pages it holds.

With ``--perf`` each process runs under ``perf record -e cpu-clock`` (software sampling: a VM
often has no hardware counters), switched on for the timed rounds only (perf's ``--control``), and
the slowest and fastest processes' profiles are set side by side per shared object and symbol, in
milliseconds a round: time spread evenly over every symbol points at the CPU or memory (caches,
page layout), time in a few symbols at a different code path.

With ``--together`` the processes run in pairs, at once, on the same core, taking turns round by
round as the regression gate's base and head sessions do (``benches/turns.py``; each timed round
follows an untimed call of its own): a mode that belongs to the machine's moment hits both of a
pair alike, one that belongs to a process shows as a pair whose two medians differ.

Prints a table and writes ``DIR/modes.json`` (every round of every process).
Findings: docs/findings/ (the page that used this script names it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = {  # name: (framework, size, what is timed)
    "torch-tiny-greedy": ("torch", "tiny", "greedy"),
    "torch-tiny-beam": ("torch", "tiny", "beam"),
    "jax-tiny-greedy": ("jax", "tiny", "greedy"),
    "torch-tiny-step": ("torch", "tiny", "step"),
    "jax-tiny-step": ("jax", "tiny", "step"),
}


def steal_ticks(core: int) -> int:
    """The hypervisor's steal time of ``core`` so far, in clock ticks (/proc/stat's 8th field)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{core} "):
                return int(line.split()[8])
    return 0


def huge_pages_kb() -> int:
    try:
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def child(args) -> None:
    framework, size, what = CASES[args.case]
    sys.path.insert(0, str(ROOT / "benches"))
    import turns

    partner = turns.Turns()  # MTCORE_TURNS: the pipes to the other process of a pair (--together)
    partner.start()
    from mtcore.perf.setup import set_up

    setup = set_up([framework], threads=1)
    import numpy as np

    import mtcore

    be, cfg = mtcore.backend(framework), mtcore.ModelConfig.preset(size)
    if what == "step":  # the bench's own weights and batch, so the case is the bench's case
        from inputs import batch as bench_batch
        from inputs import weights

        tcfg = mtcore.TrainConfig()
        state = be.init_train_state(be.from_numpy(cfg, weights(size)), tcfg)
        batch = be.device_batch(bench_batch(size), cfg)
        step = be.make_train_step(cfg, tcfg)

        def run():
            nonlocal state
            state, m = step(state, batch)
            be.sync(m["loss"])
    else:
        from test_decode import MAX_LEN, NUM_BEAMS, _decode_weights, _source

        params, src = be.from_numpy(cfg, _decode_weights(cfg)), _source(size)
        beams = 1 if what == "greedy" else NUM_BEAMS

        def run():
            return be.generate(params, cfg, src.src_ids, src.src_mask, max_len=MAX_LEN, num_beams=beams)

    a = np.random.default_rng(0).standard_normal((192, 192), dtype=np.float32)

    def reference():
        for _ in range(4):
            a @ a

    for _ in range(3):
        run()
        reference()
    core = setup.threads.cores[0]
    ctl = os.environ.get("MODES_PERF_CTL")
    if ctl:
        with open(ctl, "w") as f:
            f.write("enable\n")
    rounds = []
    for _ in range(args.rounds):
        partner.swap()
        if partner.paired:
            run()  # as the gate does: the timed round follows a call of its own, not the partner's
        r0, c0, s0 = resource.getrusage(resource.RUSAGE_SELF), time.process_time(), steal_ticks(core)
        t0 = time.perf_counter()
        run()
        t1 = time.perf_counter()
        reference()
        t2 = time.perf_counter()
        r1, c1, s1 = resource.getrusage(resource.RUSAGE_SELF), time.process_time(), steal_ticks(core)
        rounds.append({"case_ms": (t1 - t0) * 1e3, "reference_ms": (t2 - t1) * 1e3, "cpu_ms": (c1 - c0) * 1e3,
                       "minflt": r1.ru_minflt - r0.ru_minflt, "nivcsw": r1.ru_nivcsw - r0.ru_nivcsw,
                       "nvcsw": r1.ru_nvcsw - r0.ru_nvcsw, "steal_ms": (s1 - s0) * 1e3 / os.sysconf("SC_CLK_TCK")})
    if ctl:
        with open(ctl, "w") as f:
            f.write("disable\n")
    partner.swap()  # the partner's last round runs before this process exits, not beside its exit
    partner.finish()
    Path(args.out).write_text(json.dumps({"rounds": rounds, "core": core, "huge_pages_kb": huge_pages_kb(),
                                          "setup": setup.as_dict()}))


def perf_table(data: Path, rounds: int) -> dict[tuple[str, str], float]:
    """Milliseconds a round per (shared object, symbol) from a cpu-clock profile."""
    out = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--sort", "dso,sym", "-F", "sample,dso,sym",
                          "--no-children"], capture_output=True, text=True).stdout
    period_ms = None
    head = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--header-only"], capture_output=True,
                          text=True).stdout
    for line in head.splitlines():
        if "sample_freq" in line:
            period_ms = 1e3 / int(line.split("sample_freq", 1)[1].split(",")[0].strip(" =}"))
    table = {}
    for line in out.splitlines():
        parts = line.split()
        if not parts or line.startswith("#") or not parts[0].isdigit():
            continue
        samples, dso, sym = int(parts[0]), parts[1], " ".join(parts[2:]).removeprefix("[.] ").removeprefix("[k] ")
        table[(dso, sym)] = samples * (period_ms or 1.0) / rounds
    return table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", choices=sorted(CASES), default="torch-tiny-greedy")
    ap.add_argument("--processes", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--out", required=True)
    ap.add_argument("--together", action="store_true", help="processes in pairs taking turns round by round")
    ap.add_argument("--perf", action="store_true", help="sample each process's timed rounds with perf record")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.perf and not shutil.which("perf"):
        print("process_modes: error: --perf: no perf on this machine", file=sys.stderr)
        return 2
    if args.together and args.processes % 2:
        print("process_modes: error: --together: an even number of --processes", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT / "benches"))
    import turns

    def start(i: int, turn: tuple[str, tuple[int, int]] | None) -> tuple[subprocess.Popen, Path | None]:
        cmd = [sys.executable, __file__, "--child", "--case", args.case, "--rounds", str(args.rounds),
               "--out", str(out / f"process-{i}.json")]
        env, ctl = dict(os.environ), None
        if turn:
            env[turns.ENV] = turn[0]
        if args.perf:
            ctl = Path(tempfile.mkdtemp(dir=out)) / "ctl"
            os.mkfifo(ctl)
            env["MODES_PERF_CTL"] = str(ctl)
            cmd = ["perf", "record", "-q", "-e", "cpu-clock", "-F", "997", "-D", "-1", "--control", f"fifo:{ctl}",
                   "-o", str(out / f"process-{i}.data"), "--"] + cmd
        return subprocess.Popen(cmd, env=env, pass_fds=turn[1] if turn else ()), ctl

    runs = []
    step = 2 if args.together else 1
    for first in range(0, args.processes, step):
        if args.together:
            ends, fds = turns.connect()
            started = [start(first + k, ends[k]) for k in range(2)]
            for fd in fds:
                os.close(fd)
        else:
            started = [start(first, None)]
        for k, (proc, ctl) in enumerate(started):
            try:
                if proc.wait(timeout=600):
                    raise SystemExit(f"process_modes: error: process {first + k} exited {proc.returncode}")
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                if ctl:
                    shutil.rmtree(ctl.parent)
        for i in range(first, first + step):
            runs.append(json.loads((out / f"process-{i}.json").read_text()))
            r = runs[-1]["rounds"]
            print(f"process {i:2d}: {args.case} {statistics.median(x['case_ms'] for x in r):7.2f} ms, "
                  f"reference {statistics.median(x['reference_ms'] for x in r):6.2f} ms", flush=True)

    def summary(r):
        med = lambda k: statistics.median(x[k] for x in r["rounds"])  # noqa: E731
        q = statistics.quantiles([x["case_ms"] for x in r["rounds"]], n=4)
        return {"case_ms": med("case_ms"), "iqr": (q[2] - q[0]) / med("case_ms"), "reference_ms": med("reference_ms"),
                "cpu_share": sum(x["cpu_ms"] for x in r["rounds"]) / sum(x["case_ms"] + x["reference_ms"] for x in r["rounds"]),
                "minflt": statistics.mean(x["minflt"] for x in r["rounds"]),
                "nivcsw": statistics.mean(x["nivcsw"] for x in r["rounds"]),
                "steal_ms": statistics.mean(x["steal_ms"] for x in r["rounds"]), "huge_pages_mb": r["huge_pages_kb"] / 1024}

    rows = [summary(r) for r in runs]
    mid = statistics.median(r["case_ms"] for r in rows)
    mid_ref = statistics.median(r["reference_ms"] for r in rows)
    how = "in pairs taking turns" if args.together else "one after another"
    print(f"\n{args.case}: {args.processes} processes of {args.rounds} rounds, {how}, one pinned core")
    print("process  case ms  (x median)  IQR   reference ms (x median)  CPU/wall  faults/round  invol.cs/round  steal ms/round  THP MB")
    for i, r in enumerate(rows):
        print(f"{i:7d}  {r['case_ms']:7.2f}  ({r['case_ms'] / mid:4.2f})    {r['iqr']:4.0%}  "
              f"{r['reference_ms']:9.2f}    ({r['reference_ms'] / mid_ref:4.2f})"
              f"      {r['cpu_share']:6.1%}  {r['minflt']:12.1f}  {r['nivcsw']:14.2f}  {r['steal_ms']:14.3f}  {r['huge_pages_mb']:6.0f}")
    if args.together:
        ratios = [rows[i + 1]["case_ms"] / rows[i]["case_ms"] for i in range(0, len(rows), 2)]
        pair_medians = [(rows[i]["case_ms"] * rows[i + 1]["case_ms"]) ** 0.5 for i in range(0, len(rows), 2)]
        mid_pair = statistics.median(pair_medians)
        print("pairs, second/first: " + " ".join(f"{x:.3f}" for x in ratios)
              + "; pair medians (geometric) x their median: " + " ".join(f"{x / mid_pair:.2f}" for x in pair_medians))
    (out / "modes.json").write_text(json.dumps({"case": args.case, "together": args.together, "processes": runs,
                                                "summary": rows}, indent=1))
    if args.perf:
        order = sorted(range(len(rows)), key=lambda i: rows[i]["case_ms"])
        fast, slow = order[0], order[-1]
        tf, ts = (perf_table(out / f"process-{i}.data", args.rounds) for i in (fast, slow))
        total_f, total_s = sum(tf.values()), sum(ts.values())
        print(f"\nperf cpu-clock, ms a round (case + reference): fastest process {fast} {total_f:.2f}, slowest {slow} {total_s:.2f}")
        print("   fast    slow   slow/fast  shared object: symbol")
        for key in sorted(set(tf) | set(ts), key=lambda k: -(ts.get(k, 0) + tf.get(k, 0)))[:25]:
            f, s = tf.get(key, 0.0), ts.get(key, 0.0)
            ratio = f"{s / f:5.2f}" if f else "    -"
            print(f"{f:7.2f} {s:7.2f}   {ratio}     {Path(key[0]).name}: {key[1][:70]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
