"""PIRL (Misra & van der Maaten 2020, "Self-Supervised Learning of Pretext-Invariant Representations").

The representation of an image I should not change when I is cut into a 3×3 jigsaw and shuffled. Two heads on
one shared backbone:

- f(v_I): backbone(I) → linear → 128-d;
- g(v_It): each of the 9 shuffled tiles → backbone → linear → 128-d, the 9 concatenated in their shuffled order
  → linear → 128-d.

A memory bank holds m_I, a momentum-0.5 average of f(v_I), and supplies negatives m_I' (I' ≠ I). The loss is
``λ·L(m_I, g(v_It)) + (1 − λ)·L(m_I, f(v_I))`` with λ = 0.5 (eq. 5), L being NCE against the bank (eq. 4) or
its softmax form. The first view of the pipeline is I; the jigsaw is cut from the second, separately augmented
view (the paper also augments each tile on its own; here the tiles share their view's augmentation).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..augment.pretext import jigsaw_tiles, permute_tiles, random_permutations
from ..components.base import StepContext
from ..components.gather import global_rows, rank_rows
from ..components.memory_bank import MemoryBank
from ..config_checks import QUEUE_CAP, checked, dim
from ..heads.mlp import mlp
from .base import Method, MethodConfig, MethodOutput, ViewBatch, register_method
from .npid import BANK_LOSSES, BankLoss


@dataclass
class PIRLConfig(MethodConfig):
    temperature: float = checked(0.07, gt=0)
    num_negatives: int = checked(4096, ge=1, cap=QUEUE_CAP)  # the paper draws 32,000
    bank_momentum: float = checked(0.5, ge=0, lt=1)
    # softmax (NCE-softmax: CE over 1 + K) | nce (the paper's binary NCE)
    loss: str = checked("softmax", choices=BANK_LOSSES)
    # λ: weight of the jigsaw term, 1 − λ goes to the image term
    lambda_jigsaw: float = checked(0.5, ge=0, le=1)
    proj_dim: int = dim(128)
    grid: int = checked(3, ge=2, cap=16)


@register_method("pirl", help="PIRL: invariance to a 3x3 jigsaw, memory-bank negatives (Misra & van der Maaten 2020)")
class PIRL(Method):
    """The shared backbone is evaluated; heads f, g and the memory bank are training-only."""

    Config = PIRLConfig
    cfg: PIRLConfig
    default_augment = "moco-v1"  # PIRL uses the InstDisc augmentation for I
    n_views = 2  # the image, and the source of its jigsaw tiles
    needs_index = True
    base_lr = 0.03
    default_weight_decay = 1e-4
    test_overrides = {"num_negatives": 16}

    def __init__(self, backbone, cfg: PIRLConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        c = self.cfg
        d = backbone.num_features
        self.head_f = mlp([d, c.proj_dim], norm=None)
        self.head_tile = mlp([d, c.proj_dim], norm=None)
        self.head_g = mlp([c.grid * c.grid * c.proj_dim, c.proj_dim], norm=None)
        self.bank = MemoryBank(self.num_train, c.proj_dim, c.bank_momentum, owner="pirl")
        self.criterion = BankLoss(c.loss, c.temperature)

    def jigsaw_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """g(v_It) for images x (B, C, H, W): tiles shuffled per sample, encoded one by one, then combined."""
        b, g = x.shape[0], self.cfg.grid
        tiles = jigsaw_tiles(x, g)  # (B, g², C, h, w)
        perms = rank_rows(random_permutations(global_rows(b), g * g, device=x.device), b)  # drawn for the global batch
        tiles = permute_tiles(tiles, perms)
        z = self.head_tile(self.backbone(tiles.flatten(0, 1)))  # (B·g², proj_dim)
        return self.head_g(z.reshape(b, -1))

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        x, x_jig = batch.views
        h = self.backbone(x)
        f = F.normalize(self.head_f(h), dim=1)
        g = F.normalize(self.jigsaw_embedding(x_jig), dim=1)
        idx = batch.index
        assert idx is not None  # needs_index: check_batch enforces it
        keys = self.bank.positives_and_negatives(idx, self.cfg.num_negatives)  # m_I and the same negatives for both
        lam = self.cfg.lambda_jigsaw
        loss_jig, loss_img = self.criterion(g, keys), self.criterion(f, keys)
        self.bank.stage(idx, f, ctx)
        return MethodOutput(loss=lam * loss_jig + (1 - lam) * loss_img,
                            logs={"loss_jigsaw": loss_jig.detach(), "loss_image": loss_img.detach()},
                            embedding=h.detach())
