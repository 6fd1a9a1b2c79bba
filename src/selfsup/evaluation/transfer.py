"""Transfer: evaluate a backbone pretrained on one dataset on another (CIFAR-10 → MNIST, any image folder).

Eval data is resized to the size the backbone was pretrained at, and its channels are converted explicitly
when they differ: grayscale → RGB repeats the channel, RGB → grayscale takes the ITU-R 601 luma
(0.299 R + 0.587 G + 0.114 B). Any other mismatch is an error. The conversion is recorded in ``eval.json``.

Two ways in: ``selfsup eval RUN --eval-data PATH`` runs every requested protocol on PATH; the ``transfer``
protocol (``--set transfer.data=PATH``) adds a linear + kNN number on PATH next to in-domain protocols.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, cast

import torch

from ..backbones.base import Backbone
from ..data import DataError, ImageDataset, load_dataset
from ..data.base import ImageSplit, InMemorySplit, channel_stats
from ..errors import ConfigError
from ..registry import EVALUATORS
from .knn import knn_accuracy
from .linear import linear_probe
from .protocols import EvalContext

LUMA = (0.299, 0.587, 0.114)


def convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 images (B, C, H, W) → (B, ``channels``, H, W): 1 → 3 repeats, 3 → 1 takes the luma."""
    c = x.shape[1]
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    if c == 3 and channels == 1:
        w = torch.tensor(LUMA, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        return (x.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    raise DataError(f"eval data has {c} channels but the backbone expects {channels}; only 1 ↔ 3 "
                    "(grayscale ↔ RGB) is converted")


def describe_conversion(src: int, dst: int) -> str | None:
    if src == dst:
        return None
    return {(1, 3): "grayscale → RGB (channel repeated)",
            (3, 1): "RGB → grayscale (luma 0.299R + 0.587G + 0.114B)"}.get((src, dst))


@dataclass
class ChannelAdaptedSplit:
    """A split whose batches are converted to ``channels`` on the fly (for streaming image folders)."""

    inner: ImageSplit
    channels: int

    @property
    def num_images(self) -> int:
        return self.inner.num_images

    @property
    def labels(self):
        return self.inner.labels

    @property
    def image_size(self) -> tuple[int, int]:
        return self.inner.image_size

    def num_batches(self, batch_size: int, drop_last: bool) -> int:
        return self.inner.num_batches(batch_size, drop_last)

    def batches(self, batch_size, **kw) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        for x, idx, y in self.inner.batches(batch_size, **kw):
            yield convert_channels(x, self.channels), idx, y


def _adapt_split(split: ImageSplit | None, channels: int) -> ImageSplit | None:
    if split is None or split.channels == channels:
        return split
    if isinstance(split, InMemorySplit):
        return InMemorySplit(torch.cat([convert_channels(split.images[i : i + 4096], channels)
                                        for i in range(0, split.num_images, 4096)]), split.labels, split.ids)
    return cast(ImageSplit, ChannelAdaptedSplit(split, channels))  # read-only labels: never assigned here


def adapt_channels(ds: ImageDataset, channels: int) -> tuple[ImageDataset, str | None]:
    """``ds`` with ``channels`` channels (statistics recomputed), and the conversion's description (None if none)."""
    src = ds.channels
    if src == channels:
        return ds, None
    what = describe_conversion(src, channels)
    if what is None:
        raise DataError(f"eval data {ds.name} has {src} channels but the backbone expects {channels}; only "
                        "1 ↔ 3 (grayscale ↔ RGB) is converted")
    train, test = _adapt_split(ds.train, channels), _adapt_split(ds.test, channels)
    assert train is not None  # ds.train is a split
    mean, std = channel_stats(train)
    return ImageDataset(ds.name, train, test, list(ds.classes), mean, std), what


def load_eval_data(spec: str, image_size: int | None, channels: int, *, test_path: str | None = None
                   ) -> tuple[ImageDataset, dict[str, Any]]:
    """Labelled eval data at ``image_size`` with ``channels`` channels, plus what was done to it."""
    ds = load_dataset(spec, image_size, test_path=test_path)
    if not ds.has_labels:
        raise DataError(f"{spec}: evaluation needs labelled train and test splits")
    native = ds.channels
    ds, conv = adapt_channels(ds, channels)
    return ds, {"data": spec, "image_size": list(ds.image_size), "source_channels": native,
                "channel_conversion": conv or "none"}


@EVALUATORS.register("transfer", help="linear (cached) and kNN on another labelled dataset (--set transfer.data=PATH)",
                     options={"data": "", "k": 20, "l2_grid": (1e-5, 1e-4, 1e-3, 1e-2)})
def transfer_protocol(ctx: EvalContext) -> dict[str, Any]:
    spec = ctx.opt("data")
    if not spec:
        raise ConfigError("protocol 'transfer' needs the target data: --set transfer.data=PATH (a dataset name, "
                          ".npz or image folder); or use --eval-data to run every protocol on other data")
    key = ("transfer-data", spec)
    if key not in ctx._cache:
        ctx._cache[key] = load_eval_data(spec, ctx.data.image_size[0], cast(Backbone, ctx.backbone).in_channels)
    data, info = ctx._cache[key]
    sub = EvalContext(ctx.backbone, data, ctx.device, seed=ctx.seed, _cache=ctx._cache.setdefault(("tctx", spec), {}))
    ftr, ytr, fte, yte = sub.features()
    k = ctx.opt("k")
    grid = tuple(float(v) for v in ctx.opt("l2_grid"))
    lin = linear_probe(ftr, ytr, fte, yte, l2_grid=grid, seed=ctx.seed, num_classes=sub.num_classes)
    return {"top1": lin["top1"],
            "top1_knn": knn_accuracy(ftr, ytr, fte, yte, k=k, num_classes=sub.num_classes),
            "labelled_images": int(ytr.numel()),
            "params": {**info, "top1_is": "linear (cached, L-BFGS)", "l2": lin["l2"], "knn_k": k}}
