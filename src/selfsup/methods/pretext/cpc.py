"""Contrastive Predictive Coding for images (van den Oord et al. 2018, "Representation Learning with Contrastive
Predictive Coding"; Hénaff et al. 2019, "Data-Efficient Image Recognition with CPC").

The view is cut into an overlapping grid of patches (Hénaff: 7×7 patches of 64 px, stride 32, from 256 px; here
``patch`` 8 / ``stride`` 4 gives the same 7×7 layout at 32 px). Each patch is encoded by the backbone into a code
``z`` (its pooled features), the grid of codes goes through a masked, PixelCNN-style context network whose output
at row ``i`` depends only on rows ``<= i``, and a linear map ``W_k`` per distance predicts the codes ``k`` rows
below (``k = 1 … steps``). The loss is InfoNCE (:func:`~selfsup.losses.pretext.cpc_info_nce`, through
:func:`~selfsup.losses.contrastive.info_nce`): each prediction against every other patch of the batch (all
positions of all images) as negatives, averaged over the distances. Cosine similarities with a temperature by
default (``normalize``); ``normalize=false, temperature=1`` is the papers' raw bilinear score.

Evaluation: the backbone was trained on patches and is evaluated on whole images with the data's channels.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...augment.pretext import patch_grid
from ...components.base import StepContext
from ...components.gather import gather_with_grad
from ...config_checks import IMAGE_CAP, checked
from ...losses.pretext import cpc_info_nce
from ..base import Method, MethodConfig, MethodOutput, ViewBatch, register_method


class RowCausalContext(nn.Module):
    """Masked convolutions over a code grid ``(B, D, R, W)``: output row ``i`` sees rows ``<= i`` only.

    Each residual block is ReLU → conv with a (2, 3) kernel whose input is padded by one row above and none
    below, so a block reaches one row up and one column left/right; ``layers`` blocks see ``layers`` rows up.
    """

    def __init__(self, dim: int, layers: int = 2) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, (2, 3)) for _ in range(layers))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        c = z
        for conv in self.convs:
            c = c + conv(F.pad(F.relu(c), (1, 1, 1, 0)))  # pad (left, right, top, bottom)
        return c


@dataclass
class CPCConfig(MethodConfig):
    patch: int = checked(8, ge=1, cap=IMAGE_CAP)  # patch side in px
    stride: int = checked(4, ge=1, cap=IMAGE_CAP)  # grid stride in px (overlap = patch - stride)
    steps: int = checked(2, ge=1, cap=IMAGE_CAP)  # predict 1 … steps rows below (Hénaff et al.: up to 5 of 7 rows)
    context_layers: int = checked(2, ge=1, cap=64)
    temperature: float = checked(0.1, gt=0)
    normalize: bool = True


@register_method("cpc",
                 help="CPC: predict patch codes rows below with InfoNCE over a patch grid (van den Oord et al. 2018)")
class CPC(Method):
    Config = CPCConfig
    cfg: CPCConfig
    default_augment = "crop-flip"
    n_views = 1  # one view of each image: the task makes its own inputs and targets from it
    default_optimizer = "adamw"
    base_lr = 1e-3
    default_weight_decay = 1e-4

    def __init__(self, backbone, cfg: CPCConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        c = self.cfg
        d = backbone.num_features
        self.context = RowCausalContext(d, c.context_layers)
        self.predictors = nn.ModuleList(nn.Conv2d(d, d, 1, bias=False) for _ in range(c.steps))

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        c = self.cfg
        x = batch.views[0]
        patches = patch_grid(x, c.patch, c.stride)  # (B, R, W, C, p, p)
        b, r, w = patches.shape[:3]
        if r <= c.steps:
            raise ValueError(f"cpc: a {r}-row patch grid (image {x.shape[-1]} px, patch {c.patch}, stride {c.stride}) "
                             f"leaves no targets for method.steps={c.steps}; lower steps or the stride")
        z = self.backbone(patches.flatten(0, 2)).view(b, r, w, -1)  # codes (B, R, W, D)
        cgrid = self.context(z.permute(0, 3, 1, 2))  # (B, D, R, W)
        losses = []
        for k, pred_k in enumerate(self.predictors, start=1):
            pred = pred_k(cgrid[:, :, : r - k]).permute(0, 2, 3, 1)  # (B, R-k, W, D)
            # negatives from every rank: the same global loss on each rank (components/gather.py: scaling)
            losses.append(cpc_info_nce(gather_with_grad(pred), gather_with_grad(z), k, c.temperature, c.normalize))
        loss = torch.stack(losses).mean()
        return MethodOutput(loss=loss, logs={f"nce_{k}": v.detach() for k, v in enumerate(losses, start=1)})
