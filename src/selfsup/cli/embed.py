"""``selfsup embed SOURCE --data PATH --out FILE`` and ``selfsup neighbors EMBEDDINGS``: embeddings of a
dataset, then nearest neighbours, near-duplicates and an HTML gallery of them (docs/practitioner.md)."""
from __future__ import annotations

import argparse
import csv
import heapq
import math
from pathlib import Path

FORMATS = (".npz", ".csv", ".pt")  # use.embed.FORMATS, without importing torch for --help
GALLERY_PAIRS = 60  # the most similar pairs shown by --duplicates --html


def _say(line: str) -> None:
    print(line, flush=True)


def cmd_embed(args: argparse.Namespace) -> int:
    from ..engine.run_access import check_writable
    from ..use.embed import check_output, data_shape, embed_data, write_embeddings
    from ..use.encoder import load_encoder

    out = check_output(args.out)
    check_writable(out, "the embeddings")
    if args.batch_size < 1:
        from ..errors import ConfigError
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.image_size is not None and args.image_size < 1:
        from ..errors import ConfigError
        raise ConfigError(f"--image-size must be >= 1, got {args.image_size}")
    extra = {}
    if not Path(args.source).exists():  # a backbone name: random init, sized by the flags and the data
        channels, size = data_shape(args.data)
        extra = {"image_size": args.image_size or size, "width": args.width, "seed": args.seed, "channels": channels}
    encoder = load_encoder(args.source, args.device, **extra)
    p = encoder.preprocessing
    _say(f"embed: {encoder.info['kind']} {encoder.info['arch']} ({encoder.num_features} features, "
         f"{p.channels}x{p.image_size}x{p.image_size}) on {args.data}, {args.batch_size} images a batch")
    emb = embed_data(encoder, args.data, batch_size=args.batch_size, normalize=args.normalize,
                     workers=args.workers, progress=_say)
    write_embeddings(emb, out)
    labels = f", {len(emb.classes)} classes" if emb.labels is not None else ", unlabelled"
    _say(f"wrote {len(emb.ids)} x {emb.vectors.shape[1]} embeddings{labels} → {out} (preprocessing: {out}.json)")
    return 0


def cmd_neighbors(args: argparse.Namespace) -> int:
    from ..use.search import load_embeddings, resolve_queries, unit_rows

    _check_neighbors_args(args)
    emb = load_embeddings(args.embeddings)
    db = unit_rows(emb.vectors)
    _say(f"neighbors: {len(emb.ids)} embeddings of {db.shape[1]} dimensions from {args.embeddings}")
    if args.duplicates is not None:
        return _duplicates(args, emb, db)
    if args.query:
        names, queries, exclude = resolve_queries(emb, args.embeddings, args.query, db, args.device)
    else:
        import torch

        names, queries, exclude = list(emb.ids), db, torch.arange(len(emb.ids))
    _check_k(args.k, len(emb.ids) - (1 if bool((exclude >= 0).any()) else 0), args.embeddings)
    return _neighbours(args, emb, db, names, queries, exclude)


def _check_neighbors_args(args: argparse.Namespace) -> None:
    from ..errors import ConfigError

    if args.k < 1:
        raise ConfigError(f"--k must be >= 1, got {args.k}")
    if args.duplicates is not None and not (math.isfinite(args.duplicates) and -1 <= args.duplicates <= 1):
        raise ConfigError(f"--duplicates is a cosine threshold in [-1, 1], got {args.duplicates}")
    if args.out is not None and Path(args.out).suffix.lower() != ".csv":
        raise ConfigError(f"--out {args.out}: neighbours and duplicate pairs are written as .csv")
    if args.html is not None and Path(args.html).suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"--html {args.html}: the gallery is an .html file")
    if args.gallery < 0:
        raise ConfigError(f"--gallery must be >= 0, got {args.gallery}")


def _check_k(k: int, available: int, path: str) -> None:
    from ..errors import ConfigError

    if k > available:
        raise ConfigError(f"--k {k} is larger than the {available} other embeddings in {path}")


def _neighbours(args, emb, db, names, queries, exclude) -> int:
    from ..use.search import search

    idx, sims = search(db, queries, args.k, exclude=exclude, index=args.index)
    if args.query:
        for q, hits, scores in zip(names, idx, sims):
            _say(f"{q}:")
            for r, (j, s) in enumerate(zip(hits.tolist(), scores.tolist()), 1):
                _say(f"  {r:>3}  {s:.3f}  {emb.ids[j]}")
    out = args.out or (None if args.query else _beside(args.embeddings, "neighbors.csv"))
    if out is not None:
        with open(out, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["query", "rank", "neighbor", "cosine"])
            for q, hits, scores in zip(names, idx, sims):
                w.writerows([q, r, emb.ids[j], f"{s:.6f}"] for r, (j, s) in enumerate(zip(hits.tolist(),
                                                                                         scores.tolist()), 1))
        _say(f"wrote the {args.k} nearest neighbours of {len(names)} queries → {out}")
    if args.html:
        from ..use.gallery import Thumbnails, neighbour_rows, write_gallery

        shown = list(range(len(names))) if args.query else _spread(len(names), args.gallery)
        rows = neighbour_rows(emb, Thumbnails(emb.meta), [names[i] for i in shown],
                              [int(exclude[i]) for i in shown], idx[shown], sims[shown])
        write_gallery(args.html, f"Nearest neighbours: {Path(args.embeddings).name}",
                      _subtitle(args, emb, f"{len(shown)} queries, {args.k} neighbours each (cosine)"), rows)
        _say(f"gallery of {len(shown)} queries → {args.html}")
    return 0


