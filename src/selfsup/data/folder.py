"""Image folders: ``root/<class>/<image>`` (labelled) or ``root/<image>`` (unlabelled, valid for pretraining).

Images are decoded with PIL to a fixed square size (shorter side resized, centre crop). Folders that fit in
``max_memory_bytes`` as uint8 are decoded once into memory; larger ones stream through DataLoader workers.
Corrupt, truncated, empty or oversized (decompression-bomb) files are skipped with a counted warning; a folder
where every file is bad is an error.
"""
from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .base import DataError, ImageDataset, InMemorySplit

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
MAX_PIXELS = 64_000_000  # larger images are refused before decoding (decompression-bomb guard)


class BadImage(Exception):
    pass


def scan_folder(root: str | Path) -> tuple[list[Path], list[int] | None, list[str]]:
    """List image files; class subfolders give labels, a flat folder gives ``labels=None``."""
    r = Path(root)
    if not r.exists():
        raise DataError(f"data path not found: {r}")
    if not r.is_dir():
        raise DataError(f"data path is neither a directory nor a .npz file: {r}")
    subdirs = sorted(d for d in r.iterdir() if d.is_dir() and not d.name.startswith("."))
    def images_in(d: Path, recursive: bool) -> list[Path]:
        it = d.rglob("*") if recursive else d.iterdir()
        return sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if subdirs:
        paths, labels, classes = [], [], []
        for d in subdirs:
            files = images_in(d, recursive=True)
            if not files:
                continue
            classes.append(d.name)
            paths += files
            labels += [len(classes) - 1] * len(files)
        flat = images_in(r, recursive=False)
        if flat and paths:
            warnings.warn(f"{r}: {len(flat)} images beside class folders are ignored", stacklevel=2)
        if paths:
            return paths, labels, classes
    paths = images_in(r, recursive=False)
    if not paths:
        raise DataError(f"no images found in {r} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return paths, None, []


def decode_image(path: Path, size: int, channels: int) -> np.ndarray:
    """Decode to uint8 (channels, size, size); raises :class:`BadImage` with the reason."""
    from PIL import Image, ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        if path.stat().st_size == 0:
            raise BadImage("empty file")
        with Image.open(path) as im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise BadImage(f"{w}x{h} pixels exceeds the {MAX_PIXELS} pixel limit")
            im = im.convert("L" if channels == 1 else "RGB")
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            im = im.resize((nw, nh), Image.BILINEAR, reducing_gap=None)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
            arr = np.array(im, dtype=np.uint8)  # a writable copy (torch.from_numpy warns on read-only)
    except BadImage:
        raise
    except Exception as e:  # PIL.UnidentifiedImageError, OSError (truncated), DecompressionBombError ...
        raise BadImage(f"{type(e).__name__}: {e}") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _guess_channels(paths: list[Path]) -> int:
    from PIL import Image

    for p in paths[:20]:
        try:
            with Image.open(p) as im:
                return 1 if im.mode in ("1", "L", "I", "I;16", "F") else 3
        except Exception:
            continue
    return 3


def _report_bad(root: Path, bad: list[tuple[Path, str]], total: int) -> None:
    if len(bad) == total:
        first = bad[0]
        raise DataError(f"{root}: all {total} images are unreadable (first: {first[0].name}: {first[1]})")
    if bad:
        warnings.warn(f"{root}: skipped {len(bad)} of {total} unreadable images (first: {bad[0][0].name}: {bad[0][1]})",
                      stacklevel=3)


def load_folder_in_memory(paths: list[Path], labels: list[int] | None, size: int, channels: int,
                          root: Path) -> InMemorySplit:
    def work(p: Path):
        try:
            return decode_image(p, size, channels), None
        except BadImage as e:
            return None, str(e)

    with ThreadPoolExecutor(max_workers=4) as ex:
        results = list(ex.map(work, paths))
    bad = [(p, err) for p, (arr, err) in zip(paths, results) if arr is None]
    _report_bad(root, bad, len(paths))
    keep = [i for i, (arr, _) in enumerate(results) if arr is not None]
    x = torch.from_numpy(np.stack([results[i][0] for i in keep]))
    y = torch.tensor([labels[i] for i in keep], dtype=torch.int64) if labels is not None else None
    return InMemorySplit(x, y)


class _FolderItems(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path], size: int, channels: int) -> None:
        self.paths, self.size, self.channels = paths, size, channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return torch.from_numpy(decode_image(self.paths[i], self.size, self.channels)), i
        except BadImage:
            return None, i


def _collate(items):
    good = [(x, i) for x, i in items if x is not None]
    n_bad = len(items) - len(good)
    if not good:
        return None, None, n_bad
    return torch.stack([x for x, _ in good]), torch.tensor([i for _, i in good]), n_bad


@dataclass
class StreamingFolderSplit:
    """A folder too large for memory, decoded in DataLoader workers; batches may be short where files are bad."""

    paths: list[Path]
    labels: torch.Tensor | None
    size: int
    channels: int
    workers: int = 2

    @property
    def num_images(self) -> int:
        return len(self.paths)

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.size, self.size)

    def num_batches(self, batch_size: int, drop_last: bool) -> int:
        n = self.num_images
        return n // batch_size if drop_last else -(-n // batch_size)

    def batches(self, batch_size, *, shuffle, generator=None, drop_last=False, start_batch=0
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        n = self.num_images
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        order = order[start_batch * batch_size : self.num_batches(batch_size, drop_last) * batch_size]
        loader = torch.utils.data.DataLoader(
            _FolderItems(self.paths, self.size, self.channels), batch_size=batch_size,
            sampler=order.tolist(), num_workers=self.workers, collate_fn=_collate,
            persistent_workers=False, pin_memory=torch.cuda.is_available(),
        )
        bad = 0
        for x, idx, n_bad in loader:
            bad += n_bad
            if x is None:
                continue
            yield x, idx, (self.labels[idx] if self.labels is not None else None)
        if bad:
            warnings.warn(f"skipped {bad} unreadable images while streaming {self.paths[0].parent}", stacklevel=2)


def load_folder(root: str | Path, image_size: int | None, *, test_root: str | Path | None = None,
                workers: int = 0, max_memory_bytes: int = 2 << 30) -> ImageDataset:
    """An ImageFolder (or flat folder) as an :class:`ImageDataset`; ``test_root`` adds a labelled test split."""
    root = Path(root)
    size = image_size or 64
    paths, labels, classes = scan_folder(root)
    channels = _guess_channels(paths)

    def split(ps: list[Path], ls: list[int] | None, where: Path):
        if len(ps) * channels * size * size <= max_memory_bytes:
            return load_folder_in_memory(ps, ls, size, channels, where)
        lab = torch.tensor(ls, dtype=torch.int64) if ls is not None else None
        return StreamingFolderSplit(ps, lab, size, channels, workers=max(workers, 1))

    train = split(paths, labels, root)
    test = None
    if test_root is not None:
        tpaths, tlabels, tclasses = scan_folder(test_root)
        if tclasses and classes and tclasses != classes:
            raise DataError(f"{test_root}: classes {tclasses[:5]} differ from {root}'s {classes[:5]}")
        test = split(tpaths, tlabels, Path(test_root))
    return ImageDataset(root.name, train, test, classes)
