"""Contract tests generated from the registries of backbones, augmentation presets, evaluators and datasets (the
methods' are in test_methods_contract.py) and the shipped run presets: a registered part is a tested part, at tiny
sizes.

Also the layering the contracts rely on: a lower layer never imports a higher one.
"""
from __future__ import annotations

import copy
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_blobs

from selfsup.augment.presets import ViewOverrides, build_pipeline
from selfsup.backbones.base import Backbone, build_backbone
from selfsup.cli.config_args import config_from_args, preset_names
from selfsup.data.base import DataError, ImageDataset
from selfsup.errors import ConfigError
from selfsup.evaluation.protocols import EvalContext
from selfsup.registry import AUGMENT_PRESETS, BACKBONES, DATASETS, EVALUATORS

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
SRC = Path(__file__).resolve().parents[2] / "src" / "selfsup"


# ---------------------------------------------------------------------------------------------- backbones
@pytest.fixture(scope="module")
def backbones() -> dict[str, Backbone | str]:
    """Every registered backbone at width 0.25 for 16 px images, or the one-line reason it cannot be built."""
    out: dict[str, Backbone | str] = {}
    for name in BACKBONES.names():
        torch.manual_seed(0)
        try:
            out[name] = build_backbone(name, in_channels=3, width=0.25, image_size=16).eval()
        except ConfigError as e:  # an optional dependency (timm) that is not installed
            out[name] = str(e)
    return out


def _get(backbones, name: str) -> Backbone:
    bb = backbones[name]
    if isinstance(bb, str):
        assert "\n" not in bb and "pip install" in bb, bb
        pytest.skip(bb)
    return bb


