"""Crash safety with real processes: SIGKILL at random moments, resume, and end where an uninterrupted run ends.

Training processes are forked from a server that imported torch once (tests/crash_zygote.py), so a dozen
kill/resume segments fit in seconds; each child runs ``selfsup.cli.main.main`` — the code ``python -m selfsup``
runs. The SIGTERM test starts ``python -m selfsup pretrain`` itself.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from selfsup.engine.checkpoint import load_checkpoint
from selfsup.engine.rundir import list_checkpoints

ROOT = Path(__file__).resolve().parents[2]
TIMING = ("images_per_s", "time_s")
STEPS = 64  # 64 images / batch 8 = 8 steps per epoch, 8 epochs
KILLS = 16  # kills after a chosen step (+ a random delay); a few more land at random times during start-up


def child_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    return env


def write_tiny_npz(path: Path, n: int = 64, size: int = 16) -> Path:
    g = np.random.default_rng(0)
    x = (g.random((n, size, size, 3)) * 255).astype(np.uint8)
    y = np.arange(n) % 4
    np.savez(path, x_train=x, y_train=y, x_test=x[:16], y_test=y[:16])
    return path


def train_argv(data: Path, out: Path, *, epochs: int = STEPS // 8, ckpt_every: int = 1) -> list[str]:
    return ["pretrain", "--data", str(data), "--backbone", "convnet", "--width", "0.25", "--batch-size", "8",
            "--epochs", str(epochs), "--seed", "3", "--device", "cpu", "--checkpoint-every", str(ckpt_every),
            "--set", "train.log_every=1", "--set", "augment.size=16", "--out", str(out), "--quiet"]


def metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line cut by the kill (resume drops it)
    return out


def without_timing(recs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in recs]


def last_step(run: Path) -> int:
    recs = metrics(run)
    return recs[-1]["step"] if recs else 0


class Zygote:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "crash_zygote.py")], env=child_env(),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def start(self, argv: list[str], log: Path) -> int:
        self.proc.stdin.write(json.dumps({"argv": argv, "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["pid"]

    def wait(self, kill: bool = False) -> int:
        """SIGKILL the child first when ``kill``; its exit code (negative: killed by that signal)."""
        self.proc.stdin.write(json.dumps({"end": "kill" if kill else "wait"}) + "\n")
        self.proc.stdin.flush()
        status = json.loads(self.proc.stdout.readline())["status"]
        return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)

    def running(self, pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(") ")[-1][0] != "Z"
        except FileNotFoundError:
            return False

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def verify_checkpoints(run: Path, seen: set[str]) -> int:
    """Load every checkpoint on disk now; a damaged one fails the test. Returns how many were loaded."""
    n = 0
    for p in list_checkpoints(run):
        try:
            ck = load_checkpoint(p)
        except FileNotFoundError:
            continue
        assert ck["step"] == int(p.stem.split("-")[1])
        seen.add(p.name)
        n += 1
    return n


def kill_round(zyg: Zygote, data: Path, run: Path, log: Path, rng: random.Random, step_s: float) -> dict:
    """Train ``run`` to the end through repeated SIGKILL + ``--resume``; returns what happened."""
    targets = sorted(rng.sample(range(1, STEPS - 8), KILLS))
    stats = {"kills": 0, "early_kills": 0, "loads": 0, "seen": set()}
    for _ in range(2 * KILLS + 5):
        pid = zyg.start(train_argv(data, run) + ["--resume"], log)
        if stats["kills"] >= len(targets):
            assert zyg.wait() == 0, log.read_text()
            return stats
        if rng.random() < 0.25:
            # a random moment of start-up: building the model, loading the checkpoint, truncating metrics
            time.sleep(rng.uniform(0.0, 0.3))
            kind = "early_kills"
        else:
            # after the target step is logged, plus a random delay of up to about one step: the kill lands while
            # the child logs, writes or renames a checkpoint, or computes the next step
            target = max(targets[stats["kills"]], last_step(run) + 1)
            deadline = time.monotonic() + 60
            while zyg.running(pid) and last_step(run) < target and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, step_s))
            kind = "kills"
        rc = zyg.wait(kill=True)
        if rc == 0:  # it finished before the kill landed
            return stats
        stats[kind] += 1
        assert rc == -signal.SIGKILL, log.read_text()
        stats["loads"] += verify_checkpoints(run, stats["seen"])
    raise AssertionError("the run makes no progress across restarts")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_sigkill_at_random_moments_then_resume_matches_uninterrupted_run(tmp_path):
    rng = random.Random(int(os.environ.get("SELFSUP_CRASH_SEED", "0")))
    data = write_tiny_npz(tmp_path / "tiny.npz")
    ref = tmp_path / "ref"
    zyg = Zygote()
    rounds = []
    try:
        zyg.start(train_argv(data, ref), tmp_path / "ref.log")
        assert zyg.wait() == 0, (tmp_path / "ref.log").read_text()
        times = [r["time_s"] for r in metrics(ref)]
        step_s = (times[-1] - times[0]) / (len(times) - 1)
        # a load spike can let the child run past several targets; another round then adds the missing kills
        while sum(r["kills"] for r in rounds) < 10 and len(rounds) < 3:
            run = tmp_path / f"run{len(rounds)}"
            rounds.append(kill_round(zyg, data, run, tmp_path / "run.log", rng, step_s))
            rounds[-1]["loads"] += verify_checkpoints(run, rounds[-1]["seen"])
            check_same_as_reference(ref, run)
    finally:
        zyg.close()
    kills = sum(r["kills"] for r in rounds)
    assert kills >= 10, f"only {kills} kills landed during training in {len(rounds)} rounds"
    print(f"\ncrash test: {kills} SIGKILLs during training + {sum(r['early_kills'] for r in rounds)} during "
          f"start-up survived in {len(rounds)} round(s), {sum(r['loads'] for r in rounds)} checkpoint loads "
          f"verified ({sum(len(r['seen']) for r in rounds)} distinct files)")


def check_same_as_reference(ref: Path, run: Path) -> None:
    # same final state, bit for bit, as the run that was never interrupted
    a = load_checkpoint(list_checkpoints(ref)[0])
    b = load_checkpoint(list_checkpoints(run)[0])
    assert a["step"] == b["step"] == STEPS
    for k, v in a["method"].items():
        assert torch.equal(v, b["method"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(a["rng"]["aug"], b["rng"]["aug"])
    # the logged curve continues without gaps or duplicates and equals the uninterrupted one
    curve = without_timing(metrics(run))
    assert [r["step"] for r in curve] == list(range(1, STEPS + 1))
    assert curve == without_timing(metrics(ref))
    assert not list((run / "checkpoints").glob(".*.tmp")), "temp files of cut saves are cleaned on resume"


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    """Pre-emption: SIGTERM mid-run → checkpoint at the current step, exit 0, and --resume continues from it."""
    data = write_tiny_npz(tmp_path / "tiny.npz")
    run = tmp_path / "run"
    argv = train_argv(data, run, epochs=400, ckpt_every=0)  # no periodic checkpoints: only the signal's
    argv.remove("--quiet")
    proc = subprocess.Popen([sys.executable, "-m", "selfsup", *argv], env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while last_step(run) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "SIGTERM at step" in err and "checkpoint saved" in err
    assert [ln for ln in out.splitlines() if not ln.startswith("selfsup: ")][0].startswith("interrupted:")
    ckpts = list_checkpoints(run)
    assert len(ckpts) == 1
    ck = load_checkpoint(ckpts[0])
    assert ck["step"] >= 3 and ck["step"] < 400 * 8
    assert metrics(run)[-1]["step"] == ck["step"]
    run_json = json.loads((run / "run.json").read_text())
    assert run_json["stopped"] == "interrupted" and run_json["signal"] == "SIGTERM"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_in_process_stops_at_the_step_boundary(tmp_path, monkeypatch, sig):
    """The handler only records the signal: the step in progress completes, is checkpointed, the run returns,
    and the previous handlers are restored."""
    from conftest import make_blobs, tiny_run_config

    from selfsup.engine.trainer import pretrain
    from selfsup.methods.simclr import SimCLR

    original = SimCLR.forward

    def forward(self, batch, ctx=None):
        if ctx is not None and ctx.step == 2:
            os.kill(os.getpid(), sig)  # arrives in the middle of step 2 (0-based)
        return original(self, batch, ctx)

    monkeypatch.setattr(SimCLR, "forward", forward)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    res = pretrain(tiny_run_config("simclr", seed=5, epochs=4), tmp_path / "run", data=make_blobs(n=32, size=16),
                   quiet=True)
    assert res.stopped == "interrupted" and res.steps == 3
    assert load_checkpoint(list_checkpoints(tmp_path / "run")[0])["step"] == 3
    assert {s: signal.getsignal(s) for s in before} == before


def test_second_ctrl_c_stops_at_once_without_saving_a_half_step(tmp_path, monkeypatch):
    from conftest import make_blobs, tiny_run_config

    from selfsup.engine.trainer import pretrain
    from selfsup.methods.simclr import SimCLR

    original = SimCLR.forward

    def forward(self, batch, ctx=None):
        if ctx is not None and ctx.step == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # the second raises KeyboardInterrupt inside the step
        return original(self, batch, ctx)

    monkeypatch.setattr(SimCLR, "forward", forward)
    res = pretrain(tiny_run_config("simclr", seed=5, epochs=4, checkpoint_every=1), tmp_path / "run",
                   data=make_blobs(n=32, size=16), quiet=True)
    assert res.stopped == "interrupted" and res.steps == 2
    assert load_checkpoint(list_checkpoints(tmp_path / "run")[0])["step"] == 2  # step 2 was cut: not saved
