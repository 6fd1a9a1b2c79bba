"""``pretrain --init FILE`` (``backbone.init``): start from a torchvision / timm state dict, a safetensors file or
one of our exports; key names mapped, the classifier dropped, every unmatched key reported, bad files one line."""
from __future__ import annotations

import io
import json
import os
import warnings

import pytest
import torch
import yaml
from conftest import make_blobs

from selfsup.cli.main import main
from selfsup.config import build_run_config
from selfsup.engine.build import build_method_for
from selfsup.engine.init_weights import load_init_weights, read_weights
from selfsup.engine.trainer import pretrain
from selfsup.errors import CheckpointError, ConfigError

torchvision = pytest.importorskip("torchvision")


@pytest.fixture(scope="module")
def tv_file(tmp_path_factory):
    """A torchvision ResNet-18 state dict saved here (no download), its BatchNorm statistics made non-trivial so
    that equality proves they were loaded."""
    torch.manual_seed(3)
    tv = torchvision.models.resnet18(weights=None)
    for m in tv.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.num_batches_tracked.fill_(7)
    path = tmp_path_factory.mktemp("init") / "resnet18-torchvision.pth"
    torch.save(tv.state_dict(), path)
    return path


def built(init, *, name="resnet18", width=1.0, method="simclr", channels=3, cifar_stem=False):
    cfg = build_run_config({"method": method, "backbone": {"name": name, "width": width, "cifar_stem": cifar_stem,
                                                          "init": str(init)}})
    reports: list = []
    method_ = build_method_for(cfg, channels, 16, 32, reports)
    return method_, reports[0]


def assert_equal_to_file(state, path):
    file = torch.load(path, weights_only=True)
    for k, v in file.items():
        if not k.startswith("fc."):
            assert torch.equal(state[k], v), k


def test_torchvision_weights_load_with_the_classifier_dropped(tv_file):
    method, report = built(tv_file)
    assert_equal_to_file(method.backbone.state_dict(), tv_file)
    assert report.loaded == 120 and report.complete and report.dropped == ["fc.weight", "fc.bias"]
    assert report.summary().startswith(f"backbone.init: loaded 120 tensors from {tv_file}")


def test_a_momentum_teacher_starts_from_the_loaded_weights(tv_file):
    method, _ = built(tv_file, method="byol")
    target_backbone = method.target.teacher[0]
    assert_equal_to_file(target_backbone.state_dict(), tv_file)


def test_rebuilding_a_run_does_not_read_the_file(tmp_path):
    cfg = build_run_config({"backbone": {"name": "resnet18", "width": 0.25, "init": str(tmp_path / "gone.pth")}})
    build_method_for(cfg, 3, 16, 32)  # eval / export rebuild: no reports asked, the checkpoint has the weights


def test_unmatched_keys_are_reported(tv_file, tmp_path):
    sd = torch.load(tv_file, weights_only=True)
    del sd["layer4.1.bn2.weight"]
    sd["extra.scale"] = torch.ones(3)
    path = tmp_path / "partial.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)  # a DDP training checkpoint
    method, report = built(path)
    assert report.missing == ["layer4.1.bn2.weight"] and report.unexpected == ["extra.scale"]
    assert report.loaded == 119 and not report.complete
    s = report.summary()
    assert "missing, left at random init: layer4.1.bn2.weight" in s and "unexpected, ignored: extra.scale" in s
    assert torch.equal(method.backbone.state_dict()["conv1.weight"], sd["conv1.weight"])


def test_safetensors_and_timm_weights(tv_file, tmp_path):
    from safetensors.torch import save_file

    sd = torch.load(tv_file, weights_only=True)
    path = tmp_path / "model.safetensors"
    save_file(sd, str(path))
    method, report = built(path)
    assert report.loaded == 120 and report.complete
    assert_equal_to_file(method.backbone.state_dict(), tv_file)
    timm = pytest.importorskip("timm", reason="timm is an optional extra")
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), tmp_path / "timm.pth")
    method, report = built(tmp_path / "timm.pth")  # timm's ResNet names are torchvision's
    assert report.loaded == 120 and report.complete
    assert_equal_to_file(method.backbone.state_dict(), tmp_path / "timm.pth")


def test_a_shape_that_differs_is_refused_naming_the_key(tv_file):
    with pytest.raises(ConfigError, match=r"conv1.weight has shape \(64, 3, 7, 7\) in the file but \(32, 3, 7, 7\)"):
        built(tv_file, width=0.5)
    with pytest.raises(ConfigError, match=r"conv1.weight has shape \(64, 3, 7, 7\) in the file but \(64, 3, 3, 3\)"):
        built(tv_file, cifar_stem=True)


def test_bad_files_are_one_line(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ConfigError, match="list.pt is not a state dict.*a list"):
        read_weights(tmp_path / "list.pt")
    (tmp_path / "notes.pth").write_text("not weights\n")
    with pytest.raises(CheckpointError, match="notes.pth: not a readable checkpoint"):
        read_weights(tmp_path / "notes.pth")
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(CheckpointError, match="cut.safetensors: not a readable safetensors file"):
        read_weights(tmp_path / "cut.safetensors")
    with pytest.raises(ConfigError, match="backbone.init: file not found"):
        read_weights(tmp_path / "missing.pth")


