"""Starting a run in processes of its own: the one launcher of ``mtcore train`` and
``mtcore compare``."""

from __future__ import annotations

import os
from pathlib import Path

from mtcore.errors import MTCoreError
from mtcore.train.options import RunConfig, run_arguments


def _train_in_a_process(rc: RunConfig, out: Path) -> None:
    import signal
    import subprocess
    import sys

    if rc.framework == "torch" and rc.devices > 1:
        from mtcore.torch.parallel import launch

        launch(rc.devices, ["train", *run_arguments(rc), "--out", str(out), "--quiet"], log_dir=out / "logs")
        return
    command = [sys.executable, "-m", "mtcore", "train", *run_arguments(rc), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.returncode:
        last = (err.strip().splitlines() or ["(no output)"])[-1]
        raise MTCoreError(f"{rc.framework} on {rc.devices} device(s) failed: {last}")


