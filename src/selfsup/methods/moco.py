"""MoCo v1 (He et al. 2020) and MoCo v2 (Chen, Fan, Girshick & He 2020): momentum contrast with a queue of keys.

A query encoder (backbone + projection) is trained with InfoNCE: the query q of view 1 must pick its key k⁺
(view 2 through the momentum key encoder) out of k⁺ and the K keys of a FIFO queue of past batches. The key
encoder follows the query encoder by ``θ_k ← m·θ_k + (1 − m)·θ_q`` after each step (an :class:`EMATeacher`);
the queue (a :class:`FeatureQueue`) receives the batch's keys after the step. v2 = v1 + MLP head, the SimCLR
augmentation with blur, τ = 0.2 (the cosine learning-rate schedule is the engine's default for every method).

Batch-norm leakage. Keys and queries of the same batch share BN statistics, which lets the model tell the
current keys from the queue's without learning anything (MoCo §3.3). MoCo shuffles the key batch across GPUs. On
one device we emulate that: both encoders run on ``bn_splits`` groups of the batch, each group normalised with
its own statistics, and the keys' groups are drawn after a random permutation, so a query and its key are
normalised with statistics of different sets of images (the "SplitBatchNorm" of the authors' CIFAR demo).

Under torchrun the same thing happens over the global batch, so that W processes with batch B/W compute what
one process with batch B does: the key images of every rank are gathered, permuted with the rank-synchronised
RNG, and each rank encodes its slice of the permuted batch; groups are strided (rows g, g + S, ...), so with
synchronised BN (the default under torchrun) group g is the union of every rank's local group g. The keys are
gathered back into the original order, every rank contrasts its queries with all current keys and pushes all of
them (with their image ids) into its queue, which therefore stays identical across ranks. With
``train.sync_bn=false`` each rank's groups are normalised alone, which is the paper's per-GPU shuffled BN.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..components.base import StepContext
from ..components.ema import EMATeacher
from ..components.gather import gather_no_grad, global_rows, rank, rank_rows, world_size
from ..components.queue import FeatureQueue
from ..components.schedules import Cosine
from ..config_checks import DIM_CAP, QUEUE_CAP, checked, dim
from ..errors import ConfigError
from ..heads.mlp import projection_head
from ..losses.contrastive import info_nce
from .base import Method, MethodConfig, MethodOutput, ViewBatch, register_method


def momentum_schedule(start: float, end: float | None) -> float | Cosine:
    """Constant ``start`` (MoCo v1/v2) or a half-cosine from ``start`` to ``end`` over training (MoCo v3, BYOL)."""
    return start if end is None else Cosine(start, end)


def forward_in_splits(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, splits: int) -> torch.Tensor:
    """``fn`` applied to ``splits`` strided groups of ``x`` (B, ...), rows g, g + S, g + 2S, ..., so that BN layers
    see each group alone; outputs in the order of ``x``. B must be a multiple of ``splits``.

    Strided, not contiguous: a rank's local group g is then a slice of the global group g whatever the rank's
    offset in the global batch, so synchronised BN over the ranks normalises exactly the one-process groups.
    """
    if splits == 1:
        return fn(x)
    return torch.stack([fn(x[g::splits]) for g in range(splits)], dim=1).flatten(0, 1)


@dataclass
class MoCoConfig(MethodConfig):
    temperature: float = checked(0.07, gt=0)
    # K; a multiple of the keys pushed per step (the batch, twice it when symmetric)
    queue_size: int = checked(65536, ge=1, cap=QUEUE_CAP)
    momentum: float = checked(0.999, ge=0, le=1)
    momentum_end: float | None = checked(None, ge=0, le=1)  # None: constant momentum; else a cosine from `momentum` to this
    proj_dim: int = dim(128)
    proj_hidden_dim: int = dim(512)
    proj_layers: int = checked(1, ge=1, cap=16)  # 1: MoCo v1's linear projection; 2: MoCo v2's MLP
    bn_splits: int = checked(8, ge=1, cap=DIM_CAP)  # single-device stand-in for shuffled BN (1: off)
    symmetric: bool = False  # also contrast view 2's query with view 1's key (the CIFAR demo's choice)
    mask_same_image: bool = True  # never use a queued key of the query's own image as a negative


@dataclass
class MoCoV2Config(MoCoConfig):
    temperature: float = checked(0.2, gt=0)
    proj_layers: int = checked(2, ge=1, cap=16)


@register_method("moco-v1", help="MoCo v1: momentum key encoder + queue of 65,536 keys, linear head (He et al. 2020)")
class MoCo(Method):
    """The query backbone is evaluated; the key encoder and the projection head are training-only."""

    Config = MoCoConfig
    cfg: MoCoConfig
    default_augment = "moco-v1"
    n_views = 2
    needs_sync_bn = True  # under torchrun: the BN groups of bn_splits span the global batch, as in one process
    base_lr = 0.03  # SGD at batch 256, as in the paper
    default_weight_decay = 1e-4
    test_overrides = {"queue_size": 64, "bn_splits": 2}

    def __init__(self, backbone, cfg: MoCoConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        c = self.cfg
        self.projector = projection_head(backbone.num_features, c.proj_hidden_dim, c.proj_dim, c.proj_layers,
                                         norm=None)
        self.key_encoder = EMATeacher(nn.Sequential(backbone, self.projector),
                                      momentum_schedule(c.momentum, c.momentum_end))
        self.queue = FeatureQueue(c.queue_size, c.proj_dim)
        if not c.mask_same_image and 0 < self.num_train < c.queue_size:
            warnings.warn(f"method.queue_size ({c.queue_size}) exceeds the {self.num_train} training images: the "
                          "queue holds older keys of each query's own image as negatives; set "
                          "method.mask_same_image=true or a smaller queue")

    def check_batch_size(self, batch_size: int) -> None:
        """The queue is filled in whole batches and BN groups must be equal: raise a ConfigError naming the option."""
        c = self.cfg
        pushed = global_rows(batch_size) * (2 if c.symmetric else 1)
        if c.queue_size % pushed:
            what = "twice the global batch size (symmetric loss)" if c.symmetric else "the global batch size"
            raise ConfigError(f"method.queue_size ({c.queue_size}) must be a multiple of {what} ({pushed})")
        if batch_size % c.bn_splits or batch_size // c.bn_splits < 2:
            raise ConfigError(f"method.bn_splits ({c.bn_splits}) must divide the per-process batch size "
                              f"({batch_size}) into groups of at least 2 images")

    def check_batch(self, batch: ViewBatch) -> None:
        super().check_batch(batch)
        self.check_batch_size(batch.views[0].shape[0])

    def _query(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = forward_in_splits(self.backbone, x, self.cfg.bn_splits)
        return F.normalize(self.projector(h), dim=1), h

    @torch.no_grad()
    def _key(self, x: torch.Tensor) -> torch.Tensor:
        """Keys (W·B, D) of every rank's images x (B, ...), in global-batch order, from shuffled BN groups."""
        if self.cfg.bn_splits == 1 and world_size() == 1:
            return F.normalize(self.key_encoder(x), dim=1)
        every = gather_no_grad(x)
        perm = torch.randperm(every.shape[0], device=x.device)  # the global RNG: the same on every rank
        mine = rank_rows(every[perm], x.shape[0])
        k = gather_no_grad(forward_in_splits(self.key_encoder, mine, self.cfg.bn_splits))
        return F.normalize(k[perm.argsort()], dim=1)

    def _contrast(self, q: torch.Tensor, k: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        """InfoNCE of q (B, D) over k⁺ and the queue's keys: one logit matrix against [N current keys | queue],
        k (N, D) holding the keys of every rank (N = W·B), this rank's positives at rows ``rank·B + i``.

        Masked out: the N − 1 other current keys (MoCo contrasts with the queue only) except while the queue is
        still empty, i.e. at the first step, when they are the only negatives; the queue rows not yet written
        (MoCo leaves random vectors there, easy negatives that only add noise); and, with mask_same_image, queued
        keys of the query's own image.
        """
        b, queue = q.shape[0], self.queue
        keys = torch.cat([k.float(), queue.rows])
        positive = torch.arange(b, device=q.device) + rank() * b
        empty = queue.filled == 0
        others = (torch.arange(k.shape[0], device=q.device)[None, :] != positive[:, None]) & ~empty
        unwritten = torch.arange(queue.size, device=q.device) >= queue.filled
        queue_mask = unwritten[None, :].expand(b, -1)
        if self.cfg.mask_same_image and index is not None:
            queue_mask = queue_mask | (queue.ids[None, :] == index[:, None])
        mask = torch.cat([others, queue_mask], dim=1)
        return info_nce(q.float(), keys, positive, self.cfg.temperature, mask=mask)

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        x1, x2 = batch.views
        q1, h1 = self._query(x1)
        k2 = self._key(x2)  # every rank's keys
        loss = self._contrast(q1, k2, batch.index)
        keys = k2
        ids = gather_no_grad(batch.index) if batch.index is not None else None
        if self.cfg.symmetric:
            q2, _ = self._query(x2)
            k1 = self._key(x1)
            loss = 0.5 * (loss + self._contrast(q2, k1, batch.index))
            keys = torch.cat([k2, k1])
            ids = torch.cat([ids, ids]) if ids is not None else None
        self.queue.stage(keys, ids)  # enqueued after the step: the current keys are not their own negatives
        logs = {"pos_cos": (q1.detach().float() * rank_rows(k2, q1.shape[0]).float()).sum(1).mean()}
        return MethodOutput(loss=loss, logs=logs, embedding=h1.detach())


@register_method("moco-v2", help="MoCo v2: MoCo v1 + MLP head, blur augmentation, τ 0.2 (Chen et al. 2020)")
class MoCoV2(MoCo):
    Config = MoCoV2Config
    cfg: MoCoV2Config
    default_augment = "moco-v2"
