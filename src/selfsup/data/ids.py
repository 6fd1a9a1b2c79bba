"""Image ids: how a file of embeddings, a selection or a list of predictions names the images of a split.

- An ``.npz`` file or a built-in dataset: ``train/<row>`` (``train/0``, ``train/1``, ...; ``selfsup embed`` writes
  ``test/<row>`` for the test split); a bare row index (``"0"``) names the same train image.
- An image folder: the file's path relative to the folder, with ``/`` separators (``cat/001.png``), so an id
  survives a re-scan even when unreadable files are skipped.
- A shard folder (``selfsup shard``): the id each image had in the folder it was written from (its ``.id``
  member, listed in ``index.json``), so a folder and its shards name their images alike.

A selection file (written by ``selfsup select``) is one id per line, or a CSV whose header starts with ``id``
(``id,strategy,rank``); :func:`read_selection` reads both and :func:`indices_of` turns the ids into row indices
of a split, with a one-line :class:`DataError` for ids the split does not hold.
"""
from __future__ import annotations

import csv
from pathlib import Path

import torch

from .base import DataError, ImageSplit

MAX_SELECTION_BYTES = 256 << 20  # a list of ids, not a dataset


def split_ids(split: ImageSplit) -> list[str]:
    """One id per image of ``split``, in row order."""
    ids = getattr(split, "ids", None)
    return list(ids) if ids is not None else [f"train/{i}" for i in range(split.num_images)]


def read_selection(path: str | Path) -> list[str]:
    """The ids of a selection file, in file order, each once (a repeated id counts once)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"selection file not found: {p}")
    if p.stat().st_size > MAX_SELECTION_BYTES:
        raise DataError(f"{p}: {p.stat().st_size} bytes is not a selection file (a list of image ids)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{p}: not a selection file (not UTF-8 text; expected one image id per line)") from None
    lines = text.splitlines()
    if lines and lines[0].split(",")[0].strip() == "id":
        rows = list(csv.reader(lines[1:]))
        ids = [r[0] for r in rows if r and r[0].strip()]
    else:
        ids = [line.rstrip("\r") for line in lines if line.strip()]
    if not ids:
        raise DataError(f"{p}: the selection is empty (expected one image id per line, or a CSV with an 'id' column)")
    return list(dict.fromkeys(ids))


def indices_of(ids: list[str], split: ImageSplit, *, where: str, data: str) -> torch.Tensor:
    """Row indices (int64, in ``ids`` order) of ``ids`` in ``split``; ids it does not hold are one line naming
    ``where`` (the selection file) and ``data``."""
    index = {name: i for i, name in enumerate(split_ids(split))}
    by_row = getattr(split, "ids", None) is None
    if by_row:
        index.update({str(i): i for i in range(split.num_images)})
        test = [i for i in ids if i.startswith("test/")]
        if test:
            raise DataError(f"{where}: {len(test)} ids name test-split images (first: {test[0][:80]!r}); labels "
                            "to train on come from the train split (select from train/ ids only)")
    missing = [i for i in ids if i not in index]
    if missing:
        kind = f"train/0..train/{split.num_images - 1}" if by_row else "paths relative to the folder"
        raise DataError(f"{where}: {len(missing)} of {len(ids)} ids are not images of {data} (first: "
                        f"{missing[0][:80]!r}; its ids are {kind})")
    return torch.tensor([index[i] for i in ids], dtype=torch.int64)
