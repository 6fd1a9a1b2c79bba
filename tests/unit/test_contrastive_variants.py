"""DCL / DCLW, SupCon, DirectCLR and TiCo: each loss against a slow, direct re-derivation of its paper's formula
(loops, float64; values and gradients), SupCon's label contract through the engine, TiCo's running covariance."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import make_blobs

from selfsup.backbones import build_backbone
from selfsup.components.base import StepContext, discard_staged, update_parts
from selfsup.components.covariance import MomentumCovariance
from selfsup.config import build_run_config
from selfsup.data.base import ImageDataset, InMemorySplit
from selfsup.errors import ConfigError
from selfsup.losses.contrastive import nt_xent
from selfsup.losses.contrastive_variants import dcl_loss, supcon_loss, vmf_weights
from selfsup.losses.covariance_contrast import tico_loss
from selfsup.methods.base import ViewBatch, build_method
from selfsup.methods.directclr import sub_dim_for


def _leaf(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).requires_grad_()


def _grads(loss: torch.Tensor, leaves: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(loss, leaves)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


# ---------------------------------------------------------------- DCL / DCLW (Yeh et al. 2022, Eq. 6)

def _dcl_reference(z1: torch.Tensor, z2: torch.Tensor, tau: float, sigma: float | None) -> torch.Tensor:
    """Σ over both views k and images i of −w_i⟨z_i¹, z_i²⟩/τ + log Σ_{l, j≠i} exp(⟨z_i^k, z_j^l⟩/τ), over 2N."""
    n = z1.shape[0]
    u = [[_unit(z1[i]) for i in range(n)], [_unit(z2[i]) for i in range(n)]]
    s = [torch.dot(u[0][i], u[1][i]) for i in range(n)]
    if sigma is None:
        w = [torch.ones((), dtype=z1.dtype)] * n
    else:  # 2 − exp(s_i/σ) / E_j exp(s_j/σ), a weight: no gradient through it
        e = [math.exp(float(si.detach()) / sigma) for si in s]
        w = [torch.tensor(2 - e[i] / (sum(e) / n), dtype=z1.dtype) for i in range(n)]
    total = torch.zeros((), dtype=z1.dtype)
    for k in range(2):
        for i in range(n):
            neg = [torch.exp(torch.dot(u[k][i], u[l][j]) / tau) for l in range(2) for j in range(n) if j != i]
            total = total - w[i] * s[i] / tau + torch.log(sum(neg))
    return total / (2 * n)


@pytest.mark.parametrize("sigma", [None, 0.5])
def test_dcl_loss_equals_the_paper_formula_values_and_gradients(sigma):
    z1, z2 = _leaf(6, 5, seed=0), _leaf(6, 5, seed=1)
    got, ref = dcl_loss(z1, z2, 0.3, sigma), _dcl_reference(z1, z2, 0.3, sigma)
    torch.testing.assert_close(got, ref)
    for g, r in zip(_grads(got, [z1, z2]), _grads(ref, [z1, z2])):
        torch.testing.assert_close(g, r)


def test_dcl_differs_from_nt_xent_by_the_positive_in_the_denominator():
    """NT-Xent's denominator adds exp(s_i/τ) to DCL's: per anchor, nt_xent = dcl + log(1 + e^{s/τ}/Σ_neg)."""
    z1, z2 = _leaf(8, 4, seed=2).detach(), _leaf(8, 4, seed=3).detach()
    assert float(nt_xent(z1, z2, 0.5)) > float(dcl_loss(z1, z2, 0.5))
    # identical views, orthogonal images: per anchor −1/τ + log(6 negatives of similarity 0), the positive left out
    e = torch.eye(4, dtype=torch.float64)
    expected = -1 / 0.5 + math.log(6)
    torch.testing.assert_close(dcl_loss(e, e, 0.5), torch.tensor(expected, dtype=torch.float64))


def test_vmf_weights_average_to_one_and_favour_hard_positives():
    z1 = F.normalize(_leaf(5, 3, seed=4).detach(), dim=1)
    z2 = F.normalize(z1 + 0.3 * torch.randn(5, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64),
                     dim=1)
    w = vmf_weights(z1, z2, 0.5)
    torch.testing.assert_close(w.mean(), torch.tensor(1.0, dtype=torch.float64))
    s = (z1 * z2).sum(1)
    assert int(w.argmax()) == int(s.argmin()) and int(w.argmin()) == int(s.argmax())
    assert not w.requires_grad


def test_dcl_rejects_bad_input_in_one_line():
    with pytest.raises(ValueError, match="temperature"):
        dcl_loss(torch.randn(4, 3), torch.randn(4, 3), 0.0)
    with pytest.raises(ValueError, match="same shape"):
        dcl_loss(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="sigma"):
        dcl_loss(torch.randn(4, 3), torch.randn(4, 3), 0.1, 0.0)


# ---------------------------------------------------------------- SupCon (Khosla et al. 2020, Eq. 2)

def _supcon_reference(views: torch.Tensor, labels: list[int], tau: float) -> torch.Tensor:
    """L^sup_out: mean over the VN anchors of −1/|P(i)| Σ_p log(exp(z_i·z_p/τ) / Σ_{a≠i} exp(z_i·z_a/τ))."""
    v, n, _ = views.shape
    z = [_unit(views[k, i]) for k in range(v) for i in range(n)]
    y = [labels[i] for _ in range(v) for i in range(n)]
    total = torch.zeros((), dtype=views.dtype)
    for i in range(v * n):
        denom = sum(torch.exp(torch.dot(z[i], z[a]) / tau) for a in range(v * n) if a != i)
        pos = [p for p in range(v * n) if p != i and y[p] == y[i]]
        total = total - sum(torch.log(torch.exp(torch.dot(z[i], z[p]) / tau) / denom) for p in pos) / len(pos)
    return total / (v * n)


@pytest.mark.parametrize("n_views", [2, 3])
def test_supcon_loss_equals_the_paper_formula_values_and_gradients(n_views):
    views = _leaf(n_views, 6, 4, seed=6)
    labels = [0, 1, 0, 2, 1, 0]
    got = supcon_loss(views, torch.tensor(labels), 0.2)
    ref = _supcon_reference(views, labels, 0.2)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(_grads(got, [views])[0], _grads(ref, [views])[0])


def test_supcon_without_labels_is_simclrs_nt_xent():
    z1, z2 = _leaf(7, 5, seed=7), _leaf(7, 5, seed=8)
    for labels in (None, torch.arange(7) * 3):  # no labels, or every image its own class
        got, ref = supcon_loss(torch.stack([z1, z2]), labels, 0.3), nt_xent(z1, z2, 0.3)  # nt_xent: float32 logits
        torch.testing.assert_close(got, ref.double(), rtol=1e-6, atol=1e-6)
        for g, r in zip(_grads(got, [z1, z2]), _grads(ref, [z1, z2])):
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_supcon_method_needs_labels_in_the_batch():
    data = make_blobs(n=8, size=16)
    m = build_method("supcon", build_backbone("convnet", in_channels=3, width=0.25), {"proj_hidden_dim": 16})
    views = m.make_views(16, data.mean, data.std)
    x, idx, y = next(data.train.batches(8, shuffle=False))
    vs = views(x, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="labels"):
        m(ViewBatch(vs, idx))
    with pytest.raises(ValueError, match="one label per image"):
        m(ViewBatch(vs, idx, y[:4]))
    out = m(ViewBatch(vs, idx, y))
    ref = supcon_loss(torch.stack(m.projector(m.backbone(torch.cat(vs))).chunk(2)), y, m.cfg.temperature)
    torch.testing.assert_close(out.loss, ref)


def _tiny(name: str, **train):
    raw = {"method": {"name": name, "proj_hidden_dim": 16, "proj_dim": 8},
           "backbone": {"name": "convnet", "width": 0.25},
           "train": {"epochs": 1, "batch_size": 8, "seed": 0, "device": "cpu", "log_every": 1, **train}}
    return build_run_config(raw)


def test_the_engine_passes_the_labels_to_supcon_also_per_micro_batch(tmp_path):
    from selfsup.engine.trainer import pretrain

    r = pretrain(_tiny("supcon", max_steps=2, grad_accum_steps=2), tmp_path / "run", data=make_blobs(n=16, size=16),
                 quiet=True)
    assert r.steps == 2 and math.isfinite(r.final_loss)


def test_supcon_on_unlabelled_data_is_a_one_line_config_error(tmp_path):
    from selfsup.engine.trainer import pretrain

    blobs = make_blobs(n=16, size=16)
    data = ImageDataset("unlabelled", InMemorySplit(blobs.train.images), None, [], blobs.mean, blobs.std)
    with pytest.raises(ConfigError, match=r"method.name: 'supcon' trains on class labels .* 'unlabelled' has none"):
        pretrain(_tiny("supcon"), tmp_path / "run", data=data, quiet=True)


# ---------------------------------------------------------------- DirectCLR (Jing et al. 2022)

def test_directclr_sub_dim_keeps_the_papers_share_and_checks_the_width():
    from selfsup.methods.directclr import DirectCLRConfig

    assert [sub_dim_for(f, DirectCLRConfig()) for f in (2048, 512, 128, 4)] == [360, 90, 23, 1]
    assert sub_dim_for(128, DirectCLRConfig(sub_dim=32)) == 32
    with pytest.raises(ConfigError, match="method.sub_dim"):
        build_method("directclr", build_backbone("convnet", in_channels=3, width=0.25), {"sub_dim": 100_000})


def test_directclr_contrasts_the_first_d0_features_with_no_projector():
    m = build_method("directclr", build_backbone("convnet", in_channels=3, width=0.25), {"sub_dim": 5})
    v1, v2 = torch.randn(6, 3, 16, 16), torch.randn(6, 3, 16, 16)
    out = m(ViewBatch([v1, v2]))
    h1, h2 = m.backbone(torch.cat([v1, v2])).chunk(2)
    torch.testing.assert_close(out.loss, nt_xent(h1[:, :5], h2[:, :5], m.cfg.temperature), rtol=1e-5, atol=1e-6)
    assert [n for n, _ in m.named_parameters() if not n.startswith("backbone.")] == []


# ---------------------------------------------------------------- TiCo (Zhu et al. 2022)

def _tico_reference(z: torch.Tensor, t: torch.Tensor, cov: torch.Tensor, beta: float, rho: float) -> torch.Tensor:
    """−(1/N) Σ_i z_i·t_i + ρ(1/N) Σ_i z_iᵀ C z_i, C = β C_prev + (1 − β)(1/N) Σ_j z_j z_jᵀ, all normalised."""
    n, d = z.shape
    zs, ts = [_unit(z[i]) for i in range(n)], [_unit(t[i]) for i in range(n)]
    c = [[beta * cov[a, b] + (1 - beta) * sum(zs[j][a] * zs[j][b] for j in range(n)) / n for b in range(d)]
         for a in range(d)]
    inv = -sum(torch.dot(zs[i], ts[i]) for i in range(n)) / n
    con = sum(zs[i][a] * c[a][b] * zs[i][b] for i in range(n) for a in range(d) for b in range(d)) / n
    return inv + rho * con


def test_tico_loss_equals_the_paper_formula_values_and_gradients():
    z, t = _leaf(5, 4, seed=9), _leaf(5, 4, seed=10)
    a = torch.randn(4, 4, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    cov = a @ a.T / 4
    got, b = tico_loss(z, t, cov, 0.9, 8.0)
    ref = _tico_reference(z, t, cov, 0.9, 8.0)
    torch.testing.assert_close(got, ref)
    for g, r in zip(_grads(got, [z, t]), _grads(ref, [z, t])):
        torch.testing.assert_close(g, r)
    u = F.normalize(z.detach(), dim=1)
    torch.testing.assert_close(b, u.T @ u / 5)
    assert not b.requires_grad


def test_momentum_covariance_folds_the_step_mean_of_the_staged_matrices_after_the_step():
    part = MomentumCovariance(3, beta=0.75)
    part.cov.copy_(torch.eye(3))
    b1, b2 = torch.full((3, 3), 2.0), torch.full((3, 3), 4.0)
    part.stage(b1, step=0)
    part.stage(b2, step=0)  # two micro-batches of one step
    assert torch.equal(part.cov, torch.eye(3))  # nothing changes before the step
    update_parts(part, StepContext(0, 4))
    torch.testing.assert_close(part.cov, 0.75 * torch.eye(3) + 0.25 * torch.full((3, 3), 3.0))
    before = part.cov.clone()
    part.stage(b1, step=1)
    discard_staged(part)  # a skipped step leaves no trace
    update_parts(part, StepContext(1, 4))
    assert torch.equal(part.cov, before)
    assert "cov" in part.state_dict()
    with pytest.raises(ValueError, match="batch matrix"):
        part.stage(torch.zeros(2, 2))


def test_tico_stages_the_batch_matrix_and_the_engine_update_applies_it():
    m = build_method("tico", build_backbone("convnet", in_channels=3, width=0.25),
                     {"proj_hidden_dim": 16, "proj_dim": 8})
    vs = [torch.randn(6, 3, 16, 16), torch.randn(6, 3, 16, 16)]
    m(ViewBatch(vs), StepContext(0, 4))
    assert torch.equal(m.covariance.cov, torch.zeros(8, 8))
    with torch.no_grad():
        z = F.normalize(m.projector(m.backbone(torch.cat(vs))), dim=1)
    update_parts(m, StepContext(0, 4))
    torch.testing.assert_close(m.covariance.cov, 0.1 * z.T @ z / 12, atol=1e-6, rtol=1e-5)
