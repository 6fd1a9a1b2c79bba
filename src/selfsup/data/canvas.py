"""Whole images for pretraining crops: a batch of differently shaped images laid in one uint8 canvas.

Image folders are normally read as the centred square, resized (data/folder.py ``square_array``), which throws
away the borders every random-resized crop could have used. With ``data.full_image`` the training split streams
each image *whole* instead: decoded at a reduced scale (JPEG ``draft``, then a resize) so that its short side is
``short`` pixels, its long side cut to at most ``long`` (a 4:3 canvas by default: 4:3 and 3:4 photos keep every
pixel, wider ones lose only the excess of the long side), and laid at the top-left corner of an ``long × long``
zero canvas. The batch carries each image's extent ``(h, w)``; the view pipeline samples its crop boxes inside
that extent with the same algorithm (augment/ops.py ``sample_resized_crop`` with per-sample sizes), so the crops
follow torchvision's ``RandomResizedCrop`` distribution on the whole image, at the decoded resolution.

Evaluation keeps reading the centred square (a fixed view of each image, as before).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch

CANVAS_ASPECT = 4 / 3  # long side of the canvas over the short side


@dataclass(frozen=True)
class CanvasSpec:
    """``short``: the decoded short side; ``long``: the canvas side (the longest kept long side)."""

    short: int
    long: int

    @classmethod
    def for_size(cls, image_size: int, scale: float = 1.0, aspect: float = CANVAS_ASPECT) -> "CanvasSpec":
        short = max(1, round(image_size * scale))
        return cls(short, max(short, round(short * aspect)))


@dataclass
class Canvas:
    """A batch of whole images: ``pixels`` uint8 (B, C, L, L), image i in ``pixels[i, :, :h_i, :w_i]``;
    ``extent`` int64 (B, 2) the ``(h_i, w_i)``. Moves, slices and reports its shape like the pixel tensor, so the
    training loop handles it as it handles a plain batch."""

    pixels: torch.Tensor
    extent: torch.Tensor

    def __post_init__(self) -> None:
        if self.pixels.ndim != 4 or self.extent.shape != (self.pixels.shape[0], 2):
            raise ValueError(f"a canvas needs pixels (B, C, L, L) and extent (B, 2), got "
                             f"{tuple(self.pixels.shape)} and {tuple(self.extent.shape)}")

    @property
    def shape(self) -> torch.Size:
        return self.pixels.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.pixels.dtype

    @property
    def device(self) -> torch.device:
        return self.pixels.device

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def __getitem__(self, rows) -> "Canvas":
        return Canvas(self.pixels[rows], self.extent[rows])

    def to(self, device, non_blocking: bool = False) -> "Canvas":
        return Canvas(self.pixels.to(device, non_blocking=non_blocking),
                      self.extent.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Canvas":  # DataLoader(pin_memory=True) calls this on custom batch types
        return Canvas(self.pixels.pin_memory(), self.extent.pin_memory())


def whole_array(im, spec: CanvasSpec, channels: int) -> tuple[np.ndarray, int, int]:
    """A decoded PIL image as uint8 (channels, L, L) with the image, short side ``spec.short`` and long side at
    most ``spec.long`` (centred cut of the excess), at the top-left; returns the array and ``(h, w)``."""
    from PIL import Image

    from .folder import _to_8bit

    im = _to_8bit(im).convert("L" if channels == 1 else "RGB")
    w0, h0 = im.size
    s = spec.short / min(w0, h0)
    # the source box: the whole image, or its centred part of aspect long:short along the long side
    keep_w = min(w0, spec.long / s) if w0 >= h0 else w0
    keep_h = min(h0, spec.long / s) if h0 > w0 else h0
    left, top = (w0 - keep_w) / 2, (h0 - keep_h) / 2
    w = min(spec.long, max(1, round(keep_w * s)))
    h = min(spec.long, max(1, round(keep_h * s)))
    im = im.resize((w, h), Image.Resampling.BILINEAR, box=(left, top, left + keep_w, top + keep_h),
                   reducing_gap=None)
    arr = np.asarray(im, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    out = np.zeros((channels, spec.long, spec.long), np.uint8)
    out[:, :h, :w] = arr
    return out, h, w


def decode_whole(source: Path | IO[bytes], spec: CanvasSpec, channels: int) -> tuple[np.ndarray, int, int]:
    """Decode a file (path or binary file object) for :func:`whole_array`, with the folder reader's checks:
    header sizes before any pixel, JPEG decoded at the smallest DCT scale that keeps the short side
    ``>= spec.short``. Raises :class:`selfsup.data.folder.BadImage`."""
    from PIL import Image, ImageFile

    from .folder import BadImage, _check_pixels, _check_shape

    ImageFile.LOAD_TRUNCATED_IMAGES = False
    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(source) as im:
            _check_shape(*im.size)
            if im.format == "JPEG":
                im.draft(mode, (spec.short, spec.short))
            _check_pixels(*im.size)
            return whole_array(im, spec, channels)
    except BadImage:
        raise
    except Exception as e:  # PIL.UnidentifiedImageError, OSError (truncated), DecompressionBombError ...
        raise BadImage(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def collate_canvas(items: list) -> tuple[Canvas | None, torch.Tensor | None, int]:
    """DataLoader collate of ``((array, h, w) or None, index)`` items: the good ones as one :class:`Canvas`,
    their indices, and the number of unreadable ones."""
    good = [(x, i) for x, i in items if x is not None]
    n_bad = len(items) - len(good)
    if not good:
        return None, None, n_bad
    pixels = torch.from_numpy(np.stack([x[0] for x, _ in good]))
    extent = torch.tensor([[x[1], x[2]] for x, _ in good], dtype=torch.int64)
    return Canvas(pixels, extent), torch.tensor([i for _, i in good]), n_bad
