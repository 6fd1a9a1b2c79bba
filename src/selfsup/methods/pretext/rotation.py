"""RotNet (Gidaris et al. 2018, "Unsupervised Representation Learning by Predicting Image Rotations").

Each image is rotated by 0°, 90°, 180° and 270°; the backbone's pooled features feed a small classifier that
predicts which rotation was applied (4-way cross-entropy). Recognising "which way is up" needs the object's
identity and pose, so the features become semantic. All four rotations of an image sit in the same batch by
default (the paper found this better than one random rotation per image).

Evaluation: the backbone takes the data's images unchanged (no rotation).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ...augment.pretext import rotate_all, rotate_random
from ...components.base import StepContext
from ...config_checks import dim
from ...heads.mlp import mlp
from ..base import Method, MethodConfig, MethodOutput, ViewBatch, register_method


@dataclass
class RotationConfig(MethodConfig):
    all_rotations: bool = True  # all 4 rotations of each image in the batch (4x compute); False: one at random
    # 0: a linear classifier on the pooled features; > 0: one hidden layer (BN, ReLU)
    head_hidden_dim: int = dim(0, ge=0, hint="0: a linear classifier")


def classifier(in_dim: int, hidden: int, classes: int):
    """Linear (``hidden`` 0) or one-hidden-layer MLP classifier head."""
    return mlp([in_dim, classes] if hidden == 0 else [in_dim, hidden, classes])


@register_method("rotation", help="RotNet: predict the rotation 0/90/180/270° of each image (Gidaris et al. 2018)")
class Rotation(Method):
    Config = RotationConfig
    cfg: RotationConfig
    default_augment = "crop-flip"
    n_views = 1  # one view of each image: the task makes its own inputs and targets from it
    base_lr = 0.1
    default_weight_decay = 5e-4

    def __init__(self, backbone, cfg: RotationConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        self.head = classifier(backbone.num_features, self.cfg.head_hidden_dim, 4)

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        x = batch.views[0]
        b = x.shape[0]
        xr, labels = rotate_all(x) if self.cfg.all_rotations else rotate_random(x)
        h = self.backbone(xr)
        logits = self.head(h)
        loss = F.cross_entropy(logits.float(), labels)
        acc = (logits.argmax(1) == labels).float().mean()
        emb = h[:b] if self.cfg.all_rotations else h
        return MethodOutput(loss=loss, logs={"acc": acc.detach()}, embedding=emb.detach())
