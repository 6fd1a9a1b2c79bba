"""Whole-image crops (data.full_image): per-sample crop extents, whole-image decoding, canvas batches, a run."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from selfsup.augment import ops
from selfsup.augment.pipeline import MultiViewPipeline, ViewSpec
from selfsup.config import build_run_config
from selfsup.data import DataError, load_dataset
from selfsup.data import folder as folder_mod
from selfsup.data.canvas import Canvas, CanvasSpec, collate_canvas, decode_whole, whole_array
from selfsup.errors import ConfigError

CPU = torch.device("cpu")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------------- crops
@pytest.mark.parametrize("scale,ratio", [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.9, 1.0), (0.2, 0.3)), ((2.0, 3.0), (1.0, 1.0))])
def test_per_sample_sizes_give_each_row_the_box_of_its_own_size(scale, ratio):
    """Row i of a mixed-size call equals row i of a call where every image has row i's size (same draws), so
    whole images get torchvision's RandomResizedCrop distribution on their own shape."""
    hs = torch.tensor([12, 16, 9, 16, 5, 30])
    ws = torch.tensor([16, 12, 16, 16, 40, 7])
    mixed = ops.sample_resized_crop(6, hs, ws, scale, ratio, gen(3), CPU)
    for i in range(6):
        alone = ops.sample_resized_crop(6, int(hs[i]), int(ws[i]), scale, ratio, gen(3), CPU)
        assert torch.equal(mixed[i], alone[i]), i
    top, left, h, w = mixed.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert (top + h <= hs).all() and (left + w <= ws).all()


def test_scalar_sizes_are_unchanged_by_the_per_sample_form():
    a = ops.sample_resized_crop(16, 20, 24, (0.08, 1.0), (3 / 4, 4 / 3), gen(1), CPU)
    b = ops.sample_resized_crop(16, torch.full((16,), 20), torch.full((16,), 24), (0.08, 1.0), (3 / 4, 4 / 3),
                                gen(1), CPU)
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------------- decoding
def _image(w: int, h: int, seed: int = 0):
    from PIL import Image

    g = np.random.default_rng(seed)
    return Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize("w,h,want", [(40, 30, (12, 16)), (30, 40, (16, 12)), (60, 30, (12, 16)), (20, 20, (12, 12))])
def test_whole_array_keeps_the_image_up_to_the_canvas_aspect(w, h, want):
    spec = CanvasSpec.for_size(12)  # short 12, canvas 16 (4:3)
    assert (spec.short, spec.long) == (12, 16)
    arr, eh, ew = whole_array(_image(w, h), spec, 3)
    assert arr.shape == (3, 16, 16) and arr.dtype == np.uint8
    assert (eh, ew) == want
    assert not arr[:, eh:, :].any() and not arr[:, :, ew:].any()  # zero outside the extent


def test_whole_array_of_a_4_3_image_is_its_plain_resize():
    from PIL import Image

    im = _image(40, 30, seed=2)
    arr, eh, ew = whole_array(im, CanvasSpec(12, 16), 3)
    ref = np.asarray(im.resize((16, 12), Image.Resampling.BILINEAR, reducing_gap=None)).transpose(2, 0, 1)
    assert np.array_equal(arr[:, :eh, :ew], ref)


def test_decode_whole_reads_a_jpeg_at_reduced_scale(tmp_path):
    p = tmp_path / "big.jpg"
    _image(400, 300).save(p, quality=90)
    arr, eh, ew = decode_whole(p, CanvasSpec(24, 32), 3)
    assert (eh, ew) == (24, 32) and arr.shape == (3, 32, 32)


def test_decode_whole_refuses_a_corrupt_file(tmp_path):
    p = tmp_path / "bad.png"
    p.write_bytes(b"not an image")
    with pytest.raises(folder_mod.BadImage):
        decode_whole(p, CanvasSpec(8, 10), 3)


# ----------------------------------------------------------------------------------------------------- batches
def _canvas(n: int = 4, side: int = 20, seed: int = 0) -> Canvas:
    g = gen(seed)
    px = torch.randint(0, 256, (n, 3, side, side), generator=g, dtype=torch.uint8)
    return Canvas(px, torch.full((n, 2), side, dtype=torch.int64))


