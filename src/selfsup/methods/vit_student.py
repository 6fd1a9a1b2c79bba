"""What the ViT self-distillation methods (iBOT, DINOv2, MSN) share: per-view randomness drawn for the global
batch, the student's token pass with stochastic depth, and layer-wise learning-rate scales.

* :func:`per_view_rows`: a draw (masks, kept patches, drop-path coins) for each view of the *global* batch, this
  rank's rows kept (``components/gather.py``), concatenated in view order like ``torch.cat(views)``.
* :func:`encode`: final-norm tokens ``(B, 1 + …, D)``; with ``drop_rates`` the blocks run here with stochastic
  depth (Huang et al. 2016): each residual branch of block i is dropped per sample with probability ``r_i`` and
  scaled by ``1/(1 − r_i)`` otherwise (timm's ``DropPath``). The backbone's own blocks are reused branch by branch
  (``x + attn(norm1(x))``, ``x + mlp(norm2(x))``), so the ViT itself is unchanged; only our ViT's
  :class:`~selfsup.backbones.vit.Block` is supported (a one-line error otherwise).
* :func:`drop_path_rates`: iBOT's linear schedule over depth (0 → rate) or DINOv2's uniform one.
* :func:`vit_lr_scales`: DINOv2's layer-wise lr decay for pretraining: ``decay^(depth + 1 − layer)`` with layer 0
  the patch embedding, CLS, position and mask tokens, ``i + 1`` block i, ``depth + 1`` the rest (heads); the patch
  embedding's scale is multiplied by ``patch_embed_mult`` (0.2 in DINOv2's code).
* :func:`patch_tokens`: the last N tokens, the patches (register tokens, if a backbone has them, sit between
  CLS and the patches).
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

import torch
from torch import nn

from ..backbones.vit import Block, ViT
from ..components.gather import global_rows, rank_rows
from ..errors import ConfigError


def per_view_rows(draw: Callable[[int], torch.Tensor], views: int, rows: int) -> torch.Tensor:
    """``views`` draws of ``draw(global_rows(rows))``, each cut to this rank's ``rows``, concatenated (V·rows, …)."""
    return torch.cat([rank_rows(draw(global_rows(rows)), rows) for _ in range(views)])


def drop_path_rates(depth: int, rate: float, uniform: bool = False) -> list[float]:
    """Per-block drop probabilities: all ``rate`` (DINOv2) or linear from 0 to ``rate`` (iBOT, timm)."""
    if not 0.0 <= rate < 1.0:
        raise ConfigError(f"method.drop_path_rate must be in [0, 1), got {rate}")
    if uniform or depth == 1:
        return [rate] * depth
    return [rate * i / (depth - 1) for i in range(depth)]


def patch_tokens(tokens: torch.Tensor, num_patches: int) -> torch.Tensor:
    """(B, P + N, D) → (B, N, D): the patch tokens after any prefix (CLS, registers)."""
    return tokens[:, tokens.shape[1] - num_patches:]


def run_blocks(bb: ViT, t: torch.Tensor, scales: torch.Tensor | None) -> torch.Tensor:
    """The backbone's blocks on tokens ``t`` (B, L, D). ``scales`` (B, depth, 2): each sample's factor on block i's
    attention (0) and MLP (1) branch (0 = dropped, 1/(1 − r) = kept); None runs the blocks as they are."""
    if scales is None:
        for blk in bb.blocks:
            t = blk(t)
        return t
    for i, blk in enumerate(bb.blocks):
        if not isinstance(blk, Block):
            raise ConfigError("method.drop_path_rate > 0 needs the project's ViT blocks (backbone vit-tiny, "
                              f"vit-small or vit); got {type(blk).__name__}: set method.drop_path_rate=0")
        s = scales[:, i].to(t.dtype)
        t = t + blk.attn(blk.norm1(t)) * s[:, 0].view(-1, 1, 1)
        t = t + blk.mlp(blk.norm2(t)) * s[:, 1].view(-1, 1, 1)
    return t


def drop_path_scales(rows: int, views: int, rates: Sequence[float], device: torch.device) -> torch.Tensor | None:
    """(views·rows, depth, 2) branch factors drawn for the global batch (None when every rate is 0)."""
    if not any(r > 0 for r in rates):
        return None
    r = torch.tensor(list(rates), dtype=torch.float32)

    def draw(n: int) -> torch.Tensor:
        keep = torch.rand(n, len(rates), 2) >= r.view(1, -1, 1)
        return keep.float() / (1.0 - r).view(1, -1, 1)

    return per_view_rows(draw, views, rows).to(device)


def check_drop_path_backbone(bb, rates: Sequence[float]) -> None:
    """Stochastic depth runs our ViT's blocks branch by branch: refuse another backbone when a rate is > 0."""
    if any(r > 0 for r in rates) and not isinstance(bb, ViT):
        raise ConfigError(f"method.drop_path_rate > 0 needs the project's ViT (backbone vit-tiny, vit-small or vit), "
                          f"got {type(bb).__name__}: set method.drop_path_rate=0")


def encode(bb, x: torch.Tensor, *, views: int = 1, drop_rates: Sequence[float] = (), **embed_kw) -> torch.Tensor:
    """Final-norm tokens of ``x`` (views·B, C, H, W), keywords as in ``ViT.embed`` (``keep``, ``mask``,
    ``mask_token``); ``drop_rates`` (one per block, or empty): stochastic depth, coins drawn per view for the global
    batch (``views`` views of B rows each, in order)."""
    if not any(r > 0 for r in drop_rates):
        return bb.forward_tokens(x, **embed_kw)
    check_drop_path_backbone(bb, drop_rates)
    if len(drop_rates) != len(bb.blocks):
        raise ValueError(f"{len(drop_rates)} drop-path rates for {len(bb.blocks)} blocks")
    scales = drop_path_scales(x.shape[0] // views, views, drop_rates, x.device)
    return bb.norm(run_blocks(bb, bb.embed(x, **embed_kw), scales))


_LAYER0 = re.compile(r"(?:^|\.)(patch_embed|cls_token|pos_embed|mask_token|register_tokens)(\.|$)")
_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def vit_lr_scales(model: nn.Module, depth: int, decay: float, patch_embed_mult: float = 1.0) -> dict[str, float]:
    """Layer-wise lr multipliers by parameter name for the trainable parameters of ``model`` (module docstring);
    empty when ``decay`` and ``patch_embed_mult`` are 1 (every scale 1)."""
    if not 0.0 < decay <= 1.0:
        raise ConfigError(f"method.layer_decay must be in (0, 1], got {decay}")
    if decay == 1.0 and patch_embed_mult == 1.0:
        return {}
    out: dict[str, float] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        m = _BLOCK.search(name)
        layer = int(m.group(1)) + 1 if m else 0 if _LAYER0.search(name) else depth + 1
        scale = decay ** (depth + 1 - layer)
        if re.search(r"(?:^|\.)patch_embed\.", name):
            scale *= patch_embed_mult
        out[name] = scale
    return out
