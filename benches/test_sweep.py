"""The link sweep: was the network the bottleneck? The mesh step (``data:2``, ``fsdp:2``,
``tensor:2``) over two emulated hosts, one process each, their links shaped to each rate of a grid,
fastest first (``--rates``; the quick grid by default, scripts/link_sweep.py the full one), in both
frameworks: the step time at each rate beside, interleaved round by round, the same mesh's step over
loopback (two processes on this host: a link that costs next to nothing) and one device's step.

A point's time is the step over the hosts (median and IQR of its rounds); its communication is
that less the loopback step's median (until traces give it directly), its arithmetic the loopback
step's; the point is network-bound when the first exceeds the second. Beside them: the bytes each
host's link carried a step (its counters, less the idle background), how much of the link that
used, and what ``mtcore plan`` needs to predict the point (the latency per message measured on
these links, one device's step time). ``mtcore sweep`` draws the curves and the planner's line.

Each case's workers start once and serve every rate (the links are reshaped between points:
``EmulatedHosts.shape``); before the first point, the first losses are the one-device loss and the
bytes on the wire are the prediction's (``check_wire``). Runs with ``-m sweep`` (make sweep-quick);
a smoke run takes one point. Timings of two hosts sharing two cores say little about real machines:
reported, never gated.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from math import ceil

import pytest
from cases import MAX_STEPS, MIN_STEPS
from inputs import batch, check_first_loss, session, thread_budget
from test_scaling import Workers, check_wire

from mtcore.costs import message_steps
from mtcore.hosts import parse_rate, per_step
from mtcore.sweep import network_bound

ONE_DEVICE_ROUNDS = 3  # one device's step, for the planner's arithmetic: a few per point


@dataclasses.dataclass
class SweepCase:
    """A case's three sets of workers, alive from its first point to its last: over the hosts,
    over loopback, and one device (shared by the cases of one framework and size)."""

    case: object
    hosts: Workers
    loopback: Workers
    one: Workers
    idle: dict  # each host's background bytes per second, from check_wire's idle window
    latency_unshaped_s: float
    netem_missing: str | None  # why the links cannot be delayed (--delay), None: they can
    predicted_wire: float  # bytes a step the prediction puts on each host's wire, as check_wire held it


class Sweep:
    """The workers of the case being swept; the previous case's closed when the next one starts."""

    def __init__(self):
        self.current: SweepCase | None = None
        self.one: tuple[tuple, Workers] | None = None

    def get(self, case) -> SweepCase:
        if self.current is not None and self.current.case == case:
            return self.current
        self.close(keep_one=True)
        budget = thread_budget()
        per_device = budget.threads if budget.pinned else 1
        key = (case.framework, case.size, case.precision)
        if self.one is None or self.one[0] != key:
            self.close()
            one = dataclasses.replace(case, devices=1, mesh=None, hosts=None)
            self.one = (key, Workers(one, per_device).__enter__())
            check_first_loss(one, self.one[1].ready[0]["first_loss"])
        started = []
        try:
            for c in (case, dataclasses.replace(case, hosts=None)):
                started.append(Workers(c, per_device, rate="unshaped", offload=session.offload).__enter__())
            for w in started:  # correct before timed: every process takes the one-device loss
                for ready in w.ready:
                    check_first_loss(case, ready["first_loss"])
            # and the wire carries what the prediction says (with offload on, the counters miss the
            # headers of all but one segment in each offloaded packet: a few percent fewer bytes)
            wire = check_wire(started[0])
            self.current = SweepCase(case, started[0], started[1], self.one[1],
                                     idle={h["host"]: h["idle_tx_bytes_per_s"] for h in wire["hosts"]},
                                     latency_unshaped_s=latency(started[0]),
                                     netem_missing=started[0].hosts.netem_missing(),
                                     predicted_wire=wire["predicted_per_step"]["tx_bytes"])
        except BaseException:
            for w in started:
                w.__exit__()
            raise
        return self.current

    def close(self, keep_one: bool = False) -> None:
        if self.current is not None:
            self.current.hosts.__exit__()
            self.current.loopback.__exit__()
            self.current = None
        if self.one is not None and not keep_one:
            self.one[1].__exit__()
            self.one = None


