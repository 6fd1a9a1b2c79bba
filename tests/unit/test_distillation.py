"""BYOL / SimSiam / DINO: losses against per-sample re-derivations, EMA teacher, DINO center and temperatures."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from selfsup.backbones import build_backbone
from selfsup.components.base import StepContext, discard_staged, update_parts
from selfsup.components.center import Center
from selfsup.components.ema import EMATeacher
from selfsup.components.schedules import Cosine
from selfsup.config import ConfigError
from selfsup.losses.distillation import cross_view_cross_entropy, dino_loss, negative_cosine, normalized_mse
from selfsup.methods.base import ViewBatch, build_method


def _cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a)) / math.sqrt(sum(y * y for y in b))


def test_normalized_mse_matches_per_sample_formula():
    g = torch.Generator().manual_seed(0)
    p, z = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    # ||p/||p|| - z/||z|| ||^2 per sample, then the mean
    ref = 0.0
    for i in range(5):
        pn = [v / math.sqrt(sum(u * u for u in p[i].tolist())) for v in p[i].tolist()]
        zn = [v / math.sqrt(sum(u * u for u in z[i].tolist())) for v in z[i].tolist()]
        ref += sum((a - b) ** 2 for a, b in zip(pn, zn)) / 5
    assert normalized_mse(p, z).item() == pytest.approx(ref, rel=1e-5)


def test_negative_cosine_matches_formula_and_stops_the_gradient():
    g = torch.Generator().manual_seed(1)
    p = torch.randn(4, 6, generator=g, requires_grad=True)
    z = torch.randn(4, 6, generator=g, requires_grad=True)
    ref = -sum(_cos(p[i].tolist(), z[i].tolist()) for i in range(4)) / 4
    loss = negative_cosine(p, z)
    assert loss.item() == pytest.approx(ref, rel=1e-5)
    loss.backward()
    assert p.grad is not None and z.grad is None  # stop-gradient on the target
    z.grad = None
    normalized_mse(p, z).backward()
    assert z.grad is None


def test_dino_loss_matches_loops_over_view_pairs():
    g = torch.Generator().manual_seed(2)
    vs, vt, b, k = 4, 2, 3, 5
    s = torch.randn(vs, b, k, generator=g)
    t = torch.randn(vt, b, k, generator=g)
    c = torch.randn(1, k, generator=g) * 0.1
    ts, tt = 0.1, 0.05
    total, pairs = 0.0, 0
    for i in range(vt):
        for j in range(vs):
            if i == j:
                continue
            for n in range(b):
                tl = [(t[i, n, q].item() - c[0, q].item()) / tt for q in range(k)]
                sl = [s[j, n, q].item() / ts for q in range(k)]
                zt = sum(math.exp(v) for v in tl)
                zs = sum(math.exp(v) for v in sl)
                total += -sum(math.exp(tl[q]) / zt * (sl[q] - math.log(zs)) for q in range(k)) / b
            pairs += 1
    assert dino_loss(s, t, c, ts, tt).item() == pytest.approx(total / pairs, rel=1e-5)


def test_cross_view_cross_entropy_skips_only_same_view():
    """With one-hot targets and confident students the only non-zero pairs are the mismatched ones."""
    k = 3
    q = torch.eye(k)[[0, 1]][:, None, :]  # (2, 1, 3): view 0 → class 0, view 1 → class 1
    s = torch.eye(k)[[1, 0, 2]][:, None, :] * 50  # student view 0 says 1, view 1 says 0, view 2 says 2
    # pairs (t0,s1): right; (t0,s2): wrong; (t1,s0): right; (t1,s2): wrong → mean of CE = 2·50/4 ≈ 25
    assert cross_view_cross_entropy(s, q, 1.0).item() == pytest.approx(25.0, abs=1e-3)


def test_center_update_formula():
    c = Center(4, momentum=0.9)
    x1 = torch.arange(8.0).reshape(2, 4)
    c.observe(x1)
    assert torch.equal(c.center, torch.zeros(1, 4))  # the update waits for after_step
    c.after_step(StepContext())
    expected = 0.1 * x1.mean(0, keepdim=True)
    assert torch.allclose(c.center, expected)
    x2 = torch.ones(3, 4)
    c.observe(x2)
    c.after_step(StepContext())
    assert torch.allclose(c.center, 0.9 * expected + 0.1 * x2.mean(0, keepdim=True))
    c.after_step(StepContext())  # nothing observed: unchanged
    assert torch.allclose(c.center, 0.9 * expected + 0.1)
    assert "center" in c.state_dict() and "pending" not in c.state_dict()


def test_center_under_grad_accumulation_uses_every_micro_batch():
    """The engine runs the forward once per micro-batch and after_step once per step: the center must move
    towards the mean of the whole step's outputs, not the last micro-batch's."""
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    whole, split = Center(4, momentum=0.5), Center(4, momentum=0.5)
    ctx = StepContext(step=2)
    whole.observe(x, ctx)
    split.observe(x[:6], ctx)  # unequal micro-batches: the mean weights every row alike
    split.observe(x[6:], ctx)
    torch.testing.assert_close(split.pending, x.mean(0, keepdim=True))
    whole.after_step(ctx)
    split.after_step(ctx)
    torch.testing.assert_close(split.center, whole.center)
    torch.testing.assert_close(whole.center, 0.5 * x.mean(0, keepdim=True))
    assert split.pending is None


def test_center_drops_what_a_skipped_step_observed():
    c = Center(4, momentum=0.5)
    c.observe(torch.full((2, 4), float("nan")), StepContext(step=0))  # step 0 skipped: no after_step
    c.observe(torch.ones(2, 4), StepContext(step=1))
    c.after_step(StepContext(step=1))
    assert torch.equal(c.center, torch.full((1, 4), 0.5))
    c.observe(torch.ones(2, 4), StepContext(step=2))
    discard_staged(c)
    c.after_step(StepContext(step=2))
    assert torch.equal(c.center, torch.full((1, 4), 0.5))


def test_ema_update_formula_and_cosine_momentum():
    torch.manual_seed(0)
    student = nn.Linear(3, 2)
    ema = EMATeacher(student, Cosine(0.9, 1.0))
    before = [p.clone() for p in ema.teacher.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    ctx = StepContext(step=1, total_steps=4)
    m = 1.0 - 0.1 * (math.cos(math.pi * 0.25) + 1) / 2
    ema.after_step(ctx)
    for t, t0, s in zip(ema.teacher.parameters(), before, student.parameters()):
        assert torch.allclose(t, m * t0 + (1 - m) * s)
    assert ema.last_momentum.item() == pytest.approx(m)
    assert Cosine(0.996, 1.0)(0.0) == pytest.approx(0.996) and Cosine(0.996, 1.0)(1.0) == pytest.approx(1.0)


def _tiny(name, overrides=None, backbone="convnet", size=16):
    from selfsup.registry import METHODS

    torch.manual_seed(0)
    bb = build_backbone(backbone, in_channels=3, width=0.25, image_size=size, cifar_stem=True)
    cfg = {**getattr(METHODS.get(name), "test_overrides", {}), **(overrides or {})}
    return build_method(name, bb, cfg)


def _views(method, size=16, n=8, **aug):
    from selfsup.config import AugmentConfig

    pipe = method.make_views(size, (0.5,) * 3, (0.25,) * 3, AugmentConfig(**aug))
    x = (torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    return pipe(x, torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name,teacher_attr", [("byol", "target"), ("dino", "teacher")])
def test_no_gradient_reaches_the_teacher(name, teacher_attr):
    m = _tiny(name)
    out = m(ViewBatch(_views(m, local_crops=2) if name == "dino" else _views(m)), StepContext(0, 10))
    out.loss.backward()
    teacher = getattr(m, teacher_attr).teacher
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None for p in m.backbone.parameters())
    # the teacher is no parameter of the optimizer's view of the method, and is in the state dict
    assert not any(p is q for p in m.parameters() if p.requires_grad for q in teacher.parameters())
    assert any(k.startswith(f"{teacher_attr}.teacher.") for k in m.state_dict())


def test_byol_without_bn_has_no_batchnorm_in_heads():
    with_bn, without = _tiny("byol"), _tiny("byol", {"bn_in_heads": False})
    assert any(isinstance(l, nn.BatchNorm1d) for l in with_bn.projector.modules())
    assert not any(isinstance(l, nn.BatchNorm1d) for h in (without.projector, without.predictor) for l in h.modules())


def test_dino_teacher_temperature_schedule_values():
    m = _tiny("dino", {"teacher_temp_start": 0.04, "teacher_temp": 0.07, "teacher_temp_warmup": 0.5})
    for progress, expected in [(0.0, 0.04), (0.25, 0.055), (0.5, 0.07), (0.9, 0.07)]:
        assert m.teacher_temp(progress) == pytest.approx(expected)
    vs = _views(m, local_crops=2)
    out = m(ViewBatch(vs), StepContext(step=25, total_steps=100))
    assert out.logs["teacher_temp"].item() == pytest.approx(0.055)


def test_dino_observes_teacher_means_and_center_moves_after_step():
    m = _tiny("dino", {"center_momentum": 0.9})
    vs = _views(m, local_crops=2)
    with torch.no_grad():
        t = m.teacher(torch.cat(vs[:2]))
    m(ViewBatch(vs), StepContext(0, 10))
    assert torch.allclose(m.center.pending, t.mean(0, keepdim=True), atol=1e-5)
    update_parts(m, StepContext(0, 10))
    assert torch.allclose(m.center.center, 0.1 * t.mean(0, keepdim=True), atol=1e-5)


def test_dino_last_layer_frozen_in_first_epoch_only():
    m = _tiny("dino", {"freeze_last_layer_epochs": 1})
    vs = _views(m, local_crops=2)
    m(ViewBatch(vs), StepContext(0, 10, epoch=0)).loss.backward()
    assert m.head.last_layer.weight.grad is None
    m.zero_grad()
    m(ViewBatch(vs), StepContext(5, 10, epoch=1)).loss.backward()
    assert m.head.last_layer.weight.grad is not None


def test_dino_runs_on_a_resnet_with_multicrop():
    m = _tiny("dino", backbone="resnet18")
    vs = _views(m, n=4, local_crops=2)
    assert [v.shape[-1] for v in vs] == [16, 16, 8, 8]
    out = m(ViewBatch(vs), StepContext(0, 10))
    assert torch.isfinite(out.loss) and out.embedding.shape == (4, m.backbone.num_features)


@pytest.mark.parametrize("name,key", [("byol", "momentum_base"), ("byol", "momentum_final"),
                                      ("dino", "momentum_base"), ("dino", "center_momentum")])
def test_momentum_outside_unit_interval_is_rejected(name, key):
    with pytest.raises(ValueError, match=f"method.{key} must be in \\[0, 1\\], got 1.5"):
        _tiny(name, {key: 1.5})


def test_bad_dino_temperatures_are_rejected():
    with pytest.raises(ValueError, match="method.student_temp must be > 0"):
        _tiny("dino", {"student_temp": 0.0})
    with pytest.raises(ConfigError, match="method.no_such"):
        _tiny("dino", {"no_such": 1})
