"""Colorization (Zhang et al. 2016, "Colorful Image Colorization"; Larsson et al. 2016).

Views are converted to CIE Lab in torch; the backbone sees the lightness L only (a 1-channel first layer) and a
convolutional decoder on its last stage predicts the colour channels ab at ``image_size / output_stride``
resolution (Zhang et al. predict at 1/4 resolution). Two losses:

- ``classification`` (the paper's): ab is quantised into the in-gamut cells of a 10×10 grid (Q ≈ 262 bins),
  targets are soft-encoded on the 5 nearest bins (σ = 5), and the cross-entropy of each pixel is weighted by
  class rebalancing (``rebalance``, λ = 0.5) so that rare saturated colours count; the ab prior is accumulated
  from the training targets (a :class:`~selfsup.components.class_prior.ClassPrior` buffer).
- ``regression``: L2 on ab / 110 (the baseline the paper shows gives desaturated colours).

Evaluation: the backbone takes L only. :meth:`eval_backbone` wraps it so that it takes the data's normalised RGB
images and converts them to L itself; evaluation protocols need no change. RGB data only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...augment.color import AB_SCALE, NormalizedRGBToLab, ab_bin_centers, encode_ab, rebalancing_weights, scale_lab
from ...backbones.adapt import InputTransformBackbone
from ...components.base import StepContext
from ...components.class_prior import ClassPrior
from ...config_checks import DIM_CAP, IMAGE_CAP, checked, dim
from ...errors import ConfigError
from ...heads.pretext_decoders import ConvDecoder, last_stage_map
from ...losses.pretext import soft_cross_entropy
from ..base import Method, MethodConfig, MethodOutput, ViewBatch, register_method


def require_rgb(name: str, data_channels: int) -> None:
    if data_channels != 3:
        raise ConfigError(f"method '{name}' needs RGB (3-channel) data to build Lab colours; "
                          f"the data has {data_channels} channel(s)")


@dataclass
class ColorizationConfig(MethodConfig):
    # classification (quantised ab, Zhang et al.) | regression (L2 on ab)
    loss: str = checked("classification", choices=("classification", "regression"))
    ab_grid: float = checked(10.0, gt=0, cap=256)  # side of the ab quantisation cells
    soft_k: int = checked(5, ge=1, cap=DIM_CAP)  # soft encoding on the k nearest bins (1: one-hot)
    soft_sigma: float = checked(5.0, gt=0)
    rebalance: bool = True
    rebalance_lambda: float = checked(0.5, ge=0, le=1)
    output_stride: int = checked(4, ge=1, cap=IMAGE_CAP)  # predict ab at image_size // output_stride
    decoder_width: int = dim(64)
    # 2x upsamplings from the backbone's last stage (then resized to the output size)
    decoder_blocks: int = checked(1, ge=0, cap=16)


class LabInputMethod(Method):
    """Base of the methods whose backbone sees Lab channels of RGB data (colorization, split-brain).

    The engine builds the backbone with 1 input channel; the dataset's mean/std reach the Lab converter
    (``self.to_lab``, set by the subclass) through :meth:`make_views`; evaluation goes through a wrapper that
    converts the normalised RGB images first, so every protocol works unchanged.
    """

    to_lab: NormalizedRGBToLab

    @classmethod
    def backbone_in_channels(cls, data_channels: int) -> int:
        require_rgb(cls.method_name(), data_channels)
        return 1

    def make_views(self, image_size, mean, std, augment=None):
        views = super().make_views(image_size, mean, std, augment)
        self.to_lab.set_stats(mean, std)
        return views

    def eval_backbone(self):
        return InputTransformBackbone(self.to_lab, self.backbone, data_channels=3)


@register_method("colorization", help="predict ab colour from L in Lab space (Zhang et al. 2016); backbone sees L")
class Colorization(LabInputMethod):
    centers: torch.Tensor
    Config = ColorizationConfig
    cfg: ColorizationConfig
    default_augment = "crop-flip"
    n_views = 1  # one view of each image: the task makes its own inputs and targets from it
    default_optimizer = "adamw"
    base_lr = 1e-3
    default_weight_decay = 1e-4
    test_overrides = {"decoder_width": 16}

    def __init__(self, backbone, cfg: ColorizationConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        c = self.cfg
        self.to_lab = NormalizedRGBToLab("L")
        self.register_buffer("centers", ab_bin_centers(c.ab_grid), persistent=False)
        q = self.centers.shape[0]
        out = q if c.loss == "classification" else 2
        self.decoder = ConvDecoder(backbone.num_features, out, c.decoder_width, c.decoder_blocks)
        self.prior = ClassPrior(q)

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        c = self.cfg
        x = batch.views[0]
        lab = self.to_lab.lab(x)  # (B, 3, H, W), float32
        size = max(1, x.shape[-1] // c.output_stride)
        feat = last_stage_map(self.backbone, scale_lab(lab, "L"))
        pred = self.decoder(feat, size)  # (B, Q or 2, h, w)
        ab = F.adaptive_avg_pool2d(lab[:, 1:], size)  # (B, 2, h, w) target at the output resolution
        if c.loss == "regression":
            loss = F.mse_loss(pred.float(), ab / AB_SCALE)
            return MethodOutput(loss=loss)
        ab_flat = ab.permute(0, 2, 3, 1).reshape(-1, 2)
        target = encode_ab(ab_flat, self.centers, c.soft_k, c.soft_sigma)  # (N, Q)
        if self.training:
            self.prior.observe(target)  # committed after the step (components/class_prior.py)
        weight = rebalancing_weights(self.prior.probs(), self.centers, c.rebalance_lambda) if c.rebalance else None
        logits = pred.permute(0, 2, 3, 1).reshape(-1, pred.shape[1])
        loss = soft_cross_entropy(logits, target, weight)
        return MethodOutput(loss=loss)
