"""Queue and memory bank survive --resume: N steps in one go == N/2 steps, then resume to N (same losses, same
buffers); a memory-bank run cannot be resumed on a dataset of another size."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import make_blobs

from selfsup.config import ConfigError, build_run_config
from selfsup.engine.rundir import latest_checkpoint
from selfsup.engine.trainer import pretrain

CASES = {
    "moco-v2": ({"queue_size": 32, "bn_splits": 2}, ["queue.rows", "queue.ptr", "queue.ids"]),
    "npid": ({"num_negatives": 16}, ["bank.rows"]),
}


def _cfg(name: str, max_steps: int):
    over, _ = CASES[name]
    return build_run_config({
        "method": {"name": name, **over},
        "backbone": {"name": "convnet", "width": 0.25},
        "optim": {"name": "sgd", "lr": 0.05},
        "train": {"epochs": 2, "batch_size": 16, "max_steps": max_steps, "device": "cpu", "log_every": 1,
                  "channels_last": False},
    })


def _losses(run_dir) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


@pytest.mark.parametrize("name", sorted(CASES))
def test_resume_gives_the_same_losses_and_buffers(name, tmp_path):
    data = make_blobs(n=48, size=16)  # 3 steps per epoch: the resumed half crosses an epoch boundary
    full = pretrain(_cfg(name, 4), tmp_path / "full", data=data, quiet=True)
    pretrain(_cfg(name, 2), tmp_path / "half", data=data, quiet=True)
    resumed = pretrain(_cfg(name, 4), tmp_path / "half", data=data, quiet=True, resume=True)
    assert full.steps == resumed.steps == 4
    a, b = _losses(full.run_dir), _losses(resumed.run_dir)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-5, abs=1e-6), step
    sa, sb = latest_checkpoint(full.run_dir)[1]["method"], latest_checkpoint(resumed.run_dir)[1]["method"]
    for key in CASES[name][1]:
        assert torch.allclose(sa[key].float(), sb[key].float(), atol=1e-5), key


def test_memory_bank_resume_on_other_data_is_a_config_error(tmp_path):
    pretrain(_cfg("npid", 2), tmp_path / "run", data=make_blobs(n=48, size=16), quiet=True)
    with pytest.raises(ConfigError, match="data.path"):
        pretrain(_cfg("npid", 4), tmp_path / "run", data=make_blobs(n=64, size=16), quiet=True, resume=True)
