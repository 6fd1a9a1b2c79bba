"""MMCR, EMP-SSL, W-MSE and LeJEPA losses against slow, direct re-derivations of the papers' formulas (float64,
loops), values and gradients; plus what is special about each method (views, sub-batches, directions)."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import make_blobs

from selfsup.backbones import build_backbone
from selfsup.components.base import StepContext, update_parts
from selfsup.config import AugmentConfig, ConfigError
from selfsup.losses.statistical import (
    epps_pulley,
    lejepa_prediction,
    mmcr_loss,
    patch_invariance,
    sigreg,
    total_coding_rate,
    whiten,
    wmse_loss,
)
from selfsup.methods.base import ViewBatch, build_method
from selfsup.methods.lejepa import slice_directions


def _g(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _leaf(*shape: int, seed: int = 0) -> torch.Tensor:
    return _g(*shape, seed=seed).requires_grad_(True)


def _check(fast, slow, *leaves: torch.Tensor, rtol: float = 1e-9) -> None:
    """Equal values and equal gradients with respect to every leaf."""
    a, b = fast(), slow()
    torch.testing.assert_close(a, b, rtol=rtol, atol=1e-10)
    weight = _g(*a.shape, seed=9)  # a random cotangent for outputs that are not scalars
    ga = torch.autograd.grad((a * weight).sum(), leaves)
    gb = torch.autograd.grad((slow() * weight).sum(), leaves)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-7, atol=1e-9)


def _unit_rows(z: torch.Tensor) -> list[list[torch.Tensor]]:
    """z (V, B, D) → [v][b] the row divided by its Euclidean norm, one row at a time."""
    return [[z[v, b] / torch.sqrt(sum(z[v, b, d] ** 2 for d in range(z.shape[2])))
             for b in range(z.shape[1])] for v in range(z.shape[0])]


def _nuclear(m: torch.Tensor) -> torch.Tensor:
    """Σ singular values as Σ sqrt(eigenvalues of M Mᵀ) (M with fewer rows than columns: M Mᵀ is full rank)."""
    return torch.sqrt(torch.linalg.eigvalsh(m @ m.T)).sum()


# --------------------------------------------------------------------------------------------------- MMCR
@pytest.mark.parametrize("lambd", [0.0, 0.3])
def test_mmcr_loss_is_minus_the_nuclear_norm_of_the_centroids(lambd):
    z = _leaf(5, 6, 10)  # 5 views of 6 images, D = 10

    def slow():
        rows = _unit_rows(z)
        v, b = z.shape[:2]
        cents = torch.stack([sum(rows[i][j] for i in range(v)) / v for j in range(b)])  # (B, D)
        local = sum(_nuclear(torch.stack([rows[i][j] for i in range(v)])) for j in range(b)) / b
        return -_nuclear(cents) + lambd * local

    _check(lambda: mmcr_loss(z, lambd), slow, z)


def test_mmcr_momentum_variant_averages_the_online_and_momentum_centroids():
    z, t = _leaf(4, 5, 9), _g(4, 5, 9, seed=1)

    def slow():
        rz, rt = _unit_rows(z), _unit_rows(t)
        cents = torch.stack([(sum(rz[i][j] for i in range(4)) / 4 + sum(rt[i][j] for i in range(4)) / 4) / 2
                             for j in range(5)])
        local = sum(_nuclear(torch.stack([rz[i][j] for i in range(4)])) for j in range(5)) / 5
        return -_nuclear(cents) + 0.1 * local

    _check(lambda: mmcr_loss(z, 0.1, t), slow, z)


def test_mmcr_rewards_agreeing_views_of_spread_images():
    spread = torch.eye(8, dtype=torch.float64)[None].expand(3, 8, 8)  # 8 orthogonal images, views identical
    collapsed = torch.ones(3, 8, 8, dtype=torch.float64)
    assert mmcr_loss(spread).item() == pytest.approx(-8.0)
    assert mmcr_loss(collapsed).item() == pytest.approx(-math.sqrt(8.0))


# ------------------------------------------------------------------------------------------------ EMP-SSL
def test_total_coding_rate_matches_its_formula():
    z = _leaf(3, 7, 5)  # 3 patches, b = 7 images, d = 5
    eps_sq = 0.2

    def slow():
        out = []
        for v in range(3):
            m = torch.eye(5, dtype=torch.float64)
            for b in range(7):
                m = m + (5 / (7 * eps_sq)) * torch.outer(z[v, b], z[v, b])
            chol = torch.linalg.cholesky(m)
            out.append(sum(torch.log(chol[i, i]) for i in range(5)))  # ½ log det = Σ log L_ii
        return torch.stack(out)

    _check(lambda: total_coding_rate(z, eps_sq), slow, z)


def test_patch_invariance_is_minus_the_mean_cosine_to_the_patch_mean():
    z = _leaf(4, 6, 5)

    def slow():
        tot = 0.0
        for b in range(6):
            mean = sum(z[v, b] for v in range(4)) / 4
            for v in range(4):
                tot = tot + (z[v, b] @ mean) / (torch.sqrt(z[v, b] @ z[v, b]) * torch.sqrt(mean @ mean))
        return -tot / 24

    _check(lambda: patch_invariance(z), slow, z)


def test_emp_ssl_preset_makes_20_native_resolution_patches():
    method = build_method("emp-ssl", build_backbone("convnet", in_channels=3, width=0.25), {"proj_dim": 8})
    views = method.make_views(32, (0.5,) * 3, (0.25,) * 3)
    assert len(views.specs) == 20
    assert all(s.size == 16 and s.crop_scale == (0.25, 0.25) and s.crop_ratio == (1.0, 1.0) for s in views.specs)
    upsampled = method.make_views(32, (0.5,) * 3, (0.25,) * 3, AugmentConfig(size=32))  # the paper's 32 px patches
    assert all(s.size == 32 for s in upsampled.specs)


# -------------------------------------------------------------------------------------------------- W-MSE
def _slow_whiten(x: torch.Tensor) -> torch.Tensor:
    n, d = x.shape
    mean = sum(x[i] for i in range(n)) / n
    xc = torch.stack([x[i] - mean for i in range(n)])
    cov = sum(torch.outer(xc[i], xc[i]) for i in range(n)) / (n - 1)
    w = torch.linalg.inv(torch.linalg.cholesky(cov))  # W Σ Wᵀ = I, W lower triangular
    return torch.stack([w @ xc[i] for i in range(n)])


def test_whiten_gives_identity_covariance_by_the_cholesky_factor():
    x = _leaf(20, 4)
    _check(lambda: whiten(x), lambda: _slow_whiten(x), x)
    w = whiten(x).detach()
    torch.testing.assert_close(w.T @ w / 19, torch.eye(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="more rows than dimensions"):
        whiten(x[:4])


@pytest.mark.parametrize("b,w_size", [(24, 8), (26, 8), (10, 16)])  # exact groups, a remainder, one group
def test_wmse_loss_matches_the_paper_over_sub_batches_pairs_and_iterations(b, w_size):
    z = _leaf(3, b, 4)
    perms = torch.stack([torch.randperm(b, generator=torch.Generator().manual_seed(s)) for s in (1, 2)])

    def slow():
        n_groups = max(1, b // w_size)
        sizes = [b // n_groups + (1 if k < b % n_groups else 0) for k in range(n_groups)]
        tot = 0.0
        for perm in perms:
            w = [[None] * b for _ in range(3)]
            start = 0
            for size in sizes:
                idx = perm[start:start + size].tolist()
                start += size
                for v in range(3):
                    white = _slow_whiten(z[v, idx])
                    for r, i in enumerate(idx):
                        w[v][i] = white[r] / torch.sqrt(white[r] @ white[r])
            for i, j in [(0, 1), (0, 2), (1, 2)]:
                tot = tot + sum(((w[i][k] - w[j][k]) ** 2).sum() for k in range(b)) / b
        return tot / (2 * 3)

    _check(lambda: wmse_loss(z, perms, w_size), slow, z)


def test_wmse_refuses_sub_batches_it_cannot_whiten_in_one_line():
    bb = build_backbone("convnet", in_channels=3, width=0.25)
    with pytest.raises(ConfigError, match=r"method.w_size \(32\) must exceed method.proj_dim \(64\)"):
        build_method("wmse", bb, {"w_size": 32})
    method = build_method("wmse", bb, {"proj_dim": 4, "w_size": 16})
    with pytest.raises(ValueError, match=r"global batch \(8\) must hold at least method.w_size \(16\)"):
        method(ViewBatch([torch.randn(8, 3, 16, 16)] * 2))


# ------------------------------------------------------------------------------------------------- LeJEPA
def _slow_epps_pulley(col: torch.Tensor, t_max: float, n_points: int) -> torch.Tensor:
    """N ∫ |φ_N(t) − exp(−t²/2)|² exp(−t²/2) dt, trapezoid over the symmetric grid [−t_max, t_max]."""
    t = torch.linspace(-t_max, t_max, 2 * n_points - 1, dtype=torch.float64)
    ecf = torch.stack([sum(torch.exp(1j * tk * col.to(torch.complex128))) / len(col) for tk in t])
    err = (ecf - torch.exp(-t ** 2 / 2)).abs() ** 2 * torch.exp(-t ** 2 / 2)
    return len(col) * torch.trapezoid(err, t)


def _closed_form_epps_pulley(col: torch.Tensor) -> torch.Tensor:
    """The exact integral over the real line (Gaussian integrals of cos): the Epps–Pulley statistic."""
    n = len(col)
    pair = sum(torch.exp(-(col[j] - col[k]) ** 2 / 2) for j in range(n) for k in range(n))
    return n * (math.sqrt(2 * math.pi) * pair / n ** 2 - 2 * math.sqrt(math.pi) * torch.exp(-col ** 2 / 4).mean()
                + math.sqrt(2 * math.pi / 3))


def test_epps_pulley_is_the_weighted_distance_of_characteristic_functions():
    x = _leaf(12, 3)
    _check(lambda: epps_pulley(x, 3.0, 17), lambda: torch.stack([_slow_epps_pulley(x[:, m], 3.0, 17)
                                                                 for m in range(3)]), x)
    # with a wide, fine grid the quadrature is the exact integral
    fine = epps_pulley(x, 10.0, 801)
    torch.testing.assert_close(fine, torch.stack([_closed_form_epps_pulley(x[:, m]) for m in range(3)]),
                               rtol=1e-7, atol=1e-9)


def test_epps_pulley_is_small_for_gaussian_samples_and_large_otherwise():
    gauss = _g(2000, 1)
    assert epps_pulley(gauss).item() < 1.0
    assert epps_pulley(gauss * 3).item() > 50
    assert epps_pulley(gauss.sign()).item() > 50  # two points ±1


def test_sigreg_averages_the_statistic_over_views_and_directions():
    z, a = _leaf(3, 10, 4), torch.nn.functional.normalize(_g(4, 5, seed=1), dim=0)

    def slow():
        vals = [_slow_epps_pulley(z[v] @ a[:, m], 3.0, 17) for v in range(3) for m in range(5)]
        return sum(vals) / len(vals)

    _check(lambda: sigreg(z, a), slow, z)


def test_lejepa_prediction_targets_the_mean_of_the_global_views():
    z = _leaf(5, 4, 3)  # 2 global views, then 3 local

    def slow():
        tot = 0.0
        for b in range(4):
            center = (z[0, b] + z[1, b]) / 2
            for v in range(5):
                tot = tot + ((center - z[v, b]) ** 2).sum()
        return tot / (5 * 4 * 3)

    _check(lambda: lejepa_prediction(z, 2), slow, z)


def test_slice_directions_are_unit_and_a_function_of_the_step_alone():
    a = slice_directions(16, 8, step=7)
    torch.testing.assert_close(a.norm(dim=0), torch.ones(8))
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(a, slice_directions(16, 8, step=7))
    assert not torch.equal(a, slice_directions(16, 8, step=8))


@pytest.mark.parametrize("backbone", ["vit-test", "resnet18"])
def test_lejepa_trains_multicrop_on_vit_and_resnet(backbone):
    data = make_blobs(n=4, size=16)
    torch.manual_seed(0)
    bb = build_backbone(backbone, in_channels=3, width=0.25, image_size=16)
    method = build_method("lejepa", bb, {"proj_hidden_dim": 32, "proj_dim": 8, "num_slices": 16})
    views = method.make_views(16, data.mean, data.std, AugmentConfig(local_crops=2, local_size=8))
    x, idx, _ = next(data.train.batches(4, shuffle=False))
    vs = views(x, torch.Generator().manual_seed(0))
    assert [v.shape[-1] for v in vs] == [16, 16, 8, 8]
    out = method(ViewBatch(vs, idx), StepContext(3, 10))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in method.backbone.parameters() if p.requires_grad)
    if backbone != "vit-test":
        return
    with torch.no_grad():  # the same step draws the same directions; another step, others
        again = method(ViewBatch(vs, idx), StepContext(3, 10)).logs["sigreg"]
        other = method(ViewBatch(vs, idx), StepContext(4, 10)).logs["sigreg"]
    assert again == out.logs["sigreg"] and other != again


def test_mmcr_momentum_encoder_moves_after_the_step():
    data = make_blobs(n=8, size=16)
    torch.manual_seed(0)
    method = build_method("mmcr", build_backbone("convnet", in_channels=3, width=0.25),
                          {"proj_hidden_dim": 32, "proj_dim": 8, "momentum_encoder": True, "momentum_base": 0.5})
    views = method.make_views(16, data.mean, data.std)
    x, idx, _ = next(data.train.batches(8, shuffle=False))
    out = method(ViewBatch(views(x, torch.Generator().manual_seed(0)), idx), StepContext(0, 10))
    assert len(views.specs) == 8 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is None for p in method.target.parameters())
    before = [p.clone() for p in method.target.parameters()]
    with torch.no_grad():
        for p in method.projector.parameters():
            p.add_(1.0)
    update_parts(method, StepContext(0, 10))
    assert any(not torch.equal(a, b) for a, b in zip(before, method.target.parameters()))
