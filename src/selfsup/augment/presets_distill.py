"""Presets for the self-distillation / clustering / redundancy methods: BYOL's asymmetric views and multi-crop.

- ``byol`` (Grill et al. 2020, Table 6): two views with different blur and solarisation — view 1 blur p=1.0,
  solarise 0; view 2 blur p=0.1, solarise 0.2; colour jitter (0.4, 0.4, 0.2, 0.1) with p=0.8, grayscale 0.2.
  Used by BYOL, Barlow Twins and VICReg.
- ``multicrop`` (Caron et al. 2020 / 2021): ``n_views`` (2) global crops of scale (0.25, 1) with DINO's
  asymmetric blur/solarise and ``local_crops`` (6) local crops of half the size, scale (0.05, 0.25), blur 0.5.
  Used by DINO and SwAV.

As in the ``simclr`` preset, blur is off for images of 32 px or less (already blurry; the seeds advise it):
the asymmetric blur probabilities apply above 32 px. Any ``augment.*`` field that is set overrides every view.
Both presets add ``augment.local_crops`` local crops when it is set (methods without ``supports_multicrop``
reject that before the preset is built).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from ..config import AugmentConfig
from ..registry import AUGMENT_PRESETS
from .multicrop import local_crop_spec, multi_crop
from .pipeline import MultiViewPipeline, ViewSpec, with_overrides


def _blur(p: float, image_size: int) -> float:
    return p if image_size > 32 else 0.0


def _base_spec(cfg: AugmentConfig, size: int, scale_min: float, blur_p: float, solarize_p: float,
               image_size: int) -> ViewSpec:
    s = cfg.jitter_strength
    jitter = (0.4, 0.4, 0.2, 0.1) if s is None else (0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)
    base = ViewSpec(size=size,
                    crop_scale=(cfg.crop_scale_min if cfg.crop_scale_min is not None else scale_min,
                                cfg.crop_scale_max if cfg.crop_scale_max is not None else 1.0),
                    jitter=jitter, jitter_p=0.8, grayscale_p=0.2,
                    blur_p=_blur(blur_p, image_size), solarize_p=solarize_p)
    return with_overrides(base, flip_p=cfg.flip_p, jitter_p=cfg.jitter_p, grayscale_p=cfg.grayscale_p,
                          blur_p=cfg.blur_p, solarize_p=cfg.solarize_p)


def _asymmetric_globals(cfg: AugmentConfig, image_size: int, scale_min: float) -> list[ViewSpec]:
    """View 1: blur 1.0, solarise 0; view 2: blur 0.1, solarise 0.2; further views alternate."""
    first = _base_spec(cfg, image_size, scale_min, 1.0, 0.0, image_size)
    second = _base_spec(cfg, image_size, scale_min, 0.1, 0.2, image_size)
    n = cfg.n_views if cfg.n_views is not None else 2
    return [first if i % 2 == 0 else second for i in range(n)]


def _local(cfg: AugmentConfig, image_size: int) -> ViewSpec:
    base = _base_spec(cfg, image_size, 0.05, 0.5, 0.0, image_size)
    spec = local_crop_spec(cfg, image_size, base)
    # the local crop is small: judge the blur rule on its own size
    return replace(spec, blur_p=cfg.blur_p if cfg.blur_p is not None else _blur(0.5, spec.size))


@AUGMENT_PRESETS.register("byol", help="BYOL's asymmetric pair: blur 1.0/0.1, solarise 0/0.2 (blur off <= 32 px)")
def byol(cfg: AugmentConfig, image_size: int, mean: Sequence[float], std: Sequence[float]) -> MultiViewPipeline:
    n_local = cfg.local_crops or 0
    return multi_crop(_asymmetric_globals(cfg, image_size, 0.08), _local(cfg, image_size) if n_local else None,
                      n_local, mean, std)


@AUGMENT_PRESETS.register("multicrop", help="2 global crops (0.25-1) + 6 local crops of half size (0.05-0.25)")
def multicrop(cfg: AugmentConfig, image_size: int, mean: Sequence[float], std: Sequence[float]) -> MultiViewPipeline:
    n_local = cfg.local_crops if cfg.local_crops is not None else 6
    return multi_crop(_asymmetric_globals(cfg, image_size, 0.25), _local(cfg, image_size) if n_local else None,
                      n_local, mean, std)
