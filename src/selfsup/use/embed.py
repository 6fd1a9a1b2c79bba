"""Embeddings of every image of a dataset: streamed in batches, written as ``.npz``, ``.csv`` or ``.pt``.

Data is what ``pretrain`` reads: an image folder (``root/<class>/...`` labelled, ``root/<image>`` unlabelled),
a ``.npz`` archive, or a built-in dataset. A folder is decoded ``batch_size`` files at a time at the encoder's
size and channels (never the whole folder in memory); an unreadable file is skipped, counted in one warning,
and left out of the ids, so row ``i`` of the matrix is always the image ``ids[i]``. Ids are paths relative to
the folder (``cat/001.png``), or ``train/<index>`` / ``test/<index>`` for archives and built-in datasets.
Memory: the images of one batch, plus the output matrix (4 bytes x dimensions per image).

Formats, by the suffix of the output file:

- ``.npz``: ``embeddings`` (N, D) float32, ``ids`` (N,) str, ``labels`` (N,) int64 and ``classes`` when
  the data is labelled, ``meta`` (a JSON string); loads with ``np.load(FILE, allow_pickle=False)``;
- ``.csv``: lightly's layout, ``filenames,embedding_0,...,embedding_{D-1},labels`` (labels 0 when unlabelled,
  as lightly writes them);
- ``.pt``: ``{"embeddings", "ids", "labels", "classes", "meta"}``, loadable with ``torch.load(FILE,
  weights_only=True)``.

``FILE.json`` beside the output (every format) records the encoder (source, kind, architecture, step), its
preprocessing (image size, channels, mean, std), the data, whether rows are L2-normalised and the skipped count.
"""
from __future__ import annotations

import csv
import json
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..data import load_dataset
from ..data.base import DataError
from ..data.folder import BadImage, decode_image
from ..data.scan import scan_folder
from ..errors import ConfigError
from .encoder import Encoder

__all__ = ["FORMATS", "Embeddings", "check_output", "data_shape", "embed_data", "open_data",
           "write_embeddings"]

FORMATS = (".npz", ".csv", ".pt")
FOLDER_SIZE = 64  # the size pretrain decodes a folder at when none is given
Batch = tuple[torch.Tensor, list[str], "torch.Tensor | None"]


@dataclass
class Embeddings:
    """``vectors`` (N, D) float32, one row per id; ``labels`` (N,) int64 or None; ``meta`` as in ``FILE.json``."""

    vectors: np.ndarray
    ids: list[str]
    labels: np.ndarray | None = None
    classes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def check_output(out: str | Path) -> Path:
    """The output path, or a one-line error when its suffix names no format (checked before any work)."""
    path = Path(out)
    if path.suffix.lower() not in FORMATS:
        raise ConfigError(f"--out {path}: unknown format '{path.suffix or '(no suffix)'}'; the suffix chooses it: "
                          f"{', '.join(FORMATS)}")
    if path.is_dir():
        raise ConfigError(f"--out {path} is a directory; give a file ending in {', '.join(FORMATS)}")
    return path


# -------------------------------------------------------------------------------------------- reading the data
def data_shape(spec: str) -> tuple[int, int]:
    """``(channels, image size)`` a randomly initialised encoder takes for ``spec``: a folder's channels from its
    headers (3 if any image is in colour) and ``pretrain``'s folder size (64); an archive's or dataset's own."""
    path = Path(spec)
    if path.is_dir():
        from ..data.folder import folder_channels

        return folder_channels(scan_folder(path)[0])[0], FOLDER_SIZE
    ds = load_dataset(spec)
    return ds.channels, ds.image_size[0]


@dataclass
class Source:
    """The images to embed, as batches of ``(uint8 (B, C, S, S), ids, labels or None)``."""

    batches: Callable[[int], Iterator[Batch]]
    total: int
    classes: list[str]
    root: str | None  # the folder ids are relative to (None for archives and built-in datasets)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (id, why) of unreadable files


def open_data(spec: str, encoder: Encoder, workers: int = 4) -> Source:
    """``spec`` (a folder, an ``.npz`` or a built-in dataset) as a :class:`Source` for ``encoder``."""
    path = Path(spec)
    if path.is_dir():
        return _folder_source(path, encoder, workers)
    ds = load_dataset(spec)
    p = encoder.preprocessing
    if ds.channels != p.channels:
        raise DataError(f"{spec} has {ds.channels}-channel images but the encoder takes {p.channels}")
    splits = [(name, s) for name, s in (("train", ds.train), ("test", ds.test)) if s is not None]

    def batches(batch_size: int) -> Iterator[Batch]:
        for name, split in splits:
            for x, idx, y in split.batches(batch_size, shuffle=False):
                yield x, [f"{name}/{int(i)}" for i in idx], y

    return Source(batches, sum(s.num_images for _, s in splits), list(ds.classes), None)


