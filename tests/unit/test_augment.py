"""Batched augmentation ops against torchvision.transforms.v2.functional applied per image with the same parameters.

Known difference (documented in ``ops.resized_crop``): our crop samples the full image through one affine grid,
so output pixels whose sampling point falls outside the crop (the outermost ring when upsampling) read the
neighbouring image pixels, while torchvision clamps to the crop. Those pixels are excluded from the comparison;
everything else must match torchvision's ``resized_crop(..., antialias=False)``.
"""
from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from selfsup.augment import ops
from selfsup.augment.pipeline import MultiViewPipeline, ViewSpec, ViewTransform, eval_view
from selfsup.augment.presets import build_pipeline
from selfsup.config import AugmentConfig

ATOL = 1e-5


def images(b: int = 6, c: int = 3, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------ crop and flip
def _valid_mask(box, out: int) -> torch.Tensor:
    """Output pixels whose bilinear sampling point lies inside the crop (where both implementations agree)."""
    _, _, h, w = (int(v) for v in box)
    pos = torch.arange(out, dtype=torch.float64) + 0.5
    ys = pos * h / out - 0.5
    xs = pos * w / out - 0.5
    vy = (ys >= 0) & (ys <= h - 1)
    vx = (xs >= 0) & (xs <= w - 1)
    return vy[:, None] & vx[None, :]


@pytest.mark.parametrize("out", [8, 12, 24])  # down-, mixed and up-sampling
def test_resized_crop_matches_torchvision_inside_the_crop(out):
    x = images(b=8, h=20, w=24)
    boxes = ops.sample_resized_crop(8, 20, 24, (0.08, 1.0), (3 / 4, 4 / 3), gen(1), torch.device("cpu"))
    y = ops.resized_crop(x, boxes, out)
    assert y.shape == (8, 3, out, out) and y.dtype == torch.float32
    compared = 0
    for i in range(8):
        t, l, h, w = (int(v) for v in boxes[i])
        ref = TF.resized_crop(x[i], t, l, h, w, [out, out], antialias=False)
        m = _valid_mask(boxes[i], out)
        assert m.any()
        torch.testing.assert_close(y[i][:, m], ref[:, m], atol=ATOL, rtol=0)
        compared += int(m.sum())
    assert compared > 8 * out * out // 4  # the comparison is not vacuous


def test_resized_crop_with_flip_equals_hflip_of_the_crop():
    x = images(b=6)
    boxes = ops.sample_resized_crop(6, 16, 16, (0.3, 1.0), (3 / 4, 4 / 3), gen(2), torch.device("cpu"))
    flip = torch.tensor([True, False, True, False, True, True])
    y = ops.resized_crop(x, boxes, 10, flip)
    for i in range(6):
        t, l, h, w = (int(v) for v in boxes[i])
        ref = TF.resized_crop(x[i], t, l, h, w, [10, 10], antialias=False)
        m = _valid_mask(boxes[i], 10)
        if flip[i]:
            ref, m = TF.hflip(ref), m.flip(-1)
        torch.testing.assert_close(y[i][:, m], ref[:, m], atol=ATOL, rtol=0)


def test_full_image_crop_at_same_size_is_identity():
    x = images(b=3)
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0]]).expand(3, 4)
    torch.testing.assert_close(ops.resized_crop(x, boxes, 16), x, atol=ATOL, rtol=0)


def test_hflip_matches_torchvision_per_sample():
    x = images(b=5)
    mask = torch.tensor([True, False, False, True, True])
    y = ops.hflip(x, mask)
    for i in range(5):
        ref = TF.hflip(x[i]) if mask[i] else x[i]
        assert torch.equal(y[i], ref)


@pytest.mark.parametrize("h,w,scale,ratio", [(32, 32, (0.08, 1.0), (3 / 4, 4 / 3)), (16, 40, (0.9, 1.0), (3 / 4, 4 / 3)),
                                             (24, 20, (0.2, 0.5), (0.5, 2.0))])