class Payload:
    def __reduce__(self):
        return (os.getcwd, ())


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    buf = io.BytesIO()
    torch.save({"conv1.weight": torch.zeros(1), "x": Payload()}, buf)
    (tmp_path / "evil.pth").write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="evil.pth: refused: loading it would execute code"):
        read_weights(tmp_path / "evil.pth")


def test_weights_of_another_architecture(tmp_path, tv_file):
    from safetensors.torch import save_file

    conv = build_method_for(build_run_config({"backbone": {"name": "convnet", "width": 0.25}}), 3, 16, 32).backbone
    path = tmp_path / "convnet.safetensors"
    save_file({k: v.contiguous() for k, v in conv.state_dict().items()}, str(path),
              metadata={"selfsup": json.dumps({"arch": "convnet"})})
    with pytest.raises(ConfigError, match="an export of a convnet backbone, but this run's backbone is resnet18"):
        built(path, width=0.25)
    with pytest.raises(ConfigError, match="none of its 120 tensors matches a convnet weight name"):
        built(tv_file, name="convnet", width=0.25)


def test_our_vit_export_loads_back_into_a_vit():
    from selfsup.backbones import build_backbone

    torch.manual_seed(0)
    src = build_backbone("vit-test", in_channels=3, image_size=16)
    dst = build_backbone("vit-test", in_channels=3, image_size=16)
    mapped = dst.import_state_dict(src.export_state_dict())
    assert set(mapped) - set(dst.state_dict()) <= {"pos_embed"}  # a sin-cos ViT keeps none in its state
    assert set(dst.state_dict()) <= set(mapped)
    for k, v in dst.state_dict().items():
        assert mapped[k].shape == v.shape, k


def test_pretrain_with_init_records_it_and_resume_does_not_reapply(tmp_path, capsys, monkeypatch):
    """Through the CLI: config.yaml keeps backbone.init, init.json lists what loaded; a resume reads the
    checkpoint, not the file (gone by then)."""
    from conftest import save_npz
    from safetensors.torch import save_file

    torch.manual_seed(0)
    bb = build_method_for(build_run_config({"backbone": {"name": "resnet18", "width": 0.25}}), 3, 16, 32).backbone
    weights = tmp_path / "start.safetensors"
    save_file({k: v.contiguous() for k, v in bb.export_state_dict().items()}, str(weights))
    npz = save_npz(make_blobs(n=16, size=16), tmp_path / "d.npz")
    run = tmp_path / "run"
    argv = ["pretrain", "--data", str(npz), "--backbone", "resnet18", "--width", "0.25", "--batch-size", "8",
            "--epochs", "2", "--max-steps", "1", "--device", "cpu", "--out", str(run), "--init", str(weights)]
    assert main(argv) == 0
    assert "backbone.init: loaded 120 tensors" in capsys.readouterr().err
    assert yaml.safe_load((run / "config.yaml").read_text())["backbone"]["init"] == str(weights)
    assert json.loads((run / "init.json").read_text())["loaded"] == 120
    weights.unlink()

    def fail(*a, **k):
        raise AssertionError("backbone.init re-applied on resume")

    monkeypatch.setattr("selfsup.engine.build.load_init_weights", fail)
    argv[argv.index("--max-steps") + 1] = "2"
    assert main([*argv, "--resume"]) == 0
    assert "resuming" in capsys.readouterr().err


def test_incomplete_init_warns_in_pretrain(tmp_path):
    torch.manual_seed(0)
    bb = build_method_for(build_run_config({"backbone": {"name": "resnet18", "width": 0.25}}), 3, 16, 32).backbone
    sd = {k: v for k, v in bb.state_dict().items() if not k.startswith("layer4.")}
    torch.save(sd, tmp_path / "part.pt")
    cfg = build_run_config({"backbone": {"name": "resnet18", "width": 0.25, "init": str(tmp_path / "part.pt")},
                            "train": {"epochs": 1, "max_steps": 1, "batch_size": 8, "device": "cpu"}})
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        pretrain(cfg, tmp_path / "run", data=make_blobs(n=16, size=16), quiet=True)
    msgs = [str(x.message) for x in w if "backbone.init" in str(x.message)]
    assert len(msgs) == 1 and "missing, left at random init: layer4.0.conv1.weight" in msgs[0]


def test_a_missing_file_fails_before_the_run_directory_is_made(tmp_path):
    cfg = build_run_config({"backbone": {"name": "resnet18", "width": 0.25, "init": str(tmp_path / "no.pth")},
                            "train": {"device": "cpu"}})
    with pytest.raises(ConfigError, match="backbone.init: file not found"):
        pretrain(cfg, tmp_path / "run", data=make_blobs(n=16, size=16), quiet=True)
    assert not (tmp_path / "run").exists()


def test_load_init_weights_returns_a_report_per_call(tv_file):
    bb = torchvision.models.resnet18(weights=None)  # any module with our names works
    from selfsup.backbones.base import Backbone

    class Wrapped(Backbone):
        def __init__(self):
            super().__init__()
            self.conv1 = bb.conv1

    report = load_init_weights(Wrapped(), str(tv_file), "resnet18")
    assert report.loaded == 1 and len(report.unexpected) == 119
