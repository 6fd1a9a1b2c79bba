"""``selfsup select EMBEDDINGS --budget N --strategy S --out FILE``: which N images to label."""
from __future__ import annotations

import argparse

STRATEGIES = ("kcenter", "typicality", "cluster-balanced", "random")  # use.select.STRATEGIES, without numpy for --help


def cmd_select(args: argparse.Namespace) -> int:
    from ..use.select import select

    select(args.embeddings, args.budget, args.strategy, args.out, seed=args.seed, clusters=args.clusters,
           quiet=args.quiet)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("select", help="choose which N images to label from a file of embeddings",
                       description="Pick --budget images to label from the .npz that `selfsup embed` writes: "
                       "kcenter (greedy k-center coreset, Sener & Savarese 2018), typicality (TypiClust, Hacohen "
                       "et al. 2022), cluster-balanced (equal picks from k-means clusters, nearest the centroid) "
                       "or random. Writes the ids, one per line (or id,strategy,rank for a .csv --out); "
                       "`selfsup eval RUN --protocol semi --selection FILE` trains on them.")
    p.add_argument("embeddings", help=".npz with embeddings (N, D), ids (N,) and optional labels")
    p.add_argument("--budget", type=int, required=True, help="how many images to pick (1..N)")
    p.add_argument("--strategy", default="typicality", help=f"one of {', '.join(STRATEGIES)} (default typicality)")
    p.add_argument("--seed", type=int, default=0, help="seed of k-means and of random (kcenter is deterministic)")
    p.add_argument("--clusters", type=int, help="cluster-balanced: number of k-means clusters (default budget/5)")
    p.add_argument("--out", required=True, help="selection file: one id per line, or a .csv with id,strategy,rank")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_select)
    return p
