"""LeJEPA (Balestriero & LeCun 2025, "LeJEPA: Provable and Scalable Self-Supervised Learning Without the
Heuristics").

backbone → projector (3-layer MLP, 2048 hidden with BN, 128-d, as in the authors' minimal example) on every view
(global crops first, then local crops). Loss ``(1 − λ)·pred + λ·SIGReg`` with one trade-off λ (0.05, the paper's
default):

- pred (:func:`~selfsup.losses.statistical.lejepa_prediction`): every view's embedding predicts the mean
  embedding of its image's global views (MSE), no stop-gradient;
- SIGReg (:func:`~selfsup.losses.statistical.sigreg`): the embeddings of each view, projected on ``num_slices``
  random unit directions, are tested against N(0, 1) with the Epps–Pulley statistic, averaged over the
  directions and the views. The directions are drawn again at every step from a generator seeded with the step
  number, on the CPU: the same on every rank, on every device, for every micro-batch of a step, and after a
  resume.

What prevents collapse: SIGReg pulls the embedding distribution towards an isotropic Gaussian, which a collapsed
(or low-rank) embedding is not. No teacher, no predictor network, no stop-gradient. Only ``backbone(x) → (B, D)``
is used, so ResNets, ConvNets and ViTs all work; crops of each size go through the backbone in one batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..augment.multicrop import count_global_views, group_by_size
from ..components.base import StepContext
from ..config_checks import checked, dim
from ..heads.mlp import projection_head
from ..losses.statistical import lejepa_prediction, sigreg
from .base import Method, MethodConfig, MethodOutput, ViewBatch, register_method
from .mmcr import gather_views, stack_views


@dataclass
class LeJEPAConfig(MethodConfig):
    proj_hidden_dim: int = dim(2048)
    proj_dim: int = dim(128)
    proj_layers: int = checked(3, ge=1, cap=16)
    lambd: float = checked(0.05, ge=0, le=1)  # λ: loss = (1 − λ)·pred + λ·SIGReg
    num_slices: int = checked(256, ge=1, cap=65536)  # M random directions per step
    t_max: float = checked(3.0, gt=0)  # Epps–Pulley quadrature over [−t_max, t_max]
    n_points: int = checked(17, ge=2, cap=1025)  # trapezoid knots on [0, t_max]


def slice_directions(dim: int, num_slices: int, step: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(dim, num_slices) unit columns drawn from N(0, I) by a CPU generator seeded with ``step``, then moved to
    ``device``: a function of the step alone (ranks, devices and resumed runs draw the same directions)."""
    g = torch.Generator().manual_seed(int(step))
    a = torch.randn(dim, num_slices, generator=g)
    return (a / a.norm(dim=0, keepdim=True)).to(device)


@register_method("lejepa", help="LeJEPA: SIGReg (Epps-Pulley on random projections) + global-view prediction "
                                "(Balestriero & LeCun 2025)")
class LeJEPA(Method):
    Config = LeJEPAConfig
    cfg: LeJEPAConfig
    default_augment = "multicrop"  # 2 global + 6 local crops, the paper's multi-crop at CIFAR scale
    min_views = 2  # global crops first, then local crops
    supports_multicrop = True
    needs_sync_bn = True
    default_optimizer = "adamw"
    base_lr = 2e-3  # the authors' minimal example: AdamW, lr 2e-3 at batch 256, weight decay 0.05
    default_weight_decay = 0.05
    test_overrides = {"proj_hidden_dim": 64, "proj_dim": 16, "num_slices": 32}

    def __init__(self, backbone, cfg: LeJEPAConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        c = self.cfg
        self.projector = projection_head(backbone.num_features, c.proj_hidden_dim, c.proj_dim, c.proj_layers)

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        c, ctx = self.cfg, ctx or StepContext()
        views = batch.views
        z_parts, first_h = [], None
        for start, end in group_by_size(views):  # one backbone pass per crop size
            h = self.backbone(torch.cat(views[start:end]))
            if first_h is None:
                first_h = h[: views[0].shape[0]]
            z_parts.append(stack_views(self.projector(h), end - start))
        z = torch.cat(z_parts)  # (V, B, D), global views first
        pred = lejepa_prediction(z, count_global_views(views))  # a per-image mean: the local batch suffices
        directions = slice_directions(c.proj_dim, c.num_slices, ctx.step, z.device)
        reg = sigreg(gather_views(z), directions, c.t_max, c.n_points)  # the test sees the global batch
        loss = (1 - c.lambd) * pred + c.lambd * reg
        assert first_h is not None  # views is non-empty
        return MethodOutput(loss=loss, logs={"prediction": pred.detach(), "sigreg": reg.detach()},
                            embedding=first_h.detach())
