"""The backbone protocol shared by every encoder (ResNets, ConvNets, ViTs).

A backbone maps images ``(B, C, H, W)`` to pooled features ``(B, num_features)`` in ``forward``; it names its
intermediate stages in ``stage_names`` and returns them from ``forward_stages`` (used by layer-wise probes and
dense methods). Token backbones (ViT) also return ``tokens``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class Backbone(nn.Module):
    """Base class: subclasses set ``num_features``, ``stage_names`` and implement ``forward_stages``."""

    num_features: int
    stage_names: tuple[str, ...] = ()
    in_channels: int = 3

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named intermediate outputs, in order, plus ``"pooled"`` (B, num_features)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)["pooled"]

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects images (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )


@dataclass
class BackboneSpec:
    """What the registry's factories receive (from the ``backbone`` config section plus the data)."""

    in_channels: int = 3
    width: float = 1.0
    cifar_stem: bool = False
    image_size: int = 32
    patch_size: int | None = None  # token backbones (ViT); None: chosen from image_size


def build_backbone(name: str, *, in_channels: int = 3, width: float = 1.0, cifar_stem: bool = False,
                   image_size: int = 32, patch_size: int | None = None) -> Backbone:
    """Build a registered backbone by name (``selfsup list`` shows the names)."""
    from ..errors import ConfigError
    from ..registry import BACKBONES

    factory = BACKBONES.get(name)
    if width <= 0:
        raise ConfigError(f"backbone.width must be > 0, got {width}")
    if patch_size is not None and patch_size < 1:
        raise ConfigError(f"backbone.patch_size must be >= 1, got {patch_size}")
    return factory(BackboneSpec(in_channels=in_channels, width=width, cifar_stem=cifar_stem, image_size=image_size,
                                patch_size=patch_size))
