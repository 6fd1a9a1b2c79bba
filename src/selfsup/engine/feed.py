"""How training batches reach the device: in-memory data copied to the GPU once, or a prefetch of the next batch.

On a CPU run nothing here does anything. On CUDA:

- An in-memory training split (a ``.npz``, CIFAR-10, a folder small enough to decode into memory) that takes at
  most ``DEVICE_CACHE_FRACTION`` of the GPU's free memory is copied there once (``data.device_cache``, on by
  default): a batch is then an index into device memory, with no host-to-device copy per step. CIFAR-10's 30k
  training images are 92 MB of uint8.
- Otherwise (streaming folders, shards, data too large) batches come from DataLoader workers in pinned memory,
  and :func:`prefetch` starts the non-blocking copy of the next batch before the current step runs, so the
  transfer overlaps the compute (the step itself then finds its batch already on the device).

The per-sample batched augmentation runs on the device either way (augment/pipeline.py).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Iterator

import torch

from ..data.base import InMemorySplit

DEVICE_CACHE_FRACTION = 0.25

Batch = tuple[Any, torch.Tensor, torch.Tensor | None]


def device_split(split: Any, device: torch.device, enabled: bool = True, decode: str = "auto") -> Any:
    """``split`` with its images on ``device`` when that is a CUDA device, the split is in memory and it fits;
    a shard folder decoding on ``device`` when ``decode`` says so (``data.decode``: ``device``, or ``auto`` on a
    GPU); the split itself otherwise (it is never modified: evaluation keeps reading it as it was)."""
    from ..data.shards import ShardSplit

    if isinstance(split, ShardSplit):
        on_device = decode == "device" or (decode == "auto" and device.type == "cuda")
        return dataclasses.replace(split, decode_device=device) if on_device else split
    if not enabled or device.type != "cuda" or not isinstance(split, InMemorySplit):
        return split
    free, _ = torch.cuda.mem_get_info(device)
    if split.images.numel() > DEVICE_CACHE_FRACTION * free:
        return split
    return InMemorySplit(split.images.to(device), split.labels, split.ids)


def _move(batch: Batch, device: torch.device) -> Batch:
    x, idx, y = batch
    return (x.to(device, non_blocking=True), idx.to(device, non_blocking=True),
            y.to(device, non_blocking=True) if y is not None else None)


def prefetch(batches: Iterable[Batch], device: torch.device) -> Iterator[Batch]:
    """The same batches, each already on ``device`` (CUDA: the copy of batch n+1 is issued before batch n is
    yielded, so it overlaps batch n's step). On the CPU, or for batches already there, a pass-through."""
    if device.type != "cuda":
        yield from batches
        return
    it = iter(batches)
    first = next(it, None)
    if first is None:
        return
    ahead = _move(first, device)
    for batch in it:
        current, ahead = ahead, _move(batch, device)
        yield current
    yield ahead
