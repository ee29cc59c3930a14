"""scripts/install.py picks a CPU build of torch: from the configured index when it serves one,
else from PyTorch's CPU index; a torch already installed is kept. pip is faked: nothing downloads."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "install.py"


@pytest.fixture()
def install(monkeypatch):
    spec = importlib.util.spec_from_file_location("mtcore_install", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    calls = []

    def fake_pip(*args, capture=False):
        calls.append(args)
        if "--dry-run" in args:
            return module.report
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(module, "pip", fake_pip)
    module.calls = calls
    return module


def _report(requires, version="2.13.0"):
    body = {"install": [{"metadata": {"name": "torch", "version": version, "requires_dist": requires}}]}
    return subprocess.CompletedProcess([], 0, json.dumps(body), "")


def _installed(calls):
    return [c for c in calls if c[0] == "install" and "--dry-run" not in c]


def test_a_cpu_build_on_the_configured_index_is_installed_from_it(install, monkeypatch):
    monkeypatch.setattr(install.importlib.util, "find_spec", lambda name: None)
    install.report = _report(["filelock", "sympy>=1.13.3", "optree>=0.13.0; extra == \"optree\""], "2.13.0+cpu")
    install.install_torch("torch==2.13.0")
    assert _installed(install.calls) == [("install", "--no-compile", "torch==2.13.0")]


def test_a_cuda_build_sends_it_to_the_cpu_index(install, monkeypatch):
    monkeypatch.setattr(install.importlib.util, "find_spec", lambda name: None)
    install.report = _report(["filelock", "nvidia-cuda-runtime-cu12==12.8.90; platform_system == \"Linux\"", "triton==3.5"])
    install.install_torch("torch==2.13.0")
    (call,) = _installed(install.calls)
    assert call[:4] == ("install", "--no-compile", "--index-url", "https://download.pytorch.org/whl/cpu") and call[-1] == "torch==2.13.0"


def test_an_unresolvable_spec_goes_to_the_cpu_index(install, monkeypatch, capsys):
    monkeypatch.setattr(install.importlib.util, "find_spec", lambda name: None)
    install.report = subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found for torch==9.9")
    install.install_torch("torch==9.9")
    (call,) = _installed(install.calls)
    assert "--index-url" in call
    assert "could not resolve torch==9.9" in capsys.readouterr().out


def test_an_installed_torch_is_kept(install, monkeypatch, capsys):
    pytest.importorskip("torch")
    install.install_torch("torch==2.13.0")
    assert install.calls == []
    assert "already installed: kept" in capsys.readouterr().out


def test_packages_are_byte_compiled_once_over_every_core(install, monkeypatch):
    # pip's own byte-compiling runs on one core; the install turns it off and compiles afterwards.
    ran = []
    monkeypatch.setattr(install.subprocess, "run", lambda cmd, **kw: ran.append(cmd))
    install.main(["--no-torch", "--extras", "test"])
    (extras,) = _installed(install.calls)
    assert "--no-compile" in extras
    (compileall,) = ran
    assert compileall[1:5] == ["-m", "compileall", "-q", "-j"] and compileall[5] == "0"
