"""Nearest neighbours and near-duplicates of embeddings (``selfsup neighbors``), by cosine similarity.

The exact search compares the queries with the database ``chunk`` rows at a time and keeps a running top-k,
so memory is the (unit-normalised) database plus one (queries x chunk) block, whatever the number of images.
With ``index="faiss"`` (``pip install faiss-cpu``) an inner-product index (``IndexFlatIP``, also exact, much faster
on millions of rows) answers instead; ``"auto"`` takes it when faiss is installed and the data has at least
:data:`FAISS_AUTO_ROWS` rows. A query that is an id of the file never finds itself.

:func:`duplicate_pairs` streams every pair ``(i, j)``, ``i < j``, whose cosine is at least a threshold, comparing
blocks of rows with the rows after them (the upper triangle only).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..checkpoints import load_checkpoint
from ..data.base import DataError
from ..data.folder import BadImage, decode_image
from ..errors import ConfigError
from .embed import FORMATS, Embeddings
from .encoder import Encoder, load_encoder

__all__ = ["FAISS_AUTO_ROWS", "duplicate_pairs", "encoder_of", "load_embeddings", "resolve_queries", "search",
           "unit_rows"]

FAISS_AUTO_ROWS = 200_000
INDEXES = ("auto", "exact", "faiss")


def load_embeddings(path: str | Path) -> Embeddings:
    """Read a file written by ``selfsup embed`` (any of its formats); one line naming the file when it is not."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"embeddings not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"{path}: not an embeddings file (written by `selfsup embed`: {', '.join(FORMATS)})")
    try:
        emb = {".npz": _read_npz, ".pt": _read_pt, ".csv": _read_csv}[suffix](path)
    except (DataError, ConfigError):
        raise
    except Exception as e:  # cut archives, text where numbers belong, missing keys ...
        raise DataError(f"{path}: not a readable embeddings file ({type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:160]})") from None
    v = emb.vectors
    if v.ndim != 2 or v.shape[0] != len(emb.ids) or v.shape[0] == 0 or not np.isfinite(v).all():
        raise DataError(f"{path}: embeddings must be a non-empty finite (N, D) matrix with one id per row, got "
                        f"{v.shape} and {len(emb.ids)} ids")
    return emb


def _sidecar_meta(path: Path) -> dict[str, Any]:
    side = path.parent / f"{path.name}.json"
    return json.loads(side.read_text()) if side.is_file() else {}


def _read_npz(path: Path) -> Embeddings:
    with np.load(path, allow_pickle=False) as z:
        if "embeddings" not in z or "ids" not in z:
            keys = ", ".join(list(z.keys())[:4])
            raise DataError(f"{path}: not an embeddings file of `selfsup embed` (it has no 'embeddings' and 'ids' "
                            f"arrays; keys: {keys or '(none)'})")
        meta = json.loads(str(z["meta"])) if "meta" in z else _sidecar_meta(path)
        labels = z["labels"].astype(np.int64) if "labels" in z else None
        classes = [str(c) for c in z["classes"]] if "classes" in z else []
        return Embeddings(z["embeddings"].astype(np.float32), [str(i) for i in z["ids"]], labels, classes, meta)


def _read_pt(path: Path) -> Embeddings:
    d = load_checkpoint(path)
    if not isinstance(d, dict) or not isinstance(d.get("embeddings"), torch.Tensor):
        raise DataError(f"{path}: not an embeddings file (no 'embeddings' tensor)")
    labels = d.get("labels")
    return Embeddings(d["embeddings"].float().numpy(), [str(i) for i in d.get("ids", [])],
                      labels.numpy().astype(np.int64) if isinstance(labels, torch.Tensor) else None,
                      list(d.get("classes") or []), dict(d.get("meta") or {}))


def _read_csv(path: Path) -> Embeddings:
    meta = _sidecar_meta(path)
    ids, rows, labels = [], [], []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        head = next(reader)
        if not head or head[0] != "filenames" or head[-1] != "labels":
            raise DataError(f"{path}: not lightly's layout (filenames, embedding_0, ..., labels)")
        for r in reader:
            ids.append(r[0])
            rows.append([float(v) for v in r[1:-1]])
            labels.append(int(r[-1]))
    known = meta.get("labelled", True)
    return Embeddings(np.asarray(rows, np.float32).reshape(len(ids), -1), ids,
                      np.asarray(labels, np.int64) if known else None, list(meta.get("classes") or []), meta)


def unit_rows(v: np.ndarray) -> torch.Tensor:
    """Rows scaled to unit L2 norm (float32); a zero row stays zero."""
    t = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
    return torch.nn.functional.normalize(t, dim=1)


