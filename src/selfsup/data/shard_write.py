"""``selfsup shard``: an image folder written as tar shards and an ``index.json`` (the format: data/shards.py).

The folder is listed with data/scan.py ``scan_folder`` (class subfolders give labels). Every image keeps its
original bytes. One larger than ``max_bytes_per_image`` is re-encoded as JPEG (quality 90), downscaled only as far
as it must be to fit (0.7x a side per step); if even a version with a 16 px shorter side does not fit, it is
skipped, counted in the warning. Each image is decoded once before it is written, with the reader's decode
(data/folder.py ``decode_bytes``): corrupt, truncated, empty, oversized or extremely elongated files are skipped
with a counted warning, so a shard holds only images that read. A folder holding only ``train/`` and ``val/`` (or
``test/``) is written as two shard folders of those names, with the same classes.

The output folder must be new or empty (a one-line error otherwise: nothing is changed); every file is created
exclusively, so no existing file is ever modified, and ``index.json`` comes last: a folder without one is an
interrupted write.
"""
from __future__ import annotations

import io
import json
import tarfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .base import DataError
from .folder import (
    GRAY_MODES,
    BadImage,
    _check_pixels,
    _check_shape,
    _reason,
    _to_8bit,
    decode_bytes,
    decode_image,
    folder_channels,
    relative_id,
)
from .scan import scan_folder, split_folders
from .shards import FORMAT, INDEX, SHARD_NAME, VERSION, scan_shard

JPEG_QUALITY = 90  # of an image re-encoded to fit the size cap
MIN_SIDE = 16  # a re-encoded image's shorter side is not made smaller than this (it is skipped instead)
CHECK_SIZE = 32  # the size of the decode that checks each image before it is written
CHUNK = 256  # images read and checked at a time (memory: a chunk of files, never the folder)


@dataclass
class ShardSummary:
    """What one split's shard folder holds."""

    out_dir: Path
    images: int
    shards: int
    skipped: int  # unreadable, or over the size cap even re-encoded
    reencoded: int  # over the size cap: written as a smaller JPEG
    classes: list[str]
    channels: int


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # no timestamps: the same folder, the same bytes
    tar.addfile(info, io.BytesIO(data))


class _ShardWriter:
    """Samples appended to shard-000000.tar, shard-000001.tar, ... (``per_shard`` each, the last one fewer); each
    shard is indexed from the tar itself once closed (data/shards.py ``scan_shard``)."""

    def __init__(self, out: Path, per_shard: int) -> None:
        self.out, self.per_shard = out, per_shard
        self.entries: list[dict[str, Any]] = []
        self.tar: tarfile.TarFile | None = None
        self.path = out
        self.count = self.total = 0

    def __enter__(self) -> "_ShardWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if self.tar is not None:
            if exc_type is None:
                self._close()
            else:
                self.tar.close()

    def add(self, data: bytes, ext: str, image_id: str, label: int | None) -> None:
        if self.tar is None:
            self.path = self.out / SHARD_NAME.format(len(self.entries))
            self.tar = tarfile.open(self.path, "x", format=tarfile.USTAR_FORMAT)  # "x": never an existing file
            self.count = 0
        key = f"{self.total:09d}"
        _add(self.tar, f"{key}.{ext}", data)
        if label is not None:
            _add(self.tar, f"{key}.cls", str(label).encode("ascii"))
        _add(self.tar, f"{key}.id", image_id.encode("utf-8", "surrogateescape"))
        self.count += 1
        self.total += 1
        if self.count == self.per_shard:
            self._close()

    def _close(self) -> None:
        assert self.tar is not None
        self.tar.close()
        self.tar = None
        self.entries.append(scan_shard(self.path))


def _reencode(path: Path, cap: int) -> bytes | None:
    """JPEG bytes of the image at ``path``, downscaled (0.7x a side per step) until they fit in ``cap`` bytes; None
    when a version whose shorter side is ``MIN_SIDE`` px does not fit either."""
    from PIL import Image

    with Image.open(path) as src:
        _check_shape(*src.size)
        _check_pixels(*src.size)
        im = _to_8bit(src).convert("L" if src.mode in GRAY_MODES else "RGB")  # alpha dropped, as the reader does
    w, h = im.size
    scale = 1.0
    while min(w, h) * scale >= MIN_SIDE:
        small = im if scale == 1.0 else im.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                  Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        small.save(buf, "JPEG", quality=JPEG_QUALITY)
        if buf.tell() <= cap:
            return buf.getvalue()
        scale *= 0.7
    return None


def _prepare(path: Path, cap: int, channels: int) -> tuple[bytes, str, bool] | str:
    """``(bytes, extension, re-encoded)`` to write for one image, or why it is skipped."""
    try:
        n = path.stat().st_size
        if n <= cap:
            data = path.read_bytes()
            decode_bytes(data, CHECK_SIZE, channels)
            return data, path.suffix.lower().lstrip("."), False
        decode_image(path, CHECK_SIZE, channels)  # a file over the cap is decoded from disk, not read whole
        small = _reencode(path, cap)
    except BadImage as e:
        return str(e)
    except Exception as e:  # OSError reading the file; PIL's errors while re-encoding it
        return _reason(e)
    if small is None:
        return f"{n} bytes, over max_bytes_per_image={cap} even re-encoded as JPEG down to {MIN_SIDE} px"
    return small, "jpg", True


