"""Hosts with a network of their own, on one machine: each a network namespace with its own
address, hostname and hosts file, joined through a veth pair to a bridge in a switch namespace, its
link shaped by ``tc`` (tbf; netem where a delay is asked for and the kernel has it). Built with
iproute2 and tc, the system's tools, not netlink code of our
own; everything made is removed when the hosts are closed, however the run ends (an exception,
Ctrl-C, SIGTERM, a killed host process). Addresses come from the benchmarking range 198.18.0.0/15,
and traffic goes only between these hosts.

Each link sends frames no larger than a real Ethernet link's (one TCP segment per packet: no
segmentation offload, unless ``offload`` asks for links faster than that allows), so the kernel's
byte counters of an emulated host count what a real wire would carry, headers and acknowledgements
included (docs/hosts.md). ``WireMeter`` reads the same
counters on any host, emulated or real, around a run's epochs.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from mtcore.errors import MTCoreError

HOST_IFACE = "eth0"  # every emulated host's link
SUBNET = "198.18.0"  # RFC 2544's benchmarking range: never another network's address
NETNS_ETC = Path("/etc/netns")  # `ip netns exec NAME` binds /etc/netns/NAME/* over /etc/*
_RATE = re.compile(r"^(\d+(?:\.\d+)?)([kmg]?)bit$")
_PREFIX = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}  # tc's rate prefixes (it prints them as K, M, G)
_CAP_NET_ADMIN = 12
COUNTERS = ("tx_bytes", "rx_bytes", "tx_packets", "rx_packets")  # an interface's, in /sys/class/net/IFACE/statistics


def parse_rate(text: str | None) -> int | None:
    """A link rate as tc spells it (``100mbit``, ``1gbit``, ``500kbit``) in bits per second; None
    (or ``unshaped``) for a link left as fast as the machine moves it."""
    if text is None or str(text).strip().lower() in ("", "unshaped"):
        return None
    m = _RATE.match(str(text).strip().lower())
    if not m or float(m.group(1)) <= 0:
        raise MTCoreError(f"--rate {text!r}: expected a rate like 100mbit, 1gbit or 500kbit (or unshaped)")
    return int(float(m.group(1)) * _PREFIX[m.group(2)])


def missing_privilege() -> str | None:
    """Why this process cannot build hosts (None: it can): network namespaces need root or
    CAP_NET_ADMIN, and iproute2's ``ip`` and ``tc``."""
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"emulated hosts need iproute2's `{tool}` (apt-get install iproute2)"
    if os.geteuid() != 0 and not _has_cap_net_admin():
        return "emulated hosts need root or CAP_NET_ADMIN (to create network namespaces and links)"
    return None


def _has_cap_net_admin() -> bool:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> _CAP_NET_ADMIN & 1)
    except OSError:
        pass
    return False


