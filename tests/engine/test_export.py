"""``selfsup export``: the backbone's weights under torchvision's names, loadable by torchvision with equal features."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import make_blobs
from torch import nn

from selfsup.cli.main import main
from selfsup.config import build_run_config
from selfsup.engine.checkpoint import load_checkpoint
from selfsup.engine.export import export_backbone, read_export_metadata, rebuild_method
from selfsup.engine.rundir import list_checkpoints
from selfsup.engine.trainer import pretrain

torchvision = pytest.importorskip("torchvision")


def tiny_run(tmp_path, backbone="resnet18", width=1.0, cifar_stem=True, channels=3):
    cfg = build_run_config({
        "backbone": {"name": backbone, "width": width, "cifar_stem": cifar_stem},
        "train": {"epochs": 1, "max_steps": 1, "batch_size": 8, "device": "cpu", "seed": 1},
    })
    run = tmp_path / f"run-{backbone}-{width}-{channels}"
    pretrain(cfg, run, data=make_blobs(n=16, size=16, channels=channels), quiet=True)
    return run


@pytest.fixture(scope="module")
def resnet18_run(tmp_path_factory):
    """One tiny width-1 ResNet-18 run shared by the format tests (a full-width step is the slow part)."""
    return tiny_run(tmp_path_factory.mktemp("export"))


def torchvision_resnet18(cifar_stem: bool) -> nn.Module:
    m = torchvision.models.resnet18(weights=None)
    if cifar_stem:
        m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        m.maxpool = nn.Identity()
    m.fc = nn.Identity()
    return m


def our_backbone(run):
    return rebuild_method(load_checkpoint(list_checkpoints(run)[0])).eval_backbone().eval()


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_export_loads_into_torchvision_with_the_same_features(tmp_path, resnet18_run, fmt):
    if fmt == "safetensors":
        pytest.importorskip("safetensors")
    run = resnet18_run
    path = export_backbone(run, fmt, tmp_path / f"bb.{fmt}")
    if fmt == "safetensors":
        from safetensors.torch import load_file

        weights = load_file(str(path))
    else:
        weights = torch.load(path, weights_only=True)
    tv = torchvision_resnet18(cifar_stem=True)
    tv.load_state_dict(weights, strict=True)  # every key matches, none missing (fc is Identity)
    tv.eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        ref = our_backbone(run)(x)
        got = tv(x)
    assert got.shape == ref.shape == (4, 512)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    meta = read_export_metadata(path)
    assert meta["arch"] == "resnet18" and meta["width"] == 1.0 and meta["cifar_stem"] is True
    assert meta["in_channels"] == 3 and meta["num_features"] == 512 and meta["torchvision_loadable"] is True
    assert meta["step"] == 1 and len(meta["mean"]) == 3


def test_other_widths_keep_torchvision_key_names(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.torch import load_file

    run = tiny_run(tmp_path, width=0.25)
    path = export_backbone(run)
    assert path == run / "backbone.safetensors"
    weights = load_file(str(path))
    tv_keys = set(torchvision_resnet18(cifar_stem=True).state_dict())
    assert set(weights) == tv_keys
    assert weights["conv1.weight"].shape == (16, 3, 3, 3)
    meta = read_export_metadata(path)
    assert meta["width"] == 0.25 and meta["num_features"] == 128 and meta["torchvision_loadable"] is False


def test_backbone_can_supply_its_own_key_mapping(tmp_path, monkeypatch):
    """The hook a ViT uses to export timm names: ``export_state_dict()`` and ``export_key_names``."""
    pytest.importorskip("safetensors")
    from safetensors.torch import load_file

    from selfsup.backbones.convnet import ConvNet

    run = tiny_run(tmp_path, backbone="convnet", width=0.25)
    monkeypatch.setattr(ConvNet, "export_key_names", "other-lib", raising=False)
    monkeypatch.setattr(ConvNet, "export_state_dict",
                        lambda self: {"renamed." + k: v for k, v in self.state_dict().items()}, raising=False)
    path = export_backbone(run)
    assert all(k.startswith("renamed.") for k in load_file(str(path)))
    assert read_export_metadata(path)["key_names"] == "other-lib"


def test_export_cli(tmp_path, capsys):
    pytest.importorskip("safetensors")
    run = tiny_run(tmp_path, width=0.25)
    assert main(["export", str(run), "--format", "pt", "--out", str(tmp_path / "w.pt")]) == 0
    assert "exported resnet18 backbone" in capsys.readouterr().out
    assert json.loads((tmp_path / "w.pt.json").read_text())["width"] == 0.25
    assert main(["export", str(tmp_path / "missing")]) == 2
    assert "run directory not found" in capsys.readouterr().err
