"""Adapter: a timm VisionTransformer behind the same protocol as :class:`~selfsup.backbones.vit.ViT`.

Optional: timm is not a dependency. ``timm-vit-tiny`` / ``timm-vit-small`` build ``vit_tiny_patch16_224`` /
``vit_small_patch16_224`` (random init, ``num_classes=0``) with this run's image size, patch size and channels;
without timm they fail with a one-line error. The adapter touches timm's public modules (``patch_embed``,
``blocks``, ``norm``, each block's ``norm1``/``attn.qkv``) plus ``_pos_embed``, which timm's own
``forward_features`` calls and has kept since 0.9; MAE, BEiT, attention maps and probes work as with our ViT.
"""
from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from ..registry import BACKBONES
from .base import Backbone, BackboneSpec
from .vit import ViT, block_layer_decay_groups, default_patch_size


class TimmViT(Backbone):
    """A timm ``VisionTransformer`` behind our ViT's protocol (module docstring)."""

    supports_attention = True
    layer_decay_rule = "vit_layer_decay_groups"
    model: Any  # timm's model: its submodules are reached by name, untyped

    def __init__(self, model: Any, patch_size: int, in_channels: int) -> None:
        super().__init__()
        self.model = model
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.num_features = self.embed_dim = model.embed_dim
        self.depth = len(model.blocks)
        self.num_heads = model.blocks[0].attn.num_heads
        self.prefix = model.num_prefix_tokens
        self.stage_names = tuple(f"block{i + 1}" for i in range(self.depth))

    def grid_for(self, x: torch.Tensor) -> tuple[int, int]:
        """The patch grid of ``x``: the same geometry and the same one-line error as our ViT."""
        return ViT.grid_for(self, x)  # type: ignore[arg-type]  # reads only patch_size and in_channels

    def layer_decay_groups(self, lr: float, decay: float, weight_decay: float = 0.0) -> list[dict]:
        return block_layer_decay_groups(self, self.depth, lr, decay, weight_decay=weight_decay)

    def repeated_blocks(self) -> list[torch.nn.Module]:
        """timm's transformer blocks: the FSDP units (engine/fsdp.py)."""
        return list(self.model.blocks)

    def embed(self, x: torch.Tensor, *, keep: torch.Tensor | None = None, mask: torch.Tensor | None = None,
              mask_token: torch.Tensor | None = None) -> torch.Tensor:
        """Prefix (CLS) tokens + patch tokens with position embeddings; ``keep``/``mask`` as in ViT.embed."""
        m = self.model
        self.grid_for(x)
        t = m.patch_embed(x)  # (B, gh, gw, D) with dynamic_img_size
        if mask is not None:
            shape = t.shape
            flat = t.reshape(shape[0], -1, shape[-1])
            assert mask_token is not None, "mask= needs mask_token="
            flat = torch.where(mask.unsqueeze(-1), mask_token.to(flat.dtype).view(1, 1, -1), flat)
            t = flat.reshape(shape)
        t = m._pos_embed(t)  # (B, prefix + N, D)
        if keep is not None:
            patches = torch.gather(t[:, self.prefix:], 1, keep.unsqueeze(-1).expand(-1, -1, t.shape[-1]))
            t = torch.cat([t[:, : self.prefix], patches], dim=1)
        return m.norm_pre(t)

    def forward_tokens(self, x: torch.Tensor, **kw) -> torch.Tensor:
        t = self.embed(x, **kw)
        for blk in self.model.blocks:
            t = blk(t)
        return self.model.norm(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(x)[:, 0]

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        t = self.embed(x)
        for name, blk in zip(self.stage_names, self.model.blocks):
            t = blk(t)
            out[name] = t
        t = self.model.norm(t)
        out["tokens"] = t
        out["pooled"] = t[:, 0]
        return out

    @torch.no_grad()
    def get_last_attention(self, x: torch.Tensor) -> torch.Tensor:
        """CLS → patch attention of the last block (B, heads, gh, gw), renormalised over the patches."""
        grid = self.grid_for(x)
        t = self.embed(x)
        for blk in self.model.blocks[:-1]:
            t = blk(t)
        last = self.model.blocks[-1]
        attn = last.attn
        y = last.norm1(t)
        b, n, _ = y.shape
        qkv = attn.qkv(y).reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
        w = torch.softmax((q * attn.scale) @ k.transpose(-2, -1), dim=-1)[:, :, 0, self.prefix:].float()
        w = w / w.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        return w.reshape(b, w.shape[1], *grid)


def _timm(arch: str, name: str):
    def make(spec: BackboneSpec) -> TimmViT:
        try:
            import timm
        except ImportError:
            raise ConfigError(f"backbone '{name}' needs timm, which is not installed (pip install timm); "
                              "the built-in vit-tiny / vit-small need nothing") from None
        p = spec.patch_size or default_patch_size(spec.image_size)
        if spec.image_size % p:
            raise ConfigError(f"image size {spec.image_size} is not divisible by backbone.patch_size={p}")
        model = timm.create_model(arch, pretrained=False, num_classes=0, img_size=spec.image_size, patch_size=p,
                                  in_chans=spec.in_channels, dynamic_img_size=True)
        return TimmViT(model, p, spec.in_channels)
    return make


BACKBONES.register("timm-vit-tiny", help="timm's vit_tiny_patch16_224 (needs timm), random init, our patch size")(
    _timm("vit_tiny_patch16_224", "timm-vit-tiny"))
BACKBONES.register("timm-vit-small", help="timm's vit_small_patch16_224 (needs timm), random init, our patch size")(
    _timm("vit_small_patch16_224", "timm-vit-small"))
