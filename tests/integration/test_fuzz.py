"""Property-based and file fuzzing: bad input gets a clear error or a correct result, never a deep traceback.

- augmentation ops and whole views: any batch size, image size >= 1, 1 or 3 channels, any valid parameters →
  the right shape and dtype, values in range, no NaN;
- the config parser: random keys and values → ConfigError/ValueError (one line, naming the key) or a valid config;
- the .npz and image-folder loaders: random bytes, truncated/corrupted files, empty files, forged headers and
  decompression bombs → a DataError or a skipped-file warning.
"""
from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from selfsup.augment import ops  # noqa: E402
from selfsup.augment.pipeline import MultiViewPipeline, ViewSpec  # noqa: E402
from selfsup.config import ConfigError, RunConfig, apply_overrides, build_run_config  # noqa: E402
from selfsup.data import DataError, load_dataset  # noqa: E402
from selfsup.data.npz import load_npz  # noqa: E402
from selfsup.registry import UnknownNameError  # noqa: E402

# 40 examples per property in the suite; SELFSUP_FUZZ_EXAMPLES=500 for a longer soak
FUZZ = settings(max_examples=int(os.environ.get("SELFSUP_FUZZ_EXAMPLES", "40")), deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])
EPS = 1e-5

# ------------------------------------------------------------------------------------------- augmentation ops
batches = st.tuples(st.integers(1, 8), st.sampled_from([1, 3]), st.integers(1, 40), st.integers(1, 40))


def images(b: int, c: int, h: int, w: int, seed: int) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def in_unit_range(y: torch.Tensor) -> bool:
    return bool(torch.isfinite(y).all()) and float(y.min()) >= -EPS and float(y.max()) <= 1 + EPS


@st.composite
def view_specs(draw):
    lo = draw(st.floats(0.01, 1.0))
    hi = draw(st.floats(lo, 1.0))
    rlo = draw(st.floats(0.1, 3.0))
    rhi = draw(st.floats(rlo, 10.0))
    slo = draw(st.floats(0.01, 3.0))
    return ViewSpec(
        size=draw(st.integers(1, 40)), crop_scale=(lo, hi), crop_ratio=(rlo, rhi),
        flip_p=draw(st.floats(0, 1)),
        jitter=(draw(st.floats(0, 1)), draw(st.floats(0, 1)), draw(st.floats(0, 1)), draw(st.floats(0, 0.5))),
        jitter_p=draw(st.floats(0, 1)), grayscale_p=draw(st.floats(0, 1)), blur_p=draw(st.floats(0, 1)),
        blur_sigma=(slo, draw(st.floats(slo, 5.0))),
        blur_kernel=draw(st.one_of(st.none(), st.integers(1, 23))), solarize_p=draw(st.floats(0, 1)),
        crop=draw(st.booleans()),
    )


@FUZZ
@given(batches, view_specs(), st.integers(0, 2**31 - 1))
def test_view_pipeline_any_shape_any_valid_params(shape, spec, seed):
    b, c, h, w = shape
    x = (images(b, c, h, w, seed) * 255).to(torch.uint8)
    pipe = MultiViewPipeline([spec], mean=[0.0] * c, std=[1.0] * c)  # identity normalisation: values stay in [0, 1]
    (y,) = pipe(x, torch.Generator().manual_seed(seed))
    assert y.shape == (b, c, spec.size, spec.size) and y.dtype == torch.float32
    assert in_unit_range(y)


@FUZZ
@given(batches, st.floats(0.01, 1.0), st.floats(0.1, 10.0), st.integers(0, 2**31 - 1))
def test_crop_boxes_stay_inside_tiny_images(shape, scale_lo, ratio_hi, seed):
    b, _, h, w = shape
    boxes = ops.sample_resized_crop(b, h, w, (scale_lo, 1.0), (min(0.5, ratio_hi), ratio_hi),
                                    torch.Generator().manual_seed(seed), torch.device("cpu"))
    top, left, bh, bw = boxes.unbind(1)
    assert bool((bh >= 1).all() and (bw >= 1).all()), boxes
    assert bool((top >= 0).all() and (left >= 0).all() and (top + bh <= h).all() and (left + bw <= w).all()), boxes


@FUZZ
@given(batches, st.integers(0, 15).map(lambda k: 2 * k + 1), st.floats(0.01, 10.0), st.integers(0, 2**31 - 1))
def test_gaussian_blur_any_size_and_kernel(shape, kernel, sigma, seed):
    b, c, h, w = shape
    x = images(b, c, h, w, seed)
    y = ops.gaussian_blur(x, torch.full((b,), sigma), kernel)
    assert y.shape == x.shape and y.dtype == x.dtype and in_unit_range(y)
    if h == 1 and w == 1:
        torch.testing.assert_close(y, x)  # a blur of one pixel is that pixel


