"""Contrastive family: losses against per-element loops of their formulas, the queue, the momentum encoder,
MoCo's queue contrast and split BN, the metric-learning losses, and bad-input errors naming the option."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import make_blobs
from torch import nn

from selfsup.backbones import build_backbone
from selfsup.components.base import StepContext, update_parts
from selfsup.components.ema import EMATeacher
from selfsup.components.queue import FeatureQueue
from selfsup.components.schedules import Cosine
from selfsup.config import ConfigError
from selfsup.losses.contrastive import info_nce, nce_log_norm, nce_loss
from selfsup.losses.metric import margin_contrastive_loss, npair_loss, triplet_loss
from selfsup.methods.base import ViewBatch, build_method
from selfsup.methods.moco import forward_in_splits
from selfsup.methods.moco_v3 import ctr_loss


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


def dot(a, b):
    return float((a * b).sum())


# ---------------------------------------------------------------- InfoNCE / NCE kernels

def test_info_nce_per_query_keys_matches_loop():
    q, keys, tau = unit(4, 8), unit(4, 6, 8, seed=1), 0.3
    pos = torch.tensor([0, 3, 5, 1])
    expected = 0.0
    for i in range(4):
        logits = [dot(q[i], keys[i, m]) / tau for m in range(6)]
        expected += -logits[int(pos[i])] + math.log(sum(math.exp(v) for v in logits))
    assert info_nce(q, keys, pos, tau).item() == pytest.approx(expected / 4, rel=1e-6)


def test_nce_loss_matches_wu_et_al_formula():
    """h = P/(P + m·Pn) with P = exp(s/τ)/Z and Pn = 1/n; L = −log h(pos) − Σ log(1 − h(neg))."""
    pos, neg = torch.randn(3, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    z, n, m = 7.0, 100, 5
    expected = 0.0
    for i in range(3):
        h = lambda s: (math.exp(s) / z) / (math.exp(s) / z + m / n)  # noqa: E731
        expected += -math.log(h(float(pos[i]))) - sum(math.log(1 - h(float(neg[i, k]))) for k in range(m))
    got = nce_loss(pos, neg, math.log(z * m / n))
    assert got.item() == pytest.approx(expected / 3, rel=1e-5)


def test_nce_log_norm_is_monte_carlo_estimate_of_z():
    neg = torch.randn(4, 6, dtype=torch.float64)
    n = 1000
    z = n * float(neg.exp().mean())  # Z ≈ n · E[exp(s/τ)]
    assert nce_log_norm(neg).item() == pytest.approx(math.log(z * 6 / n), rel=1e-6)


# ---------------------------------------------------------------- queue and momentum encoder

def test_queue_fifo_order_and_wrap_around():
    q = FeatureQueue(6, 2, normalize=False)
    rows = torch.arange(20, dtype=torch.float32).reshape(10, 2)
    q.push(rows[:4], torch.arange(4))
    assert torch.equal(q.valid(), rows[:4]) and int(q.ptr) == 4 and int(q.filled) == 4
    q.push(rows[4:8], torch.arange(4, 8))  # 2 rows fit at the end, 2 wrap to the front, overwriting the oldest
    assert torch.equal(q.rows, torch.cat([rows[6:8], rows[2:6]]))
    assert q.ids.tolist() == [6, 7, 2, 3, 4, 5]
    assert int(q.ptr) == 2 and int(q.filled) == 6 and torch.equal(q.valid(), q.rows)
    q.push(rows[8:10])  # no ids given: -1
    assert q.ids.tolist() == [6, 7, -1, -1, 4, 5]


def test_staged_micro_batches_enter_the_queue_as_pushes_one_by_one():
    """Staged rows of one step (micro-batches, together more than the queue holds) leave the queue as pushing
    them in order would: the newest rows, at the same places, the same pointer and fill."""
    rows = torch.arange(36, dtype=torch.float32).reshape(18, 2)
    one_by_one, staged = FeatureQueue(8, 2, normalize=False), FeatureQueue(8, 2, normalize=False)
    for q in (one_by_one, staged):
        q.push(rows[:3], torch.arange(3))
    for i in range(3, 18, 5):
        one_by_one.push(rows[i:i + 5], torch.arange(i, i + 5))
        staged.stage(rows[i:i + 5], torch.arange(i, i + 5))
    assert len(staged._staged) == 3  # three calls staged, nothing pushed yet
    staged.after_step(StepContext(1, 2))
    for name in ("rows", "ids", "ptr", "filled"):
        assert torch.equal(getattr(staged, name), getattr(one_by_one, name)), name
    assert len(staged._staged) == 0


def test_ema_momentum_update_formula_and_schedule():
    student = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = EMATeacher(student, Cosine(0.9, 1.0))
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
        student[1].running_mean.fill_(3.0)
    before = [p.clone() for p in ema.teacher.parameters()]
    ctx = StepContext(step=5, total_steps=20)
    m = 1.0 - 0.1 * (math.cos(math.pi * 0.25) + 1) / 2  # MoCo v3's cosine momentum at progress 0.25
    ema.after_step(ctx)
    for t, t0, s in zip(ema.teacher.parameters(), before, student.parameters()):
        assert torch.allclose(t, m * t0 + (1 - m) * s, atol=1e-6)
    assert torch.equal(ema.teacher[1].running_mean, student[1].running_mean)
    assert not any(p.requires_grad for p in ema.teacher.parameters())


# ---------------------------------------------------------------- MoCo

def _moco(name="moco-v2", **over):
    bb = build_backbone("convnet", in_channels=3, width=0.25, image_size=16)
    cfg = {"queue_size": 32, "bn_splits": 2, **over} if name != "moco-v3" else over
    return build_method(name, bb, cfg, num_train=64)


def _views(method, n=8, seed=0):
    data = make_blobs(n=max(n, 16), size=16)
    x, idx, _ = next(data.train.batches(n, shuffle=False))
    views = method.make_views(16, data.mean, data.std)
    return ViewBatch(views(x, torch.Generator().manual_seed(seed)), idx)


def test_moco_loss_matches_loop_over_positive_and_queue():
    torch.manual_seed(0)
    m = _moco(queue_size=16, temperature=0.5)
    q, k = unit(4, 128, seed=1).float(), unit(4, 128, seed=2).float()
    index = torch.tensor([0, 1, 2, 3])
    m.queue.push(unit(6, 128, seed=3).float(), torch.tensor([9, 1, 9, 9, 3, 9]))  # 6 of 16 rows written
    got = m._contrast(q, k, index)
    qr, ids, tau = m.queue.rows, m.queue.ids, 0.5
    expected = 0.0
    for i in range(4):
        pos = math.exp(dot(q[i], k[i]) / tau)
        negs = sum(math.exp(dot(q[i], qr[j]) / tau) for j in range(6) if int(ids[j]) != int(index[i]))
        expected += -math.log(pos / (pos + negs))
    assert got.item() == pytest.approx(expected / 4, rel=1e-4)


def test_moco_first_step_uses_batch_keys_then_enqueues():
    torch.manual_seed(0)
    m = _moco(queue_size=16)
    q, k = unit(4, 128, seed=1).float(), unit(4, 128, seed=2).float()
    expected = info_nce(q, k, torch.arange(4), m.cfg.temperature)  # empty queue: the batch is the dictionary
    assert m._contrast(q, k, torch.arange(4)).item() == pytest.approx(expected.item(), rel=1e-5)
    batch = _views(m, n=8)
    m(batch, StepContext(0, 4))
    assert int(m.queue.filled) == 0  # forward only stages the keys; the step's after_step enqueues them
    update_parts(m, StepContext(0, 4))
    assert int(m.queue.filled) == 8 and torch.equal(m.queue.ids[:8], batch.index)
    assert torch.allclose(m.queue.rows[:8].norm(dim=1), torch.ones(8), atol=1e-5)


def test_moco_key_encoder_follows_query_encoder():
    torch.manual_seed(0)
    m = _moco(momentum=0.9)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    out = m(_views(m, n=8), StepContext(0, 4))
    opt.zero_grad()
    out.loss.backward()
    before = [p.clone() for p in m.key_encoder.teacher.parameters()]
    opt.step()
    update_parts(m, StepContext(0, 4))
    student = list(m.backbone.parameters()) + list(m.projector.parameters())
    for t, t0, s in zip(m.key_encoder.teacher.parameters(), before, student):
        assert torch.allclose(t, 0.9 * t0 + 0.1 * s, atol=1e-6)


def test_forward_in_splits_normalises_each_strided_group_and_keeps_order():
    bn = nn.BatchNorm1d(3)
    x = torch.randn(8, 3)
    expected = torch.empty_like(x)
    expected[0::2], expected[1::2] = bn(x[0::2]), bn(x[1::2])  # strided groups: a rank's slice of a global group
    assert torch.allclose(forward_in_splits(bn, x, 2), expected, atol=1e-6)
    assert torch.allclose(forward_in_splits(lambda t: t * 2, x, 4), x * 2)


def test_moco_keys_come_from_shuffled_bn_groups_in_batch_order():
    m = _moco(bn_splits=2)
    x = torch.randn(8, 3, 16, 16)
    torch.manual_seed(5)
    keys = m._key(x)
    torch.manual_seed(5)
    perm = torch.randperm(8)
    with torch.no_grad():
        shuffled = forward_in_splits(m.key_encoder, x[perm], 2)
    assert torch.allclose(keys, F.normalize(shuffled[perm.argsort()], dim=1), atol=1e-5)
    with torch.no_grad():  # not the unshuffled groups: a query and its key see different BN statistics
        plain = F.normalize(forward_in_splits(m.key_encoder, x, 2), dim=1)
    assert not torch.allclose(keys, plain, atol=1e-4)


@pytest.mark.parametrize("over,batch,match", [
    ({"queue_size": 40}, 16, "method.queue_size"),
    ({"queue_size": 48, "symmetric": True}, 16, "method.queue_size.*twice"),
    ({"queue_size": 32, "bn_splits": 3}, 16, "method.bn_splits"),
])
def test_moco_batch_errors_name_the_option(over, batch, match):
    m = _moco(**over)
    with pytest.raises(ConfigError, match=match):
        m(_views(m, n=batch), StepContext(0, 4))


@pytest.mark.parametrize("name,over,match", [
    ("moco-v1", {"temperature": 0}, "method.temperature must be > 0"),
    ("moco-v2", {"temperature": -1}, "method.temperature must be > 0"),
    ("moco-v3", {"temperature": 0}, "method.temperature must be > 0"),
    ("moco-v2", {"momentum": 1.5}, "method.momentum"),
    ("moco-v1", {"queue_size": 0}, "method.queue_size"),
    ("npid", {"temperature": -0.1}, "method.temperature must be > 0"),
    ("npid", {"loss": "hinge"}, "method.loss"),
    ("pirl", {"temperature": 0}, "method.temperature must be > 0"),
    ("pirl", {"lambda_jigsaw": 2}, "method.lambda_jigsaw"),
    ("metric", {"margin": -0.5}, "method.margin must be >= 0"),
    ("metric", {"loss": "lifted"}, "method.loss"),
    ("metric", {"temperature": 0}, "method.temperature must be > 0"),
    ("metric", {"mining": "hardest"}, "method.mining"),
])
def test_bad_options_are_one_line_errors(name, over, match):
    bb = build_backbone("convnet", in_channels=3, width=0.25)
    with pytest.raises(ConfigError, match=match) as e:
        build_method(name, bb, over, num_train=64)
    assert "\n" not in str(e.value)


def test_moco_v3_ctr_loss_matches_loop():
    q, k, tau = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64), 0.2
    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
    expected = 0.0
    for i in range(5):
        logits = [dot(qn[i], kn[j]) / tau for j in range(5)]
        expected += -logits[i] + math.log(sum(math.exp(v) for v in logits))
    assert ctr_loss(q, k, tau).item() == pytest.approx(2 * tau * expected / 5, rel=1e-6)


# ---------------------------------------------------------------- metric-learning losses

def test_margin_contrastive_loss_matches_loop():
    a, p, margin = unit(5, 4, seed=1), unit(5, 4, seed=2), 1.2
    pos = [float((a[i] - p[i]).norm()) ** 2 for i in range(5)]
    neg = [max(0.0, margin - float((a[i] - p[j]).norm())) ** 2 for i in range(5) for j in range(5) if i != j]
    expected = 0.5 * sum(pos) / len(pos) + 0.5 * sum(neg) / len(neg)
    assert margin_contrastive_loss(a, p, margin).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("mining", ["all", "batch-hard", "semi-hard"])
def test_triplet_loss_matches_loop(mining):
    a, p, alpha = unit(6, 3, seed=3), unit(6, 3, seed=4), 0.3
    d2 = lambda u, v: float((u - v).pow(2).sum())  # noqa: E731
    terms = []
    for i in range(6):
        dap = d2(a[i], p[i])
        dans = [d2(a[i], p[j]) for j in range(6) if j != i]
        if mining == "all":
            terms += [max(0.0, dap - dan + alpha) for dan in dans]
            continue
        if mining == "batch-hard":
            dan = min(dans)
        else:
            farther = [d for d in dans if d > dap]
            dan = min(farther) if farther else max(dans)
        terms.append(max(0.0, dap - dan + alpha))
    expected = sum(terms) / len(terms)
    assert triplet_loss(a, p, alpha, mining).item() == pytest.approx(expected, rel=1e-5, abs=1e-9)


def test_semi_hard_skips_negatives_closer_than_the_positive():
    a = torch.zeros(3, 2)
    p = torch.tensor([[1.0, 0.0], [0.0, 0.5], [0.0, 1.1]])  # squared distances from every anchor: 1, 0.25, 1.21
    # anchor 0 (d²_ap = 1): batch-hard takes the negative at 0.25, semi-hard the closest farther one, 1.21;
    # anchor 1 (0.25): both take 1.0; anchor 2 (1.21): batch-hard 0.25, semi-hard has none farther → the farthest, 1.0
    hard = [1 - 0.25 + 0.3, 0.0, 1.21 - 0.25 + 0.3]
    semi = [1 - 1.21 + 0.3, 0.0, 1.21 - 1.0 + 0.3]
    assert triplet_loss(a, p, 0.3, "batch-hard").item() == pytest.approx(sum(hard) / 3, rel=1e-5)
    assert triplet_loss(a, p, 0.3, "semi-hard").item() == pytest.approx(sum(semi) / 3, rel=1e-5)


def test_npair_loss_matches_sohn_formula():
    f, fp, lam = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64), 0.01
    expected = 0.0
    for i in range(4):
        expected += math.log(1 + sum(math.exp(dot(f[i], fp[j]) - dot(f[i], fp[i])) for j in range(4) if j != i))
    expected /= 4
    expected += lam * 0.5 * (sum(dot(v, v) for v in f) / 4 + sum(dot(v, v) for v in fp) / 4)
    assert npair_loss(f, fp, lam).item() == pytest.approx(expected, rel=1e-6)


def test_metric_losses_reject_bad_input():
    with pytest.raises(ValueError, match="margin must be >= 0"):
        triplet_loss(unit(3, 2), unit(3, 2), -0.1)
    with pytest.raises(ValueError, match="mining"):
        triplet_loss(unit(3, 2), unit(3, 2), 0.1, "hardest")
    with pytest.raises(ValueError, match="same shape"):
        margin_contrastive_loss(unit(3, 2), unit(4, 2))


@pytest.mark.parametrize("over", [
    {"loss": "contrastive"}, {"loss": "triplet", "mining": "semi-hard"}, {"loss": "triplet", "mining": "batch-hard"},
    {"loss": "triplet", "mining": "all"}, {"loss": "npair"},
])
def test_every_metric_loss_lowers_on_a_fixed_batch(over):
    torch.manual_seed(0)
    bb = build_backbone("convnet", in_channels=3, width=0.25, image_size=16)
    m = build_method("metric", bb, over)
    batch = _views(m, n=16)
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    losses = []
    for s in range(10):
        out = m(batch, StepContext(s, 10))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert min(losses[-3:]) < losses[0], losses
