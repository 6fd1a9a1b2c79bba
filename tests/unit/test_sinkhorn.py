"""Sinkhorn-Knopp equipartition, SwAV's swapped prediction, prototypes and the SwAV queue."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.backbones import build_backbone
from selfsup.components.base import StepContext, update_parts
from selfsup.components.sinkhorn import sinkhorn_knopp
from selfsup.heads.prototypes import Prototypes
from selfsup.losses.clustering import swapped_prediction
from selfsup.methods.base import ViewBatch, build_method


def _scores(b=64, k=16, seed=0, dim=8):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(b, dim, generator=g), dim=1)
    c = F.normalize(torch.randn(k, dim, generator=g), dim=1)
    return z @ c.T  # cosine scores in [-1, 1], as SwAV's


def test_sinkhorn_rows_and_columns_are_uniform_after_the_iterations():
    b, k = 64, 16
    # near-uniform scores (random 512-d cosines, ~±0.05, as early in training): 3 iterations reach 1e-3.
    # Peaked scores need more iterations for that tolerance (next test); SwAV's 3 give approximate equipartition.
    s = _scores(b, k, dim=512)
    q = sinkhorn_knopp(s, epsilon=0.05, iterations=3)
    assert q.shape == (b, k) and (q >= 0).all()
    # rows (samples) are soft assignments summing to 1; columns (prototypes) each get B/K of the batch
    assert torch.allclose(q.sum(1), torch.ones(b), atol=1e-3)
    assert torch.allclose(q.sum(0) / b, torch.full((k,), 1 / k), atol=1e-3)


def test_sinkhorn_converges_to_equipartition_on_peaked_scores():
    """Cosines of 8-d vectors span [-1, 1]: exp(s/ε) spans e^±20, and 3 iterations only approach equipartition."""
    b, k = 64, 16
    s = _scores(b, k, seed=1)
    col_err = [((sinkhorn_knopp(s, 0.05, it).sum(0) / b) - 1 / k).abs().max().item() for it in (1, 3, 30)]
    assert col_err[0] > col_err[1] > col_err[2]
    q = sinkhorn_knopp(s, 0.05, 30)
    assert torch.allclose(q.sum(1), torch.ones(b), atol=1e-3)
    assert torch.allclose(q.sum(0) / b, torch.full((k,), 1 / k), atol=1e-3)


def test_sinkhorn_matches_a_loop_implementation():
    s = _scores(6, 4, seed=2)
    b, k = s.shape
    q = [[math.exp(s[i, j].item() / 0.05) for j in range(k)] for i in range(b)]
    for _ in range(3):
        for j in range(k):
            col = sum(q[i][j] for i in range(b))
            for i in range(b):
                q[i][j] /= col * k
        for i in range(b):
            row = sum(q[i])
            q[i] = [v / (row * b) for v in q[i]]
    ref = torch.tensor(q, dtype=torch.float64) * b
    assert torch.allclose(sinkhorn_knopp(s.double(), 0.05, 3), ref, atol=1e-9)


@pytest.mark.parametrize("eps", [0.0, -0.1])
def test_sinkhorn_rejects_nonpositive_epsilon(eps):
    with pytest.raises(ValueError, match="method.epsilon must be > 0"):
        sinkhorn_knopp(_scores(), epsilon=eps)
    bb = build_backbone("convnet", in_channels=3, width=0.25)
    with pytest.raises(ValueError, match="method.epsilon must be > 0"):
        build_method("swav", bb, {"epsilon": eps})


def test_swapped_prediction_matches_loops():
    g = torch.Generator().manual_seed(3)
    v, b, k, tau = 3, 4, 5, 0.1
    s = torch.randn(v, b, k, generator=g)
    codes = torch.softmax(torch.randn(2, b, k, generator=g), dim=-1)
    total, pairs = 0.0, 0
    for t in range(2):
        for j in range(v):
            if j == t:
                continue
            for n in range(b):
                lse = math.log(sum(math.exp(s[j, n, q].item() / tau) for q in range(k)))
                total += -sum(codes[t, n, q].item() * (s[j, n, q].item() / tau - lse) for q in range(k)) / b
            pairs += 1
    assert swapped_prediction(s, codes, tau).item() == pytest.approx(total / pairs, rel=1e-5)


def test_prototypes_are_unit_norm_and_count_is_validated():
    p = Prototypes(8, 5)
    z = F.normalize(torch.randn(3, 8), dim=1)
    scores = p(z)
    assert scores.abs().max() <= 1 + 1e-5  # cosines
    assert torch.allclose(scores, z @ F.normalize(p.weight, dim=1).T, atol=1e-6)
    with pytest.raises(ValueError, match="method.n_prototypes must be >= 2"):
        Prototypes(8, 1)
    bb = build_backbone("convnet", in_channels=3, width=0.25)
    with pytest.raises(ValueError, match="method.n_prototypes must be >= 2, got 1"):
        build_method("swav", bb, {"n_prototypes": 1})


def _swav(**over):
    torch.manual_seed(0)
    bb = build_backbone("convnet", in_channels=3, width=0.25)
    cfg = {"proj_hidden_dim": 32, "proj_dim": 16, "n_prototypes": 8, **over}
    m = build_method("swav", bb, cfg)
    from selfsup.config import AugmentConfig

    pipe = m.make_views(16, (0.5,) * 3, (0.25,) * 3, AugmentConfig(local_crops=2))
    x = (torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    return m, pipe(x, torch.Generator().manual_seed(1))


def test_swav_prototypes_frozen_during_the_first_epoch():
    m, vs = _swav(freeze_prototypes_epochs=1)
    m(ViewBatch(vs), StepContext(0, 10, epoch=0)).loss.backward()
    assert m.prototypes.weight.grad is None
    m.zero_grad()
    m(ViewBatch(vs), StepContext(5, 10, epoch=1)).loss.backward()
    assert m.prototypes.weight.grad is not None


def test_prototype_gradient_is_the_plain_dot_products():
    """The forward uses the stored unit rows, so dL/dC = (dL/dscores)ᵀ z, not the gradient through a
    normalisation (which removes the radial part and scales by 1/||v||)."""
    torch.manual_seed(0)
    p = Prototypes(8, 5)
    z = F.normalize(torch.randn(3, 8), dim=1)
    r = torch.randn(3, 5)
    (p(z) * r).sum().backward()
    torch.testing.assert_close(p.weight.grad, r.T @ z)


def test_swav_prototypes_are_renormalised_after_each_sgd_step():
    m, vs = _swav(freeze_prototypes_epochs=0)
    assert torch.allclose(m.prototypes.weight.norm(dim=1), torch.ones(8), atol=1e-6)  # unit at init
    opt = torch.optim.SGD(m.parameters(), lr=5.0)
    for step in range(2):
        ctx = StepContext(step, 10)
        before = m.prototypes.weight.detach().clone()
        opt.zero_grad()
        m(ViewBatch(vs), ctx).loss.backward()
        opt.step()
        assert not torch.allclose(m.prototypes.weight.norm(dim=1), torch.ones(8), atol=1e-3)  # SGD left the sphere
        update_parts(m, ctx)
        assert torch.allclose(m.prototypes.weight.norm(dim=1), torch.ones(8), atol=1e-6)
        assert not torch.equal(m.prototypes.weight, before)


def test_prototypes_from_a_checkpoint_without_unit_rows_are_normalised_on_load():
    p = Prototypes(8, 5)
    old = {"weight": torch.randn(5, 8) * 0.02}  # what the forward-normalising layer saved
    p.load_state_dict(old)
    torch.testing.assert_close(p.weight.detach(), F.normalize(old["weight"], dim=1))
    unit = {"weight": F.normalize(torch.randn(5, 8), dim=1)}
    p.load_state_dict(unit)
    assert torch.equal(p.weight.detach(), unit["weight"])  # unit rows are kept bit for bit (exact resume)


def test_swav_queue_fills_and_feeds_the_codes():
    m, vs = _swav(queue_size=16, queue_start_epoch=1)
    m(ViewBatch(vs), StepContext(0, 10, epoch=0))
    assert [int(q.filled) for q in m.queues] == [0, 0]  # forward only stages; after_step enqueues
    update_parts(m, StepContext(0, 10, epoch=0))
    assert [int(q.filled) for q in m.queues] == [8, 8]
    assert torch.allclose(m.queues[0].rows[:8].norm(dim=1), torch.ones(8), atol=1e-5)
    # from queue_start_epoch on, the codes are computed over queue + batch: they differ from batch-only codes
    s = torch.randn(8, 8)
    z = F.normalize(torch.randn(8, 16), dim=1)
    with_queue = m._codes(s, z, 1, StepContext(0, 10, epoch=1))
    batch_only = sinkhorn_knopp(s, 0.05, 3)
    assert with_queue.shape == (8, 8) and not torch.allclose(with_queue, batch_only)
    assert "queues.0.rows" in m.state_dict()