def _folder_source(root: Path, encoder: Encoder, workers: int) -> Source:
    paths, labels, classes = scan_folder(root)
    p = encoder.preprocessing
    ids = [pth.relative_to(root).as_posix() for pth in paths]
    src = Source(lambda b: iter(()), len(paths), classes, str(root.resolve()))

    def decode(i: int) -> np.ndarray | str:
        try:
            return decode_image(paths[i], p.image_size, p.channels)
        except BadImage as e:
            return str(e)

    def batches(batch_size: int) -> Iterator[Batch]:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
            for start in range(0, len(paths), batch_size):
                idx = range(start, min(start + batch_size, len(paths)))
                got = list(ex.map(decode, idx))
                good = [i for i, g in zip(idx, got) if not isinstance(g, str)]
                src.skipped += [(ids[i], g) for i, g in zip(idx, got) if isinstance(g, str)]
                if not good:
                    continue
                x = torch.from_numpy(np.stack([g for g in got if not isinstance(g, str)]))
                y = torch.tensor([labels[i] for i in good]) if labels is not None else None
                yield x, [ids[i] for i in good], y

    src.batches = batches
    return src


# -------------------------------------------------------------------------------------------- embedding
def embed_data(encoder: Encoder, spec: str, *, batch_size: int = 256, normalize: bool = False,
               workers: int = 4, progress: Callable[[str], None] | None = None) -> Embeddings:
    """Embed every image of ``spec``; ``progress`` receives a line now and then (at most one per 5 s)."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    src = open_data(spec, encoder, workers)
    out = np.empty((src.total, encoder.num_features), np.float32)
    ids: list[str] = []
    labels: list[torch.Tensor] = []
    t0 = last = time.monotonic()
    for x, bids, y in src.batches(batch_size):
        n = len(ids)
        out[n:n + len(bids)] = encoder.embed(x, batch_size=batch_size, normalize=normalize).numpy()
        ids += bids
        if y is not None:
            labels.append(y)
        if progress and time.monotonic() - last >= 5 and len(ids) + len(src.skipped) < src.total:
            last = time.monotonic()
            progress(_progress_line(len(ids) + len(src.skipped), src.total, last - t0))
    _report_skipped(spec, src)
    if progress:
        progress(_progress_line(len(ids) + len(src.skipped), src.total, time.monotonic() - t0))
    meta = {"encoder": encoder.describe(), "data": str(Path(spec).resolve()) if Path(spec).exists() else spec,
            "root": src.root, "num_images": len(ids), "dim": encoder.num_features, "normalized": normalize,
            "skipped": len(src.skipped), "labelled": bool(labels), "ids": "paths relative to root" if src.root
            else "split/index"}
    lab = torch.cat(labels).numpy().astype(np.int64) if labels else None
    return Embeddings(out[:len(ids)], ids, lab, src.classes if labels else [], meta)


def _progress_line(done: int, total: int, elapsed: float) -> str:
    eta = elapsed / done * (total - done) if done else 0.0
    return f"embedded {done}/{total} images, {elapsed:.0f}s elapsed, ~{eta:.0f}s left"


def _report_skipped(spec: str, src: Source) -> None:
    if not src.skipped:
        return
    first_id, why = src.skipped[0]
    if len(src.skipped) == src.total:
        raise DataError(f"{spec}: all {src.total} images are unreadable (first: {first_id}: {why})")
    warnings.warn(f"{spec}: skipped {len(src.skipped)} of {src.total} unreadable images (first: {first_id}: {why}); "
                  "they have no row", stacklevel=3)


# -------------------------------------------------------------------------------------------- writing
def write_embeddings(emb: Embeddings, out: str | Path) -> Path:
    """Write ``emb`` in the format ``out``'s suffix names, and ``out.json`` beside it; returns ``out``."""
    path = check_output(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {**emb.meta, "format": path.suffix.lower(), "classes": emb.classes}
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        {".npz": _write_npz, ".csv": _write_csv, ".pt": _write_pt}[path.suffix.lower()](emb, meta, tmp)
        os.replace(tmp, path)
        (path.parent / f"{path.name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _write_npz(emb: Embeddings, meta: dict[str, Any], path: Path) -> None:
    arrays: dict[str, Any] = {"embeddings": emb.vectors, "ids": np.array(emb.ids, dtype=str),
                              "meta": np.array(json.dumps(meta))}
    if emb.labels is not None:
        arrays["labels"] = emb.labels
        arrays["classes"] = np.array(emb.classes, dtype=str)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _write_csv(emb: Embeddings, meta: dict[str, Any], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["filenames", *(f"embedding_{j}" for j in range(emb.vectors.shape[1])), "labels"])
        for i, name in enumerate(emb.ids):
            label = int(emb.labels[i]) if emb.labels is not None else 0
            w.writerow([name, *(f"{v:.9g}" for v in emb.vectors[i].tolist()), label])


def _write_pt(emb: Embeddings, meta: dict[str, Any], path: Path) -> None:
    torch.save({"embeddings": torch.from_numpy(np.ascontiguousarray(emb.vectors)), "ids": list(emb.ids),
                "labels": torch.from_numpy(emb.labels) if emb.labels is not None else None,
                "classes": list(emb.classes), "meta": meta}, path)
