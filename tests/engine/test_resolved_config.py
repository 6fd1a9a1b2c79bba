"""The resolve step: config.yaml holds every value a run trained with, and that file alone rebuilds the run.

Also the layering the loop's split keeps: the engine never imports evaluation (the online kNN monitor is a
callback that :func:`selfsup.api.pretrain` attaches).
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
import yaml

import selfsup.engine
from selfsup.config import build_run_config
from selfsup.engine.resolve import resolve_config
from selfsup.engine.trainer import pretrain
from selfsup.methods.simclr import SimCLR

RESOLVED = {("optim", "name"), ("optim", "lr"), ("optim", "weight_decay"), ("augment", "preset"),
            ("train", "precision"), ("train", "channels_last"), ("train", "sync_bn")}


def tiny_cfg(data: Path, **train):
    return build_run_config({
        "method": {"name": "simclr", "proj_hidden_dim": 32, "proj_dim": 16},
        "data": {"path": str(data)}, "backbone": {"name": "convnet", "width": 0.25},
        "train": {"epochs": 2, "max_steps": 4, "batch_size": 8, "log_every": 1, "device": "cpu", **train},
    })


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_config_yaml_is_the_resolved_config_and_rebuilds_the_run(blobs_npz, tmp_path):
    cfg = tiny_cfg(blobs_npz)
    asked = cfg.to_dict()
    assert all(asked[s][k] in (None, "auto") for s, k in RESOLVED)  # every one left to the run
    pretrain(cfg, tmp_path / "a", quiet=True)
    assert cfg.to_dict() == asked  # the caller's config is not changed

    saved = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert saved["optim"]["name"] == SimCLR.default_optimizer
    assert saved["optim"]["lr"] == pytest.approx(SimCLR.base_lr * 8 / 256)
    assert saved["optim"]["weight_decay"] == SimCLR.default_weight_decay
    assert saved["augment"]["preset"] == SimCLR.default_augment
    assert saved["train"]["precision"] == "fp32"  # auto on the CPU
    assert saved["train"]["channels_last"] is True  # the ConvNet asks for it
    assert saved["train"]["sync_bn"] is SimCLR.needs_sync_bn
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert (run["optimizer"], run["lr"], run["weight_decay"]) == (saved["optim"]["name"], saved["optim"]["lr"],
                                                                  saved["optim"]["weight_decay"])

    again = build_run_config(saved)  # the file alone
    pretrain(again, tmp_path / "b", quiet=True)
    assert len(losses(tmp_path / "a")) == 4 and losses(tmp_path / "b") == losses(tmp_path / "a")
    assert yaml.safe_load((tmp_path / "b" / "config.yaml").read_text()) == saved  # resolving is idempotent


def test_resolve_keeps_explicit_values_and_copies(blobs_npz):
    from selfsup.data import load_dataset

    cfg = build_run_config({"method": "simclr", "data": {"path": str(blobs_npz)},
                            "backbone": {"name": "convnet", "width": 0.25},
                            "optim": {"name": "adamw", "lr": 0.05, "weight_decay": 0.0},
                            "augment": {"preset": "byol"},
                            "train": {"batch_size": 8, "precision": "bf16", "channels_last": False, "sync_bn": True}})
    out = resolve_config(cfg, SimCLR, load_dataset(str(blobs_npz)), torch.device("cpu"))
    assert out is not cfg and out.to_dict() == cfg.to_dict()


def test_batch_size_left_to_the_method():
    """No train.batch_size: the method's default_batch_size (EMP-SSL's paper batch 100 at its paper lr 0.3)."""
    from types import SimpleNamespace

    from selfsup.errors import ConfigError
    from selfsup.methods.emp_ssl import EMPSSL

    def resolved(method, cls, n=1000, **train):
        cfg = build_run_config({"method": method, "data": {"path": "x.npz"},
                                "train": {"channels_last": False, **train}})
        assert cfg.train.batch_size == train.get("batch_size")  # left to the run until resolved
        return resolve_config(cfg, cls, SimpleNamespace(train=SimpleNamespace(num_images=n)), torch.device("cpu"))

    out = resolved("simclr", SimCLR)
    assert out.train.batch_size == 256 and out.optim.lr == pytest.approx(SimCLR.base_lr)
    out = resolved("emp-ssl", EMPSSL)
    assert out.train.batch_size == EMPSSL.default_batch_size == 100 and out.optim.lr == pytest.approx(0.3)
    assert resolved("emp-ssl", EMPSSL, batch_size=64).train.batch_size == 64  # a given batch wins
    with pytest.raises(ConfigError, match=r"train.batch_size \(100\) is larger than the dataset"):
        resolved("emp-ssl", EMPSSL, n=50)


def test_knn_every_without_its_callback_warns(blobs_npz, tmp_path):
    """The engine has no kNN of its own: train.knn_every needs selfsup.api.pretrain (or the CLI)."""
    with pytest.warns(UserWarning, match="knn_every"):
        pretrain(tiny_cfg(blobs_npz, max_steps=1, knn_every=1), tmp_path / "run", quiet=True)


def test_engine_does_not_import_evaluation():
    root = Path(selfsup.engine.__file__).parent
    for f in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            level = getattr(node, "level", 0)
            for n in names:
                full = n if not level else ("selfsup." if level == 2 else "selfsup.engine.") + n
                assert not full.startswith(("selfsup.evaluation", "selfsup.api")), f"{f.name} imports {full}"
