"""Attention maps of a ViT run: the last block's CLS → patch attention per head, overlaid on the images.

DINO (Caron et al. 2021) showed that self-supervised ViTs' CLS attention segments objects without labels;
``selfsup viz attention RUN --n 16 --out DIR`` answers "does my model attend to objects?" for any ViT run.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..augment.pipeline import eval_view
from ..backbones.base import Backbone
from ..config import build_run_config
from ..errors import ConfigError


def attention_maps(backbone: Backbone, x: torch.Tensor) -> torch.Tensor:
    """CLS → patch attention (B, heads, gh, gw) of normalised images ``x``; each map sums to 1."""
    if not backbone.supports_attention:
        raise ConfigError(f"attention maps need a ViT backbone, got {type(backbone).__name__}")
    was = backbone.training
    backbone.eval()
    try:
        return backbone.get_last_attention(x)
    finally:
        backbone.train(was)


def save_attention_pngs(images: torch.Tensor, maps: torch.Tensor, out_dir: str | Path, *, prefix: str = "attn"
                        ) -> list[Path]:
    """One PNG per image: the image, the mean map over heads, then each head, overlaid (jet, alpha 0.5).

    ``images`` uint8 (B, C, H, W); ``maps`` (B, heads, gh, gw).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    b, heads = maps.shape[:2]
    h, w = images.shape[-2:]
    up = F.interpolate(maps.float(), size=(h, w), mode="nearest")  # patch-sized blocks, no invented detail
    paths = []
    for i in range(b):
        img = images[i].permute(1, 2, 0).cpu().numpy()
        cmap = "gray" if img.shape[-1] == 1 else None
        img = img[..., 0] if img.shape[-1] == 1 else img
        panels = [("image", None), ("mean", up[i].mean(0))] + [(f"head {k}", up[i, k]) for k in range(heads)]
        fig, axes = plt.subplots(1, len(panels), figsize=(1.6 * len(panels), 1.8))
        for ax, (title, m) in zip(axes, panels):
            ax.imshow(img, cmap=cmap)
            if m is not None:
                ax.imshow(m.cpu().numpy(), cmap="jet", alpha=0.5)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
        fig.tight_layout()
        p = out / f"{prefix}-{i:03d}.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        paths.append(p)
    return paths


def attention_for_run(run_dir: str | Path, out_dir: str | Path, *, data: str | None = None, n: int = 16,
                      device: str = "cpu") -> list[Path]:
    """Load ``run_dir``'s newest checkpoint and write attention PNGs of the first ``n`` images of ``data``
    (default: the run's data; its test split when it has one)."""
    from ..data import DataError, load_dataset
    from ..engine.build import build_run, resolve_device
    from ..engine.rundir import latest_checkpoint

    if n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"run directory not found: {run_dir}")
    _, ckpt = latest_checkpoint(run_dir)
    cfg = build_run_config(ckpt["config"])
    dev = resolve_device(device)
    ds = load_dataset(data or cfg.data.path, cfg.data.image_size, test_path=cfg.data.test_path)
    built = build_run(cfg, ds, dev)
    built.method.load_state_dict(ckpt["method"])
    backbone = built.method.eval_backbone()
    if not backbone.supports_attention:
        raise ConfigError(f"attention maps need a ViT run; {run_dir} uses backbone '{cfg.backbone.name}' "
                          f"({type(backbone).__name__})")
    split = ds.test if ds.test is not None else ds.train
    x, _, _ = next(split.batches(n, shuffle=False))
    view = eval_view(split.image_size[0], ds.mean, ds.std)
    maps = attention_maps(backbone, view(x.to(dev)))
    return save_attention_pngs(x, maps, out_dir)
