"""The benches' pytest hooks, and nothing else: options, the session's process set-up,
parametrisation, machine_info and the terminal summary. What they use lives in modules beside this
one: the cases (cases.py), what the benches share (inputs.py), the machine (machine.py), the
summary (summary.py)."""

from __future__ import annotations

import json
import os

import machine
import pytest
import summary
from cases import (
    DEFAULT_SIZES,
    FRAMEWORKS,
    MAX_STEPS,
    MIN_STEPS,
    POINT_SECONDS,
    QUICK_RATES,
    cases,
    marks,
    over_hosts,
    selection,
    sweep_marks,
)
from inputs import MAX_TIME_S, MIN_ROUNDS, session

from mtcore.config import PRESETS
from mtcore.devices import DEVICE_KINDS, missing
from mtcore.errors import MTCoreError
from mtcore.perf import threads
from mtcore.perf.setup import set_up


def pytest_addoption(parser):
    group = parser.getgroup("mtcore benches")
    group.addoption("--framework", help=f"comma list of {', '.join(FRAMEWORKS)} (default: all)")
    group.addoption("--device", help=f"comma list of {', '.join(DEVICE_KINDS)} (default: all, absent ones skip; "
                                     "a device named here must be visible, else the run stops)")
    group.addoption("--size", help=f"comma list of {', '.join(PRESETS)}, or 'all' (default: {','.join(DEFAULT_SIZES)})")
    group.addoption("--threads", default="1",
                    help="CPU thread budget per process, the same for every framework: a number (pinned to that many "
                         "cores: stable, what the regression gate uses) or 'all' (the whole machine, as users run). "
                         "Default: %(default)s")
    group.addoption("--compile-budget", type=float, default=120.0,
                    help="compile-vs-depth: skip a depth whose compile, extrapolated from the shallower ones and "
                         "doubled, would take longer than this many seconds (an unrolled program's compile grows faster "
                         "than its depth; the figure must finish on any device). Default: %(default)s")
    group.addoption("--compile-rounds", type=int,
                    help="from-scratch compiles the compile bench times per case (default: 2 on a CPU, 3 on an "
                         "accelerator)")
    group.addoption("--hosts", type=int,
                    help="the worker benches (scaling, mesh) spread over N emulated hosts, each with its own address, "
                         "hostname and link (network namespaces: needs root; docs/hosts.md), where their devices split "
                         "evenly; the bytes on each host's wire recorded and held to the prediction")
    group.addoption("--rate", help="with --hosts: each host's link shaped to this rate (100mbit, 1gbit; default unshaped)")
    group.addoption("--rates", help="the link sweep (-m sweep): comma list of link rates, fastest first (default: "
                                    f"{','.join(QUICK_RATES)}; scripts/link_sweep.py runs the full grid)")
    group.addoption("--delay", type=float, help="the link sweep: every link also holds each frame this many "
                                                "milliseconds (netem; its points skip, saying why, on a kernel without it)")
    group.addoption("--offload", action="store_true",
                    help="the link sweep: leave the hosts' segmentation offload on, for rates above the one-segment-"
                         "per-frame ceiling (the counters then miss most headers: docs/hosts.md)")
    group.addoption("--point-seconds", type=float, default=POINT_SECONDS,
                    help=f"the link sweep: timed steps per point to fill this many seconds, at least {MIN_STEPS} and at "
                         f"most {MAX_STEPS} (default: %(default)s)")
    group.addoption("--profile", metavar="DIR",
                    help="after a train bench's timed rounds (one device, and the scaling and mesh benches' workers), "
                         "trace a few more steps with the framework's profiler: one Chrome-JSON trace per process in DIR, "
                         "and where each step's time went in extra_info (docs/measurement.md#traces); off by default")
    group.addoption("--costs-json", help="write what each framework x mesh's step moved and a device held (the costs "
                                         "bench, the mesh and scaling benches) to this file as well as into "
                                         "--benchmark-json (scripts/bench_gate.py collects them once per tree)")
    group.addoption("--costs-from", help="take the costs a --costs-json file holds into this session's JSON (the gate's "
                                         "timed sessions carry the ones collected once for their tree)")
    group.addoption("--rounds", type=int,
                    help=f"fixed timed rounds per benchmark (default: calibrated, {MAX_TIME_S:g} s of timed work per "
                         f"case, at least {MIN_ROUNDS} rounds; see --benchmark-max-time / --benchmark-min-rounds)")


