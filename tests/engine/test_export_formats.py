"""``selfsup export --format timm|onnx``: a folder timm and torchvision load, and an ONNX model with the same
outputs; both state the stem. (The safetensors / pt formats: test_export.py.)"""
from __future__ import annotations

import json
import sys

import pytest
import torch
from test_export import our_backbone, tiny_run
from torch import nn

from selfsup.cli.main import main
from selfsup.engine.export import ExportError, export_backbone, read_export_metadata
from selfsup.engine.init_weights import read_weights

torchvision = pytest.importorskip("torchvision")
pytest.importorskip("safetensors")


@pytest.fixture(scope="module")
def imagenet_stem_run(tmp_path_factory):
    """A width-1 ResNet-18 with the ImageNet stem (timm's and torchvision's layout), pretrained one step."""
    return tiny_run(tmp_path_factory.mktemp("formats"), cifar_stem=False)


@pytest.fixture(scope="module")
def cifar_stem_run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("formats-cifar"), cifar_stem=True)


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def cifar_stem(model: nn.Module) -> nn.Module:
    """What docs/practitioner.md tells a user to do before loading a CIFAR-stem export."""
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model


def test_timm_folder_loads_into_plain_torchvision(imagenet_stem_run, tmp_path):
    from safetensors.torch import load_file

    out = export_backbone(imagenet_stem_run, "timm", tmp_path / "resnet18-selfsup")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == "resnet18" and cfg["num_features"] == 512 and cfg["num_classes"] == 0
    assert cfg["stem"].startswith("imagenet") and cfg["timm_loadable"] is True
    assert cfg["pretrained_cfg"]["input_size"] == [3, 16, 16] and len(cfg["pretrained_cfg"]["mean"]) == 3
    tv = torchvision.models.resnet18(weights=None)
    tv.fc = nn.Identity()
    tv.load_state_dict(load_file(str(out / "model.safetensors")), strict=True)
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(features(tv, x), features(our_backbone(imagenet_stem_run), x), rtol=1e-5, atol=1e-5)
    assert read_export_metadata(out)["arch"] == "resnet18"


def test_timm_folder_loads_with_timm_create_model(imagenet_stem_run, tmp_path):
    timm = pytest.importorskip("timm", reason="timm is an optional extra")
    out = export_backbone(imagenet_stem_run, "timm", tmp_path / "f")
    model = timm.create_model("resnet18", pretrained=True, num_classes=0,
                              pretrained_cfg_overlay=dict(file=str(out / "model.safetensors")))
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(features(model, x), features(our_backbone(imagenet_stem_run), x), rtol=1e-5,
                               atol=1e-5)


def test_cifar_stem_is_stated_and_loads_after_the_stem_swap(cifar_stem_run, tmp_path):
    from safetensors.torch import load_file

    out = export_backbone(cifar_stem_run, "timm", tmp_path / "f")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["stem"].startswith("cifar: conv1 is a 3x3 stride-1") and cfg["timm_loadable"] is False
    assert cfg["selfsup"]["cifar_stem"] is True
    weights = load_file(str(out / "model.safetensors"))
    ref = features(our_backbone(cifar_stem_run), x := torch.randn(2, 3, 16, 16))
    tv = cifar_stem(torchvision.models.resnet18(weights=None))
    tv.fc = nn.Identity()
    tv.load_state_dict(weights, strict=True)
    torch.testing.assert_close(features(tv, x), ref, rtol=1e-5, atol=1e-5)
    try:
        import timm
    except ImportError:
        return
    model = cifar_stem(timm.create_model("resnet18", pretrained=False, num_classes=0))
    model.load_state_dict(weights, strict=True)
    torch.testing.assert_close(features(model, x), ref, rtol=1e-5, atol=1e-5)


def test_the_folder_is_an_init_for_another_run(cifar_stem_run, tmp_path):
    out = export_backbone(cifar_stem_run, "timm", tmp_path / "f")
    weights, meta = read_weights(out)
    assert meta is not None and meta["arch"] == "resnet18" and "conv1.weight" in weights


def test_onnx_has_the_same_outputs(imagenet_stem_run, tmp_path):
    pytest.importorskip("onnx", reason="onnx is an optional extra")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is an optional extra")
    path = export_backbone(imagenet_stem_run, "onnx", tmp_path / "bb.onnx")
    meta = read_export_metadata(path)
    assert meta["arch"] == "resnet18" and meta["cifar_stem"] is False and meta["num_features"] == 512
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, 16, 16)  # another batch size than the traced one: the batch axis is dynamic
    (got,) = session.run(["features"], {"images": x.numpy()})
    ref = features(our_backbone(imagenet_stem_run), x)
    torch.testing.assert_close(torch.from_numpy(got), ref, rtol=1e-4, atol=1e-4)


def test_onnx_without_the_package_is_one_line(imagenet_stem_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx → ImportError
    with pytest.raises(ExportError, match=r"--format onnx needs the onnx package.*pip install"):
        export_backbone(imagenet_stem_run, "onnx", tmp_path / "bb.onnx")
    assert not (tmp_path / "bb.onnx").exists()


def test_timm_folder_needs_a_resnet(tmp_path):
    run = tiny_run(tmp_path, backbone="convnet", width=0.25)
    with pytest.raises(ExportError, match="--format timm needs a ResNet backbone.*this run's backbone is convnet"):
        export_backbone(run, "timm")


def test_export_cli_formats(cifar_stem_run, tmp_path, capsys):
    out = tmp_path / "folder"
    assert main(["export", str(cifar_stem_run), "--format", "timm", "--out", str(out)]) == 0
    line = capsys.readouterr().out
    assert f"→ {out}" in line and "replace conv1 and maxpool first" in line
    assert main(["export", str(cifar_stem_run), "--format", "timm", "--out", str(out)]) == 0  # replaces it
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    assert main(["export", str(cifar_stem_run), "--format", "timm", "--out", str(tmp_path / "other")]) == 2
    assert "is not an earlier export folder" in capsys.readouterr().err
    assert (tmp_path / "other" / "keep.txt").read_text() == "mine"
