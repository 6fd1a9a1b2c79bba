"""MSN (Assran et al. 2022, "Masked Siamese Networks for Label-Efficient Learning") and PMSN (Assran et al. 2023,
"The Hidden Uniform Cluster Prior in Self-Supervised Learning").

Views (the ``multicrop`` preset): the first global crop is the *target* view, unmasked, encoded by the EMA teacher
(backbone + projector); every other crop is an *anchor*: the second global crop ("random" view) and the local
crops ("focal" views), each with a fraction ``mask_ratio`` of its patches dropped (``ViT.embed(keep=...)``, random
per sample; the authors' code drops the same patches for the whole batch).

Both branches: [CLS] token → 3-layer projector (BatchNorm, GELU) → L2-normalised → cosine to K learnable,
L2-normalised prototypes. Anchors: ``p = softmax(cos / τ)`` (τ = 0.1); targets: the same at the sharper
``τ · T`` (T = 0.25, MSN's sharpening ``p^(1/T)`` renormalised), optionally balanced by 3 Sinkhorn-Knopp
iterations over the global batch (``sinkhorn``, on in the authors' configs). Loss: the cross-entropy of every
anchor against its image's target (``losses/distill_vit.anchor_target_cross_entropy``) plus
``memax_weight ·`` the prior-matching term on the anchors' prediction averaged over the global batch
(``losses/distill_vit.prior_kl``):

- ``prior=uniform`` (``msn``): ``log K − H(p̄)``, MSN's mean-entropy maximisation (me-max);
- ``prior=power-law`` (``pmsn``): ``KL(p̄ ‖ π)`` with ``π_k ∝ k^(−power_law_exponent)`` (0.25), p̄'s entries
  ranked against π's (``prior_ranked``), for class-imbalanced data.

The prototypes are outside the teacher (both branches use the current ones; the targets are detached).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..augment.masking import random_masking
from ..augment.multicrop import group_by_size
from ..components.base import StepContext
from ..components.ema import EMATeacher
from ..components.gather import all_reduce_sum_with_grad, global_rows
from ..components.schedules import Cosine
from ..components.sinkhorn_dist import distributed_sinkhorn
from ..config_checks import checked, dim
from ..heads.mlp import mlp
from ..losses.distill_vit import anchor_target_cross_entropy, prior_kl
from .base import Method, MethodConfig, MethodOutput, ViewBatch, register_method
from .mae import require_vit
from .vit_student import per_view_rows

if TYPE_CHECKING:
    from ..backbones.vit import ViT

PRIORS = ("uniform", "power-law")


def power_law_prior(k: int, exponent: float) -> torch.Tensor:
    """PMSN's prior over K ranked prototypes: ``π_k ∝ k^(−exponent)``, k = 1 … K, summing to 1 (float64)."""
    ranks = torch.arange(1, k + 1, dtype=torch.float64)
    p = ranks ** (-exponent)
    return p / p.sum()


@dataclass
class MSNConfig(MethodConfig):
    proj_hidden_dim: int = dim(2048)
    proj_dim: int = dim(256)
    head_bn: bool = True  # BatchNorm in the projector (the authors' configs)
    n_prototypes: int = dim(1024, ge=2)  # K (1024 for ViT-S/B in the paper)
    temperature: float = checked(0.1, gt=0)  # τ of the anchors
    sharpen: float = checked(0.25, gt=0, le=1)  # T: targets at temperature τ·T
    mask_ratio: float = checked(0.15, gt=0, lt=1)  # patches dropped from each anchor (ViT-S/16: 0.15; ViT-B: 0.3)
    memax_weight: float = checked(1.0, ge=0)
    prior: str = checked("uniform", choices=PRIORS)  # uniform (MSN's me-max) | power-law (PMSN)
    power_law_exponent: float = checked(0.25, gt=0, cap=100)
    prior_ranked: bool = True  # power law: rank the prototypes by usage before matching the prior
    sinkhorn: bool = True  # balance the targets with Sinkhorn-Knopp (the authors' configs)
    sinkhorn_iterations: int = checked(3, ge=1, cap=1000)
    momentum_base: float = checked(0.996, ge=0, le=1)  # teacher EMA: cosine from momentum_base to momentum_final
    momentum_final: float = checked(1.0, ge=0, le=1)


@dataclass
class PMSNConfig(MSNConfig):
    prior: str = checked("power-law", choices=PRIORS)
    sinkhorn: bool = False  # equal-mass Sinkhorn targets would pull against a non-uniform prior


