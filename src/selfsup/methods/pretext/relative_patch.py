"""Relative patch location (Doersch et al. 2015, "Unsupervised Visual Representation Learning by Context
Prediction").

The (cropped) image is cut into a 3×3 grid of tiles separated by a gap and shifted by a random jitter, so that
low-level cues (continuing edges, textures across the border) cannot give away where a tile came from. Given
the centre tile and one of its 8 neighbours, a classifier on the two concatenated backbone features predicts
the neighbour's position (8-way). Chromatic aberration is removed by colour dropping (keep one random channel,
Gaussian noise in the others) or colour projection (remove the green-magenta component); both are in the paper.

Here the 9 tiles of an image are encoded once and all 8 (centre, neighbour) pairs are classified by default
(8 labels per image for the cost of ~0.75 of a full-image forward at 32 px); ``all_pairs=false`` samples one
neighbour per image as in the paper.

Evaluation: the backbone was trained on tiles (``image_size // 3 - gap`` px) and is evaluated on whole images,
the data's channels, unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...augment.pretext import color_drop, color_project, grid_tiles
from ...components.base import StepContext
from ...components.gather import global_rows, rank_rows
from ...config_checks import IMAGE_CAP, checked, dim
from ...heads.mlp import mlp
from ..base import Method, MethodConfig, MethodOutput, ViewBatch, register_method

NEIGHBOURS = (0, 1, 2, 3, 5, 6, 7, 8)  # row-major grid positions around the centre (4); label = index here
CENTRE = 4


def neighbour_offsets() -> torch.Tensor:
    """(8, 2) grid offset (row, col) in {-1, 0, 1} of each label's neighbour relative to the centre."""
    return torch.tensor([(p // 3 - 1, p % 3 - 1) for p in NEIGHBOURS])


@dataclass
class RelativePatchConfig(MethodConfig):
    gap: int = checked(2, ge=0, cap=IMAGE_CAP)  # px each tile leaves free in its cell (tile = image_size // 3 - gap)
    jitter: int = checked(1, ge=0, cap=IMAGE_CAP)  # px of random shift per tile and axis (kept inside the cell)
    # drop | project | none  (against chromatic aberration; no-op on 1-channel data)
    color: str = checked("drop", choices=("drop", "project", "none"))
    all_pairs: bool = True  # classify all 8 neighbours of each centre; False: one random neighbour per image
    head_hidden_dim: int = dim(512)


@register_method("relative-patch",
                 help="predict the position of a neighbouring tile from a 3x3 grid (Doersch et al. 2015)")
class RelativePatch(Method):
    Config = RelativePatchConfig
    cfg: RelativePatchConfig
    default_augment = "crop-flip"
    n_views = 1  # one view of each image: the task makes its own inputs and targets from it
    base_lr = 0.1
    default_weight_decay = 5e-4
    test_overrides = {"gap": 1, "jitter": 0, "head_hidden_dim": 32}

    def __init__(self, backbone, cfg: RelativePatchConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        d = backbone.num_features
        self.head = mlp([2 * d, self.cfg.head_hidden_dim, 8])

    def tiles(self, x: torch.Tensor, gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The 9 tiles ``(B, 9, C, t, t)`` with the colour treatment applied, and their corners ``(B, 9, 2)``."""
        c = self.cfg
        tiles, corners = grid_tiles(x, 3, c.gap, c.jitter, gen)
        if c.color != "none":
            flat = tiles.flatten(0, 1)
            flat = color_drop(flat, gen) if c.color == "drop" else color_project(flat)
            tiles = flat.view_as(tiles)
        return tiles, corners

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        x = batch.views[0]
        b = x.shape[0]
        tiles, _ = self.tiles(x)
        if self.cfg.all_pairs:
            h = self.backbone(tiles.flatten(0, 1)).view(b, 9, -1)
            centre = h[:, CENTRE : CENTRE + 1].expand(-1, 8, -1)
            pairs = torch.cat([centre, h[:, list(NEIGHBOURS)]], dim=2).flatten(0, 1)  # (B·8, 2D)
            labels = torch.arange(8, device=x.device).repeat(b)
        else:
            labels = rank_rows(torch.randint(0, 8, (global_rows(b),), device=x.device), b)  # splittable draw
            pos = torch.tensor(NEIGHBOURS, device=x.device)[labels]
            ar = torch.arange(b, device=x.device)
            two = torch.stack([tiles[:, CENTRE], tiles[ar, pos]], dim=1)  # (B, 2, C, t, t)
            pairs = self.backbone(two.flatten(0, 1)).view(b, -1)
        logits = self.head(pairs)
        loss = F.cross_entropy(logits.float(), labels)
        acc = (logits.argmax(1) == labels).float().mean()
        return MethodOutput(loss=loss, logs={"acc": acc.detach()})
