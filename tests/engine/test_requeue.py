"""The requeue signal (``train.requeue_signal``, SIGUSR1 by default; engine/signals.py): the step in progress
completes and is checkpointed, the run records ``stopped: requeue``, ``selfsup pretrain`` exits with
REQUEUE_EXIT_CODE, and ``--resume`` continues to the weights of a run that was never stopped. Under torchrun
(2 gloo processes) rank 0's signal decides for every rank."""
from __future__ import annotations

import json
import os
import signal
import socket
import threading
from pathlib import Path

import pytest
import torch
from cluster_kit import Launch, assert_same_run, child_env, metrics, pretrain_argv, selfsup_cmd, wait_for_step
from conftest import make_blobs, spawn_with_deadline, tiny_run_config

from selfsup.cli.main import main
from selfsup.config import build_run_config
from selfsup.engine.checkpoint import load_checkpoint
from selfsup.engine.rundir import list_checkpoints
from selfsup.engine.signals import REQUEUE_EXIT_CODE, StopOnSignal
from selfsup.engine.trainer import pretrain
from selfsup.errors import ConfigError
from selfsup.methods.simclr import SimCLR

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs POSIX signals")
DEADLINE_S = 240.0


def _in_main_thread() -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers are installed from the main thread only")


def _steps(run: Path) -> list[int]:
    return [load_checkpoint(p)["step"] for p in list_checkpoints(run)]


def _raise_at(monkeypatch, step: int, sig: signal.Signals) -> None:
    """``sig`` arrives in the middle of step ``step`` (0-based), sent by this process to itself."""
    original = SimCLR.forward

    def forward(self, batch, ctx=None):
        if ctx is not None and ctx.step == step:
            # no handler would let the signal's default action end pytest itself: fail the test instead
            assert signal.getsignal(sig) not in (signal.SIG_DFL, signal.SIG_IGN, None), f"{sig.name} is not handled"
            signal.raise_signal(sig)
        return original(self, batch, ctx)

    monkeypatch.setattr(SimCLR, "forward", forward)


# ------------------------------------------------------------------------------------------------- the config
@pytest.mark.parametrize("name", ["SIGUSR1", "SIGUSR2", "none"])
def test_requeue_signal_takes_a_signal_name_or_none(name):
    assert build_run_config({"train": {"requeue_signal": name}}).train.requeue_signal == name


def test_the_default_requeue_signal_is_sigusr1():
    assert build_run_config({}).train.requeue_signal == "SIGUSR1"


@pytest.mark.parametrize("bad", ["SIGKILL", "SIGTERM", "USR1", "sigusr1", ""])
def test_a_bad_requeue_signal_is_one_line_listing_the_valid_ones(bad):
    with pytest.raises(ConfigError) as e:
        build_run_config({"train": {"requeue_signal": bad}})
    msg = str(e.value)
    assert "train.requeue_signal must be one of SIGUSR1, SIGUSR2, none" in msg and "\n" not in msg


# --------------------------------------------------------------------------------------------- the handlers
def test_the_requeue_signal_is_recorded_and_a_later_sigterm_keeps_it_a_requeue():
    _in_main_thread()
    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
    before = {s: signal.getsignal(s) for s in handled}
    with StopOnSignal("SIGUSR1") as stop:
        assert signal.getsignal(signal.SIGUSR1) == stop._handle  # installed: raising it cannot end pytest
        signal.raise_signal(signal.SIGUSR1)
        assert stop.received == "SIGUSR1" and stop.requeue
        signal.raise_signal(signal.SIGTERM)  # the scheduler's own stop at the time limit, after its warning
        assert stop.received == "SIGUSR1" and stop.requeue
    assert {s: signal.getsignal(s) for s in handled} == before


def test_the_requeue_signal_after_sigterm_makes_the_stop_a_requeue():
    _in_main_thread()
    with StopOnSignal("SIGUSR2") as stop:
        assert signal.getsignal(signal.SIGUSR2) == stop._handle
        signal.raise_signal(signal.SIGTERM)
        assert stop.received == "SIGTERM" and not stop.requeue
        signal.raise_signal(signal.SIGUSR2)
        assert stop.received == "SIGUSR2" and stop.requeue


def test_requeue_signal_none_leaves_sigusr1_alone():
    _in_main_thread()
    before = signal.getsignal(signal.SIGUSR1)
    with StopOnSignal("none") as stop:
        assert signal.SIGUSR1 not in stop.signals() and signal.getsignal(signal.SIGUSR1) == before
        assert not stop.requeue


