"""Feature extraction under torchrun: each rank extracts a contiguous shard, rank 0 gets the whole split.

Used for kNN and linear evaluation of large splits on several GPUs: ``extract_features_distributed`` returns
the same ``(N, D)`` features and labels, in dataset order, as :func:`~selfsup.evaluation.features.extract_features`
on rank 0 (``None`` on the other ranks, which have nothing left to do); one process: exactly that function.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
from torch import nn

from ..components.gather import rank, world_size
from ..data.base import ImageSplit, InMemorySplit
from ..data.shards import ShardSplit
from .features import extract_features


def shard(split: ImageSplit, r: int, w: int) -> ImageSplit:
    """Rank ``r`` of ``w``'s contiguous share of ``split`` (sizes differ by at most one image)."""
    n = split.num_images
    lo, hi = n * r // w, n * (r + 1) // w
    if isinstance(split, (InMemorySplit, ShardSplit)):
        return split.subset(torch.arange(lo, hi))
    if dataclasses.is_dataclass(split) and hasattr(split, "paths"):  # StreamingFolderSplit
        labels = split.labels[lo:hi] if split.labels is not None else None
        return dataclasses.replace(split, paths=split.paths[lo:hi], labels=labels)
    raise TypeError(f"no sharding for {type(split).__name__}")


@torch.no_grad()
def extract_features_distributed(backbone: nn.Module, split: ImageSplit, mean, std, device: torch.device, *,
                                 batch_size: int = 512, stage: str | None = None
                                 ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(features (N, D), labels (N,) or None) on rank 0, None on the other ranks (see the module docstring)."""
    w = world_size()
    if w == 1:
        return extract_features(backbone, split, mean, std, device, batch_size=batch_size, stage=stage)
    f, y = extract_features(backbone, shard(split, rank(), w), mean, std, device, batch_size=batch_size,
                            stage=stage)
    parts: list = [None] * w
    dist.all_gather_object(parts, (f, y))  # CPU tensors, pickled: fine for evaluation-sized features
    if rank() != 0:
        return None
    feats = torch.cat([p[0] for p in parts])
    labels = torch.cat([p[1] for p in parts]) if parts[0][1] is not None else None
    return feats, labels
