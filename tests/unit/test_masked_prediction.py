"""SimMIM, data2vec and MaskFeat: their losses and targets against slow float64 re-derivations of the papers'
formulas (values and gradients), the batched HOG against a per-pixel loop, the masks (counts, whole mask units)
and that the student encoder never sees the content of the patches it must predict."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import selfsup.methods.data2vec as d2v_mod
import selfsup.methods.maskfeat as maskfeat_mod
import selfsup.methods.simmim as simmim_mod
from selfsup.augment.hog import cell_histograms, hog_patches
from selfsup.augment.masking import num_masked_units, unit_masking
from selfsup.backbones import build_backbone
from selfsup.components.base import StepContext, update_parts
from selfsup.config import ConfigError
from selfsup.losses.masked import layer_average_targets, masked_l1, masked_smooth_l1
from selfsup.methods.base import ViewBatch, build_method

NAMES = ("simmim", "data2vec", "maskfeat")


def vit(size: int = 16, patch: int | None = None):
    torch.manual_seed(0)
    return build_backbone("vit-test", image_size=size, patch_size=patch)


def _g(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _mask(b: int, n: int, seed: int) -> torch.Tensor:
    m = torch.rand(b, n, generator=torch.Generator().manual_seed(seed)) > 0.5
    m[0, 0] = True
    return m


def assert_same_value_and_grads(out: torch.Tensor, ref: torch.Tensor, leaves: tuple[torch.Tensor, ...],
                                tol: float = 1e-10) -> None:
    """``out`` equals the slow ``ref`` in float64, and so do their gradients (weighted by a fixed random w)."""
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    w = _g(*out.shape, seed=9) if out.ndim else torch.ones((), dtype=torch.float64)
    got = torch.autograd.grad((out * w).sum(), leaves)
    want = torch.autograd.grad((ref * w).sum(), leaves)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=tol, atol=tol)


# -- losses and targets ------------------------------------------------------------------------------------------
def test_masked_l1_matches_float64_formula_and_gradients():
    pred, target = _g(3, 5, 4, seed=0).requires_grad_(), _g(3, 5, 4, seed=1).requires_grad_()
    mask = _mask(3, 5, seed=2)
    terms = [sum(abs(pred[b, i, p] - target[b, i, p]) for p in range(4)) / 4
             for b in range(3) for i in range(5) if mask[b, i]]
    ref = sum(terms) / len(terms)
    assert_same_value_and_grads(masked_l1(pred, target, mask), ref, (pred, target))
    g, = torch.autograd.grad(masked_l1(pred, target, mask), pred)
    assert (g[~mask] == 0).all()  # visible patches get no gradient


@pytest.mark.parametrize("beta", [2.0, 0.5, 0.0])
def test_masked_smooth_l1_matches_float64_formula_and_gradients(beta):
    pred = (_g(2, 6, 8, seed=0) * 2).requires_grad_()
    target = _g(2, 6, 8, seed=1).requires_grad_()
    mask = _mask(2, 6, seed=2)

    def ell(e):  # smooth L1 with threshold β (data2vec, Eq. 2); β = 0: the squared error
        if beta == 0:
            return e * e
        return 0.5 * e * e / beta if abs(float(e)) < beta else abs(e) - 0.5 * beta

    terms = [sum(ell(pred[b, i, d] - target[b, i, d]) for d in range(8)) / math.sqrt(8)
             for b in range(2) for i in range(6) if mask[b, i]]
    ref = sum(terms) / len(terms)
    assert_same_value_and_grads(masked_smooth_l1(pred, target, mask, beta), ref, (pred, target))
    if beta == 2.0:  # both branches of the smooth L1 are exercised
        e = (pred - target).detach()[mask].abs()
        assert (e < beta).any() and (e >= beta).any()
    with pytest.raises(ValueError, match="beta must be >= 0"):
        masked_smooth_l1(pred, target, mask, -1.0)


@pytest.mark.parametrize("block_norm,final_norm", [(True, False), (False, True), (True, True), (False, False)])
def test_layer_average_targets_match_float64_formula_and_gradients(block_norm, final_norm):
    layers = (_g(3, 2, 4, 6, seed=0) * 3 + 1).requires_grad_()
    eps = 1e-5

    def norm(v):  # one token's D features, no learned parameters, biased variance
        mu = sum(v) / len(v)
        var = sum((a - mu) ** 2 for a in v) / len(v)
        return [(a - mu) / torch.sqrt(var + eps) for a in v]

    rows = []
    for b in range(2):
        for i in range(4):
            per_layer = [[layers[k, b, i, d] for d in range(6)] for k in range(3)]
            if block_norm:
                per_layer = [norm(v) for v in per_layer]
            avg = [sum(per_layer[k][d] for k in range(3)) / 3 for d in range(6)]
            rows.append(torch.stack(norm(avg) if final_norm else avg))
    ref = torch.stack(rows).view(2, 4, 6)
    out = layer_average_targets(layers, block_norm, final_norm)
    assert out.shape == (2, 4, 6)
    assert_same_value_and_grads(out, ref, (layers,), tol=1e-9)


# -- HOG ---------------------------------------------------------------------------------------------------------
def slow_cell_histogram(x: torch.Tensor, b: int, c: int, top: int, left: int, cell: int, bins: int) -> list[float]:
    """One cell's orientation histogram by the definition, pixel by pixel (reflect padding at the border)."""
    h, w = x.shape[-2:]

    def px(i: int, j: int) -> float:
        i = -i if i < 0 else 2 * (h - 1) - i if i >= h else i
        j = -j if j < 0 else 2 * (w - 1) - j if j >= w else j
        return float(x[b, c, i, j])

    hist = [0.0] * bins
    for i in range(top, top + cell):
        for j in range(left, left + cell):
            gx, gy = px(i, j + 1) - px(i, j - 1), px(i + 1, j) - px(i - 1, j)
            theta = math.atan2(gy, gx) % math.pi  # unsigned orientation in [0, π)
            hist[min(bins - 1, int(theta * bins / math.pi))] += math.sqrt(gx * gx + gy * gy)
    return hist


