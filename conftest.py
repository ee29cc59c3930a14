"""Shared by tests/ and benches/: skip what the machine cannot run, with a reason that names what
is missing, instead of failing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# pytester: the tests run pytest-benchmark sessions of their own (tests/test_bench_compare.py).
pytest_plugins = ["pytester"]

try:
    from hypothesis import HealthCheck, settings

    # Each new shape recompiles under jit, so examples are few and deadlines off.
    settings.register_profile(
        "default", max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    settings.register_profile(
        "ci", max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
    )
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default"))
except ImportError:  # hypothesis is only needed by the tests
    pass

DATA_DIR = Path(os.environ.get("MTCORE_DATA", Path(__file__).resolve().parent.parent / "shared" / "data"))


def _requirement_reasons() -> dict[str, str | None]:
    from mtcore.backend import available
    from mtcore.devices import missing

    reasons = {
        "torch": available("torch"),
        "jax": available("jax"),
        "hf": available("hf"),
        "data": None if (DATA_DIR / "en-hu").is_dir() else f"no parallel text at {DATA_DIR / 'en-hu'}",
    }
    gpu = [missing(fw, "gpu") for fw in ("torch", "jax")]
    reasons["gpu"] = None if any(r is None for r in gpu) else "; ".join(gpu)
    reasons["tpu"] = missing("jax", "tpu")
    return reasons


def pytest_collection_modifyitems(config, items):
    reasons = _requirement_reasons()
    for item in items:
        for marker, reason in reasons.items():
            if reason and item.get_closest_marker(marker):
                item.add_marker(pytest.mark.skip(reason=f"needs {marker}: {reason}"))
                break


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = DATA_DIR / "en-hu"
    if not path.is_dir():
        pytest.skip(f"no parallel text at {path}")
    return path


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Skips as one line per reason (``N skipped: reason``) instead of one line per test: a CPU run
    skips every GPU and TPU case. ``pytest -rs`` (or ``-ra``) lists each one as pytest does."""
    chars = config.option.reportchars or ""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped or any(c in chars for c in "saA"):
        return
    reasons: dict[str, int] = {}
    for report in skipped:
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reason = reason.removeprefix("Skipped: ")
        # Benches prefix the case id, and a pair's reason its framework ("gpu-tiny-fp32: torch: torch
        # sees no GPU ..."): group by the cause.
        head, sep, tail = reason.partition(": ")
        while sep and " " not in head:
            reason = tail
            head, sep, tail = reason.partition(": ")
        reasons[reason] = reasons.get(reason, 0) + 1
    terminalreporter.section("skipped, by reason (pytest -rs lists each)")
    for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{count:4d} skipped: {reason}")