@dataclass(frozen=True)
class Host:
    """One emulated host: its network namespace, address and hostname; its interface ``eth0``."""

    index: int
    netns: str
    address: str
    hostname: str
    iface: str = HOST_IFACE

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run on this host: in its namespace (its hosts file over /etc/hosts) and a UTS
        namespace of its own named ``hostname``."""
        return ["ip", "netns", "exec", self.netns, "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"',
                self.hostname, *argv]

    def counters(self) -> dict[str, int]:
        """The kernel's byte counters of this host's interface: what crossed its link."""
        out = _run(["ip", "netns", "exec", self.netns, "cat",
                    *(f"/sys/class/net/{self.iface}/statistics/{n}" for n in COUNTERS)]).split()
        return dict(zip(COUNTERS, map(int, out), strict=True))


class EmulatedHosts:
    """``n`` hosts (``host0`` ... at 198.18.0.1 ...), each link shaped to ``rate`` (``parse_rate``;
    None: unshaped), as a context manager: built on entering, removed on leaving, on SIGTERM too."""

    def __init__(self, n: int, rate: str | None = None, prefix: str | None = None, *,
                 names_on_loopback: bool | None = None, offload: bool = False):
        if not 1 <= n <= 250:
            raise MTCoreError(f"hosts: between 1 and 250 emulated hosts, got {n}")
        self.rate = parse_rate(rate)
        # Debian's and many containers' /etc/hosts: a host's own name on 127.0.1.1 (the others' by
        # their addresses), where the engines' defaults advertise loopback to the other hosts. To
        # try a run against it: MTCORE_HOSTNAMES_ON_LOOPBACK=1.
        self.names_on_loopback = (os.environ.get("MTCORE_HOSTNAMES_ON_LOOPBACK") == "1" if names_on_loopback is None
                                  else names_on_loopback)
        self.prefix = prefix or f"mt{os.getpid()}"
        # Segmentation offload left on: links that go past the one-segment-per-frame ceiling (the
        # link sweep above it), whose counters then see 64 KiB packets with one set of headers.
        self.offload = offload
        self.hosts = [Host(i, f"{self.prefix}-h{i}", f"{SUBNET}.{i + 1}", f"host{i}") for i in range(n)]
        self.switch = f"{self.prefix}-sw"
        self.delay_s: float | None = None  # netem's delay on every link (``shape``)
        self._made: list[str] = []  # namespaces made, in order
        self._made_etc = False  # /etc/netns, where there was none
        self._previous = None

    def __enter__(self) -> EmulatedHosts:
        why = missing_privilege()
        if why:
            raise MTCoreError(why)
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):  # SIGTERM unwinds, so __exit__ runs
            self._previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _build(self) -> None:
        self._netns(self.switch)
        _run(["ip", "-n", self.switch, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", self.switch, "link", "set", "br0", "up"])
        for h in self.hosts:
            self._netns(h.netns)
            outside = f"{self.prefix[:9]}s{h.index}"  # the switch's end; interface names are 15 bytes at most
            _run(["ip", "-n", h.netns, "link", "add", h.iface, "type", "veth", "peer", "name", outside,
                  "netns", self.switch])
            _run(["ip", "-n", self.switch, "link", "set", outside, "master", "br0", "up"])
            _run(["ip", "-n", h.netns, "addr", "add", f"{h.address}/24", "dev", h.iface])
            # One TCP segment per frame, as on a wire: a veth would otherwise carry (and count)
            # 64 KiB segmentation-offload packets with one set of headers each.
            if not self.offload:
                _run(["ip", "-n", h.netns, "link", "set", "dev", h.iface, "gso_max_segs", "1"])
            for link in ("lo", h.iface):
                _run(["ip", "-n", h.netns, "link", "set", link, "up"])
            if not NETNS_ETC.exists():
                self._made_etc = True
            etc = NETNS_ETC / h.netns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text("127.0.0.1 localhost\n" + "".join(
                f"{'127.0.1.1' if self.names_on_loopback and o is h else o.address} {o.hostname}\n"
                for o in self.hosts))
        self.shape(self.rate)

    def shape(self, rate: int | None, delay_s: float | None = None) -> None:
        """Every host's link shaped to ``rate`` bits per second (None: unshaped), now: the one place
        the links get their rate, when built and between a sweep's points. tbf: a token bucket at
        the rate, its burst a millisecond's worth or 16 KiB (a few packets), on each host's side
        (every direction shaped once, by its sender). With ``delay_s``, netem instead: every frame
        held that long on its sender's side, at the rate (``netem_missing`` says whether the kernel
        has it)."""
        for h in self.hosts:
            if delay_s:
                _run(["tc", "-n", h.netns, "qdisc", "replace", "dev", h.iface, "root", "netem", "delay",
                      f"{round(delay_s * 1e6)}us", *(["rate", f"{rate}bit"] if rate else []), "limit", "100000"])
            elif rate:
                burst = max(rate // 8 // 1000, 16 * 1024)
                _run(["tc", "-n", h.netns, "qdisc", "replace", "dev", h.iface, "root", "tbf", "rate", f"{rate}bit",
                      "burst", str(burst), "latency", "50ms"])
            elif re.search(r"\b(tbf|netem)\b", _run(["tc", "-n", h.netns, "qdisc", "show", "dev", h.iface])):
                _run(["tc", "-n", h.netns, "qdisc", "del", "dev", h.iface, "root"])
        self.rate, self.delay_s = rate, delay_s

    def netem_missing(self) -> str | None:
        """Why these links cannot be given a delay (None: they can): the kernel needs netem
        (sch_netem), which some kernels are built without."""
        probe = ["tc", "-n", self.hosts[0].netns, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"]
        result = subprocess.run(probe, capture_output=True, text=True)
        if result.returncode and "unknown" in (result.stderr or "").lower():  # "Specified qdisc kind is unknown."
            return f"this kernel cannot delay packets: no netem (sch_netem): {result.stderr.strip()}"
        if result.returncode:
            raise MTCoreError(f"hosts: `{' '.join(probe)}` failed: {(result.stderr or result.stdout).strip()}")
        _run(["tc", "-n", self.hosts[0].netns, "qdisc", "del", "dev", "lo", "root"])
        return None

    def start(self, host: Host, command: list[str], *, env: dict[str, str], stdout, **popen) -> subprocess.Popen:
        """``command`` started on ``host``, pinned (``taskset``) to its share of the job's cores
        (``threads.cores_for``): the one way a run's processes are put on emulated hosts (``mtcore
        train --hosts``, the benches' workers). ``env`` without the job's core masks: a host's
        cores are its job's; ``MTCORE_HOST`` says which host it is."""
        from mtcore.perf.threads import JOB_CORES, PINNED_TO, cores_for

        cores = cores_for(host.index, len(self.hosts))
        env = {k: v for k, v in env.items() if k not in (JOB_CORES, PINNED_TO)}
        env["MTCORE_HOST"] = str(host.index)
        return subprocess.Popen(host.command(["taskset", "-c", ",".join(map(str, cores)), *command]), stdout=stdout,
                                env=env, start_new_session=True, **popen)

    def start_nodes(self, fw, devices: int, argv: list[str], *, log_dir: str | os.PathLike, run_id: str,
                    env: dict[str, str], output, **popen) -> list[tuple[Host, subprocess.Popen]]:
        """``python ARGV`` as one run of ``devices`` devices over these hosts: each runs ``fw``'s
        multi-node line (``Framework.node_command``, host 0 the rendezvous by hostname) for its
        processes (devices / hosts ranks where ``fw`` runs a process per device, else one), started
        by ``start``; ``output(host)`` is where its output goes. ``mtcore train --hosts``, the
        benches' workers and scripts/link_latency.py start their hosts so."""
        per_host = devices // len(self.hosts) if fw.PROCESS_PER_DEVICE else 1
        started = []
        for h in self.hosts:
            command = fw.node_command(h.index, len(self.hosts), per_host, self.hosts[0].hostname, argv,
                                      log_dir=Path(log_dir) / h.hostname, run_id=run_id)
            started.append((h, self.start(h, command, env=env, stdout=output(h), **popen)))
        return started

    def _netns(self, name: str) -> None:
        self._made.append(name)
        _run(["ip", "netns", "add", name])

    def close(self) -> None:
        """Everything made, removed: the processes left in the hosts, the namespaces (their links
        and qdiscs go with them), the hosts files. Safe to call twice."""
        # A second SIGTERM or Ctrl-C must not cut the clean-up short.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        try:
            for name in reversed(self._made):
                for _ in range(20):  # until no process is left: one may have forked as the others died
                    pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
                    if not pids:
                        break
                    for pid in pids:
                        try:
                            os.kill(int(pid), signal.SIGKILL)
                        except (ProcessLookupError, ValueError):
                            pass
                    time.sleep(0.05)
                subprocess.run(["ip", "netns", "del", name], capture_output=True)
                shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
            self._made.clear()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        if self._made_etc:
            try:
                NETNS_ETC.rmdir()
            except OSError:  # another run's hosts files are there
                pass
            self._made_etc = False
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


