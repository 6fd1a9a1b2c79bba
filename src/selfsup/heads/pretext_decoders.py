"""Dense heads of the pretext tasks: a convolutional decoder from a backbone stage to an image-sized output
(context encoder, denoising autoencoder, colorization, split-brain), and the context encoder's discriminator.
Like projectors, these are discarded after pretraining; only the backbone is evaluated.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def last_stage_map(backbone: Any, x: torch.Tensor) -> torch.Tensor:
    """The backbone's last named stage ``(B, num_features, h, w)``: what the decoders read. Convolutional
    backbones only (the ResNets and the ConvNet, whose last stage has ``num_features`` channels)."""
    y = backbone.forward_stages(x)[backbone.stage_names[-1]]
    if y.ndim != 4:
        raise ValueError(f"pretext decoders need a convolutional backbone (a 4-D last stage), got {tuple(y.shape)}")
    return y


class ConvDecoder(nn.Module):
    """Feature map ``(B, in_channels, h, w)`` → ``(B, out_channels, H, W)``.

    A 1×1 conv to ``width`` channels, ``blocks`` × (2× nearest upsampling, 3×3 conv, BN, ReLU), a 3×3 conv to
    ``out_channels``; then a bilinear resize to the requested output size when the ``2^blocks`` upsampling does
    not land on it exactly. Choose ``blocks = log2(output size / stage size)``: e.g. 3 for a CIFAR-stem ResNet's
    4×4 ``layer4`` to 32 px, 1 to colorization's 8×8 output.
    """

    def __init__(self, in_channels: int, out_channels: int, width: int = 64, blocks: int = 3) -> None:
        super().__init__()
        if blocks < 0 or width < 1:
            raise ValueError(f"decoder needs blocks >= 0 and width >= 1, got blocks={blocks}, width={width}")
        self.inp = nn.Sequential(nn.Conv2d(in_channels, width, 1, bias=False), nn.BatchNorm2d(width),
                                 nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(*[
            nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width, 3, 1, 1, bias=False),
                          nn.BatchNorm2d(width), nn.ReLU(inplace=True))
            for _ in range(blocks)
        ])
        self.out = nn.Conv2d(width, out_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | int) -> torch.Tensor:
        size = (size, size) if isinstance(size, int) else (size[0], size[1])
        y = self.blocks(self.inp(x))
        if tuple(y.shape[-2:]) != size:
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return self.out(y)


class Discriminator(nn.Module):
    """A small DCGAN-style critic: stride-2 4×4 convs with LeakyReLU(0.2) (no batch norm, so real and fake
    batches do not share statistics), global average pooling, one logit per image. (B, C, H, W) → (B,)."""

    def __init__(self, in_channels: int, width: int = 32, layers: int = 3) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        c = in_channels
        for i in range(layers):
            mods += [nn.Conv2d(c, width * 2 ** i, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            c = width * 2 ** i
        self.features = nn.Sequential(*mods)
        self.logit = nn.Linear(c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit(self.features(x).mean(dim=(2, 3))).squeeze(1)
