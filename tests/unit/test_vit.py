"""ViT backbone: geometry, position embeddings, attention, tokens, layer decay, use by other methods, timm."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import make_blobs

from selfsup.backbones import build_backbone
from selfsup.backbones.vit import (
    ViT,
    default_patch_size,
    interpolate_pos_embed,
    sincos_pos_embed,
    vit_layer_decay_groups,
)
from selfsup.components.base import StepContext, update_parts
from selfsup.components.ema import EMATeacher
from selfsup.config import ConfigError
from selfsup.methods.base import ViewBatch, build_method


def tiny(image_size: int = 16, **kw) -> ViT:
    torch.manual_seed(0)
    args = dict(image_size=image_size, patch_size=4, in_channels=3, dim=32, depth=2, heads=2)
    args.update(kw)
    return ViT(**args)


def test_default_patch_size_follows_image_size():
    assert [default_patch_size(s) for s in (16, 28, 32, 64, 96, 224)] == [4, 4, 4, 8, 16, 16]
    assert build_backbone("vit-test", image_size=64).patch_size == 8
    assert build_backbone("vit-test", image_size=32, patch_size=8).patch_size == 8


def test_vit_sizes_and_width():
    assert build_backbone("vit", width=0.25, image_size=16).num_features == 192  # ViT-T
    assert build_backbone("vit", width=0.5, image_size=16).num_heads == 6  # ViT-S


def test_protocol_shapes():
    m = tiny()
    x = torch.randn(3, 3, 16, 16)
    assert m(x).shape == (3, 32)
    st = m.forward_stages(x)
    assert list(st) == ["block1", "block2", "tokens", "pooled"]
    assert m.stage_names == ("block1", "block2")
    assert st["block2"].shape == (3, 1 + 16, 32)
    assert torch.allclose(st["pooled"], m(x), atol=1e-6)
    assert torch.allclose(st["tokens"][:, 0], st["pooled"], atol=1e-6)
    mean = tiny(pool="mean")
    assert torch.allclose(mean(x), mean.forward_stages(x)["tokens"][:, 1:].mean(1), atol=1e-6)


def test_image_size_not_divisible_by_patch_is_one_line_error():
    with pytest.raises(ConfigError, match=r"image size 30 is not divisible by backbone.patch_size=4"):
        build_backbone("vit-test", image_size=30, patch_size=4)
    with pytest.raises(ConfigError, match=r"18x18 is not divisible by backbone.patch_size=4"):
        tiny()(torch.randn(1, 3, 18, 18))
    with pytest.raises(ConfigError, match="patch_size must be >= 1"):
        build_backbone("vit-test", patch_size=0)


def test_sincos_matches_the_formula():
    dim, gh, gw = 8, 3, 2
    pe = sincos_pos_embed(dim, (gh, gw))[0]
    q = dim // 4
    for i in range(gh):
        for j in range(gw):
            row = pe[i * gw + j]
            for k in range(q):
                w = 1.0 / 10000 ** (k / q)
                expect = [math.sin(i * w), math.cos(i * w), math.sin(j * w), math.cos(j * w)]
                got = [row[k], row[q + k], row[2 * q + k], row[3 * q + k]]
                assert torch.allclose(torch.tensor(got), torch.tensor(expect), atol=1e-5)


@pytest.mark.parametrize("kind", ["sincos", "learned"])
def test_pos_embed_follows_other_image_sizes(kind):
    m = tiny(pos_embed=kind)
    assert m.pos_embed_for((4, 4)).shape == (1, 16, 32)
    assert m.pos_embed_for((6, 8)).shape == (1, 48, 32)
    out = m.forward_stages(torch.randn(2, 3, 24, 32))
    assert out["tokens"].shape == (2, 1 + 48, 32) and out["pooled"].shape == (2, 32)
    assert m.get_last_attention(torch.randn(2, 3, 24, 32)).shape == (2, 2, 6, 8)
    if kind == "sincos":  # recomputed exactly for the new grid
        assert torch.allclose(m.pos_embed_for((6, 8)), sincos_pos_embed(32, (6, 8)))


def test_interpolate_pos_embed_keeps_values_on_same_grid_and_constant_fields():
    pos = torch.randn(1, 16, 8)
    assert interpolate_pos_embed(pos, (4, 4), (4, 4)) is pos
    const = torch.ones(1, 16, 8) * 3.0
    up = interpolate_pos_embed(const, (4, 4), (8, 6))
    assert up.shape == (1, 48, 8) and torch.allclose(up, torch.full_like(up, 3.0), atol=1e-5)


def test_fused_attention_equals_explicit_softmax():
    m = tiny()
    attn = m.blocks[0].attn
    x = torch.randn(2, 5, 32)
    w = attn.weights(x)
    _, _, v = attn._qkv(x)
    manual = attn.proj((w @ v).transpose(1, 2).flatten(2))
    assert torch.allclose(attn(x), manual, atol=1e-5)


def test_attention_maps_sum_to_one_and_have_grid_shape():
    m = tiny()
    a = m.get_last_attention(torch.randn(3, 3, 16, 16))
    assert a.shape == (3, 2, 4, 4)
    assert torch.allclose(a.sum(dim=(-2, -1)), torch.ones(3, 2), atol=1e-5)
    assert (a >= 0).all()


def test_forward_tokens_subset_and_mask_token():
    m = tiny().eval()
    x = torch.randn(2, 3, 16, 16)
    full = m.forward_tokens(x)
    assert torch.allclose(m.forward_tokens(x, keep=torch.arange(16).expand(2, 16)), full, atol=1e-5)
    keep = torch.tensor([[0, 5, 7], [15, 1, 2]])
    assert m.forward_tokens(x, keep=keep).shape == (2, 4, 32)
    # a kept patch's input token is the full sequence's token at that position (position embedding included)
    emb_full, emb_sub = m.embed(x), m.embed(x, keep=keep)
    assert torch.allclose(emb_sub[1, 1], emb_full[1, 1 + 15])
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, 3] = True
    tok = torch.randn(32)
    emb = m.embed(x, mask=mask, mask_token=tok)
    assert torch.allclose(emb[:, 1 + 3], tok + m.pos_embed[0, 3], atol=1e-6)
    assert torch.allclose(emb[:, 1 + 4], emb_full[:, 1 + 4])


def test_layer_decay_groups():
    m = tiny()
    lr, decay, depth = 1.0, 0.5, 2
    groups = vit_layer_decay_groups(m, lr, decay, weight_decay=0.05)
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in m.parameters()) and len(seen) == len(set(seen))
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert lr_of[id(m.patch_embed.weight)] == lr * decay ** (depth + 1)
    assert lr_of[id(m.blocks[0].attn.qkv.weight)] == lr * decay ** depth
    assert lr_of[id(m.blocks[1].mlp[0].weight)] == lr * decay
    assert lr_of[id(m.norm.weight)] == lr
    assert wd_of[id(m.blocks[0].attn.qkv.weight)] == 0.05 and wd_of[id(m.blocks[0].norm1.weight)] == 0.0
    with pytest.raises(ConfigError, match="needs a ViT"):
        vit_layer_decay_groups(build_backbone("convnet", width=0.25), lr, decay)


def test_simclr_trains_a_vit():
    data = make_blobs(n=16, size=16)
    torch.manual_seed(0)
    method = build_method("simclr", build_backbone("vit-test", image_size=16),
                          {"proj_hidden_dim": 32, "proj_dim": 16})
    views = method.make_views(16, data.mean, data.std)
    x, idx, _ = next(data.train.batches(16, shuffle=False))
    vs = views(x, torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(method.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        out = method(ViewBatch(vs, idx))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    assert min(losses[-3:]) < losses[0]


def test_ema_teacher_of_a_vit_updates():
    """DINO/BYOL-style methods hold an EMA copy of the backbone: it must deep-copy and update."""
    student = tiny()
    ema = EMATeacher(student, momentum=0.5)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    before = ema.teacher.blocks[0].attn.qkv.weight.clone()
    update_parts(ema, StepContext(0, 10))
    after = ema.teacher.blocks[0].attn.qkv.weight
    assert torch.allclose(after, 0.5 * before + 0.5 * student.blocks[0].attn.qkv.weight)
    assert ema(torch.randn(2, 3, 16, 16)).shape == (2, 32)


def test_timm_adapter():
    pytest.importorskip("timm")
    m = build_backbone("timm-vit-tiny", image_size=16, patch_size=4)
    x = torch.randn(2, 3, 16, 16)
    st = m.forward_stages(x)
    assert st["pooled"].shape == (2, m.num_features)
    assert st[m.stage_names[-1]].shape[1] == 1 + 16
    a = m.get_last_attention(x)
    assert a.shape == (2, m.num_heads, 4, 4)
    assert torch.allclose(a.sum(dim=(-2, -1)), torch.ones(2, m.num_heads), atol=1e-5)


def test_timm_adapter_without_timm_is_one_line_error():
    try:
        import timm  # noqa: F401
        pytest.skip("timm is installed")
    except ImportError:
        pass
    with pytest.raises(ConfigError, match="needs timm"):
        build_backbone("timm-vit-tiny", image_size=16)
