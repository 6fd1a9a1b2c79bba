"""``.npz`` archives with ``x_train``/``y_train``/``x_test``/``y_test`` uint8 NHWC arrays (labels optional)."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from .base import DataError, ImageDataset, InMemorySplit


def _images(arr: np.ndarray, path: Path, key: str) -> torch.Tensor:
    if arr.dtype != np.uint8:
        raise DataError(f"{path}: '{key}' must be uint8, got {arr.dtype}")
    if arr.ndim == 3:  # (N, H, W): grayscale without a channel axis
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3) or arr.shape[0] == 0:
        raise DataError(f"{path}: '{key}' must be a non-empty (N, H, W, C) array with C in (1, 3), got {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))


def _labels(arr: np.ndarray, n: int, path: Path, key: str) -> torch.Tensor:
    if arr.ndim != 1 or len(arr) != n or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{path}: '{key}' must be {n} integer labels, got {arr.dtype} {arr.shape}")
    if len(arr) and arr.min() < 0:
        raise DataError(f"{path}: '{key}' has negative labels")
    return torch.from_numpy(arr.astype(np.int64))


def load_npz(path: str | Path) -> ImageDataset:
    """Load an .npz dataset; one-line :class:`DataError` naming the file for any bad key, dtype or shape."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {p}")
    if not zipfile.is_zipfile(p):  # numpy would otherwise suggest unpickling it
        raise DataError(f"{p}: not a .npz archive (not a zip file; empty, corrupt or another format)")
    try:
        z = np.load(p, allow_pickle=False)
        keys = set(z.files)
    except Exception as e:  # zipfile.BadZipFile, ValueError, OSError ...
        raise DataError(f"{p}: not a readable .npz archive ({type(e).__name__}: {e})") from None
    if "x_train" not in keys:
        raise DataError(f"{p}: missing key 'x_train' (found: {', '.join(sorted(keys)) or 'none'}); "
                        "expected x_train, y_train, x_test, y_test")
    try:
        x_train = _images(z["x_train"], p, "x_train")
        y_train = _labels(z["y_train"], len(x_train), p, "y_train") if "y_train" in keys else None
        test = None
        if "x_test" in keys:
            x_test = _images(z["x_test"], p, "x_test")
            if x_test.shape[1:] != x_train.shape[1:]:
                raise DataError(f"{p}: x_test images {tuple(x_test.shape[1:])} differ from x_train {tuple(x_train.shape[1:])}")
            y_test = _labels(z["y_test"], len(x_test), p, "y_test") if "y_test" in keys else None
            test = InMemorySplit(x_test, y_test)
        classes = [str(c) for c in z["classes"]] if "classes" in keys else []
    except DataError:
        raise
    except Exception as e:  # corrupt member inside a valid zip
        raise DataError(f"{p}: cannot read arrays ({type(e).__name__}: {e})") from None
    if not classes and y_train is not None:
        classes = [str(i) for i in range(int(y_train.max()) + 1)]
    return ImageDataset(p.stem, InMemorySplit(x_train, y_train), test, classes)
