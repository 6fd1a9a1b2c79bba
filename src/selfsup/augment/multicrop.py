"""Multi-crop (Caron et al. 2020, SwAV Sec. 3.2): a few global crops at full size plus N small local crops.

Local crops are cheap (a 16 px crop costs a quarter of a 32 px one) and add many views per image. The pipeline
is an ordinary :class:`MultiViewPipeline` whose views are ordered **global crops first, then local crops**, and
whose local crops are strictly smaller than the global ones: methods tell the two apart by size
(:func:`count_global_views`), so the protocol needs nothing beyond the list of views.

The presets ``multicrop`` and ``byol`` (augment/presets.py) build it: ``n_views`` global crops (default 2) at
the image size with scale ``(crop_scale_min, crop_scale_max)``; ``local_crops`` crops of ``local_size`` px with
scale ``(0.05, local_scale_max)``.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import ConfigError
from .pipeline import MultiViewPipeline, ViewSpec

LOCAL_SCALE_MIN = 0.05


def default_local_size(image_size: int) -> int:
    """Half the image size (16 px for CIFAR; DINO uses 96/224 ≈ 0.43), at least 4 px."""
    return max(4, image_size // 2)


def multi_crop(global_specs: Sequence[ViewSpec], local_spec: ViewSpec | None, n_local: int,
               mean: Sequence[float], std: Sequence[float]) -> MultiViewPipeline:
    """Global views ``global_specs`` followed by ``n_local`` copies of ``local_spec`` (randomness per copy)."""
    if not global_specs:
        raise ConfigError("augment.n_views: multi-crop needs at least 1 global crop")
    if n_local < 0:
        raise ConfigError(f"augment.local_crops must be >= 0, got {n_local}")
    size = global_specs[0].size
    if any(s.size != size for s in global_specs):
        raise ConfigError("multi-crop: all global crops must have the same size")
    specs = list(global_specs)
    if n_local:
        if local_spec is None:
            raise ConfigError("augment.local_crops > 0 needs a local crop spec")
        if local_spec.size >= size:
            raise ConfigError(f"augment.local_size ({local_spec.size}) must be smaller than the global crop size ({size})")
        specs += [local_spec] * n_local
    return MultiViewPipeline(specs, mean, std)


def count_global_views(views: Sequence[torch.Tensor]) -> int:
    """How many leading views share the first view's size (the global crops of a multi-crop batch)."""
    n = 1
    while n < len(views) and views[n].shape[-2:] == views[0].shape[-2:]:
        n += 1
    return n


def group_by_size(views: Sequence[torch.Tensor]) -> list[tuple[int, int]]:
    """Runs ``[start, end)`` of consecutive same-size views: each run goes through a backbone in one batch."""
    runs, start = [], 0
    for i in range(1, len(views) + 1):
        if i == len(views) or views[i].shape[-2:] != views[start].shape[-2:]:
            runs.append((start, i))
            start = i
    return runs