# One end of ``link_ceiling``'s streams: listen on this host's address, connect to the other's, send
# zeros to it and read what it sends, until killed.
_STREAM = """
import socket, sys, threading, time
me, other, port = sys.argv[1], sys.argv[2], 5201
server = socket.create_server((me, port))
while True:
    try:
        out = socket.create_connection((other, port))
        break
    except OSError:
        time.sleep(0.05)
chunk = bytes(1 << 20)
threading.Thread(target=lambda: [out.sendall(chunk) for _ in iter(int, 1)], daemon=True).start()
conn, buffer = server.accept()[0], bytearray(1 << 20)
while conn.recv_into(buffer):
    pass
"""
# A core kept busy as training keeps it: one thread of float32 matmuls.
_BUSY = "import numpy as np\na = np.ones((256, 256), np.float32)\nwhile True:\n    a @ a\n"


def link_ceiling(hosts: EmulatedHosts, seconds: float = 3.0, *, busy: bool = True) -> dict[str, float]:
    """The rate two hosts' link sustains, in bits per second each way: a TCP stream each way between
    host 0 and host 1 (each end pinned to its host's cores, as a run's process is), with ``busy``
    each host's cores also computing as training does, measured by host 0's counters over
    ``seconds`` after a second to settle. The top of a sweep over link rates: a rate above it is
    not one the machine can emulate."""
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    a, b = hosts.hosts[:2]
    procs = []
    try:
        for me, other in ((a, b), (b, a)):
            procs.append(hosts.start(me, [sys.executable, "-c", _STREAM, me.address, other.address], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            if busy:
                procs.append(hosts.start(me, [sys.executable, "-c", _BUSY], env=env, stdout=subprocess.DEVNULL))
        time.sleep(1.0)
        t0, c0 = time.perf_counter(), a.counters()
        time.sleep(seconds)
        t1, c1 = time.perf_counter(), a.counters()
        if any(p.poll() is not None for p in procs):
            raise MTCoreError("hosts: a stream measuring the link's ceiling stopped")
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
    return {f"{d}_bits_per_s": (c1[f"{d}_bytes"] - c0[f"{d}_bytes"]) * 8 / (t1 - t0) for d in ("tx", "rx")}


# ---- the interface a run's traffic crosses, on any host ------------------------------------------
def route_iface(address: str) -> str:
    """The interface this host sends to ``address`` (an address, or a name as this host resolves
    it) over (``ip route get``): for a run, the one its collectives cross, found from the rendezvous
    or coordinator address. A name that resolves to loopback gives ``lo``."""
    resolved = resolve(address)
    if not re.match(r"^\d+\.\d+\.\d+\.\d+$", resolved):
        raise MTCoreError(f"hosts: {address!r} does not resolve on this host")
    address = resolved
    out = _run(["ip", "-o", "route", "get", address])
    m = re.search(r"\bdev (\S+)", out)
    if not m:
        raise MTCoreError(f"hosts: no route to {address} here ({out.strip()})")
    if out.startswith("local ") and not address.startswith("127."):
        # This host's own address (a head node's rendezvous): the kernel routes it over lo, but
        # the other hosts reach it through the interface that holds it.
        return address_iface(address) or m.group(1)
    return m.group(1)


def address_iface(address: str) -> str | None:
    """The interface of this host that holds ``address``, if one does."""
    for line in _run(["ip", "-o", "-4", "addr", "show"]).splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[3].split("/")[0] == address:
            return fields[1]
    return None


def resolve(name: str) -> str:
    """``name`` as this host resolves it (an IPv4 address), or ``name`` itself where it does not."""
    import socket

    try:
        return socket.getaddrinfo(name, None, socket.AF_INET)[0][4][0]
    except (socket.gaierror, UnicodeError):
        return name


@dataclass(frozen=True)
class Link:
    """Where a process's collectives go, as the run's processes agreed it: the interface (``lo``
    where every process runs on this host), how many hosts the run spans, how many of its
    processes run on this one, and whether this process is the first of them (the one that reads
    the host's counters)."""

    iface: str
    hosts: int
    per_host: int
    first: bool


def agree_link(me: int, everyone: list[tuple[str, str]], given: str | None, head: str, *, strict: bool,
               hint: str = "pass --net-iface IFACE") -> Link:
    """The ``Link`` of process ``me``, from every process's ``(hostname, the address it reached the
    rendezvous host head at)``, exchanged through the framework's own store: ``lo`` when one
    hostname runs them all; else ``given`` (--net-iface); else the interface that routes to where
    this host reached ``head``; on ``head``'s own host, whose name may resolve to loopback, the one
    holding the address the others reached it at. ``strict`` (gloo binds to it): a host that cannot
    tell stops in one line saying what to set (``hint``), rather than let gloo advertise loopback
    and time out."""
    names = [host for host, _ in everyone]
    mine, seen = everyone[me]
    hosts, per_host, first = len(set(names)), names.count(mine), names.index(mine) == me
    if hosts == 1:
        return Link("lo", 1, per_host, first)
    if given:
        return Link(given, hosts, per_host, first)
    try:
        iface = route_iface(seen)
        if iface == "lo":
            reached = [addr for _, addr in everyone if not addr.startswith("127.")]
            iface = next((i for i in map(address_iface, reached) if i), "lo")
    except MTCoreError:
        if strict:
            raise
        iface = "lo"
    if iface == "lo" and strict:
        raise MTCoreError(f"{mine}: the rendezvous host {head} resolves to {seen} (loopback) here, and no other process "
                          f"reached it at an address of this host, so gloo would advertise one the other hosts cannot "
                          f"reach; {hint} (the interface that carries the run), or map the hostname to the host's own "
                          "address in /etc/hosts (docs/hosts.md)")
    return Link(iface, hosts, per_host, first)


def iface_counters(iface: str) -> dict[str, int]:
    """The kernel's byte counters of ``iface`` on this host (``/sys/class/net``)."""
    stats = Path("/sys/class/net") / iface / "statistics"
    if not stats.is_dir():
        known = sorted(p.name for p in Path("/sys/class/net").iterdir()) if Path("/sys/class/net").is_dir() else []
        raise MTCoreError(f"--net-iface {iface}: no such interface here; this host has {', '.join(known) or 'none'}")
    return {k: int((stats / k).read_text()) for k in COUNTERS}


def link_rate(iface: str) -> tuple[int | None, str]:
    """``(bits per second, where the figure comes from)`` of ``iface``'s link: the rate a tbf qdisc
    shapes it to (an emulated host's), else what the NIC reports (``/sys/class/net/IFACE/speed``,
    Mbit/s), else None, saying why (loopback: nothing crosses a network)."""
    if iface == "lo":
        return None, "loopback: nothing crosses a network"
    try:
        qdiscs = subprocess.run(["tc", "qdisc", "show", "dev", iface], capture_output=True, text=True).stdout
    except FileNotFoundError:  # no tc: nothing shapes it that we could read
        qdiscs = ""
    m = re.search(r"\b(tbf|netem)\b.*?\brate (\d+(?:\.\d+)?)([KMG]?)bit", qdiscs)
    if m:
        return int(float(m.group(2)) * _PREFIX[m.group(3).lower()]), f"shaped by tc ({m.group(1)})"
    try:
        speed = int((Path("/sys/class/net") / iface / "speed").read_text())
    except (OSError, ValueError):  # virtual links have no speed to read
        return None, "not reported (a virtual link)"
    return (speed * 1_000_000, "reported by the NIC") if speed > 0 else (None, "not reported")


LOOPBACK = "loopback: nothing crossed a network"
IDLE_WINDOW_S = 1.0  # the idle window a run's background traffic (heartbeats) is measured over


class WireMeter:
    """The kernel's byte counters of the interface a run's collectives cross (``iface``), read
    around each epoch's steps by the host's first process: what went over the wire, less the
    background (the engines' heartbeats) measured once over an idle window, with the link's rate
    and how much of it the epoch used. On ``lo`` it records only that nothing crossed a network."""

    def __init__(self, iface: str):
        self.iface = iface
        self.rate, self.rate_source = link_rate(iface)
        self.idle: dict[str, float] | None = None
        self._start: tuple[float, dict[str, int]] | None = None

    @property
    def network(self) -> bool:
        return self.iface != "lo"

    def _read(self) -> tuple[float, dict[str, int]]:
        return time.perf_counter(), iface_counters(self.iface)

    def measure_idle(self, seconds: float = IDLE_WINDOW_S) -> None:
        """The background: bytes per second over ``seconds`` while the run's processes wait (every
        process sleeps through the same window, just after a collective that all of them join)."""
        t0, c0 = self._read()
        time.sleep(seconds)
        t1, c1 = self._read()
        self.idle = {"window_s": t1 - t0, **per_second(c0, c1, t1 - t0)}

    def start(self) -> None:
        self._start = self._read() if self.network else None

    def stop(self, steps: int) -> dict:
        """What crossed the interface since ``start``, for an epoch of ``steps`` steps."""
        if not self.network:
            return {"iface": self.iface, "crossed_network": False, "note": LOOPBACK}
        (t0, c0), (t1, c1) = self._start, self._read()
        seconds = t1 - t0
        out = {"iface": self.iface, "crossed_network": True, "host": _hostname(), "seconds": seconds,
               "link_rate_bits_per_s": self.rate, "link_rate_source": self.rate_source,
               **{k: c1[k] - c0[k] for k in c0}, "idle": self.idle}
        out.update(per_step(c0, c1, seconds, steps, self.idle))
        # The busier direction's share of the link over the epoch, the background left out (a
        # full-duplex link: each direction its own).
        busiest = max(out["tx_bytes_per_step"], out["rx_bytes_per_step"]) * steps
        out["utilisation"] = busiest * 8 / seconds / self.rate if self.rate and seconds > 0 else None
        return out


def per_second(before: dict[str, int], after: dict[str, int], seconds: float) -> dict[str, float]:
    """Each counter's rate between two readings ``seconds`` apart (``tx_bytes_per_s``, ...)."""
    return {f"{k}_per_s": (after[k] - before[k]) / seconds for k in before}


def per_step(before: dict[str, int], after: dict[str, int], seconds: float, steps: int,
             idle: dict[str, float] | None) -> dict[str, float]:
    """Bytes per step each way between two readings of an interface's counters ``seconds`` apart
    over ``steps`` steps, less the background (``idle``: bytes per second) over that time."""
    return {f"{d}_bytes_per_step": max(after[f"{d}_bytes"] - before[f"{d}_bytes"]
                                       - (idle or {}).get(f"{d}_bytes_per_s", 0.0) * seconds, 0.0) / max(steps, 1)
            for d in ("tx", "rx")}


def transport(devices: int, processes: int, hosts: int | None = None, rate_bits: float | None = None) -> str:
    """How a run's devices talked, in a few words, as the report and the benches say it: one device,
    in one process (a memory copy), several hosts (at the link's rate, where one is known), or
    processes on one host over loopback."""
    if devices == 1:
        return "one device"
    if processes == 1:
        return "in one process"
    if hosts:
        return f"{hosts} hosts" + (f", {rate_bits / 1e6:g} Mbit/s" if rate_bits else ", unshaped")
    return "loopback"


def _hostname() -> str:
    import socket

    return socket.gethostname()


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def _run(argv: list[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True)
    except FileNotFoundError:
        raise MTCoreError(f"hosts: `{argv[0]}` is not installed here (iproute2)") from None
    if result.returncode:
        raise MTCoreError(f"hosts: `{' '.join(argv)}` failed: {(result.stderr or result.stdout).strip()}")
    return result.stdout


def leftovers(prefix: str = "mt") -> list[str]:
    """Namespaces, hosts files and root-namespace links whose names start with ``prefix``: what a
    run that cleaned up leaves, nothing."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
    names = [line.split()[0] for line in netns if line.strip() and line.split()[0].startswith(prefix)]
    files = [p.name for p in NETNS_ETC.glob(f"{prefix}*")] if NETNS_ETC.is_dir() else []
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.splitlines()
    veths = [line.split(":")[1].strip().split("@")[0] for line in links if line.split(":")[1].strip().startswith(prefix)]
    return [f"netns {n}" for n in names] + [f"/etc/netns/{f}" for f in files] + [f"link {v}" for v in veths]
