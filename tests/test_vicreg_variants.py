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
