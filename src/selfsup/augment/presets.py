"""The table of named view presets, and the one rule by which a run's ``augment`` settings override them.

A :class:`Preset` is a recipe: template :class:`ViewSpec` s for the global views (cycled to ``n_views``: view 1,
view 2, view 1, ...) and, for multi-crop, a template for the local crops. :func:`build_pipeline` sizes the
templates for the image, applies a :class:`ViewOverrides` (every field left None keeps the preset's value; a
set field overrides every view) and returns a :class:`MultiViewPipeline`.

Rules shared by every preset:

- blur is off for views of 32 px or less (a 3-px kernel only smears an already blurry image); the preset's blur
  probability applies above 32 px, judged on each view's own size (a 16 px local crop of a 64 px image is not
  blurred), unless ``blur_p`` is set;
- ``jitter_strength`` s replaces the preset's colour jitter by SimCLR's (0.8s, 0.8s, 0.8s, 0.2s);
- ``crop_scale_min`` / ``crop_scale_max`` replace either end of the global views' crop scale; local crops have
  scale (0.05, ``local_scale_max``) and ``local_size`` px (default half the image).

The presets follow the authors' released augmentations: SimCLR (Chen et al. 2020, Appendix A), InstDisc / MoCo
v1 (Wu et al. 2018; He et al. 2020), MoCo v2's aug+ (Chen et al. 2020), BYOL's asymmetric pair (Grill et al.
2020, Table 6; also used by MoCo v3, Barlow Twins and VICReg), multi-crop (Caron et al. 2020 / 2021), ReSSL's
strong/weak pair (Zheng et al. 2021: the EMA teacher sees a crop-and-flip view), MMCR's many SimCLR views (Yerxa
et al. 2023) and EMP-SSL's fixed-size patches (Tong et al. 2023).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any, Sequence

from ..errors import ConfigError
from ..registry import AUGMENT_PRESETS
from .multicrop import LOCAL_SCALE_MIN, default_local_size, multi_crop
from .pipeline import MultiViewPipeline, ViewSpec

BLUR_MIN_SIZE = 33  # views smaller than this are never blurred by a preset's default
_PROBABILITIES = ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p")


@dataclass(frozen=True)
class ViewOverrides:
    """What a run may change in a preset; None keeps the preset's value. The ``augment`` config section has the
    same fields (the config layer converts it with :meth:`of`)."""

    preset: str | None = None
    size: int | None = None  # view resolution; None: the image size
    crop_scale_min: float | None = None
    crop_scale_max: float | None = None
    jitter_strength: float | None = None  # s in SimCLR: (0.8s, 0.8s, 0.8s, 0.2s)
    jitter_p: float | None = None
    grayscale_p: float | None = None
    blur_p: float | None = None
    solarize_p: float | None = None
    flip_p: float | None = None
    n_views: int | None = None
    local_crops: int | None = None
    local_size: int | None = None
    local_scale_max: float | None = None

    @classmethod
    def of(cls, source: Any = None) -> "ViewOverrides":
        """The fields of the same name on ``source`` (an ``augment`` section, or None for no overrides)."""
        if source is None or isinstance(source, cls):
            return source or cls()
        return cls(**{f.name: getattr(source, f.name, None) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class Preset:
    """Template views (their ``size`` is a placeholder) and how many of each a pipeline has by default.

    ``overridable=False``: the transformation fields do not apply (``none``: the image itself); the view count
    and size still do. ``size_ratio``: the views' default size as a fraction of the image size (EMP-SSL's
    patches keep their native resolution); ``augment.size`` overrides it.
    """

    views: tuple[ViewSpec, ...]
    n_views: int = 2
    local: ViewSpec | None = None
    local_crops: int = 0
    overridable: bool = True
    size_ratio: float = 1.0

    def build(self, o: ViewOverrides, image_size: int, mean: Sequence[float], std: Sequence[float]
              ) -> MultiViewPipeline:
        n = o.n_views if o.n_views is not None else self.n_views
        if n < 1:
            raise ConfigError(f"augment.n_views must be >= 1, got {n}")
        if o.size is None and self.size_ratio != 1.0:
            image_size = max(1, round(self.size_ratio * image_size))
        specs = [override(v, o, image_size) if self.overridable else replace(v, size=image_size) for v in self.views]
        n_local = o.local_crops if o.local_crops is not None else self.local_crops
        local = None
        if n_local:
            if self.local is None:
                raise ConfigError(f"augment.local_crops: preset '{o.preset}' makes no local crops "
                                  "(presets with local crops: byol, moco-v3, multicrop)")
            local = override(self.local, o, local_size(o, image_size), local=True)
        return multi_crop([specs[i % len(specs)] for i in range(n)], local, n_local, mean, std)


def local_size(o: ViewOverrides, image_size: int) -> int:
    size = o.local_size if o.local_size is not None else default_local_size(image_size)
    if size < 1:
        raise ConfigError(f"augment.local_size must be >= 1, got {size}")
    return size


def override(spec: ViewSpec, o: ViewOverrides, size: int, *, local: bool = False) -> ViewSpec:
    """``spec`` at ``size`` px with the preset rules (module docstring) and the overrides applied."""
    kw: dict[str, Any] = {"size": size, "blur_p": spec.blur_p if size >= BLUR_MIN_SIZE else 0.0}
    s = o.jitter_strength
    if s is not None:
        kw["jitter"] = (0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)
    if local:
        smax = o.local_scale_max if o.local_scale_max is not None else spec.crop_scale[1]
        if not LOCAL_SCALE_MIN < smax <= 1.0:
            raise ConfigError(f"augment.local_scale_max must be in ({LOCAL_SCALE_MIN}, 1], got {smax}")
        kw["crop_scale"] = (LOCAL_SCALE_MIN, smax)
    else:
        lo, hi = spec.crop_scale
        kw["crop_scale"] = (o.crop_scale_min if o.crop_scale_min is not None else lo,
                            o.crop_scale_max if o.crop_scale_max is not None else hi)
    kw.update({k: getattr(o, k) for k in _PROBABILITIES if getattr(o, k) is not None})
    return replace(spec, **kw)


# ----------------------------------------------------------------------------------------------- the table
_T = 1  # template size, replaced when a pipeline is built
SIMCLR = ViewSpec(size=_T, crop_scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), blur_p=0.5)
INSTDISC = ViewSpec(size=_T, crop_scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.4), jitter_p=1.0, grayscale_p=0.2)
BYOL_1 = ViewSpec(size=_T, crop_scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8, grayscale_p=0.2,
                  blur_p=1.0, solarize_p=0.0)
BYOL_2 = replace(BYOL_1, blur_p=0.1, solarize_p=0.2)
LOCAL = replace(BYOL_1, crop_scale=(LOCAL_SCALE_MIN, 0.25), blur_p=0.5)
CROP_FLIP = ViewSpec(size=_T, crop_scale=(0.35, 1.0), jitter_p=0.0, grayscale_p=0.0)
WEAK = ViewSpec(size=_T, crop_scale=(0.2, 1.0), jitter_p=0.0, grayscale_p=0.0)  # ReSSL's teacher view
IDENTITY = ViewSpec(size=_T, crop=False, flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)
# EMP-SSL (Tong et al. 2023, the authors' code): square crops of exactly 1/4 of the image area, flip, jitter
# (0.4, 0.4, 0.4, 0.2) p 0.8, grayscale 0.2, blur 0.1, solarise 0.1
EMP_PATCH = ViewSpec(size=_T, crop_scale=(0.25, 0.25), crop_ratio=(1.0, 1.0), jitter=(0.4, 0.4, 0.4, 0.2),
                     blur_p=0.1, solarize_p=0.1)

_BYOL = Preset((BYOL_1, BYOL_2), local=LOCAL)
PRESETS: dict[str, tuple[Preset, str]] = {
    "simclr": (Preset((SIMCLR,)), "crop 0.08-1, flip, jitter 0.8 (s=0.5), grayscale 0.2, blur 0.5 above 32 px"),
    "moco-v1": (Preset((INSTDISC,)),
                "InstDisc/MoCo v1: crop 0.2-1, flip, jitter 0.4 (hue 0.4), grayscale 0.2, no blur"),
    "instdisc": (Preset((INSTDISC,), n_views=1), "one InstDisc/MoCo v1 view per image (NPID)"),
    "moco-v2": (Preset((replace(SIMCLR, crop_scale=(0.2, 1.0)),)),
                "MoCo v2 aug+: SimCLR's views with crop 0.2-1 (blur 0.5 above 32 px)"),
    "byol": (_BYOL, "BYOL's asymmetric pair: blur 1.0/0.1, solarise 0/0.2 (blur off <= 32 px)"),
    "moco-v3": (_BYOL, "MoCo v3 uses BYOL's asymmetric pair: the byol preset under MoCo v3's name"),
    "multicrop": (Preset((replace(BYOL_1, crop_scale=(0.25, 1.0)), replace(BYOL_2, crop_scale=(0.25, 1.0))),
                         local=LOCAL, local_crops=6),
                  "2 global crops (0.25-1) + 6 local crops of half size (0.05-0.25)"),
    # statistical / coding-rate objectives (docs/statistical.md)
    "mmcr": (Preset((SIMCLR,), n_views=8),
             "MMCR: 8 SimCLR views per image (the paper's CIFAR views, 8 of its 40; no blur at 32 px)"),
    "emp-ssl": (Preset((EMP_PATCH,), n_views=20, size_ratio=0.5),
                "EMP-SSL: 20 fixed-size square patches (1/4 of the area) at their native resolution"),
    "fastsiam": (Preset((SIMCLR,), n_views=4), "FastSiam: the simclr preset's views, 4 per image"),
    "ressl": (Preset((replace(SIMCLR, crop_scale=(0.2, 1.0)), WEAK)),
              "ReSSL: view 1 MoCo v2's aug+ (the student's), view 2 weak: crop 0.2-1 and flip only (the teacher's)"),
    "crop-flip": (Preset((CROP_FLIP,), n_views=1), "random resized crop and flip only (pretext tasks, MAE)"),
    "none": (Preset((IDENTITY,), n_views=1, overridable=False), "no augmentation: the image itself, normalised"),
}
for _name, (_preset, _help) in PRESETS.items():
    AUGMENT_PRESETS.register(_name, help=_help)(_preset)


def build_pipeline(overrides: Any, default_preset: str, image_size: int, mean: Sequence[float],
                   std: Sequence[float]) -> MultiViewPipeline:
    """The pipeline named by ``overrides.preset`` (or the method's default) with the overrides applied.

    ``overrides``: a :class:`ViewOverrides`, None, or anything with its field names (the ``augment`` section).
    """
    o = ViewOverrides.of(overrides)
    if o.size is not None and o.size < 1:
        raise ValueError(f"augment.size must be >= 1, got {o.size}")
    name = o.preset or default_preset
    return AUGMENT_PRESETS.get(name).build(replace(o, preset=name), o.size or image_size, mean, std)
