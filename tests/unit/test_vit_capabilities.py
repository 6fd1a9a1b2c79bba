"""ViT options for the ViT-era methods: register tokens, attention masks (prefix-causal), every block's output,
and I-JEPA's predictor ViT."""
from __future__ import annotations

import pytest
import torch

from selfsup.backbones import build_backbone
from selfsup.backbones.vit import ViT, prefix_causal_mask, vit_layer_decay_groups
from selfsup.config import ConfigError, build_run_config
from selfsup.heads.predictor_vit import PredictorViT


def tiny(image_size: int = 16, seed: int = 0, **kw) -> ViT:
    torch.manual_seed(seed)
    args = dict(image_size=image_size, patch_size=4, in_channels=3, dim=32, depth=2, heads=2)
    args.update(kw)
    return ViT(**args).eval()


def perturb_patch(x: torch.Tensor, j: int, gw: int, p: int = 4, seed: int = 7) -> torch.Tensor:
    """``x`` with the pixels of patch ``j`` (raster order on a grid ``gw`` patches wide) replaced by noise."""
    r, c = divmod(j, gw)
    out = x.clone()
    g = torch.Generator().manual_seed(seed)
    out[..., r * p:(r + 1) * p, c * p:(c + 1) * p] = 5 * torch.randn(out[..., :p, :p].shape, generator=g)
    return out


# -- attention masks ---------------------------------------------------------------------------------------
def test_prefix_causal_mask_is_bidirectional_in_the_prefix_and_causal_after():
    n, s = 6, 3
    m = prefix_causal_mask(n, s)
    expect = torch.tensor([[k <= q or k < s for k in range(n)] for q in range(n)])
    assert m.dtype == torch.bool and torch.equal(m, expect)
    assert torch.equal(prefix_causal_mask(n, 0), torch.ones(n, n, dtype=torch.bool).tril())
    assert torch.equal(prefix_causal_mask(n, 1), torch.ones(n, n, dtype=torch.bool).tril())
    assert prefix_causal_mask(n, n).all()
    per_sample = prefix_causal_mask(n, torch.tensor([1, 3, 6]))
    assert per_sample.shape == (3, 1, n, n)
    for b, p in enumerate((1, 3, 6)):
        assert torch.equal(per_sample[b, 0], prefix_causal_mask(n, p))


def test_masked_attention_equals_the_explicit_masked_softmax():
    m = tiny()
    attn = m.blocks[0].attn
    x = torch.randn(2, 6, 32)
    mask = prefix_causal_mask(6, torch.tensor([2, 4]))
    w = attn.weights(x, mask)
    assert torch.all(w[~mask.expand_as(w)] == 0)
    assert torch.allclose(w.sum(-1), torch.ones(2, 2, 6), atol=1e-6)
    _, _, v = attn._qkv(x)
    manual = attn.proj((w @ v).transpose(1, 2).flatten(2))
    assert torch.allclose(attn(x, mask), manual, atol=1e-5)
    assert not torch.allclose(attn(x, mask), attn(x), atol=1e-4)  # the mask changes the result


@pytest.mark.parametrize("registers", [0, 2])
def test_prefix_causal_vit_output_ignores_later_patches(registers):
    """Under a prefix-causal mask over the whole sequence (CLS and registers inside the prefix), the output at
    patch i does not depend on any patch j > i outside the prefix; a prefix patch reaches every position."""
    m = tiny(registers=registers)
    x = torch.randn(1, 3, 16, 16)
    t, prefix = m.num_prefix_tokens, 4
    mask = prefix_causal_mask(t + 16, t + prefix)
    base = m.forward_tokens(x, attn_mask=mask)[:, 1:]  # (1, N, D), registers dropped
    for j in (5, 9, 15):
        out = m.forward_tokens(perturb_patch(x, j, 4), attn_mask=mask)[:, 1:]
        assert torch.allclose(out[:, :j], base[:, :j], atol=1e-6), j
        assert not torch.allclose(out[:, j], base[:, j], atol=1e-4), j
    out = m.forward_tokens(perturb_patch(x, 2, 4), attn_mask=mask)[:, 1:]
    assert not torch.allclose(out[:, 0], base[:, 0], atol=1e-4)  # patch 2 is in the prefix: position 0 sees it
    full = m.forward_tokens(perturb_patch(x, 15, 4))[:, 1:]  # without a mask: bidirectional
    assert not torch.allclose(full[:, 0], m.forward_tokens(x)[:, 1:][:, 0], atol=1e-4)


