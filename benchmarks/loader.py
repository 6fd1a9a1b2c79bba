"""Data loading throughput: images/s per CPU core of selfsup's readers against torchvision's, on JPEG folders.

    python benchmarks/loader.py                    # 64, 128, 224 px; 500x375 and 2048x1536 JPEGs; 2 workers
    python benchmarks/loader.py --quick            # fewer images, one source size
    python benchmarks/loader.py --dry-run          # tiny, seconds (the test suite runs this)

What is compared, per output size and source-image size, with the same DataLoader workers and batch:

- ``torchvision``: ``ImageFolder`` + ``RandomResizedCrop(px)`` + ``PILToTensor`` (uint8: no normalisation, so
  neither side pays for float conversion in the workers), one crop per image; and ``torchvision x2``: two crops
  per image, what an SSL method with two views needs from a loader that crops on the CPU.
- ``selfsup whole``: ``data.full_image`` (data/canvas.py): each JPEG decoded once at the smallest DCT scale that
  keeps its short side >= px (PIL ``draft``), resized to short side px, laid in a 4:3 canvas; every view's crop
  is then taken on the training device, so this row serves any number of views.
- ``selfsup square``: the default folder reader (centred square at px), for reference.
- ``selfsup shards``: the same images written by ``selfsup shard`` (when the shard reader is installed).

Source JPEGs are made once from CIFAR-10 images (``../shared/data/cifar10.npz``), upsampled with noise to the
source size, quality 90, and kept in ``runs/loader-data/``. Images/s is measured over whole passes after one
warm-up batch; per core = images/s / workers (the main process only collates). Results: one JSON line per row in
``--results``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from selfsup.data.canvas import CanvasSpec  # noqa: E402
from selfsup.data.folder import load_folder  # noqa: E402


def make_jpegs(out: Path, n: int, size: tuple[int, int], data: Path | None, seed: int = 0) -> Path:
    """``n`` JPEGs of ``size`` (w, h) in 10 class folders under ``out`` (made once; kept)."""
    from PIL import Image

    done = out / ".complete"
    if done.exists():
        return out
    g = np.random.default_rng(seed)
    if data is not None and data.exists():
        with np.load(data) as z:
            src = z["x_train"][:n]
            labels = z["y_train"][:n]
    else:  # no CIFAR-10 here (the dry run): random colour fields
        src = g.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
        labels = np.arange(n) % 10
    for i, (img, y) in enumerate(zip(src, labels)):
        im = Image.fromarray(img).resize(size, Image.Resampling.BILINEAR)
        a = np.asarray(im, dtype=np.int16) + g.integers(-12, 13, (size[1], size[0], 3))
        p = out / f"c{int(y)}" / f"{i:06d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(p, quality=90)
    done.touch()
    return out


def _rate(batches, n_images: int, passes: int) -> float:
    """Images/s of iterating ``batches()`` (a fresh iterator per pass) after one warm-up batch, median of passes."""
    it = iter(batches())
    next(it)
    for _ in it:
        pass
    rates = []
    for _ in range(passes):
        t = time.perf_counter()
        seen = 0
        for b in batches():
            seen += len(b[0]) if not isinstance(b[0], (list, tuple)) else len(b[0][0])
        rates.append(seen / (time.perf_counter() - t))
    return statistics.median(rates)


def torchvision_loader(root: Path, px: int, views: int, batch: int, workers: int):
    from torchvision import datasets, transforms

    crop = transforms.Compose([transforms.RandomResizedCrop(px), transforms.PILToTensor()])
    tf = crop if views == 1 else (lambda im: [crop(im) for _ in range(views)])
    ds = datasets.ImageFolder(str(root), transform=tf)
    return lambda: torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                               persistent_workers=False)


def selfsup_loader(root: Path, px: int, batch: int, workers: int, whole: bool):
    canvas = CanvasSpec.for_size(px) if whole else None
    ds = load_folder(root, px, workers=workers, max_memory_bytes=0, canvas=canvas)
    split = ds.train
    split.workers = workers
    g = torch.Generator().manual_seed(0)
    return lambda: split.batches(batch, shuffle=True, generator=g, canvas=whole)


def shard_loader(root: Path, px: int, batch: int, workers: int, shard_dir: Path):
    try:
        from selfsup.data import load_dataset
        from selfsup.data.shard_write import write_shards
    except ImportError:
        return None
    if not (shard_dir / "index.json").exists():
        write_shards(root, shard_dir)
    split = load_dataset(str(shard_dir), px).train
    split.workers = workers
    g = torch.Generator().manual_seed(0)
    return lambda: split.batches(batch, shuffle=True, generator=g)


def train_check(root: Path, shard_dir: Path | None, a) -> list[dict]:
    """Is the training loop data-bound? SimCLR, ResNet-18 (width ``--train-width``) at 64 px for ``--train-steps``
    steps, fed (a) from the images decoded once into memory, (b) from shards through ``--workers`` workers that
    share the CPU with the step. Not data-bound: (b) runs at >= 90 % of (a)'s images/s."""
    from selfsup.config import build_run_config
    from selfsup.data import load_dataset
    from selfsup.engine.trainer import pretrain

    rows = []
    sources = {"in memory": str(root)} | ({"shards": str(shard_dir)} if shard_dir is not None else {})
    for name, spec in sources.items():
        raw = {"method": {"name": "simclr"}, "backbone": {"name": "resnet18", "width": a.train_width},
               "data": {"path": spec, "image_size": 64, "workers": a.workers},
               "train": {"epochs": 100, "max_steps": a.train_steps, "batch_size": a.batch, "device": "cpu",
                         "log_every": max(1, a.train_steps // 4)}}
        data = load_dataset(spec, 64, workers=a.workers)
        res = pretrain(build_run_config(raw), Path(a.out) / f"train-{name.replace(' ', '-')}", overwrite=True,
                       data=data, quiet=True)
        rows.append({"check": "train", "reader": name, "px": 64, "images_per_s": round(res.images_per_s, 1),
                     "steps": res.steps, "width": a.train_width, "workers": a.workers, "batch": a.batch})
        print(json.dumps(rows[-1]), flush=True)
    if len(rows) == 2:
        ratio = rows[1]["images_per_s"] / rows[0]["images_per_s"]
        rows[1]["vs_in_memory"] = round(ratio, 3)
        print(f"training from shards at {ratio:.0%} of in-memory speed: "
              f"{'not data-bound' if ratio >= 0.9 else 'DATA-BOUND'}")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10.npz"))
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--sizes", default="64,128,224")
    p.add_argument("--sources", default="500x375,2048x1536")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--train-steps", type=int, default=20, help="steps of the data-bound check (0: skip it)")
    p.add_argument("--train-width", type=float, default=0.25)
    p.add_argument("--train-only", action="store_true", help="only the data-bound check (the folders exist)")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--out", default=str(ROOT / "runs" / "loader-data"))
    p.add_argument("--results", default=str(ROOT / "runs" / "loader-results.jsonl"))
    a = p.parse_args()
    if a.quick:
        a.images, a.sources, a.passes = 600, "500x375", 1
    if a.dry_run:
        a.images, a.sizes, a.sources, a.workers, a.batch, a.passes = 24, "16", "40x30", 0, 8, 1
        a.train_steps, a.train_width = 2, 0.125
    per_core = max(a.workers, 1)
    rows = []
    for source in ([] if a.train_only else a.sources.split(",")):
        w, h = (int(v) for v in source.split("x"))
        root = make_jpegs(Path(a.out) / f"jpeg-{source}-{a.images}", a.images, (w, h), Path(a.data))
        for px in (int(v) for v in a.sizes.split(",")):
            loaders = {
                "torchvision": torchvision_loader(root, px, 1, a.batch, a.workers),
                "torchvision x2": torchvision_loader(root, px, 2, a.batch, a.workers),
                "selfsup whole": selfsup_loader(root, px, a.batch, a.workers, whole=True),
                "selfsup square": selfsup_loader(root, px, a.batch, a.workers, whole=False),
                "selfsup shards": shard_loader(root, px, a.batch, a.workers,
                                               Path(a.out) / f"shards-{source}-{a.images}"),
            }
            for name, make in loaders.items():
                if make is None:
                    continue
                rate = _rate(make, a.images, a.passes)
                rows.append({"reader": name, "source": source, "px": px, "images_per_s": round(rate, 1),
                             "per_core": round(rate / per_core, 1), "workers": a.workers, "batch": a.batch,
                             "images": a.images, "cpu": platform.processor() or platform.machine(),
                             "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M")})
                print(json.dumps(rows[-1]), flush=True)
    if a.train_steps:
        source = a.sources.split(",")[0]
        shards = Path(a.out) / f"shards-{source}-{a.images}"
        rows += train_check(Path(a.out) / f"jpeg-{source}-{a.images}", shards if (shards / "index.json").exists()
                            else None, a)
    Path(a.results).parent.mkdir(parents=True, exist_ok=True)
    with open(a.results, "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(table([r for r in rows if "check" not in r]))


def table(rows: list[dict]) -> str:
    """Markdown: one line per (source, px), images/s per core of each reader, and whole / torchvision x1."""
    names = list(dict.fromkeys(r["reader"] for r in rows))
    out = ["| source | px | " + " | ".join(names) + " | whole ÷ torchvision |", "|---" * (len(names) + 3) + "|"]
    for key in dict.fromkeys((r["source"], r["px"]) for r in rows):
        got = {r["reader"]: r["per_core"] for r in rows if (r["source"], r["px"]) == key}
        ratio = got.get("selfsup whole", 0) / got["torchvision"] if got.get("torchvision") else float("nan")
        out.append(f"| {key[0]} | {key[1]} | " + " | ".join(f"{got.get(n, float('nan')):.0f}" for n in names)
                   + f" | {ratio:.2f}× |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
