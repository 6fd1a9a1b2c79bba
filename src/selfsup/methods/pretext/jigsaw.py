"""Jigsaw puzzles (Noroozi & Favaro 2016, "Unsupervised Learning of Visual Representations by Solving Jigsaw
Puzzles").

The (cropped) image is cut into a 3×3 grid of tiles with gaps and random jitter; the tiles are shuffled by one of
P permutations, chosen once, greedily, for a maximal minimum Hamming distance (P = 100 by default, up to 1,000);
each tile goes through the shared backbone (the "context-free network": tiles never see each other before the
head), the 9 features are concatenated in shuffled order and a classifier predicts which permutation was used
(P-way). Each tile is standardised on its own (``tile_norm``) so tiles cannot be matched by mean and contrast.

The permutation set is a buffer: it is saved in checkpoints, so a resumed or evaluated run uses the same classes.

Evaluation: the backbone was trained on tiles (``image_size // grid - gap`` px) and is evaluated on whole images,
the data's channels, unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...augment.pretext import grid_tiles, normalize_tiles, permutation_set
from ...components.base import StepContext
from ...components.gather import global_rows, rank_rows
from ...config_checks import IMAGE_CAP, SEED_CAP, checked, dim
from ...errors import ConfigError
from ...heads.mlp import mlp
from ..base import Method, MethodConfig, MethodOutput, ViewBatch, register_method


@dataclass
class JigsawConfig(MethodConfig):
    # P: number of classes (Noroozi & Favaro: 100 best of 100/1000)
    num_permutations: int = checked(100, ge=2, le=1000)
    permutation_seed: int = checked(0, ge=0, lt=SEED_CAP)
    # 3x3 tiles (2 or 3; the permutation set is enumerated from all (grid²)! permutations)
    grid: int = checked(3, ge=2, le=3)
    gap: int = checked(2, ge=0, cap=IMAGE_CAP)  # px each tile leaves free in its cell (tile = image_size // grid - gap)
    jitter: int = checked(1, ge=0, cap=IMAGE_CAP)  # px of random shift per tile and axis (kept inside the cell)
    tile_norm: bool = True
    head_hidden_dim: int = dim(512)

    def validate(self) -> None:
        limit = min(1000, math.factorial(self.grid ** 2))
        if self.num_permutations > limit:
            raise ConfigError(f"method.num_permutations must be in [2, {limit}] for a {self.grid}x{self.grid} grid, "
                              f"got {self.num_permutations}")


@register_method("jigsaw", help="solve 3x3 jigsaw puzzles: classify the tile permutation (Noroozi & Favaro 2016)")
class Jigsaw(Method):
    permutations: torch.Tensor
    Config = JigsawConfig
    cfg: JigsawConfig
    default_augment = "crop-flip"
    n_views = 1  # one view of each image: the task makes its own inputs and targets from it
    base_lr = 0.1
    default_weight_decay = 5e-4
    test_overrides = {"num_permutations": 8, "gap": 1, "jitter": 0, "head_hidden_dim": 32}

    def __init__(self, backbone, cfg: JigsawConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        c = self.cfg
        n = c.grid ** 2
        self.register_buffer("permutations", permutation_set(c.num_permutations, n, c.permutation_seed))
        self.head = mlp([n * backbone.num_features, c.head_hidden_dim, c.num_permutations])

    def shuffle(self, x: torch.Tensor, gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Shuffled tiles ``(B, n, C, t, t)`` (slot i holds tile ``perm[i]``) and permutation labels ``(B,)``."""
        c = self.cfg
        tiles, _ = grid_tiles(x, c.grid, c.gap, c.jitter, gen)
        b, n = tiles.shape[:2]
        dev = gen.device if gen is not None else x.device
        labels = torch.randint(0, c.num_permutations, (global_rows(b),), generator=gen, device=dev)
        labels = rank_rows(labels, b).to(x.device)  # drawn for the global batch under torchrun
        order = self.permutations[labels]  # (B, n)
        shuffled = tiles[torch.arange(b, device=x.device)[:, None], order]
        return shuffled, labels

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        x = batch.views[0]
        tiles, labels = self.shuffle(x)
        b, n = tiles.shape[:2]
        flat = tiles.flatten(0, 1)
        if self.cfg.tile_norm:
            flat = normalize_tiles(flat)
        h = self.backbone(flat).view(b, n * self.backbone.num_features)
        logits = self.head(h)
        loss = F.cross_entropy(logits.float(), labels)
        acc = (logits.argmax(1) == labels).float().mean()
        return MethodOutput(loss=loss, logs={"acc": acc.detach()})
