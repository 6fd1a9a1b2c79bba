"""NT-Xent / InfoNCE against a direct per-pair loop of the formula (Chen et al. 2020, eq. 1), and the heads."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from selfsup.backbones import build_backbone
from selfsup.config import ConfigError
from selfsup.heads.mlp import mlp, projection_head
from selfsup.losses.contrastive import info_nce, nt_xent
from selfsup.methods.base import build_method


def nt_xent_loop(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    """For each of the 2N anchors i with positive j: -log(exp(s_ij/τ) / Σ_{k≠i} exp(s_ik/τ)), averaged."""
    z = [v / v.norm() for v in list(z1.double()) + list(z2.double())]
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = i + n if i < n else i - n
        num = math.exp(float(z[i] @ z[j]) / tau)
        den = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(n2) if k != i)
        total += -math.log(num / den)
    return total / n2


@pytest.mark.parametrize("tau", [0.07, 0.2, 0.5, 1.0])
@pytest.mark.parametrize("n,d", [(2, 3), (5, 8)])
def test_nt_xent_matches_per_pair_loop(tau, n, d):
    g = torch.Generator().manual_seed(n * 31 + d)
    z1, z2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    got = float(nt_xent(z1, z2, tau))
    assert got == pytest.approx(nt_xent_loop(z1, z2, tau), rel=1e-5, abs=1e-5)


def test_nt_xent_is_scale_invariant_and_low_for_aligned_views():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 16, generator=g)
    aligned = float(nt_xent(z, 3 * z, 0.1))
    assert aligned == pytest.approx(float(nt_xent(z, z, 0.1)), abs=1e-5)
    assert aligned < float(nt_xent(z, torch.randn(8, 16, generator=g), 0.1))


def test_nt_xent_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same shape"):
        nt_xent(torch.randn(4, 8), torch.randn(5, 8))
    with pytest.raises(ValueError, match="same shape"):
        nt_xent(torch.randn(4), torch.randn(4))


def test_info_nce_with_mask_matches_loop():
    g = torch.Generator().manual_seed(1)
    q = nn.functional.normalize(torch.randn(4, 6, generator=g), dim=1)
    k = nn.functional.normalize(torch.randn(7, 6, generator=g), dim=1)
    pos = torch.tensor([0, 3, 5, 6])
    mask = torch.zeros(4, 7, dtype=torch.bool)
    mask[0, 1] = mask[1, 2] = mask[2, 0] = mask[3, 4] = True
    tau = 0.3
    expected = 0.0
    for i in range(4):
        logits = {m: float(q[i] @ k[m]) / tau for m in range(7) if not mask[i, m]}
        expected += -(logits[int(pos[i])] - math.log(sum(math.exp(v) for v in logits.values())))
    assert float(info_nce(q, k, pos, tau, mask=mask)) == pytest.approx(expected / 4, rel=1e-5)
    # without the mask the masked keys count as negatives: the loss is larger
    assert float(info_nce(q, k, pos, tau)) > float(info_nce(q, k, pos, tau, mask=mask))


@pytest.mark.parametrize("tau", [0.0, -0.5])
def test_temperature_must_be_positive(tau):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        nt_xent(torch.randn(2, 3), torch.randn(2, 3), tau)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        info_nce(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1]), tau)
    backbone = build_backbone("convnet", width=0.25)
    with pytest.raises(ValueError, match=r"method\.temperature must be > 0"):
        build_method("simclr", backbone, {"temperature": tau})


def test_simclr_rejects_bad_config_types():
    with pytest.raises(ConfigError, match="method.proj_dim"):
        build_method("simclr", build_backbone("convnet", width=0.25), {"proj_dim": "big"})


def test_mlp_shapes_and_layers():
    head = mlp([10, 32, 32, 6])
    assert head(torch.randn(4, 10)).shape == (4, 6)
    linears = [m for m in head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(10, 32), (32, 32), (32, 6)]
    assert linears[0].bias is None and linears[-1].bias is not None  # no bias before BN
    assert sum(isinstance(m, nn.BatchNorm1d) for m in head) == 2
    assert sum(isinstance(m, nn.ReLU) for m in head) == 2
    assert isinstance(head[-1], nn.Linear)  # no activation after the output
    ln = mlp([8, 16, 4], norm="ln", last_norm="bn")
    assert ln(torch.randn(3, 8)).shape == (3, 4)
    assert isinstance(ln[1], nn.LayerNorm) and isinstance(ln[-1], nn.BatchNorm1d) and not ln[-1].affine
    with pytest.raises(ValueError, match="at least input and output"):
        mlp([8])
    with pytest.raises(ValueError, match="unknown norm"):
        mlp([8, 4, 2], norm="gn")


def test_projection_head_shapes():
    assert projection_head(16, 32, 8)(torch.randn(5, 16)).shape == (5, 8)
    lin = projection_head(16, 32, 8, layers=1)
    assert len(lin) == 1 and isinstance(lin[0], nn.Linear)
    three = projection_head(16, 32, 8, layers=3)
    assert sum(isinstance(m, nn.Linear) for m in three) == 3
    with pytest.raises(ValueError, match=">= 1 layer"):
        projection_head(16, 32, 8, layers=0)


def test_simclr_method_loss_is_nt_xent_of_its_projections():
    from selfsup.methods.base import ViewBatch

    torch.manual_seed(0)
    backbone = build_backbone("convnet", width=0.25)
    m = build_method("simclr", backbone, {"temperature": 0.3, "proj_hidden_dim": 16, "proj_dim": 8})
    v1, v2 = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        out = m(ViewBatch([v1, v2]))
        z = m.projector(m.backbone(torch.cat([v1, v2])))
    assert float(out.loss) == pytest.approx(float(nt_xent(z[:4], z[4:], 0.3)), rel=1e-5)
    assert out.embedding.shape == (4, backbone.num_features)
    with pytest.raises(ValueError, match="2 views"):
        m(ViewBatch([v1]))