def _hosts(config) -> None:
    """--hosts and --rate, checked once: a bad value stops the session in one line; a machine that
    cannot build hosts skips the cases that need them, saying why."""
    from mtcore.hosts import missing_privilege, parse_rate

    session.hosts, session.rate = config.getoption("--hosts"), config.getoption("--rate")
    if session.hosts is not None and not 2 <= session.hosts <= len(threads.usable_cores()):
        raise MTCoreError(f"--hosts {session.hosts}: between 2 and the {len(threads.usable_cores())} cores this process "
                          "may use (each host runs on cores of its own)")
    if session.rate is not None and session.hosts is None:
        raise MTCoreError("--rate shapes the links of emulated hosts: give --hosts N too")
    parse_rate(session.rate)
    session.rates = tuple(csv_rates(config.getoption("--rates")))
    session.delay = config.getoption("--delay")
    session.offload = config.getoption("--offload")
    if session.delay is not None and not session.delay > 0:
        raise MTCoreError(f"--delay {session.delay:g}: milliseconds a frame is held, more than 0")
    session.hosts_missing = missing_privilege() if session.hosts or _sweeping(config) else None


def csv_rates(value: str | None) -> list[str]:
    """--rates, each checked (``parse_rate``): the quick grid when not given."""
    from mtcore.hosts import parse_rate

    rates = [r.strip() for r in value.split(",") if r.strip()] if value else list(QUICK_RATES)
    for r in rates:
        if parse_rate(r) is None:
            raise MTCoreError(f"--rates {value!r}: every point needs a rate (the unshaped baseline is loopback's)")
    return rates


def _sweeping(config) -> bool:
    """Whether the link sweep can run: its marker asked for, or a smoke run (its one point)."""
    return "sweep" in (config.getoption("markexpr") or "") or bool(config.getoption("benchmark_disable"))


def pytest_generate_tests(metafunc):
    marker = metafunc.definition.get_closest_marker("cases")
    if marker is None or "case" not in metafunc.fixturenames:
        return
    chosen = cases(marker.args[0], *selection(metafunc.config))
    if marker.args[0] in ("scaling", "mesh"):
        chosen = over_hosts(chosen, metafunc.config.getoption("--hosts"))
    if marker.args[0] == "sweep":  # a point per case and rate, the rates of a case one after another
        smoke = bool(metafunc.config.getoption("benchmark_disable"))
        if metafunc.config.getoption("--size") is None:  # the quick grid: tiny; --size small adds its slow points
            chosen = [c for c in chosen if c.size == "tiny"]
        delay = (f"-delay{session.delay:g}ms" if session.delay else "") + ("-offload" if session.offload else "")
        params = [pytest.param((c, r), id=f"{c.id}-{r}{delay}", marks=sweep_marks(c, r, smoke, _sweeping(metafunc.config)))
                  for c in chosen for r in session.rates]
        metafunc.parametrize("case", params or [pytest.param(None, marks=pytest.mark.skip(reason="no case selected"))])
        return
    params = [pytest.param(c, id=c.id, marks=marks(c, marker.args[0])) for c in chosen]
    metafunc.parametrize("case", params or [pytest.param(None, marks=pytest.mark.skip(reason="no case selected"))])


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark reads its options
def pytest_configure(config):
    session.turns.start()  # a gate session works only in its turns, start-up included
    session.config = config
    config.addinivalue_line("markers", "cases(kind): parametrise a bench over the cases of that kind")
    config.addinivalue_line("markers", "xdist_group(name): keep these cases on one process under --dist loadgroup")
    config.addinivalue_line("markers", "quick: the quick subset: the gate's, and the paired headline (pytest benches -m quick)")
    config.addinivalue_line("markers", "gate: what the pull-request regression gate runs on base and head (scripts/bench_gate.py)")
    config.addinivalue_line("markers", "sweep: the link sweep over emulated hosts (pytest benches -m sweep; make sweep-quick)")
    config.addinivalue_line("markers", "costs: what a step moves and a device holds per framework x mesh, untimed "
                                       "(pytest benches -m costs; the gate's exact numbers)")
    session.plugins = _plugins(config)
    if config.getoption("--profile"):
        from pathlib import Path

        session.profile = Path(config.getoption("--profile")).resolve()
        session.profile.mkdir(parents=True, exist_ok=True)
    try:
        frameworks, devices, _ = selection(config)
        budget = threads.parse(config.getoption("--threads"))
        _hosts(config)
        worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
        slots = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        # The one process set-up (mtcore/perf/setup.py), before any framework starts and before
        # the storage fingerprint below asks JAX for its devices: XLA sizes its pool and reads its
        # dispatch flag once, when the CPU backend starts. Freed memory stays in the process, so no
        # round pays for the previous one's page faults; fp32 matmuls in full precision in both
        # frameworks (XLA would otherwise run them as TF32 on NVIDIA GPUs); bf16 cases are the fast
        # path. The compile cache is off for both frameworks: a compile bench measures a compile
        # from scratch, never a cache read (JAX decides once per process whether to read its cache).
        session.setup = set_up(frameworks, threads=budget, slot=int(worker.removeprefix("gw") or 0), slots=slots,
                               compile_cache=False)
    except MTCoreError as e:
        machine.stop(str(e))
    if (config.getoption("--costs-json") and getattr(config.option, "numprocesses", None)
            and not os.environ.get("PYTEST_XDIST_WORKER")):
        machine.stop("--costs-json: the costs are kept in the process that runs the benches; drop -n")
    if config.getoption("--costs-from"):
        try:
            from mtcore.perf.records import run_costs

            path = config.getoption("--costs-from")
            with open(path) as f:
                session.costs.update(run_costs(json.load(f), path))
        except (OSError, ValueError) as e:
            machine.stop(f"--costs-from {config.getoption('--costs-from')}: {e}")
    if any(config.getoption(o) for o in ("benchmark_autosave", "benchmark_save", "benchmark_compare")):
        machine.store_by_fingerprint()
    if config.getoption("benchmark_autosave") or config.getoption("benchmark_save"):
        # A saved run keeps its raw rounds, so mtcore bench-compare (its rank test) takes it too.
        config.option.benchmark_save_data = True
    if not _given(config, "--benchmark-max-time"):
        config.option.benchmark_max_time = str(MAX_TIME_S)
    if not _given(config, "--benchmark-min-rounds"):
        config.option.benchmark_min_rounds = MIN_ROUNDS
    # A gen-2 collection of a whole pytest session's heap would land in a random round.
    config.option.benchmark_disable_gc = True
    if config.getoption("--device") is not None:
        # Asked for by name (tox -e gpu / tpu): a machine without it must fail, not pass on skips.
        for device in devices:
            seen = [fw for fw in frameworks if missing(fw, device) is None]
            if not seen:
                reasons = "; ".join(missing(fw, device) for fw in frameworks)
                machine.stop(f"--device {device}: no selected framework sees a {device.upper()} ({reasons})")


