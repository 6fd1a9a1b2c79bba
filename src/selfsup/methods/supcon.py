"""SupCon (Khosla et al. 2020, "Supervised Contrastive Learning"): SimCLR whose positives are every view of every
image of the anchor's class. It trains on the labels: a supervised reference (an upper bound for the
self-supervised methods at the same budget and evaluation), not a self-supervised method.

Everything but the loss is SimCLR's (two views, MLP head, the batch gathered from every rank, the labels with
it). The loss is L^sup_out (Eq. 2, :func:`selfsup.losses.contrastive_variants.supcon_loss`), τ 0.1 as in the
paper. With every label distinct it is SimCLR's NT-Xent exactly. ``needs_labels``: the engine passes the
dataset's labels and refuses a training split without them (one line naming ``method.name``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..components.gather import gather_no_grad
from ..config_checks import checked
from ..losses.contrastive_variants import supcon_loss
from .base import ViewBatch, register_method
from .simclr import SimCLR, SimCLRConfig


@dataclass
class SupConConfig(SimCLRConfig):
    temperature: float = checked(0.1, gt=0)


@register_method("supcon", help="SupCon: contrastive loss with same-class positives (uses labels: a supervised "
                                "reference) (Khosla et al. 2020)")
class SupCon(SimCLR):
    Config = SupConConfig
    cfg: SupConConfig
    needs_labels = True

    def contrast(self, z1: torch.Tensor, z2: torch.Tensor, batch: ViewBatch) -> torch.Tensor:
        assert batch.labels is not None  # check_batch: needs_labels
        labels = gather_no_grad(batch.labels)  # the labels of every rank's images, in the order of z1, z2
        return supcon_loss(torch.stack([z1, z2]), labels, self.cfg.temperature)