# ------------------------------------------------------------------------------------------------ the loop
@pytest.mark.parametrize("name", ["SIGUSR1", "SIGUSR2"])
def test_the_requeue_signal_checkpoints_the_step_and_records_a_requeue(tmp_path, monkeypatch, name):
    _in_main_thread()
    _raise_at(monkeypatch, 2, getattr(signal, name))
    run = tmp_path / "run"
    res = pretrain(tiny_run_config("simclr", seed=5, epochs=4, requeue_signal=name), run,
                   data=make_blobs(n=32, size=16), quiet=True)
    assert res.stopped == "requeue" and res.steps == 3  # step 2 (0-based) completed, then the stop
    assert _steps(run) == [3]
    info = json.loads((run / "run.json").read_text())
    assert info["stopped"] == "requeue" and info["signal"] == name and info["steps"] == 3


def test_a_requeue_asked_for_during_the_last_step_ends_the_run_as_done(tmp_path, monkeypatch):
    _in_main_thread()
    _raise_at(monkeypatch, 7, signal.SIGUSR1)  # 32 images / batch 8 x 2 epochs: steps 0..7
    res = pretrain(tiny_run_config("simclr", seed=5), tmp_path / "run", data=make_blobs(n=32, size=16), quiet=True)
    assert res.stopped == "done" and res.steps == 8


def test_the_cli_exits_with_the_requeue_code_and_resume_matches_an_uninterrupted_run(blobs_npz, tmp_path,
                                                                                      monkeypatch):
    _in_main_thread()

    def argv(out: str) -> list[str]:
        return pretrain_argv(blobs_npz, tmp_path / out, epochs=2) + ["--quiet"]

    assert main(argv("ref")) == 0
    _raise_at(monkeypatch, 2, signal.SIGUSR1)
    assert main(argv("run")) == REQUEUE_EXIT_CODE
    assert _steps(tmp_path / "run") == [3]
    monkeypatch.undo()
    assert main(argv("run") + ["--resume"]) == 0
    assert_same_run(tmp_path / "ref", tmp_path / "run", 8)


# ------------------------------------------------------------------------------------- a real process, sent
def test_sigusr1_sent_to_selfsup_pretrain_exits_3_and_the_requeued_job_continues_exactly(blobs_npz, tmp_path):
    def argv(out: str, *more: str) -> list[str]:
        return pretrain_argv(blobs_npz, tmp_path / out, epochs=400) + list(more)  # 1600 steps: never reached

    run = tmp_path / "run"
    job = Launch(selfsup_cmd(argv("run")), tmp_path / "run.log", child_env())
    try:
        wait_for_step(run, 3, job, DEADLINE_S)
        job.proc.send_signal(signal.SIGUSR1)
        rc = job.wait(DEADLINE_S)
    finally:
        job.stop()
    log = job.text()
    assert rc == REQUEUE_EXIT_CODE, log
    assert "SIGUSR1 at step" in log and "checkpoint saved" in log and "for a requeue" in log, log
    assert any(ln.startswith("requeue: ") for ln in log.splitlines()), log  # the CLI's summary line
    info = json.loads((run / "run.json").read_text())
    k = info["steps"]
    assert info["stopped"] == "requeue" and info["signal"] == "SIGUSR1" and 3 <= k < 1600
    assert _steps(run) == [k] and metrics(run)[-1]["step"] == k
    # the requeued job: the same command with --resume (--max-steps, a safe change, ends the test soon), beside
    # the same command never stopped
    more = ("--max-steps", str(k + 2))
    jobs = [Launch(selfsup_cmd(argv("run", *more, "--resume")), tmp_path / "resume.log", child_env()),
            Launch(selfsup_cmd(argv("ref", *more)), tmp_path / "ref.log", child_env())]
    try:
        for j in jobs:
            assert j.wait(DEADLINE_S) == 0, j.text()
    finally:
        for j in jobs:
            j.stop()
    assert_same_run(tmp_path / "ref", run, k + 2)


# -------------------------------------------------------------------------------------------------- torchrun
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _requeue_worker(rank: int, port: int, data: str, out: str) -> None:
    """One of 2 gloo ranks, as torchrun starts them; only rank 0 receives SIGUSR1 (in step 2)."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    original = SimCLR.forward

    def forward(self, batch, ctx=None):
        if rank == 0 and ctx is not None and ctx.step == 2:
            signal.raise_signal(signal.SIGUSR1)
        return original(self, batch, ctx)

    SimCLR.forward = forward
    cfg = tiny_run_config("simclr", {"proj_hidden_dim": 32, "proj_dim": 16}, data=data, seed=0, epochs=4)
    res = pretrain(cfg, Path(out) / "run", quiet=True)
    (Path(out) / f"rank{rank}.json").write_text(json.dumps({"stopped": res.stopped, "steps": res.steps}))


def test_under_torchrun_rank_0s_requeue_signal_stops_every_rank_at_the_same_step(blobs_npz, tmp_path):
    spawn_with_deadline(_requeue_worker, (_free_port(), str(blobs_npz), str(tmp_path)))
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert got == [{"stopped": "requeue", "steps": 3}] * 2  # rank 1 received nothing: rank 0 decided for it
    assert _steps(tmp_path / "run") == [3]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["stopped"] == "requeue"