def _plugins(config) -> tuple[str, ...]:
    """The modules given as ``-p NAME`` (not ``-p no:NAME``): a plugin that changes the train step
    (tests/perf/) changes it in the benches' worker processes too."""
    args = [str(a) for a in config.invocation_params.args]
    named = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "-p"] + [a[2:] for a in args if a.startswith("-p")
                                                                            and len(a) > 2]
    return tuple(n for n in named if not n.startswith("no:"))


def _costs_block() -> dict:
    """The session's costs as a run's JSON keeps them, under ``mtcore.perf.records.COSTS_KEY``."""
    from mtcore.perf.records import COSTS_KEY

    return {COSTS_KEY: {"cases": dict(sorted(session.costs.items()))}}


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """A run's JSON keeps the costs its benches collected. Nothing is imported without them: the
    gate runs these benches on an older mtcore too."""
    if session.costs:
        output_json.update(_costs_block())


def pytest_sessionfinish(session, exitstatus):
    _costs_file(session.config)


def _costs_file(config) -> None:
    """--costs-json: the session's costs, on their own."""
    path = config.getoption("--costs-json")
    if path and not os.environ.get("PYTEST_XDIST_WORKER"):
        from mtcore.files import write_text

        write_text(path, json.dumps(_costs_block(), indent=1))


def _given(config, flag: str) -> bool:
    """Whether the user set ``flag`` (command line, PYTEST_ADDOPTS or the ini's addopts)."""
    import shlex

    args = [*config.invocation_params.args, *shlex.split(os.environ.get("PYTEST_ADDOPTS", "")), *config.getini("addopts")]
    return any(str(a) == flag or str(a).startswith(flag + "=") for a in args)


def pytest_runtest_logfinish(nodeid, location):
    """With --benchmark-json, the file is rewritten after every bench, not only at the session's end:
    a run stopped at a time limit (scripts/gpu_check.py) keeps what it measured."""
    machine.flush_json(session.config)


@pytest.fixture(scope="session")
def rounds(request) -> int | None:
    """--rounds, or None: calibrated."""
    return request.config.getoption("--rounds")


def pytest_benchmark_update_machine_info(config, machine_info):
    machine.update_machine_info(machine_info)


@pytest.hookimpl(wrapper=True)
def pytest_benchmark_compare_machine_info(config, benchmarksession, machine_info, compared_benchmark):
    """One line naming what differs from the compared run (benches/machine.py)."""
    return (yield from machine.compare_machine_info(benchmarksession, machine_info, compared_benchmark))


_session = None


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    session.turns.finish()  # the gate's partner session runs alone from here


def pytest_sessionstart(session):
    global _session
    _session = session


@pytest.hookimpl(wrapper=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Our summary first; then pytest-benchmark's tables and --benchmark-compare-fail check, whose
    regression is a failed run (exit 1) and one line, not a traceback."""
    from pytest_benchmark.session import PerformanceRegression

    summary.write(terminalreporter, config)
    try:
        return (yield)
    except PerformanceRegression:
        terminalreporter.write_line("mtcore benches: performance has regressed past --benchmark-compare-fail "
                                    "(the benchmarks are listed above)", red=True, bold=True)
        _session.exitstatus = pytest.ExitCode.TESTS_FAILED