def latency(workers: Workers) -> float:
    """Seconds a message waits on these links: the median all-reduce of one float (the slower
    process's), over the messages a ring all-reduce over two processes waits for."""
    return max(map(float, workers.step("latency"))) / message_steps("all-reduce", workers.case.devices)


@pytest.fixture(scope="module")
def sweep():
    s = Sweep()
    yield s
    s.close()


def quartiles(times: list[float]) -> dict[str, float]:
    q1, median, q3 = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else times * 3
    return {"median_s": median, "iqr_s": q3 - q1, "rounds": len(times)}


@pytest.mark.cases("sweep")
def test_link_sweep(benchmark, case, sweep, rounds):
    case, rate = case
    benchmark.group = f"link sweep {case.device}-{case.size}-{case.precision} {case.mesh} over 2 hosts"
    try:
        point(benchmark, sweep, case, rate, rounds)
    except Exception:
        sweep.close()  # a point that failed leaves its workers in no state for the next rate
        raise


def point(benchmark, sweep: Sweep, case, rate: str, rounds: int | None) -> None:
    """One point: the links reshaped to ``rate``, the step timed over the hosts beside loopback's
    and one device's."""
    s = sweep.get(case)
    delay_s = session.delay / 1e3 if session.delay else None
    if delay_s and s.netem_missing:
        pytest.skip(f"--delay: {s.netem_missing}")
    s.hosts.hosts.shape(parse_rate(rate), delay_s)
    start = time.perf_counter()
    s.hosts.step()  # the first step at this rate, untimed: its time sizes the point
    first = time.perf_counter() - start
    if not benchmark.enabled:  # a smoke run: one more step, untimed; the workers were checked
        benchmark(s.hosts.step)
        return
    n = rounds or min(max(MIN_STEPS, ceil(session.config.getoption("--point-seconds") / first)), MAX_STEPS)
    baseline: dict[str, list[float]] = {"loopback": [], "one_device": []}

    def between_rounds() -> None:
        """Untimed before each round: the same step over loopback and (the first ``ONE_DEVICE_ROUNDS``
        rounds) on one device, timed here, so they alternate round by round."""
        for name, w in (("loopback", s.loopback), ("one_device", s.one)):
            if name == "one_device" and len(baseline[name]) >= ONE_DEVICE_ROUNDS:
                continue
            t0 = time.perf_counter()
            w.step()
            baseline[name].append(time.perf_counter() - t0)

    hosts = s.hosts.hosts.hosts
    t0, before = time.perf_counter(), [h.counters() for h in hosts]
    benchmark.pedantic(s.hosts.step, setup=between_rounds, rounds=n, iterations=1, warmup_rounds=0)
    t1, after = time.perf_counter(), [h.counters() for h in hosts]
    step = benchmark.stats.stats.median
    loopback, one = quartiles(baseline["loopback"]), quartiles(baseline["one_device"])
    wire = []
    for h, a, b in zip(hosts, before, after, strict=True):
        idle = {"tx_bytes_per_s": s.idle[h.hostname], "rx_bytes_per_s": s.idle[h.hostname]}
        moved = per_step(a, b, t1 - t0, n, idle)
        busiest = max(moved.values())
        wire.append({"host": h.hostname, **moved, "utilisation": busiest * 8 / step / parse_rate(rate)})
    b = batch(case.size)
    benchmark.extra_info.update(
        case=case.id, framework=case.framework, size=case.size, mesh=case.mesh, hosts=case.hosts, rate=rate,
        rate_bits_per_s=parse_rate(rate), delay_s=delay_s, offload=session.offload,
        step_iqr_s=benchmark.stats.stats.iqr, loopback=loopback, one_device=one,
        communication_s=step - loopback["median_s"], arithmetic_s=loopback["median_s"],
        network_bound=network_bound(step, loopback["median_s"]), wire=wire, predicted_wire_per_step=s.predicted_wire,
        latency_per_message_s=latency(s.hosts), latency_unshaped_s=s.latency_unshaped_s,
        one_device_rows=b.shape[0], global_batch_shape=s.hosts.ready[0]["costs"]["batch_shape"],
        collectives=s.hosts.ready[0]["costs"]["collectives"])