@FUZZ
@given(batches, st.lists(st.floats(0, 1), min_size=3, max_size=3), st.floats(0, 0.5), st.integers(0, 2**31 - 1))
def test_color_ops_keep_range(shape, bcs, hue, seed):
    b, c, h, w = shape
    x = images(b, c, h, w, seed)
    g = torch.Generator().manual_seed(seed)
    f, order = ops.sample_color_jitter(b, *bcs, hue, g, torch.device("cpu"))
    for y in (ops.color_jitter(x, f, order), ops.adjust_hue(x, f[:, 3]), ops.adjust_saturation(x, f[:, 2]),
              ops.random_grayscale(x, torch.ones(b, dtype=torch.bool)), ops.solarize(x, torch.ones(b, dtype=torch.bool))):
        assert y.shape == x.shape and y.dtype == x.dtype and in_unit_range(y)


def test_invalid_view_params_are_rejected():
    x = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    for bad, match in [(dict(size=0), "size"), (dict(crop_scale=(0.5, 0.2)), "crop_scale"),
                       (dict(crop_scale=(0.0, 1.0)), "crop_scale"), (dict(crop_ratio=(2.0, 1.0)), "crop_ratio"),
                       (dict(flip_p=1.5), "flip_p"), (dict(blur_sigma=(0.0, 1.0)), "blur_sigma"),
                       (dict(jitter=(0.4, -1.0, 0.4, 0.1)), "jitter"), (dict(jitter=(0.4, 0.4, 0.4, 0.7)), "jitter")]:
        with pytest.raises(ValueError, match=match):
            MultiViewPipeline([ViewSpec(**{"size": 8, **bad})], [0.5] * 3, [0.2] * 3)(x)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        ops.gaussian_blur(x.float(), torch.ones(2), 4)


# ------------------------------------------------------------------------------------------- config parser
KNOWN_KEYS = [f"{s}.{k}" for s, sec in RunConfig().to_dict().items() if isinstance(sec, dict) for k in sec]
KNOWN_KEYS += ["method.temperature", "method.proj_dim", "method.name", "temperature", "train", "method"]
TRICKY = ["nan", "inf", "-inf", "-1", "0", "1", "0.5", "1e999", "1e-3", "[1, 2]", "(0.9, 0.999)", "{a: 1}",
          "null", "~", "true", "no", "", "'x'", "cpu", "cuda:0", "cuda:x", "stop", "skip", "bf16", "!!python/name:os.system",
          "[", "{", "- a", "simclr", "resnet18", "9" * 40, "-0", "0x10", "1_000", ".5", "1e3"]
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(min_size=0, max_size=20))
values = st.one_of(st.sampled_from(TRICKY), st.text(max_size=20))


def assert_clear(e: BaseException) -> None:
    msg = str(e)
    assert msg and "\n" not in msg.strip(), repr(msg)


@FUZZ
@given(st.lists(st.tuples(keys, values), max_size=5))
def test_config_overrides_give_a_clear_error_or_a_valid_config(pairs):
    items = [f"{k}={v}" for k, v in pairs]
    try:
        cfg = build_run_config(apply_overrides({}, items, method_fields=["temperature", "proj_dim"]))
    except (ConfigError, UnknownNameError, ValueError) as e:
        assert_clear(e)
        return
    assert isinstance(cfg, RunConfig)
    assert cfg.train.log_every >= 1 and cfg.backbone.width > 0
    assert cfg.train.batch_size is None or cfg.train.batch_size >= 2  # None: the method's


yaml_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8)
sections = st.sampled_from(["method", "data", "backbone", "augment", "optim", "train", "other"])


@FUZZ
@given(st.dictionaries(sections, st.one_of(yaml_values, st.dictionaries(st.sampled_from(
    [k.split(".")[1] for k in KNOWN_KEYS if "." in k] + ["name", "x"]), yaml_values, max_size=4)), max_size=4))
def test_config_files_give_a_clear_error_or_a_valid_config(raw):
    """What a YAML file can hold (any nesting, any scalar types) through the same validation."""
    try:
        cfg = build_run_config(raw)
    except (ConfigError, UnknownNameError, ValueError) as e:
        assert_clear(e)
        return
    assert isinstance(cfg, RunConfig)


# ------------------------------------------------------------------------------------------- .npz files
def good_npz_bytes(n: int = 6, size: int = 4, compressed: bool = False) -> bytes:
    buf = io.BytesIO()
    x = np.random.default_rng(0).integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    (np.savez_compressed if compressed else np.savez)(buf, x_train=x, y_train=np.arange(n) % 2)
    return buf.getvalue()


def load_or_clear_error(path: Path):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_dataset(str(path))
    except DataError as e:
        assert_clear(e)
        assert str(path.name) in str(e)
        return None


