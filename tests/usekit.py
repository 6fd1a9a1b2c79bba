"""What the tests of the practitioner's path (``selfsup.use``) start from: a tiny pretrained run and a generated
image folder (labelled, nested, with a corrupt file and a name holding markup)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import make_blobs

from selfsup.api import pretrain
from selfsup.config import build_run_config

BAD_PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 30
MARKUP_NAME = "<img src=x onerror=alert(1)>.png"  # a legal file name; must show as text in any page


def tiny_run(out: Path, size: int = 16, channels: int = 3, backbone: str = "convnet") -> Path:
    """A SimCLR run (convnet width 0.25 by default) pretrained for 2 steps on 32 blob images."""
    cfg = build_run_config({"backbone": {"name": backbone, "width": 0.25},
                            "train": {"epochs": 1, "max_steps": 2, "batch_size": 8, "device": "cpu", "seed": 0}})
    pretrain(cfg, out, data=make_blobs(n=32, size=size, channels=channels), quiet=True)
    return out


def image_folder(root: Path, n: int = 24, size: int = 16, corrupt: bool = True, markup: bool = False) -> Path:
    """``root/c<k>/<i>.png`` (4 classes, one nested subfolder), plus ``c0/bad.png`` (corrupt) when asked."""
    from PIL import Image

    ds = make_blobs(n=n, size=size, seed=1)
    for i in range(n):
        y = int(ds.train.labels[i])
        d = root / f"c{y}" / ("deep" if i % 8 == 7 else "")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ds.train.images[i].permute(1, 2, 0).numpy()).save(d / f"{i:02d}.png")
    if corrupt:
        (root / "c0" / "bad.png").write_bytes(BAD_PNG)
    if markup:
        Image.fromarray(np.full((size, size, 3), 200, np.uint8)).save(root / "c1" / MARKUP_NAME)
    return root
