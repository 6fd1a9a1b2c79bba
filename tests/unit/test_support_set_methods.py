"""NNCLR, NN-BYOL, NN-SimSiam, FastSiam and ReSSL: each loss against a slow float64 re-derivation of the paper's
formula (values and gradients), the nearest-neighbour support set, and the pairing of views inside the methods."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import make_blobs

from selfsup.backbones import build_backbone
from selfsup.components.base import StepContext, discard_staged, update_parts
from selfsup.components.nn_support import NearestNeighbourSupport
from selfsup.errors import ConfigError
from selfsup.losses.contrastive import nnclr_loss
from selfsup.losses.distillation import mean_target_negative_cosine, negative_cosine, normalized_mse, relational_loss
from selfsup.methods.base import ViewBatch, build_method
from selfsup.registry import METHODS


def _g(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _leaf(*shape: int, seed: int) -> torch.Tensor:
    return _g(*shape, seed=seed).requires_grad_(True)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return sum(a[d] * b[d] for d in range(a.shape[0]))


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _dot(a, b) / torch.sqrt(_dot(a, a)) / torch.sqrt(_dot(b, b))


def _grads(loss: torch.Tensor, leaves: list[torch.Tensor]) -> list[torch.Tensor | None]:
    return list(torch.autograd.grad(loss, leaves, allow_unused=True, retain_graph=True))


def _assert_same(loss, ref, leaves, rtol=1e-5, atol=1e-7):
    assert loss.item() == pytest.approx(ref.item(), rel=rtol, abs=atol)
    for g, r in zip(_grads(loss, leaves), _grads(ref, leaves)):
        assert (g is None) == (r is None)
        if r is not None:
            torch.testing.assert_close(g.double(), r, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------------------------------- NNCLR
def _nnclr_one_way(nn: torch.Tensor, p: torch.Tensor, tau: float) -> torch.Tensor:
    """(1/N) Σ_i −log( exp(cos(nn_i, p_i)/τ) / Σ_k exp(cos(nn_i, p_k)/τ) ), element by element."""
    n = nn.shape[0]
    total = 0.0
    for i in range(n):
        logits = [_cos(nn[i].detach(), p[k]) / tau for k in range(n)]
        total = total - (logits[i] - torch.log(sum(torch.exp(v) for v in logits)))
    return total / n


def test_nnclr_loss_matches_the_papers_formula_values_and_gradients():
    nn1, nn2, p1, p2 = (_leaf(5, 4, seed=s) for s in range(4))
    tau = 0.1
    ref = 0.5 * _nnclr_one_way(nn1, p2, tau) + 0.5 * _nnclr_one_way(nn2, p1, tau)  # Algorithm 1
    loss = nnclr_loss(nn1, nn2, p1, p2, tau)
    _assert_same(loss, ref, [p1, p2, nn1, nn2])
    assert _grads(loss, [nn1, nn2]) == [None, None]  # the neighbours are constants


def test_nnclr_loss_pairs_view_1_neighbours_with_view_2_predictions():
    """Neighbours equal to the other view's predictions and far from their own view's: a low loss; swapping the
    views' predictions (the wrong pairing) gives a high one."""
    p1, p2 = F.normalize(_g(6, 8, seed=0), dim=1), F.normalize(_g(6, 8, seed=1), dim=1)
    right = nnclr_loss(p2, p1, p1, p2, 0.05)  # NN(z1) = p2, NN(z2) = p1
    wrong = nnclr_loss(p1, p2, p1, p2, 0.05)
    assert right.item() < 0.05 < wrong.item()


# ----------------------------------------------------------------------------------------------- FastSiam
def test_fastsiam_loss_matches_mean_of_other_views_formula():
    v, b, d = 4, 3, 5
    p, z = _leaf(v, b, d, seed=0), _leaf(v, b, d, seed=1)
    ref = 0.0
    for i in range(v):
        for n in range(b):
            target = sum(z[j, n].detach() for j in range(v) if j != i) / (v - 1)
            ref = ref - _cos(p[i, n], target) / b
    ref = ref / v
    loss = mean_target_negative_cosine(p, z)
    _assert_same(loss, ref, [p, z])
    assert _grads(loss, [z]) == [None]  # stop-gradient on the targets


def test_fastsiam_loss_with_two_views_is_simsiams():
    p, z = _g(2, 6, 7, seed=2), _g(2, 6, 7, seed=3)
    simsiam = 0.5 * negative_cosine(p[0], z[1]) + 0.5 * negative_cosine(p[1], z[0])
    assert mean_target_negative_cosine(p, z).item() == pytest.approx(simsiam.item(), rel=1e-6)  # D in float32


