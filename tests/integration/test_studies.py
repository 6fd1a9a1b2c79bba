"""Studies and their building blocks: the extra batched ops (against per-sample slow versions), the named view
pipeline, SimCLR without a head, and each study end-to-end on tiny data with a 2-step budget per cell."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_blobs

from selfsup.augment.named import (
    TRANSFORMS,
    NamedViewPipeline,
    canonical_names,
    cutout,
    gaussian_noise,
    sample_cutout,
    sobel,
)
from selfsup.augment.pretext import rotate90
from selfsup.backbones.base import build_backbone
from selfsup.cli.main import main
from selfsup.config import ConfigError, build_run_config
from selfsup.methods.base import ViewBatch, build_method
from selfsup.registry import UnknownNameError
from selfsup.studies.augmentations import AugmentationStudy
from selfsup.studies.base import StudySettings
from selfsup.studies.projection_head import ProjectionHeadStudy
from selfsup.studies.temperature import TemperatureStudy


# --------------------------------------------------------------------------------------------- extra ops
def test_cutout_fills_exactly_each_samples_box():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 12, 10)
    boxes = sample_cutout(6, 12, 10, (0.2, 0.6), g, x.device)
    y = cutout(x, boxes, 0.5)
    for i in range(6):
        t, l, h, w = (int(v) for v in boxes[i])
        assert h >= 1 and w >= 1 and t + h <= 12 and l + w <= 10
        ref = x[i].clone()
        ref[:, t : t + h, l : l + w] = 0.5
        assert torch.equal(y[i], ref)
    assert len({tuple(b.tolist()) for b in boxes}) > 1  # per-sample boxes


def test_rotate90_matches_rot90_per_sample():
    x = torch.rand(5, 3, 8, 8)
    k = torch.tensor([0, 1, 2, 3, 5])
    y = rotate90(x, k)
    for i in range(5):
        assert torch.equal(y[i], torch.rot90(x[i], int(k[i]) % 4, dims=(-2, -1)))
    with pytest.raises(ValueError, match="square"):
        rotate90(torch.rand(1, 3, 8, 6), torch.tensor([1]))


def test_gaussian_noise_has_each_samples_std():
    x = torch.full((3, 1, 64, 64), 0.5)
    std = torch.tensor([0.0, 0.05, 0.1])
    y = gaussian_noise(x, std, torch.Generator().manual_seed(0))
    assert torch.equal(y[0], x[0])
    for i in (1, 2):
        assert abs(float((y[i] - 0.5).std()) - float(std[i])) < 0.01


def test_sobel_against_direct_formula():
    x = torch.rand(2, 3, 7, 9)
    y = sobel(x)
    assert y.shape == x.shape and torch.equal(y[:, 0], y[:, 2])
    g = 0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    p = torch.nn.functional.pad(g[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    for b in range(2):
        for i in range(7):
            for j in range(9):
                w = p[b, i : i + 3, j : j + 3]
                gx = (w[:, 2] - w[:, 0]) @ torch.tensor([1.0, 2.0, 1.0])
                gy = (w[2] - w[0]) @ torch.tensor([1.0, 2.0, 1.0])
                ref = min(1.0, float((gx ** 2 + gy ** 2).sqrt()) / 4)
                assert abs(float(y[b, 0, i, j]) - ref) < 1e-5
    assert float(sobel(torch.full((1, 3, 5, 5), 0.3)).abs().max()) == 0  # flat image: no edges


# ------------------------------------------------------------------------------------------ named pipeline
def test_named_pipeline_names_order_and_errors():
    assert canonical_names(["cutout", "Colour", "crop", "crop"]) == ["crop", "color", "cutout"]
    with pytest.raises(UnknownNameError, match="unknown transformation 'warp'; known: crop, rotation, color"):
        canonical_names(["crop", "warp"])
    d = make_blobs(n=8, size=16)
    for name in TRANSFORMS:
        p = NamedViewPipeline([name], 12, d.mean, d.std)
        views = p(d.train.images, torch.Generator().manual_seed(0))
        assert len(views) == 2 and views[0].shape == (8, 3, 12, 12) and torch.isfinite(views[0]).all()
        again = p(d.train.images, torch.Generator().manual_seed(0))
        assert torch.equal(views[0], again[0])  # reproducible from the generator
    sob = NamedViewPipeline(["sobel"], 16, d.mean, d.std)(d.train.images, torch.Generator())
    assert torch.equal(sob[0], sob[1])  # deterministic alone: both views equal
    crop = NamedViewPipeline(["crop"], 16, d.mean, d.std)(d.train.images, torch.Generator().manual_seed(1))
    assert not torch.equal(crop[0], crop[1])


def test_simclr_without_head():
    cfg = build_run_config({"method": {"name": "simclr", "proj_layers": 0}})
    m = build_method(cfg.method, build_backbone("convnet", width=0.25))
    assert isinstance(m.projector, torch.nn.Identity)
    x = torch.rand(4, 3, 16, 16)
    out = m(ViewBatch([x, x.flip(-1)], torch.arange(4)))
    assert torch.isfinite(out.loss)  # NT-Xent directly on h
    with pytest.raises(ConfigError, match="method.proj_layers must be >= 0"):
        build_run_config({"method": {"name": "simclr", "proj_layers": -1}})


# ------------------------------------------------------------------------------------------------ studies
def _settings(tmp_path, name, **kw) -> StudySettings:
    return StudySettings(out=str(tmp_path / name), budget_steps=2, batch_size=16, backbone="convnet", width=0.25,
                         device="cpu", quiet=True, **kw)


def _check_files(res, stem):
    files = res["files"]
    assert set(files) == {"json", "png", "md"}
    for f in files.values():
        assert f.endswith(("json", "png", "md")) and open(f, "rb").read(4)
    assert json.loads(open(files["json"]).read())["study"] == stem
    assert open(files["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    return open(files["md"]).read()


def test_augmentation_study_end_to_end(tmp_path):
    data = make_blobs(n=48, size=16)
    res = AugmentationStudy(_settings(tmp_path, "aug"), data).run(["color", "crop"])
    assert res["transforms"] == ["crop", "color"]
    assert len(res["cells"]) == 3 and {tuple(c["transforms"]) for c in res["cells"]} == \
        {("crop",), ("color",), ("crop", "color")}
    m = res["matrix"]
    assert m[0][1] == m[1][0] and all(0 <= v <= 1 for row in m for v in row)
    assert all(c["steps"] == 2 for c in res["cells"])
    assert res["claim_crop_color_strongest"]["pairs"] == 1
    md = _check_files(res, "augmentations")
    assert "| crop |" in md and "2 steps" in md
    base = res["random_init"]["knn_top1"]  # the untrained backbone, probed on the same images
    assert 0 <= base <= 1 and "Random-init baseline" in md and "random-init backbone" in md
    assert res["below_random_init"] == [c["transforms"] for c in res["cells"] if c["knn_top1"] <= base]
    assert json.loads((tmp_path / "aug" / "cells" / "random-init" / "cell.json").read_text())["knn_top1"] == base
    cell = tmp_path / "aug" / "cells" / "crop+color"
    assert (cell / "cell.json").is_file() and (cell / "metrics.jsonl").is_file()
    assert not (cell / "checkpoints").exists()  # deleted after probing
    again = AugmentationStudy(_settings(tmp_path, "aug"), data).run(["crop", "color"])  # finished cells reused
    assert again["matrix"] == m and again["cells"][0]["train_s"] == res["cells"][0]["train_s"]
    assert again["random_init"] == res["random_init"]


def test_temperature_and_projection_head_studies(tmp_path):
    data = make_blobs(n=48, size=16)
    res = TemperatureStudy(_settings(tmp_path, "temp"), data).run([0.5, 0.1])
    assert res["temperatures"] == [0.1, 0.5] and [c["method"]["temperature"] for c in res["cells"]] == [0.1, 0.5]
    assert "| 0.1 |" in _check_files(res, "temperature")
    with pytest.raises(ConfigError, match="temperatures must be > 0"):
        TemperatureStudy(_settings(tmp_path, "temp2"), data).run([0.0])

    res = ProjectionHeadStudy(_settings(tmp_path, "head", probes=("knn", "linear")), data).run()
    assert [c["method"]["proj_layers"] for c in res["cells"]] == [0, 1, 2]
    none = res["cells"][0]
    assert none["h_knn_top1"] == none["z_knn_top1"]  # no head: z is h
    assert set(res["metrics"]) == {"h_knn_top1", "z_knn_top1", "h_linear_top1", "z_linear_top1"}
    assert set(res["claims"]) == {"mlp_head_helps_h", "h_beats_z_with_mlp", "metric"}
    assert "| mlp |" in _check_files(res, "projection-head")
    assert set(res["random_init"]) == {"knn_top1", "linear_top1"}  # h of the untrained backbone
    with pytest.raises(ConfigError, match="known: none, linear, mlp"):
        ProjectionHeadStudy(_settings(tmp_path, "head2"), data).run(["deep"])


def test_study_cli_on_npz_and_bad_input(tmp_path, capsys):
    d = make_blobs(n=48, size=16)
    npz = tmp_path / "tiny.npz"
    np.savez(npz, x_train=d.train.images.permute(0, 2, 3, 1).numpy(), y_train=d.train.labels.numpy(),
             x_test=d.test.images.permute(0, 2, 3, 1).numpy(), y_test=d.test.labels.numpy())
    common = ["--data", str(npz), "--budget-steps", "2", "--batch-size", "16", "--backbone", "convnet",
              "--device", "cpu", "--quiet"]
    out = tmp_path / "t"
    assert main(["study", "temperature", *common, "--out", str(out), "--temperatures", "0.2"]) == 0
    assert {p.name for p in out.iterdir()} >= {"temperature.json", "temperature.png", "temperature.md", "cells"}
    assert "NT-Xent temperature sweep" in capsys.readouterr().out
    assert main(["study", "augmentations", *common, "--out", str(tmp_path / "a"), "--transforms", "crop,warp"]) == 2
    err = capsys.readouterr().err
    assert "unknown transformation 'warp'" in err and "sobel" in err and "cutout" in err
    with pytest.raises(SystemExit):
        main(["study", "temperature", *common, "--budget-min", "1"])  # one budget only
    assert main(["study", "temperature", "--data", str(npz), "--budget-steps", "0"]) == 2
