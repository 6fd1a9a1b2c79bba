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
from ...errors import ConfigError
from ...heads.mlp import mlp
from ..base import Method, MethodOutput, ViewBatch, register_method


@dataclass
class JigsawConfig:
    num_permutations: int = 100  # P: number of classes (Noroozi & Favaro: 100 best of 100/1000)
    permutation_seed: int = 0
    grid: int = 3  # 3x3 tiles (2 or 3; the permutation set is enumerated from all (grid²)! permutations)
    gap: int = 2  # px each tile leaves free in its cell (tile = image_size // grid - gap)
    jitter: int = 1  # px of random shift per tile and axis (kept inside the cell)
    tile_norm: bool = True
    head_hidden_dim: int = 512

    def validate(self) -> None:
        if self.grid not in (2, 3):
            raise ConfigError(f"method.grid must be 2 or 3, got {self.grid}")
        limit = min(1000, math.factorial(self.grid ** 2))
        if not 2 <= self.num_permutations <= limit:
            raise ConfigError(f"method.num_permutations must be in [2, {limit}], got {self.num_permutations}")
        if self.gap < 0 or self.jitter < 0:
            raise ConfigError(f"method.gap and method.jitter must be >= 0, got {self.gap} and {self.jitter}")
        if self.head_hidden_dim < 1:
            raise ConfigError(f"method.head_hidden_dim must be >= 1, got {self.head_hidden_dim}")


@register_method("jigsaw", help="solve 3x3 jigsaw puzzles: classify the tile permutation (Noroozi & Favaro 2016)")
class Jigsaw(Method):
    permutations: torch.Tensor
    Config = JigsawConfig
    default_augment = "crop-flip"
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
