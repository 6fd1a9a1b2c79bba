"""Clusters with the real launcher: ``python -m torch.distributed.run`` (torchrun), 2 CPU processes, gloo.

- ``--max-restarts 1``: rank 1 SIGKILLs itself after step 5 (tests/cluster_worker.py); torchrun stops rank 0 and
  starts both again with the same command line, whose ``--resume`` continues from the step-4 checkpoint; the
  final weights, optimizer state and loss curve equal those of a torchrun run that was never interrupted.
- ``--signals-to-handle ...,SIGUSR1`` (docs/distributed.md, "Clusters: preemption and restarts"): SIGUSR1 to
  torchrun reaches every worker; rank 0's decision makes all ranks checkpoint the same step and exit with the
  requeue code.

Every process has a deadline (tests/cluster_kit.py: ``Launch``), so a failure is a message, never a hang.
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from cluster_kit import Launch, assert_same_run, child_env, metrics, pretrain_argv, torchrun_cmd, wait_for_step

from selfsup.engine.checkpoint import load_checkpoint
from selfsup.engine.rundir import list_checkpoints
from selfsup.engine.signals import REQUEUE_EXIT_CODE

pytestmark = pytest.mark.skipif(not (hasattr(signal, "SIGUSR1") and torch.distributed.is_available()),
                                reason="needs POSIX signals and torch.distributed")
DEADLINE_S = float(os.environ.get("SELFSUP_TEST_DEADLINE_S", "300"))  # per process; lower it to debug
STEPS = 8  # 32 images / batch 8 = 4 steps per epoch, 2 epochs
HANDLED = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"  # torchrun's default signals and the requeue signal


def _exits(where: Path) -> dict[str, str]:
    return {p.stem: p.read_text() for p in sorted(where.glob("exit-*.txt"))}


def test_torchrun_restarts_after_a_rank_is_killed_and_the_resumed_run_is_exact(blobs_npz, tmp_path):
    exits = tmp_path / "exits"
    exits.mkdir()
    argv = {name: pretrain_argv(blobs_npz, tmp_path / name, epochs=2, checkpoint_every=2) + ["--resume"]
            for name in ("ref", "cut")}
    ref = Launch(torchrun_cmd(argv["ref"], rdzv_id="ref"), tmp_path / "ref.log", child_env())
    cut = Launch(torchrun_cmd(argv["cut"], rdzv_id="cut"), tmp_path / "cut.log",
                 child_env(SELFSUP_TEST_KILL="1:5", SELFSUP_TEST_EXITS=str(exits)))
    try:
        assert ref.wait(DEADLINE_S) == 0, ref.text()
        assert cut.wait(DEADLINE_S) == 0, cut.text()
    finally:
        ref.stop()
        cut.stop()
    run = tmp_path / "cut"
    # rank 1 never finished the first launch (SIGKILL; rank 0 then fails in a collective); both ranks of the
    # restart (TORCHELASTIC_RESTART_COUNT 1) did
    got = _exits(exits)
    assert "exit-1-0" not in got and got.get("exit-0-1") == got.get("exit-1-1") == "0", (got, cut.text())
    resumes = [json.loads(x) for x in (run / "resumes.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumes] == [4], cut.text()  # the restart resumed from the step-4 checkpoint
    info = json.loads((run / "run.json").read_text())
    assert info["launches"] == 2 and info["world_size"] == 2 and info["stopped"] == "done"
    assert_same_run(tmp_path / "ref", run, STEPS)


def test_sigusr1_to_torchrun_checkpoints_every_rank_at_one_step_and_exits_for_a_requeue(blobs_npz, tmp_path):
    exits = tmp_path / "exits"
    exits.mkdir()
    run = tmp_path / "run"
    cmd = torchrun_cmd(pretrain_argv(blobs_npz, run, epochs=400) + ["--resume"], rdzv_id="requeue", max_restarts=0,
                       extra=("--signals-to-handle", HANDLED))
    job = Launch(cmd, tmp_path / "job.log", child_env(SELFSUP_TEST_EXITS=str(exits)))
    try:
        wait_for_step(run, 2, job, DEADLINE_S)  # both ranks are training: their handlers are installed
        job.proc.send_signal(signal.SIGUSR1)
        rc = job.wait(DEADLINE_S)
    finally:
        job.stop()
    assert rc != 0, job.text()  # torchrun reports the signal it forwarded, not its workers' exit codes
    code = str(REQUEUE_EXIT_CODE)
    assert _exits(exits) == {"exit-0-0": code, "exit-1-0": code}, job.text()
    info = json.loads((run / "run.json").read_text())
    assert info["stopped"] == "requeue" and info["signal"] == "SIGUSR1" and info["world_size"] == 2
    ckpts = list_checkpoints(run)
    assert len(ckpts) == 1 and load_checkpoint(ckpts[0])["step"] == info["steps"]
    assert 2 <= info["steps"] < 400 * 4
    assert metrics(run)[-1]["step"] == info["steps"]


def test_each_torchrun_launch_has_its_own_keys_in_the_agents_store(monkeypatch):
    """torchrun keeps one store for the job across restarts: a restarted rank must not read the keys (gloo
    addresses, barrier counts) of the launch before, whose processes are gone."""
    from datetime import timedelta

    from selfsup.engine.distributed import _launch_store

    server = torch.distributed.TCPStore("127.0.0.1", 0, 1, is_master=True, wait_for_workers=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(server.port))
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    stores = {}
    for launch in ("0", "1"):
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", launch)
        stores[launch] = _launch_store(1, timedelta(seconds=5))
    stores["0"].set("default_pg/0//cpu/rank_0", "dead address")
    assert not stores["1"].check(["default_pg/0//cpu/rank_0"])
    stores["1"].set("default_pg/0//cpu/rank_0", "live address")
    assert stores["1"].get("default_pg/0//cpu/rank_0") == b"live address"
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")  # the rank-0 store of env:// is new every launch
    assert _launch_store(1, timedelta(seconds=5)) is None
