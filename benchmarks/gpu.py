"""The GPU benchmark: SimCLR, ResNet-18 at full width on CIFAR-10, the configuration of lightly's published table.

    python benchmarks/gpu.py                   # one CUDA GPU; about 5 minutes on an H100/H200
    python benchmarks/gpu.py --epochs 200      # lightly's length
    python benchmarks/gpu.py --dry-run         # the same code on the CPU at tiny sizes, in seconds

The run: SimCLR with selfsup's defaults (temperature 0.2, 512-128 projection head, SGD lr 0.6 x batch/256,
warm-up then cosine), ResNet-18 width 1.0 with the CIFAR stem, batch 512, 32 px, ``train.precision=bf16``
(autocast), ``train.channels_last=true`` and ``train.compile=true``, on ``../shared/data/cifar10.npz`` (30k train
/ 10k test images), trained by ``selfsup.api.pretrain`` (the loop of ``selfsup pretrain``) and evaluated by
``evaluate_run`` (kNN, k=20). ``--set KEY=VALUE`` overrides any config key, as in ``selfsup pretrain``.

One row per ``--data-path``, i.e. per way the stored uint8 train images reach the GPU:

- ``device``: what ``selfsup pretrain`` does on a GPU (``data.device_cache``, engine/feed.py): the train split
  copied to the GPU once; every batch is indexed there (no per-batch copy);
- ``pinned``: the split stays on the host (``data.device_cache=false``); every batch is gathered straight into
  page-locked memory, so the copy is asynchronous and the loop's prefetch overlaps it with the step;
- ``pageable``: the split stays on the host and each batch is copied from pageable memory, a copy the host
  waits for (what the loop did before the device cache);
- ``shards``: the same images as JPEG files (quality 95) written into tar shards (``selfsup shard``'s writer),
  read by ``--workers`` DataLoader workers and decoded on the GPU (``data.decode=device``), the path of a
  collection too large for memory.

The first row trains ``--epochs`` epochs and is evaluated; the others run the same training (same config and
schedule) for ``--path-steps`` steps and report speed only. Every row reports images/s in steady state (from the
loop's own clock in ``metrics.jsonl``, from the log record at step ``--warmup-steps`` on: compilation and the
first steps are left out), the peak GPU memory of training (``torch.cuda.max_memory_allocated``), the wall clock,
the GPU, torch and the host CPU. Rows are appended as JSON lines to ``--results``; a Markdown table for
docs/benchmarks.md and the comparison with lightly's table are printed. A ``torch.compile`` that fails falls back
to eager with one line on stderr (engine/compile.py): read stderr before quoting a row as compiled.

Why 100 epochs by default: one epoch is 58 steps of 512 (29,696 images), 1.5 s at the goal speed of 20,000
images/s, so 100 epochs take 2.5 min; compilation (~1-2 min), the kNN pass and the two data-path rows add about
2 min. That stays under 8 minutes on one H100/H200 down to about 10,000 images/s; ``--set
train.time_limit_min=6`` caps a slower machine (the schedule then shrinks to fit: engine/budget.py).

lightly's published CIFAR-10 table (SimCLR, ResNet-18, batch 512, 200 epochs on one RTX A6000): 87.1 min, about
1,900 images/s with a kNN pass every epoch, kNN 0.848 at the best epoch. Goal: >= 20,000 images/s, i.e. 200 epochs
of CIFAR-10's 50,000 training images in under 8.71 min (a tenth of theirs).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from selfsup.api import pretrain  # noqa: E402
from selfsup.cli.config_args import config_from_args  # noqa: E402
from selfsup.config import RunConfig  # noqa: E402
from selfsup.data import DataError, ImageDataset, InMemorySplit  # noqa: E402
from selfsup.engine.build import load_data  # noqa: E402
from selfsup.engine.trainer import TrainingError  # noqa: E402
from selfsup.errors import ConfigError, RunDirError  # noqa: E402
from selfsup.evaluation.runner import evaluate_run  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10.npz"
LIGHTLY_IMAGES_PER_S, LIGHTLY_MIN_200, LIGHTLY_KNN = 1_900, 87.1, 0.848
LIGHTLY_EPOCH_IMAGES = 50_000  # their epochs are of CIFAR-10's full training set
GOAL_IMAGES_PER_S, GOAL_MIN_200 = 20_000, 8.71
SIZES = {  # key: (real run, --dry-run); a value given on the command line wins
    "width": (1.0, 0.125), "batch_size": (512, 16), "epochs": (100, 2), "log_every": (20, 1),
    "warmup_steps": (100, 2), "path_steps": (300, 4), "workers": (8, 1),
}


@dataclass
class PinnedSplit(InMemorySplit):
    """Host-resident images whose batches are gathered into page-locked memory (``pin``: on a CUDA machine)."""

    pin: bool = False

    def batches(self, batch_size, *, shuffle, generator=None, drop_last=False, start_batch=0):
        order = torch.randperm(self.num_images, generator=generator) if shuffle else torch.arange(self.num_images)
        for b in range(start_batch, self.num_batches(batch_size, drop_last)):  # InMemorySplit's order
            idx = order[b * batch_size : (b + 1) * batch_size]
            x = torch.empty((len(idx), *self.images.shape[1:]), dtype=torch.uint8, pin_memory=self.pin)
            torch.index_select(self.images, 0, idx, out=x)
            yield x, idx, (self.labels[idx] if self.labels is not None else None)


# --data-path: name -> (in-memory train split, device) -> the split the trainer iterates. Another way of feeding the
# GPU (a shard reader, once the project has one) is one more entry here and becomes a --data-path choice.
DATA_PATHS = {
    "device": lambda split, device: split,  # the engine copies it to the GPU itself (data.device_cache)
    "pinned": lambda split, device: PinnedSplit(split.images, split.labels, split.ids, pin=device.type == "cuda"),
    "pageable": lambda split, device: split,
    "shards": lambda split, device: split,  # not fed: the row reads a shard copy of the images (shard_copy)
}


def shard_copy(ds: ImageDataset, out: Path) -> Path:
    """The train split as JPEG files (quality 95, one folder per class) written into shards by ``selfsup shard``'s
    writer, once (kept in ``out``): the data path of a large collection, JPEGs decoded on the GPU."""
    from PIL import Image

    from selfsup.data.shard_write import write_shards

    shards = out / "shards"
    if (shards / "index.json").is_file():
        return shards
    images, labels = ds.train.images, ds.train.labels
    for i in range(images.shape[0]):
        cls = f"c{int(labels[i])}" if labels is not None else "all"
        p = out / "jpeg" / cls / f"{i:06d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        a = images[i].permute(1, 2, 0).numpy()
        Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a).save(p, quality=95)
    write_shards(out / "jpeg", shards)
    return shards


def data_paths(text: str) -> list[str]:
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    bad = [n for n in names if n not in DATA_PATHS]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"{bad[0] if bad else text!r} is not a data path; choose from "
                                         f"{', '.join(DATA_PATHS)} (comma-separated, the first is the full run)")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help=f"default {DEFAULT_DATA} (--dry-run: a synthetic 16-px set)")
    p.add_argument("--data-path", type=data_paths, default=list(DATA_PATHS), help="default device,pinned,pageable,shards")
    p.add_argument("--epochs", type=int, help="epochs of the first row (default 100; --dry-run 2)")
    p.add_argument("--batch-size", type=int, help="default 512 (--dry-run 16)")
    p.add_argument("--width", type=float, help="backbone width (default 1.0; --dry-run 0.125)")
    p.add_argument("--log-every", type=int, help="steps per metrics.jsonl record (default 20)")
    p.add_argument("--warmup-steps", type=int, help="steps left out of the steady-state images/s (default 100)")
    p.add_argument("--path-steps", type=int, help="steps of each row after the first (default 300)")
    p.add_argument("--no-compile", action="store_true", help="run eager (compile is on except in --dry-run)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, help="DataLoader workers of the shards row (default 8; --dry-run 1)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", type=Path, help="run directories (default runs/gpu-bench)")
    p.add_argument("--results", type=Path, help="JSON lines (default runs/gpu-results.jsonl)")
    p.add_argument("--dry-run", action="store_true",
                   help="CPU, tiny sizes (16 px, width 0.125, batch 16, a few steps), no compile: checks the code")
    a = p.parse_args(argv)
    for key, (real, dry) in SIZES.items():
        if getattr(a, key) is None:
            setattr(a, key, dry if a.dry_run else real)
    a.compile = not (a.no_compile or a.dry_run)
    a.out = a.out or ROOT / "runs" / ("gpu-bench-dry" if a.dry_run else "gpu-bench")
    a.results = a.results or ROOT / "runs" / ("gpu-dry-results.jsonl" if a.dry_run else "gpu-results.jsonl")
    return a


def synthetic_npz(path: Path, n: int = 64, size: int = 16, classes: int = 4) -> Path:
    """Dry-run data: RGB images whose class sets which quadrant holds a bright square (learnable in a few steps)."""
    rng = np.random.default_rng(0)

    def split(m: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(m) % classes
        x = rng.integers(0, 60, (m, size, size, 3), dtype=np.uint8)
        h = size // 2
        for i, c in enumerate(y):
            r, q = divmod(int(c) % 4, 2)
            x[i, r * h : (r + 1) * h, q * h : (q + 1) * h] += 150
        return x, y

    (x_train, y_train), (x_test, y_test) = split(n), split(n // 2)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def run_config(a: argparse.Namespace, data: str, device: torch.device, max_steps: int | None,
               path: str = "device") -> RunConfig:
    ns = argparse.Namespace(
        config=None, method="simclr", data=data, image_size=None, backbone="resnet18", width=a.width,
        cifar_stem=True, epochs=a.epochs, max_steps=max_steps, time_limit_min=None, batch_size=a.batch_size,
        lr=None, optimizer=None, seed=a.seed, device=device.type, compile=a.compile, knn_every=None,
        checkpoint_every=None, set=a.set)
    base = {"train": {"precision": "bf16", "channels_last": True, "log_every": a.log_every},
            "data": {"device_cache": path == "device"}}
    return config_from_args(ns, base=base)


def fed(ds: ImageDataset, path: str, device: torch.device) -> ImageDataset:
    """``ds`` with its train split fed through data path ``path`` (the test split stays as loaded)."""
    if not isinstance(ds.train, InMemorySplit):
        raise DataError(f"--data-path {path}: needs an in-memory dataset (a .npz file or a dataset name); "
                        f"{ds.name} streams from an image folder")
    return ImageDataset(ds.name, DATA_PATHS[path](ds.train, device), ds.test, ds.classes, ds.mean, ds.std)


def steady_images_per_s(metrics: Path, batch_size: int, warmup_steps: int) -> tuple[float, int]:
    """Images/s between the first log record at or after ``warmup_steps`` and the last one (their ``step`` and
    ``time_s``; each log step syncs the device, so the span is the device's time), and the step it starts at."""
    recs = [r for r in map(json.loads, filter(str.strip, metrics.read_text().splitlines()))
            if "time_s" in r and "step" in r]
    later = [r for r in recs if r["step"] >= warmup_steps]
    span = later if len(later) >= 2 else recs
    if len(span) < 2:
        return float(recs[-1]["images_per_s"]), 0
    first, last = span[0], span[-1]
    return (last["step"] - first["step"]) * batch_size / max(last["time_s"] - first["time_s"], 1e-9), first["step"]


def train_row(cfg: RunConfig, ds: ImageDataset, path: str, a: argparse.Namespace, device: torch.device,
              evaluate: bool) -> dict:
    """One row: ``cfg`` trained on ``ds`` fed through ``path``; kNN top-1 of the trained backbone if ``evaluate``."""
    run_dir = a.out / path
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    res = pretrain(cfg, run_dir, overwrite=True, data=None if path == "shards" else fed(ds, path, device))
    t1 = time.perf_counter()
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    ips, from_step = steady_images_per_s(run_dir / "metrics.jsonl", cfg.train.batch_size, a.warmup_steps)
    knn = evaluate_run(run_dir, ["knn"], device=str(device), baseline=False)["knn"] if evaluate else {}
    ran = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]  # the resolved config it trained with
    return {
        "bench": "gpu", "row": "full" if evaluate else "data path", "data_path": path, "method": "simclr",
        "backbone": f"resnet18 w{cfg.backbone.width:g}", "batch_size": ran["batch_size"],
        "precision": ran["precision"], "channels_last": ran["channels_last"], "compile": ran["compile"],
        "train_images": ds.train.num_images, "steps": res.steps, "epochs": round(res.epochs, 2),
        "stopped": res.stopped, "images_per_s": round(ips, 1), "steady_from_step": from_step,
        "images_per_s_with_warmup": round(res.images_per_s, 1),
        "peak_gpu_mem_gib": None if peak is None else round(peak, 2),
        "knn_top1": knn.get("top1"), "knn_top1_k1": knn.get("top1_k1"),
        "train_s": round(t1 - t0, 1), "eval_s": round(time.perf_counter() - t1, 1),
        "vs_lightly_images_per_s": round(ips / LIGHTLY_IMAGES_PER_S, 2),
        "projected_200_epochs_min": round(projected_min(ips), 2),
        "data": cfg.data.path, "overrides": a.set, "dry_run": a.dry_run,
    }


