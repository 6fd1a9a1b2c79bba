"""I-JEPA (multi-block masks, the context encoder's view, targets, loss, EMA schedule) and AIM (prefix-causal
next-patch regression): losses against float64 re-derivations, values and gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import selfsup.methods.aim as aim_mod
from selfsup.augment.masking import first_indices, gather_tokens, multiblock_masking, patchify, unpatchify
from selfsup.backbones import build_backbone
from selfsup.backbones.vit import ViT
from selfsup.components.base import StepContext, update_parts
from selfsup.config import ConfigError
from selfsup.losses.masked import normalize_patches
from selfsup.losses.predictive import jepa_loss, next_patch_mse
from selfsup.methods.base import ViewBatch, build_method

PRED = {"pred_dim": 16, "pred_depth": 1, "pred_heads": 2}


def vit(size: int = 32, registers: int = 0) -> ViT:
    torch.manual_seed(0)
    return ViT(image_size=size, patch_size=4, in_channels=3, dim=32, depth=2, heads=2, registers=registers)


def perturb_patch(x: torch.Tensor, j: int, gw: int, p: int = 4) -> torch.Tensor:
    r, c = divmod(j, gw)
    out = x.clone()
    g = torch.Generator().manual_seed(7)
    out[..., r * p:(r + 1) * p, c * p:(c + 1) * p] = 5 * torch.randn(out[..., :p, :p].shape, generator=g)
    return out


# -- I-JEPA's multi-block masks ---------------------------------------------------------------------------
def test_first_indices_keeps_the_first_true_positions_in_order():
    m = torch.tensor([[0, 1, 1, 0, 1], [1, 1, 0, 1, 0]], dtype=torch.bool)
    assert first_indices(m, 2).tolist() == [[1, 2], [0, 1]]
    assert first_indices(m, 3).tolist() == [[1, 2, 4], [0, 1, 3]]


@pytest.mark.parametrize("grid", [(8, 8), (14, 14)])
def test_multiblock_masks_shapes_ratios_and_disjoint_context(grid):
    n = grid[0] * grid[1]
    for seed in range(5):
        m = multiblock_masking(16, grid, generator=torch.Generator().manual_seed(seed))
        b, blocks, k_t = m.targets.shape
        assert (b, blocks) == (16, 4) and m.context.shape[0] == 16 and m.context.dtype == torch.long
        assert 0.1 <= k_t / n <= 0.3  # scale (0.15, 0.2), rounded to whole rows and columns
        assert 1 <= m.context.shape[1] <= (grid[0] - 1) ** 2  # the square context block, at most (g-1)²
        for i in range(16):
            ctx = m.context[i].tolist()
            assert ctx == sorted(set(ctx))  # ascending raster order, no repeats
            for blk in m.targets[i]:
                rows, cols = blk // grid[1], blk % grid[1]
                h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
                assert h * w == k_t == len(set(blk.tolist()))  # a full rectangle
                assert 0.4 <= h / w <= 2.5  # aspect (0.75, 1.5), rounded
                assert not set(ctx) & set(blk.tolist())  # the context never holds a target patch


def test_multiblock_masks_follow_the_generator_and_the_options():
    a = multiblock_masking(8, (8, 8), generator=torch.Generator().manual_seed(3))
    b = multiblock_masking(8, (8, 8), generator=torch.Generator().manual_seed(3))
    c = multiblock_masking(8, (8, 8), generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.context, b.context) and torch.equal(a.targets, b.targets)
    assert not (torch.equal(a.targets, c.targets) and torch.equal(a.context, c.context))
    one = multiblock_masking(4, (8, 8), num_targets=1, target_scale=(0.5, 0.5), target_aspect=(1.0, 1.0),
                             generator=torch.Generator().manual_seed(0))
    assert one.targets.shape == (4, 1, 36)  # int(64·0.5) = 32 → round(√32) = 6 → 6×6
    with pytest.raises(ConfigError, match="method.target_scale"):
        multiblock_masking(4, (8, 8), target_scale=(0.3, 0.2))


def test_multiblock_context_count_is_the_smallest_in_the_batch():
    """Every sample keeps K_c context patches, K_c the smallest context of the batch: with one more sample the
    count can only shrink, never grow (the authors' convention)."""
    g = torch.Generator().manual_seed(0)
    sizes = [multiblock_masking(32, (8, 8), generator=g).context.shape[1] for _ in range(10)]
    singles = [multiblock_masking(1, (8, 8), generator=g).context.shape[1] for _ in range(40)]
    assert min(sizes) >= 0 and sum(sizes) / len(sizes) < sum(singles) / len(singles)


# -- I-JEPA's loss -----------------------------------------------------------------------------------------
def test_jepa_loss_matches_the_float64_formula_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    pred = (2 * torch.randn(2, 3, 5, 8, generator=g, dtype=torch.float64)).requires_grad_()
    target = torch.randn(2, 3, 5, 8, generator=g, dtype=torch.float64)
    e = pred - target
    assert (e.abs() > 1).any() and (e.abs() < 1).any()  # both branches of smooth L1
    ref = torch.where(e.abs() < 1, 0.5 * e ** 2, e.abs() - 0.5).sum() / e.numel()
    ref_l2 = (e ** 2).sum() / e.numel()
    for kind, expect in (("smooth_l1", ref), ("l2", ref_l2)):
        p = pred.detach().clone().requires_grad_()
        loss = jepa_loss(p, target, kind)
        torch.testing.assert_close(loss, expect, rtol=1e-12, atol=1e-12)
        (grad,) = torch.autograd.grad(loss, p)
        (grad_ref,) = torch.autograd.grad(expect, pred, retain_graph=True)
        torch.testing.assert_close(grad, grad_ref, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="kind"):
        jepa_loss(pred, target, "l1")


# -- I-JEPA, the method ------------------------------------------------------------------------------------
def ijepa(registers: int = 0):
    return build_method("ijepa", vit(registers=registers), PRED)


@pytest.mark.parametrize("registers", [0, 2])
def test_ijepa_context_encoder_never_sees_target_patches(registers):
    """Replace every patch outside the context by noise: the context tokens and the predictions are unchanged
    (the context encoder and the predictor see the context patches only), the targets change."""
    method = ijepa(registers).eval()
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(1)
    m = method.masks(4, (8, 8), x.device)
    seen = torch.zeros(4, 64, dtype=torch.bool)
    seen[torch.arange(4).unsqueeze(1), m.context] = True
    patches = patchify(x, 4)
    x2 = unpatchify(torch.where(seen.unsqueeze(-1), patches, 5 * torch.randn_like(patches)), 4, (8, 8), 3)
    z, pred = method.predict(x, m)
    z2, pred2 = method.predict(x2, m)
    assert z.shape == (4, 1 + m.context.shape[1], 32) and pred.shape == (*m.targets.shape, 32)
    assert torch.allclose(z, z2, atol=1e-6) and torch.allclose(pred, pred2, atol=1e-6)
    h, h2 = method.target_tokens(x), method.target_tokens(x2)
    assert not torch.allclose(gather_tokens(h, m.targets.flatten(1)), gather_tokens(h2, m.targets.flatten(1)))


def test_ijepa_targets_are_the_ema_encoders_layer_normed_patch_tokens():
    method = ijepa()
    x = torch.randn(2, 3, 32, 32)
    h = method.target_tokens(x)
    assert h.shape == (2, 64, 32) and not h.requires_grad
    raw = method.target.teacher.forward_tokens(x)[:, 1:]
    torch.testing.assert_close(h, F.layer_norm(raw, (32,)))
    torch.testing.assert_close(h.mean(-1), torch.zeros(2, 64), atol=1e-5, rtol=0)


def test_ijepa_loss_is_the_jepa_loss_of_each_blocks_predictions_and_targets():
    method = ijepa()
    x = torch.randn(3, 3, 32, 32)
    torch.manual_seed(5)
    out = method(ViewBatch([x]), StepContext(0, 10))
    torch.manual_seed(5)  # the masks are the forward's first draw
    m = method.masks(3, (8, 8), x.device)
    _, pred = method.predict(x, m)
    h = method.target_tokens(x)
    slow = torch.zeros((), dtype=torch.float64)
    count = 0
    for i in range(3):
        for j in range(m.targets.shape[1]):
            e = (pred[i, j] - h[i, m.targets[i, j]]).double()
            slow = slow + torch.where(e.abs() < 1, 0.5 * e ** 2, e.abs() - 0.5).sum()
            count += e.numel()
    torch.testing.assert_close(out.loss.double(), slow / count, rtol=1e-5, atol=1e-6)
    assert float(out.logs["context_patches"]) == m.context.shape[1]
    out.loss.backward()
    assert method.predictor.mask_token.grad is not None and method.backbone.cls_token.grad is not None
    assert all(p.grad is None for p in method.target.teacher.parameters())


def test_ijepa_momentum_rises_linearly_from_0996_to_1():
    method = ijepa()
    assert [method.target.momentum(p) for p in (0.0, 0.5, 1.0)] == pytest.approx([0.996, 0.998, 1.0])
    with torch.no_grad():
        method.backbone.cls_token.add_(1.0)
    before = method.target.teacher.cls_token.clone()
    update_parts(method, StepContext(5, 10))
    expect = 0.998 * before + 0.002 * method.backbone.cls_token
    torch.testing.assert_close(method.target.teacher.cls_token, expect)


def test_ijepa_and_aim_need_the_builtin_vit():
    for name in ("ijepa", "aim"):
        with pytest.raises(ConfigError, match=f"method '{name}' needs the built-in ViT"):
            build_method(name, build_backbone("convnet", width=0.25))
    with pytest.raises(ConfigError, match="method.pred_dim"):
        build_method("ijepa", vit(), {"pred_dim": 18, "pred_heads": 4})


# -- AIM ---------------------------------------------------------------------------------------------------
def test_next_patch_mse_matches_the_float64_formula_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 6, 12, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(3, 6, 12, generator=g, dtype=torch.float64)
    prefix = torch.tensor([1, 3, 5])
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    for b in range(3):
        for j in range(int(prefix[b]), 6):  # targets: the non-prefix patches; patch j is predicted at j - 1
            total = total + ((pred[b, j - 1] - target[b, j]) ** 2).mean()
            count += 1
    ref = total / count
    loss = next_patch_mse(pred, target, prefix)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    (grad,) = torch.autograd.grad(loss, pred)
    (grad_ref,) = torch.autograd.grad(ref, pred)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-12, atol=1e-12)
    assert grad[:, -1].abs().sum() == 0 and grad[2, :3].abs().sum() == 0  # the last row and prefix rows: no target
    with pytest.raises(ValueError, match="do not fit"):
        next_patch_mse(pred, target, prefix[:2])


