"""VICRegL (Bardes, Ponce & LeCun 2022, "VICRegL: Self-Supervised Learning of Local Visual Features").

Two losses on two views: VICReg on the pooled features (backbone → expander, global) and VICReg on matched
positions of the last stage's feature map (each position → a small per-location MLP, local;
:func:`~selfsup.losses.local.vicregl_local_loss`): each position is paired with its nearest position in the other
view by where the two cells lie in the original image (location-based, from the crop boxes the view pipeline
records: ``needs_boxes``) and by feature distance (feature-based), keeping the ``num_matches`` closest pairs.
The loss is ``α · global + (1 − α) · local``.

Defaults: α = 0.75, the paper's main ImageNet setting (its ablation trades linear-classification accuracy,
best at α = 0.9, against dense segmentation, better at lower α; 0.75 is the value it recommends for both).
``num_matches`` = 6: the paper keeps 20 of the 49 positions of a ResNet-50's 7×7 map at 224 px; a CIFAR
ResNet's last stage at 32 px is 4×4 (16 positions), and 6 keeps the same ≈ 40 %. Expander 2048-2048-2048 as
our VICReg (8192 in the paper); local MLP 512-512-512, the paper's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..augment.pipeline import cell_centres
from ..components.base import StepContext
from ..components.gather import gather_no_grad, gather_with_grad
from ..config_checks import checked, dim
from ..heads.mlp import projection_head
from ..losses.local import vicreg_terms, vicregl_local_loss
from .base import Method, MethodConfig, MethodOutput, ViewBatch, register_method


@dataclass
class VICRegLConfig(MethodConfig):
    proj_hidden_dim: int = dim(2048)
    proj_dim: int = dim(2048)
    proj_layers: int = checked(3, ge=1, cap=16)
    map_hidden_dim: int = dim(512)
    map_dim: int = dim(512)
    map_layers: int = checked(3, ge=1, cap=16)
    alpha: float = checked(0.75, ge=0, le=1)  # weight of the global loss; 1 − α on the local one
    num_matches: int = checked(6, ge=1, cap=1 << 20)  # pairs kept per matching and direction (γ)
    sim_weight: float = checked(25.0, ge=0)  # λ
    var_weight: float = checked(25.0, ge=0)  # μ
    cov_weight: float = checked(1.0, ge=0)  # ν
    gamma: float = checked(1.0, gt=0)


@register_method("vicregl", help="VICRegL: VICReg on pooled features plus location- and feature-matched local "
                                 "features (Bardes et al. 2022)")
class VICRegL(Method):
    Config = VICRegLConfig
    cfg: VICRegLConfig
    default_augment = "byol"
    n_views = 2
    needs_boxes = True
    needs_sync_bn = True  # BN statistics over the global batch, as in the paper's multi-GPU runs
    default_optimizer = "lars"
    base_lr = 0.3
    default_weight_decay = 1e-4
    test_overrides = {"proj_hidden_dim": 64, "proj_dim": 64, "map_hidden_dim": 32, "map_dim": 32, "num_matches": 2}

    def __init__(self, backbone, cfg: VICRegLConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        c = self.cfg
        self.projector = projection_head(backbone.num_features, c.proj_hidden_dim, c.proj_dim, c.proj_layers)
        self.map_projector = projection_head(backbone.num_features, c.map_hidden_dim, c.map_dim, c.map_layers)

    def _maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled features (2B, C) and the last stage's map (2B, C, h, w)."""
        stages = self.backbone.forward_stages(x)
        fmap = stages[self.backbone.stage_names[-1]]
        if fmap.ndim != 4 or fmap.shape[1] != self.backbone.num_features:
            raise ValueError(f"vicregl needs a convolutional backbone whose last stage is a (B, "
                             f"{self.backbone.num_features}, h, w) map, got {tuple(fmap.shape)}")
        return stages["pooled"], fmap

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        c = self.cfg
        assert batch.boxes is not None  # needs_boxes: check_batch enforces it
        pooled, fmap = self._maps(torch.cat(batch.views))
        b, (ch, h, w) = batch.views[0].shape[0], fmap.shape[1:]
        z1, z2 = self.projector(pooled).chunk(2)
        local = self.map_projector(fmap.permute(0, 2, 3, 1).reshape(-1, ch)).reshape(2 * b, h * w, -1)
        m1, m2 = local.chunk(2)
        loc1, loc2 = (cell_centres(box, h, w) for box in batch.boxes)
        # both losses over the global batch, identical on every rank (components/gather.py: scaling)
        z1, z2, m1, m2 = (gather_with_grad(t) for t in (z1, z2, m1, m2))
        loc1, loc2 = gather_no_grad(loc1), gather_no_grad(loc2)
        weights = (c.sim_weight, c.var_weight, c.cov_weight, c.gamma)
        glob = vicreg_terms(z1, z2, *weights)
        loc = vicregl_local_loss(m1, m2, loc1, loc2, c.num_matches, *weights)
        loss = c.alpha * glob + (1 - c.alpha) * loc
        return MethodOutput(loss=loss, logs={"global": glob.detach(), "local": loc.detach()},
                            embedding=pooled[:b].detach())