def test_sample_resized_crop_respects_bounds(h, w, scale, ratio):
    n = 512
    boxes = ops.sample_resized_crop(n, h, w, scale, ratio, gen(3), torch.device("cpu"))
    assert boxes.shape == (n, 4)
    top, left, bh, bw = boxes.unbind(1)
    assert torch.equal(boxes, boxes.round())  # integer pixels
    assert (bh >= 1).all() and (bw >= 1).all()
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + bh <= h).all() and (left + bw <= w).all()
    # rounding moves each side by <= 0.5 px; fallback boxes (full-height/-width centre crops) also satisfy these
    fallback = (bh == min(h, round(w / ratio[0]))) & (bw == min(w, round(h * ratio[1])))
    area = h * w
    ok = ~fallback
    assert ((bw[ok] + 0.5) * (bh[ok] + 0.5) >= scale[0] * area - 1e-6).all()
    assert ((bw[ok] - 0.5) * (bh[ok] - 0.5) <= scale[1] * area + 1e-6).all()
    assert ((bw[ok] - 0.5) / (bh[ok] + 0.5) <= ratio[1] + 1e-6).all()
    assert ((bw[ok] + 0.5) / (bh[ok] - 0.5) >= ratio[0] - 1e-6).all()


@pytest.mark.parametrize("ratio", [(3 / 4, 4 / 3), (0.5, 0.8), (1.25, 2.5), (0.2, 0.3), (1.0, 1.0)])
def test_crop_fallback_matches_torchvision(ratio):
    """No draw fits (scale > 1: the target area exceeds the image), so every box is the fallback centred crop;
    it must be torchvision's RandomResizedCrop.get_params box exactly, offsets included ((size − crop) // 2)."""
    from torchvision.transforms import RandomResizedCrop

    for h in range(3, 26, 2):
        for w in (h - 1, h, h + 3, 2 * h + 1, max(3, h // 2)):
            boxes = ops.sample_resized_crop(4, h, w, (2.0, 3.0), ratio, gen(5), torch.device("cpu"))
            ref = RandomResizedCrop.get_params(torch.zeros(1, h, w), [2.0, 3.0], list(ratio))
            assert ref[2] >= 1 and ref[3] >= 1
            for b in boxes.tolist():
                assert tuple(int(v) for v in b) == ref, (h, w, ratio)


def test_crop_parameters_differ_per_sample():
    boxes = ops.sample_resized_crop(32, 32, 32, (0.08, 1.0), (3 / 4, 4 / 3), gen(4), torch.device("cpu"))
    assert len({tuple(b.tolist()) for b in boxes}) > 16
    flips = ops.bernoulli(64, 0.5, gen(4), torch.device("cpu"))
    assert flips.any() and not flips.all()


# ------------------------------------------------------------------------------------------------ colour
@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation", "hue"])
def test_colour_ops_match_torchvision(name, c):
    x = images(b=6, c=c)
    if name == "hue":
        f = torch.tensor([-0.5, -0.3, -0.05, 0.0, 0.2, 0.45])
    else:
        f = torch.tensor([0.0, 0.3, 0.8, 1.0, 1.4, 2.0])
    ours = getattr(ops, f"adjust_{name}")(x, f)
    tv = getattr(TF, f"adjust_{name}")
    assert ours.shape == x.shape
    for i in range(6):
        torch.testing.assert_close(ours[i], tv(x[i], float(f[i])), atol=ATOL, rtol=0)
    assert ours.min() >= 0 and ours.max() <= 1


def test_hue_on_saturated_and_gray_pixels():
    """Corner cases of the HSV conversion: pure primaries, black, white, gray, and ties between channels."""
    px = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5], [1, 1, 0], [0, 1, 1],
                       [1, 0, 1], [0.2, 0.2, 0.7]], dtype=torch.float32)
    x = px.T.reshape(1, 3, 2, 5).repeat(4, 1, 1, 1)
    f = torch.tensor([-0.25, 0.1, 1 / 3, 0.5])
    ours = ops.adjust_hue(x, f)
    for i in range(4):
        torch.testing.assert_close(ours[i], TF.adjust_hue(x[i], float(f[i])), atol=ATOL, rtol=0)


