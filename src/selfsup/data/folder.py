"""Image folders: ``root/<class>/<image>`` (labelled) or ``root/<image>`` (unlabelled, valid for pretraining).

Images are decoded with PIL to a fixed square size (the centred square crop, resized). Folders that fit in
``max_memory_bytes`` as uint8 are decoded once into memory; larger ones stream through DataLoader workers.
Corrupt, truncated, empty, oversized (decompression-bomb) or extremely elongated files are skipped with a counted
warning; a folder where every file is bad is an error. 16-bit grayscale is scaled to 8 bit, not clipped.
"""
from __future__ import annotations

import io
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .base import DataError, ImageDataset, InMemorySplit
from .canvas import CanvasSpec, collate_canvas, decode_whole
from .scan import IMAGE_EXTENSIONS, scan_folder

__all__ = ["IMAGE_EXTENSIONS", "BadImage", "decode_bytes", "decode_image", "folder_channels", "load_folder",
           "scan_folder", "square_array"]

MAX_PIXELS = 64_000_000  # larger images are refused before decoding (decompression-bomb guard)
MAX_ASPECT = 100  # a longer side over 100x the shorter is refused before decoding (a 1-px strip, not a photo)
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
WIDE_INT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


class BadImage(Exception):
    pass


def relative_id(path: Path, root: Path) -> str:
    """An image's id in a folder: its path relative to the folder, with ``/`` separators."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _check_shape(w: int, h: int) -> None:
    """Refuse from the header alone, before any pixel is decoded."""
    if w <= 0 or h <= 0:
        raise BadImage(f"{w}x{h} pixels: empty image")
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise BadImage(f"{w}x{h} pixels exceeds the {MAX_ASPECT}:1 aspect-ratio limit")


def _check_pixels(w: int, h: int) -> None:
    """The pixels that will actually be decoded (a JPEG's after its DCT-scale reduction)."""
    if w * h > MAX_PIXELS:
        raise BadImage(f"{w}x{h} pixels exceeds the {MAX_PIXELS} pixel limit")


def _to_8bit(im):
    """16-bit (and 32-bit integer) grayscale to 8 bit: ``round(v * 255 / 65535)``, so 65535 -> 255, 32768 -> 128.

    PIL's own ``convert("L")`` clips such images at 255 (every value above 255 would become white).
    """
    from PIL import Image

    if im.mode not in WIDE_INT_MODES:
        return im
    a = np.asarray(im.convert("I"), dtype=np.int32).clip(0, 65535)
    return Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), "L")


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def decode_image(path: Path, size: int, channels: int) -> np.ndarray:
    """Decode to uint8 (channels, size, size): the centred square crop resized to ``size``.

    Raises :class:`BadImage` with the reason. Sizes are checked from the header before any pixel is decoded,
    JPEGs decode at the smallest DCT scale that still covers ``size`` (``Image.draft``), and only the crop's
    source area is resampled, so a file's cost is bounded by its decoded pixels and ``size**2``.
    """
    try:
        empty = path.stat().st_size == 0
    except OSError as e:
        raise BadImage(_reason(e)) from None
    if empty:
        raise BadImage("empty file")
    return _decode(path, size, channels)


def decode_bytes(data: bytes, size: int, channels: int) -> np.ndarray:
    """:func:`decode_image` of a file's bytes held in memory (a shard member): the same checks, the same array."""
    if not data:
        raise BadImage("empty file")
    return _decode(io.BytesIO(data), size, channels)


def _decode(source, size: int, channels: int) -> np.ndarray:
    """The decode of :func:`decode_image` from a path or a binary file object."""
    from PIL import Image, ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = False
    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(source) as im:
            _check_shape(*im.size)
            if im.format == "JPEG":
                im.draft(mode, (size, size))
            _check_pixels(*im.size)
            return square_array(im, size, channels)
    except BadImage:
        raise
    except Exception as e:  # PIL.UnidentifiedImageError, OSError (truncated), DecompressionBombError ...
        raise BadImage(_reason(e)) from None


