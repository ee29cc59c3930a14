"""The link sweep's full grid (issue 44): first the highest rate the emulated link sustains on this
machine while both cores compute (``mtcore.hosts.link_ceiling``), then the link sweep bench
(benches/test_sweep.py) over a grid of rates from that ceiling down to 10 Mbit/s, ``tiny`` on every
rate and ``small`` on a few (a slow point of ``small`` moves the most bytes a step), then
``mtcore sweep``'s table and plots of what it measured.

    sudo make sweep                      # or: python scripts/link_sweep.py --out sweep
    python scripts/link_sweep.py --out sweep --sizes tiny --rates 100mbit,10mbit   # a part of it
    python scripts/link_sweep.py --out sweep --above-only    # only the points above the ceiling

Writes to OUT: ``ceiling.json``, ``sweep-SIZE.json`` (pytest-benchmark's JSON, each point's
extra_info), and what ``mtcore sweep`` writes (``sweep.md``, ``sweep.json``, a plot per size). Time:
docs/findings/2026-12-05-link-sweep.md.
Needs root (network namespaces); one line and exit 2 without it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Below the ceiling, every point of the grid (Mbit/s): about x1.6 apart, down to 10. ``small`` takes
# every other one: its slow points dominate the budget.
GRID_MBIT = (160, 100, 63, 40, 25, 16, 10)
SMALL_GRID_MBIT = (100, 40, 10)
OFFLOAD_GRID_MBIT = (2000, 1000, 500)  # above the ceiling, segmentation offload on
DELAY_RATE, DELAYS_MS = "100mbit", (0.5, 2.0)  # where netem is there: tiny at one rate, a frame held this long


def ceiling(seconds: float = 3.0, repeats: int = 2) -> dict:
    """The link's ceiling each way, idle and with both cores computing, ``repeats`` times each: as
    the hosts are built (one TCP segment per frame), and with segmentation offload left on."""
    from mtcore.hosts import EmulatedHosts, link_ceiling

    out: dict = {}
    for offload in (False, True):
        key = "offload_" if offload else ""
        with EmulatedHosts(2, offload=offload) as hosts:
            out["netem_missing"] = hosts.netem_missing()
            runs = {"idle": [], "busy": []}
            for _ in range(repeats):
                for busy in (False, True):
                    runs["busy" if busy else "idle"].append(link_ceiling(hosts, seconds, busy=busy))
        out[f"{key}idle"], out[f"{key}busy"] = runs["idle"], runs["busy"]
        # What the link sustained each way, busy: the slower direction of the slower try.
        out[f"{key}sustained_bits_per_s"] = min(min(r.values()) for r in runs["busy"])
    return out


def grid(top_bits: float, size: str) -> list[str]:
    """The rates of ``size``'s points, fastest first: the ceiling rounded down to 10 Mbit/s, then
    the grid below it."""
    mbit = int(top_bits / 1e6)
    top = mbit - mbit % 10 if mbit >= 20 else mbit
    below = SMALL_GRID_MBIT if size == "small" else GRID_MBIT
    return [f"{top}mbit"] + [f"{r}mbit" for r in below if r < top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="sweep", help="where to write (default: %(default)s)")
    parser.add_argument("--sizes", default="tiny,small", help="comma list (default: %(default)s)")
    parser.add_argument("--frameworks", default="torch,jax", help="comma list (default: %(default)s)")
    parser.add_argument("--rates", help="instead of the grid from the ceiling: these rates for every size")
    parser.add_argument("--above-only", action="store_true", help="only the points above the ceiling (offload on)")
    parser.add_argument("--point-seconds", default="6", help="timed work per point (default: %(default)s s)")
    args = parser.parse_args()
    from mtcore.errors import MTCoreError
    from mtcore.hosts import missing_privilege

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        why = missing_privilege()
        if why:
            raise MTCoreError(why)
        top = ceiling()
    except MTCoreError as e:
        print(f"link_sweep: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"link_sweep: the link sustains {top['sustained_bits_per_s'] / 1e6:.0f} Mbit/s each way with both cores "
          f"busy ({top['offload_sustained_bits_per_s'] / 1e6:.0f} with segmentation offload)", flush=True)
    # Where the kernel can delay packets, tiny also at one rate with DELAYS_MS of delay on every link:
    # the planner's latency term against a delay it knows.
    sizes = args.sizes.split(",")
    runs = [] if args.above_only else [
        (size, args.rates or ",".join(grid(top["sustained_bits_per_s"], size)), None, False) for size in sizes]
    # Above the ceiling of one segment per frame, up to where each strategy's arithmetic shows:
    # segmentation offload on (the counters then miss most headers).
    above = [f"{r}mbit" for r in OFFLOAD_GRID_MBIT
             if top["sustained_bits_per_s"] < r * 1e6 <= top["offload_sustained_bits_per_s"]]
    if args.above_only and not above:
        print("link_sweep: --above-only: no rate of the grid lies between the two ceilings", file=sys.stderr)
        sys.exit(2)
    if not args.rates:
        runs += [(size, ",".join(above), None, True) for size in sizes]
    if args.above_only:
        pass  # the delays ride on the grid below the ceiling
    elif top["netem_missing"]:
        top["delay"] = f"skipped: {top['netem_missing']}"
        print(f"link_sweep: delays {top['delay']}", flush=True)
    elif "tiny" in sizes:
        top["delay"] = f"tiny at {DELAY_RATE} with {', '.join(f'{d:g}' for d in DELAYS_MS)} ms on every link"
        runs += [("tiny", DELAY_RATE, d, False) for d in DELAYS_MS]
    (out / "ceiling.json").write_text(json.dumps(top, indent=2))
    files = []
    for size, rates, delay, offload in runs:
        files.append(out / f"sweep-{size}{f'-delay{delay:g}ms' if delay else ''}{'-offload' if offload else ''}.json")
        print(f"link_sweep: {size} at {rates}" + (f", {delay:g} ms of delay" if delay else "")
              + (", segmentation offload on" if offload else ""), flush=True)
        env = {**os.environ, "TMPDIR": os.environ.get("TMPDIR", str(ROOT / ".tmp"))}
        Path(env["TMPDIR"]).mkdir(exist_ok=True)
        rc = subprocess.call([sys.executable, "-m", "pytest", "benches/test_sweep.py", "-m", "sweep", "-q", "-p",
                              "no:cacheprovider", "--size", size, "--framework", args.frameworks, "--rates", rates,
                              *(["--delay", str(delay)] if delay else []), *(["--offload"] if offload else []),
                              "--point-seconds", args.point_seconds,
                              f"--benchmark-json={files[-1]}"], cwd=ROOT, env=env)
        if rc:
            sys.exit(f"link_sweep: the {size} sweep failed (pytest exit {rc}); what it measured is in {files[-1]}")
    files = sorted(out.glob("sweep-*.json"))  # with --above-only, the points measured before too
    sys.exit(subprocess.call([sys.executable, "-m", "mtcore.cli", "sweep", *map(str, files), "--ceiling",
                              str(out / "ceiling.json"), "--out", str(out)], cwd=ROOT))


if __name__ == "__main__":
    main()
