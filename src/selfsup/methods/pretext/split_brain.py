"""Split-Brain autoencoders (Zhang et al. 2017, "Split-Brain Autoencoders: Unsupervised Learning by
Cross-Channel Prediction").

Two sub-networks see disjoint channels of the Lab image: one predicts ab from L, the other L from ab, each
through its own decoder; both are trained with classification losses (ab in quantised bins with soft encoding,
L in 50 bins), which the paper found better than regression. The representation is the concatenation of both
sub-networks' features: a :class:`~selfsup.backbones.adapt.ChannelSplitBackbone` (L-net on channel 0, ab-net on
channels 1-2) is the method's backbone.

The engine builds one registry backbone with 1 input channel (the L-net); the ab-net is a copy of it with a fresh
2-channel first convolution. Each sub-network has the full width of the configured backbone, so the feature size
is twice the backbone's (the paper halves each; pass half the ``backbone.width`` for a like-for-like size).

Evaluation: :meth:`eval_backbone` takes the data's normalised RGB images, converts them to scaled Lab and returns
the concatenated features (and stages). RGB data only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...augment.color import AB_SCALE, NormalizedRGBToLab, ab_bin_centers, encode_ab, quantize_l, scale_lab
from ...backbones.adapt import ChannelSplitBackbone, with_in_channels
from ...components.base import StepContext
from ...config_checks import DIM_CAP, IMAGE_CAP, checked, dim
from ...heads.pretext_decoders import ConvDecoder, last_stage_map
from ...losses.pretext import soft_cross_entropy
from ..base import MethodConfig, MethodOutput, ViewBatch, register_method
from .colorization import LabInputMethod


@dataclass
class SplitBrainConfig(MethodConfig):
    # classification (ab bins and L bins) | regression (L2 on scaled values)
    loss: str = checked("classification", choices=("classification", "regression"))
    ab_grid: float = checked(10.0, gt=0, cap=256)
    soft_k: int = checked(5, ge=1, cap=DIM_CAP)  # soft encoding of ab on the k nearest bins
    soft_sigma: float = checked(5.0, gt=0)
    l_bins: int = dim(50, ge=2)
    output_stride: int = checked(4, ge=1, cap=IMAGE_CAP)
    decoder_width: int = dim(64)
    decoder_blocks: int = checked(1, ge=0, cap=16)


@register_method("split-brain",
                 help="two sub-networks predict L->ab and ab->L; features concatenated (Zhang et al. 2017)")
class SplitBrain(LabInputMethod):
    centers: torch.Tensor
    Config = SplitBrainConfig
    cfg: SplitBrainConfig
    default_augment = "crop-flip"
    n_views = 1  # one view of each image: the task makes its own inputs and targets from it
    default_optimizer = "adamw"
    base_lr = 1e-3
    default_weight_decay = 1e-4
    test_overrides = {"decoder_width": 16, "l_bins": 10}

    def __init__(self, backbone, cfg: SplitBrainConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        c = self.cfg
        if backbone.in_channels != 1:
            raise ValueError(f"split-brain expects the L-net backbone with 1 input channel, got {backbone.in_channels}")
        self.backbone = ChannelSplitBackbone(backbone, with_in_channels(backbone, 2))
        self.to_lab = NormalizedRGBToLab("Lab")
        self.register_buffer("centers", ab_bin_centers(c.ab_grid), persistent=False)
        cls = c.loss == "classification"
        d = backbone.num_features
        self.decode_ab = ConvDecoder(d, self.centers.shape[0] if cls else 2, c.decoder_width, c.decoder_blocks)
        self.decode_l = ConvDecoder(d, c.l_bins if cls else 1, c.decoder_width, c.decoder_blocks)

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        c = self.cfg
        x = batch.views[0]
        lab = self.to_lab.lab(x)
        inp = scale_lab(lab, "Lab")
        size = max(1, x.shape[-1] // c.output_stride)
        pred_ab = self.decode_ab(last_stage_map(self.backbone.first, inp[:, :1]), size)
        pred_l = self.decode_l(last_stage_map(self.backbone.second, inp[:, 1:]), size)
        target = F.adaptive_avg_pool2d(lab, size)  # (B, 3, h, w)
        if c.loss == "regression":
            loss_ab = F.mse_loss(pred_ab.float(), target[:, 1:] / AB_SCALE)
            loss_l = F.mse_loss(pred_l.float(), scale_lab(target, "L"))
        else:
            ab_t = encode_ab(target[:, 1:].permute(0, 2, 3, 1).reshape(-1, 2), self.centers, c.soft_k, c.soft_sigma)
            loss_ab = soft_cross_entropy(pred_ab.permute(0, 2, 3, 1).reshape(-1, pred_ab.shape[1]), ab_t)
            loss_l = F.cross_entropy(pred_l.float(), quantize_l(target[:, 0], c.l_bins))
        return MethodOutput(loss=loss_ab + loss_l, logs={"loss_ab": loss_ab.detach(), "loss_l": loss_l.detach()})
