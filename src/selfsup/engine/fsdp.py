"""Large models: FSDP2 (``train.fsdp``) and activation checkpointing (``train.activation_checkpointing``).

Data parallelism without FSDP keeps a full copy of the weights, gradients and optimizer state on every rank and
averages the gradients after backward (engine/distributed.py). With ``train.fsdp=true`` under ``torchrun``,
:func:`shard_method` applies PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``) instead:

- **Units**: every repeated block of every backbone in the method (a ViT's transformer blocks,
  :meth:`~selfsup.backbones.base.Backbone.repeated_blocks`; the momentum teacher's copies too) is sharded on its
  own, then the method root, which takes everything else (patch embedding, final norm, heads, prototypes).
  Each parameter becomes a ``DTensor`` sharded on dim 0 over the ranks; buffers (BatchNorm statistics, queues,
  centres, memory banks) stay whole on every rank, updated identically as without FSDP.
- **Forward / backward**: a unit all-gathers its parameters before its forward and frees them after (the root
  keeps them until backward); in backward it gathers them again and *reduce-scatters* the gradients, averaged
  over the ranks: the engine's own gradient average (``average_gradients``) is skipped, and the scaling of
  :mod:`selfsup.components.gather` holds unchanged (it is written for an average over ranks).
- **Optimizer, clipping, EMA**: the optimizer steps on the local shards (elementwise, so the update is the
  unsharded one); LARS's trust ratio reduces its norms over the shards (engine/optim.py); the gradient norm
  (non-finite check, ``train.grad_clip``) is one all-reduce of the shards' squared norms
  (:func:`sharded_grad_norm`). A momentum teacher is sharded exactly like its student, so the elementwise EMA
  update ``θ_t ← m·θ_t + (1 − m)·θ_s`` (components/ema.py) runs on matching local shards, with no communication.
- **Checkpoints** stay plain full tensors written by rank 0: :func:`full_state_dicts` gathers them with
  ``torch.distributed.checkpoint.state_dict.get_model_state_dict`` / ``get_optimizer_state_dict``
  (``full_state_dict=True, cpu_offload=True``) and keys the optimizer state by integer ids like
  ``optimizer.state_dict()``; :func:`load_full_state` loads them back with ``set_model_state_dict`` /
  ``set_optimizer_state_dict``. A run trained with FSDP therefore resumes with or without it (``train.fsdp`` is
  safe to change on resume), and ``selfsup export`` / evaluation read its checkpoints as any other.
- One process (no ``torchrun``): nothing to shard; :func:`prepare_model` logs one note and trains as usual.

Activation checkpointing (:func:`set_activation_checkpointing`) makes each ViT block recompute its activations
in backward instead of keeping them (backbones/vit.py, ``Block.checkpointed``): the same loss and gradients for
less memory, at the cost of a second forward per block. BatchNorm backbones (ResNets, ConvNet) do not offer it:
the recomputation would update their running statistics twice.
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
import torch.distributed as dist
from torch import nn

from ..backbones.base import Backbone
from ..checkpoints import load_method_state, state_mismatch
from ..config import OptimConfig, TrainConfig
from ..errors import CheckpointError, ConfigError
from . import distributed as D


def is_sharded(module: nn.Module) -> bool:
    """Whether ``fully_shard`` was applied to ``module`` (its parameters are DTensor shards)."""
    if not (dist.is_available() and dist.is_initialized()):
        return False  # sharding needs a running process group (and plain runs skip importing FSDP)
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def prepare_model(method: nn.Module, t: TrainConfig, backbone_name: str, device: torch.device,
                  dctx: D.DistContext, quiet: bool = False) -> None:
    """What ``train.activation_checkpointing`` and ``train.fsdp`` ask of the built method, before its optimizer
    is made (the optimizer must hold the sharded parameters)."""
    if t.activation_checkpointing:
        set_activation_checkpointing(method, backbone_name)
    if not t.fsdp:
        return
    if not dctx.enabled:
        D.note(dctx, "train.fsdp: one process, nothing to shard (FSDP takes effect under torchrun); "
                     "training as usual", quiet)
        return
    units = shard_method(method, device, dctx.world)
    D.note(dctx, f"train.fsdp: parameters, gradients and optimizer state sharded over {dctx.world} ranks "
                 f"({len(units)} block units + the method root)", quiet)


def set_activation_checkpointing(method: nn.Module, backbone_name: str) -> int:
    """Turn activation checkpointing on in every backbone of ``method`` that supports it (the student's and the
    momentum teacher's copies alike; a teacher runs without gradients, so it never recomputes). Returns how many;
    a one-line ConfigError when none does."""
    found = [m for m in method.modules() if isinstance(m, Backbone) and m.supports_activation_checkpointing]
    if not found:
        raise ConfigError(f"train.activation_checkpointing: backbone '{backbone_name}' does not support it; the "
                          "ViTs do (vit, vit-small, vit-tiny); BatchNorm backbones would update their running "
                          "statistics twice")
    for b in found:
        b.set_activation_checkpointing(True)
    return len(found)


def shard_units(method: nn.Module) -> list[nn.Module]:
    """The modules sharded one by one before the root: every backbone's repeated blocks, in module order."""
    units: list[nn.Module] = []
    seen: set[int] = set()
    for m in method.modules():
        if isinstance(m, Backbone):
            for blk in m.repeated_blocks():
                if id(blk) not in seen:
                    seen.add(id(blk))
                    units.append(blk)
    return units


def shard_method(method: nn.Module, device: torch.device, world: int) -> list[nn.Module]:
    """``fully_shard`` every unit of :func:`shard_units`, then ``method`` itself, over a 1-D mesh of ``world``
    ranks on ``device``'s type (the process group must be running). Returns the units. Call it after the
    weights agree on every rank (``broadcast_module``) and before the optimizer is built."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world,))
    units = shard_units(method)
    for blk in units:
        fully_shard(blk, mesh=mesh)
    fully_shard(method, mesh=mesh)
    if device.type == "cpu":  # gloo: reduce-scatter with SUM, then divide by the world size (no AVG reduction)
        for m in (*units, method):
            typing.cast(Any, m).set_force_sum_reduction_for_comms(True)  # an FSDPModule method now
    return units


def optim_section(o: OptimConfig, method: nn.Module) -> OptimConfig:
    """The optimizer section to build with: under FSDP, ``optim.fused`` left unset means off (DTensor has no
    fused SGD kernel; the per-tensor kernels run on the shards); an explicit value is kept."""
    if o.fused is None and is_sharded(method):
        return dataclasses.replace(o, fused=False)
    return o


def _local(t: torch.Tensor) -> torch.Tensor:
    to_local = getattr(t, "to_local", None)  # a DTensor: this rank's shard (a view of its storage)
    return to_local() if to_local is not None else t


@torch.no_grad()
def sharded_grad_norm(params: Iterable[torch.Tensor], max_norm: float | None = None) -> torch.Tensor:
    """The total L2 norm of the gradients of FSDP-sharded parameters (each rank holds a disjoint shard: the
    shards' squared norms are summed over the ranks, one all-reduce), as a plain 0-dim tensor, the same on every
    rank; with ``max_norm`` the gradients are then scaled by ``min(1, max_norm / (norm + 1e-6))``, and the norm
    before clipping is returned, as ``torch.nn.utils.clip_grad_norm_`` does for unsharded ones. inf/NaN when any
    gradient is."""
    local = [_local(p.grad) for p in params if p.grad is not None]
    if not local:
        return torch.zeros(())
    sq = torch.zeros((), device=local[0].device)
    for g in local:
        sq += g.float().square().sum()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sq, op=dist.ReduceOp.SUM)
    total = sq.sqrt()
    if max_norm:
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for g in local:
            g.mul_(coef.to(g.dtype))
    return total


def _keyed_by_id(osd: Mapping[str, Any]) -> dict[str, Any]:
    """An optimizer state keyed by parameter name (``get_optimizer_state_dict``) → keyed by integer id, numbered
    over the param groups in order: the layout of ``optimizer.state_dict()``."""
    ids: dict[str, int] = {}
    groups = [{**g, "params": [ids.setdefault(name, len(ids)) for name in g["params"]]}
              for g in osd["param_groups"]]
    return {"state": {ids[name]: v for name, v in osd["state"].items()}, "param_groups": groups}


def _keyed_by_name(saved: Mapping[str, Any], method: nn.Module, optimizer: torch.optim.Optimizer,
                   path: str | Path) -> dict[str, Any]:
    """The inverse of :func:`_keyed_by_id` for this ``optimizer``: id i is its i-th parameter (over its groups
    in order), as ``optimizer.load_state_dict`` reads it. A state of another shape is a one-line error."""
    names = {id(p): n for n, p in method.named_parameters()}
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    groups = saved.get("param_groups") if isinstance(saved, Mapping) else None
    sizes = [len(g["params"]) for g in groups] if isinstance(groups, list) else None
    if sizes != [len(g["params"]) for g in optimizer.param_groups]:
        raise CheckpointError(f"{path}: its optimizer state does not fit the optimizer its config describes "
                              f"(parameter groups of sizes {sizes}, the optimizer has "
                              f"{[len(g['params']) for g in optimizer.param_groups]})")
    assert groups is not None
    return {"state": {order[int(i)]: v for i, v in saved["state"].items()},
            "param_groups": [{**g, "params": [order[int(i)] for i in g["params"]]} for g in groups]}


def full_state_dicts(method: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """(method state, optimizer state) as a checkpoint holds them: ``method.state_dict()`` and
    ``optimizer.state_dict()``; under FSDP the same layout with full tensors on the CPU, gathered from the
    shards — collective (every rank calls it), rank 0 gets them and the other ranks empty dicts."""
    if not is_sharded(method):
        return method.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(method, options=opts)
    optim = get_optimizer_state_dict(method, optimizer, options=opts)
    return dict(weights), (_keyed_by_id(optim) if optim else {})


def load_full_state(method: nn.Module, optimizer: torch.optim.Optimizer, weights: Mapping[str, torch.Tensor],
                    optim_state: Mapping[str, Any], path: str | Path) -> None:
    """Load a checkpoint's full ``method`` and ``optimizer`` entries into ``method`` and ``optimizer``, sharded or
    not (every rank passes the same full state: each keeps its shard). Weights that do not fit are the one-line
    CheckpointError of :func:`~selfsup.checkpoints.load_method_state`."""
    if not is_sharded(method):
        load_method_state(method, weights, path)
        optimizer.load_state_dict(dict(optim_state))
        return
    problem = state_mismatch(method, weights)  # DTensor shapes are the full shapes
    if problem:
        raise CheckpointError(f"{path}: its weights do not fit the model its config describes ({problem})")
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    named = _keyed_by_name(optim_state, method, optimizer, path)
    full: dict[str, Any] = dict(weights)  # a copy: the loader replaces its entries by this rank's shards
    set_model_state_dict(method, full, options=StateDictOptions(full_state_dict=True))
    # strict=False: a parameter that had no gradient before the checkpoint (DINO's last layer during its frozen
    # first epoch) has no optimizer state, as in optimizer.state_dict()
    set_optimizer_state_dict(method, optimizer, named, options=StateDictOptions(full_state_dict=True, strict=False))
