"""Multi-crop pipeline and the distillation presets: crop counts, sizes, scales, and bad-option errors."""
from __future__ import annotations

import pytest
import torch

from selfsup.augment.multicrop import count_global_views, group_by_size
from selfsup.augment.presets import build_pipeline
from selfsup.backbones import build_backbone
from selfsup.config import AugmentConfig, ConfigError
from selfsup.methods.base import ViewBatch, build_method

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _x(n=4, size=32):
    return (torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)


@pytest.mark.parametrize("n_global,n_local,local_size", [(2, 6, 16), (2, 3, 12), (3, 0, None), (2, 2, None)])
def test_multicrop_counts_and_sizes(n_global, n_local, local_size):
    cfg = AugmentConfig(preset="multicrop", n_views=n_global, local_crops=n_local, local_size=local_size)
    pipe = build_pipeline(cfg, "simclr", 32, MEAN, STD)
    views = pipe(_x(), torch.Generator().manual_seed(0))
    expect_local = local_size or 16
    assert len(views) == n_global + n_local
    assert [tuple(v.shape) for v in views] == [(4, 3, 32, 32)] * n_global + [(4, 3, expect_local, expect_local)] * n_local
    assert count_global_views(views) == n_global


def test_multicrop_default_is_two_global_and_six_local_with_configured_scales():
    pipe = build_pipeline(AugmentConfig(preset="multicrop", crop_scale_min=0.3, local_scale_max=0.2), "simclr", 32,
                          MEAN, STD)
    assert [s.size for s in pipe.specs] == [32, 32] + [16] * 6
    assert [s.crop_scale for s in pipe.specs] == [(0.3, 1.0)] * 2 + [(0.05, 0.2)] * 6


def test_byol_preset_is_asymmetric_above_32px_and_blur_free_below():
    big = build_pipeline(AugmentConfig(preset="byol"), "simclr", 64, MEAN, STD).specs
    assert [(s.blur_p, s.solarize_p) for s in big] == [(1.0, 0.0), (0.1, 0.2)]
    small = build_pipeline(AugmentConfig(preset="byol"), "simclr", 32, MEAN, STD).specs
    assert [(s.blur_p, s.solarize_p) for s in small] == [(0.0, 0.0), (0.0, 0.2)]
    assert build_pipeline(AugmentConfig(preset="byol", solarize_p=0.0), "simclr", 64, MEAN, STD).specs[1].solarize_p == 0


def test_local_crop_options_are_validated():
    with pytest.raises(ConfigError, match="augment.local_size"):
        build_pipeline(AugmentConfig(preset="multicrop", local_size=32), "simclr", 32, MEAN, STD)
    with pytest.raises(ConfigError, match="augment.local_scale_max"):
        build_pipeline(AugmentConfig(preset="multicrop", local_scale_max=0.01), "simclr", 32, MEAN, STD)


@pytest.mark.parametrize("name", ["byol", "simsiam", "barlow-twins", "vicreg"])
def test_multicrop_rejected_for_methods_without_support(name):
    m = build_method(name, build_backbone("convnet", in_channels=3, width=0.25),
                     {"proj_hidden_dim": 16, "proj_dim": 16} | ({"pred_hidden_dim": 8} if name in ("byol", "simsiam") else {}))
    with pytest.raises(ConfigError, match=f"augment.local_crops: method '{name}' does not support multi-crop"):
        m.make_views(32, MEAN, STD, AugmentConfig(local_crops=2))
    # a multi-crop preset picked by hand is caught at the first batch, naming the options
    pipe = m.make_views(32, MEAN, STD, AugmentConfig(preset="multicrop"))
    with pytest.raises(ValueError, match="augment.local_crops"):
        m(ViewBatch(pipe(_x(), torch.Generator().manual_seed(0))))


@pytest.mark.parametrize("name", ["dino", "swav"])
def test_multicrop_methods_accept_local_crops(name):
    assert build_method(name, build_backbone("convnet", in_channels=3, width=0.25),
                        {"out_dim": 16} if name == "dino" else {"n_prototypes": 8}).supports_multicrop


def test_group_by_size_runs():
    vs = [torch.zeros(1, 3, s, s) for s in (32, 32, 16, 16, 16)]
    assert group_by_size(vs) == [(0, 2), (2, 5)]
    assert count_global_views(vs[:2]) == 2
