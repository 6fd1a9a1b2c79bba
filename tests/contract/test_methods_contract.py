"""Contract and learning tests generated from the method registry: a registered method is a tested method.

Methods may set ``test_overrides`` (dict of config keys) and ``test_backbone`` to fit these tiny settings.
"""
from __future__ import annotations

import pytest
import torch
from conftest import make_blobs

from selfsup.backbones import build_backbone
from selfsup.components.base import StepContext, update_parts
from selfsup.methods.base import MethodOutput, ViewBatch, build_method
from selfsup.registry import METHODS

NAMES = METHODS.names()


def _build(name: str, data, seed: int = 0):
    cls = METHODS.get(name)
    torch.manual_seed(seed)
    backbone = build_backbone(getattr(cls, "test_backbone", "convnet"),
                              in_channels=cls.backbone_in_channels(data.channels), width=0.25,
                              image_size=data.image_size[0])
    method = build_method(name, backbone, dict(getattr(cls, "test_overrides", {})), num_train=data.train.num_images)
    views = method.make_views(data.image_size[0], data.mean, data.std)
    return method, views


@pytest.mark.parametrize("name", NAMES)
def test_forward_returns_typed_output(name):
    data = make_blobs(n=32, size=16)
    method, views = _build(name, data)
    x, idx, y = next(data.train.batches(16, shuffle=False))
    out = method(ViewBatch(views(x, torch.Generator().manual_seed(0)), idx, y), StepContext(0, 10))
    assert isinstance(out, MethodOutput)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert any(p.grad is not None for p in method.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", NAMES)
def test_few_steps_lower_the_loss(name):
    """Same fixed batch and views, a few optimizer steps: the loss goes down."""
    data = make_blobs(n=32, size=16)
    method, views = _build(name, data)
    x, idx, y = next(data.train.batches(32, shuffle=False))
    vs = views(x, torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    steps = int(getattr(METHODS.get(name), "test_steps", 15))
    for s in range(steps):
        ctx = StepContext(s, steps)
        out = method(ViewBatch(vs, idx, y), ctx)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        update_parts(method, ctx)
        losses.append(float(out.loss.detach()))
    assert min(losses[-3:]) < losses[0], losses


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name):
    """Everything a method holds (weights and shared parts) is in its state_dict and restores exactly."""
    data = make_blobs(n=32, size=16)
    a, views = _build(name, data, seed=0)
    x, idx, y = next(data.train.batches(16, shuffle=False))
    vs = views(x, torch.Generator().manual_seed(0))
    a(ViewBatch(vs, idx, y), StepContext(0, 10))
    update_parts(a, StepContext(0, 10))
    b, _ = _build(name, data, seed=1)
    b.load_state_dict(a.state_dict())
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), k


@pytest.mark.parametrize("name", NAMES)
def test_method_config_rejects_unknown_keys(name):
    from selfsup.config import ConfigError

    backbone = build_backbone("convnet", in_channels=3, width=0.25)
    with pytest.raises(ConfigError, match="no_such_key"):
        build_method(name, backbone, {"no_such_key": 1})
