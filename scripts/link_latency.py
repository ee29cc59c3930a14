"""The latency ``mtcore plan --latency`` charges per message, measured on emulated hosts' links
from small-message collectives in both frameworks: two hosts (``mtcore.hosts.EmulatedHosts``), one
process each on its framework's multi-node line, each timing CALLS all-reduces of one float
(torch: gloo under torchrun; JAX: a ``psum`` under jax.distributed over gloo). A ring all-reduce
over two processes waits for 2(N-1) = 2 messages (``costs.message_steps``): the latency per
message is the median call over that.

    sudo python scripts/link_latency.py [--rate 10mbit] [--calls 300] [--json FILE]

Prints a markdown table (per framework: median call, IQR, latency per message); with --json, the
same as JSON. Needs root (network namespaces); one line and exit 2 without it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(framework: str, calls: int, out: str, coordinator: str | None, process_id: int, nbytes: int = 4) -> None:
    """One process: join the other, warm up, time ``calls`` all-reduces of ``nbytes`` (one float by
    default), write them."""
    from mtcore.backend import framework as fw
    from mtcore.perf.setup import set_up
    from mtcore.perf.timing import call_seconds

    set_up((framework,), threads=1, synchronous_cpu=False)
    if framework == "jax":
        fw("jax").initialize_distributed(coordinator, 2, process_id, cpu_devices=1)
    import mtcore

    be = mtcore.backend(framework, "cpu", devices=2)
    times = call_seconds(be.all_reduce_probe(nbytes), calls, warmup=20)
    rank = be.world.process
    Path(out, f"{framework}-{rank}.json").write_text(json.dumps({"times": times, "link": str(fw(framework).interconnect())}))
    # Leave without tearing the process group down: its teardown at exit races the other process's
    # and aborts (what was measured is written).
    os._exit(0)


def measure(framework: str, rate: str | None, calls: int, nbytes: int = 4) -> dict:
    from mtcore.backend import framework as fw
    from mtcore.costs import message_steps
    from mtcore.hosts import EmulatedHosts

    out = tempfile.mkdtemp(prefix="mtcore-latency-")
    try:
        with EmulatedHosts(2, rate) as hosts:
            logs = [open(os.path.join(out, f"{h.hostname}.log"), "w") for h in hosts.hosts]  # noqa: SIM115
            started = hosts.start_nodes(fw(framework), 2, [__file__, "--worker", framework, "--calls", str(calls),
                                                           "--bytes", str(nbytes), "--dir", out], log_dir=out,
                                        run_id="latency",
                                        env=dict(os.environ), output=lambda h: logs[h.index],
                                        stderr=subprocess.STDOUT)
            procs = [(logs[h.index], p) for h, p in started]
            for log, p in procs:
                p.wait(timeout=300)
                log.close()
                if p.returncode:
                    output = Path(log.name).read_text(errors="replace")
                    errors = [line for line in output.splitlines() if "Error" in line and "ChildFailed" not in line]
                    sys.exit(f"link_latency: {framework} failed: {(errors or output.strip().splitlines() or ['?'])[-1]}")
        times = sorted(json.loads(Path(out, f"{framework}-0.json").read_text())["times"])
    finally:
        subprocess.run(["rm", "-rf", out])
    median, q1, q3 = times[len(times) // 2], times[len(times) // 4], times[3 * len(times) // 4]
    return {"framework": framework, "rate": rate or "unshaped", "calls": calls, "bytes": nbytes, "median_s": median,
            "iqr_s": q3 - q1,
            "latency_per_message_s": median / message_steps("all-reduce", 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", help="the links' rate (tc's spelling); default unshaped")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--bytes", type=int, default=4, help="bytes each all-reduce carries (default: one float)")
    parser.add_argument("--json", help="write the rows here too")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--coordinator", help=argparse.SUPPRESS)
    parser.add_argument("--num-processes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--process-id", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.calls, args.dir, args.coordinator, args.process_id, args.bytes)
        return
    from mtcore.errors import MTCoreError
    from mtcore.hosts import missing_privilege, parse_rate

    try:
        parse_rate(args.rate)
        if args.bytes < 4 or args.bytes % 4:
            raise MTCoreError(f"--bytes {args.bytes}: a whole number of floats, 4 bytes or more")
        why = missing_privilege()
        if why:
            raise MTCoreError(why)
        rows = [measure(fw, args.rate, args.calls, args.bytes) for fw in ("torch", "jax")]
    except MTCoreError as e:
        print(f"link_latency: {e}", file=sys.stderr)
        sys.exit(2)
    print("| framework | link | bytes | all-reduce, median (IQR) | latency per message (median / 2) |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['framework']} | {r['rate']} | {r['bytes']:,} | {r['median_s'] * 1e6:,.0f} µs ({r['iqr_s'] * 1e6:,.0f}) | "
              f"{r['latency_per_message_s'] * 1e6:,.0f} µs |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
