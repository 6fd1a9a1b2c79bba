"""EMP-SSL (Tong et al. 2023, "EMP-SSL: Towards Self-Supervised Learning in One Training Epoch").

Many fixed-size patches per image (the ``emp-ssl`` preset: 20 square crops of 1/4 of the image area) →
backbone → 3-layer projector (1024-d, L2-normalised, as in the authors' code; 1024 hidden where they use 4096,
see docs/statistical.md). Loss, per patch and averaged
over the patches: ``−R(Z_i) + λ·(−cos(z_i, z̄))`` with the total coding rate
``R(Z) = ½ log det(I + d/(b ε²) ZᵀZ)`` (:func:`~selfsup.losses.statistical.total_coding_rate`) and z̄ the mean
of the image's patch embeddings (:func:`~selfsup.losses.statistical.patch_invariance`); λ = 200, ε² = 0.2.
What prevents collapse: the coding rate grows with the volume the batch's embeddings span, so it keeps them
spread over many directions; the invariance term makes the patches of one image agree.

The backbone is evaluated on whole images, as for every method. The paper's "one epoch" counts images; one image
here costs 20 patch forwards, so this project compares EMP-SSL with the other methods at equal images × views
(equal compute, the same wall-clock budget), never at equal epochs (docs/statistical.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..components.base import StepContext
from ..config_checks import checked, dim
from ..heads.mlp import projection_head
from ..losses.statistical import patch_invariance, total_coding_rate
from .base import Method, MethodConfig, MethodOutput, ViewBatch, register_method
from .mmcr import gather_views, stack_views


@dataclass
class EMPSSLConfig(MethodConfig):
    # 4096 in the paper: at 20 patches a step its 4096x4096 layer alone costs more than the CPU backbone; at
    # 1024 the whole projector costs about a quarter of it
    proj_hidden_dim: int = dim(1024)
    proj_dim: int = dim(1024)
    proj_layers: int = checked(3, ge=1, cap=16)
    inv_weight: float = checked(200.0, ge=0)  # λ, the paper's patch_sim
    tcr_weight: float = checked(1.0, ge=0)
    eps_sq: float = checked(0.2, gt=0)  # ε² in R(Z); the authors' code names it eps


@register_method("emp-ssl", help="EMP-SSL: coding rate + invariance over many fixed-size patches (Tong et al. 2023)")
class EMPSSL(Method):
    Config = EMPSSLConfig
    cfg: EMPSSLConfig
    default_augment = "emp-ssl"
    min_views = 2
    needs_sync_bn = True
    default_optimizer = "lars"
    # the paper's batch 100 and LARS lr 0.3 (base_lr is quoted at batch 256: 0.3 x 256 / 100). At batch 256 a
    # 10-minute CPU run took 61 steps and ended below random init; at 100 it takes ~330 and learns
    # (docs/benchmarks.md)
    default_batch_size = 100
    base_lr = 0.3 * 256 / 100
    default_weight_decay = 1e-4
    test_overrides = {"proj_hidden_dim": 64, "proj_dim": 16}

    def __init__(self, backbone, cfg: EMPSSLConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        c = self.cfg
        self.projector = projection_head(backbone.num_features, c.proj_hidden_dim, c.proj_dim, c.proj_layers)

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        c, v = self.cfg, len(batch.views)
        h = self.backbone(torch.cat(batch.views))
        z = F.normalize(stack_views(self.projector(h), v), dim=-1)
        # the coding rate over the global batch; invariance is per image, the gathered mean is the same
        z = gather_views(z)
        tcr = total_coding_rate(z, c.eps_sq).mean()
        inv = patch_invariance(z)
        loss = -c.tcr_weight * tcr + c.inv_weight * inv
        return MethodOutput(loss=loss, logs={"coding_rate": tcr.detach(), "patch_cosine": -inv.detach()},
                            embedding=h[: batch.views[0].shape[0]].detach())
