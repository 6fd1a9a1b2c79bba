"""A tiny 4-block ConvNet (conv-BN-ReLU-pool) for tests and very small data."""
from __future__ import annotations

import torch
from torch import nn

from ..registry import BACKBONES
from .base import Backbone, BackboneSpec


class ConvNet(Backbone):
    """Features (B, 64·width·... ) after global average pooling; stages ``block1 … block4``."""

    stage_names = ("block1", "block2", "block3", "block4")
    prefers_channels_last = True

    def __init__(self, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        self.in_channels = in_channels
        c = [max(4, int(round(v * width))) for v in (32, 64, 64, 128)]
        cin = in_channels
        for i, cout in enumerate(c):
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
                                       nn.ReLU(inplace=True)]
            if i < 3:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            setattr(self, f"block{i + 1}", nn.Sequential(*layers))
            cin = cout
        self.num_features = cin
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_input(x)
        out: dict[str, torch.Tensor] = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            out[name] = x
        out["pooled"] = torch.flatten(self.pool(x), 1)
        return out


@BACKBONES.register("convnet", help="tiny 4-block ConvNet (128·width features) for tests and tiny data")
def convnet(spec: BackboneSpec) -> ConvNet:
    return ConvNet(in_channels=spec.in_channels, width=spec.width)
