"""Resume restores the EMA teacher, the DINO center and the SwAV queue: N steps straight = N/2 + resume N/2."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import make_blobs

from selfsup.config import build_run_config
from selfsup.engine.rundir import latest_checkpoint
from selfsup.engine.trainer import pretrain

CASES = {
    "byol": {"proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 32},
    "dino": {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16},
    "swav": {"proj_hidden_dim": 32, "proj_dim": 16, "n_prototypes": 8, "queue_size": 24, "queue_start_epoch": 0,
             "freeze_prototypes_epochs": 0},
}
STATE = {"byol": "target.teacher.", "dino": ("teacher.teacher.", "center.center"), "swav": "queues."}


def _cfg(name, max_steps):
    return build_run_config({
        "method": {"name": name, **CASES[name]},
        "data": {"path": "blobs"}, "backbone": {"name": "convnet", "width": 0.25},
        "augment": {"local_crops": 2} if name != "byol" else {},
        "train": {"epochs": 2, "batch_size": 8, "max_steps": max_steps, "log_every": 1, "device": "cpu"},
        "optim": {"name": "sgd", "lr": 0.05},
    })


def _losses(run):
    return [json.loads(l)["loss"] for l in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]


@pytest.mark.parametrize("name", list(CASES))
def test_resume_restores_shared_parts(name, tmp_path):
    data = make_blobs(n=32, size=16)  # 4 steps per epoch: the run crosses an epoch boundary
    a = pretrain(_cfg(name, 6), tmp_path / "a", data=data, quiet=True)
    pretrain(_cfg(name, 3), tmp_path / "b", data=data, quiet=True)
    b = pretrain(_cfg(name, 6), tmp_path / "b", data=data, quiet=True, resume=True)
    assert a.steps == b.steps == 6
    assert _losses(tmp_path / "a") == pytest.approx(_losses(tmp_path / "b"), rel=1e-6)
    sa = latest_checkpoint(tmp_path / "a")[1]["method"]
    sb = latest_checkpoint(tmp_path / "b")[1]["method"]
    prefixes = STATE[name] if isinstance(STATE[name], tuple) else (STATE[name],)
    keys = [k for k in sa if k.startswith(prefixes)]
    assert keys
    for k in keys:
        assert torch.allclose(sa[k].float(), sb[k].float(), atol=1e-6), k