def test_grayscale_matches_torchvision():
    x = images(b=4)
    g = ops.rgb_to_grayscale(x)
    assert g.shape == (4, 1, 16, 16)
    for i in range(4):
        torch.testing.assert_close(g[i], TF.rgb_to_grayscale(x[i]), atol=ATOL, rtol=0)
    mask = torch.tensor([True, False, True, False])
    y = ops.random_grayscale(x, mask)
    assert y.shape == x.shape
    for i in range(4):
        ref = TF.rgb_to_grayscale(x[i], num_output_channels=3) if mask[i] else x[i]
        torch.testing.assert_close(y[i], ref, atol=ATOL, rtol=0)
    one = images(b=2, c=1)
    assert torch.equal(ops.random_grayscale(one, torch.tensor([True, True])), one)
    assert torch.equal(ops.rgb_to_grayscale(one), one)


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("kernel", [3, 5])
def test_gaussian_blur_per_sample_sigma_matches_torchvision(kernel, c):
    x = images(b=5, c=c)
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.7, 2.0])
    y = ops.gaussian_blur(x, sigma, kernel)
    assert y.shape == x.shape
    for i in range(5):
        ref = TF.gaussian_blur(x[i], [kernel, kernel], [float(sigma[i]), float(sigma[i])])
        torch.testing.assert_close(y[i], ref, atol=ATOL, rtol=0)
    assert not torch.allclose(y[1], x[1])  # it does blur


def test_solarize_matches_torchvision():
    x = images(b=4)
    mask = torch.tensor([True, False, True, True])
    y = ops.solarize(x, mask, 0.5)
    for i in range(4):
        ref = TF.solarize(x[i], 0.5) if mask[i] else x[i]
        torch.testing.assert_close(y[i], ref, atol=0, rtol=0)


def test_normalize_matches_torchvision():
    x = images(b=3)
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.25, 0.3])
    y = ops.normalize(x, mean, std)
    for i in range(3):
        torch.testing.assert_close(y[i], TF.normalize(x[i], mean.tolist(), std.tolist()), atol=ATOL, rtol=0)


_TV_JITTER = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)


@pytest.mark.parametrize("c", [1, 3])
def test_color_jitter_applies_each_samples_own_order(c):
    n = 24
    x = images(b=n, c=c)
    factors, order = ops.sample_color_jitter(n, 0.8, 0.8, 0.8, 0.2, gen(5), torch.device("cpu"))
    apply = ops.bernoulli(n, 0.8, gen(6), torch.device("cpu"))
    apply[0], apply[1] = False, True
    y = ops.color_jitter(x, factors, order, apply)
    assert len({tuple(o.tolist()) for o in order}) > 4  # orders really differ per sample
    for i in range(n):
        ref = x[i]
        if apply[i]:
            for op_id in order[i].tolist():
                ref = _TV_JITTER[op_id](ref, float(factors[i, op_id]))
        torch.testing.assert_close(y[i], ref, atol=1e-4, rtol=0)
    assert torch.equal(y[0], x[0])
    assert torch.equal(x, images(b=n, c=c))  # input untouched


def test_order_matters_so_the_test_above_is_meaningful():
    x = images(b=1)
    f = torch.tensor([[1.6, 0.4, 1.5, 0.1]])
    a = ops.color_jitter(x, f, torch.tensor([[0, 1, 2, 3]]))
    b = ops.color_jitter(x, f, torch.tensor([[3, 2, 1, 0]]))
    assert not torch.allclose(a, b, atol=1e-3)


def test_jitter_factors_differ_per_sample_and_respect_ranges():
    f, order = ops.sample_color_jitter(64, 0.4, 0.3, 0.2, 0.1, gen(7), torch.device("cpu"))
    assert f.shape == (64, 4) and order.shape == (64, 4)
    for j, (lo, hi) in enumerate([(0.6, 1.4), (0.7, 1.3), (0.8, 1.2), (-0.1, 0.1)]):
        assert (f[:, j] >= lo).all() and (f[:, j] <= hi).all()
        assert f[:, j].unique().numel() == 64
    assert torch.equal(order.sort(dim=1).values, torch.arange(4).expand(64, 4))  # permutations