# -------------------------------------------------------------------------------------------------- ReSSL
def _relation_ref(s, t, keys, ts, tt, keep):
    """(1/N) Σ_i −Σ_k q_ik log p_ik over the kept keys, q = softmax(t·k/τ_t), p = softmax(s·k/τ_s)."""
    n = s.shape[0]
    total = 0.0
    cols = [k for k in range(keys.shape[0]) if keep[k]]
    for i in range(n):
        ls = [_dot(s[i], keys[k].detach()) / ts for k in cols]
        lt = [_dot(t[i].detach(), keys[k].detach()) / tt for k in cols]
        zs, zt = torch.log(sum(torch.exp(v) for v in ls)), sum(torch.exp(v) for v in lt)
        total = total - sum(torch.exp(lt[c]) / zt * (ls[c] - zs) for c in range(len(cols)))
    return total / n


@pytest.mark.parametrize("masked", [False, True])
def test_relational_loss_matches_the_papers_formula(masked):
    s = F.normalize(_g(4, 6, seed=0), dim=1).requires_grad_(True)
    t = F.normalize(_g(4, 6, seed=1), dim=1).requires_grad_(True)
    keys = F.normalize(_g(7, 6, seed=2), dim=1).requires_grad_(True)
    keep = [True] * 7
    mask = None
    if masked:
        mask = torch.tensor([False, True, False, False, True, True, False])
        keep = [not bool(m) for m in mask]
    ref = _relation_ref(s, t, keys, 0.1, 0.04, keep)
    loss = relational_loss(s, t, keys, 0.1, 0.04, mask=mask)
    assert torch.isfinite(loss)
    _assert_same(loss, ref, [s, t, keys])
    assert _grads(loss, [t, keys]) == [None, None]  # teacher and queue are targets


def test_relational_loss_sharpened_teacher_is_below_the_student_temperature():
    s = F.normalize(_g(4, 6, seed=0), dim=1)
    keys = F.normalize(_g(7, 6, seed=2), dim=1)
    # the student equal to the teacher: the loss is the cross-entropy H(q, p) > H(p) unless τ_t = τ_s
    same = relational_loss(s, s, keys, 0.1, 0.1)
    sharp = relational_loss(s, s, keys, 0.1, 0.04)
    p = F.softmax(s @ keys.T / 0.1, dim=1)
    assert same.item() == pytest.approx(-(p * p.log()).sum(1).mean().item(), rel=1e-10)
    assert sharp.item() != pytest.approx(same.item())
    with pytest.raises(ConfigError, match="method.teacher_temp"):
        relational_loss(s, s, keys, 0.1, 0.0)


# ---------------------------------------------------------------------------------------- the support set
def test_nearest_returns_the_closest_written_row_or_the_embedding_itself():
    q = NearestNeighbourSupport(6, 3)
    z = torch.tensor([[1.0, 0.1, 0.0], [0.0, -2.0, 0.1]])
    torch.testing.assert_close(q.nearest(z), F.normalize(z, dim=1))  # empty: its own neighbour
    rows = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]])
    q.stage(rows[:2] * 3)  # staged rows are normalised; nothing changes before after_step
    torch.testing.assert_close(q.nearest(z), F.normalize(z, dim=1))
    update_parts(q, StepContext())
    assert int(q.filled) == 2
    # only the two written rows compete: z[1] (closest to −e2, unwritten) gets e2 or e1, the larger cosine
    torch.testing.assert_close(q.nearest(z), torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    q.stage(rows[2:])
    update_parts(q, StepContext())
    torch.testing.assert_close(q.nearest(z), torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]))


def test_support_set_skipped_step_and_size_check():
    q = NearestNeighbourSupport(4, 3, option="method.nn_support_size")
    q.stage(torch.randn(2, 3))
    discard_staged(q)
    update_parts(q, StepContext())
    assert int(q.filled) == 0
    with pytest.raises(ConfigError, match=r"method.nn_support_size \(4\) must be at least the global batch size"):
        q.check_batch_size(5)


# ---------------------------------------------------------------------------------- pairing inside methods
def _tiny(name: str, extra: dict | None = None):
    cls = METHODS.get(name)
    torch.manual_seed(0)
    backbone = build_backbone("convnet", in_channels=3, width=0.25, image_size=16)
    method = build_method(name, backbone, {**cls.test_overrides, **(extra or {})}, num_train=16)
    data = make_blobs(n=16, size=16)
    views = method.make_views(16, data.mean, data.std)
    x, idx, _ = next(data.train.batches(8, shuffle=False))
    return method, ViewBatch(views(x, torch.Generator().manual_seed(0)), idx)