def slow_hog(x: torch.Tensor, patch: int, cell: int, bins: int, norm: str, eps: float = 1e-6) -> torch.Tensor:
    """HOG rows (B, N, C·k²·bins), k = patch/cell: per patch, channel by channel, its cells' histograms in raster
    order, L2-normalised per channel and patch (``norm="patch"``) or per cell (``"cell"``)."""
    def l2(v: list[float]) -> list[float]:
        n = math.sqrt(sum(a * a for a in v) + eps * eps)
        return [a / n for a in v]

    bsz, chans, h, w = x.shape
    k = patch // cell
    out = []
    for b in range(bsz):
        rows = []
        for top in range(0, h, patch):
            for left in range(0, w, patch):
                row: list[float] = []
                for c in range(chans):
                    vec: list[float] = []
                    for ci in range(k):
                        for cj in range(k):
                            hist = slow_cell_histogram(x, b, c, top + ci * cell, left + cj * cell, cell, bins)
                            vec += l2(hist) if norm == "cell" else hist
                    row += l2(vec) if norm == "patch" else vec
                rows.append(row)
        out.append(rows)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("norm", ["patch", "cell"])
@pytest.mark.parametrize("size,patch,cell,bins", [((8, 8), 4, 2, 9), ((8, 12), 4, 4, 9), ((6, 6), 3, 1, 4)])
def test_hog_matches_the_per_pixel_definition(norm, size, patch, cell, bins):
    x = _g(2, 3, *size, seed=0)
    got = hog_patches(x, patch, cell, bins, norm=norm)
    want = slow_hog(x, patch, cell, bins, norm)
    n = (size[0] // patch) * (size[1] // patch)
    assert got.shape == want.shape == (2, n, 3 * (patch // cell) ** 2 * bins)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_hog_of_edges_lands_in_the_right_orientation_bin():
    x = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    x[..., :, 4:] = 1.0  # a vertical edge: horizontal gradient, θ = 0
    h = cell_histograms(x, 2, 9)
    assert h.shape == (1, 1, 4, 4, 9)
    assert (h[..., 1:] == 0).all() and h[..., 0].sum() > 0
    h = cell_histograms(x.transpose(-1, -2), 2, 9)  # a horizontal edge: vertical gradient, θ = π/2 → bin 4
    others = [i for i in range(9) if i != 4]
    assert (h[..., others] == 0).all() and h[..., 4].sum() > 0


def test_hog_rows_are_unit_norm_per_channel_and_ignore_each_channels_scale_and_offset():
    x = _g(2, 3, 16, 16, seed=1)
    rows = hog_patches(x, 4, 2)
    assert rows.shape == (2, 16, 108)  # MaskFeat's 3 channels · 2x2 cells · 9 bins per patch
    torch.testing.assert_close(rows.view(2, 16, 3, 36).norm(dim=-1), torch.ones(2, 16, 3, dtype=torch.float64))
    scale = torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64).view(1, 3, 1, 1)
    shifted = x * scale + torch.tensor([1.0, -2.0, 0.3], dtype=torch.float64).view(1, 3, 1, 1)
    torch.testing.assert_close(hog_patches(shifted, 4, 2), rows, rtol=1e-8, atol=1e-8)  # as a normalised view


def test_hog_bad_sizes_are_errors():
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="cell size 3 does not divide the patch size 4"):
        hog_patches(x, 4, 3)
    with pytest.raises(ValueError, match="not divisible by patch size 3"):
        hog_patches(x, 3, 1)
    with pytest.raises(ValueError, match="HOG norm must be one of"):
        hog_patches(x, 4, 2, norm="block")


# -- masks -------------------------------------------------------------------------------------------------------
def test_unit_masking_masks_whole_units_at_simmims_count():
    assert num_masked_units(16, 0.6) == 10  # SimMIM: ceil(M · r)
    assert num_masked_units(4, 0.6) == 3
    m = unit_masking(6, (8, 8), 2, 0.6, generator=torch.Generator().manual_seed(0))
    assert m.shape == (6, 64) and m.dtype == torch.bool
    assert (m.sum(1) == 10 * 4).all()
    per_unit = m.view(6, 4, 2, 4, 2).sum(dim=(2, 4))  # (B, unit row, unit col): masked patches in each unit
    assert ((per_unit == 0) | (per_unit == 4)).all()  # every unit is all masked or all visible
    assert len({tuple(r.tolist()) for r in m}) > 1  # drawn per sample
    assert (unit_masking(3, (4, 4), 1, 0.75).sum(1) == 12).all()  # unit 1: random masking of patches


def test_unit_masking_bad_geometry_is_an_error():
    with pytest.raises(ValueError, match="does not split into 3x3 mask units"):
        unit_masking(2, (8, 8), 3, 0.6)
    with pytest.raises(ValueError, match="at least 2 mask units"):
        unit_masking(2, (4, 4), 4, 0.6)
    with pytest.raises(ConfigError, match=r"mask_ratio must be in \(0, 1\)"):
        unit_masking(2, (8, 8), 2, 1.0)


@pytest.fixture
def spy_embed(monkeypatch):
    """``install(method)`` → a list that receives (tokens, mask) each time the backbone embeds a masked input."""
    def install(method):
        seen: list[tuple[torch.Tensor, torch.Tensor]] = []
        original = method.backbone.embed

        def spy(img, **kw):
            out = original(img, **kw)
            if kw.get("mask") is not None:
                seen.append((out.detach().clone(), kw["mask"].clone()))
            return out

        monkeypatch.setattr(method.backbone, "embed", spy)
        return seen
    return install


# masked patches of 16 (a 4x4 grid): SimMIM 3 of 4 units of 2x2 patches; round(16 · 0.6); round(16 · 0.4)
COUNTS = {"simmim": 12, "data2vec": 10, "maskfeat": 6}


@pytest.mark.parametrize("name", NAMES)
def test_student_sees_only_the_mask_token_where_masked(name, spy_embed):
    method = build_method(name, vit())
    seen = spy_embed(method)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(5)
    method(ViewBatch([x]))
    emb, mask = seen[-1]
    assert mask.shape == (4, 16) and (mask.sum(1) == COUNTS[name]).all()
    # masked positions hold the mask token plus their position embedding: nothing of the image
    pos = method.backbone.pos_embed_for((4, 4))[0].detach()
    expect = (method.mask_token.detach() + pos).unsqueeze(0).expand(4, -1, -1)[mask]
    torch.testing.assert_close(emb[:, -16:][mask], expect)
    # new pixels inside the masked patches change nothing the student encodes
    p = method.backbone.patch_size
    pix = mask.view(4, 1, 4, 4).repeat_interleave(p, 2).repeat_interleave(p, 3)
    x2 = torch.where(pix, 10 * torch.randn_like(x), x)
    torch.manual_seed(5)
    method(ViewBatch([x2]))
    emb2, mask2 = seen[-1]
    assert torch.equal(mask2, mask)
    torch.testing.assert_close(emb2, emb, rtol=0, atol=1e-6)


def _capture(monkeypatch, module, name: str) -> list:
    """Record what ``module.name`` (a mask function) returns."""
    out: list = []
    original = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: out.append(original(*a, **k)) or out[-1])
    return out