# -- register tokens ---------------------------------------------------------------------------------------
def test_no_registers_keeps_the_state_keys_and_the_random_weights():
    plain, none = tiny(), tiny(registers=0)
    assert list(plain.state_dict()) == list(none.state_dict())
    assert "reg_token" not in plain.state_dict() and plain.num_prefix_tokens == 1
    reg = tiny(registers=3)
    assert set(reg.state_dict()) == set(plain.state_dict()) | {"reg_token"}
    assert reg.reg_token is not None and reg.reg_token.shape == (1, 3, 32)
    for k, v in plain.state_dict().items():  # registers are initialised last: the other weights are unchanged
        assert torch.equal(v, reg.state_dict()[k]), k


def test_registers_sit_after_cls_without_position_and_leave_every_output():
    m = tiny(registers=2)
    with torch.no_grad():
        m.reg_token.normal_()  # large enough to matter
    x = torch.randn(3, 3, 16, 16)
    emb = m.embed(x)
    assert emb.shape == (3, 1 + 2 + 16, 32)
    assert torch.equal(emb[:, 1:3], m.reg_token.expand(3, -1, -1))  # no position embedding on registers
    assert torch.allclose(emb[:, 3], m.embed(x, keep=torch.zeros(3, 1, dtype=torch.long))[:, 3])
    tokens = m.forward_tokens(x)
    assert tokens.shape == (3, 1 + 16, 32)
    st = m.forward_stages(x)
    assert st["block1"].shape == st["block2"].shape == (3, 1 + 16, 32)
    assert torch.allclose(st["tokens"], tokens, atol=1e-6) and torch.allclose(st["pooled"], m(x), atol=1e-6)
    assert m.forward_tokens(x, keep=torch.tensor([[0, 5]] * 3)).shape == (3, 1 + 2, 32)
    a = m.get_last_attention(x)
    assert a.shape == (3, 2, 4, 4) and torch.allclose(a.sum(dim=(-2, -1)), torch.ones(3, 2), atol=1e-5)
    # the registers take part in attention: the same weights without them give other features
    plain = tiny(registers=0)
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if k != "reg_token"})
    assert not torch.allclose(plain(x), m(x), atol=1e-4)
    assert torch.equal(plain.drop_registers(emb), emb)  # the identity without registers
    assert torch.equal(m.drop_registers(emb), torch.cat([emb[:, :1], emb[:, 3:]], dim=1))


def test_registers_export_under_timm_names_and_import_back():
    m = tiny(registers=2, pos_embed="learned")
    out = m.export_state_dict()
    assert out["reg_token"].shape == (1, 2, 32)
    assert out["pos_embed"].shape == (1, 1 + 2 + 16, 32) and not out["pos_embed"][:, :3].any()
    fresh = tiny(seed=1, registers=2, pos_embed="learned")
    fresh.load_state_dict(fresh.import_state_dict(out))
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(fresh(x), m(x), atol=1e-6)
    assert tiny().export_state_dict()["pos_embed"].shape == (1, 1 + 16, 32)  # no registers: as before


def test_registers_are_a_backbone_option_with_a_one_line_error_elsewhere():
    bb = build_backbone("vit-test", image_size=16, registers=3)
    assert isinstance(bb, ViT) and bb.num_registers == 3 and bb(torch.randn(1, 3, 16, 16)).shape == (1, 32)
    assert build_backbone("vit-test", image_size=16).num_registers == 0
    with pytest.raises(ConfigError, match="backbone.registers=2: backbone 'convnet' has no register tokens"):
        build_backbone("convnet", width=0.25, registers=2)
    with pytest.raises(ConfigError, match="backbone.registers"):
        build_backbone("vit-test", registers=-1)
    assert build_run_config({"backbone": {"name": "vit-test", "registers": 4}}).backbone.registers == 4
    assert build_run_config({}).backbone.registers == 0
    with pytest.raises(ConfigError, match="backbone.registers"):
        build_run_config({"backbone": {"registers": -1}})


