"""Multi-process training under ``torchrun``: process group, per-rank data, gradient averaging, rank-0 writes.

``torchrun --nproc-per-node N -m selfsup pretrain ...`` sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR;
:func:`init_distributed` reads them (one process without them: everything here is a no-op) and starts a process
group: NCCL for CUDA, gloo for CPU, with a timeout on every collective so a failed rank ends the run with an
error instead of a hang.

- Data: every rank draws the same per-epoch permutation and takes its slice of each global batch
  (:func:`rank_batches`), so the global batch is the single-process batch; streaming folders and shard folders
  get the same slice through their own DataLoader (a DistributedSampler equivalent that keeps the global order;
  a shard folder's permutation is its own windowed one, data/shards.py).
- Gradients: after backward, :func:`average_gradients` all-reduces the flattened gradients and divides by W
  (what DDP does, done once per optimizer step, so gradient accumulation needs no ``no_sync``). The gathers in
  :mod:`selfsup.components.gather` are scaled for exactly this average.
- Randomness: model init and the global torch RNG are identical on every rank (same seed; the method's own
  randomness is drawn for the global batch and sliced, see ``gather.rank_rows``); the augmentation generator is
  seeded ``seed + 1 + rank`` and its state is *checkpointed per rank* (gathered to rank 0), so a resume with the
  same world size continues every rank's stream exactly; with another world size it is re-derived
  deterministically from (seed, rank, step).
- Rank 0 alone writes the run directory, logs, prints progress and saves checkpoints; every rank resumes from
  the same checkpoint file (single node or a shared filesystem).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device_name: str, timeout_min: float = 5.0) -> tuple[DistContext, torch.device | None]:
    """Start the process group when launched by torchrun; returns the context and this rank's device (or None:
    single process, the caller resolves ``train.device`` as usual)."""
    if not launched_by_torchrun():
        return DistContext(), None
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise ConfigError(f"train.device={device_name}: CUDA is not available on rank {rank}")
    if want_cuda:
        if local >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices; "
                              "use --nproc-per-node <= the number of GPUs")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        timeout = timedelta(minutes=timeout_min)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout,
                                store=_launch_store(world, timeout), rank=rank, world_size=world)
    ctx = DistContext(rank, world, local)
    kinds: list[str | None] = [None] * world
    dist.all_gather_object(kinds, device.type)
    if len(set(kinds)) > 1:
        raise ConfigError(f"ranks run on different device types {kinds}: every rank must use the same "
                          "train.device (all CUDA with NCCL, or all CPU with gloo)")
    return ctx, device


def _launch_store(world: int, timeout: timedelta) -> dist.Store | None:
    """This launch's own key space in torchrun's store; None: ``env://`` as usual.

    torchrun's agent serves one TCP store (at MASTER_ADDR:MASTER_PORT) for the whole job and keeps it across
    ``--max-restarts`` restarts, while the process group writes the same keys on every launch (each rank's gloo
    address, the init barrier's counter). A restarted rank would read the address of a rank killed in the
    previous launch ("Connection refused") or pass a barrier that counted the dead ranks. The launch's
    ``TORCHELASTIC_RESTART_COUNT`` gives every launch a fresh prefix.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or "TORCHELASTIC_RESTART_COUNT" not in os.environ:
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                          timeout=timeout)
    return dist.PrefixStore(f"selfsup/launch_{os.environ['TORCHELASTIC_RESTART_COUNT']}", store)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_batch(global_batch: int, ctx: DistContext, accum: int, has_bn: bool) -> int:
    """The per-rank micro-batch for ``global_batch``; one-line errors for batches that cannot be split."""
    if accum < 1:
        raise ConfigError(f"train.grad_accum_steps must be >= 1, got {accum}")
    parts = ctx.world * accum
    if global_batch % parts:
        raise ConfigError(f"train.batch_size ({global_batch}) must be divisible by world size x "
                          f"train.grad_accum_steps ({ctx.world} x {accum} = {parts})")
    micro = global_batch // parts
    if micro < 2 and has_bn:
        raise ConfigError(f"train.batch_size {global_batch} over {ctx.world} rank(s) x {accum} accumulation "
                          "step(s) leaves 1 image per forward pass: BatchNorm needs at least 2; "
                          "raise train.batch_size or lower grad_accum_steps / --nproc-per-node")
    return micro


