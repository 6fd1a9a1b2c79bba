"""Frozen-backbone features, computed once without augmentation (and cached by the evaluation runner)."""
from __future__ import annotations

import typing

import torch
from torch import nn

from ..augment.pipeline import eval_view
from ..backbones.base import Backbone
from ..data.base import ImageSplit
from ..progress import track


@torch.no_grad()
def extract_features(backbone: nn.Module, split: ImageSplit, mean, std, device: torch.device, *,
                     batch_size: int = 512, max_images: int | None = None, stage: str | None = None,
                     desc: str = "features") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pooled features ``(N, D)`` (float32, on CPU) and labels ``(N,)`` of ``split``, in dataset order.

    ``stage`` names an intermediate stage (from ``backbone.stage_names``) to pool instead of the final features.
    ``desc`` names the progress bar (progress.py: a tqdm bar on a terminal, plain lines for long work elsewhere).
    The backbone is put in eval mode (BN running statistics) and restored afterwards.
    """
    was_training = backbone.training
    backbone.eval()
    view = eval_view(split.image_size[0], mean, std)
    feats, labels = [], []
    seen = 0
    channels_last = isinstance(backbone, Backbone) and backbone.prefers_channels_last  # any encoder module works
    if channels_last:
        backbone.to(memory_format=torch.channels_last)
    n_batches = split.num_batches(batch_size, drop_last=False)
    if max_images is not None:
        n_batches = min(n_batches, -(-max_images // batch_size))
    for x, _, y in track(split.batches(batch_size, shuffle=False), n_batches, desc, unit="batch"):
        x = view(x.to(device))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if stage is None:
            f = backbone(x)
        else:
            out = typing.cast(Backbone, backbone).forward_stages(x)[stage]  # stages: Backbones only
            f = out.mean(dim=(2, 3)) if out.ndim == 4 else out.mean(dim=1) if out.ndim == 3 else out
        feats.append(f.float().cpu())
        if y is not None:
            labels.append(y)
        seen += x.shape[0]
        if max_images is not None and seen >= max_images:
            break
    backbone.train(was_training)
    f = torch.cat(feats)
    y = torch.cat(labels) if labels else None
    if max_images is not None:
        f = f[:max_images]
        y = y[:max_images] if y is not None else None
    return f, y