def write_index(out: Path, entries: list[dict[str, Any]], *, classes: list[str], channels: int, n_gray: int = 0,
                n_colour: int = 0, source: str = "", skipped: int = 0, reencoded: int = 0) -> Path:
    """Write ``out/index.json`` for ``entries`` (:func:`~selfsup.data.shards.scan_shard` of each shard, in order);
    created exclusively: an existing index is never replaced."""
    index = {"format": FORMAT, "version": VERSION, "source": source, "num_images": sum(e["count"] for e in entries),
             "channels": channels, "grayscale_images": n_gray, "colour_images": n_colour, "classes": classes,
             "labelled": bool(entries) and "labels" in entries[0], "skipped": skipped, "reencoded": reencoded,
             "shards": entries}
    path = out / INDEX
    with open(path, "x", encoding="utf-8") as f:
        json.dump(index, f)
        f.write("\n")
    return path


def _write_split(src: Path, out: Path, paths: list[Path], labels: list[int] | None, classes: list[str],
                 per_shard: int, cap: int) -> ShardSummary:
    channels, n_gray, n_colour = folder_channels(paths)
    out.mkdir(parents=True, exist_ok=True)
    skipped, first, reencoded = 0, "", 0
    with _ShardWriter(out, per_shard) as writer, ThreadPoolExecutor(max_workers=4) as ex:
        for lo in range(0, len(paths), CHUNK):
            rows = range(lo, min(lo + CHUNK, len(paths)))
            for i, got in zip(rows, ex.map(lambda i: _prepare(paths[i], cap, channels), rows)):
                image_id = relative_id(paths[i], src)
                if isinstance(got, str):
                    skipped, first = skipped + 1, first or f"{image_id}: {got}"
                    continue
                data, ext, small = got
                reencoded += small
                writer.add(data, ext, image_id, labels[i] if labels is not None else None)
    if not writer.entries:
        raise DataError(f"{src}: none of its {len(paths)} images could be written (first: {first})")
    if skipped:
        warnings.warn(f"{src}: skipped {skipped} of {len(paths)} images (first: {first})", stacklevel=3)
    write_index(out, writer.entries, classes=classes, channels=channels, n_gray=n_gray, n_colour=n_colour,
                source=str(src), skipped=skipped, reencoded=reencoded)
    return ShardSummary(out, writer.total, len(writer.entries), skipped, reencoded, list(classes), channels)


def _scan(root: Path, labels: bool | str) -> tuple[list[Path], list[int] | None, list[str]]:
    paths, labs, classes = scan_folder(root)
    if labels is True and labs is None:
        raise DataError(f"{root}: labels=True needs class subfolders (root/<class>/<image>); this folder is flat")
    return (paths, None, []) if labels is False else (paths, labs, classes)


def write_shards(folder: str | Path, out_dir: str | Path, *, images_per_shard: int = 1000,
                 max_bytes_per_image: int = 8 << 20, labels: bool | str = "auto") -> list[ShardSummary]:
    """Write ``folder``'s images as tar shards into ``out_dir`` (new or empty); one summary per split written
    (two for a folder of ``train/`` and ``val/``, written into ``out_dir/train`` and ``out_dir/val``).

    ``labels``: ``"auto"`` (class subfolders give labels, a flat folder none), ``False`` (written unlabelled) or
    ``True`` (class subfolders required). See the module docstring for the size cap and what is skipped.
    """
    for name, v in (("images_per_shard", images_per_shard), ("max_bytes_per_image", max_bytes_per_image)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{name} must be a whole number >= 1, got {v!r}")
    if not (labels == "auto" or labels is True or labels is False):
        raise ConfigError(f"labels must be 'auto', True or False, got {labels!r}")
    src, out = Path(folder), Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; shards are written into a new or empty folder")
    if out.is_dir() and any(out.iterdir()):
        raise DataError(f"{out}: not empty; shards are written into a new or empty folder (nothing was changed)")
    splits = split_folders(src)
    parts = [(src, out)] if splits is None else [(d, out / d.name) for d in splits]
    scanned = [(d, o, *_scan(d, labels)) for d, o in parts]
    if len(scanned) == 2 and scanned[0][4] and scanned[1][4] and scanned[0][4] != scanned[1][4]:
        raise DataError(f"{parts[1][0]}: classes {scanned[1][4][:5]} differ from {parts[0][0]}'s {scanned[0][4][:5]}")
    return [_write_split(d, o, paths, labs, classes, images_per_shard, max_bytes_per_image)
            for d, o, paths, labs, classes in scanned]