def rank0_call(ctx: DistContext, fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 and share its result; an exception there is raised on every rank (no hang)."""
    if not ctx.enabled:
        return fn()
    box: list[Any] = [None]
    if ctx.is_main:
        try:
            box[0] = ("ok", fn())
        except Exception as e:  # re-raised below on every rank
            box[0] = ("err", f"{type(e).__name__}: {e}")
            err = e
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "err":
        if ctx.is_main:
            raise err  # noqa: F821 - bound above
        raise ConfigError(f"rank 0 failed: {value}")
    return value


def broadcast_value(ctx: DistContext, value: T) -> T:
    """Rank 0's value of a small Python object (time budget decisions, stop flags)."""
    if not ctx.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@torch.no_grad()
def broadcast_module(module: nn.Module, ctx: DistContext) -> None:
    """Rank 0's parameters and buffers on every rank (the seeds already agree; this makes it a guarantee)."""
    if not ctx.enabled:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


@torch.no_grad()
def average_gradients(params: list[torch.Tensor], ctx: DistContext) -> None:
    """grad ← mean over ranks of grad, for every parameter that has one (one all-reduce per dtype)."""
    if not ctx.enabled:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(ctx.world)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def all_finite(finite: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """True only if the loss was finite on every rank (so all ranks skip the same steps)."""
    if not ctx.enabled:
        return finite
    f = finite.to(torch.int32).clone()
    dist.all_reduce(f, op=dist.ReduceOp.MIN)
    return f.bool()


def reduce_first_bad(first_bad: torch.Tensor, ctx: DistContext) -> int:
    """The first non-finite step seen by any rank (-1: none). One host sync."""
    if not ctx.enabled:
        return int(first_bad)
    b = first_bad.clone()
    b[b < 0] = torch.iinfo(b.dtype).max
    dist.all_reduce(b, op=dist.ReduceOp.MIN)
    v = int(b)
    return -1 if v == torch.iinfo(b.dtype).max else v


def mean_over_ranks(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.enabled:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= ctx.world
    return x


def gather_generator_states(gen: torch.Generator, ctx: DistContext) -> list[torch.Tensor] | None:
    """Every rank's augmentation generator state (on rank 0; None elsewhere) for the checkpoint."""
    state = gen.get_state()
    if not ctx.enabled:
        return [state]
    out: list[Any] = [None] * ctx.world
    dist.all_gather_object(out, state)
    return out if ctx.is_main else None


def restore_generator(gen: torch.Generator, states: list[torch.Tensor] | None, ctx: DistContext, seed: int,
                      step: int) -> str | None:
    """This rank's saved state, or a deterministic re-seed when the world size changed (returns a note)."""
    if states is not None and len(states) == ctx.world:
        gen.set_state(states[ctx.rank])
        return None
    gen.manual_seed((seed + 1 + ctx.rank) * 1_000_003 + step)
    return (f"checkpoint has augmentation states for {len(states) if states else 1} rank(s), running "
            f"{ctx.world}: augmentation streams re-seeded from (seed, rank, step)")


def rank_batches(split: Any, global_batch: int, ctx: DistContext, *, generator: torch.Generator,
                 start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """This rank's slice of every global batch of a shuffled epoch (drop_last), from ``start_batch`` on.

    One process: the split's own ``batches``. In-memory splits index their tensor; streaming folders and shard
    folders decode only this rank's images, in the same global order (the DistributedSampler equivalent; a shard
    folder's order is its own ``epoch_order``, data/shards.py).
    """
    whole = getattr(split, "canvas", None) is not None  # data.full_image: whole-image canvas batches
    if not ctx.enabled:
        yield from split.batches(global_batch, shuffle=True, generator=generator, drop_last=True,
                                 start_batch=start_batch, **({"canvas": True} if whole else {}))
        return
    from ..data.base import InMemorySplit
    from ..data.folder import StreamingFolderSplit
    from ..data.shards import ShardSplit

    n_batches = split.num_batches(global_batch, drop_last=True)
    order = split.epoch_order(generator) if isinstance(split, ShardSplit) else \
        torch.randperm(split.num_images, generator=generator)
    order = order[: n_batches * global_batch]
    b = global_batch // ctx.world
    mine = order.view(n_batches, ctx.world, b)[start_batch:, ctx.rank].reshape(-1)
    if isinstance(split, ShardSplit):
        yield from _shard_rank_batches(split, mine, b, ctx)
        return
    if isinstance(split, StreamingFolderSplit):
        for x, idx, _ in split.loader(mine, b, canvas=whole):
            if x is None or x.shape[0] != b:  # unreadable files: shapes must agree across ranks
                raise RuntimeError(f"rank {ctx.rank}: unreadable images in a batch under torchrun; "
                                   "remove them from the folder (every rank needs full batches)")
            yield x, idx, (split.labels[idx] if split.labels is not None else None)
        return
    if not isinstance(split, InMemorySplit):
        raise ConfigError(f"torchrun: no per-rank sharding for {type(split).__name__}")
    for i in range(mine.numel() // b):
        idx = mine[i * b : (i + 1) * b]
        yield split.images[idx], idx, (split.labels[idx] if split.labels is not None else None)


def _shard_rank_batches(split: Any, mine: torch.Tensor, b: int, ctx: DistContext
                        ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """A shard folder's images at ``mine`` (this rank's slices), ``b`` a batch; an unreadable one ends the run."""
    from ..data.base import DataError

    for x, idx, why in split.read_batches(mine, b):
        if x is None or idx is None or x.shape[0] != b:  # shapes must agree across ranks
            raise DataError(f"{split.root}: rank {ctx.rank}: {len(why)} unreadable images in a batch under torchrun "
                            f"(first: {why[0] if why else '?'}); every rank needs full batches: copy the shards "
                            "again, or write them again")
        yield x, idx, (split.labels[idx] if split.labels is not None else None)


class NullLogger:
    """What ranks other than 0 log to: nothing."""

    total_steps = 0

    def log(self, rec: dict) -> None:
        pass

    def progress(self, rec: dict) -> None:
        pass

    def set_total(self, total_steps: int) -> None:
        pass

    def note(self, line: str) -> None:
        pass

    def tick(self, step: int) -> None:
        pass

    def close(self) -> None:
        pass


def note(ctx: DistContext, msg: str, quiet: bool = False) -> None:
    """One line on stderr, from rank 0 only."""
    if ctx.is_main and not quiet:
        print(msg, file=sys.stderr)
