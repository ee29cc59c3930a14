"""Emulated hosts (mtcore/hosts.py): addresses, hostnames and hosts files of their own, shaped
links, the kernel's counters of what crossed them, and nothing left behind however a run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mtcore.errors import MTCoreError
from mtcore.hosts import EmulatedHosts, iface_counters, leftovers, link_ceiling, link_rate, missing_privilege, parse_rate, route_iface

needs_privilege = pytest.mark.skipif(missing_privilege() is not None, reason=str(missing_privilege()))


def test_rates_parse_as_tc_spells_them_and_a_bad_one_is_one_line():
    assert parse_rate("100mbit") == 100_000_000 and parse_rate("1gbit") == 10**9 and parse_rate("500kbit") == 500_000
    assert parse_rate("2.5Gbit") == 2_500_000_000 and parse_rate(None) is None and parse_rate("unshaped") is None
    for bad in ("100", "fast", "100mb", "0mbit", "-1mbit"):
        with pytest.raises(MTCoreError, match=r"expected a rate like 100mbit"):
            parse_rate(bad)


def test_without_the_privilege_it_says_what_is_missing(monkeypatch):
    import mtcore.hosts as hosts

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(hosts, "_has_cap_net_admin", lambda: False)
    with pytest.raises(MTCoreError) as e, EmulatedHosts(2):
        pass
    assert str(e.value) == "emulated hosts need root or CAP_NET_ADMIN (to create network namespaces and links)"


@needs_privilege
def test_two_hosts_talk_over_a_shaped_link_that_the_kernel_counts(tmp_path):
    server = ("import socket\ns = socket.create_server(('host1', 5001)); c, _ = s.accept(); n = 0\n"
              "while (d := c.recv(65536)): n += len(d)\nprint(n)")
    with EmulatedHosts(2, rate="40mbit") as hs:
        prefix = hs.prefix
        h0, h1 = hs.hosts
        seen = subprocess.run(h1.command(["sh", "-c", "hostname; getent hosts host0"]), capture_output=True,
                              text=True, timeout=10).stdout.split()
        assert seen == ["host1", "198.18.0.1", "host0"]  # its own hostname; the others by name
        receiver = subprocess.Popen(h1.command([sys.executable, "-c", server]), stdout=subprocess.PIPE, text=True)
        before = h0.counters()
        sender = [sys.executable, "-c", "import socket, time\nfor _ in range(50):\n    try:\n"
                  "        c = socket.create_connection(('host1', 5001)); break\n"
                  "    except OSError: time.sleep(0.1)\nc.sendall(b'x' * 2_000_000); c.close()"]
        start = time.monotonic()
        subprocess.run(h0.command(sender), check=True, timeout=30)
        assert receiver.communicate(timeout=30)[0].strip() == "2000000"
        seconds = time.monotonic() - start
        sent = h0.counters()["tx_bytes"] - before["tx_bytes"]
    # The payload and its framing (TCP/IP headers, the handshake), counted by host0's interface;
    # through a 40 Mbit/s bucket 16 Mbit take 0.4 s at least, less the bucket's burst.
    assert 2_000_000 <= sent <= 2_200_000, sent
    assert seconds >= 0.3, seconds
    assert leftovers(prefix) == []


@needs_privilege
def test_nothing_stays_after_an_error_or_a_process_left_running():
    with pytest.raises(RuntimeError), EmulatedHosts(2) as hs:
        prefix = hs.prefix
        sleeper = subprocess.Popen(hs.hosts[0].command(["sleep", "60"]))
        raise RuntimeError("the run failed")
    assert sleeper.wait(timeout=10) == -signal.SIGKILL  # the host's process went with it
    assert leftovers(prefix) == []


@needs_privilege
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_nothing_stays_after_sigterm_or_ctrl_c(sig):
    prefix = f"mtt{os.getpid()}{sig}"
    # Ctrl-C as a terminal's Python takes it, even where the test runs in a background job (whose
    # shell ignores SIGINT, and so would the child it inherits that from).
    child = subprocess.Popen([sys.executable, "-c", f"import signal, time\nfrom mtcore.hosts import EmulatedHosts\n"
                              "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
                              f"with EmulatedHosts(2, prefix={prefix!r}):\n    print('up', flush=True)\n"
                              "    time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "up"
    assert leftovers(prefix)  # built
    child.send_signal(sig)
    assert child.wait(timeout=20) in (128 + signal.SIGTERM, -signal.SIGINT)
    assert leftovers(prefix) == []


def test_loopback_is_no_network_and_an_unknown_interface_is_one_line():
    assert route_iface("127.0.0.1") == "lo"
    assert link_rate("lo") == (None, "loopback: nothing crosses a network")
    assert set(iface_counters("lo")) == {"tx_bytes", "rx_bytes", "tx_packets", "rx_packets"}
    with pytest.raises(MTCoreError, match=r"^--net-iface nope0: no such interface here; this host has .*lo"):
        iface_counters("nope0")


@needs_privilege
def test_a_host_finds_the_interface_to_its_peer_with_the_rate_it_is_shaped_to():
    probe = ("import json; from mtcore.hosts import iface_counters, link_rate, route_iface; "
             "print(json.dumps([route_iface('host1'), route_iface('host0'), link_rate('eth0'), sorted(iface_counters('eth0'))]))")
    with EmulatedHosts(2, rate="25mbit") as hs:
        out = subprocess.run(hs.hosts[0].command([sys.executable, "-c", probe]), capture_output=True, text=True,
                             timeout=30)
    assert out.returncode == 0, out.stderr
    # host0's own name routes over lo, but the interface holding its address carries the run
    assert json.loads(out.stdout) == ["eth0", "eth0", [25_000_000, "shaped by tc (tbf)"],
                                      ["rx_bytes", "rx_packets", "tx_bytes", "tx_packets"]]


@needs_privilege
def test_links_are_reshaped_between_points_and_a_delay_needs_netem():
    """``shape``: the one place the links get their rate, again between a sweep's points (unshaped
    removes the qdisc); a delay asks for netem, which a kernel may lack: then one line why."""
    probe = "from mtcore.hosts import link_rate; print(*link_rate('eth0'))"

    def rate(hs):
        out = subprocess.run(hs.hosts[1].command([sys.executable, "-c", probe]), capture_output=True, text=True,
                             timeout=30)
        return out.stdout.strip()

    with EmulatedHosts(2, rate="25mbit") as hs:
        hs.shape(parse_rate("40mbit"))
        assert rate(hs) == "40000000 shaped by tc (tbf)" and hs.rate == 40_000_000
        hs.shape(None)
        assert "shaped" not in rate(hs) and hs.rate is None  # the veth's own figure, if any
        why = hs.netem_missing()
        if why is None:
            hs.shape(parse_rate("40mbit"), 0.002)
            assert rate(hs) == "40000000 shaped by tc (netem)" and hs.delay_s == 0.002
        else:
            assert why.startswith("this kernel cannot delay packets: no netem")
            with pytest.raises(MTCoreError, match="netem"):
                hs.shape(parse_rate("40mbit"), 0.002)
    assert leftovers(hs.prefix) == []


@needs_privilege
def test_the_link_ceiling_is_measured_each_way_and_its_streams_stop():
    with EmulatedHosts(2) as hs:
        got = link_ceiling(hs, 0.5, busy=True)
        assert set(got) == {"tx_bits_per_s", "rx_bits_per_s"} and min(got.values()) > 1e6, got
        assert subprocess.run(["ip", "netns", "pids", hs.hosts[0].netns], capture_output=True, text=True).stdout == ""
    assert leftovers(hs.prefix) == []
