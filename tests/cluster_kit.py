"""Shared by tests/engine/test_requeue.py and tests/engine/test_cluster_restart.py: real ``python -m selfsup`` and
``python -m torch.distributed.run`` processes with a deadline, their run directories, and the comparison of a run
that was stopped and continued with one that never was."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from selfsup.engine.checkpoint import load_checkpoint
from selfsup.engine.rundir import list_checkpoints

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("images_per_s", "time_s")
WORKER = ROOT / "tests" / "cluster_worker.py"  # torchrun's entry point in these tests: `selfsup pretrain` + a kill hook


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a training process: one thread, these sources first, gloo on the loopback device."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def pretrain_argv(data: Path, out: Path, *, epochs: int, checkpoint_every: int = 0) -> list[str]:
    """A tiny SimCLR run: a width-0.25 ConvNet, batch 8, 16 px views, a log line per step."""
    return ["pretrain", "--data", str(data), "--backbone", "convnet", "--width", "0.25", "--batch-size", "8",
            "--epochs", str(epochs), "--seed", "3", "--device", "cpu", "--checkpoint-every", str(checkpoint_every),
            "--set", "train.log_every=1", "--set", "augment.size=16", "--set", "method.proj_hidden_dim=32",
            "--set", "method.proj_dim=16", "--set", "train.dist_timeout_min=1", "--out", str(out)]


def selfsup_cmd(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "selfsup", *argv]


def torchrun_cmd(argv: list[str], *, rdzv_id: str, max_restarts: int = 1, extra: tuple[str, ...] = ()) -> list[str]:
    """``torchrun`` with 2 CPU processes on one node, the rendezvous spelled out as on a cluster (c10d; port 0:
    a free one), running :data:`WORKER` with ``argv``."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0", "--rdzv-id", rdzv_id,
            "--max-restarts", str(max_restarts), *extra, str(WORKER), *argv]


class Launch:
    """A process with its stdout and stderr in ``log``; :meth:`wait` fails the test (and ends the process) past a
    deadline, :meth:`stop` ends it if it still runs (SIGTERM: torchrun ends its workers; then SIGKILL)."""

    def __init__(self, cmd: list[str], log: Path, env: dict[str, str]) -> None:
        self.log = log
        with open(log, "w") as f:
            self.proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, deadline_s: float) -> int:
        try:
            return self.proc.wait(timeout=deadline_s)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"{' '.join(self.proc.args[1:4])} still running after {deadline_s:.0f} s:\n"
                        f"{self.text()[-4000:]}")

    def stop(self) -> None:
        if not self.running():
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: the process and what it left in it
            self.proc.wait()


def metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    out = []
    for line in (path.read_text().splitlines() if path.exists() else []):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line being written (or cut by a kill; a resume drops it)
    return out


def without_timing(recs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in recs]


def wait_for_step(run: Path, step: int, job: Launch, deadline_s: float) -> int:
    """Wait until ``run`` has logged ``step`` (while ``job`` runs); the last logged step."""
    end = time.monotonic() + deadline_s
    while job.running() and time.monotonic() < end:
        recs = metrics(run)
        if recs and recs[-1]["step"] >= step:
            return recs[-1]["step"]
        time.sleep(0.01)
    job.stop()
    pytest.fail(f"{run} did not log step {step} (process running: {job.running()}):\n{job.text()[-4000:]}")


def assert_same_run(ref: Path, run: Path, steps: int) -> None:
    """``run`` ends where ``ref`` (never stopped) ends: the same final weights and optimizer state, bit for bit,
    and the same loss curve with one record per step."""
    a = load_checkpoint(list_checkpoints(ref)[0])
    b = load_checkpoint(list_checkpoints(run)[0])
    assert a["step"] == b["step"] == steps
    assert a["method"].keys() == b["method"].keys()
    for k, v in a["method"].items():
        assert torch.equal(v, b["method"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    curve = without_timing(metrics(run))
    assert [r["step"] for r in curve] == list(range(1, steps + 1))
    assert curve == without_timing(metrics(ref))
