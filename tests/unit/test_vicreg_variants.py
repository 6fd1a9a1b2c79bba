"""VIbCReg and VICRegL against slow, element-by-element re-derivations of the papers' formulas (float64, values
and gradients), plus IterNorm's whitening and the crop geometry VICRegL's location matching reads."""
from __future__ import annotations

import math

import pytest
import torch

from selfsup.heads.iternorm import IterNorm
from selfsup.losses.redundancy import decorrelation_loss, vibcreg_loss


def _data(n=6, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = (torch.randn(n, d, generator=g, dtype=torch.float64) * 2 + 1).requires_grad_(True)
    b = torch.randn(n, d, generator=g, dtype=torch.float64).requires_grad_(True)
    return a, b


def _grads(value, leaves):
    return torch.autograd.grad(value, leaves, retain_graph=True)


def _ref_corr_term(z):
    """(1/D²) Σ_{i≠j} Pearson(z_i, z_j)², written out."""
    n, d = z.shape
    cols = [[z[b, j] for b in range(n)] for j in range(d)]
    means = [sum(c) / n for c in cols]
    tot = 0.0
    for i in range(d):
        for j in range(d):
            if i == j:
                continue
            num = sum((cols[i][b] - means[i]) * (cols[j][b] - means[j]) for b in range(n))
            si = torch.sqrt(sum((cols[i][b] - means[i]) ** 2 for b in range(n)) + 1e-8)  # the loss's eps
            sj = torch.sqrt(sum((cols[j][b] - means[j]) ** 2 for b in range(n)) + 1e-8)
            tot = tot + (num / (si * sj)) ** 2
    return tot / (d * d)


def _ref_vibcreg(z1, z2, lam=25.0, mu=25.0, nu=200.0, gamma=1.0):
    n, d = z1.shape
    inv = sum((z1[b, j] - z2[b, j]) ** 2 for b in range(n) for j in range(d)) / (n * d)

    def var(z):
        tot = 0.0
        for j in range(d):
            m = sum(z[b, j] for b in range(n)) / n
            v = sum((z[b, j] - m) ** 2 for b in range(n)) / (n - 1)
            tot = tot + torch.relu(gamma - torch.sqrt(v + 1e-4))
        return tot / d

    return lam * inv + mu * (var(z1) + var(z2)) / 2 + nu * (_ref_corr_term(z1) + _ref_corr_term(z2))


def test_decorrelation_term_matches_pearson_formula():
    z, _ = _data(n=7, d=5, seed=3)
    ours, ref = decorrelation_loss(z), _ref_corr_term(z)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-9)
    torch.testing.assert_close(_grads(ours, [z])[0], _grads(ref, [z])[0], rtol=1e-7, atol=1e-10)


def test_decorrelation_term_is_scale_free():
    z, _ = _data(n=9, d=4, seed=1)
    assert decorrelation_loss(z * 100).item() == pytest.approx(decorrelation_loss(z).item(), rel=1e-6)


def test_vibcreg_loss_values_and_gradients_match_the_formula():
    z1, z2 = _data(n=6, d=4, seed=2)
    z2s = (z2 * 0.3).detach().requires_grad_(True)  # a variance hinge that is active
    ours, ref = vibcreg_loss(z1, z2s), _ref_vibcreg(z1, z2s)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-9)
    for a, b in zip(_grads(ours, [z1, z2s]), _grads(ref, [z1, z2s])):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


def _ref_iternorm(x, groups, iterations, eps=1e-5):
    """Huang et al. 2019, Algorithm 1, per group, written with explicit loops over the group's features."""
    n, d = x.shape
    m = d // groups
    out = torch.empty_like(x)
    for g in range(groups):
        xg = x[:, g * m:(g + 1) * m]
        mu = xg.mean(0)
        xc = xg - mu
        sigma = eps * torch.eye(m, dtype=x.dtype) + sum(torch.outer(xc[b], xc[b]) for b in range(n)) / n
        tr = sum(sigma[i, i] for i in range(m))
        sn = sigma / tr
        p = torch.eye(m, dtype=x.dtype)
        for _ in range(iterations):
            p = 0.5 * (3 * p - p @ p @ p @ sn)
        out[:, g * m:(g + 1) * m] = xc @ (p / torch.sqrt(tr))
    return out