def projected_min(images_per_s: float) -> float:
    """Minutes for 200 epochs of CIFAR-10's 50,000 training images at ``images_per_s`` (training only)."""
    return 200 * LIGHTLY_EPOCH_IMAGES / max(images_per_s, 1e-9) / 60


def host_cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} CPUs)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} CPUs)"


def environment(device: torch.device) -> dict:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none (--dry-run on the CPU)"
    return {"gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda, "cpu": host_cpu(),
            "date": time.strftime("%Y-%m-%d %H:%M")}


def run_all(a: argparse.Namespace) -> list[dict]:
    device = torch.device("cpu" if a.dry_run else "cuda")
    a.out.mkdir(parents=True, exist_ok=True)
    a.results.parent.mkdir(parents=True, exist_ok=True)
    data = a.data or str(synthetic_npz(a.out / "dry-data.npz") if a.dry_run else DEFAULT_DATA)
    env = environment(device)
    rows: list[dict] = []
    ds: ImageDataset | None = None
    for i, path in enumerate(a.data_path):
        cfg = run_config(a, data, device, max_steps=None if i == 0 else a.path_steps, path=path)
        if ds is None:  # loaded once; every row feeds the same images
            ds = load_data(cfg)
        if path == "shards":  # the same images as JPEGs in shards, read by workers, decoded on the device
            shard_dir = shard_copy(ds, a.out / "shard-data")
            a_shards = argparse.Namespace(**{**vars(a), "set": [*a.set, "data.decode=device",
                                                                f"data.workers={a.workers}",
                                                                f"data.image_size={ds.image_size[0]}"]})
            cfg = run_config(a_shards, str(shard_dir), device, max_steps=None if i == 0 else a.path_steps, path=path)
        rows.append({**train_row(cfg, ds, path, a, device, evaluate=i == 0), **env})
        with open(a.results, "a") as f:  # each row as soon as it is measured: a later failure keeps it
            f.write(json.dumps(rows[-1]) + "\n")
    return rows


def pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def table(rows: list[dict]) -> str:
    """The Markdown table for docs/benchmarks.md, the setting and environment, and the comparison with lightly."""
    lines = ["| row | data path | images/s (steady) | × lightly's 1,900 | peak GPU memory | steps (epochs) | kNN top-1 "
             "| wall clock (train + kNN) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mem = "–" if r["peak_gpu_mem_gib"] is None else f"{r['peak_gpu_mem_gib']:.1f} GiB"
        lines.append(f"| {'full run' if r['row'] == 'full' else r['row']} | {r['data_path']} | "
                     f"{r['images_per_s']:,.0f} | {r['vs_lightly_images_per_s']:.1f}× | {mem} | "
                     f"{r['steps']} ({r['epochs']:g}) | {pct(r['knn_top1'])} | "
                     f"{r['train_s']:.0f} + {r['eval_s']:.0f} s |")
    r = rows[0]
    setting = (f"SimCLR, {r['backbone']} (CIFAR stem), batch {r['batch_size']}, {r['precision']}, channels_last "
               f"{r['channels_last']}, compile {r['compile']}, {r['train_images']:,} train images; GPU {r['gpu']}; "
               f"torch {r['torch']} (CUDA {r['cuda']}); host CPU {r['cpu']}; {r['date']}"
               + ("; DRY RUN (tiny sizes on the CPU: not a measurement)" if r["dry_run"] else ""))
    return "\n".join([*lines, "", setting, "", comparison(r)])


def comparison(r: dict) -> str:
    ips, minutes = r["images_per_s"], r["projected_200_epochs_min"]
    met = ips >= GOAL_IMAGES_PER_S and minutes < GOAL_MIN_200
    return (f"vs lightly's CIFAR-10 table (SimCLR, ResNet-18, batch 512, 200 epochs on one RTX A6000: "
            f"{LIGHTLY_MIN_200} min, ~{LIGHTLY_IMAGES_PER_S:,} images/s including a kNN pass per epoch; kNN "
            f"{LIGHTLY_KNN} at the best epoch): {ips / LIGHTLY_IMAGES_PER_S:.1f}× the images/s; 200 epochs of "
            f"{LIGHTLY_EPOCH_IMAGES:,} images would take {minutes:.1f} min here (the steady rate, no per-epoch kNN) "
            f"vs {LIGHTLY_MIN_200} min; kNN {pct(r['knn_top1'])} after {r['epochs']:g} epochs of "
            f"{r['train_images']:,} images. Goal (>= {GOAL_IMAGES_PER_S:,} images/s, 200 epochs in under "
            f"{GOAL_MIN_200} min): {'met' if met else 'not met'}.")


def main() -> None:
    a = parse_args()
    if not a.dry_run and not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device found; this benchmark needs one (or use --dry-run for a CPU "
              "check of the code)", file=sys.stderr)
        sys.exit(2)
    try:
        rows = run_all(a)
    except (ConfigError, DataError, RunDirError, TrainingError) as e:
        print(f"benchmarks/gpu.py: {e}", file=sys.stderr)
        sys.exit(2)
    print(table(rows))


if __name__ == "__main__":
    main()
