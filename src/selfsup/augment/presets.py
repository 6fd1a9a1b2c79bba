"""Named augmentation presets. A preset turns the ``augment`` config section into a :class:`MultiViewPipeline`.

Presets are registered in ``AUGMENT_PRESETS`` as functions ``(cfg, image_size, mean, std) -> MultiViewPipeline``.
Fields of :class:`~selfsup.config.AugmentConfig` left at None take the preset's value.
"""
from __future__ import annotations

from typing import Sequence

from ..config import AugmentConfig
from ..registry import AUGMENT_PRESETS
from .pipeline import MultiViewPipeline, ViewSpec, with_overrides


def _blur_default(image_size: int) -> float:
    """SimCLR blurs with p=0.5, but the seeds advise against blurring images of 32 px or less."""
    return 0.5 if image_size > 32 else 0.0


def simclr_spec(cfg: AugmentConfig, image_size: int, *, blur_p: float | None = None) -> ViewSpec:
    s = cfg.jitter_strength if cfg.jitter_strength is not None else 0.5
    base = ViewSpec(
        size=image_size,
        crop_scale=(cfg.crop_scale_min if cfg.crop_scale_min is not None else 0.08,
                    cfg.crop_scale_max if cfg.crop_scale_max is not None else 1.0),
        jitter=(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s),
        blur_p=_blur_default(image_size) if blur_p is None else blur_p,
    )
    return with_overrides(base, flip_p=cfg.flip_p, jitter_p=cfg.jitter_p, grayscale_p=cfg.grayscale_p,
                          blur_p=cfg.blur_p, solarize_p=cfg.solarize_p)


@AUGMENT_PRESETS.register("simclr", help="crop 0.08-1, flip, jitter 0.8 (s=0.5), grayscale 0.2, blur 0.5 above 32 px")
def simclr(cfg: AugmentConfig, image_size: int, mean: Sequence[float], std: Sequence[float]) -> MultiViewPipeline:
    spec = simclr_spec(cfg, image_size)
    return MultiViewPipeline([spec] * (cfg.n_views or 2), mean, std)


@AUGMENT_PRESETS.register("crop-flip", help="random resized crop and flip only (pretext tasks, MAE)")
def crop_flip(cfg: AugmentConfig, image_size: int, mean: Sequence[float], std: Sequence[float]) -> MultiViewPipeline:
    base = ViewSpec(size=image_size, crop_scale=(cfg.crop_scale_min or 0.35, cfg.crop_scale_max or 1.0),
                    jitter_p=0.0, grayscale_p=0.0)
    spec = with_overrides(base, flip_p=cfg.flip_p, jitter_p=cfg.jitter_p, grayscale_p=cfg.grayscale_p,
                          blur_p=cfg.blur_p, solarize_p=cfg.solarize_p)
    return MultiViewPipeline([spec] * (cfg.n_views or 1), mean, std)


@AUGMENT_PRESETS.register("none", help="no augmentation: the image itself, normalised")
def no_aug(cfg: AugmentConfig, image_size: int, mean: Sequence[float], std: Sequence[float]) -> MultiViewPipeline:
    spec = ViewSpec(size=image_size, crop=False, flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)
    return MultiViewPipeline([spec] * (cfg.n_views or 1), mean, std)


def build_pipeline(cfg: AugmentConfig, default_preset: str, image_size: int, mean: Sequence[float],
                   std: Sequence[float]) -> MultiViewPipeline:
    """The pipeline named by ``cfg.preset`` (or the method's default) with the config's overrides applied."""
    if cfg.size is not None and cfg.size < 1:
        raise ValueError(f"augment.size must be >= 1, got {cfg.size}")
    return AUGMENT_PRESETS.get(cfg.preset or default_preset)(cfg, cfg.size or image_size, mean, std)
