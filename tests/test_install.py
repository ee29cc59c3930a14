"""scripts/install.py picks a CPU build of torch: from the configured index when it serves one,
else from PyTorch's CPU index; a torch already installed is kept. pip is faked: nothing downloads."""

from __future__ import annotations

import importlib.util
import json
import os
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


def test_what_mtcore_imports_is_byte_compiled_by_importing_it_in_two_halves(install, monkeypatch):
    # pip's own byte-compiling runs on one core, file by file: the install turns it off and writes
    # the bytecode of what mtcore's processes import by importing it, in two processes at once,
    # with bytecode writing on whatever the environment says.
    started = []

    class FakeProcess:
        def __init__(self, cmd, env, **kw):
            started.append((cmd, env))

        def wait(self):
            return 0

    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.setattr(install.subprocess, "Popen", FakeProcess)
    install.main(["--no-torch", "--extras", "test"])
    (extras,) = _installed(install.calls)
    assert "--no-compile" in extras
    assert [cmd[3:] for cmd, _ in started] == [list(half) for half in install.WARM]
    assert all(cmd[1] == "-c" and env["PYTHONDONTWRITEBYTECODE"] == "" for cmd, env in started)
    # torch's compiler makes a cache folder in the temporary folder as it is imported: a scratch one, gone after.
    assert all(env["TMPDIR"] != os.environ.get("TMPDIR") and not Path(env["TMPDIR"]).exists() for _, env in started)


def test_every_module_the_install_compiles_exists():
    """A module renamed by a new release would drop its bytecode without a word (the warm-up
    skips what does not import, for installs without every extra)."""
    install = importlib.util.module_from_spec(spec := importlib.util.spec_from_file_location("mtcore_install", SCRIPT))
    spec.loader.exec_module(install)
    missing = [m for half in install.WARM for m in half
               if importlib.util.find_spec(m.partition(".")[0]) and importlib.util.find_spec(m) is None]
    assert not missing
