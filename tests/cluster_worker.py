"""The torchrun entry point of tests/engine/test_cluster_restart.py: ``selfsup pretrain`` (the CLI's ``main``, what
``torchrun -m selfsup`` runs) with two test hooks read from the environment:

- ``SELFSUP_TEST_KILL=RANK:STEP``: that rank SIGKILLs itself when it logs STEP, on torchrun's first launch only
  (``TORCHELASTIC_RESTART_COUNT`` 0), as a node failure or the OOM killer ends one process of a job.
- ``SELFSUP_TEST_EXITS=DIR``: each worker writes its exit code to ``DIR/exit-RANK-RESTART.txt``.

Each worker also asks the kernel to SIGKILL it when torchrun, its parent, dies: torchrun starts its workers in
their own sessions, so a test that must end a hung torchrun would otherwise leave them behind.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

import selfsup.api as api
from selfsup.cli.main import main
from selfsup.engine.callbacks import Callback

PR_SET_PDEATHSIG = 1


class KillAt(Callback):
    """SIGKILL this process when it logs ``step`` (after the step, before that step's checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_log(self, step: int, rec: dict[str, Any], out: Any) -> None:
        if step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def die_with_parent() -> None:
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))  # Linux; elsewhere a no-op
    except (OSError, AttributeError):
        pass


def install_kill_hook() -> None:
    spec = os.environ.get("SELFSUP_TEST_KILL")
    if not spec or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return
    rank, step = (int(v) for v in spec.split(":"))
    if int(os.environ.get("RANK", "0")) != rank:
        return
    original = api.pretrain

    def pretrain(cfg: Any, out: Any, *, callbacks: Sequence[Callback] = (), **kwargs: Any) -> Any:
        return original(cfg, out, callbacks=[*callbacks, KillAt(step)], **kwargs)

    api.pretrain = pretrain  # the CLI imports it from selfsup.api when the command runs


def record_exit(code: int) -> None:
    where = os.environ.get("SELFSUP_TEST_EXITS")
    if where:
        name = f"exit-{os.environ.get('RANK', '0')}-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}.txt"
        (Path(where) / name).write_text(str(code))


if __name__ == "__main__":
    die_with_parent()
    torch.set_num_threads(1)
    install_kill_hook()
    rc = main(sys.argv[1:])
    record_exit(rc)
    sys.exit(rc)
