import json
import subprocess
import sys

import pytest

from mtcore.cli import main


def test_info_lists_frameworks_and_devices(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch:" in out and "jax:" in out
    assert main(["info", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    for name in ("torch", "jax"):
        fw = data["frameworks"][name]
        assert fw["available"] is False or fw["device_counts"]["cpu"] >= 1


def test_params_and_errors(capsys):
    assert main(["params", "marian-en-hu"]) == 0
    assert "76,149,760 trainable parameters" in capsys.readouterr().out
    assert main(["params", "huge"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mtcore: error: unknown model preset 'huge'") and "Traceback" not in err


@pytest.mark.slow
def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "mtcore.cli", "info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "jax" in out.stdout


def test_help_has_a_line_and_the_default_for_every_option():
    import argparse

    from mtcore.cli import build_parser

    parser = build_parser()
    assert "``" not in (parser.description or "")  # no raw markup
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    missing = []
    for name, command in commands.items():
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            label = f"{name} {action.option_strings[0] if action.option_strings else action.dest}"
            if not action.help:
                missing.append(f"{label}: no help")
            elif (action.option_strings and not action.required and action.default not in (None, False)
                  and "default" not in action.help):
                missing.append(f"{label}: default {action.default!r} not shown")
    assert not missing, missing


def test_skips_are_summarised_one_line_per_reason():
    import importlib.util
    from pathlib import Path
    from types import SimpleNamespace

    path = Path(__file__).resolve().parent.parent / "conftest.py"
    spec = importlib.util.spec_from_file_location("root_conftest_for_test", path)
    root = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(root)

    def skip(reason):
        return SimpleNamespace(longrepr=("file.py", 1, f"Skipped: {reason}"))

    lines = []
    reporter = SimpleNamespace(
        stats={"skipped": [skip("jax-gpu-tiny-fp32: jax sees no GPU"), skip("gpu-tiny-fp32: torch: torch sees no GPU"),
                           skip("jax-gpu-small-fp32: jax sees no GPU"), skip("needs data: no text")]},
        section=lambda title: lines.append(f"== {title}"), write_line=lines.append)
    root.pytest_terminal_summary(reporter, 0, SimpleNamespace(option=SimpleNamespace(reportchars="fEX")))
    assert lines[1:] == ["   2 skipped: jax sees no GPU", "   1 skipped: torch sees no GPU", "   1 skipped: needs data: no text"]
    lines.clear()
    root.pytest_terminal_summary(reporter, 0, SimpleNamespace(option=SimpleNamespace(reportchars="fEXs")))
    assert lines == []  # -rs: pytest lists each skip itself


def test_params_reads_a_checkpoint_directory_given_relatively(tmp_path, monkeypatch, capsys):
    """``mtcore params DIR`` decides "checkpoint" as ``mtcore train --model DIR`` does: any directory
    (a relative one too), not only a path with a slash in it."""
    pytest.importorskip("transformers")
    from mtcore.config import ModelConfig
    from mtcore.torch.hf import marian_config

    cfg = ModelConfig.preset("tiny")
    marian_config(cfg).save_pretrained(tmp_path / "ckpt")
    monkeypatch.chdir(tmp_path)
    assert main(["params", "ckpt"]) == 0
    assert f"ckpt: {cfg.num_params():,} trainable parameters" in capsys.readouterr().out
