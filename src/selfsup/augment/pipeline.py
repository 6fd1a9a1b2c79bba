"""View pipelines: a :class:`ViewSpec` per view, composed into multi-view and multi-crop pipelines.

A pipeline takes a uint8 batch ``(B, C, H, W)`` on the training device and returns a list of float views,
normalised with the dataset's statistics. All random parameters come from one ``torch.Generator`` that the
engine owns and checkpoints.

A pipeline built with ``record_boxes=True`` (for methods that match locations across views, VICRegL) also
reports where each view came from: :class:`Views` is the list of views with ``boxes[i]`` (B, 5) for view i,
each row ``(top, left, height, width, flipped)`` with the box in fractions of the input image and ``flipped``
1.0 where the view was mirrored. Recording draws nothing, so the views are the same with or without it.

A :class:`~selfsup.data.canvas.Canvas` batch (whole images of different shapes, ``data.full_image``) is taken
the same way: each view's crop is drawn inside each image's extent, with the same random draws as for a plain
batch of that image's size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..data.canvas import Canvas
from . import ops


@dataclass(frozen=True)
class ViewSpec:
    """One view's transformations, in SimCLR's order: crop → flip → jitter → grayscale → blur → solarize → normalise."""

    size: int
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int | None = None  # None: 10% of the view size, odd
    solarize_p: float = 0.0
    crop: bool = True  # False: resize the whole image (evaluation-style view)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` naming the field for out-of-range parameters (run at construction).

        Out-of-range values would not fail loudly later: a negative contrast factor or a zero blur sigma gives NaN
        or clipped garbage views and a silently ruined run.
        """
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"view size must be an integer >= 1, got {self.size!r}")
        lo, hi = self.crop_scale
        _finite("crop_scale", lo, hi)
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"view crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        rlo, rhi = self.crop_ratio
        _finite("crop_ratio", rlo, rhi)
        if not 0 < rlo <= rhi:
            raise ValueError(f"view crop_ratio must satisfy 0 < min <= max, got {self.crop_ratio}")
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            p = getattr(self, name)
            _finite(name, p)
            if not 0 <= p <= 1:
                raise ValueError(f"view {name} must be a probability in [0, 1], got {p}")
        _finite("jitter", *self.jitter)
        if min(self.jitter) < 0 or self.jitter[3] > 0.5:
            raise ValueError(f"view jitter (brightness, contrast, saturation, hue) must be >= 0 with hue <= 0.5, "
                             f"got {self.jitter}")
        slo, shi = self.blur_sigma
        _finite("blur_sigma", slo, shi)
        if not 0 < slo <= shi:
            raise ValueError(f"view blur_sigma must satisfy 0 < min <= max, got {self.blur_sigma}")
        if self.blur_kernel is not None and (not isinstance(self.blur_kernel, int) or self.blur_kernel < 0):
            raise ValueError(f"view blur_kernel must be None or an integer >= 0, got {self.blur_kernel!r}")

    def kernel_size(self) -> int:
        k = self.blur_kernel if self.blur_kernel is not None else int(0.1 * self.size)
        return k if k % 2 == 1 else k + 1


def _finite(name: str, *vals: float) -> None:
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals):
        raise ValueError(f"view {name} must be finite numbers, got {vals}")


class Views(list):
    """The views of one batch (a list of (B, C, H_i, W_i) tensors) and, when recorded, their crop ``boxes``."""

    def __init__(self, views=(), boxes: list[torch.Tensor] | None = None) -> None:
        super().__init__(views)
        self.boxes = boxes

    def rows(self, index) -> "Views":
        """The same images' views and boxes for a subset of the batch (``index``: a slice or index tensor)."""
        boxes = None if self.boxes is None else [b[index] for b in self.boxes]
        return Views([v[index] for v in self], boxes)


