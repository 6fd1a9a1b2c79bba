"""Datasets: one interface for .npz files, image folders, torchvision sets and the embedded MNIST-5k."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..registry import DATASETS
from .base import DataError, ImageDataset, ImageSplit, InMemorySplit, channel_stats

__all__ = ["DataError", "ImageDataset", "ImageSplit", "InMemorySplit", "channel_stats", "load_dataset"]


def _resize_split(split: InMemorySplit, size: int) -> InMemorySplit:
    if split.image_size == (size, size):
        return split
    out = []
    for i in range(0, split.num_images, 2048):
        x = split.images[i : i + 2048].float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(x.round().clamp(0, 255).to(torch.uint8))
    return InMemorySplit(torch.cat(out), split.labels)


def load_dataset(spec: str, image_size: int | None = None, *, test_path: str | None = None,
                 workers: int = 0) -> ImageDataset:
    """Resolve ``spec``: a registered name (``selfsup list``), a ``.npz`` file, or an image folder.

    ``image_size`` resizes in-memory data once at load time (and sets the decode size of folders).
    """
    if not spec:
        raise DataError("no data given: pass --data with a dataset name, a .npz file or an image folder")
    path = Path(spec)
    if spec in DATASETS and not path.exists():
        ds = DATASETS.get(spec)()
    elif path.suffix == ".npz":
        from .npz import load_npz

        ds = load_npz(path)
    elif path.is_dir():
        from .folder import load_folder

        ds = load_folder(path, image_size, test_root=test_path, workers=workers)
    elif path.exists():
        raise DataError(f"data path is neither a .npz file nor an image folder: {path}")
    else:
        raise DataError(f"data not found: '{spec}' is not a file, a folder, or a known dataset "
                        f"({', '.join(DATASETS.names())})")
    if test_path is not None and ds.test is None and not path.is_dir():
        test = load_dataset(test_path, image_size or ds.image_size[0])
        ds.test = test.train
    if image_size is not None:
        if isinstance(ds.train, InMemorySplit):
            ds.train = _resize_split(ds.train, image_size)
        if isinstance(ds.test, InMemorySplit):
            ds.test = _resize_split(ds.test, image_size)
        ds.mean, ds.std = channel_stats(ds.train)
    return ds
