"""NPID / InstDisc (Wu, Xiong, Yu & Lin 2018, "Unsupervised Feature Learning via Non-Parametric Instance Discrimination").

Every training image is its own class. A memory bank holds one L2-normalised 128-d feature v_i per image; the
non-parametric softmax ``P(i | f) = exp(v_i·f/τ) / Σ_j exp(v_j·f/τ)`` over all n images is approximated with m
negatives drawn uniformly from the bank (never the image itself), either by

- ``loss=nce`` (the paper, eq. 5-6): binary NCE, data vs. noise, with the normaliser Z estimated by Monte Carlo
  on the first step and then held fixed (a buffer, so resumed runs keep it);
- ``loss=softmax``: cross-entropy over the positive and the m negatives (the "NCE-softmax" of later work).

After each optimizer step the bank moves towards the batch's features with momentum 0.5.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..components.base import StepContext
from ..components.gather import gather_no_grad, global_rows, world_size
from ..components.memory_bank import MemoryBank
from ..config_checks import QUEUE_CAP, checked, dim
from ..heads.mlp import projection_head
from ..losses.contrastive import info_nce, nce_log_norm, nce_loss
from ..losses.precision import fp32_loss
from .base import Method, MethodConfig, MethodOutput, ViewBatch, register_method

BANK_LOSSES = ("nce", "softmax")


def global_log_norm(neg_logits: torch.Tensor) -> torch.Tensor:
    """:func:`nce_log_norm` over the noise logits (N, m) of every rank's rows (the local estimate in one process)."""
    if world_size() == 1:
        return nce_log_norm(neg_logits)
    lse = torch.logsumexp(neg_logits.detach().float().flatten(), 0).reshape(1)
    return torch.logsumexp(gather_no_grad(lse), 0) - math.log(global_rows(neg_logits.shape[0]))


class BankLoss(torch.nn.Module):
    """L(m, x): x (B, D) must match its bank row against negatives drawn from the bank; ``keys`` (B, 1 + K, D)
    holds the bank row in column 0 and the K negatives after it (:meth:`MemoryBank.positives_and_negatives`).

    Holds NCE's log-normaliser ``c = log(m·Z/n)``: −inf until the first step estimates it, then fixed (Wu et al.).
    """
    log_norm: torch.Tensor

    def __init__(self, loss: str, temperature: float) -> None:
        super().__init__()
        self.loss, self.temperature = loss, temperature
        self.register_buffer("log_norm", torch.tensor(float("-inf")))

    @fp32_loss
    def forward(self, x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x.float(), dim=1)
        if self.loss == "softmax":
            target = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
            return info_nce(x, keys, target, self.temperature)
        logits = torch.einsum("bd,bkd->bk", x, keys) / self.temperature
        if self.training:  # estimate Z once, from the first global batch (no host sync to test "once")
            first = torch.isinf(self.log_norm)
            self.log_norm.copy_(torch.where(first, global_log_norm(logits[:, 1:]), self.log_norm))
        return nce_loss(logits[:, 0], logits[:, 1:], self.log_norm)


@dataclass
class NPIDConfig(MethodConfig):
    temperature: float = checked(0.07, gt=0)
    num_negatives: int = checked(4096, ge=1, cap=QUEUE_CAP)
    bank_momentum: float = checked(0.5, ge=0, lt=1)
    # softmax (NCE-softmax: CE over 1 + K) | nce (the paper's binary NCE)
    loss: str = checked("softmax", choices=BANK_LOSSES)
    proj_dim: int = dim(128)
    proj_hidden_dim: int = dim(512)
    proj_layers: int = checked(1, ge=1, cap=16)  # the paper's linear 128-d embedding


@register_method("npid", help="NPID/InstDisc: instance discrimination, memory-bank negatives (Wu et al. 2018)")
class NPID(Method):
    """One view per image; the backbone is evaluated, the 128-d embedding and the bank are training-only."""

    Config = NPIDConfig
    cfg: NPIDConfig
    default_augment = "instdisc"
    n_views = 1
    needs_index = True
    base_lr = 0.03
    default_weight_decay = 5e-4  # the paper's value
    test_overrides = {"num_negatives": 16}

    def __init__(self, backbone, cfg: NPIDConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        c = self.cfg
        self.projector = projection_head(backbone.num_features, c.proj_hidden_dim, c.proj_dim, c.proj_layers)
        self.bank = MemoryBank(self.num_train, c.proj_dim, c.bank_momentum, owner="npid")
        self.criterion = BankLoss(c.loss, c.temperature)

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        h = self.backbone(batch.views[0])
        f = F.normalize(self.projector(h), dim=1)
        idx = batch.index
        assert idx is not None  # needs_index: check_batch enforces it
        loss = self.criterion(f, self.bank.positives_and_negatives(idx, self.cfg.num_negatives))
        self.bank.stage(idx, f, ctx)
        return MethodOutput(loss=loss, embedding=h.detach())