class ViewTransform:
    """Applies one :class:`ViewSpec` to a whole batch with per-sample random parameters."""

    def __init__(self, spec: ViewSpec, mean: Sequence[float], std: Sequence[float]) -> None:
        self.spec = spec
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)

    def __call__(self, x: torch.Tensor | Canvas, gen: torch.Generator | None = None) -> torch.Tensor:
        """``x``: uint8 or float in [0, 1], (B, C, H, W), or a :class:`Canvas` of whole images → float
        (B, C, size, size), normalised."""
        if isinstance(x, Canvas):
            return self.apply(x.pixels, gen, x.extent)[0]
        return self.apply(x, gen)[0]

    def apply(self, x: torch.Tensor, gen: torch.Generator | None = None, extent: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """The view and its geometry (B, 5): ``(top, left, height, width)`` of the crop as fractions of the
        image, then 1.0 where the view is flipped. ``extent`` (B, 2): each image's ``(h, w)`` at the top-left of
        ``x`` (a canvas batch, data/canvas.py); crops are drawn inside it, an uncropped view is the whole extent."""
        s = self.spec
        dev = x.device
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        b, c, h, w = x.shape
        ih, iw = (extent[:, 0], extent[:, 1]) if extent is not None else (h, w)
        if s.crop:
            boxes = ops.sample_resized_crop(b, ih, iw, s.crop_scale, s.crop_ratio, gen, dev)
        elif extent is not None:
            boxes = torch.cat([torch.zeros(b, 2, device=dev), extent.to(dev, torch.float32)], dim=1)
        else:
            boxes = torch.tensor([[0.0, 0.0, h, w]], device=dev).expand(b, 4)
        flip = ops.bernoulli(b, s.flip_p, gen, dev) if s.flip_p > 0 else None
        if extent is not None:
            scale = extent.to(dev, torch.float32).repeat(1, 2)  # (B, 4): h, w, h, w of each image
        else:
            scale = torch.tensor([h, w, h, w], dtype=torch.float32, device=dev)
        flipped = flip.float() if flip is not None else torch.zeros(b, device=dev)
        geometry = torch.cat([boxes.float() / scale, flipped[:, None]], dim=1)
        if s.crop or extent is not None or (h, w) != (s.size, s.size) or flip is not None:
            x = ops.resized_crop(x, boxes, s.size, flip)
        if s.jitter_p > 0 and any(v > 0 for v in s.jitter):
            factors, order = ops.sample_color_jitter(b, *s.jitter, gen, dev)
            x = ops.color_jitter(x, factors, order, ops.bernoulli(b, s.jitter_p, gen, dev))
        if s.grayscale_p > 0 and c == 3:
            x = ops.random_grayscale(x, ops.bernoulli(b, s.grayscale_p, gen, dev))
        if s.blur_p > 0 and s.kernel_size() >= 3:
            sigma = ops.uniform(b, *s.blur_sigma, gen, dev)
            apply = ops.bernoulli(b, s.blur_p, gen, dev)
            x = torch.where(apply[:, None, None, None], ops.gaussian_blur(x, sigma, s.kernel_size()), x)
        if s.solarize_p > 0:
            x = ops.solarize(x, ops.bernoulli(b, s.solarize_p, gen, dev))
        return ops.normalize(x, self.mean.to(dev), self.std.to(dev)), geometry


@dataclass
class MultiViewPipeline:
    """A list of view specs applied to the same batch: two SimCLR views, 2 global + N local crops, ..."""

    specs: list[ViewSpec]
    mean: Sequence[float]
    std: Sequence[float]
    record_boxes: bool = False  # also return each view's crop box (Views.boxes)
    transforms: list[ViewTransform] = field(init=False)

    def __post_init__(self) -> None:
        if not self.specs:
            raise ValueError("a view pipeline needs at least one view")
        self.transforms = [ViewTransform(s, self.mean, self.std) for s in self.specs]

    def __call__(self, x: torch.Tensor | Canvas, gen: torch.Generator | None = None) -> Views:
        extent = x.extent if isinstance(x, Canvas) else None  # whole images (data.full_image): crops inside each
        if isinstance(x, Canvas):
            x = x.pixels
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        if not self.record_boxes:
            return Views([t.apply(x, gen, extent)[0] for t in self.transforms])
        views, boxes = zip(*(t.apply(x, gen, extent) for t in self.transforms))
        return Views(views, list(boxes))

    @property
    def n_views(self) -> int:
        return len(self.specs)


def eval_view(size: int, mean: Sequence[float], std: Sequence[float]) -> ViewTransform:
    """No augmentation: resize (when needed) and normalise. Used for feature extraction."""
    return ViewTransform(ViewSpec(size=size, crop=False, flip_p=0.0, jitter_p=0.0, grayscale_p=0.0), mean, std)



def cell_centres(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Where the centres of an h × w grid laid over each view fall in the image: (B, h·w, 2) as (y, x) fractions
    of the image, row-major like a flattened feature map. ``boxes`` (B, 5) from :class:`Views` (a flipped view's
    column j is the crop's column w − 1 − j)."""
    top, left, bh, bw, flipped = boxes.float().unbind(1)
    v = (torch.arange(h, dtype=torch.float32, device=boxes.device) + 0.5) / h
    u = (torch.arange(w, dtype=torch.float32, device=boxes.device) + 0.5) / w
    u = torch.where(flipped[:, None] > 0.5, 1 - u, u)  # (B, w)
    y = top[:, None, None] + v[None, :, None] * bh[:, None, None]  # (B, h, 1)
    x = left[:, None, None] + u[:, None, :] * bw[:, None, None]  # (B, 1, w)
    return torch.stack(torch.broadcast_tensors(y, x), dim=-1).reshape(boxes.shape[0], h * w, 2)
