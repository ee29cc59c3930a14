"""Runs spread over emulated hosts (``--hosts``): the engines' own multi-node lines over links of
their own, the bytes the kernel counted on each host's interface against the prediction, the
failures a new cluster meets first, and nothing left behind however a run ends."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mtcore.cli import main
from mtcore.hosts import leftovers, missing_privilege

needs_privilege = pytest.mark.skipif(missing_privilege() is not None, reason=str(missing_privilege()))
ROOT = Path(__file__).resolve().parents[1]
# One batch shape (pairs of at most 16 tokens), one epoch: each process compiles its step once.
QUICK = ["--model", "tiny", "--synthetic-size", "400", "--max-len", "16", "--validation", "16", "--test", "16",
         "--eval-sentences", "0", "--global-batch-size", "16", "--epochs", "1", "--dropout", "0", "--quiet"]


def cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mtcore", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env={**os.environ, **(env or {})})


def finish(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def our_processes(marker: str) -> list[str]:
    """Processes still running whose command line names ``marker`` (a test's own output folder)."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines()
    return [line for line in out if marker in line and "ps -eo" not in line]


@pytest.mark.torch
@pytest.mark.jax
@pytest.mark.slow
@pytest.mark.xdist_group("processes")
@needs_privilege
def test_compare_over_two_hosts_trains_as_one_device_and_the_wire_is_as_predicted(tmp_path):
    out = tmp_path / "cmp"
    stdout, stderr = finish(cli("compare", "--mesh", "data:1", "data:2", "--hosts", "2", "--rate", "200mbit",
                                "--out", str(out), *QUICK), timeout=150)
    assert "report:" in stdout, stdout + stderr[-3000:]
    for fw in ("torch", "jax"):
        one = json.loads((out / f"{fw}-data1" / "metrics.json").read_text())["epochs"][0]["step_losses"]
        two = json.loads((out / f"{fw}-data2" / "metrics.json").read_text())
        assert two["run"]["hosts"] == 2 and two["run"]["rate"] == "200mbit"
        assert max(abs(a - b) for a, b in zip(one, two["epochs"][0]["step_losses"], strict=True)) < 1e-5, fw
        hosts = [json.loads((out / f"{fw}-data2" / f"rank{r}_results_epoch1.json").read_text())["wire"] for r in (0, 1)]
        assert [h["host"] for h in hosts] == ["host0", "host1"] and {h["iface"] for h in hosts} == {"eth0"}
        for h in hosts:
            assert h["crossed_network"] and h["link_rate_bits_per_s"] == 200_000_000
            assert h["link_rate_source"] == "shaped by tc (tbf)" and 0 < h["utilisation"] <= 1
            predicted = h["predicted_per_step"]
            assert predicted["engine"] == ("gloo" if fw == "torch" else "xla-gloo")
            # What the kernel counted on each host's link, less the idle background, per step.
            for d in ("tx", "rx"):
                assert abs(h[f"{d}_bytes_per_step"] / predicted[f"{d}_bytes"] - 1) < 0.10, (fw, d, h)
    report = (out / "report.md").read_text()
    assert re.search(r"\| torch \| data:2 \| 2 hosts, 200 Mbit/s \|", report), report
    assert re.search(r"\| jax \| data:1 \| one device \|", report)
    # One sentence per strategy: was the network the bottleneck at the rate it ran?
    for fw in ("torch", "jax"):
        assert re.search(rf"- {fw} data:2 \(2 hosts, 200 Mbit/s\): the network (was|was not) the bottleneck: of its "
                         r"[\d,]+ ms step, arithmetic took about [\d,]+ ms", report), report
        assert f"- {fw} data:1: no network was crossed (one device)." in report
    assert leftovers() == [] and not our_processes(str(out))


@pytest.mark.torch
@pytest.mark.xdist_group("processes")
@needs_privilege
def test_hostnames_on_loopback_torch_finds_the_interface_itself(tmp_path):
    """Debian's /etc/hosts maps a host's own name to 127.0.1.1, where gloo would advertise
    loopback to the other host. The ranks tell each other, through torchrun's store, where they
    reached the rendezvous host; host 0 binds gloo to the interface holding that address."""
    out = tmp_path / "run"
    stdout, stderr = finish(cli("train", "--framework", "torch", "--devices", "2", "--hosts", "2", "--out", str(out),
                                *QUICK, env={"MTCORE_HOSTNAMES_ON_LOOPBACK": "1"}), timeout=60)
    assert "torch: 1 epochs" in stdout, stdout + stderr[-3000:]
    wire = [json.loads((out / f"rank{r}_results_epoch1.json").read_text())["wire"] for r in (0, 1)]
    assert [w["iface"] for w in wire] == ["eth0", "eth0"] and all(w["tx_bytes_per_step"] > 0 for w in wire)
    assert leftovers() == [] and not our_processes(str(out))


def test_a_host_that_cannot_tell_its_interface_stops_in_one_line_saying_what_to_set():
    """Every process named, and where it reached the rendezvous host: one hostname is one host
    (lo); --net-iface wins; a host that reached it on loopback, with no other process having
    reached it at one of this host's addresses, stops (gloo binds to what is chosen) or, where
    nothing binds to it, records lo."""
    from mtcore.errors import MTCoreError
    from mtcore.hosts import Link, agree_link

    one_host = [("box", "127.0.1.1"), ("box", "127.0.1.1")]
    assert agree_link(1, one_host, None, "box", strict=True) == Link("lo", 1, 2, False)
    two = [("host0", "127.0.1.1"), ("host1", "127.0.1.1")]
    assert agree_link(0, two, "eth7", "host0", strict=True) == Link("eth7", 2, 1, True)
    with pytest.raises(MTCoreError, match=r"^host0: the rendezvous host host0 resolves to 127.0.1.1 \(loopback\) here, "
                                          r"and no other process reached it .*; pass --net-iface IFACE"):
        agree_link(0, two, None, "host0", strict=True)
    assert agree_link(0, two, None, "host0", strict=False) == Link("lo", 2, 1, True)


@pytest.mark.jax
@pytest.mark.slow
@pytest.mark.xdist_group("processes")
@needs_privilege
def test_the_mesh_bench_over_hosts_whose_names_are_on_loopback_jax_finds_the_interface_itself(tmp_path):
    """The mesh bench's workers spread over two hosts (--hosts), on Debian-like hosts files: the
    JAX processes tell each other through the coordinator where they reached it, and host 0 binds
    gloo to the interface holding that address. The bench checks each host's wire against the
    prediction before timing."""
    report = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "benches" / "test_scaling.py"), "-k",
                          "mesh and data2", "--framework", "jax", "--size", "tiny", "--hosts", "2", "--rate", "200mbit",
                          "--rounds", "2", "-p", "no:cacheprovider", f"--benchmark-json={report}", "-q"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={**os.environ, "MTCORE_HOSTNAMES_ON_LOOPBACK": "1"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    (bench,) = json.loads(report.read_text())["benchmarks"]
    assert bench["name"] == "test_train_step_mesh[jax-cpu-tiny-fp32-data2-2hosts]"
    info = bench["extra_info"]
    assert info["transport"] == "2 hosts, 200 Mbit/s" and [h["host"] for h in info["wire"]["hosts"]] == ["host0", "host1"]
    assert all(h["tx_bytes_per_step"] > 0.9 * info["wire"]["predicted_per_step"]["tx_bytes"] for h in info["wire"]["hosts"])
    assert leftovers() == []


@pytest.mark.torch
@pytest.mark.xdist_group("processes")
@needs_privilege
@pytest.mark.parametrize("how", ["sigterm", "killed host"])  # Ctrl-C unwinds as SIGTERM does (test_hosts)
def test_nothing_stays_when_a_run_over_hosts_is_stopped(tmp_path, how):
    out = tmp_path / "run"
    proc = cli("train", "--framework", "torch", "--devices", "2", "--hosts", "2", "--out", str(out), *QUICK[:-1],
               "--epochs", "50")
    prefix = f"mt{proc.pid}"
    deadline = time.monotonic() + 30
    while not (out / "run.json").is_file() and time.monotonic() < deadline:  # every host's process is up
        time.sleep(0.2)
    assert leftovers(prefix), "the hosts were never built"
    if how == "killed host":
        pid = subprocess.run(["ip", "netns", "pids", f"{prefix}-h1"], capture_output=True, text=True).stdout.split()
        trainers = [p for p in pid if "mtcore" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")]
        os.kill(int(trainers[-1]), signal.SIGKILL)
    else:
        proc.send_signal(signal.SIGTERM)
    _, stderr = finish(proc, timeout=30)
    assert proc.returncode != 0
    if how == "killed host":
        assert stderr.count("\n") == 1 and "host1 failed" in stderr and "every host was stopped" in stderr, stderr
    assert leftovers(prefix) == [] and not our_processes(str(out))


@pytest.mark.parametrize("args, error", [
    (["--mesh", "data:2", "--hosts", "2", "--rate", "100mb"], r"--rate '100mb': expected a rate like 100mbit"),
    (["--mesh", "data:2", "--rate", "100mbit"], r"--rate shapes the links of emulated hosts: give --hosts N too"),
    (["--mesh", "data:2", "--hosts", "3"], r"--hosts 3: the run's 2 device\(s\) do not split evenly over 3 hosts"),
    (["--mesh", "data:4", "--hosts", "4"], r"--hosts 4: this process may use \d+ core\(s\), and each host needs one"),
    (["--mesh", "data:2", "--hosts", "2", "--net-iface", "nope0"],
     r"--net-iface nope0: the emulated hosts talk over eth0 \(each has eth0 and lo\)"),
    (["--mesh", "data:2", "--net-iface", "nope0"], r"--net-iface nope0: no such interface here; this host has .*lo"),
    (["--mesh", "data:2", "--hosts", "2", "--device", "gpu"], r"--hosts: emulated hosts share this machine's CPU"),
], ids=["rate", "rate-without-hosts", "hosts-not-dividing", "more-hosts-than-cores", "iface-on-hosts", "iface",
        "gpu"])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch, args, error):
    if "--hosts" in args and "4" in args:
        import mtcore.perf.threads as threads

        monkeypatch.setattr(threads, "usable_cores", lambda: (0, 1))
    if missing_privilege() and "--hosts" in args and "--rate" not in args and "gpu" not in args and "3" not in args:
        pytest.skip(missing_privilege())
    out = tmp_path / "run"
    assert main(["train", *args, "--out", str(out), *QUICK]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(error, err), err
    assert not out.exists()


def test_compare_over_hosts_needs_a_mesh(tmp_path, capsys):
    assert main(["compare", "--hosts", "2", "--out", str(tmp_path / "c"), *QUICK]) == 2
    assert "compare --hosts 2: spreads meshes over hosts; give --mesh" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_the_docs_two_node_lines_are_what_runs_on_each_host():
    """``--hosts`` runs the two-node lines of docs/multi-device.md as written, with HEAD the first
    host's name and NODE each host's index: the flags each framework's node command gives."""
    from mtcore.backend import framework

    text = (ROOT / "docs" / "multi-device.md").read_text()
    block = text[text.index("# two nodes"):text.index("# a TPU VM")]
    torch_line, jax_line = (" ".join(part.split()) for part in block.replace("\\\n", " ").splitlines()[1:3])
    for fw, line in (("torch", torch_line), ("jax", jax_line)):
        written = line.replace("$HEAD", "host0").replace("$NODE", "1").split()
        command = framework(fw).node_command(1, 2, 4 if fw == "torch" else 1, "host0", ["-m", "mtcore", "train"],
                                             log_dir="L", run_id="mt-1")
        assert command[command.index("-m", 3 if fw == "torch" else 0):][:3] == ["-m", "mtcore", "train"]
        for flag in ("--nnodes", "--nproc-per-node", "--node-rank", "--rdzv-backend", "--rdzv-endpoint",
                     "--coordinator", "--num-processes", "--process-id"):
            if flag in written:
                assert command[command.index(flag) + 1] == written[written.index(flag) + 1], (fw, flag)


def test_without_the_privilege_a_run_over_hosts_is_one_line(tmp_path, capsys, monkeypatch):
    import mtcore.hosts as hosts

    monkeypatch.setattr(hosts, "missing_privilege",
                        lambda: "emulated hosts need root or CAP_NET_ADMIN (to create network namespaces and links)")
    out = tmp_path / "run"
    assert main(["train", "--mesh", "data:2", "--hosts", "2", "--out", str(out), *QUICK]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "mtcore: error: --hosts 2: emulated hosts need root or CAP_NET_ADMIN (to create network namespaces " \
                  "and links)", err
    assert not out.exists()


@pytest.mark.torch
@pytest.mark.jax
@pytest.mark.slow
@pytest.mark.xdist_group("processes")
@needs_privilege
def test_over_a_slow_link_the_traced_communication_is_what_the_planner_says(tmp_path):
    """``--profile`` on two hosts at 10 Mbit/s: each process's share of the step that is
    communication is the planner's within 20% (its communication, the engine's framed bytes over
    the rate, in place of the traced), torch's communication seconds are the planner's within 20%,
    and no framework's are under 80% of them (the bytes cannot cross faster than the link); JAX's
    run over them by XLA's per-call cost of its gloo collectives, which the planner does not
    charge (docs/findings/2026-12-05-where-a-step-goes.md). The report links every trace."""
    out = tmp_path / "cmp"
    # Six steps of 32 pairs: three traced past the recorded third.
    quick = [*QUICK, "--synthetic-size", "500", "--global-batch-size", "32"]  # the last of an option wins
    stdout, stderr = finish(cli("compare", "--mesh", "data:2", "--hosts", "2", "--rate", "10mbit", "--profile",
                                "--out", str(out), *quick), timeout=150)
    assert "report:" in stdout, stdout + stderr[-3000:]
    from mtcore.train.runs import breakdown_rows

    rows = breakdown_rows(out)
    assert sorted((r["framework"], r["process"]) for r in rows) == [("jax", 0), ("jax", 1), ("torch", 0), ("torch", 1)]
    for r in rows:
        assert r["transport"] == "2 hosts, 10 Mbit/s" and abs(r["unaccounted"]) < 0.05 * r["step"], r
        share = r["communication"] / r["step"]
        planned_share = r["planned_communication"] / (r["planned_communication"] + r["step"] - r["communication"])
        assert abs(share / planned_share - 1) < 0.20, r
        seconds = r["communication"] / r["planned_communication"]
        assert seconds > 0.8 and (seconds < 1.2 or r["framework"] == "jax"), r
        assert r["busy"] < 0.1  # the link, not the arithmetic, held the step
        assert (out / r["trace"]).is_file()
    report = (out / "report.md").read_text()
    assert "## Where a step's time went" in report and (out / "step_breakdown.png").is_file()
    assert "(torch-data2/traces/torch-data2-torch-rank1-epoch1.trace.json.gz)" in report
    assert leftovers() == [] and not our_processes(str(out))
