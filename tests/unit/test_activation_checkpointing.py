"""Activation checkpointing of ViT blocks (``train.activation_checkpointing``, backbones/vit.py ``Block``): the same
loss and gradients as without it (float64, to 1e-12), the blocks really recompute in backward, and only in
training with gradients; the engine's switch reaches the student and the momentum teacher."""
from __future__ import annotations

import pytest
import torch

from selfsup.backbones import build_backbone
from selfsup.backbones.vit import Block, ViT
from selfsup.config import ConfigError
from selfsup.engine.fsdp import set_activation_checkpointing
from selfsup.methods.base import build_method


def _vit(checkpointed: bool) -> ViT:
    torch.manual_seed(0)
    vit = ViT(image_size=16, patch_size=4, in_channels=3, dim=32, depth=2, heads=2).double()
    vit.set_activation_checkpointing(checkpointed)
    return vit


def _images() -> torch.Tensor:
    return torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _attention_calls(vit: ViT) -> list[int]:
    """A counter of the blocks' attention forwards (the recomputation in backward runs them again)."""
    calls = [0]

    def count(*_):
        calls[0] += 1

    for blk in vit.blocks:
        assert isinstance(blk, Block)
        blk.attn.register_forward_hook(count)
    return calls


def _loss_and_grads(vit: ViT, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    vit.train()
    loss = vit(x).square().sum() + vit.forward_stages(x)["block1"].square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in vit.named_parameters() if p.grad is not None}


def test_checkpointed_blocks_give_the_same_loss_and_gradients():
    x = _images()
    loss0, grads0 = _loss_and_grads(_vit(False), x)
    loss1, grads1 = _loss_and_grads(_vit(True), x)
    torch.testing.assert_close(loss1, loss0, rtol=0, atol=1e-12)
    assert grads1.keys() == grads0.keys() and len(grads0) == len(list(_vit(False).parameters()))
    for k, g in grads0.items():
        torch.testing.assert_close(grads1[k], g, rtol=1e-12, atol=1e-12, msg=k)


def test_checkpointed_blocks_recompute_in_backward():
    x = _images()
    for on, after_backward in ((False, 2), (True, 4)):  # 2 blocks: one forward each, and again if recomputed
        vit = _vit(on)
        calls = _attention_calls(vit)
        vit.train()
        loss = vit(x).square().sum()
        assert calls[0] == 2
        loss.backward()
        assert calls[0] == after_backward, f"checkpointing {on}: {calls[0]} attention forwards"


def test_no_recomputation_in_eval_or_without_gradients():
    x = _images()
    vit = _vit(True)
    calls = _attention_calls(vit)
    vit.eval()  # evaluation with gradients (e.g. a saliency map): activations are kept
    vit(x).square().sum().backward()
    assert calls[0] == 2
    vit.train()
    with torch.no_grad():  # a momentum teacher's forward
        vit(x)
    assert calls[0] == 4


def test_the_engine_switch_reaches_the_student_and_the_momentum_teacher():
    torch.manual_seed(0)
    backbone = build_backbone("vit-test", in_channels=3, width=0.25, image_size=16)
    method = build_method("byol", backbone, {"proj_hidden_dim": 64, "proj_dim": 32, "pred_hidden_dim": 64})
    assert set_activation_checkpointing(method, "vit-test") == 2  # the online ViT and the target's copy
    blocks = [m for m in method.modules() if isinstance(m, Block)]
    assert len(blocks) == 4 and all(b.checkpointed for b in blocks)


def test_a_backbone_without_it_is_a_one_line_error():
    torch.manual_seed(0)
    method = build_method("simclr", build_backbone("convnet", width=0.25, image_size=16))
    with pytest.raises(ConfigError, match="train.activation_checkpointing: backbone 'convnet'") as e:
        set_activation_checkpointing(method, "convnet")
    assert "\n" not in str(e.value)
