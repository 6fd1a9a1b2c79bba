"""Backbone adapters (not registered backbones): a copy with another input channel count, two backbones on a
split of the input channels (Split-Brain), and a fixed input transform in front of a backbone (Lab inputs).

They implement the :class:`~selfsup.backbones.base.Backbone` protocol, so evaluation, layer-wise probes and
export see an ordinary backbone.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .base import Backbone


def with_in_channels(backbone: Backbone, in_channels: int) -> Backbone:
    """A deep copy of ``backbone`` whose first convolution takes ``in_channels`` channels (freshly initialised).

    "First" is the first ``nn.Conv2d`` in module order reading ``backbone.in_channels`` channels: the stem of the
    ResNets and ConvNet, the patch embedding of a ViT. All other weights are copied.
    """
    new = copy.deepcopy(backbone)
    for parent in new.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == backbone.in_channels:
                conv = nn.Conv2d(in_channels, child.out_channels, child.kernel_size, child.stride,  # type: ignore[arg-type]
                                 child.padding, child.dilation, child.groups,  # type: ignore[arg-type]
                                 child.bias is not None, child.padding_mode)
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
                setattr(parent, name, conv.to(child.weight.device))
                new.in_channels = in_channels
                return new
    raise ValueError(f"{type(backbone).__name__} has no Conv2d reading {backbone.in_channels} channels")


class ChannelSplitBackbone(Backbone):
    """Two backbones on a split of the input channels, features concatenated (Split-Brain, Zhang et al. 2017).

    Input (B, c1 + c2, H, W): channels ``:c1`` go to ``first``, the rest to ``second``. ``forward`` returns
    (B, D1 + D2); ``forward_stages`` concatenates each named stage along channels (both backbones must have
    the same stage names and spatial sizes, e.g. the same architecture).
    """

    def __init__(self, first: Backbone, second: Backbone) -> None:
        super().__init__()
        if tuple(first.stage_names) != tuple(second.stage_names):
            raise ValueError("split backbones need the same stage names, got "
                             f"{first.stage_names} and {second.stage_names}")
        self.first, self.second = first, second
        self.split = first.in_channels
        self.in_channels = first.in_channels + second.in_channels
        self.num_features = first.num_features + second.num_features
        self.stage_names = tuple(first.stage_names)
        self.prefers_channels_last = getattr(first, "prefers_channels_last", False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.first(x[:, : self.split]), self.second(x[:, self.split:])], dim=1)

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        a = self.first.forward_stages(x[:, : self.split])
        b = self.second.forward_stages(x[:, self.split:])
        return {k: torch.cat([a[k], b[k]], dim=1) for k in a}


class InputTransformBackbone(Backbone):
    """``inner(transform(x))``: e.g. normalised RGB → L for a colorization backbone at evaluation time.

    ``in_channels`` is what the wrapper accepts (``data_channels``); the transform has no trainable weights, so
    the wrapper's parameters are exactly the inner backbone's (it is built on demand, not stored in a method).
    """

    def __init__(self, transform: nn.Module, inner: Backbone, data_channels: int = 3) -> None:
        super().__init__()
        self.transform = transform
        self.inner = inner
        self.in_channels = data_channels
        self.num_features = inner.num_features
        self.stage_names = tuple(inner.stage_names)
        self.prefers_channels_last = getattr(inner, "prefers_channels_last", False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(self.transform(x))

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.inner.forward_stages(self.transform(x))
