"""ViT export uses timm's key names, so the weights load into a plain timm VisionTransformer."""
from __future__ import annotations

import pytest
import torch

from selfsup.backbones import build_backbone
from selfsup.engine.export import backbone_weights, key_names


def _vit():
    torch.manual_seed(0)
    return build_backbone("vit-test", in_channels=3, image_size=16).eval()


def test_vit_export_has_timm_names_and_a_cls_slot_in_pos_embed():
    vit = _vit()
    sd = backbone_weights(vit)
    assert key_names(vit) == "timm"
    n = (16 // vit.patch_size) ** 2
    assert sd["pos_embed"].shape == (1, 1 + n, vit.embed_dim)
    assert torch.equal(sd["pos_embed"][:, 0], torch.zeros(1, vit.embed_dim))
    expected = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight",
                "norm.bias"}
    for i in range(vit.depth):
        for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            expected |= {f"blocks.{i}.{part}.weight", f"blocks.{i}.{part}.bias"}
    assert set(sd) == expected


def test_vit_export_loads_into_timm_with_the_same_features():
    timm = pytest.importorskip("timm", reason="timm is an optional extra")
    from timm.models.vision_transformer import VisionTransformer

    vit = _vit()
    ref = VisionTransformer(img_size=16, patch_size=vit.patch_size, in_chans=3, embed_dim=vit.embed_dim,
                            depth=vit.depth, num_heads=vit.num_heads, mlp_ratio=4.0, qkv_bias=True,
                            num_classes=0, global_pool="token").eval()
    ref.load_state_dict(backbone_weights(vit), strict=True)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ref(x), vit(x), rtol=1e-4, atol=1e-5)
    assert timm is not None