@pytest.mark.parametrize("name,module,mask_fn", [("simmim", simmim_mod, "unit_masking"),
                                                 ("data2vec", d2v_mod, "block_masking"),
                                                 ("maskfeat", maskfeat_mod, "block_masking")])
def test_loss_ignores_the_targets_of_visible_patches(name, module, mask_fn, monkeypatch):
    method = build_method(name, vit())
    masks = _capture(monkeypatch, module, mask_fn)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    loss = method(ViewBatch([x])).loss
    mask = masks[-1].unsqueeze(-1)
    if name == "simmim":  # the target is the view's patches
        original = simmim_mod.patchify
        monkeypatch.setattr(simmim_mod, "patchify", lambda img, p: torch.where(mask, original(img, p), 99.0))
    else:
        targets = method.targets
        monkeypatch.setattr(method, "targets", lambda *a: torch.where(mask, targets(*a), 99.0))
    torch.manual_seed(1)
    torch.testing.assert_close(method(ViewBatch([x])).loss, loss)


# -- method specifics --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_methods_need_a_vit(name):
    with pytest.raises(ConfigError, match=f"method '{name}' needs a ViT backbone") as e:
        build_method(name, build_backbone("convnet", width=0.25))
    assert "\n" not in str(e.value)


def test_simmim_mask_units_and_pixel_head():
    method = build_method("simmim", vit())
    assert method.mask_patch_size == 8 and method.unit == 2  # default: twice the 4-px patch
    assert method.head.out_features == 4 * 4 * 3  # the raw pixels of one patch
    assert build_method("simmim", vit(32), {"mask_patch_size": 16}).unit == 4
    with pytest.raises(ConfigError, match=r"method.mask_patch_size \(6\) must be a multiple of backbone.patch_size"):
        build_method("simmim", vit(), {"mask_patch_size": 6})
    with pytest.raises(ConfigError, match="method.mask_patch_size=16: a 4x4 grid of patches does not split"):
        build_method("simmim", vit(), {"mask_patch_size": 16})


