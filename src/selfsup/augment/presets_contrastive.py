"""View presets of the contrastive family: InstDisc/MoCo v1, MoCo v2 (aug+), MoCo v3 (BYOL's asymmetric views).

Each follows the authors' released augmentation; fields of the ``augment`` config section override them as for
the SimCLR preset. Blur is off for images of 32 px or less, where a 3-px kernel only smears the image.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from ..config import AugmentConfig
from ..registry import AUGMENT_PRESETS
from .pipeline import MultiViewPipeline, ViewSpec, with_overrides
from .presets import _blur_default, simclr_spec


def _overrides(spec: ViewSpec, cfg: AugmentConfig) -> ViewSpec:
    s = cfg.jitter_strength
    if s is not None:  # an explicit strength replaces the preset's jitter (SimCLR's (0.8s, 0.8s, 0.8s, 0.2s))
        spec = replace(spec, jitter=(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s))
    if cfg.crop_scale_min is not None or cfg.crop_scale_max is not None:
        spec = replace(spec, crop_scale=(cfg.crop_scale_min if cfg.crop_scale_min is not None else spec.crop_scale[0],
                                         cfg.crop_scale_max if cfg.crop_scale_max is not None else spec.crop_scale[1]))
    return with_overrides(spec, flip_p=cfg.flip_p, jitter_p=cfg.jitter_p, grayscale_p=cfg.grayscale_p,
                          blur_p=cfg.blur_p, solarize_p=cfg.solarize_p)


def instdisc_spec(cfg: AugmentConfig, image_size: int) -> ViewSpec:
    """Wu et al. 2018 / MoCo v1: crop 0.2–1, flip, ColorJitter(0.4, 0.4, 0.4, 0.4) always, grayscale 0.2, no blur."""
    base = ViewSpec(size=image_size, crop_scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.4), jitter_p=1.0,
                    grayscale_p=0.2, blur_p=0.0)
    return _overrides(base, cfg)


@AUGMENT_PRESETS.register("moco-v1", help="InstDisc/MoCo v1: crop 0.2-1, flip, jitter 0.4 (hue 0.4), grayscale 0.2, no blur")
def moco_v1(cfg: AugmentConfig, image_size: int, mean: Sequence[float], std: Sequence[float]) -> MultiViewPipeline:
    return MultiViewPipeline([instdisc_spec(cfg, image_size)] * (cfg.n_views or 2), mean, std)


@AUGMENT_PRESETS.register("instdisc", help="one InstDisc/MoCo v1 view per image (NPID)")
def instdisc(cfg: AugmentConfig, image_size: int, mean: Sequence[float], std: Sequence[float]) -> MultiViewPipeline:
    return MultiViewPipeline([instdisc_spec(cfg, image_size)] * (cfg.n_views or 1), mean, std)


@AUGMENT_PRESETS.register("moco-v2", help="MoCo v2 aug+: SimCLR's views with crop 0.2-1 (blur 0.5 above 32 px)")
def moco_v2(cfg: AugmentConfig, image_size: int, mean: Sequence[float], std: Sequence[float]) -> MultiViewPipeline:
    c = replace(cfg, crop_scale_min=0.2 if cfg.crop_scale_min is None else cfg.crop_scale_min)
    return MultiViewPipeline([simclr_spec(c, image_size)] * (cfg.n_views or 2), mean, std)


@AUGMENT_PRESETS.register("moco-v3", help="MoCo v3/BYOL asymmetric views: blur 1.0/0.1 (above 32 px), solarize 0/0.2")
def moco_v3(cfg: AugmentConfig, image_size: int, mean: Sequence[float], std: Sequence[float]) -> MultiViewPipeline:
    blur = _blur_default(image_size) > 0
    common = dict(size=image_size, crop_scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8, grayscale_p=0.2)
    v1 = ViewSpec(**common, blur_p=1.0 if blur else 0.0, solarize_p=0.0)
    v2 = ViewSpec(**common, blur_p=0.1 if blur else 0.0, solarize_p=0.2)
    specs = [_overrides(v1, cfg), _overrides(v2, cfg)]
    n = cfg.n_views or 2
    return MultiViewPipeline([specs[i % 2] for i in range(n)], mean, std)
