"""The one supervised loop behind every trained protocol (augmented linear, fine-tune, semi, supervised).

``train_classifier`` trains ``head`` (and, when ``lr_backbone`` is set, the backbone) with cross-entropy,
SGD + Nesterov momentum and a cosine schedule, on batches augmented with a random resized crop and a flip
(the standard linear-evaluation augmentation), and returns the test top-1. A frozen backbone runs in eval
mode under ``no_grad`` (its BatchNorm statistics do not move), a trained one in train mode.

Layer-wise learning-rate decay (BEiT/MAE fine-tuning) uses the groups the backbone declares
(:meth:`~selfsup.backbones.base.Backbone.layer_decay_groups`): ViTs group by transformer block
(``backbones.vit.vit_layer_decay_groups``); every other backbone gets the generic rule (top-level children in
registration order = depth, the last one gets the full rate).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..augment.pipeline import ViewSpec, ViewTransform, eval_view
from ..backbones.base import GENERIC_LAYER_DECAY, Backbone, generic_layer_decay_groups
from ..data.base import ImageSplit

__all__ = ["generic_layer_decay_groups", "layer_decay_groups", "train_classifier", "evaluate_classifier"]


def layer_decay_groups(model: nn.Module, lr: float, decay: float, weight_decay: float = 0.0
                       ) -> tuple[list[dict[str, Any]], str]:
    """(param groups, name of the rule used): a backbone's declared groups, the generic rule for other modules."""
    if isinstance(model, Backbone):
        return model.layer_decay_groups(lr, decay, weight_decay), model.layer_decay_rule
    return generic_layer_decay_groups(model, lr, decay, weight_decay), GENERIC_LAYER_DECAY


class _Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module, frozen: bool) -> None:
        super().__init__()
        self.backbone, self.head, self.frozen = backbone, head, frozen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.frozen:
            with torch.no_grad():
                h = self.backbone(x)
            return self.head(h.float())
        return self.head(self.backbone(x))


@torch.no_grad()
def evaluate_classifier(model: nn.Module, split: ImageSplit, mean, std, device: torch.device,
                        batch_size: int = 512) -> float:
    """Top-1 of ``model`` on ``split`` (no augmentation)."""
    model.eval()
    view = eval_view(split.image_size[0], mean, std)
    correct = total = 0
    for x, _, y in split.batches(batch_size, shuffle=False):
        assert y is not None  # a split with labels
        pred = model(view(x.to(device))).argmax(dim=1).cpu()
        correct += int((pred == y).sum())
        total += y.numel()
    return correct / max(1, total)


def train_classifier(backbone: nn.Module, head: nn.Module, train: ImageSplit, test: ImageSplit | None, mean, std,
                     device: torch.device, *, epochs: int, lr_head: float, lr_backbone: float | None = None,
                     batch_size: int = 256, weight_decay: float = 0.0, momentum: float = 0.9, augment: bool = True,
                     crop_scale_min: float = 0.08, layer_decay: float = 1.0, label_smoothing: float = 0.0,
                     seed: int = 0) -> dict[str, Any]:
    """Train and test a classifier; returns ``{"top1", "train_loss", "steps", "layer_decay_rule"}``.

    ``lr_backbone=None`` freezes the backbone (augmented linear probe); otherwise both train, with
    ``layer_decay < 1`` scaling earlier layers' rates down. ``train.labels`` must be set. Without a ``test``
    split ``top1`` is None (``selfsup finetune`` without ``--test``). ``head`` (and the backbone) keep the
    trained weights.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    frozen = lr_backbone is None
    for p in backbone.parameters():
        p.requires_grad_(not frozen)
    model = _Classifier(backbone, head, frozen).to(device)
    groups: list[dict[str, Any]] = [{"params": list(head.parameters()), "lr": lr_head, "weight_decay": weight_decay}]
    rule = "none"
    if not frozen:
        assert lr_backbone is not None
        if layer_decay < 1.0:
            bb_groups, rule = layer_decay_groups(backbone, lr_backbone, layer_decay, weight_decay)
        else:
            bb_groups = [{"params": list(backbone.parameters()), "lr": lr_backbone, "weight_decay": weight_decay}]
        groups += bb_groups
    for g in groups:
        g["base_lr"] = g["lr"]
    opt = torch.optim.SGD(groups, lr=lr_head, momentum=momentum, nesterov=momentum > 0)
    size = train.image_size[0]
    spec = ViewSpec(size=size, crop_scale=(crop_scale_min, 1.0), flip_p=0.5, jitter_p=0.0, grayscale_p=0.0,
                    crop=augment)
    view = ViewTransform(spec if augment else ViewSpec(size=size, crop=False, flip_p=0.0, jitter_p=0.0,
                                                       grayscale_p=0.0), mean, std)
    drop_last = train.num_images > batch_size
    spe = train.num_batches(batch_size, drop_last=drop_last)
    total = max(1, epochs * spe)
    gen = torch.Generator().manual_seed(seed)
    aug_gen = torch.Generator(device=device).manual_seed(seed + 1)
    step, loss_sum, n_loss = 0, torch.zeros((), device=device), 0
    for _ in range(epochs):
        model.train()
        if frozen:
            backbone.eval()  # frozen BN statistics
        for x, _, y in train.batches(batch_size, shuffle=True, generator=gen, drop_last=drop_last):
            scale = 0.5 * (1 + math.cos(math.pi * step / total))
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * scale
            assert y is not None  # train.labels must be set
            logits = model(view(x.to(device), aug_gen))
            loss = F.cross_entropy(logits, y.to(device), label_smoothing=label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
            n_loss += 1
            step += 1
    top1 = evaluate_classifier(model, test, mean, std, device) if test is not None else None
    for p in backbone.parameters():
        p.requires_grad_(True)
    return {"top1": top1, "train_loss": float(loss_sum) / max(1, n_loss), "steps": step, "layer_decay_rule": rule}
