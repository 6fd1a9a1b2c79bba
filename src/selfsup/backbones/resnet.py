"""ResNet-18/34/50 with a width multiplier and a CIFAR stem (He et al. 2016).

Parameter names follow torchvision's ResNet (``conv1``, ``bn1``, ``layer1.0.conv1`` ...), so weights can be
exported to a plain torchvision model. ``width=0.25`` is the CPU benchmark size; ``cifar_stem=True`` uses a
3x3 stride-1 first convolution and no max-pool, as usual for 32 px images.
"""
from __future__ import annotations

import torch
from torch import nn

from ..registry import BACKBONES
from .base import Backbone, BackboneSpec


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + idt)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * 4
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(cin, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + idt)


class ResNet(Backbone):
    """Pooled features (B, 512·width·expansion); stages ``stem, layer1 … layer4``."""

    stage_names = ("stem", "layer1", "layer2", "layer3", "layer4")
    prefers_channels_last = True
    layer1: nn.Sequential  # set in __init__ by name
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int], *, in_channels: int = 3, width: float = 1.0,
                 cifar_stem: bool = False, zero_init_residual: bool = True) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.arch = (block.__name__, tuple(layers))
        widths = [max(4, int(round(c * width))) for c in (64, 128, 256, 512)]
        if cifar_stem:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        cin = widths[0]
        for i, (planes, n) in enumerate(zip(widths, layers)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, stride=(1 if i == 0 or j > 0 else 2)))
                cin = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_features = cin
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:  # each residual branch starts as identity (Goyal et al. 2017)
            for m in self.modules():
                last = getattr(m, "bn3", None) if isinstance(m, Bottleneck) else getattr(m, "bn2", None)
                if isinstance(m, (BasicBlock, Bottleneck)) and last is not None:
                    nn.init.zeros_(last.weight)

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_input(x)
        out: dict[str, torch.Tensor] = {}
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out["stem"] = x
        for name in self.stage_names[1:]:
            x = getattr(self, name)(x)
            out[name] = x
        out["pooled"] = torch.flatten(self.avgpool(x), 1)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def _make(block: type[BasicBlock] | type[Bottleneck], layers: list[int]):
    def factory(spec: BackboneSpec) -> ResNet:
        return ResNet(block, layers, in_channels=spec.in_channels, width=spec.width, cifar_stem=spec.cifar_stem)
    return factory


BACKBONES.register("resnet18", help="ResNet-18 (BasicBlock, 512·width features)")(_make(BasicBlock, [2, 2, 2, 2]))
BACKBONES.register("resnet34", help="ResNet-34 (BasicBlock, 512·width features)")(_make(BasicBlock, [3, 4, 6, 3]))
BACKBONES.register("resnet50", help="ResNet-50 (Bottleneck, 2048·width features)")(_make(Bottleneck, [3, 4, 6, 3]))