def _duplicates(args, emb, db) -> int:
    from ..use.search import duplicate_pairs

    out = args.out or _beside(args.embeddings, "duplicates.csv")
    top: list[tuple[float, int, int]] = []
    n = 0
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id_a", "id_b", "cosine"])
        for i, j, s in duplicate_pairs(db, args.duplicates):
            w.writerow([emb.ids[i], emb.ids[j], f"{s:.6f}"])
            n += 1
            if args.html:
                (heapq.heappush if len(top) < GALLERY_PAIRS else heapq.heappushpop)(top, (s, i, j))
    _say(f"{n} near-duplicate pairs with cosine >= {args.duplicates} → {out}")
    if args.html:
        from ..use.gallery import Thumbnails, pair_rows, write_gallery

        pairs = [(i, j, s) for s, i, j in sorted(top, reverse=True)]
        write_gallery(args.html, f"Near-duplicates: {Path(args.embeddings).name}",
                      _subtitle(args, emb, f"the {len(pairs)} most similar of {n} pairs with cosine >= "
                                           f"{args.duplicates}"), pair_rows(emb, Thumbnails(emb.meta), pairs))
        _say(f"gallery of {len(pairs)} pairs → {args.html}")
    return 0


def _beside(path: str, suffix: str) -> Path:
    p = Path(path)
    return p.with_name(f"{p.stem}.{suffix}")


def _spread(n: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(n)`` (deterministic)."""
    count = min(count, n)
    return sorted({round(i * (n - 1) / max(count - 1, 1)) for i in range(count)}) if count else []


def _subtitle(args, emb, what: str) -> list[str]:
    enc = emb.meta.get("encoder") or {}
    return [what, f"embeddings: {args.embeddings}; encoder: {enc.get('kind', '?')} {enc.get('arch', '?')} "
                  f"({enc.get('source', 'unknown source')}); data: {emb.meta.get('data', '?')}"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``embed`` and ``neighbors``."""
    em = sub.add_parser("embed", help="embeddings of every image of a folder, .npz or dataset (.npz, .csv, .pt)")
    em.add_argument("source", help="run directory, export (.safetensors / .pt), or a backbone name (random init)")
    em.add_argument("--data", required=True, help="image folder (recursive, labelled or not), .npz, or dataset name")
    em.add_argument("--out", required=True, help=f"output file; its suffix picks the format ({', '.join(FORMATS)})")
    em.add_argument("--normalize", action="store_true", help="scale every embedding to unit L2 norm")
    em.add_argument("--batch-size", type=int, default=256)
    em.add_argument("--workers", type=int, default=4, help="threads decoding image files")
    em.add_argument("--device", default="auto")
    em.add_argument("--image-size", type=int, help="backbone name only: the input size (default: the data's; "
                    "64 for a folder)")
    em.add_argument("--width", type=float, default=1.0, help="backbone name only: the width multiplier")
    em.add_argument("--seed", type=int, default=0, help="backbone name only: the random init's seed")
    em.set_defaults(fn=cmd_embed)

    nb = sub.add_parser("neighbors", help="nearest neighbours, near-duplicates and an HTML gallery of embeddings")
    nb.add_argument("embeddings", help="a file written by `selfsup embed`")
    nb.add_argument("--query", action="append", default=[], metavar="IMAGE_OR_ID",
                    help="an id of the file or an image path (repeatable); default: every embedding")
    nb.add_argument("--k", type=int, default=10, help="neighbours per query")
    nb.add_argument("--duplicates", type=float, metavar="THRESHOLD",
                    help="write the pairs with cosine >= THRESHOLD instead (near-duplicates)")
    nb.add_argument("--out", help="CSV of neighbours or pairs (default beside EMBEDDINGS; with --query: printed)")
    nb.add_argument("--html", help="a self-contained HTML gallery of queries and neighbours (or pairs)")
    nb.add_argument("--gallery", type=int, default=12, help="queries shown in --html without --query")
    nb.add_argument("--index", default="auto", choices=("auto", "exact", "faiss"),
                    help="exact: chunked search; faiss: an inner-product index (pip install faiss-cpu)")
    nb.add_argument("--device", default="cpu", help="device that embeds image queries")
    nb.set_defaults(fn=cmd_neighbors)
