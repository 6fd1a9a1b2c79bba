"""Classic pretext tasks: transforms, Lab colour, losses against slow re-derivations, evaluation hooks.

(The registry-generated contract tests also check that each of these methods lowers its loss in a few steps.)
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_blobs

from selfsup.augment.color import (
    ab_bin_centers,
    encode_ab,
    lab_to_rgb,
    quantize_ab,
    rebalancing_weights,
    rgb_to_lab,
    scale_lab,
)
from selfsup.augment.pretext import (
    color_drop,
    color_project,
    grid_tiles,
    min_hamming,
    patch_grid,
    permutation_set,
    rotate_all,
    rotate_random,
    tile_positions,
)
from selfsup.backbones import build_backbone
from selfsup.config import ConfigError
from selfsup.losses.pretext import cpc_info_nce, cpc_positive_index, masked_mse, soft_cross_entropy
from selfsup.methods.base import ViewBatch, build_method
from selfsup.methods.pretext.context_encoder import region_mask
from selfsup.methods.pretext.cpc import RowCausalContext
from selfsup.methods.pretext.relative_patch import CENTRE, NEIGHBOURS, neighbour_offsets
from selfsup.registry import METHODS

PRETEXT = ("rotation", "relative-patch", "jigsaw", "colorization", "split-brain", "context-encoder",
           "denoising-ae", "cpc")


def _method(name: str, channels: int = 3, **cfg):
    cls = METHODS.get(name)
    torch.manual_seed(0)
    bb = build_backbone("convnet", in_channels=cls.backbone_in_channels(channels), width=0.25)
    return build_method(name, bb, {**getattr(cls, "test_overrides", {}), **cfg})


def test_all_pretext_methods_registered():
    assert set(PRETEXT) <= set(METHODS.names())


# --------------------------------------------------------------------------------------------- rotation
def _rot_slow(img: torch.Tensor, k: int) -> torch.Tensor:
    """Counter-clockwise by k·90°, pixel by pixel: out[i, j] = in[j, n-1-i] for one quarter turn."""
    out = img.clone()
    n = img.shape[-1]
    for _ in range(k):
        new = torch.empty_like(out)
        for i in range(n):
            for j in range(n):
                new[:, i, j] = out[:, j, n - 1 - i]
        out = new
    return out


def test_rotation_labels_match_applied_rotation():
    x = torch.randn(3, 2, 5, 5)
    out, labels = rotate_all(x)
    assert out.shape == (12, 2, 5, 5) and labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    for n in range(12):
        assert torch.equal(out[n], _rot_slow(x[n % 3], int(labels[n])))


def test_rotate_random_matches_its_labels():
    torch.manual_seed(1)
    x = torch.randn(20, 3, 6, 6)
    out, labels = rotate_random(x)
    assert len(set(labels.tolist())) > 1
    for n in range(20):
        assert torch.equal(out[n], _rot_slow(x[n], int(labels[n])))


def test_rotation_rejects_non_square():
    with pytest.raises(ValueError, match="square"):
        rotate_all(torch.randn(2, 3, 4, 6))


# ------------------------------------------------------------------------------------- permutation sets
@pytest.mark.parametrize("num,n", [(100, 9), (30, 9), (12, 4)])
def test_permutation_set_size_and_hamming(num, n):
    perms = permutation_set(num, n, seed=0)
    assert perms.shape == (num, n)
    assert all(sorted(p) == list(range(n)) for p in perms.tolist())  # valid permutations
    assert len({tuple(p) for p in perms.tolist()}) == num  # distinct classes
    g = torch.Generator().manual_seed(0)
    rand_mins = []
    for _ in range(5):
        seen: set = set()
        rows = []
        while len(rows) < num:
            p = tuple(torch.randperm(n, generator=g).tolist())
            if p not in seen:
                seen.add(p)
                rows.append(p)
        rand_mins.append(min_hamming(torch.tensor(rows)))
    assert min_hamming(perms) >= max(rand_mins)


def test_permutation_set_greedy_maxmin_beats_random_by_a_margin():
    assert min_hamming(permutation_set(100, 9)) >= 6  # random sets of 100 sit at 2-3


def test_permutation_set_errors():
    with pytest.raises(ValueError, match="number of permutations"):
        permutation_set(25, 4)
    with pytest.raises(ConfigError, match="method.num_permutations"):
        _method("jigsaw", num_permutations=1001)


def test_jigsaw_shuffle_places_tile_perm_i_in_slot_i():
    m = _method("jigsaw", grid=3, gap=1, jitter=0)
    x = torch.randn(4, 3, 16, 16)
    g = torch.Generator().manual_seed(0)
    tiles, _ = grid_tiles(x, 3, 1, 0)
    shuffled, labels = m.shuffle(x, g)
    for b in range(4):
        perm = m.permutations[labels[b]]
        for slot in range(9):
            assert torch.equal(shuffled[b, slot], tiles[b, perm[slot]])


# -------------------------------------------------------------------------------------- tiles / patches
def test_tiles_never_overlap_and_stay_in_their_cells():
    g = torch.Generator().manual_seed(0)
    size, grid, gap, jitter = 32, 3, 2, 3  # jitter larger than gap/2: clipping must keep tiles apart
    corners = tile_positions(200, size, grid, gap, jitter, g, torch.device("cpu"))
    t = size // grid - gap
    occupied = torch.zeros(200, size, size, dtype=torch.int64)
    for b in range(200):
        for k in range(grid * grid):
            r, c = corners[b, k].tolist()
            assert 0 <= r and r + t <= size and 0 <= c and c + t <= size
            occupied[b, r : r + t, c : c + t] += 1
    assert occupied.max() == 1


def test_crop_tiles_cut_the_pixels_at_their_corners():
    x = torch.randn(2, 3, 16, 16)
    tiles, corners = grid_tiles(x, 3, 1, 1, torch.Generator().manual_seed(3))
    t = tiles.shape[-1]
    for b in range(2):
        for k in range(9):
            r, c = corners[b, k].tolist()
            assert torch.equal(tiles[b, k], x[b, :, r : r + t, c : c + t])


def test_relative_patch_labels_match_positions():
    m = _method("relative-patch", gap=2, jitter=1, color="none")
    x = torch.randn(8, 3, 32, 32)
    tiles, corners = m.tiles(x, torch.Generator().manual_seed(0))
    offsets = neighbour_offsets()
    for label, pos in enumerate(NEIGHBOURS):
        d = corners[:, pos] - corners[:, CENTRE]  # (B, 2) pixel displacement
        expect = offsets[label]
        for axis in range(2):
            if expect[axis] == 0:
                assert d[:, axis].abs().max() <= 2 * 1  # same row/column: only jitter apart
            else:
                assert (torch.sign(d[:, axis]) == expect[axis]).all()
                assert d[:, axis].abs().min() >= tiles.shape[-1]  # a full tile (plus gap) away


def test_color_drop_keeps_one_channel_and_projection_removes_green_magenta():
    x = torch.randn(6, 3, 4, 4)
    y = color_drop(x, torch.Generator().manual_seed(0), noise_std=0.0)
    kept = [(y[i] == x[i]).all(dim=(1, 2)) for i in range(6)]
    assert all(int(k.sum()) == 1 for k in kept)
    assert all((y[i][~kept[i]] == 0).all() for i in range(6))
    p = color_project(x)
    axis = torch.tensor([-1.0, 2.0, -1.0]) / math.sqrt(6)
    assert torch.einsum("bchw,c->bhw", p, axis).abs().max() < 1e-5
    assert torch.allclose(color_project(p), p, atol=1e-6)  # a projection


def test_patch_grid_matches_slices():
    x = torch.randn(2, 3, 32, 32)
    p = patch_grid(x, 8, 4)
    assert p.shape == (2, 7, 7, 3, 8, 8)
    for i, j in [(0, 0), (3, 5), (6, 6)]:
        assert torch.equal(p[1, i, j], x[1, :, 4 * i : 4 * i + 8, 4 * j : 4 * j + 8])


# ------------------------------------------------------------------------------------------- Lab colour
def test_lab_round_trip_within_1e_3():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 16, 16, generator=g)
    corners = torch.tensor(list(np.ndindex(2, 2, 2)), dtype=torch.float32).T.reshape(1, 3, 8, 1)
    for rgb in (x, corners):
        assert (lab_to_rgb(rgb_to_lab(rgb)) - rgb).abs().max() < 1e-3


def test_lab_known_values():
    white = rgb_to_lab(torch.ones(1, 3, 1, 1)).flatten()
    red = rgb_to_lab(torch.tensor([1.0, 0, 0]).view(1, 3, 1, 1)).flatten()
    assert torch.allclose(white, torch.tensor([100.0, 0, 0]), atol=0.05)
    assert torch.allclose(red, torch.tensor([53.24, 80.09, 67.20]), atol=0.05)  # standard sRGB red in Lab


def test_ab_encoding_and_rebalancing():
    c = ab_bin_centers(10.0)
    assert 250 <= c.shape[0] <= 320  # in-gamut 10x10 cells (Zhang et al. report 313 on ImageNet)
    ab = torch.randn(50, 2) * 40
    soft = encode_ab(ab, c, k=5, sigma=5.0)
    assert torch.allclose(soft.sum(1), torch.ones(50)) and ((soft > 0).sum(1) == 5).all()
    hard = encode_ab(ab, c, k=1)
    assert torch.equal(hard.argmax(1), quantize_ab(ab, c))
    # slow soft encoding of one value
    d2 = ((ab[0] - c) ** 2).sum(1)
    near = d2.argsort()[:5]
    w = torch.exp(-d2[near] / 50)
    assert torch.allclose(soft[0, near], w / w.sum(), atol=1e-5)
    prior = torch.rand(c.shape[0])
    lam, sigma = 0.5, 5.0
    wts = rebalancing_weights(prior, c, lam, sigma)
    p = prior / prior.sum()
    smooth = torch.stack([sum(p[j] * math.exp(-float(((c[i] - c[j]) ** 2).sum()) / (2 * sigma ** 2))
                              for j in range(len(c))) for i in range(0, len(c), 37)])
    full = torch.exp(-torch.cdist(c, c) ** 2 / (2 * sigma ** 2)) @ p
    assert torch.allclose(full[::37], smooth, rtol=1e-4)
    ps = full / full.sum()
    assert torch.allclose((ps * wts).sum(), torch.tensor(1.0), atol=1e-5)
    raw = 1 / ((1 - lam) * ps + lam / len(c))
    assert torch.allclose(wts / wts[0], raw / raw[0], rtol=1e-4)


def test_soft_cross_entropy_matches_slow_formula():
    g = torch.Generator().manual_seed(0)
    logits, t = torch.randn(6, 5, generator=g), torch.softmax(torch.randn(6, 5, generator=g), 1)
    w = torch.rand(5, generator=g) + 0.5
    slow = 0.0
    for n in range(6):
        logp = [float(logits[n, q]) - math.log(sum(math.exp(float(v)) for v in logits[n])) for q in range(5)]
        slow += -float(w[t[n].argmax()]) * sum(float(t[n, q]) * logp[q] for q in range(5))
    assert abs(float(soft_cross_entropy(logits, t, w)) - slow / 6) < 1e-5


def test_colour_methods_need_rgb_and_evaluate_from_rgb():
    with pytest.raises(ConfigError, match="colorization.*RGB"):
        METHODS.get("colorization").backbone_in_channels(1)
    data = make_blobs(n=8, size=16)
    m = _method("colorization")
    m.make_views(16, data.mean, data.std)
    x = torch.randn(4, 3, 16, 16)
    ev = m.eval_backbone().eval()
    assert ev.in_channels == 3 and m.backbone.in_channels == 1
    rgb = x * torch.tensor(data.std).view(1, 3, 1, 1) + torch.tensor(data.mean).view(1, 3, 1, 1)
    expect = m.backbone.eval()(scale_lab(rgb_to_lab(rgb), "L"))
    assert torch.allclose(ev(x), expect, atol=1e-5)
    sb = _method("split-brain")
    sb.make_views(16, data.mean, data.std)
    ev = sb.eval_backbone().eval()
    f = ev(x)
    d = sb.backbone.first.num_features
    assert f.shape == (4, 2 * d) and ev.in_channels == 3
    stages = ev.forward_stages(x)
    assert stages["block4"].shape[1] == 2 * d
    assert sum(p.numel() for p in ev.parameters()) == sum(p.numel() for p in sb.backbone.parameters())


# ---------------------------------------------------------------------------------------- context encoder
def test_masked_mse_only_sees_the_masked_region():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    mask = region_mask(2, 8, 8, "center", 0.5, 4, "cpu")
    base = masked_mse(pred, target, mask)
    outside = pred + 5 * (1 - mask)
    assert torch.equal(masked_mse(outside, target, mask), base)
    assert not torch.equal(masked_mse(pred + mask, target, mask), base)
    slow = sum(float((pred[b, c, i, j] - target[b, c, i, j]) ** 2) for b in range(2) for c in range(3)
               for i in range(2, 6) for j in range(2, 6)) / (2 * 3 * 16)
    assert abs(float(base) - slow) < 1e-5


def test_region_masks():
    m = region_mask(3, 32, 32, "center", 0.5, 4, "cpu")
    assert m.sum() == 3 * 16 * 16 and m[:, :, 8:24, 8:24].all()
    r = region_mask(50, 32, 32, "random-blocks", 0.5, 4, "cpu", torch.Generator().manual_seed(0))
    area = r.mean(dim=(1, 2, 3))
    assert (area > 0).all() and (area <= 0.25 + 1e-6).all() and not torch.equal(r[0], r[1])


def test_context_encoder_reconstruction_gradient_only_inside_mask_and_disc_only_from_its_loss():
    m = _method("context-encoder", adv_weight=0.0)
    x = torch.randn(4, 3, 16, 16)
    mask = region_mask(4, 16, 16, "center", 0.5, 4, "cpu")
    out = m.losses(x, mask)
    out["pred"].retain_grad()
    out["loss"].backward()
    assert out["pred"].grad[:, :, (1 - mask)[0, 0].bool()].abs().max() == 0
    assert out["pred"].grad.abs().sum() > 0
    # one summed loss: the generator term gives the discriminator no gradient, the discriminator term gives the
    # encoder/decoder none
    m = _method("context-encoder", adv_weight=1.0)
    out = m.losses(x, mask)
    out["adv"].backward(retain_graph=True)
    assert all(p.grad is None for p in m.discriminator.parameters())
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in m.decoder.parameters())
    m.zero_grad(set_to_none=True)
    out["disc"].backward()
    assert all(p.grad is None for p in list(m.decoder.parameters()) + list(m.backbone.parameters()))
    assert all(p.grad is not None for p in m.discriminator.parameters())
    assert "disc" not in _method("context-encoder", adv_weight=0.0).losses(x, mask)  # no discriminator at all


# --------------------------------------------------------------------------------------------------- CPC
def test_cpc_info_nce_matches_slow_formula_and_negatives_exclude_the_positive():
    g = torch.Generator().manual_seed(0)
    b, r, w, d, k, tau = 2, 4, 3, 5, 2, 0.5
    z = torch.randn(b, r, w, d, generator=g)
    pred = torch.randn(b, r - k, w, d, generator=g)
    keys = [(bb, i, j) for bb in range(b) for i in range(r) for j in range(w)]
    total, count = 0.0, 0
    for bb in range(b):
        for i in range(r - k):
            for j in range(w):
                q = F.normalize(pred[bb, i, j], dim=0)
                pos_key = (bb, i + k, j)
                negatives = [key for key in keys if key != pos_key]
                assert len(negatives) == len(keys) - 1
                score = lambda key: float(q @ F.normalize(z[key], dim=0)) / tau  # noqa: E731
                num = math.exp(score(pos_key))
                den = num + sum(math.exp(score(key)) for key in negatives)
                total += -math.log(num / den)
                count += 1
    assert abs(float(cpc_info_nce(pred, z, k, tau)) - total / count) < 1e-4
    idx = cpc_positive_index(b, r, w, k)
    flat = z.reshape(-1, d)
    assert torch.equal(flat[idx].view(b, r - k, w, d), z[:, k:])


def test_cpc_context_is_causal_over_rows():
    torch.manual_seed(0)
    ctx = RowCausalContext(6, layers=3)
    z = torch.randn(2, 6, 5, 4)
    z2 = z.clone()
    z2[:, :, 3:] += torch.randn(2, 6, 2, 4)  # change rows 3 and 4
    a, b = ctx(z), ctx(z2)
    assert torch.allclose(a[:, :, :3], b[:, :, :3])
    assert not torch.allclose(a[:, :, 3:], b[:, :, 3:])


def test_cpc_grid_too_small_is_an_error():
    m = _method("cpc", steps=4)
    with pytest.raises(ValueError, match="method.steps"):
        m(ViewBatch([torch.randn(2, 3, 16, 16)]))


# ---------------------------------------------------------------------------------------- config errors
@pytest.mark.parametrize("name,key,value", [
    ("rotation", "head_hidden_dim", -1), ("relative-patch", "color", "sepia"), ("jigsaw", "grid", 4),
    ("colorization", "loss", "huber"), ("split-brain", "l_bins", 1), ("context-encoder", "mask", "ring"),
    ("denoising-ae", "noise", "salt"), ("cpc", "temperature", 0.0),
])
def test_bad_options_name_the_option(name, key, value):
    with pytest.raises((ConfigError, ValueError), match=f"method.{key}"):
        _method(name, **{key: value})


# ---------------------------------------------------------------------------------- engine + evaluation
def test_colorization_trains_and_evaluates_through_engine(tmp_path):
    from selfsup.config import build_run_config
    from selfsup.engine.trainer import pretrain
    from selfsup.evaluation.runner import evaluate_run

    data = make_blobs(n=32, size=16)
    npz = tmp_path / "blobs.npz"
    np.savez(npz, x_train=data.train.images.permute(0, 2, 3, 1).numpy(), y_train=data.train.labels.numpy(),
             x_test=data.test.images.permute(0, 2, 3, 1).numpy(), y_test=data.test.labels.numpy())
    cfg = build_run_config({
        "method": {"name": "colorization", "decoder_width": 8}, "data": {"path": str(npz)},
        "backbone": {"name": "convnet", "width": 0.25}, "train": {"batch_size": 16, "epochs": 1, "log_every": 1},
    })
    res = pretrain(cfg, tmp_path / "run", quiet=True)
    assert res.steps == 2 and math.isfinite(res.final_loss)
    out = evaluate_run(tmp_path / "run", ["knn"], quiet=True)
    assert 0 <= out["knn"]["top1"] <= 1 and "baseline" in out
