"""The backbone protocol shared by every encoder (ResNets, ConvNets, ViTs).

A backbone maps images ``(B, C, H, W)`` to pooled features ``(B, num_features)`` in ``forward``; it names its
intermediate stages in ``stage_names`` and returns them from ``forward_stages`` (used by layer-wise probes and
dense methods). Token backbones (ViT) also return ``tokens``.

What callers used to probe with ``hasattr`` or read from the class name is declared here, with defaults that
subclasses override:

- ``prefers_channels_last``: convolutions run faster in NHWC (ResNets, ConvNets); training and feature
  extraction convert images and weights when it is set;
- ``supports_attention`` and :meth:`Backbone.get_last_attention`: CLS → patch attention maps (ViTs);
- ``export_key_names`` and :meth:`Backbone.export_state_dict`: the weights under another library's names
  ("torchvision" for the ResNets, "timm" for the ViT; "selfsup": our own ``state_dict``), and
  :meth:`Backbone.import_state_dict`, its inverse (``backbone.init``: starting from such a file);
- :meth:`Backbone.layer_decay_groups` and ``layer_decay_rule``: parameter groups for layer-wise lr decay
  (fine-tuning); the default treats top-level children as layers, ViTs group by transformer block;
- :meth:`Backbone.repeated_blocks`: the repeated blocks in forward order (a ViT's transformer blocks), the units
  FSDP shards one by one (``train.fsdp``, engine/fsdp.py); none by default;
- ``supports_activation_checkpointing`` and :meth:`Backbone.set_activation_checkpointing`: recompute each
  block's activations in backward instead of keeping them (``train.activation_checkpointing``; ViTs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

GENERIC_LAYER_DECAY = "generic (top-level children = depth)"


def generic_layer_decay_groups(model: nn.Module, lr: float, decay: float, weight_decay: float = 0.0
                               ) -> list[dict[str, Any]]:
    """Param groups with ``lr · decay^(L-1-i)`` for the i-th of L top-level children that hold parameters.

    Norms and biases (1-D parameters) get no weight decay. Works for any backbone whose children are listed
    input-to-output (ResNet: conv1, bn1, layer1 … layer4; ConvNet: block1 … block4).
    """
    children = [(n, m) for n, m in model.named_children() if any(p.requires_grad for p in m.parameters())]
    depth = len(children)
    groups: list[dict[str, Any]] = []
    for i, (_, m) in enumerate(children):
        scale = decay ** (depth - 1 - i)
        params = [p for p in m.parameters() if p.requires_grad]
        groups.append({"params": [p for p in params if p.ndim > 1], "lr": lr * scale, "weight_decay": weight_decay})
        groups.append({"params": [p for p in params if p.ndim <= 1], "lr": lr * scale, "weight_decay": 0.0})
    direct = [p for p in model.parameters(recurse=False) if p.requires_grad]  # e.g. a ViT's cls token
    if direct:
        groups.append({"params": direct, "lr": lr * decay ** depth, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


class Backbone(nn.Module):
    """Base class: subclasses set ``num_features``, ``stage_names`` and implement ``forward_stages``."""

    num_features: int
    stage_names: tuple[str, ...] = ()
    in_channels: int = 3
    prefers_channels_last: bool = False
    supports_attention: bool = False
    supports_activation_checkpointing: bool = False
    export_key_names: str = "selfsup"
    layer_decay_rule: str = GENERIC_LAYER_DECAY
    num_registers: int = 0  # register tokens (ViTs built with ``backbone.registers``)

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named intermediate outputs, in order, plus ``"pooled"`` (B, num_features)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)["pooled"]

    def get_last_attention(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's CLS → patch attention (B, heads, gh, gw); only where ``supports_attention``."""
        raise NotImplementedError(f"{type(self).__name__} has no attention maps (supports_attention is False)")

    def repeated_blocks(self) -> list[nn.Module]:
        """The repeated blocks in forward order (a ViT's transformer blocks): what FSDP shards one by one before
        the method root (engine/fsdp.py). None by default: the whole backbone is then part of the root's unit."""
        return []

    def set_activation_checkpointing(self, on: bool) -> None:
        """Recompute each block's activations in backward instead of keeping them (training with gradients
        only: evaluation, ``no_grad`` and momentum teachers run as usual); only where
        ``supports_activation_checkpointing``."""
        raise NotImplementedError(f"{type(self).__name__} has no activation checkpointing "
                                  "(supports_activation_checkpointing is False)")

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under the names ``export_key_names`` says (our own ``state_dict`` by default)."""
        return self.state_dict()

    def import_state_dict(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The inverse of :meth:`export_state_dict`: weights under ``export_key_names``' names (a torchvision or
        timm file, or our export) renamed to this backbone's ``state_dict`` names (unchanged by default)."""
        return dict(weights)

    def layer_decay_groups(self, lr: float, decay: float, weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """Optimizer parameter groups whose lr decays by ``decay`` per layer from the top (``layer_decay_rule``)."""
        return generic_layer_decay_groups(self, lr, decay, weight_decay)

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
    registers: int = 0  # register tokens (ViT; Darcet et al. 2024)


def build_backbone(name: str, *, in_channels: int = 3, width: float = 1.0, cifar_stem: bool = False,
                   image_size: int = 32, patch_size: int | None = None, registers: int = 0) -> Backbone:
    """Build a registered backbone by name (``selfsup list`` shows the names)."""
    from ..errors import ConfigError
    from ..registry import BACKBONES

    factory = BACKBONES.get(name)
    if width <= 0:
        raise ConfigError(f"backbone.width must be > 0, got {width}")
    if patch_size is not None and patch_size < 1:
        raise ConfigError(f"backbone.patch_size must be >= 1, got {patch_size}")
    if registers < 0:
        raise ConfigError(f"backbone.registers must be >= 0, got {registers}")
    backbone = factory(BackboneSpec(in_channels=in_channels, width=width, cifar_stem=cifar_stem,
                                    image_size=image_size, patch_size=patch_size, registers=registers))
    if backbone.num_registers != registers:
        raise ConfigError(f"backbone.registers={registers}: backbone '{name}' has no register tokens "
                          "(the built-in ViTs have: vit-tiny, vit-small, vit)")
    return backbone
