"""data.decode=device: shard members decoded where the model runs (torchvision.io.decode_jpeg, batched), checked
on the CPU: the same images as the workers' PIL decode (to a few grey levels), PNGs exact, corrupt members
skipped with their index, and a run that trains on it."""
from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.config import build_run_config
from selfsup.data import load_dataset
from selfsup.data.device_decode import decode_batch, is_jpeg, square_resize
from selfsup.data.folder import decode_bytes
from selfsup.data.shard_write import write_shards
from selfsup.engine.feed import device_split

CPU = torch.device("cpu")


def smooth(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A smooth colour image (JPEG's artefacts on noise would hide the comparison)."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = g.uniform(0, 255, 3)
    img = base + 60 * np.stack([np.sin(xx / 5 + k) * np.cos(yy / 7 - k) for k in range(3)], -1)
    return img.clip(0, 255).astype(np.uint8)


def encoded(arr: np.ndarray, fmt: str) -> torch.Tensor:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def test_square_resize_is_the_centred_square():
    img = torch.arange(3 * 4 * 6, dtype=torch.uint8).view(3, 4, 6)
    assert torch.equal(square_resize(img, 4), img[:, :, 1:5])
    assert square_resize(img, 2).shape == (3, 2, 2)


def test_a_batch_decodes_like_the_workers():
    arrs = [smooth(40, 30, 0), smooth(24, 36, 1), smooth(32, 32, 2)]
    enc = [encoded(arrs[0], "JPEG"), encoded(arrs[1], "JPEG"), encoded(arrs[2], "PNG")]
    assert [is_jpeg(e) for e in enc] == [True, True, False]
    x, bad = decode_batch(enc, 16, 3, CPU)
    assert bad == [] and x.shape == (3, 3, 16, 16) and x.dtype == torch.uint8
    ref = [torch.from_numpy(decode_bytes(bytes(e.numpy()), 16, 3)) for e in enc]
    assert torch.equal(x[2], ref[2])  # not a JPEG: PIL, as in the workers
    for i in range(2):  # another decoder and resampler: within a few grey levels on a smooth image
        assert (x[i].float() - ref[i].float()).abs().mean() < 4.0, i


def test_corrupt_members_are_left_out_by_position():
    good = encoded(smooth(20, 20), "JPEG")
    broken = good.clone()
    broken[40:] = 0  # a JPEG header, then zeros
    x, bad = decode_batch([good, broken, torch.tensor([1, 2, 3], dtype=torch.uint8), good], 8, 3, CPU)
    assert bad == [1, 2] and x.shape == (2, 3, 8, 8)
    x, bad = decode_batch([torch.tensor([0], dtype=torch.uint8)], 8, 3, CPU)
    assert x is None and bad == [0]


def _shards(tmp_path, n=8):
    root = tmp_path / "photos"
    for i in range(n):
        p = root / ("a" if i % 2 else "b") / f"{i}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(smooth(20 + i, 24, i)).save(p, quality=95)
    write_shards(root, tmp_path / "shards", images_per_shard=4)
    return tmp_path / "shards"


def test_a_shard_split_decoding_on_the_device_gives_the_same_batches(tmp_path):
    split = load_dataset(str(_shards(tmp_path)), 16).train
    split.workers = 0
    on_device = device_split(split, CPU, decode="device")
    assert on_device.decode_device == CPU and split.decode_device is None  # a copy; evaluation keeps its split
    assert device_split(split, CPU, decode="auto") is split  # auto: on the device only when it is a GPU
    a = list(split.batches(3, shuffle=True, generator=torch.Generator().manual_seed(0)))
    b = list(on_device.batches(3, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert [t[1].tolist() for t in a] == [t[1].tolist() for t in b]
    assert [t[2].tolist() for t in a] == [t[2].tolist() for t in b]
    for (xa, _, _), (xb, _, _) in zip(a, b):
        assert xa.shape == xb.shape and (xa.float() - xb.float()).abs().mean() < 4.0


def test_a_run_trains_with_device_decoding(tmp_path):
    from selfsup.engine.trainer import pretrain

    raw = {"method": {"name": "simclr", "proj_hidden_dim": 32, "proj_dim": 16},
           "backbone": {"name": "convnet", "width": 0.25},
           "data": {"path": str(_shards(tmp_path)), "image_size": 16, "decode": "device"},
           "train": {"epochs": 1, "batch_size": 4, "device": "cpu", "log_every": 1}, "optim": {"warmup_epochs": 0.5}}
    res = pretrain(build_run_config(raw), tmp_path / "run", quiet=True)
    assert res.steps == 2 and math.isfinite(res.final_loss)
    with pytest.raises(Exception, match="data.decode"):
        build_run_config({**raw, "data": {**raw["data"], "decode": "gpu"}})
    assert dataclasses.is_dataclass(build_run_config(raw).data)
