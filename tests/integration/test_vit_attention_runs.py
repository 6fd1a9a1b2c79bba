"""``selfsup viz attention`` on a run of every ViT method: generated from the method registry.

Every method whose test backbone is a ViT (MAE, iBOT, DINOv2, I-JEPA, SimMIM, data2vec, MSN, PMSN, AIM, MaskFeat)
and DINO on a ViT pretrains two steps; the CLI writes one PNG per image, and the maps of the run's evaluation
backbone have one CLS → patch map per head that sums to 1. BEiT (it needs a tokenizer run first) has the same
check in tests/unit/test_mim.py; DINOv2 is also checked with register tokens, which the maps must leave out.
"""
from __future__ import annotations

import pytest
import torch
from conftest import tiny_run_config

from selfsup.cli.main import main
from selfsup.config import build_run_config
from selfsup.data import load_dataset
from selfsup.engine.build import build_run
from selfsup.engine.rundir import latest_checkpoint
from selfsup.engine.trainer import pretrain
from selfsup.registry import METHODS
from selfsup.viz.attention import attention_maps

VIT_METHODS = sorted(n for n in METHODS.names()
                     if getattr(METHODS.get(n), "test_backbone", None) == "vit-test" and n not in ("beit", "tokenizer"))
CASES = [(n, 0) for n in VIT_METHODS + ["dino"]] + [("dinov2", 2)]


def test_the_vit_methods_are_found():
    assert {"mae", "ibot", "dinov2", "ijepa", "simmim", "data2vec", "msn", "pmsn", "aim", "maskfeat"} <= \
        set(VIT_METHODS)


@pytest.mark.parametrize("name,registers", CASES, ids=[f"{n}-reg{r}" for n, r in CASES])
def test_attention_maps_of_a_run(name, registers, blobs_npz, tmp_path, capsys):
    cfg = tiny_run_config(name, data=blobs_npz, epochs=1, max_steps=2)
    cfg.backbone.name, cfg.backbone.registers = "vit-test", registers  # DINO's test backbone is a ConvNet
    run = tmp_path / "run"
    pretrain(cfg, run, quiet=True)
    assert main(["viz", "attention", str(run), "--n", "2", "--out", str(tmp_path / "maps")]) == 0, \
        capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["attn-000.png", "attn-001.png"]

    ckpt = latest_checkpoint(run)[1]
    built = build_run(build_run_config(ckpt["config"]), load_dataset(str(blobs_npz)), torch.device("cpu"))
    built.method.load_state_dict(ckpt["method"])
    maps = attention_maps(built.method.eval_backbone(), torch.randn(3, 3, 16, 16))
    assert maps.shape[:2] == (3, 2) and maps.shape[2] == maps.shape[3] >= 2  # vit-test's 2 heads, a patch grid
    assert torch.allclose(maps.sum((-2, -1)), torch.ones(3, 2), atol=1e-5)
