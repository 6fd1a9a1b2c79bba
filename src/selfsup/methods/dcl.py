"""DCL and DCLW (Yeh et al. 2022, "Decoupled Contrastive Learning"): SimCLR with the positive pair taken out of
the InfoNCE denominator; DCLW also weighs each positive pair by a negative von Mises–Fisher weight (σ).

Everything but the loss is SimCLR's (backbone, MLP head, two views, negatives from every rank), as in the paper,
which changes only the loss. The loss is :func:`selfsup.losses.contrastive_variants.dcl_loss` (its docstring
says how it compares with lightly's ``DCLLoss`` and the authors' code). τ 0.1: the paper's and the authors'.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config_checks import checked
from ..losses.contrastive_variants import dcl_loss
from .base import ViewBatch, register_method
from .simclr import SimCLR, SimCLRConfig


@dataclass
class DCLConfig(SimCLRConfig):
    temperature: float = checked(0.1, gt=0)
    # None: DCL (every positive weighs 1); σ > 0: DCLW's weights 2 − N·softmax(⟨z1, z2⟩/σ)
    sigma: float | None = checked(None, gt=0, hint="None: unweighted DCL")


@dataclass
class DCLWConfig(DCLConfig):
    sigma: float | None = checked(0.5, gt=0, hint="None: unweighted DCL")


@register_method("dcl", help="DCL: SimCLR with the positive removed from the InfoNCE denominator (Yeh et al. 2022)")
class DCL(SimCLR):
    Config = DCLConfig
    cfg: DCLConfig

    def contrast(self, z1: torch.Tensor, z2: torch.Tensor, batch: ViewBatch) -> torch.Tensor:
        return dcl_loss(z1, z2, self.cfg.temperature, self.cfg.sigma)


@register_method("dclw", help="DCLW: DCL with von Mises-Fisher weighted positives, sigma 0.5 (Yeh et al. 2022)")
class DCLW(DCL):
    Config = DCLWConfig
    cfg: DCLWConfig
