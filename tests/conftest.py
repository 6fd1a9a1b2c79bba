"""Shared fixtures: tiny in-memory datasets made in the test, the real data path when it exists, and the
test-only sizes the production registries do not hold (the ``vit-test`` backbone)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from selfsup.backbones.vit import vit_factory
from selfsup.config import RunConfig, build_run_config
from selfsup.data.base import ImageDataset, InMemorySplit
from selfsup.registry import BACKBONES, METHODS

# Under pytest-xdist (`make test` runs `-n auto`: one worker per core) each worker computes on one thread: two
# workers of two OpenMP threads each on two cores stall one another.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)

# A 2-block ViT of dim 32 with 2 heads (width ignored): the tiny ViT of the contract tests and of methods whose
# ``test_backbone`` is a ViT (MAE, BEiT). Registered here, not in src/: it is a test size, not a model.
if "vit-test" not in BACKBONES:  # once per process, even if this module is imported under two names
    BACKBONES.register("vit-test", help="tests only: a 2-block ViT, dim 32, 2 heads (width ignored)")(
        vit_factory(32, 2, 2))

# ../shared/data beside the checkout (as in CI); SELFSUP_SHARED_DATA overrides it (git worktrees elsewhere).
SHARED_DATA = Path(os.environ.get("SELFSUP_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def make_blobs(n: int = 64, channels: int = 3, size: int = 16, classes: int = 4, seed: int = 0) -> ImageDataset:
    """Images whose class sets a coloured square's position: learnable structure in a few steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = (torch.rand(n, channels, size, size, generator=g) * 60).to(torch.uint8)
    half = size // 2
    for i in range(n):
        r, c = divmod(int(y[i]) % 4, 2)
        x[i, :, r * half : (r + 1) * half, c * half : (c + 1) * half] += 150
    ytest = torch.arange(n // 2) % classes
    xt = x[: n // 2].clone()
    return ImageDataset("blobs", InMemorySplit(x, y), InMemorySplit(xt, ytest), [str(i) for i in range(classes)])


@pytest.fixture
def tiny_data() -> ImageDataset:
    return make_blobs()


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "cifar10.npz").exists():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


def save_npz(ds: ImageDataset, path: Path) -> Path:
    """Write an in-memory dataset as the ``.npz`` layout ``selfsup`` reads (NHWC uint8, train and test splits)."""
    assert ds.test is not None
    np.savez(path, x_train=ds.train.images.permute(0, 2, 3, 1).numpy(), y_train=ds.train.labels.numpy(),
             x_test=ds.test.images.permute(0, 2, 3, 1).numpy(), y_test=ds.test.labels.numpy())
    return path


@pytest.fixture(scope="module")
def blobs_npz(tmp_path_factory) -> Path:
    """32 blob images (16 px, 4 classes) as an ``.npz`` file, made once per test module."""
    return save_npz(make_blobs(n=32, size=16), tmp_path_factory.mktemp("data") / "blobs.npz")


def tiny_run_config(method: str = "simclr", method_opts: dict | None = None, *, test_sizes: bool = True,
                    data: str | Path | None = None, augment: dict | None = None, optim: dict | None = None,
                    **train) -> RunConfig:
    """The small run the engine tests train: ``method`` at its registered test sizes (``test_overrides`` and
    ``test_backbone``, unless ``test_sizes=False``) updated by ``method_opts``, a width-0.25 backbone, on the CPU,
    batch 8 for 2 epochs, a log line per step and half an epoch of warm-up; keywords override ``train.*``."""
    cls = METHODS.get(method)
    opts = {**(dict(getattr(cls, "test_overrides", {})) if test_sizes else {}), **(method_opts or {})}
    raw: dict = {
        "method": {"name": method, **opts},
        "backbone": {"name": getattr(cls, "test_backbone", "convnet") if test_sizes else "convnet", "width": 0.25},
        "train": {"epochs": 2, "batch_size": 8, "device": "cpu", "log_every": 1, **train},
        "optim": optim if optim is not None else {"warmup_epochs": 0.5},
    }
    if data is not None:
        raw["data"] = {"path": str(data)}
    if augment:
        raw["augment"] = augment
    return build_run_config(raw)


def spawn_with_deadline(fn, args, nprocs: int = 2, deadline_s: float = 240.0) -> None:
    """torch.multiprocessing spawn that fails (and ends the processes) instead of hanging past a deadline."""
    import time

    import torch.multiprocessing as mp

    ctx = mp.start_processes(fn, args=args, nprocs=nprocs, start_method="spawn", join=False)
    end = time.monotonic() + deadline_s
    while not ctx.join(timeout=1.0):
        if time.monotonic() > end:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"distributed workers still running after {deadline_s:.0f} s")
