"""Datasets: one interface for .npz files, image folders, shard folders, torchvision sets and the embedded MNIST-5k."""
from __future__ import annotations

import warnings
from numbers import Integral
from pathlib import Path

import torch
import torch.nn.functional as F

from ..progress import phase
from ..registry import DATASETS
from .base import DataError, ImageDataset, ImageSplit, InMemorySplit, channel_stats

__all__ = ["DataError", "ImageDataset", "ImageSplit", "InMemorySplit", "channel_stats", "load_dataset"]


def _resize_split(split: InMemorySplit, size: int, where: str) -> InMemorySplit:
    if split.image_size == (size, size):
        return split
    from .npz import memory_limit

    need = split.num_images * split.channels * size * size
    if need > memory_limit():
        raise DataError(f"{where}: {split.num_images} images at {size}x{size} need {need / 2**30:.1f} GiB, more than "
                        f"{memory_limit() / 2**30:.1f} GiB of memory allows (lower --image-size, or use an image "
                        "folder, which streams)")
    out = []
    for i in range(0, split.num_images, 2048):
        x = split.images[i : i + 2048].float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(x.round().clamp(0, 255).to(torch.uint8))
    return InMemorySplit(torch.cat(out), split.labels, split.ids)


def _load_test_path(ds: ImageDataset, spec: str, test_path: str, image_size: int | None) -> None:
    """``data.test_path`` is the test split whenever it is given: it replaces a dataset's own test split."""
    test = load_dataset(test_path, image_size or ds.image_size[0])
    if test.channels != ds.channels:
        raise DataError(f"data.test_path={test_path} has {test.channels}-channel images but {spec} has "
                        f"{ds.channels}")
    if ds.test is not None:  # said once the replacement has loaded (a bad test_path is its error alone)
        warnings.warn(f"data.test_path={test_path} replaces the {ds.test.num_images}-image test split of {spec}",
                      stacklevel=3)
    ds.test = test.train


def _shard_layout(path: Path) -> tuple[Path, Path | None] | None:
    from .shards import shard_layout

    return shard_layout(path)


def _load_shard_folder(path: Path, layout: tuple[Path, Path | None], image_size: int | None,
                       test_path: str | None, workers: int) -> tuple[ImageDataset, str | None, str | None]:
    """A shard folder (or a folder of train/ and val/ shard folders) as a dataset; returns it, the test path (given,
    or the val/ beside train/) and the test path it loaded itself (a shard folder; None: left to _load_test_path)."""
    from .shards import INDEX, load_shards

    train_dir, test_dir = layout
    if test_path is None and test_dir is not None:
        test_path = str(test_dir)
        phase(f"{path} holds {train_dir.name}/ and {test_dir.name}/ shard folders: read as the train split and the "
              f"test split (pretraining uses {train_dir.name}/ only)")
    shard_test = test_path if test_path is not None and (Path(test_path) / INDEX).is_file() else None
    ds = load_shards(train_dir, image_size, test_root=shard_test, workers=workers)
    ds.name = path.name
    return ds, test_path, shard_test


def load_dataset(spec: str, image_size: int | None = None, *, test_path: str | None = None,
                 workers: int = 0, full_image: float | None = None) -> ImageDataset:
    """Resolve ``spec``: a registered name (``selfsup list``), a ``.npz`` file, an image folder (a folder
    holding only ``train/`` and ``val/`` or ``test/`` is read as those two splits: data/scan.py ``split_folders``),
    or a shard folder that ``selfsup shard`` wrote (it holds ``index.json`` and ``shard-*.tar``; one holding
    ``train/`` and ``val/`` shard folders is read as those two splits): data/shards.py. A shard folder always
    streams through ``workers`` DataLoader workers (at least one).

    ``image_size`` resizes in-memory data once at load time (and sets the decode size of folders and shards).
    ``test_path`` (``data.test_path``) is the test split: it replaces the dataset's own one, with a warning.
    ``full_image`` (``data.full_image_scale`` when ``data.full_image``): an image folder's training batches are
    whole images with their short side at ``image_size × full_image`` (data/canvas.py); folders only.
    """
    if not spec:
        raise DataError("no data given: pass --data with a dataset name, a .npz file or an image folder")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, Integral)
                                   or image_size < 1):
        raise DataError(f"image size must be a whole number of pixels >= 1, got {image_size!r}")
    image_size = None if image_size is None else int(image_size)
    path = Path(spec)
    if full_image is not None and not path.is_dir():
        raise DataError(f"data.full_image applies to image folders; {spec} is not one (in-memory data is cropped "
                        "from the images as stored)")
    folder_test = None  # a test folder beside a train folder: loaded by load_folder (same classes, channels)
    if spec in DATASETS and not path.exists():
        ds = DATASETS.get(spec)()
    elif path.suffix == ".npz":
        from .npz import load_npz

        ds = load_npz(path)
    elif (layout := _shard_layout(path)) is not None:
        if full_image is not None:
            raise DataError(f"data.full_image applies to image folders; {spec} is a shard folder, whose images are "
                            "read as centred squares")
        ds, test_path, folder_test = _load_shard_folder(path, layout, image_size, test_path, workers)
    elif path.is_dir():
        from .folder import load_folder
        from .scan import split_folders

        root, splits = path, split_folders(path)
        if splits is not None:  # root/train + root/val (or test): two splits, not two classes
            path, test_dir = splits
            test_path = test_path if test_path is not None else str(test_dir)
            phase(f"{root} holds {path.name}/ and {test_dir.name}/: read as the train split and the test split "
                  f"(pretraining uses {path.name}/ only)" + ("" if str(test_dir) == test_path else
                                                            f"; data.test_path={test_path} is the test split"))
        folder_test = (test_path if test_path is not None and Path(test_path).is_dir()
                       and _shard_layout(Path(test_path)) is None else None)  # shards: by _load_test_path
        from .canvas import CanvasSpec

        canvas = CanvasSpec.for_size(image_size or 64, full_image) if full_image is not None else None
        ds = load_folder(path, image_size, test_root=folder_test, workers=workers, canvas=canvas)
        ds.name = root.name
    elif path.exists():
        raise DataError(f"data path is neither a .npz file nor an image folder: {path}")
    else:
        raise DataError(f"data not found: '{spec}' is not a file, a folder, or a known dataset "
                        f"({', '.join(DATASETS.names())})")
    if test_path is not None and folder_test is None:
        _load_test_path(ds, spec, test_path, image_size)
    if image_size is not None:
        train = ds.train
        if isinstance(ds.train, InMemorySplit):
            ds.train = _resize_split(ds.train, image_size, spec)
        if isinstance(ds.test, InMemorySplit):
            ds.test = _resize_split(ds.test, image_size, test_path or spec)
        if ds.train is not train:  # folders and shards were decoded at image_size: their statistics stand
            ds.mean, ds.std = channel_stats(ds.train)
    return ds