@pytest.mark.parametrize("name", BACKBONES.names())
def test_backbone_pools_features_and_names_its_stages(backbones, name):
    bb = _get(backbones, name)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        h = bb(x)
        stages = bb.forward_stages(x)
    assert h.shape == (2, bb.num_features) and h.dtype == torch.float32 and torch.isfinite(h).all()
    assert bb.stage_names and list(bb.stage_names) == [k for k in stages if k in bb.stage_names]
    torch.testing.assert_close(stages["pooled"], h, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", BACKBONES.names())
def test_backbone_channels_last_preference_keeps_the_features(backbones, name):
    bb = _get(backbones, name)
    assert isinstance(bb.prefers_channels_last, bool)
    if not bb.prefers_channels_last:
        return
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = bb(x)
        nhwc = copy.deepcopy(bb).to(memory_format=torch.channels_last)
        out = nhwc(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", BACKBONES.names())
def test_backbone_attention_contract(backbones, name):
    bb = _get(backbones, name)
    x = torch.randn(2, 3, 16, 16)
    if not bb.supports_attention:
        with pytest.raises(NotImplementedError, match="no attention maps"):
            bb.get_last_attention(x)
        return
    a = bb.get_last_attention(x)
    gh = 16 // bb.patch_size
    assert a.shape == (2, bb.num_heads, gh, gh)
    torch.testing.assert_close(a.sum(dim=(-2, -1)), torch.ones(2, bb.num_heads))


@pytest.mark.parametrize("name", BACKBONES.names())
def test_backbone_export_names_match_the_declared_library(backbones, name):
    bb = _get(backbones, name)
    sd = bb.export_state_dict()
    assert sd and all(isinstance(v, torch.Tensor) for v in sd.values())
    if bb.export_key_names == "selfsup":
        assert sd.keys() == bb.state_dict().keys()
    elif bb.export_key_names == "torchvision":
        import torchvision

        ref = getattr(torchvision.models, name)().state_dict()
        assert set(sd) == {k for k in ref if not k.startswith("fc.")}  # no classifier in self-supervised training
    elif bb.export_key_names == "timm":
        assert "patch_embed.proj.weight" in sd and "blocks.0.mlp.fc1.weight" in sd
        assert sd["pos_embed"].shape == (1, 1 + (16 // bb.patch_size) ** 2, bb.num_features)
    else:
        pytest.fail(f"{name}: unknown export_key_names {bb.export_key_names!r}")


@pytest.mark.parametrize("name", BACKBONES.names())
def test_backbone_layer_decay_groups_cover_every_parameter_once(backbones, name):
    bb = _get(backbones, name)
    groups = bb.layer_decay_groups(1.0, 0.5, weight_decay=0.05)
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in bb.parameters() if p.requires_grad)
    lrs = [g["lr"] for g in groups]
    assert max(lrs) == 1.0 and min(lrs) < 1.0  # the top layer trains at the full rate, lower ones slower
    assert any(g["weight_decay"] == 0.05 for g in groups)  # the weight decay reaches the weight matrices
    assert isinstance(bb.layer_decay_rule, str) and bb.layer_decay_rule


def test_test_sizes_are_not_in_the_production_registry():
    """``vit-test`` is registered by tests/conftest.py; src/ holds no test-only backbone."""
    assert not [p for p in SRC.rglob("*.py") if 'register("vit-test"' in p.read_text()]
    assert "vit-test" in BACKBONES  # the tests' own registration


# ------------------------------------------------------------------------------------ augmentation presets
@pytest.mark.parametrize("name", AUGMENT_PRESETS.names())
@pytest.mark.parametrize("size", [16, 64])
def test_preset_builds_float_views_of_the_declared_sizes_reproducibly(name, size):
    pipe = build_pipeline(ViewOverrides(), name, size, MEAN, STD)
    x = (torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    views = pipe(x, torch.Generator().manual_seed(1))
    assert len(views) == pipe.n_views >= 1
    for v, spec in zip(views, pipe.specs):
        assert v.dtype == torch.float32 and v.shape == (4, 3, spec.size, spec.size) and torch.isfinite(v).all()
    again = pipe(x, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(views, again))
    other = pipe(x, torch.Generator().manual_seed(2))
    random = any(s.crop or s.flip_p > 0 for s in pipe.specs)
    assert random == any(not torch.equal(a, b) for a, b in zip(views, other))


@pytest.mark.parametrize("name", AUGMENT_PRESETS.names())
def test_preset_overrides_reach_every_view(name):
    pipe = build_pipeline(ViewOverrides(n_views=3, grayscale_p=0.0, size=12), name, 32, MEAN, STD)
    globals_ = pipe.specs[: 3]
    assert pipe.n_views == 3 + AUGMENT_PRESETS.get(name).local_crops and all(s.size == 12 for s in globals_)
    if AUGMENT_PRESETS.get(name).overridable:
        assert all(s.grayscale_p == 0.0 for s in pipe.specs)


@pytest.mark.parametrize("name", AUGMENT_PRESETS.names())
def test_preset_local_crops_are_smaller_or_refused_in_one_line(name):
    o = ViewOverrides(local_crops=2)
    if AUGMENT_PRESETS.get(name).local is None:
        with pytest.raises(ConfigError, match=f"preset '{name}' makes no local crops"):
            build_pipeline(o, name, 32, MEAN, STD)
        return
    specs = build_pipeline(o, name, 32, MEAN, STD).specs
    assert len(specs) == 4 and specs[-1].size < specs[0].size and specs[-1].crop_scale[0] == 0.05


def test_moco_v3_is_byols_preset():
    assert AUGMENT_PRESETS.get("moco-v3") is AUGMENT_PRESETS.get("byol")


def test_view_spec_checks_itself():
    from selfsup.augment.pipeline import ViewSpec

    with pytest.raises(ValueError, match="view blur_p must be a probability"):
        ViewSpec(size=8, blur_p=1.5)
    with pytest.raises(ValueError, match="view crop_scale"):
        ViewSpec(size=8, crop_scale=(0.5, 0.2))


# --------------------------------------------------------------------------------------------- evaluators
@pytest.fixture(scope="module")
def eval_setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    data = make_blobs(n=48, size=16)
    target = make_blobs(n=32, size=16, seed=1)
    nhwc = {"x_train": target.train.images, "x_test": target.test.images}
    np.savez(tmp / "target.npz", **{k: v.permute(0, 2, 3, 1).numpy() for k, v in nhwc.items()},
             y_train=target.train.labels.numpy(), y_test=target.test.labels.numpy())
    return tmp, data


# tiny settings: one epoch, one L2 value, small heads; keys a protocol does not declare are ignored by it
TINY = {"l2_grid": (1e-2,), "hidden_dim": 16, "batch_size": 16, "k": 5, "knn.k": (5, 1)}


@pytest.mark.parametrize("name", EVALUATORS.names())
def test_evaluator_runs_on_a_tiny_backbone_and_returns_its_metrics(eval_setup, name, tmp_path):
    tmp, data = eval_setup
    torch.manual_seed(0)
    bb = build_backbone("convnet", in_channels=data.channels, width=0.25, image_size=16)
    declared = EVALUATORS.entry(name).meta.get("options", {})
    options = {k: v for k, v in TINY.items() if k in declared or k.startswith(f"{name}.")}
    if name == "transfer":
        options["data"] = str(tmp / "target.npz")
    ctx = EvalContext(bb, data, torch.device("cpu"), options=options, run_dir=tmp_path, epochs=1, fractions=(0.25,),
                      pretrain_epochs=1, protocol=name, init_backbone=copy.deepcopy(bb))
    r = EVALUATORS.get(name)(ctx)
    assert 0.0 <= r["top1"] <= 1.0
    assert isinstance(r["params"], dict) and r["params"]
    assert r["labelled_images"]
    for key in r.get("summary", ["top1"]):
        assert 0.0 <= r[key] <= 1.0, key


# ----------------------------------------------------------------------------------------------- datasets
@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_loads_or_fails_in_one_line_when_its_files_are_absent(name, tmp_path, monkeypatch):
    """No network, an empty data root: each dataset loads (the embedded one) or raises a one-line DataError
    naming itself; never a traceback, never a download."""
    def offline(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", offline)
    monkeypatch.setenv("SELFSUP_DATA", str(tmp_path))
    try:
        ds = DATASETS.get(name)()
    except DataError as e:
        msg = str(e)
        assert "\n" not in msg and name in msg, msg
        return
    assert isinstance(ds, ImageDataset) and ds.has_labels
    assert ds.train.num_images > 0 and ds.test.num_images > 0
    x, idx, y = next(ds.train.batches(8, shuffle=False))
    assert x.dtype == torch.uint8 and x.shape[1] == ds.channels and y.shape == (8,)
    assert len(ds.mean) == len(ds.std) == ds.channels and all(s > 0 for s in ds.std)


# ------------------------------------------------------------------------------------ shipped run presets
@pytest.mark.parametrize("name", preset_names())
def test_every_shipped_run_preset_resolves_and_trains(name: str, blobs_npz: Path, tmp_path: Path) -> None:
    """``--config NAME`` for every YAML in ``selfsup/configs``: it resolves through the one config door and trains
    two steps on tiny data (eager; ``--data`` replaces a preset's dataset, as a user's would)."""
    from selfsup.api import pretrain
    from selfsup.cli.main import build_parser

    args = build_parser().parse_args(["pretrain", "--config", name, "--data", str(blobs_npz), "--max-steps", "2",
                                      "--batch-size", "8", "--device", "cpu", "--set", "train.compile=false",
                                      "--set", "train.log_every=1", "--out", str(tmp_path / "run")])
    cfg = config_from_args(args)
    res = pretrain(cfg, tmp_path / "run", quiet=True)
    assert res.steps == 2 and (tmp_path / "run" / "config.yaml").exists()
    if name == "speedrun-cpu":  # the measured recipe (docs/benchmarks.md, "Time to accuracy")
        assert cfg.method.name == "simclr" and cfg.augment.size == 16 and cfg.train.time_limit_min == 10