def aim(registers: int = 0, size: int = 16):
    return build_method("aim", vit(size, registers), {"head_depth": 1}).eval()


@pytest.mark.parametrize("registers", [0, 1])
def test_aim_prediction_at_i_does_not_depend_on_later_patches_outside_the_prefix(registers):
    method = aim(registers)
    x = torch.randn(2, 3, 16, 16)
    prefix = torch.tensor([3, 6])
    base = method.predict(method.encode(x, prefix), (4, 4))
    assert base.shape == (2, 16, 4 * 4 * 3)
    for j in (7, 10, 15):  # outside both prefixes
        out = method.predict(method.encode(perturb_patch(x, j, 4), prefix), (4, 4))
        assert torch.allclose(out[:, :j], base[:, :j], atol=1e-6), j
        assert not torch.allclose(out[:, j], base[:, j], atol=1e-4), j
    out = method.predict(method.encode(perturb_patch(x, 2, 4), prefix), (4, 4))
    assert not torch.allclose(out[:, 0], base[:, 0], atol=1e-4)  # patch 2 is in both prefixes: seen at 0


def test_aim_loss_is_the_next_patch_mse_on_normalised_pixels_of_non_prefix_patches(monkeypatch):
    method = aim()
    x = torch.randn(4, 3, 16, 16)
    torch.manual_seed(2)
    out = method(ViewBatch([x]), StepContext(0, 10))
    torch.manual_seed(2)  # the prefixes are the forward's first draw
    prefix = method.draw_prefix(4, 16, x.device)
    pred = method.predict(method.encode(x, prefix), (4, 4))
    expect = next_patch_mse(pred, normalize_patches(patchify(x, 4)), prefix)
    torch.testing.assert_close(out.loss, expect)
    # prefix patches are never targets: corrupting them in the target leaves the loss unchanged
    keep = torch.arange(16).unsqueeze(0) >= prefix.unsqueeze(1)  # (B, N) the target patches

    def corrupt(img, p):
        t = patchify(img, p)
        return torch.where(keep.unsqueeze(-1), t, t + 50.0 * torch.randn_like(t))

    monkeypatch.setattr(aim_mod, "patchify", corrupt)
    torch.manual_seed(2)
    torch.testing.assert_close(method(ViewBatch([x]), StepContext(0, 10)).loss, out.loss)