# -------------------------------------------------------------------------------------------- search
def search(db: torch.Tensor, queries: torch.Tensor, k: int, *, exclude: torch.Tensor | None = None,
           index: str = "auto", chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most cosine-similar rows of ``db`` (unit rows) for each query (unit rows): ``(indices (Q, k),
    similarities (Q, k))``, most similar first; ``exclude[q]`` (a row of ``db``, or -1) is never returned for q."""
    if index not in INDEXES:
        raise ConfigError(f"--index must be one of {', '.join(INDEXES)}, got '{index}'")
    available = len(db) - (1 if exclude is not None and bool((exclude >= 0).any()) else 0)
    if not 1 <= k <= available:
        raise ConfigError(f"--k must be between 1 and the {available} rows searched, got {k}")
    if index == "faiss" or (index == "auto" and len(db) >= FAISS_AUTO_ROWS and _faiss() is not None):
        return _faiss_search(db, queries, k, exclude)
    best_s = torch.full((len(queries), k), -float("inf"))
    best_i = torch.full((len(queries), k), -1, dtype=torch.int64)
    for start in range(0, len(db), chunk):
        s = queries @ db[start:start + chunk].T
        if exclude is not None:
            hit = (exclude >= start) & (exclude < start + s.shape[1])
            s[hit.nonzero().squeeze(1), exclude[hit] - start] = -float("inf")
        ids = torch.arange(start, start + s.shape[1]).expand_as(s)
        all_s, all_i = torch.cat([best_s, s], 1), torch.cat([best_i, ids], 1)
        best_s, pos = all_s.topk(k, dim=1)
        best_i = all_i.gather(1, pos)
    return best_i.numpy(), best_s.numpy()


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _faiss_search(db: torch.Tensor, queries: torch.Tensor, k: int,
                  exclude: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray]:
    faiss = _faiss()
    if faiss is None:
        raise ConfigError("--index faiss needs faiss, which is not installed (pip install faiss-cpu); "
                          "--index exact needs nothing")
    idx = faiss.IndexFlatIP(db.shape[1])
    idx.add(db.numpy())
    extra = 1 if exclude is not None else 0
    sims, ids = idx.search(queries.numpy(), min(k + extra, len(db)))
    if exclude is not None:  # drop the query itself (anywhere among the hits, ties included), else the last hit
        keep = ids != exclude.numpy()[:, None]
        keep[keep.all(1), -1] = False
        ids = ids[keep].reshape(len(ids), -1)[:, :k]
        sims = sims[keep].reshape(len(sims), -1)[:, :k]
    return ids.astype(np.int64), sims.astype(np.float32)


def duplicate_pairs(db: torch.Tensor, threshold: float, *, chunk: int = 2048) -> Iterator[tuple[int, int, float]]:
    """Every pair ``(i, j, cosine)`` with ``i < j`` and cosine >= ``threshold`` (unit rows), block by block."""
    for a in range(0, len(db), chunk):
        rows = db[a:a + chunk]
        for b in range(a, len(db), chunk):
            s = rows @ db[b:b + chunk].T
            if a == b:
                s = s.triu(diagonal=1) - torch.tril(torch.full_like(s, 2.0))  # only j > i
            ii, jj = (s >= threshold).nonzero(as_tuple=True)
            for i, j in zip(ii.tolist(), jj.tolist()):
                yield a + i, b + j, float(s[i, j])


# -------------------------------------------------------------------------------------------- queries
def encoder_of(emb: Embeddings, path: str | Path, device: str = "cpu") -> Encoder:
    """The encoder that made ``emb`` (from its recorded source), to embed a query image the same way."""
    enc = emb.meta.get("encoder") or {}
    source = enc.get("source")
    if not source:
        raise DataError(f"{path}: records no encoder (its .json beside it is missing), so an image query "
                        "cannot be embedded; query by id instead")
    if enc.get("kind") == "backbone":
        pre = enc.get("preprocessing") or {}
        return load_encoder(source, device, image_size=int(pre.get("image_size", 32)),
                            channels=int(pre.get("channels", 3)), width=float(enc.get("width", 1.0)),
                            mean=pre.get("mean"), std=pre.get("std"), seed=int(enc.get("seed", 0)))
    return load_encoder(source, device)


def resolve_queries(emb: Embeddings, path: str | Path, queries: list[str], db: torch.Tensor,
                    device: str = "cpu") -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(names, unit query vectors, row to exclude or -1) for each query: an id of the file, or an image path
    (embedded with the file's own encoder)."""
    row = {name: i for i, name in enumerate(emb.ids)}
    names, vecs, excl = [], [], []
    encoder = None
    for q in queries:
        if q in row:
            names.append(q)
            vecs.append(db[row[q]])
            excl.append(row[q])
        elif Path(q).is_file():
            encoder = encoder or encoder_of(emb, path, device)
            p = encoder.preprocessing
            try:  # read as `selfsup embed` reads a folder's files (same guards, crop and size)
                x = torch.from_numpy(decode_image(Path(q), p.image_size, p.channels))[None]
            except BadImage as e:
                raise DataError(f"--query {q}: not a readable image ({e})") from None
            vecs.append(unit_rows(encoder.embed(x).numpy())[0])
            names.append(q)
            excl.append(-1)
        else:
            raise DataError(f"--query '{q}': not an id in {path} (ids look like '{emb.ids[0]}') and not an image file")
    return names, torch.stack(vecs), torch.tensor(excl, dtype=torch.int64)
