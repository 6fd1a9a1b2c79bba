"""Denoising autoencoder (Vincent et al. 2008, "Extracting and Composing Robust Features with Denoising
Autoencoders"), convolutional: corrupt the view, encode it with the backbone, decode from its last stage and
reconstruct the clean view (L2 over all pixels, in normalised units).

Corruptions: ``gaussian`` (additive noise of ``noise_std`` in normalised units, i.e. about that fraction of the
data's standard deviation) or ``mask`` (each pixel, all channels, set to 0 = the dataset mean with probability
``mask_ratio``: Vincent et al.'s masking noise).

Evaluation: the backbone takes clean images with the data's channels.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...components.base import StepContext
from ...components.gather import global_rows, rank_rows
from ...config_checks import checked, dim
from ...heads.pretext_decoders import ConvDecoder, last_stage_map
from ..base import Method, MethodConfig, MethodOutput, ViewBatch, register_method


def corrupt(x: torch.Tensor, kind: str, noise_std: float, mask_ratio: float,
            gen: torch.Generator | None = None) -> torch.Tensor:
    """``gaussian``: x + N(0, noise_std²); ``mask``: pixels zeroed (all channels) with probability ``mask_ratio``."""
    dev = gen.device if gen is not None else x.device
    b, rows = x.shape[0], global_rows(x.shape[0])  # noise drawn for the global batch under torchrun, rows kept
    if kind == "gaussian":
        noise = rank_rows(torch.randn((rows, *x.shape[1:]), generator=gen, device=dev), b)
        return x + noise_std * noise.to(x.device, x.dtype)
    keep = rank_rows(torch.rand((rows, 1, *x.shape[2:]), generator=gen, device=dev), b).to(x.device) >= mask_ratio
    return x * keep.to(x.dtype)


@dataclass
class DenoisingAEConfig(MethodConfig):
    noise: str = checked("gaussian", choices=("gaussian", "mask"))
    noise_std: float = checked(0.5, ge=0)
    mask_ratio: float = checked(0.5, ge=0, lt=1)
    decoder_width: int = dim(64)
    # 2x upsamplings from the backbone's last stage (4x4 → 32 px for a CIFAR ResNet)
    decoder_blocks: int = checked(3, ge=0, cap=16)


@register_method("denoising-ae", help="reconstruct the clean image from a noisy or masked one (Vincent et al. 2008)")
class DenoisingAE(Method):
    Config = DenoisingAEConfig
    cfg: DenoisingAEConfig
    default_augment = "crop-flip"
    n_views = 1  # one view of each image: the task makes its own inputs and targets from it
    default_optimizer = "adamw"
    base_lr = 1e-3
    default_weight_decay = 1e-4
    test_overrides = {"decoder_width": 16}

    def __init__(self, backbone, cfg: DenoisingAEConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        c = self.cfg
        self.decoder = ConvDecoder(backbone.num_features, backbone.in_channels, c.decoder_width, c.decoder_blocks)

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        c = self.cfg
        x = batch.views[0]
        noisy = corrupt(x, c.noise, c.noise_std, c.mask_ratio)
        pred = self.decoder(last_stage_map(self.backbone, noisy), tuple(x.shape[-2:]))
        loss = F.mse_loss(pred.float(), x.float())
        return MethodOutput(loss=loss)
