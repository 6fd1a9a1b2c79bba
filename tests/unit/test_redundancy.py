"""Barlow Twins and VICReg losses against element-by-element re-derivations of the papers' formulas."""
from __future__ import annotations

import math

import pytest
import torch

from selfsup.losses.redundancy import barlow_twins_loss, covariance_loss, invariance_loss, variance_loss, vicreg_loss


def _data(n=6, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * 2 + 1, torch.randn(n, d, generator=g)


def _mean(col):
    return sum(col) / len(col)


def _var(col, ddof):
    m = _mean(col)
    return sum((v - m) ** 2 for v in col) / (len(col) - ddof)


def test_barlow_twins_matches_element_formula():
    z1, z2 = _data()
    n, d = z1.shape
    a = [[v for v in z1[:, j].tolist()] for j in range(d)]
    b = [[v for v in z2[:, j].tolist()] for j in range(d)]
    an = [[(v - _mean(col)) / math.sqrt(_var(col, 0) + 1e-5) for v in col] for col in a]
    bn = [[(v - _mean(col)) / math.sqrt(_var(col, 0) + 1e-5) for v in col] for col in b]
    lam, ref = 5e-3, 0.0
    for i in range(d):
        for j in range(d):
            c = sum(an[i][k] * bn[j][k] for k in range(n)) / n
            ref += (1 - c) ** 2 if i == j else lam * c * c
    assert barlow_twins_loss(z1, z2, lam).item() == pytest.approx(ref, rel=1e-5)


def test_barlow_twins_is_zero_only_for_decorrelated_identical_views():
    z = torch.linalg.qr(torch.randn(64, 8))[0] * 8  # orthogonal columns → C = I after standardisation
    z = z - z.mean(0)
    assert barlow_twins_loss(z, z).item() < 0.1
    collapsed = torch.ones(64, 1) @ torch.randn(1, 8) + 1e-3 * torch.randn(64, 8)
    assert barlow_twins_loss(collapsed, torch.randn(64, 8)).item() > 5


def test_vicreg_terms_match_element_formulas():
    z1, z2 = _data(n=5, d=3, seed=1)
    n, d = z1.shape
    inv = sum((z1[i, j].item() - z2[i, j].item()) ** 2 for i in range(n) for j in range(d)) / (n * d)
    assert invariance_loss(z1, z2).item() == pytest.approx(inv, rel=1e-5)

    def var_term(z, gamma):
        return sum(max(0.0, gamma - math.sqrt(_var(z[:, j].tolist(), 1) + 1e-4)) for j in range(d)) / d

    def cov_term(z):
        cols = [z[:, j].tolist() for j in range(d)]
        tot = 0.0
        for a in range(d):
            for b in range(d):
                if a != b:
                    ma, mb = _mean(cols[a]), _mean(cols[b])
                    cov = sum((cols[a][k] - ma) * (cols[b][k] - mb) for k in range(n)) / (n - 1)
                    tot += cov * cov
        return tot / d

    for gamma in (1.0, 3.0):  # gamma 3 makes the hinge active for the wide first tensor
        assert variance_loss(z1, gamma).item() == pytest.approx(var_term(z1, gamma), rel=1e-5, abs=1e-7)
    assert covariance_loss(z1).item() == pytest.approx(cov_term(z1), rel=1e-5)
    ref = 25 * inv + 25 * (var_term(z1, 1.0) + var_term(z2, 1.0)) / 2 + 1 * (cov_term(z1) + cov_term(z2))
    assert vicreg_loss(z1, z2).item() == pytest.approx(ref, rel=1e-5)


def test_variance_term_penalises_collapse():
    assert variance_loss(torch.zeros(16, 4)).item() == pytest.approx(1 - math.sqrt(1e-4), rel=1e-5)
    assert variance_loss(torch.randn(256, 4) * 3).item() == 0.0


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="same shape"):
        barlow_twins_loss(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="at least 2"):
        vicreg_loss(torch.randn(1, 3), torch.randn(1, 3))
