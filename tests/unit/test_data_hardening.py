"""Data loading under hostile input: costs bounded by the real work, no silent corruption in folders, labels bounded.

Every bad file is generated here (a few bytes to a few KB); each case gets a one-line DataError naming the file
and key, or a counted warning.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

from selfsup.data import DataError, load_dataset
from selfsup.data import folder as folder_mod
from selfsup.data.npz import MAX_CLASSES, load_npz


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def save(path, arr, mode=None, fmt=None):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path, fmt)
    return path


def rgb(seed=0, size=(10, 12)):
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def solid(value, size=(8, 8), c=3):
    return np.full((*size, c), value, np.uint8) if c == 3 else np.full(size, value, np.uint8)


# ----------------------------------------------------------------------------------------- cost bounded by the work
@pytest.mark.parametrize("w,h", [(200_000, 1), (100_000, 2), (1, 50_000)])
def test_elongated_image_is_refused_from_its_header(tmp_path, w, h):
    """A ~100-byte strip PNG used to be resized to 64 px on its short side: gigabytes for one file."""
    from PIL import Image

    root = tmp_path / "strip"
    for i in range(2):
        save(root / f"good{i}.png", rgb(i))
    Image.new("RGB", (w, h), (200, 10, 10)).save(root / "strip.png")
    assert (root / "strip.png").stat().st_size < 2000
    with pytest.warns(UserWarning, match=r"skipped 1 of 3 unreadable images \(first: strip\.png: .*aspect-ratio"):
        ds = load_dataset(str(root), image_size=8)
    assert ds.train.num_images == 2


def test_elongated_but_reasonable_image_decodes_its_centre(tmp_path):
    """A 30:1 image is kept; only the centred square is resampled (left/right thirds never reach the output)."""
    arr = np.zeros((10, 300, 3), np.uint8)
    arr[:, 140:160] = (10, 100, 200)
    p = save(tmp_path / "wide.png", arr)
    out = folder_mod.decode_image(p, 10, 3)
    assert out.shape == (3, 10, 10)
    assert out[:, :, 2:8].reshape(3, -1).tolist() == [[10] * 60, [100] * 60, [200] * 60]


def test_jpeg_decodes_at_a_reduced_dct_scale(tmp_path, monkeypatch):
    """A 512x256 JPEG decoded at 16 px uses ``draft`` (1/8 scale): the pixel guard sees 64x32, not 512x256."""
    p = save(tmp_path / "big.jpg", solid(90, size=(256, 512)), fmt="JPEG")
    monkeypatch.setattr(folder_mod, "MAX_PIXELS", 100_000)  # under the full 131,072 pixels
    with pytest.raises(folder_mod.BadImage, match="exceeds"):
        folder_mod.decode_image(p, 256, 3)  # no reduction possible at 256 px: refused
    out = folder_mod.decode_image(p, 16, 3)
    assert out.shape == (3, 16, 16) and abs(int(out.astype(int).mean()) - 90) <= 3


# ----------------------------------------------------------------------------------------- no silent corruption
def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    root = tmp_path / "deep"
    for name, v in (("a", 65535), ("b", 32768), ("c", 0), ("d", 257)):
        save(root / f"{name}.png", np.full((6, 6), v, np.uint16))
    from PIL import Image

    with Image.open(root / "a.png") as im:
        assert im.mode.startswith("I")  # really a 16-bit file
    ds = load_dataset(str(root), image_size=4)
    assert ds.channels == 1
    assert [int(x) for x in ds.train.images.flatten(1).float().mean(1)] == [255, 128, 0, 1]


def test_folder_channels_come_from_the_whole_folder(tmp_path):
    """The first file used to decide: a grayscale first file made a colour folder grayscale."""
    root = tmp_path / "mixed"
    save(root / "a_gray.png", solid(77, c=1))
    save(root / "b_rgb.png", np.full((8, 8, 3), (10, 100, 200), np.uint8))
    save(root / "c_rgb.png", rgb(3, size=(8, 8)))
    with pytest.warns(UserWarning, match=r"1 of 3 grayscale images were converted to RGB"):
        ds = load_dataset(str(root), image_size=8)
    x = ds.train.images
    assert ds.channels == 3 and x.shape == (3, 3, 8, 8)
    assert (x[0] == 77).all()
    assert x[1, :, 0, 0].tolist() == [10, 100, 200] and (x[1] == x[1, :, :1, :1]).all()
    assert torch.equal(x[2], torch.from_numpy(rgb(3, size=(8, 8)).transpose(2, 0, 1).copy()))


def test_test_folder_is_converted_to_the_train_folders_channels(tmp_path):
    for i in range(2):
        save(tmp_path / "train" / "c" / f"{i}.png", solid(50 + i, c=1))
        save(tmp_path / "test" / "c" / f"{i}.png", rgb(i, size=(8, 8)))
    with pytest.warns(UserWarning, match=r"2 of 2 colour images were converted to grayscale"):
        ds = load_dataset(str(tmp_path / "train"), image_size=8, test_path=str(tmp_path / "test"))
    assert ds.channels == 1 and ds.test.images.shape == (2, 1, 8, 8)


def _tree(tmp_path):
    root = tmp_path / "root"
    for cls, n in (("cat", 2), ("dog", 1)):
        for i in range(n):
            save(root / cls / f"{i}.png", solid(40 * (i + 1) + (100 if cls == "dog" else 0)))
    return root


def test_class_folder_linking_to_the_root_is_skipped(tmp_path):
    root = _tree(tmp_path)
    os.symlink(root, root / "all")
    with pytest.warns(UserWarning, match=r"skipped 1 class folder.*linking to the data root.*all"):
        ds = load_dataset(str(root), image_size=8)
    assert ds.classes == ["cat", "dog"] and ds.train.labels.tolist() == [0, 0, 1]


def test_duplicates_through_links_are_counted_and_keep_their_direct_label(tmp_path):
    root = _tree(tmp_path)
    os.symlink(root / "cat", root / "aaa")  # sorts first, but the direct path keeps the label
    os.symlink(root / "dog" / "0.png", root / "cat" / "dog-copy.png")
    with pytest.warns(UserWarning, match=r"skipped 4 duplicate image"):  # 2 via aaa, dog-copy via cat and aaa
        ds = load_dataset(str(root), image_size=8)
    assert ds.classes == ["cat", "dog"] and ds.train.labels.tolist() == [0, 0, 1]
    assert ds.train.images[:, 0, 0, 0].tolist() == [40, 80, 140]


def test_link_loops_end(tmp_path):
    root = _tree(tmp_path)
    os.symlink(root / "cat", root / "cat" / "loop")
    os.symlink(root, root / "dog" / "up")
    (root / "dog" / "deep").mkdir()
    os.symlink(root / "dog", root / "dog" / "deep" / "back")
    with pytest.warns(UserWarning, match=r"3 link\(s\) back to a folder already listed"):
        ds = load_dataset(str(root), image_size=8)
    assert ds.classes == ["cat", "dog"] and ds.train.labels.tolist() == [0, 0, 1]


def test_flat_folder_file_links_are_deduplicated(tmp_path):
    root = tmp_path / "flat"
    save(root / "x.png", rgb(0))
    os.symlink(root / "x.png", root / "y.png")
    os.symlink(root / "missing.png", root / "z.png")  # broken: not a file, ignored
    with pytest.warns(UserWarning, match=r"skipped 1 duplicate image"):
        ds = load_dataset(str(root), image_size=8)
    assert ds.train.num_images == 1


# ----------------------------------------------------------------------------------------- npz labels bounded
def write_npz(path, y_train=None, y_test=None, with_test=True, **extra):
    g = np.random.default_rng(0)
    arrays = {"x_train": g.integers(0, 256, (4, 6, 6, 3), dtype=np.uint8)}
    if with_test:
        arrays["x_test"] = g.integers(0, 256, (3, 6, 6, 3), dtype=np.uint8)
    if y_train is not None:
        arrays["y_train"] = np.asarray(y_train)
    if y_test is not None:
        arrays["y_test"] = np.asarray(y_test)
    np.savez(path, **arrays, **extra)
    return path


@pytest.mark.parametrize("key,labels,match", [
    ("y_train", np.array([0, 1, 2, 10**12], np.int64), "label 1000000000000, over the limit"),
    ("y_train", np.array([0, 1, 2, 10**9], np.int64), "label 1000000000, over the limit"),
    ("y_train", np.array([0, 1, 2, 2**63], np.uint64), "label 9223372036854775808, over the limit"),
    ("y_train", np.array([0, 1, 2, 2**64 - 1], np.uint64), "label 18446744073709551615"),
    ("y_test", np.array([0, 1, MAX_CLASSES], np.int32), f"label {MAX_CLASSES}, over the limit"),
    ("y_test", np.array([0, -5, 1], np.int8), r"negative labels \(min -5\)"),
    ("y_train", np.array([0.0, 1.0, 1.0, 0.0]), "integer labels, got float64"),
    ("y_train", np.array([True, False, True, False]), "integer labels, got bool"),
])
def test_npz_labels_are_bounded_before_any_allocation(tmp_path, key, labels, match):
    other = np.zeros(4 if key == "y_test" else 3, np.int64)
    p = write_npz(tmp_path / "labels.npz", **{key: labels, ("y_test" if key == "y_train" else "y_train"): other})
    with pytest.raises(DataError, match=match) as e:
        load_npz(p)
    assert "labels.npz" in one_line(e) and f"'{key}'" in one_line(e)


def test_npz_classes_cover_train_and_test_labels(tmp_path):
    ds = load_npz(write_npz(tmp_path / "a.npz", y_train=[0, 1, 1, 0], y_test=[0, 2, 3]))
    assert ds.classes == ["0", "1", "2", "3"]
    names = np.array(["a", "b"])
    with pytest.raises(DataError, match="'classes' has 2 names but the labels use 4 classes"):
        load_npz(write_npz(tmp_path / "b.npz", y_train=[0, 1, 1, 0], y_test=[0, 2, 3], classes=names))
    with pytest.raises(DataError, match="'classes' must be a 1-D array"):
        load_npz(write_npz(tmp_path / "c.npz", y_train=[0, 1, 1, 0], classes=np.zeros((2, 2), np.int64)))
    ok = load_npz(write_npz(tmp_path / "d.npz", y_train=[0, 1, 1, 0], classes=np.array([b"x", b"y"])))
    assert ok.classes == ["x", "y"]


def test_eval_data_goes_through_the_same_label_checks(tmp_path):
    from selfsup.evaluation.transfer import load_eval_data

    p = write_npz(tmp_path / "eval.npz", y_train=[0, 1, 1, 10**9], y_test=[0, 1, 0])
    with pytest.raises(DataError, match="eval.npz: 'y_train' has label 1000000000"):
        load_eval_data(str(p), 6, 3)
    good = write_npz(tmp_path / "train.npz", y_train=[0, 1, 1, 0], with_test=False)
    with pytest.raises(DataError, match="eval.npz: 'y_train' has label"):
        load_dataset(str(good), test_path=str(p))


# ----------------------------------------------------------------------------------------- data.test_path
def test_test_path_replaces_a_built_in_test_split_with_a_warning(tmp_path):
    train = write_npz(tmp_path / "train.npz", y_train=[0, 1, 1, 0], y_test=[0, 1, 0])
    g = np.random.default_rng(5)
    other = tmp_path / "other.npz"
    np.savez(other, x_train=g.integers(0, 256, (7, 6, 6, 3), dtype=np.uint8), y_train=np.arange(7) % 2)
    with pytest.warns(UserWarning, match=r"data.test_path=.*other\.npz replaces the 3-image test split of"):
        ds = load_dataset(str(train), test_path=str(other))
    assert ds.test.num_images == 7


def test_test_path_folder_beside_npz_and_channel_mismatch(tmp_path):
    train = write_npz(tmp_path / "train.npz", y_train=[0, 1, 1, 0], with_test=False)
    np.savez(tmp_path / "gray.npz", x_train=np.zeros((2, 6, 6), np.uint8), y_train=np.array([0, 1]))
    with pytest.raises(DataError, match=r"data.test_path=.*gray\.npz has 1-channel images") as e:
        load_dataset(str(train), test_path=str(tmp_path / "gray.npz"))
    one_line(e)
    for i in range(2):
        save(tmp_path / "tf" / f"c{i}" / "0.png", rgb(i, size=(6, 6)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_dataset(str(train), test_path=str(tmp_path / "tf"))
    assert ds.test.num_images == 2 and ds.test.images.shape[1:] == (3, 6, 6)
    folder = tmp_path / "trf"
    for i in range(2):
        save(folder / f"c{i}" / "0.png", rgb(i, size=(6, 6)))
    ds = load_dataset(str(folder), image_size=6, test_path=str(train))  # a folder with an .npz test split
    assert ds.test.num_images == 4


def test_resize_request_beyond_memory_is_refused(tmp_path, monkeypatch):
    import selfsup.data.npz as npz_mod

    p = write_npz(tmp_path / "small.npz", y_train=[0, 1, 1, 0])
    monkeypatch.setattr(npz_mod, "memory_limit", lambda: 10_000)
    with pytest.raises(DataError, match=r"small\.npz: 4 images at 64x64 need") as e:
        load_dataset(str(p), image_size=64)
    one_line(e)


def test_in_memory_folder_decodes_into_one_array(tmp_path):
    """Peak memory is the dataset once (a preallocated array), not decoded copies plus a stacked one."""
    import tracemalloc

    paths = [save(tmp_path / f"{i}.png", rgb(i, size=(8, 8))) for i in range(100)]
    folder_mod.load_folder_in_memory(paths[:2], None, 64, 3, tmp_path)  # warm imports and caches
    tracemalloc.start()
    try:
        split = folder_mod.load_folder_in_memory(paths, None, 64, 3, tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    data = split.images.numel()
    assert data == 100 * 3 * 64 * 64 and peak < 1.5 * data, (peak, data)


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_image_size_must_be_a_positive_whole_number(tmp_path, size):
    """0 used to mean the default 64 for folders and a negative size reached numpy's allocator."""
    save(tmp_path / "f" / "a.png", rgb(0))
    with pytest.raises(DataError, match="image size must be a whole number of pixels >= 1") as e:
        load_dataset(str(tmp_path / "f"), image_size=size)
    one_line(e)