# ------------------------------------------------------------------------------------------------ pipelines
MEAN3, STD3 = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def uint8_images(b=8, c=3, size=16, seed=0) -> torch.Tensor:
    return (images(b, c, size, size, seed) * 255).round().to(torch.uint8)


def test_pipeline_is_reproducible_with_a_seeded_generator():
    spec = ViewSpec(size=12, blur_p=0.5, solarize_p=0.3)
    pipe = MultiViewPipeline([spec, spec], MEAN3, STD3)
    x = uint8_images()
    a = pipe(x, gen(11))
    b = pipe(x, gen(11))
    c = pipe(x, gen(12))
    for va, vb in zip(a, b):
        assert torch.equal(va, vb)
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], a[1])  # the two views differ


def test_views_differ_per_sample_in_a_batch():
    """The same image repeated across a batch gets different views (per-sample parameters)."""
    x = uint8_images(b=1).expand(8, -1, -1, -1).contiguous()
    (v,) = MultiViewPipeline([ViewSpec(size=12)], MEAN3, STD3)(x, gen(13))
    distinct = {tuple(v[i].flatten()[:50].tolist()) for i in range(8)}
    assert len(distinct) == 8


@pytest.mark.parametrize("c", [1, 3])
def test_pipeline_shapes_dtypes_and_ranges(c):
    mean, std = MEAN3[:c], STD3[:c]
    specs = [ViewSpec(size=16, blur_p=1.0, solarize_p=0.5), ViewSpec(size=8, crop_scale=(0.05, 0.3))]
    pipe = MultiViewPipeline(specs, mean, std)
    assert pipe.n_views == 2
    x = uint8_images(b=6, c=c, size=20)
    views = pipe(x, gen(14))
    assert [tuple(v.shape) for v in views] == [(6, c, 16, 16), (6, c, 8, 8)]
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    for v in views:
        assert v.dtype == torch.float32 and torch.isfinite(v).all()
        raw = v * s + m
        assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    # float input in [0, 1] is accepted as well as uint8
    vf = pipe(x.float() / 255, gen(14))
    for a, b in zip(views, vf):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_eval_view_only_normalises():
    x = uint8_images(b=2)
    y = eval_view(16, MEAN3, STD3)(x)
    ref = TF.normalize(x.float() / 255, list(MEAN3), list(STD3))
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=0)


def test_multiview_needs_a_view():
    with pytest.raises(ValueError, match="at least one view"):
        MultiViewPipeline([], MEAN3, STD3)


def test_simclr_preset_blur_off_at_32_and_on_at_64():
    p32 = build_pipeline(AugmentConfig(), "simclr", 32, MEAN3, STD3)
    p64 = build_pipeline(AugmentConfig(), "simclr", 64, MEAN3, STD3)
    assert p32.n_views == 2 and p64.n_views == 2
    assert all(s.blur_p == 0.0 for s in p32.specs)
    assert all(s.blur_p == 0.5 and s.kernel_size() >= 3 and s.kernel_size() % 2 == 1 for s in p64.specs)
    # an explicit setting wins over the size rule
    assert build_pipeline(AugmentConfig(blur_p=0.3), "simclr", 32, MEAN3, STD3).specs[0].blur_p == 0.3
    s = p32.specs[0]
    assert s.crop_scale == (0.08, 1.0) and s.jitter_p == 0.8 and s.grayscale_p == 0.2 and s.flip_p == 0.5
    assert s.jitter == pytest.approx((0.4, 0.4, 0.4, 0.1))


def test_view_transform_without_crop_keeps_the_image():
    t = ViewTransform(ViewSpec(size=16, crop=False, flip_p=0.0, jitter_p=0.0, grayscale_p=0.0), MEAN3, STD3)
    x = uint8_images(b=2)
    torch.testing.assert_close(t(x, gen(0)), TF.normalize(x.float() / 255, list(MEAN3), list(STD3)),
                               atol=1e-5, rtol=0)
    assert math.isclose(ViewSpec(size=64).kernel_size(), 7)