def test_data2vec_targets_average_the_teachers_top_k_blocks_on_the_unmasked_view():
    assert build_method("data2vec", vit()).top_k == 1  # default: half the depth (vit-test has 2 blocks)
    bb = vit()
    method = build_method("data2vec", bb, {"top_k": 2})
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the teacher starts as a copy of the student's blocks
        t, outs = bb.embed(x), []
        for blk in bb.blocks:
            t = blk(t)
            outs.append(F.layer_norm(t[:, 1:], (32,), eps=1e-5))
    torch.testing.assert_close(method.targets(x, 16), torch.stack(outs).mean(0))
    with pytest.raises(ConfigError, match=r"method.top_k \(3\) is more than the ViT's 2 blocks"):
        build_method("data2vec", vit(), {"top_k": 3})


def test_data2vec_teacher_is_an_ema_of_the_blocks_only():
    method = build_method("data2vec", vit(), {"momentum_base": 0.9, "momentum_final": 0.99})
    keys = [k for k in method.state_dict() if k.startswith("teacher.")]
    assert keys and all(k.startswith("teacher.teacher.") or k == "teacher.last_momentum" for k in keys)
    assert not any(p.requires_grad for p in method.teacher.parameters())
    assert method.teacher.momentum(0.0) == pytest.approx(0.9)  # linear over the whole run by default
    assert method.teacher.momentum(0.5) == pytest.approx(0.945)
    assert method.teacher.momentum(1.0) == pytest.approx(0.99)
    before = [p.detach().clone() for p in method.teacher.parameters()]
    with torch.no_grad():
        for p in method.backbone.blocks.parameters():
            p.add_(1.0)
    update_parts(method, StepContext(step=0, total_steps=10))  # progress 0: momentum 0.9
    for b0, t, s in zip(before, method.teacher.parameters(), method.backbone.blocks.parameters()):
        torch.testing.assert_close(t.detach(), 0.9 * b0 + 0.1 * s.detach())


def test_maskfeat_hog_geometry():
    method = build_method("maskfeat", vit())
    assert method.cell == 2 and method.head.out_features == 108  # half the 4-px patch; 3 · 2² · 9
    assert build_method("maskfeat", vit(32, patch=8)).cell == 4
    assert build_method("maskfeat", vit(), {"hog_cell": 4, "hog_bins": 6}).head.out_features == 3 * 6
    with pytest.raises(ConfigError, match=r"method.hog_cell \(3\) must divide backbone.patch_size \(4\)"):
        build_method("maskfeat", vit(), {"hog_cell": 3})
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(method.targets(x), hog_patches(x, 4, 2))