def test_aim_prefixes_are_uniform_between_one_and_n_minus_one():
    method = aim()
    torch.manual_seed(0)
    p = method.draw_prefix(4000, 16, torch.device("cpu"))
    assert p.shape == (4000,) and int(p.min()) == 1 and int(p.max()) == 15
    counts = torch.bincount(p, minlength=16)[1:]
    assert counts.min() > 150  # 4000 / 15 ≈ 267 each
    with pytest.raises(ConfigError, match="at least 2 patches"):
        method.draw_prefix(4, 1, torch.device("cpu"))


# -- a whole run -------------------------------------------------------------------------------------------
def test_an_ijepa_run_with_registers_exports_and_loads_back(tmp_path):
    """backbone.registers reaches the run's ViT, its checkpoint and its export; load_encoder reads the
    register count back from the exported weights and gives the run's features."""
    from conftest import make_blobs

    from selfsup.config import build_run_config
    from selfsup.engine.export import export_backbone
    from selfsup.engine.trainer import pretrain
    from selfsup.use.encoder import load_encoder

    cfg = build_run_config({"method": {"name": "ijepa", **PRED}, "backbone": {"name": "vit-test", "registers": 2},
                            "train": {"epochs": 1, "batch_size": 8, "device": "cpu", "max_steps": 2},
                            "optim": {"warmup_epochs": 0.5}})
    run = tmp_path / "run"
    pretrain(cfg, run, data=make_blobs(n=16, size=16), quiet=True)
    path = export_backbone(run, "pt", tmp_path / "bb.pt")
    enc, ref = load_encoder(path), load_encoder(run)
    assert enc.backbone.num_registers == ref.backbone.num_registers == 2
    x = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    torch.testing.assert_close(enc.embed(x), ref.embed(x))
