"""Parameter ranges of a :class:`~selfsup.augment.pipeline.ViewSpec`, checked when a pipeline is built.

Out-of-range parameters would not fail loudly later: a negative contrast factor or a zero blur sigma gives NaN or
clipped garbage views and a silently ruined run. Each check raises ``ValueError`` naming the field.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .pipeline import ViewSpec


def _finite(name: str, *vals: float) -> None:
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals):
        raise ValueError(f"view {name} must be finite numbers, got {vals}")


def check_view_spec(s: "ViewSpec") -> None:
    if not isinstance(s.size, int) or s.size < 1:
        raise ValueError(f"view size must be an integer >= 1, got {s.size!r}")
    lo, hi = s.crop_scale
    _finite("crop_scale", lo, hi)
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"view crop_scale must satisfy 0 < min <= max <= 1, got {s.crop_scale}")
    rlo, rhi = s.crop_ratio
    _finite("crop_ratio", rlo, rhi)
    if not 0 < rlo <= rhi:
        raise ValueError(f"view crop_ratio must satisfy 0 < min <= max, got {s.crop_ratio}")
    for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
        p = getattr(s, name)
        _finite(name, p)
        if not 0 <= p <= 1:
            raise ValueError(f"view {name} must be a probability in [0, 1], got {p}")
    _finite("jitter", *s.jitter)
    if min(s.jitter) < 0 or s.jitter[3] > 0.5:
        raise ValueError(f"view jitter (brightness, contrast, saturation, hue) must be >= 0 with hue <= 0.5, "
                         f"got {s.jitter}")
    slo, shi = s.blur_sigma
    _finite("blur_sigma", slo, shi)
    if not 0 < slo <= shi:
        raise ValueError(f"view blur_sigma must satisfy 0 < min <= max, got {s.blur_sigma}")
    if s.blur_kernel is not None and (not isinstance(s.blur_kernel, int) or s.blur_kernel < 0):
        raise ValueError(f"view blur_kernel must be None or an integer >= 0, got {s.blur_kernel!r}")
