"""The one dataset interface: uint8 images (N, C, H, W) with optional labels, split into train and test.

Small datasets are one uint8 tensor held in memory and indexed per batch (no DataLoader, no workers: on a
2-core machine workers take the cores the model needs). Large image folders stream through a DataLoader whose
workers decode to a fixed size; they implement the same :class:`ImageSplit` surface.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol

import torch


class DataError(ValueError):
    """Bad dataset input: missing/empty path, wrong keys, dtypes or shapes. The message names the file."""


class ImageSplit(Protocol):
    """One split. ``batches`` yields ``(images_uint8 (B,C,H,W), indices (B,), labels (B,) or None)``."""

    labels: torch.Tensor | None

    @property
    def num_images(self) -> int: ...

    @property
    def channels(self) -> int: ...

    @property
    def image_size(self) -> tuple[int, int]: ...

    def batches(
        self, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None,
        drop_last: bool = False, start_batch: int = 0,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]: ...

    def num_batches(self, batch_size: int, drop_last: bool) -> int: ...


@dataclass
class InMemorySplit:
    """Images as one uint8 tensor ``(N, C, H, W)``; labels int64 ``(N,)`` or None; ``ids``: one name per image
    (an image folder's paths relative to its root; None: the row index is the id, see :mod:`selfsup.data.ids`)."""

    images: torch.Tensor
    labels: torch.Tensor | None = None
    ids: list[str] | None = None

    def __post_init__(self) -> None:
        x = self.images
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise DataError(f"images must be uint8 (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
        if self.labels is not None and len(self.labels) != len(x):
            raise DataError(f"{len(x)} images but {len(self.labels)} labels")
        if self.ids is not None and len(self.ids) != len(x):
            raise DataError(f"{len(x)} images but {len(self.ids)} ids")

    @property
    def num_images(self) -> int:
        return self.images.shape[0]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.images.shape[2], self.images.shape[3])

    def num_batches(self, batch_size: int, drop_last: bool) -> int:
        n = self.num_images
        return n // batch_size if drop_last else -(-n // batch_size)

    def batches(self, batch_size, *, shuffle, generator=None, drop_last=False, start_batch=0):
        n = self.num_images
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for b in range(start_batch, self.num_batches(batch_size, drop_last)):
            idx = order[b * batch_size : (b + 1) * batch_size]
            yield self.images[idx], idx, (self.labels[idx] if self.labels is not None else None)

    def subset(self, idx: torch.Tensor) -> "InMemorySplit":
        ids = [self.ids[i] for i in idx.tolist()] if self.ids is not None else None
        return InMemorySplit(self.images[idx], self.labels[idx] if self.labels is not None else None, ids)


@dataclass
class ImageDataset:
    """A train split (used unlabelled for pretraining; labelled for evaluation when labels exist) and a test split."""

    name: str
    train: ImageSplit
    test: ImageSplit | None = None
    classes: list[str] = field(default_factory=list)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.mean:
            self.mean, self.std = channel_stats(self.train)

    @property
    def channels(self) -> int:
        return self.train.channels

    @property
    def image_size(self) -> tuple[int, int]:
        return self.train.image_size

    @property
    def has_labels(self) -> bool:
        return self.train.labels is not None and self.test is not None and self.test.labels is not None

    def describe(self) -> str:
        h, w = self.image_size
        test = f", test {self.test.num_images}" if self.test is not None else ""
        return f"{self.name}: train {self.train.num_images}{test}, {self.channels}x{h}x{w}, {len(self.classes)} classes"


def channel_stats(split: ImageSplit, max_images: int = 10_000) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] over at most ``max_images`` images (computed, not hard-coded)."""
    total = torch.zeros(split.channels, dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    count = 0
    g = torch.Generator().manual_seed(0)
    for x, _, _ in split.batches(1000, shuffle=True, generator=g):
        xf = x.to(torch.float64) / 255.0
        total += xf.sum(dim=(0, 2, 3))
        total_sq += (xf * xf).sum(dim=(0, 2, 3))
        count += xf.shape[0] * xf.shape[2] * xf.shape[3]
        if count >= max_images * xf.shape[2] * xf.shape[3]:
            break
    if count == 0:
        raise DataError("cannot compute statistics of an empty split")
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(float(m) for m in mean), tuple(max(float(s), 1e-3) for s in std)
