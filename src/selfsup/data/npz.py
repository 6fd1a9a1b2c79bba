"""``.npz`` archives with ``x_train``/``y_train``/``x_test``/``y_test`` uint8 NHWC arrays (labels optional)."""
from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from numpy.lib import format as npformat

from .base import DataError, ImageDataset, InMemorySplit

MAX_CLASSES = 100_000  # labels are class indices 0..C-1; C is bounded so evaluation heads and votes stay bounded


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


def _images(arr: np.ndarray, path: Path, key: str) -> torch.Tensor:
    if arr.dtype != np.uint8:
        raise DataError(f"{path}: '{key}' must be uint8, got {arr.dtype}")
    if arr.ndim == 3:  # (N, H, W): grayscale without a channel axis
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3) or arr.shape[0] == 0:
        raise DataError(f"{path}: '{key}' must be a non-empty (N, H, W, C) array with C in (1, 3), got {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))


def _labels(arr: np.ndarray, n: int, path: Path, key: str) -> torch.Tensor:
    """Integer class indices in ``[0, MAX_CLASSES)``, checked before any conversion (uint64 never wraps)."""
    if arr.ndim != 1 or len(arr) != n or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{path}: '{key}' must be {n} integer labels, got {arr.dtype} {arr.shape}")
    if len(arr) and int(arr.min()) < 0:
        raise DataError(f"{path}: '{key}' has negative labels (min {int(arr.min())})")
    if len(arr) and int(arr.max()) >= MAX_CLASSES:
        raise DataError(f"{path}: '{key}' has label {int(arr.max())}, over the limit of {MAX_CLASSES - 1} "
                        f"(labels are class indices 0..C-1 with at most {MAX_CLASSES} classes)")
    return torch.from_numpy(arr.astype(np.int64))


def _classes(arr: np.ndarray, path: Path, num_labels: int) -> list[str]:
    """The optional ``classes`` key: one name per class index, at least as many as the labels use."""
    if arr.ndim != 1 or len(arr) > MAX_CLASSES:
        raise DataError(f"{path}: 'classes' must be a 1-D array of at most {MAX_CLASSES} names, got {arr.shape}")
    names = [c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c) for c in arr.tolist()]
    if len(names) < num_labels:
        raise DataError(f"{path}: 'classes' has {len(names)} names but the labels use {num_labels} classes")
    return names


def memory_limit() -> int:
    """Bytes an .npz may expand to: 80% of physical memory (the arrays are held in memory)."""
    try:
        return int(0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # platforms without sysconf
        return 64 << 30


def check_members(p: Path, max_bytes: int) -> None:
    """Refuse zip bombs and forged ``.npy`` headers before any array is allocated or decompressed.

    ``np.load`` allocates the array a header declares before reading it, so a 100-byte member declaring a
    150 GB shape would exhaust memory; a highly compressed member can expand to more than the machine holds.
    """
    with zipfile.ZipFile(p) as zf:
        members = [i for i in zf.infolist() if i.filename.endswith(".npy")]
        total = sum(i.file_size for i in members)
        if total > max_bytes:
            raise DataError(f"{p}: its arrays hold {total / 2**30:.2f} GiB uncompressed, more than the "
                            f"{max_bytes / 2**30:.2f} GiB limit (a zip bomb, or data too large for memory: use an "
                            "image folder, which streams)")
        for info in members:
            with zf.open(info) as f:
                version = npformat.read_magic(f)
                read_header = {(1, 0): npformat.read_array_header_1_0, (2, 0): npformat.read_array_header_2_0}.get(version)
                if read_header is None:
                    continue  # newer formats: np.load checks them
                shape, _, dtype = read_header(f)
                if dtype.hasobject:
                    raise DataError(f"{p}: '{info.filename[:-4]}' holds pickled objects, which are never loaded "
                                    "(save plain uint8 / integer arrays)")
                declared = math.prod(shape) * dtype.itemsize
                present = info.file_size - f.tell()
                if declared > present:
                    raise DataError(f"{p}: '{info.filename[:-4]}' declares shape {shape} ({declared} bytes) but holds "
                                    f"{present} bytes (truncated or forged)")


def load_npz(path: str | Path, *, max_bytes: int | None = None) -> ImageDataset:
    """Load an .npz dataset; one-line :class:`DataError` naming the file for any bad key, dtype or shape.

    ``max_bytes`` (default: 80% of physical memory) bounds the uncompressed size of the archive's arrays.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {p}")
    if not zipfile.is_zipfile(p):  # numpy would otherwise suggest unpickling it
        raise DataError(f"{p}: not a .npz archive (not a zip file; empty, corrupt or another format)")
    try:
        check_members(p, memory_limit() if max_bytes is None else max_bytes)
        z = np.load(p, allow_pickle=False)
        keys = set(z.files)
    except DataError:
        raise
    except Exception as e:  # zipfile.BadZipFile, ValueError, OSError ...
        raise DataError(f"{p}: not a readable .npz archive ({type(e).__name__}: {_first_line(e)})") from None
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
        used = max([int(y.max()) + 1 for y in (y_train, test.labels if test else None) if y is not None and len(y)]
                   or [0])
        classes = _classes(z["classes"], p, used) if "classes" in keys else [str(i) for i in range(used)]
    except DataError:
        raise
    except Exception as e:  # corrupt member inside a valid zip
        raise DataError(f"{p}: cannot read arrays ({type(e).__name__}: {_first_line(e)})") from None
    return ImageDataset(p.stem, InMemorySplit(x_train, y_train), test, classes)