def square_array(im, size: int, channels: int) -> np.ndarray:
    """A decoded PIL image as uint8 (channels, size, size): the centred square crop, resized (bilinear), the way
    every folder image is read (so an image given in memory matches the same file read from a folder)."""
    from PIL import Image

    im = _to_8bit(im).convert("L" if channels == 1 else "RGB")
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    im = im.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side), reducing_gap=None)
    arr = np.array(im, dtype=np.uint8)  # a writable copy (torch.from_numpy warns on read-only)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _native_channels(path: Path) -> int | None:
    """1 or 3 from the file's header (nothing decoded); None when the header is unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return 1 if im.mode in GRAY_MODES else 3
    except Exception:
        return None


def folder_channels(paths: list[Path]) -> tuple[int, int, int]:
    """``(channels, n_gray, n_colour)`` from the headers: 3 channels if any image is in colour, else 1."""
    with ThreadPoolExecutor(max_workers=4) as ex:
        native = list(ex.map(_native_channels, paths))
    n_gray, n_colour = native.count(1), native.count(3)
    return (3 if n_colour else 1), n_gray, n_colour


def _report_bad(root: Path, bad: list[tuple[Path, str]], total: int) -> None:
    if len(bad) == total:
        first = bad[0]
        raise DataError(f"{root}: all {total} images are unreadable (first: {first[0].name}: {first[1]})")
    if bad:
        warnings.warn(f"{root}: skipped {len(bad)} of {total} unreadable images (first: {bad[0][0].name}: {bad[0][1]})",
                      stacklevel=3)


def load_folder_in_memory(paths: list[Path], labels: list[int] | None, size: int, channels: int,
                          root: Path) -> InMemorySplit:
    """Decode every file into one preallocated uint8 array (peak memory: the dataset once, not twice)."""
    out = np.empty((len(paths), channels, size, size), np.uint8)

    def work(i: int) -> str | None:
        try:
            out[i] = decode_image(paths[i], size, channels)
            return None
        except BadImage as e:
            return str(e)

    with ThreadPoolExecutor(max_workers=4) as ex:
        errors = list(ex.map(work, range(len(paths))))
    bad = [(p, err) for p, err in zip(paths, errors) if err is not None]
    _report_bad(root, bad, len(paths))
    keep = [i for i, err in enumerate(errors) if err is None]
    x = torch.from_numpy(out if not bad else out[keep])
    y = torch.tensor([labels[i] for i in keep], dtype=torch.int64) if labels is not None else None
    return InMemorySplit(x, y, [relative_id(paths[i], root) for i in keep])


class _FolderItems(torch.utils.data.Dataset):
    """Decoded files by index: the centred square (``canvas`` None) or the whole image for a canvas batch."""

    def __init__(self, paths: list[Path], size: int, channels: int, canvas: CanvasSpec | None = None) -> None:
        self.paths, self.size, self.channels, self.canvas = paths, size, channels, canvas

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            if self.canvas is not None:
                return decode_whole(self.paths[i], self.canvas, self.channels), i
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
    root: Path | None = None  # ids are the paths relative to it
    canvas: CanvasSpec | None = None  # data.full_image: training batches are whole images (data/canvas.py)

    @property
    def num_images(self) -> int:
        return len(self.paths)

    @property
    def ids(self) -> list[str] | None:
        return None if self.root is None else [relative_id(p, self.root) for p in self.paths]

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.size, self.size)

    def num_batches(self, batch_size: int, drop_last: bool) -> int:
        n = self.num_images
        return n // batch_size if drop_last else -(-n // batch_size)

    def loader(self, order: torch.Tensor, batch_size: int, canvas: bool = False) -> torch.utils.data.DataLoader:
        """A DataLoader decoding the files at ``order`` in that order: squares, or whole images on
        :class:`~selfsup.data.canvas.Canvas` batches when ``canvas`` (the split must have a ``canvas`` spec)."""
        spec = self.canvas if canvas else None
        return torch.utils.data.DataLoader(
            _FolderItems(self.paths, self.size, self.channels, spec), batch_size=batch_size,
            sampler=order.tolist(), num_workers=self.workers, collate_fn=collate_canvas if spec else _collate,
            persistent_workers=False, pin_memory=torch.cuda.is_available(),
        )

    def batches(self, batch_size, *, shuffle, generator=None, drop_last=False, start_batch=0, canvas=False
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """Batches of centred squares, or (``canvas``: the training loop with ``data.full_image``) of whole
        images; the order and the skipping of unreadable files are the same either way."""
        n = self.num_images
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        order = order[start_batch * batch_size : self.num_batches(batch_size, drop_last) * batch_size]
        bad = 0
        for x, idx, n_bad in self.loader(order, batch_size, canvas and self.canvas is not None):
            bad += n_bad
            if x is None:
                continue
            yield x, idx, (self.labels[idx] if self.labels is not None else None)
        if bad:
            warnings.warn(f"skipped {bad} unreadable images while streaming {self.paths[0].parent}", stacklevel=2)


def _note_conversion(where: Path, channels: int, n_gray: int, n_colour: int, total: int) -> None:
    n = n_gray if channels == 3 else n_colour
    if n:
        what = "grayscale images were converted to RGB (repeated)" if channels == 3 else \
            "colour images were converted to grayscale (the train folder is grayscale)"
        warnings.warn(f"{where}: {n} of {total} {what}", stacklevel=3)


def load_folder(root: str | Path, image_size: int | None, *, test_root: str | Path | None = None,
                workers: int = 0, max_memory_bytes: int = 2 << 30, canvas: CanvasSpec | None = None) -> ImageDataset:
    """An ImageFolder (or flat folder) as an :class:`ImageDataset`; ``test_root`` adds a labelled test split.

    ``canvas`` (``data.full_image``): the train split always streams, and its training batches are whole images
    (data/canvas.py); its evaluation batches stay the centred squares.

    The channel count is decided from the whole train folder's headers: 3 if any image is in colour (grayscale
    ones are repeated to RGB), else 1; the test folder is converted to it. Each conversion is counted in a warning.
    """
    root = Path(root)
    size = image_size or 64
    paths, labels, classes = scan_folder(root)
    channels, n_gray, n_colour = folder_channels(paths)
    _note_conversion(root, channels, n_gray, n_colour, len(paths))

    def split(ps: list[Path], ls: list[int] | None, where: Path, whole: CanvasSpec | None = None):
        if whole is None and len(ps) * channels * size * size <= max_memory_bytes:
            return load_folder_in_memory(ps, ls, size, channels, where)
        lab = torch.tensor(ls, dtype=torch.int64) if ls is not None else None
        return StreamingFolderSplit(ps, lab, size, channels, workers=max(workers, 1), root=where, canvas=whole)

    train = split(paths, labels, root, canvas)
    test = None
    if test_root is not None:
        tpaths, tlabels, tclasses = scan_folder(test_root)
        if tclasses and classes and tclasses != classes:
            raise DataError(f"{test_root}: classes {tclasses[:5]} differ from {root}'s {classes[:5]}")
        _, t_gray, t_colour = folder_channels(tpaths)
        _note_conversion(Path(test_root), channels, t_gray, t_colour, len(tpaths))
        test = split(tpaths, tlabels, Path(test_root))
    return ImageDataset(root.name, train, test, classes)
