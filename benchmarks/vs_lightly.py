"""SimCLR pretraining throughput: lightly's documented pipeline against selfsup's, side by side in one run.

    python benchmarks/vs_lightly.py                       # the measurement (quiet machine, ~15 min)
    python benchmarks/vs_lightly.py --quick               # a check that both sides run (a few minutes)
    python benchmarks/vs_lightly.py --data PATH.npz       # default: $SELFSUP_SHARED_DATA or ../shared/data

Both sides train the SAME backbone module (selfsup's ResNet-18, width 0.25, CIFAR stem; one instance each,
same initial weights), SimCLR with a 512-128 projection head, batch 256, 32 px CIFAR-10 images, SGD
(lr 0.06, momentum 0.9, wd 5e-4), and the same augmentation settings (crop 0.08-1, flip, colour jitter of
strength 0.5 with p 0.8, grayscale 0.2, no blur at 32 px: selfsup's ``simclr`` preset):

- A, lightly (its documented recipe): ``CIFAR-10 x_train`` as PIL images, ``lightly.transforms.SimCLRTransform``
  in 2 DataLoader workers, ``lightly.models.modules.SimCLRProjectionHead``, ``lightly.loss.NTXentLoss``; eager.
- B, selfsup: the uint8 array in memory, batched per-sample augmentation in the main process
  (``method.make_views``), channels_last, the step compiled (``torch.compile``, eager fallback).

Rounds alternate A B A B; each round restarts A's workers, runs 2 untimed steps (worker start-up and the
prefetch queue filling), then times ``--steps`` steps; B runs 2 untimed steps then the same count. The result
is the medians of images/s over rounds, and, printed last, ``ratio <B images/s ÷ A images/s>``.
lightly is only in the ``bench`` extra: ``pip install 'selfsup[bench]'``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from selfsup.backbones import build_backbone  # noqa: E402
from selfsup.engine.compile import SafeCompiled  # noqa: E402
from selfsup.methods.base import ViewBatch, build_method  # noqa: E402

BATCH, SIZE, WIDTH = 256, 32, 0.25
HIDDEN, OUT_DIM, TEMP = 512, 128, 0.5
LR, MOMENTUM, WD = 0.06, 0.9, 5e-4


def default_data() -> Path:
    shared = os.environ.get("SELFSUP_SHARED_DATA")
    return Path(shared) / "cifar10.npz" if shared else ROOT.parent / "shared" / "data" / "cifar10.npz"


def backbone(seed: int = 0):
    torch.manual_seed(seed)
    return build_backbone("resnet18", in_channels=3, width=WIDTH, cifar_stem=True, image_size=SIZE)


def sgd(module: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(module.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)


class LightlySide:
    """lightly's SimCLR example, with selfsup's backbone module."""

    def __init__(self, x: np.ndarray, workers: int) -> None:
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead
        from lightly.transforms import SimCLRTransform
        from PIL import Image

        transform = SimCLRTransform(input_size=SIZE, cj_strength=0.5, min_scale=0.08, gaussian_blur=0.0)
        images = [Image.fromarray(a) for a in x]

        class Data(torch.utils.data.Dataset):
            def __len__(self) -> int:
                return len(images)

            def __getitem__(self, i: int):
                return transform(images[i])  # [view0, view1]

        self.loader = torch.utils.data.DataLoader(Data(), batch_size=BATCH, shuffle=True, drop_last=True,
                                                  num_workers=workers)
        self.backbone = backbone()
        self.head = SimCLRProjectionHead(self.backbone.num_features, HIDDEN, OUT_DIM)
        self.model = torch.nn.ModuleDict({"backbone": self.backbone, "head": self.head})
        self.criterion = NTXentLoss(temperature=TEMP)
        self.opt = sgd(self.model)

    def step(self, views) -> None:
        x0, x1 = views
        z0 = self.head(self.backbone(x0))
        z1 = self.head(self.backbone(x1))
        loss = self.criterion(z0, z1)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def round(self, steps: int, warmup: int = 2) -> float:
        it = iter(self.loader)  # fresh workers each round: nothing prefetched while the other side ran
        for _ in range(warmup):
            self.step(next(it))
        t = time.perf_counter()
        for _ in range(steps):
            self.step(next(it))
        dt = time.perf_counter() - t
        del it
        return steps * BATCH / dt


class SelfsupSide:
    """selfsup's pipeline: in-memory uint8, batched on-device augmentation, compiled step."""

    def __init__(self, x: np.ndarray, compile_: bool, bf16: bool = False) -> None:
        self.bf16 = bf16  # CPU bf16 autocast around the forward (train.precision=bf16)
        self.x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32) uint8
        xf = self.x[:5000].float() / 255
        mean, std = xf.mean(dim=(0, 2, 3)).tolist(), xf.std(dim=(0, 2, 3)).tolist()
        self.method = build_method("simclr", backbone(), {"proj_hidden_dim": HIDDEN, "proj_dim": OUT_DIM,
                                                          "temperature": TEMP})
        self.method.to(memory_format=torch.channels_last)
        self.views = self.method.make_views(SIZE, mean, std)
        self.fn = SafeCompiled(self.method) if compile_ else self.method
        self.opt = sgd(self.method)
        self.gen = torch.Generator().manual_seed(1)
        self.order = torch.randperm(len(self.x), generator=self.gen)
        self.pos = 0

    def step(self) -> None:
        if self.pos + BATCH > len(self.order):
            self.order, self.pos = torch.randperm(len(self.x), generator=self.gen), 0
        idx = self.order[self.pos : self.pos + BATCH]
        self.pos += BATCH
        vs = [v.contiguous(memory_format=torch.channels_last) for v in self.views(self.x[idx], self.gen)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            out = self.fn(ViewBatch(vs, idx))
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        self.opt.step()

    def round(self, steps: int, warmup: int = 2) -> float:
        for _ in range(warmup):
            self.step()
        t = time.perf_counter()
        for _ in range(steps):
            self.step()
        return steps * BATCH / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None, help="an .npz with x_train (N, 32, 32, 3) uint8")
    p.add_argument("--rounds", type=int, default=4, help="A B rounds (medians over rounds)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per side per round")
    p.add_argument("--workers", type=int, default=2, help="lightly's DataLoader workers")
    p.add_argument("--images", type=int, default=None, help="use the first N training images")
    p.add_argument("--no-compile", action="store_true", help="selfsup eager (for comparison)")
    p.add_argument("--quick", action="store_true", help="2 rounds of 4 steps on 4096 images (a few minutes)")
    p.add_argument("--precision", default="fp32",
                   help="selfsup side(s), comma-separated: fp32 and/or bf16 (CPU autocast); the last line's ratio "
                        "is the first one's")
    a = p.parse_args()
    precisions = [q.strip() for q in a.precision.split(",") if q.strip()]
    if not precisions or any(q not in ("fp32", "bf16") for q in precisions):
        raise SystemExit(f"--precision: fp32 and/or bf16, got {a.precision!r}")
    if a.quick:
        a.rounds, a.steps, a.images = 2, 4, a.images or 4096
    try:
        import lightly  # noqa: F401
    except ImportError:
        print("lightly is not installed: pip install 'selfsup[bench]' (lightly is only a benchmark dependency)",
              file=sys.stderr)
        raise SystemExit(2)
    path = a.data or default_data()
    if not path.exists():
        raise SystemExit(f"--data {path}: no such file (CIFAR-10 as .npz with x_train)")
    x = np.load(path)["x_train"]
    if x.ndim != 4 or x.shape[1:] != (32, 32, 3) or x.dtype != np.uint8:
        raise SystemExit(f"--data {path}: x_train must be (N, 32, 32, 3) uint8, got {x.shape} {x.dtype}")
    if a.images:
        x = x[: a.images]
    import lightly as _l

    print(f"lightly {_l.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{len(x)} images, batch {BATCH}, resnet18 w{WIDTH} CIFAR stem", flush=True)
    A = LightlySide(x, a.workers)
    sides = {q: SelfsupSide(x, not a.no_compile, bf16=q == "bf16") for q in precisions}
    for q, B in sides.items():
        t = time.perf_counter()
        B.round(1, warmup=1)  # compilation, outside the timed rounds
        print(f"selfsup {q} warm-up (compile) {time.perf_counter() - t:.0f} s", flush=True)
    ra: list[float] = []
    rb: dict[str, list[float]] = {q: [] for q in sides}
    for r in range(a.rounds):
        ra.append(A.round(a.steps))
        for q, B in sides.items():
            rb[q].append(B.round(a.steps))
        shown = ", ".join(f"selfsup {q} {v[-1]:.1f}" for q, v in rb.items())
        print(f"round {r + 1} images/s: lightly {ra[-1]:.1f}, {shown}", flush=True)
    ma = statistics.median(ra)
    mb = {q: statistics.median(v) for q, v in rb.items()}
    print(f"median images/s: lightly {ma:.1f}, " + ", ".join(f"selfsup {q} {v:.1f}" for q, v in mb.items()))
    for q in precisions[1:]:
        print(f"ratio {q} {mb[q] / ma:.2f}")
    print(f"ratio {mb[precisions[0]] / ma:.2f}")


if __name__ == "__main__":
    main()