def test_iternorm_matches_the_algorithm_and_whitens():
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(64, 8, generator=g, dtype=torch.float64) @ torch.randn(8, 8, generator=g,
                                                                           dtype=torch.float64)).requires_grad_(True)
    layer = IterNorm(8, groups=2, iterations=5).double()
    ours, ref = layer(x), _ref_iternorm(x, 2, 5)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-10)
    w = torch.randn(64, 8, generator=g, dtype=torch.float64)
    torch.testing.assert_close(_grads((ours * w).sum(), [x])[0], _grads((ref * w).sum(), [x])[0], rtol=1e-7,
                               atol=1e-9)
    many = IterNorm(8, groups=2, iterations=10).double()(x).detach()
    for k in range(2):
        c = many[:, 4 * k:4 * k + 4].T @ many[:, 4 * k:4 * k + 4] / 64
        torch.testing.assert_close(c, torch.eye(4, dtype=torch.float64), rtol=0, atol=1e-3)


def test_iternorm_eval_uses_running_statistics():
    layer = IterNorm(8, groups=2, iterations=5, momentum=1.0)
    x = torch.randn(32, 8) * 3 + 2
    train_out = layer(x)
    layer.eval()
    torch.testing.assert_close(layer(x), train_out, rtol=1e-4, atol=1e-4)
    assert not math.isclose(float(layer.running_mean.abs().sum()), 0.0)


# ----------------------------------------------------------------------------------------------- VICRegL
def _ref_terms(x, y, lam=25.0, mu=25.0, nu=1.0, gamma=1.0):
    """VICRegL's weighted VICReg terms of paired rows x, y (n, D), written out: invariance, the two branches'
    variance hinges and covariance terms each averaged."""
    n, d = x.shape
    inv = sum((x[r, j] - y[r, j]) ** 2 for r in range(n) for j in range(d)) / (n * d)

    def stats(z):
        means = [sum(z[r, j] for r in range(n)) / n for j in range(d)]
        cov = [[sum((z[r, i] - means[i]) * (z[r, j] - means[j]) for r in range(n)) / (n - 1) for j in range(d)]
               for i in range(d)]
        var = sum(torch.relu(gamma - torch.sqrt(cov[j][j] + 1e-4)) for j in range(d)) / d
        off = sum(cov[i][j] ** 2 for i in range(d) for j in range(d) if i != j) / d
        return var, off

    (vx, cx), (vy, cy) = stats(x), stats(y)
    return lam * inv + mu * (vx + vy) / 2 + nu * (cx + cy) / 2


def _ref_pairs(dist, k):
    """Per image: every source's nearest target, the k sources nearest to theirs, listed in source order."""
    out = []
    for b in range(dist.shape[0]):
        nearest = [min(range(dist.shape[2]), key=lambda m: float(dist[b, n, m])) for n in range(dist.shape[1])]
        kept = sorted(sorted(range(dist.shape[1]), key=lambda n: float(dist[b, n, nearest[n]]))[:k])
        out.append([(n, nearest[n]) for n in kept])
    return out


def _ref_local(m1, m2, l1, l2, k):
    def dist(a, b):
        return torch.tensor([[[float(torch.sqrt(((a[i, p] - b[i, q]) ** 2).sum())) for q in range(b.shape[1])]
                              for p in range(a.shape[1])] for i in range(a.shape[0])], dtype=torch.float64)

    total = 0.0
    for use_loc in (True, False):
        d12 = dist(l1, l2) if use_loc else dist(m1.detach(), m2.detach())
        d21 = dist(l2, l1) if use_loc else dist(m2.detach(), m1.detach())
        terms = 0.0
        for d, src, dst in ((d12, m1, m2), (d21, m2, m1)):
            pairs = _ref_pairs(d, k)
            x = torch.stack([src[b, n] for b in range(len(pairs)) for n, _ in pairs[b]])
            y = torch.stack([dst[b, m] for b in range(len(pairs)) for _, m in pairs[b]])
            terms = terms + _ref_terms(x, y)
        total = total + terms / 2
    return total


