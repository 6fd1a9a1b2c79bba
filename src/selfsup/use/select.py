"""Which images to label: pick ``budget`` images from a file of embeddings.

Strategies (all on L2-normalised embeddings, so distances are cosine distances):

- ``kcenter``: the greedy k-center coreset (Sener & Savarese 2018): start from the image nearest the mean
  embedding (deterministic), then repeatedly add the image farthest from everything chosen so far. Distances to
  the newest centre are computed in row chunks, so memory stays O(N) beside the embeddings.
- ``typicality``: TypiClust (Hacohen et al. 2022): k-means into ``budget`` clusters, and from each cluster the
  most typical image, typicality = 1 / mean distance to its k nearest neighbours in the cluster (k = 20 or
  fewer); clusters are visited largest first, every cluster once before any cluster gets a second pick.
- ``cluster-balanced``: k-means into ``clusters`` clusters (default ``ceil(budget / 5)``), an equal share of
  the budget from each, the images nearest its centroid (shares a small cluster cannot fill go to the others).
- ``random``: a uniform sample (the baseline every strategy must beat).

k-means is scikit-learn's ``KMeans`` (``MiniBatchKMeans`` above 50 clusters, as TypiClust does), seeded by
``seed``. The embeddings file is the ``.npz`` that ``selfsup embed`` writes: a float matrix ``embeddings``
(N, D), ``ids`` (N,) and optional ``labels``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..data.base import DataError
from ..data.npz import check_members, memory_limit
from ..errors import ConfigError

STRATEGIES = ("kcenter", "typicality", "cluster-balanced", "random")
CHUNK = 8192  # rows per distance block
TYPICALITY_K = 20  # neighbours of the typicality score (TypiClust)
PICKS_PER_CLUSTER = 5  # cluster-balanced's default: ceil(budget / 5) clusters


@dataclass
class Embeddings:
    vectors: np.ndarray  # (N, D) float32, L2-normalised
    ids: list[str]
    labels: np.ndarray | None
    path: Path


def load_embeddings(path: str | Path) -> Embeddings:
    """The ``.npz`` of embeddings; one-line :class:`DataError` naming the file for anything else."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"embeddings file not found: {p}")
    try:
        check_members(p, memory_limit())
        z = np.load(p, allow_pickle=False)
        keys = set(z.files)
        missing = [k for k in ("embeddings", "ids") if k not in keys]
        if missing:
            raise DataError(f"{p}: missing array '{missing[0]}' (found: {', '.join(sorted(keys)) or 'none'}); "
                            "expected embeddings (N, D), ids (N,) and optional labels, as selfsup embed writes")
        x, ids = z["embeddings"], z["ids"]
        labels = z["labels"] if "labels" in keys else None
    except DataError:
        raise
    except Exception as e:  # not a zip, a pickled member, a corrupt member
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise DataError(f"{p}: not a readable .npz of embeddings ({type(e).__name__}: {first})") from None
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0 or not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{p}: 'embeddings' must be a non-empty float (N, D) matrix, got {x.dtype} {x.shape}")
    if ids.ndim != 1 or len(ids) != len(x) or not (ids.dtype.kind in "US" or np.issubdtype(ids.dtype, np.integer)):
        raise DataError(f"{p}: 'ids' must be {len(x)} strings (one per embedding), got {ids.dtype} {ids.shape}")
    if labels is not None and (labels.ndim != 1 or len(labels) != len(x)):
        raise DataError(f"{p}: 'labels' must have one entry per embedding ({len(x)}), got {labels.shape}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"{p}: 'embeddings' holds NaN or infinite values")
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    names = [i.decode("utf-8", "replace") if isinstance(i, bytes) else str(i) for i in ids.tolist()]
    return Embeddings(x, names, labels, p)


def check_request(budget: int, strategy: str, n: int, where: str) -> None:
    if strategy not in STRATEGIES:
        raise ConfigError(f"--strategy '{strategy}' is not a selection strategy (known: {', '.join(STRATEGIES)})")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ConfigError(f"--budget must be a whole number of images >= 1, got {budget!r}")
    if budget > n:
        raise ConfigError(f"--budget {budget} is larger than the {n} images of {where}")


def kcenter(x: np.ndarray, budget: int, chunk: int = CHUNK) -> np.ndarray:
    """Greedy k-center on unit rows: indices in the order chosen."""
    n = x.shape[0]
    centre = x.mean(0)
    start = int(np.argmax(_dots(x, centre, chunk)))  # nearest the mean: a deterministic first centre
    dist = 1.0 - _dots(x, x[start], chunk)
    chosen = [start]
    dist[start] = -np.inf
    for _ in range(budget - 1):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, 1.0 - _dots(x, x[nxt], chunk))  # a chosen row stays at -inf
    assert len(set(chosen)) == len(chosen) <= n
    return np.asarray(chosen, dtype=np.int64)