def _fill(support: NearestNeighbourSupport, seed: int = 5) -> None:
    support.stage(torch.randn(support.size, support.rows.shape[1], generator=torch.Generator().manual_seed(seed)))
    update_parts(support, StepContext())


def test_nnclr_method_pairs_neighbours_across_views_and_queues_view_1():
    m, batch = _tiny("nnclr")
    _fill(m.support)
    m.eval()  # BN with running statistics: the same projections in the method and in the re-derivation below
    out = m(batch, StepContext())
    with torch.no_grad():
        z = m.projector(m.backbone(torch.cat(batch.views)))
        p = m.predictor(z)
    (z1, z2), (p1, p2) = z.chunk(2), p.chunk(2)
    nn1, nn2 = m.support.nearest(z1), m.support.nearest(z2)
    assert out.loss.item() == pytest.approx(nnclr_loss(nn1, nn2, p1, p2, m.cfg.temperature).item(), rel=1e-5)
    update_parts(m.support, StepContext())
    ptr = (int(m.support.ptr) - 8) % m.support.size
    torch.testing.assert_close(m.support.rows[ptr:ptr + 8], F.normalize(z1, dim=1))
    assert torch.equal(m.support.ids[ptr:ptr + 8], batch.index)


@pytest.mark.parametrize("name", ["nnbyol", "nnsiam"])
def test_nn_variants_swap_each_target_for_its_neighbour(name):
    m, batch = _tiny(name)
    _fill(m.support)
    m.eval()
    out = m(batch, StepContext())
    x = torch.cat(batch.views)
    with torch.no_grad():
        p1, p2 = m.predictor(m.projector(m.backbone(x))).chunk(2)
        z1, z2 = (m.target(x) if name == "nnbyol" else m.projector(m.backbone(x))).chunk(2)
    nn1, nn2 = m.support.nearest(z1), m.support.nearest(z2)
    ref = (normalized_mse(p1, nn2) + normalized_mse(p2, nn1) if name == "nnbyol"
           else 0.5 * negative_cosine(p1, nn2) + 0.5 * negative_cosine(p2, nn1))
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert "nn_cos" in out.logs


@pytest.mark.parametrize("name", ["byol", "simsiam"])
def test_plain_byol_and_simsiam_build_no_support_set(name):
    m, batch = _tiny(name)
    assert m.support is None and not any(k.startswith("support.") for k in m.state_dict())
    assert "nn_cos" not in m(batch, StepContext()).logs
    with pytest.raises(ConfigError, match="method.nn_support_size"):
        build_method({"byol": "nnbyol", "simsiam": "nnsiam"}[name], build_backbone("convnet", width=0.25),
                     {"nn_support_size": 0})


def test_fastsiam_takes_four_views_and_predicts_the_mean_of_the_others():
    m, batch = _tiny("fastsiam")
    assert len(batch.views) == 4
    m.eval()
    out = m(batch, StepContext())
    with torch.no_grad():
        z = m.projector(m.backbone(torch.cat(batch.views)))
        p = m.predictor(z)
    ref = mean_target_negative_cosine(torch.stack(p.chunk(4)), torch.stack(z.chunk(4)))
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)
    with pytest.raises(ValueError, match="at least 3 views"):
        m(ViewBatch(batch.views[:2], batch.index))


def test_ressl_student_sees_view_1_teacher_view_2_and_the_queue_gets_the_teacher():
    m, batch = _tiny("ressl")
    strong, weak = batch.views
    m.eval()
    out0 = m(batch, StepContext())  # first step: the batch's teacher embeddings are the keys
    with torch.no_grad():
        s = F.normalize(m.projector(m.backbone(strong)), dim=1)
        t = F.normalize(m.teacher(weak), dim=1)
    assert out0.loss.item() == pytest.approx(relational_loss(s, t, t, 0.1, 0.04).item(), rel=1e-5)
    update_parts(m, StepContext(0, 10))
    torch.testing.assert_close(m.queue.rows[:8], t)
    with torch.no_grad():  # the EMA moved the teacher (momentum 0.99; the student did not change here)
        t = F.normalize(m.teacher(weak), dim=1)
    out1 = m(batch, StepContext(1, 10))
    ref = relational_loss(s, t, m.queue.rows[:8], 0.1, 0.04)  # only the written rows
    assert out1.loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert math.isfinite(out1.logs["pos_cos"].item())
