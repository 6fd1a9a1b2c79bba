"""FastSiam (Pototzky et al. 2022, "FastSiam: Resource-Efficient Self-supervised Learning on a Single GPU").

SimSiam with V >= 3 views of each image (default 4): every view's prediction predicts the mean of the other
V − 1 views' projections, under a stop-gradient (``losses.distillation.mean_target_negative_cosine``). The mean
of several targets is a less noisy target than one view, which is what lets FastSiam train with small batches on
one GPU. Backbone, projector and predictor are SimSiam's (this class *is* SimSiam with another loss and view
count; ``nn_support_size`` works here too: each target is swapped for its nearest neighbour before the mean).
"""
from __future__ import annotations

import torch

from ..losses.distillation import mean_target_negative_cosine
from .base import register_method
from .simsiam import SimSiam


@register_method("fastsiam", help="FastSiam: SimSiam with 4 views, each predicting the mean of the others "
                                  "(Pototzky et al. 2022)")
class FastSiam(SimSiam):
    default_augment = "fastsiam"  # SimSiam's views, 4 per image
    n_views = None
    min_views = 3

    def loss(self, ps: list[torch.Tensor], zs: list[torch.Tensor]) -> torch.Tensor:
        """The mean over views of ``D(p_i, stopgrad(mean_{j≠i} z_j))``."""
        return mean_target_negative_cosine(torch.stack(ps), torch.stack(zs))