def _dots(x: np.ndarray, v: np.ndarray, chunk: int) -> np.ndarray:
    return np.concatenate([x[i : i + chunk] @ v for i in range(0, x.shape[0], chunk)])


def kmeans(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(cluster of every row, centroids (k, D)): KMeans, MiniBatchKMeans above 50 clusters."""
    try:
        from sklearn.cluster import KMeans, MiniBatchKMeans
    except ImportError:
        raise ConfigError("--strategy typicality and cluster-balanced need scikit-learn (k-means): "
                          "pip install 'selfsup[use]'") from None

    if k > 50:
        km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=max(1024, 3 * k))
    else:
        km = KMeans(n_clusters=k, random_state=seed, n_init=3)
    assign = km.fit_predict(x)
    return assign.astype(np.int64), km.cluster_centers_.astype(np.float32)


def typicality_scores(x: np.ndarray, k: int = TYPICALITY_K, chunk: int = 2048) -> np.ndarray:
    """1 / mean Euclidean distance of every row to its ``k`` nearest other rows (rows of one cluster)."""
    n = x.shape[0]
    if n == 1:
        return np.ones(1, dtype=np.float32)
    k = min(k, n - 1)
    sq = (x * x).sum(1)
    out = np.empty(n, dtype=np.float32)
    for i in range(0, n, chunk):
        d2 = np.maximum(sq[i : i + chunk, None] + sq[None] - 2.0 * x[i : i + chunk] @ x.T, 0.0)
        d2[np.arange(d2.shape[0]), np.arange(i, i + d2.shape[0])] = np.inf  # not its own neighbour
        near = np.partition(d2, k - 1, axis=1)[:, :k]
        out[i : i + chunk] = 1.0 / (np.sqrt(near).mean(1) + 1e-12)
    return out


def _round_robin(order_per_cluster: list[np.ndarray], budget: int) -> np.ndarray:
    """First pick of every cluster (in the order given), then second picks, ... until ``budget``."""
    picks: list[int] = []
    depth = 0
    while len(picks) < budget:
        took = False
        for members in order_per_cluster:
            if depth < len(members) and len(picks) < budget:
                picks.append(int(members[depth]))
                took = True
        if not took:
            break
        depth += 1
    return np.asarray(picks, dtype=np.int64)


def typicality(x: np.ndarray, budget: int, seed: int) -> np.ndarray:
    assign, _ = kmeans(x, budget, seed)
    clusters = sorted((c for c in np.unique(assign)), key=lambda c: (-int((assign == c).sum()), int(c)))
    ordered = []
    for c in clusters:
        members = np.flatnonzero(assign == c)
        ordered.append(members[np.argsort(-typicality_scores(x[members]), kind="stable")])
    return _round_robin(ordered, budget)  # k-means may leave clusters empty: the largest give second picks


def cluster_balanced(x: np.ndarray, budget: int, seed: int, clusters: int | None = None) -> np.ndarray:
    k = clusters or math.ceil(budget / PICKS_PER_CLUSTER)
    k = max(1, min(k, budget, x.shape[0]))
    assign, centroids = kmeans(x, k, seed)
    ordered = []
    for c in range(k):
        members = np.flatnonzero(assign == c)
        if len(members):
            d = ((x[members] - centroids[c]) ** 2).sum(1)
            ordered.append(members[np.argsort(d, kind="stable")])
    return _round_robin(ordered, budget)  # round robin = equal shares; a small cluster's leftover goes on


def random_pick(n: int, budget: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n)[:budget].astype(np.int64)


def select_indices(x: np.ndarray, budget: int, strategy: str, seed: int = 0, *, clusters: int | None = None
                   ) -> np.ndarray:
    """Row indices of ``budget`` distinct rows of unit-norm ``x``, in rank order (the first is picked first)."""
    check_request(budget, strategy, x.shape[0], "the embeddings")
    if clusters is not None and clusters < 1:
        raise ConfigError(f"--clusters must be >= 1, got {clusters}")
    fns: dict[str, Callable[[], np.ndarray]] = {
        "kcenter": lambda: kcenter(x, budget), "typicality": lambda: typicality(x, budget, seed),
        "cluster-balanced": lambda: cluster_balanced(x, budget, seed, clusters),
        "random": lambda: random_pick(x.shape[0], budget, seed)}
    idx = fns[strategy]()
    if len(idx) < budget:  # only when k-means merged identical points: fill with the rest, in random order
        rest = np.setdiff1d(np.arange(x.shape[0]), idx)
        idx = np.concatenate([idx, np.random.default_rng(seed).permutation(rest)[: budget - len(idx)]])
    return idx


def train_rows(ids: list[str]) -> np.ndarray:
    """Rows that may be picked: all, except the ``test/<row>`` ids ``selfsup embed`` writes for a test split."""
    keep = [i for i, name in enumerate(ids) if not name.startswith("test/")]
    return np.asarray(keep if keep else range(len(ids)), dtype=np.int64)


def write_selection(path: str | Path, ids: list[str], strategy: str) -> Path:
    """One id per line, or (a ``.csv`` path) ``id,strategy,rank`` rows."""
    import csv

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", newline="", encoding="utf-8") as f:
        if p.suffix.lower() == ".csv":
            w = csv.writer(f)
            w.writerow(["id", "strategy", "rank"])
            w.writerows([i, strategy, r] for r, i in enumerate(ids))
        else:
            f.writelines(f"{i}\n" for i in ids)
    return p


def select(embeddings: str | Path, budget: int, strategy: str, out: str | Path, *, seed: int = 0,
           clusters: int | None = None, quiet: bool = False) -> list[str]:
    """Pick ``budget`` images of the embeddings file, write their ids to ``out``; returns the ids."""
    check_request(budget, strategy, max(1, budget), str(embeddings))  # the options, before reading the file
    from ..engine.run_access import check_writable

    check_writable(Path(out), "the selection")
    emb = load_embeddings(embeddings)
    check_request(budget, strategy, len(emb.ids), str(emb.path))
    say = (lambda m: None) if quiet else (lambda m: print(m, flush=True))
    n, d = emb.vectors.shape
    rows = train_rows(emb.ids)
    if len(rows) < n:
        say(f"select: {n - len(rows)} test/ images of {emb.path} left out (labels to train on come from train/)")
        check_request(budget, strategy, len(rows), f"train/ of {emb.path}")
    say(f"select: {strategy}, {budget} of {len(rows)} images ({d}-d embeddings from {emb.path})")
    idx = rows[select_indices(emb.vectors[rows], budget, strategy, seed, clusters=clusters)]
    ids = [emb.ids[i] for i in idx.tolist()]
    path = write_selection(out, ids, strategy)
    if emb.labels is not None and not quiet:
        _, counts = np.unique(emb.labels[idx], return_counts=True)
        say(f"select: the picks cover {len(counts)} of {len(np.unique(emb.labels))} labels "
            f"(fewest per label: {counts.min()}, most: {counts.max()})")
    say(f"select: wrote {len(ids)} ids → {path}")
    return ids