def test_registers_join_layer_zero_without_weight_decay():
    m = tiny(registers=2)
    groups = vit_layer_decay_groups(m, 1.0, 0.5, weight_decay=0.05)
    (g,) = [g for g in groups if any(p is m.reg_token for p in g["params"])]
    assert g["layer_id"] == 0 and g["weight_decay"] == 0.0


# -- every block's output ----------------------------------------------------------------------------------
@pytest.mark.parametrize("registers", [0, 1])
def test_forward_blocks_gives_each_block_output_before_the_final_norm(registers):
    m = tiny(registers=registers)
    x = torch.randn(2, 3, 16, 16)
    blocks = m.forward_blocks(x)
    assert len(blocks) == m.depth and all(b.shape == (2, 1 + 16, 32) for b in blocks)
    st = m.forward_stages(x)
    for name, b in zip(m.stage_names, blocks):
        assert torch.allclose(st[name], b, atol=1e-6)
    assert torch.allclose(m.norm(blocks[-1]), m.forward_tokens(x), atol=1e-6)
    t = m.embed(x)  # what a method iterating the blocks itself does
    for blk, b in zip(m.blocks, blocks):
        t = blk(t)
        assert torch.allclose(m.drop_registers(t), b, atol=1e-6)
    keep = torch.tensor([[0, 3, 8], [1, 2, 15]])
    assert all(b.shape == (2, 1 + 3, 32) for b in m.forward_blocks(x, keep=keep))


# -- I-JEPA's predictor ------------------------------------------------------------------------------------
def predictor(seed: int = 0) -> PredictorViT:
    torch.manual_seed(seed)
    return PredictorViT(32, dim=16, depth=2, heads=2).eval()


def test_predictor_shapes_and_options():
    p = predictor()
    ctx, ids, tgt = torch.randn(3, 1 + 5, 32), torch.randint(0, 16, (3, 5)), torch.randint(0, 16, (3, 4))
    assert p(ctx, ids, tgt, (4, 4)).shape == (3, 4, 32)
    assert len(p.blocks) == 2 and p.embed.out_features == 16
    assert p(ctx[:, 1:], ids, tgt, (4, 4), prefix=0).shape == (3, 4, 32)
    with pytest.raises(ValueError, match="context tokens"):
        p(ctx, ids[:, :4], tgt, (4, 4))
    with pytest.raises(ValueError, match="pred_dim"):
        PredictorViT(32, dim=18, depth=1, heads=4)


def test_predictor_follows_positions_not_the_order_of_its_inputs():
    """Context tokens carry their position (sin-cos of their patch index): shuffling them together with their
    indices changes nothing; a query is its target position: permuting targets permutes the predictions,
    and moving a query to another position changes its prediction."""
    p = predictor()
    ctx = torch.randn(2, 1 + 6, 32)
    ids = torch.tensor([[0, 2, 5, 7, 9, 11], [1, 3, 4, 6, 8, 10]])
    tgt = torch.tensor([[12, 13, 14], [12, 13, 14]])
    out = p(ctx, ids, tgt, (4, 4))
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    shuffled = torch.cat([ctx[:, :1], ctx[:, 1:][:, perm]], dim=1)
    assert torch.allclose(p(shuffled, ids[:, perm], tgt, (4, 4)), out, atol=1e-5)
    assert torch.allclose(p(ctx, ids, tgt[:, [2, 0, 1]], (4, 4)), out[:, [2, 0, 1]], atol=1e-5)
    moved = p(ctx, ids, torch.tensor([[12, 13, 15], [12, 13, 15]]), (4, 4))
    assert not torch.allclose(moved[:, 2], out[:, 2], atol=1e-4)


def test_registers_export_loads_into_timm_with_reg_tokens():
    pytest.importorskip("timm", reason="timm is an optional extra")
    from timm.models.vision_transformer import VisionTransformer

    m = tiny(registers=2)
    with torch.no_grad():
        m.reg_token.normal_()
    ref = VisionTransformer(img_size=16, patch_size=4, in_chans=3, embed_dim=32, depth=2, num_heads=2,
                            mlp_ratio=4.0, qkv_bias=True, num_classes=0, global_pool="token", reg_tokens=2).eval()
    ref.load_state_dict(m.export_state_dict(), strict=True)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ref(x), m(x), rtol=1e-4, atol=1e-5)
