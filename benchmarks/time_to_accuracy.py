"""Time to accuracy: kNN along the run against wall-clock minutes, selfsup's recipe beside lightly's SimCLR.

    python benchmarks/time_to_accuracy.py --budget-min 10 --seeds 0,1,2
    python benchmarks/time_to_accuracy.py --budget-min 10 --seeds 0 --set data.image_size=24   # a lever
    python benchmarks/time_to_accuracy.py --dry-run                                            # seconds

Per seed, in one process and one sitting, two sides train for ``--budget-min`` minutes each on CIFAR-10
(``../shared/data/cifar10.npz``, 30k/10k), ResNet-18 width 0.25, CIFAR stem, batch 256, 2 CPU threads:

- ``selfsup``: ``--method`` (default simclr) at its defaults (plus ``--config`` / ``--set``), through the same
  door as ``selfsup pretrain`` (``time_limit_min`` sizes the schedule from the measured speed). A checkpoint
  every ``--probe-steps`` steps is kept (``train.keep_checkpoints=0``); its time is the run's own wall clock at
  that checkpoint plus the side's set-up (data loading, building, compile warm-up are all inside).
- ``lightly``: lightly's documented SimCLR (``SimCLRTransform`` with cj 0.5, no blur at 32 px, in 2 DataLoader
  workers; ``SimCLRProjectionHead``; ``NTXentLoss`` at its default temperature; SGD lr 0.06 · batch/256,
  momentum 0.9, wd 5e-4, eager), with the same backbone module and initial weights, and a cosine schedule sized
  to the budget from its own speed after 3 steps (as ours is). A snapshot of the backbone is taken every
  ``--probe-s`` seconds.

Every probe (checkpoint or snapshot) is evaluated afterwards (not counted in the times): kNN k=20, τ 0.07, on
frozen features of the 30k train / 10k test images, each side with its own normalisation. The target is
lightly's final kNN; selfsup's time to it is the first probe at or above it, linearly interpolated between
probes. Output: one JSON line per seed in ``--results`` (both curves, the times, the ratio) and a summary
(mean ± std over seeds) with the random-init kNN. lightly is the ``bench`` extra.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from selfsup.api import pretrain  # noqa: E402
from selfsup.backbones import build_backbone  # noqa: E402
from selfsup.checkpoints import list_checkpoints  # noqa: E402
from selfsup.cli.config_args import config_from_args  # noqa: E402
from selfsup.data import load_dataset  # noqa: E402
from selfsup.engine.checkpoint import load_checkpoint  # noqa: E402
from selfsup.evaluation.features import extract_features  # noqa: E402
from selfsup.evaluation.knn import knn_accuracy  # noqa: E402

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # lightly's default normalisation


def make_backbone(seed: int, width: float, size: int):
    torch.manual_seed(seed)
    return build_backbone("resnet18", in_channels=3, width=width, cifar_stem=True, image_size=size)


def knn_of(backbone, data, mean, std) -> float:
    dev = torch.device("cpu")
    ftr, ytr = extract_features(backbone, data.train, mean, std, dev, desc="train features")
    fte, yte = extract_features(backbone, data.test, mean, std, dev, desc="test features")
    return knn_accuracy(ftr, ytr, fte, yte, k=20, temperature=0.07)


# ----------------------------------------------------------------------------------------------------- selfsup
def run_selfsup(a, seed: int, out: Path) -> tuple[list[tuple[float, dict]], dict]:
    """Train; returns [(seconds from the side's start, backbone state)] and the run's summary."""
    t0 = time.perf_counter()
    ns = argparse.Namespace(
        config=a.config, method=a.method, data=a.data, image_size=None, backbone="resnet18", width=a.width,
        cifar_stem=True, epochs=200, max_steps=a.max_steps, time_limit_min=a.budget_min, batch_size=a.batch_size,
        lr=None, optimizer=None, seed=seed, device="cpu", compile=not a.no_compile, knn_every=None,
        checkpoint_every=a.probe_steps, set=[*a.set, "train.keep_checkpoints=0"],
    )
    cfg = config_from_args(ns)
    res = pretrain(cfg, out, overwrite=True, quiet=a.quiet)
    total = time.perf_counter() - t0
    probes = []
    for p in reversed(list_checkpoints(out)):
        ck = load_checkpoint(p)
        probes.append((float(ck["log"]["wall_s_total"]), _backbone_state(ck["method"])))
    setup = max(0.0, total - probes[-1][0]) if probes else 0.0  # loading, building: before the first step
    probes = [(t + setup, s) for t, s in probes]
    return probes, {"images_per_s": res.images_per_s, "epochs": res.epochs, "steps": res.steps, "setup_s": setup}


def _backbone_state(method_state: dict) -> dict:
    return {k[len("backbone."):]: v for k, v in method_state.items() if k.startswith("backbone.")}


# ----------------------------------------------------------------------------------------------------- lightly
def run_lightly(a, seed: int, x: np.ndarray) -> tuple[list[tuple[float, dict]], dict]:
    """lightly's documented SimCLR for the budget; returns [(seconds from the side's start, backbone state)]."""
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform
    from PIL import Image

    t0 = time.perf_counter()
    transform = SimCLRTransform(input_size=x.shape[1], cj_strength=0.5, min_scale=0.08, gaussian_blur=0.0)
    images = [Image.fromarray(im) for im in x]

    class Data(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, i: int):
            return transform(images[i])

    g = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(Data(), batch_size=a.batch_size, shuffle=True, drop_last=True,
                                         num_workers=a.workers, generator=g, persistent_workers=a.workers > 0)
    backbone = make_backbone(seed, a.width, x.shape[1])
    head = SimCLRProjectionHead(backbone.num_features, 512, 128)
    model = torch.nn.ModuleDict({"backbone": backbone, "head": head})
    base_lr = 0.06 * a.batch_size / 256
    opt = torch.optim.SGD(model.parameters(), lr=base_lr, momentum=0.9, weight_decay=5e-4)
    criterion = NTXentLoss()
    budget = a.budget_min * 60
    probes, step, total_steps, next_probe, t_first = [], 0, None, a.probe_s, None
    while True:
        for views in loader:  # the transform gives [view0, view1] per image; collated, one batch per view
            now = time.perf_counter() - t0
            if now >= budget or (a.max_steps and step >= a.max_steps):
                probes.append((now, copy.deepcopy(backbone.state_dict())))
                return probes, {"images_per_s": step * a.batch_size / max(now - (t_first or 0), 1e-9),
                                "steps": step, "epochs": step * a.batch_size / len(images)}
            if step == 3:  # size the cosine to the budget from the speed so far (as selfsup's budget does)
                rate = 3 / max(now - t_first, 1e-9)
                total_steps = max(step + 1, int(step + rate * (budget - now)))
            lr = base_lr if total_steps is None else base_lr * 0.5 * (1 + math.cos(math.pi * min(step / total_steps, 1)))
            for grp in opt.param_groups:
                grp["lr"] = lr
            z0, z1 = head(backbone(views[0])), head(backbone(views[1]))
            loss = criterion(z0, z1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            t_first = t_first if t_first is not None else time.perf_counter() - t0
            if time.perf_counter() - t0 >= next_probe:
                probes.append((time.perf_counter() - t0, copy.deepcopy(backbone.state_dict())))
                next_probe += a.probe_s


# ----------------------------------------------------------------------------------------------------- analysis
def time_to(target: float, curve: list[tuple[float, float]]) -> float | None:
    """The first time the curve reaches ``target``, linearly interpolated between probes (None: never)."""
    prev_t, prev_v = 0.0, -1.0
    for t, v in curve:
        if v >= target:
            if prev_v < 0 or v == prev_v:
                return t
            return prev_t + (t - prev_t) * (target - prev_v) / (v - prev_v)
        prev_t, prev_v = t, v
    return None


def evaluate(probes, data, mean, std, width: float, max_probes: int) -> list[tuple[float, float]]:
    if len(probes) > max_probes:  # evenly spaced, always the last one
        keep = sorted({round(i * (len(probes) - 1) / (max_probes - 1)) for i in range(max_probes)})
        probes = [probes[i] for i in keep]
    curve = []
    for t, state in probes:
        bb = make_backbone(0, width, data.image_size[0])
        bb.load_state_dict(state)
        curve.append((round(t, 1), round(knn_of(bb, data, mean, std), 4)))
    return curve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="simclr")
    p.add_argument("--config", default=None, help="a preset (e.g. speedrun-cpu) or YAML for the selfsup side")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10.npz"))
    p.add_argument("--budget-min", type=float, default=10.0)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2, help="lightly's DataLoader workers")
    p.add_argument("--probe-steps", type=int, default=20, help="selfsup checkpoint every N steps")
    p.add_argument("--probe-s", type=float, default=60.0, help="lightly snapshot every N seconds")
    p.add_argument("--max-probes", type=int, default=12, help="probes evaluated per side (evenly spaced)")
    p.add_argument("--max-steps", type=int, default=None, help="cap both sides' steps (dry runs)")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--sides", default="selfsup,lightly")
    p.add_argument("--dry-run", action="store_true", help="a few steps on a tiny subset, to check the script runs")
    p.add_argument("--out", default=str(ROOT / "runs" / "tta"))
    p.add_argument("--results", default=str(ROOT / "runs" / "tta-results.jsonl"))
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    if a.dry_run:
        a.seeds, a.max_steps, a.probe_steps, a.probe_s, a.batch_size, a.no_compile = "0", 4, 2, 0.0, 16, True
        a.width, a.workers, a.max_probes, a.quiet = 0.125, 0, 3, True
    data = load_dataset(a.data)
    with np.load(a.data) as z:
        x = z["x_train"]
    if a.dry_run:  # a tiny labelled subset of whatever data was given (the test suite passes a small .npz)
        x = x[:64]
    sides = a.sides.split(",")
    baseline = knn_of(make_backbone(0, a.width, data.image_size[0]), data, data.mean, data.std)
    rows = []
    for seed in (int(s) for s in a.seeds.split(",")):
        row: dict = {"seed": seed, "budget_min": a.budget_min, "method": a.method, "config": a.config,
                     "set": a.set, "baseline_knn": round(baseline, 4)}
        if "selfsup" in sides:
            probes, info = run_selfsup(a, seed, Path(a.out) / f"selfsup-seed{seed}")
            row["selfsup"] = {**info, "curve": evaluate(probes, data, data.mean, data.std, a.width, a.max_probes)}
        if "lightly" in sides:
            probes, info = run_lightly(a, seed, x)
            row["lightly"] = {**info, "curve": evaluate(probes, data, IMAGENET_MEAN, IMAGENET_STD, a.width,
                                                          a.max_probes)}
        if "selfsup" in row and "lightly" in row:
            target = row["lightly"]["curve"][-1][1]
            t_ours, t_theirs = time_to(target, row["selfsup"]["curve"]), row["lightly"]["curve"][-1][0]
            row.update(target_knn=target, selfsup_time_to_target_s=t_ours, lightly_time_s=t_theirs,
                       ratio=round(t_theirs / t_ours, 2) if t_ours else None)
        row.update(cpu=platform.processor() or platform.machine(), torch=torch.__version__,
                   threads=torch.get_num_threads(), date=time.strftime("%Y-%m-%d %H:%M"))
        rows.append(row)
        print(json.dumps(row), flush=True)
        Path(a.results).parent.mkdir(parents=True, exist_ok=True)
        with open(a.results, "a") as f:
            f.write(json.dumps(row) + "\n")
    print(summary(rows))


def summary(rows: list[dict]) -> str:
    def ms(vals: list[float]) -> str:
        vals = [v for v in vals if v is not None]
        if not vals:
            return "–"
        return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else f"{vals[0]:.3f}"

    lines = [f"seeds: {len(rows)}, random-init kNN {rows[0]['baseline_knn']:.3f}"]
    for side in ("selfsup", "lightly"):
        if side in rows[0]:
            lines.append(f"{side}: final kNN {ms([r[side]['curve'][-1][1] for r in rows])}, "
                         f"images/s {ms([r[side]['images_per_s'] for r in rows])}")
    if "ratio" in rows[0]:
        lines.append(f"time-to-accuracy ratio (lightly's budget ÷ selfsup's time to lightly's final kNN): "
                     f"{ms([r['ratio'] for r in rows])}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