def test_vicregl_local_loss_matches_both_matchings_written_out():
    from selfsup.losses.local import vicregl_local_loss

    g = torch.Generator().manual_seed(0)
    B, N, M, D, k = 3, 5, 4, 3, 3
    m1 = torch.randn(B, N, D, generator=g, dtype=torch.float64).requires_grad_(True)
    m2 = torch.randn(B, M, D, generator=g, dtype=torch.float64).requires_grad_(True)
    l1 = torch.rand(B, N, 2, generator=g, dtype=torch.float64)
    l2 = torch.rand(B, M, 2, generator=g, dtype=torch.float64)
    ours, ref = vicregl_local_loss(m1, m2, l1, l2, k), _ref_local(m1, m2, l1, l2, k)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-9)
    for a, b in zip(_grads(ours, [m1, m2]), _grads(ref, [m1, m2])):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


def test_vicregl_global_terms_written_out():
    from selfsup.losses.local import vicreg_terms

    z1, z2 = _data(n=6, d=4, seed=4)
    ours, ref = vicreg_terms(z1, z2), _ref_terms(z1, z2)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-9)
    for a, b in zip(_grads(ours, [z1, z2]), _grads(ref, [z1, z2])):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


def _coordinate_image(size=16):
    """A (1, 3, size, size) image whose channels 0/1 hold each pixel centre's y/x as fractions of the image."""
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    return torch.stack([c[:, None].expand(size, size), c[None, :].expand(size, size),
                        torch.zeros(size, size)])[None]


@pytest.mark.parametrize("flip_p", [0.0, 1.0])
def test_recorded_boxes_locate_every_cell_of_the_view(flip_p):
    """A view of an image that holds its own coordinates: each view pixel shows where it came from, and
    cell_centres(boxes) predicts it (crop and flip included)."""
    from selfsup.augment.pipeline import MultiViewPipeline, ViewSpec, cell_centres

    spec = ViewSpec(size=8, crop_scale=(0.3, 0.6), flip_p=flip_p, jitter_p=0.0, grayscale_p=0.0)
    pipe = MultiViewPipeline([spec, spec], mean=[0, 0, 0], std=[1, 1, 1], record_boxes=True)
    x = _coordinate_image().repeat(4, 1, 1, 1)
    views = pipe(x, torch.Generator().manual_seed(3))
    assert views.boxes is not None and len(views.boxes) == 2
    for v, box in zip(views, views.boxes):
        assert bool((box[:, 4] == flip_p).all())
        seen = v[:, :2].permute(0, 2, 3, 1).reshape(4, 64, 2)
        torch.testing.assert_close(cell_centres(box, 8, 8), seen, rtol=0, atol=1 / 16)
    plain = MultiViewPipeline([spec, spec], mean=[0, 0, 0], std=[1, 1, 1])(x, torch.Generator().manual_seed(3))
    assert plain.boxes is None and all(torch.equal(a, b) for a, b in zip(plain, views))  # recording draws nothing


def test_vicregl_refuses_views_without_boxes():
    from selfsup.backbones import build_backbone
    from selfsup.methods.base import ViewBatch, build_method

    m = build_method("vicregl", build_backbone("convnet", width=0.25), {"proj_hidden_dim": 16, "proj_dim": 16,
                                                                          "map_hidden_dim": 8, "map_dim": 8},
                     num_train=8)
    views = m.make_views(16, [0.5] * 3, [0.5] * 3)(torch.zeros(4, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="crop box"):
        m(ViewBatch(list(views), torch.arange(4)))
    assert views.boxes is not None and m(ViewBatch(views, torch.arange(4))).loss.isfinite()