class _CLSProjector(nn.Module):
    """backbone's final-norm [CLS] token → projector: the target branch the EMA teacher copies."""

    def __init__(self, backbone: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.backbone, self.projector = backbone, projector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(cast("ViT", self.backbone).forward_tokens(x)[:, 0])


@register_method("msn", help="MSN: masked anchor views match an EMA teacher's prototype assignment of the unmasked "
                             "view, me-max regulariser, ViT (Assran et al. 2022)")
class MSN(Method):
    """The student backbone is evaluated (``eval_backbone``); the paper reports the target encoder, close to it."""
    prior: torch.Tensor | None  # PMSN's power law (K,), rebuilt from the config (not in checkpoints); None: uniform

    Config = MSNConfig
    cfg: MSNConfig
    default_augment = "multicrop"
    min_views = 2  # the target crop, then the anchors (a global crop and the local crops)
    needs_sync_bn = True  # the projector's BatchNorm over the global batch
    default_optimizer = "adamw"
    base_lr = 2.5e-4  # MSN: 1e-3 at batch 1024, AdamW, weight decay 0.04 (→ 0.4 in the paper)
    default_weight_decay = 0.04
    supports_multicrop = True
    test_backbone = "vit-test"
    test_overrides = {"proj_hidden_dim": 32, "proj_dim": 16, "n_prototypes": 32}

    def __init__(self, backbone, cfg: MSNConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        require_vit(backbone, self.method_name())
        c = self.cfg
        d = backbone.num_features
        self.projector = mlp([d, c.proj_hidden_dim, c.proj_hidden_dim, c.proj_dim],
                             norm="bn" if c.head_bn else None, act=nn.GELU)
        self.prototypes = nn.Parameter(torch.empty(c.n_prototypes, c.proj_dim))
        bound = c.proj_dim ** -0.5  # MSN's init: uniform in ±1/sqrt(dim)
        nn.init.uniform_(self.prototypes, -bound, bound)
        student = _CLSProjector(self.backbone, self.projector)
        self.teacher = EMATeacher(student, Cosine(c.momentum_base, c.momentum_final))
        prior = power_law_prior(c.n_prototypes, c.power_law_exponent) if c.prior == "power-law" else None
        self.register_buffer("prior", prior.float() if prior is not None else None, persistent=False)

    def _anchors(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Projections (A, B, D) of the anchor crops (views 1 …), patches dropped; the first anchor's [CLS] (B, D)."""
        bb = cast("ViT", self.backbone)
        b = views[0].shape[0]
        anchors, first = [], None
        for start, end in group_by_size(views[1:]):
            x = torch.cat(views[1 + start: 1 + end])
            grid = bb.grid_for(x)
            n = grid[0] * grid[1]
            keep = per_view_rows(lambda rows: random_masking(rows, n, self.cfg.mask_ratio).ids_keep,
                                 end - start, b).to(x.device)
            h = bb.forward_tokens(x, keep=keep)[:, 0]
            if first is None:
                first = h[:b]
            anchors += list(self.projector(h).chunk(end - start))
        assert first is not None  # min_views = 2: at least one anchor
        return torch.stack(anchors), first

    def _targets(self, target_logits: torch.Tensor) -> torch.Tensor:
        """(B, K) target distributions from the teacher's cosines: sharpened, then Sinkhorn-balanced if asked."""
        c = self.cfg
        sharp = c.temperature * c.sharpen
        if not c.sinkhorn:
            return torch.softmax(target_logits / sharp, dim=-1)
        # Sinkhorn on the sharpened probabilities themselves (log-probabilities at ε = 1), as the authors' code
        return distributed_sinkhorn(F.log_softmax(target_logits / sharp, dim=-1), 1.0, c.sinkhorn_iterations)

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        c = self.cfg
        views = batch.views
        z_a, first_h = self._anchors(views)
        protos = F.normalize(self.prototypes, dim=-1)
        anchor_logits = F.normalize(z_a, dim=-1) @ protos.T  # (A, B, K) cosines
        with torch.no_grad():
            z_t = self.teacher(views[0])
            targets = self._targets(F.normalize(z_t, dim=-1) @ protos.detach().T)
        ce = anchor_target_cross_entropy(anchor_logits, targets, c.temperature)
        probs = torch.softmax(anchor_logits.float() / c.temperature, dim=-1)
        # the anchors' mean prediction over the global batch (all-reduced with gradients: the same term on every rank)
        rows = probs.shape[0] * global_rows(probs.shape[1])
        mean_probs = all_reduce_sum_with_grad(probs.sum(dim=(0, 1))) / rows
        reg = prior_kl(mean_probs, self.prior, ranked=c.prior_ranked and self.prior is not None)
        loss = ce + c.memax_weight * reg
        logs = {"cross_entropy": ce.detach(), "prior_kl": reg.detach(),
                "ema_momentum": self.teacher.last_momentum.detach().clone()}
        return MethodOutput(loss=loss, logs=logs, embedding=first_h.detach(), probs=targets.detach())


@register_method("pmsn", help="PMSN: MSN with a power-law prior on the prototypes' usage instead of the uniform one "
                              "(Assran et al. 2023)")
class PMSN(MSN):
    """MSN with ``prior=power-law`` (and no Sinkhorn balancing) by default."""

    Config = PMSNConfig
    cfg: PMSNConfig