def test_a_full_canvas_gives_the_views_of_the_plain_batch():
    spec = ViewSpec(size=12, blur_p=0.0)
    pipe = MultiViewPipeline([spec, spec], (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    c = _canvas()
    plain = pipe(c.pixels, gen(7))
    whole = pipe(c, gen(7))
    for a, b in zip(plain, whole):
        assert torch.equal(a, b)


def test_canvas_views_come_from_inside_each_extent():
    """Pixels outside an image's extent are a sentinel value: no view may see it."""
    spec = ViewSpec(size=8, crop_scale=(0.08, 1.0), jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, flip_p=0.5)
    pipe = MultiViewPipeline([spec] * 3, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), record_boxes=True)
    px = torch.full((4, 3, 24, 24), 255, dtype=torch.uint8)
    extent = torch.tensor([[24, 18], [18, 24], [12, 24], [24, 24]])
    for i, (h, w) in enumerate(extent.tolist()):
        px[i, :, :h, :w] = 100
    views = pipe(Canvas(px, extent), gen(5))
    for v, boxes in zip(views, views.boxes):
        # bilinear sampling at a box's border may touch the neighbouring row or column: check the interior
        top, left, bh, bw, _ = boxes.unbind(1)
        assert (top >= 0).all() and (left >= 0).all() and (top + bh <= 1 + 1e-6).all() and (left + bw <= 1 + 1e-6).all()
        centre = v[:, :, 2:-2, 2:-2]
        assert torch.allclose(centre, torch.full_like(centre, 100 / 255)), "a view's interior left the image"


def test_canvas_moves_and_slices_like_a_tensor():
    c = _canvas(6)
    part = c[1:3]
    assert isinstance(part, Canvas) and part.shape == (2, 3, 20, 20) and part.extent.shape == (2, 2)
    assert c.to(CPU, non_blocking=True).shape == c.shape and len(c) == 6 and c.dtype == torch.uint8
    x, idx, bad = collate_canvas([((np.zeros((3, 4, 4), np.uint8), 3, 4), 0), (None, 1), ((np.ones((3, 4, 4), np.uint8), 4, 2), 2)])
    assert bad == 1 and idx.tolist() == [0, 2] and x.extent.tolist() == [[3, 4], [4, 2]]


def save_png(path, size, seed=0):
    from PIL import Image

    g = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(g.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB").save(path)


def _folder(root, sizes):
    for i, (w, h) in enumerate(sizes):
        save_png(root / ("a" if i % 2 else "b") / f"{i}.png", size=(w, h), seed=i)
    return root


def test_full_image_folder_streams_canvases_for_training_and_squares_for_evaluation(tmp_path):
    root = _folder(tmp_path / "imgs", [(24, 18), (18, 24), (20, 20), (40, 20), (16, 12), (12, 16)])
    ds = load_dataset(str(root), 8, full_image=1.5)
    square = load_dataset(str(root), 8)
    split = ds.train
    assert isinstance(split, folder_mod.StreamingFolderSplit) and split.canvas == CanvasSpec(12, 16)
    split.workers = 0  # in-process
    x = torch.cat([b[0] for b in split.batches(3, shuffle=False)])
    assert torch.equal(x, square.train.images)  # evaluation: the centred squares, as without full_image
    batches = list(split.batches(3, shuffle=False, canvas=True))
    assert all(isinstance(b[0], Canvas) for b in batches)
    ext = torch.cat([b[0].extent for b in batches]).tolist()
    want = {"24x18": [12, 16], "18x24": [16, 12], "20x20": [12, 12], "40x20": [12, 16], "16x12": [12, 16],
            "12x16": [16, 12]}
    from PIL import Image

    sizes = []
    for p in split.paths:
        with Image.open(p) as im:
            sizes.append(f"{im.size[0]}x{im.size[1]}")
    assert ext == [want[s] for s in sizes]


def test_full_image_refuses_in_memory_data(tmp_path, blobs_npz):
    with pytest.raises(DataError, match="full_image applies to image folders"):
        load_dataset(str(blobs_npz), full_image=1.0)


def _raw(method: str, root, **data) -> dict:
    return {"method": {"name": method}, "backbone": {"name": "convnet", "width": 0.25},
            "data": {"path": str(root), "image_size": 12, "full_image": True, **data},
            "train": {"epochs": 1, "batch_size": 4, "device": "cpu", "log_every": 1},
            "optim": {"warmup_epochs": 0.5}}


def test_a_run_pretrains_on_whole_images(tmp_path):
    from selfsup.engine.trainer import pretrain

    root = _folder(tmp_path / "imgs", [(24, 18), (18, 24), (20, 20), (40, 20), (16, 12), (12, 16), (30, 20), (20, 30)])
    cfg = build_run_config(_raw("simclr", root))
    res = pretrain(cfg, tmp_path / "run", quiet=True)
    assert res.steps == 2 and math.isfinite(res.final_loss)


def test_a_pretext_method_pretrains_on_whole_images(tmp_path):
    """Pretext tasks build their inputs from cropped views too (rotation rotates its crop)."""
    from selfsup.engine.trainer import pretrain

    root = _folder(tmp_path / "imgs", [(24, 18), (18, 24), (20, 20), (40, 20)])
    res = pretrain(build_run_config(_raw("rotation", root)), tmp_path / "run", quiet=True)
    assert res.steps == 1 and math.isfinite(res.final_loss)


def test_full_image_scale_is_checked():
    with pytest.raises(ConfigError, match="full_image_scale"):
        build_run_config({"data": {"full_image_scale": 0.5}})
