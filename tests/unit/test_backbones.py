"""Backbones: the protocol (pooled features, named stages), width, CIFAR stem, channels, torchvision-compatible names."""
from __future__ import annotations

import pytest
import torch

from selfsup.backbones import build_backbone
from selfsup.registry import UnknownNameError

CASES = [("resnet18", 0.25, 128), ("resnet34", 0.25, 128), ("resnet50", 0.25, 512), ("convnet", 0.25, 32),
         ("resnet18", 0.5, 256), ("convnet", 1.0, 128)]


@pytest.mark.parametrize("name,width,features", CASES)
def test_pooled_features_and_stages(name, width, features):
    torch.manual_seed(0)
    bb = build_backbone(name, width=width).eval()
    assert bb.num_features == features
    x = torch.randn(2, 3, 16, 16)
    stages = bb.forward_stages(x)
    assert list(stages) == [*bb.stage_names, "pooled"]
    assert stages["pooled"].shape == (2, features)
    last = stages[bb.stage_names[-1]]
    assert last.ndim == 4 and last.shape[1] == features
    torch.testing.assert_close(bb(x), stages["pooled"])
    torch.testing.assert_close(stages["pooled"], last.mean(dim=(2, 3)))


def test_width_multiplier_changes_features_and_parameters():
    small, big = build_backbone("resnet18", width=0.25), build_backbone("resnet18", width=0.5)
    assert (small.num_features, big.num_features) == (128, 256)
    assert sum(p.numel() for p in big.parameters()) > 3 * sum(p.numel() for p in small.parameters())


def test_cifar_stem_keeps_resolution():
    x = torch.randn(2, 3, 32, 32)
    cifar = build_backbone("resnet18", width=0.25, cifar_stem=True).eval().forward_stages(x)
    imagenet = build_backbone("resnet18", width=0.25, cifar_stem=False).eval().forward_stages(x)
    assert cifar["stem"].shape[-2:] == (32, 32) and imagenet["stem"].shape[-2:] == (8, 8)
    assert cifar["layer4"].shape[-2:] == (4, 4) and imagenet["layer4"].shape[-2:] == (1, 1)
    assert build_backbone("resnet18", width=0.25, cifar_stem=True).conv1.kernel_size == (3, 3)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "convnet"])
def test_one_channel_input_and_wrong_channel_count(name):
    bb = build_backbone(name, in_channels=1, width=0.25).eval()
    assert bb.in_channels == 1
    assert bb(torch.randn(2, 1, 16, 16)).shape == (2, bb.num_features)
    with pytest.raises(ValueError, match=r"expects images \(B, 1, H, W\), got \(2, 3, 16, 16\)"):
        bb(torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"expects images"):
        bb.forward_stages(torch.randn(3, 16, 16))


def test_unknown_backbone_and_bad_width():
    with pytest.raises(UnknownNameError, match="unknown backbone 'vgg'; known: .*convnet.*resnet18"):
        build_backbone("vgg")
    with pytest.raises(ValueError, match="backbone.width must be > 0"):
        build_backbone("resnet18", width=0)


def test_state_dict_loads_into_torchvision_resnet18():
    torchvision = pytest.importorskip("torchvision")
    ours = build_backbone("resnet18", width=1.0).eval()
    tv = torchvision.models.resnet18(weights=None).eval()
    theirs = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    mine = ours.state_dict()
    assert list(mine) == list(theirs)
    assert all(mine[k].shape == theirs[k].shape for k in mine)
    missing, unexpected = tv.load_state_dict(mine, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
    tv.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(tv(x), ours(x), atol=1e-4, rtol=1e-4)


def test_zero_init_residual_makes_blocks_start_as_identity():
    bb = build_backbone("resnet18", width=0.25)
    assert all(not b.bn2.weight.detach().any() for layer in (bb.layer1, bb.layer4) for b in layer)