@FUZZ
@given(st.binary(max_size=2000))
def test_npz_random_bytes(tmp_path_factory, blob):
    p = tmp_path_factory.mktemp("npz") / "data.npz"
    p.write_bytes(blob)
    assert load_or_clear_error(p) is None


@FUZZ
@given(st.booleans(), st.data())
def test_npz_truncated_or_corrupted(tmp_path_factory, compressed, data):
    good = good_npz_bytes(compressed=compressed)
    cut = data.draw(st.integers(0, len(good) - 1))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(good) - 1), st.integers(1, 255)), max_size=4))
    blob = bytearray(good[:cut] if data.draw(st.booleans()) else good)
    for i, x in flips:
        if i < len(blob):
            blob[i] ^= x
    p = tmp_path_factory.mktemp("npz") / "data.npz"
    p.write_bytes(bytes(blob))
    ds = load_or_clear_error(p)
    if ds is not None:  # a flip in pixel bytes still gives a valid dataset
        assert ds.train.images.dtype == torch.uint8 and ds.train.images.ndim == 4


def npy_with_header(shape: tuple[int, ...], dtype: str = "|u1", payload: bytes = b"\x00" * 64) -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload


@pytest.mark.parametrize("member, match", [
    (npy_with_header((10**6, 224, 224, 3)), "declares"),  # forged header: 150 GB declared, 64 bytes present
    (npy_with_header((2, 4, 4, 3), dtype="|O"), "pickled objects"),  # object arrays need pickle
    (npy_with_header((2, 4, 4, 3), dtype="<f4", payload=b"\x00" * 384), "uint8"),
])
def test_npz_forged_members(tmp_path, member, match):
    import zipfile

    p = tmp_path / "forged.npz"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("x_train.npy", member)
    with pytest.raises(DataError, match=match):
        load_npz(p)


def test_npz_zip_bomb_guard(tmp_path):
    """Members whose uncompressed size exceeds what may be loaded are refused before decompressing."""
    p = tmp_path / "big.npz"
    p.write_bytes(good_npz_bytes(n=64, size=32, compressed=True))
    with pytest.raises(DataError, match="uncompressed"):
        load_npz(p, max_bytes=10_000)
    assert load_npz(p).train.num_images == 64


def test_npz_empty_file(tmp_path):
    p = tmp_path / "empty.npz"
    p.write_bytes(b"")
    with pytest.raises(DataError, match="empty.npz"):
        load_npz(p)


# ------------------------------------------------------------------------------------------- image folders
def png_bytes(w: int = 8, h: int = 8, seed: int = 0) -> bytes:
    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(w: int = 16, h: int = 16) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def png_bomb(w: int, h: int) -> bytes:
    """A valid PNG signature and IHDR declaring ``w`` x ``h`` pixels, with a tiny IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


BAD_FILES = {
    "empty.png": b"",
    "random.jpg": bytes(range(256)) * 4,
    "text.png": b"this is not an image",
    "truncated.png": png_bytes()[:60],
    "truncated.jpg": jpeg_bytes()[:200],
    "bomb-81mpx.png": png_bomb(9000, 9000),  # over our 64 Mpx limit, under PIL's own warning threshold
    "bomb-40gpx.png": png_bomb(200_000, 200_000),  # PIL's DecompressionBombError territory
    "zero-size.png": png_bomb(0, 0),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_folder_skips_each_bad_file_with_a_warning(tmp_path, name):
    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    (root / "a" / "good.png").write_bytes(png_bytes())
    (root / "a" / name).write_bytes(BAD_FILES[name])
    with pytest.warns(UserWarning, match=r"skipped 1 of 2 unreadable images \(first: " + name.replace(".", r"\.")):
        ds = load_dataset(str(root), image_size=8)
    assert ds.train.num_images == 1 and ds.train.images.shape == (1, 3, 8, 8)


def test_folder_of_only_bad_files_is_a_data_error(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    for name, blob in BAD_FILES.items():
        (root / name).write_bytes(blob)
    with pytest.raises(DataError, match=f"all {len(BAD_FILES)} images are unreadable"):
        load_dataset(str(root), image_size=8)


@FUZZ
@given(st.lists(st.one_of(st.binary(max_size=300), st.builds(lambda c: png_bytes()[:c], st.integers(0, 120))),
                min_size=1, max_size=4),
       st.sampled_from([".png", ".jpg", ".gif", ".bmp"]))
def test_folder_random_bytes(tmp_path_factory, blobs, ext):
    root = tmp_path_factory.mktemp("folder")
    (root / f"good{ext if ext != '.jpg' else '.png'}").write_bytes(png_bytes())
    for i, blob in enumerate(blobs):
        (root / f"f{i}{ext}").write_bytes(blob)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = load_dataset(str(root), image_size=8)
    assert 1 <= ds.train.num_images <= len(blobs) + 1
    assert ds.train.images.dtype == torch.uint8 and ds.train.images.shape[1:] == (3, 8, 8)
