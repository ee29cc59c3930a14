"""A pytest plugin that makes every benchmarked train step do more work: after each update, a
forward pass of the model on part of the batch (``MTCORE_SLOWER_STEP_ROWS``: a fraction of its
rows, default 1.25; how much slower that makes each step: docs/findings/2026-11-27-gate-calibration.md). Real extra
arithmetic, in both frameworks, through the same backend calls the benches make: what the
regression gate must catch. Not a sleep, and nowhere near product code.

    python scripts/bench_gate.py --base HEAD --head-plugin tests/perf/slower_step.py
"""

from __future__ import annotations

import os

import numpy as np

import mtcore


def _rows(batch) -> tuple[int, int, int]:
    """(batch, source length, target length) of a device batch (a dict of arrays or tensors)."""
    b, s = batch["src_ids"].shape  # (B, S)
    return int(b), int(s), int(batch["tgt_in"].shape[1])  # tgt_in: (B, T)


def _slower(compile_train_step):
    def wrapped(self, cfg, tcfg, state, batch, *args, **kwargs):
        step, seconds, state, metrics = compile_train_step(self, cfg, tcfg, state, batch, *args, **kwargs)
        b, s, t = _rows(batch)
        rows = max(1, round(float(os.environ.get("MTCORE_SLOWER_STEP_ROWS", "1.25")) * b))
        extra = mtcore.random_batch(cfg, rows, s, t, seed=3, full=True)

        def slower_step(state, batch):
            state, metrics = step(state, batch)
            logits = self.forward(self.state_params(state), cfg, extra)  # (rows, T, V), on the host
            assert np.isfinite(logits[0, 0, 0])
            return state, metrics

        return slower_step, seconds, state, metrics

    return wrapped


def pytest_configure(config):
    # Imported here, not at the top: the benches' conftest sets the thread budget first.
    from mtcore.jax.backend import JaxBackend
    from mtcore.torch.backend import TorchBackend

    for backend in (TorchBackend, JaxBackend):
        backend.compile_train_step = _slower(backend.compile_train_step)
