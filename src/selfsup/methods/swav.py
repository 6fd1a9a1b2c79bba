"""SwAV (Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments").

backbone → projector → L2-normalise → prototype scores (B, K) for every crop. For each global crop the
Sinkhorn-Knopp codes (ε = 0.05, 3 iterations) of its scores are the target that every *other* crop predicts
from its own scores (swapped prediction, temperature 0.1). Multi-crop: 2 global + N local crops.

What prevents collapse: the equipartition constraint of Sinkhorn-Knopp (each prototype gets B/K of the batch).
With small batches (B < K) equipartition over one batch is too coarse; ``queue_size > 0`` keeps the embeddings
of earlier batches (one :class:`FeatureQueue` per global crop) and computes the codes over queue + batch.
The prototypes are frozen for the first ``freeze_prototypes_epochs`` epoch(s), as in the paper.

The prototypes are unit vectors: their rows are renormalised after every optimizer step (the engine's
``after_step``), and the forward uses the stored rows, so the gradient is that of the plain dot product
``z·c_k``, as in the paper (the authors' code renormalises at the start of each iteration, the same thing).
"""
from __future__ import annotations

import typing
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..augment.multicrop import count_global_views, group_by_size
from ..components.base import SharedPart, StepContext
from ..components.gather import gather_no_grad, rank_rows
from ..components.queue import FeatureQueue
from ..components.sinkhorn import sinkhorn_knopp
from ..config_checks import COUNT_CAP, QUEUE_CAP, checked, dim
from ..heads.mlp import projection_head
from ..heads.prototypes import Prototypes
from ..losses.clustering import swapped_prediction
from .base import Method, MethodConfig, MethodOutput, ViewBatch, register_method


@dataclass
class SwAVConfig(MethodConfig):
    proj_hidden_dim: int = dim(2048)
    proj_dim: int = dim(128)
    n_prototypes: int = dim(3000, ge=2)
    temperature: float = checked(0.1, gt=0)
    epsilon: float = checked(0.05, gt=0)  # Sinkhorn-Knopp entropy weight
    sinkhorn_iterations: int = checked(3, ge=1, cap=1000)
    freeze_prototypes_epochs: int = checked(1, ge=0, cap=COUNT_CAP)
    # per global crop; 0 = no queue (use one when batch size < n_prototypes)
    queue_size: int = checked(0, ge=0, cap=QUEUE_CAP)
    # the queue fills from the start but is used for codes from this epoch on
    queue_start_epoch: int = checked(1, ge=0, cap=COUNT_CAP)


class RenormalisedPrototypes(Prototypes, SharedPart):
    """SwAV's prototypes as a shared part: rows back on the unit sphere after every optimizer step."""

    def after_step(self, ctx: StepContext) -> None:
        self.normalize_()


@register_method("swav", help="SwAV: swapped prediction of Sinkhorn-Knopp cluster codes, multi-crop (Caron et al. 2020)")
class SwAV(Method):
    Config = SwAVConfig
    cfg: SwAVConfig
    default_augment = "multicrop"
    min_views = 2  # global crops first, then local crops
    needs_sync_bn = True  # BN statistics over the global batch, as in the paper's multi-GPU runs
    default_optimizer = "lars"
    base_lr = 0.6
    default_weight_decay = 1e-6
    supports_multicrop = True
    test_overrides = {"proj_hidden_dim": 64, "proj_dim": 32, "n_prototypes": 16, "freeze_prototypes_epochs": 0,
                      "queue_size": 32, "queue_start_epoch": 0}  # the queue in use, so the tests cover it

    N_CODE_VIEWS = 2  # codes are computed for the first two (global) crops, as in the paper

    def __init__(self, backbone, cfg: SwAVConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        c = self.cfg
        self.projector = projection_head(backbone.num_features, c.proj_hidden_dim, c.proj_dim, 2)
        self.prototypes = RenormalisedPrototypes(c.proj_dim, c.n_prototypes)
        self.queues = nn.ModuleList(
            [FeatureQueue(c.queue_size, c.proj_dim) for _ in range(self.N_CODE_VIEWS)] if c.queue_size else [])

    @torch.no_grad()
    def _codes(self, scores: torch.Tensor, z: torch.Tensor, i: int, ctx: StepContext) -> torch.Tensor:
        """Codes (B, K) for code view i: Sinkhorn over [queued embeddings; the global batch], then stage it.

        Under torchrun the scores and embeddings of every rank are gathered first, so equipartition holds over
        the global batch and every rank keeps the same queue; each rank keeps the codes of its own rows.
        """
        c = self.cfg
        b = scores.shape[0]
        scores, z = gather_no_grad(scores), gather_no_grad(z)
        n = scores.shape[0]
        if self.queues:
            q = typing.cast(FeatureQueue, self.queues[i])
            if ctx.epoch >= c.queue_start_epoch and int(q.filled) > 0:
                past = self.prototypes(q.valid().to(z.dtype))
                scores = torch.cat([scores, past])
            q.stage(z)  # enqueued after the step (components/queue.py)
        return rank_rows(sinkhorn_knopp(scores, c.epsilon, c.sinkhorn_iterations)[:n], b)

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        ctx = ctx or StepContext()
        views = batch.views
        n_code = min(self.N_CODE_VIEWS, count_global_views(views))
        frozen = ctx.epoch < self.cfg.freeze_prototypes_epochs
        zs, scores, first_h = [], [], None
        for start, end in group_by_size(views):
            h = self.backbone(torch.cat(views[start:end]))
            if first_h is None:
                first_h = h[: views[0].shape[0]]
            z = F.normalize(self.projector(h), dim=1)
            zs += list(z.chunk(end - start))
            scores += list(self.prototypes(z, frozen=frozen).chunk(end - start))
        s = torch.stack(scores)  # (V, B, K)
        codes = torch.stack([self._codes(s[i].detach(), zs[i].detach(), i, ctx) for i in range(n_code)])
        loss = swapped_prediction(s, codes, self.cfg.temperature)
        probs = torch.softmax(s[0].detach() / self.cfg.temperature, dim=-1)  # for the entropy monitors
        assert first_h is not None  # views is non-empty
        return MethodOutput(loss=loss, embedding=first_h.detach(), probs=probs)
