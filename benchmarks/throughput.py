"""Pretraining throughput: images/s, the share of the CPU's fp32 matmul peak reached inside the step, and the
share of step time spent on augmentation.

    python benchmarks/throughput.py                       # SimCLR, ResNet-18 w0.25, CIFAR stem, batch 256, 32 px
    python benchmarks/throughput.py --quick               # fewer steps

Variants (eager, channels_last, compile, compile + channels_last) are measured alternately in one process,
``--repeats`` rounds of ``--steps`` steps each, and medians are reported. FLOPs of one training step (forward
and backward of backbone + head + loss over both views) are counted with ``torch.utils.flop_counter``; the
reference is a plain fp32 matmul (best of 1024², 2048², 3072²) measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from selfsup.backbones import build_backbone  # noqa: E402
from selfsup.methods import ViewBatch, build_method  # noqa: E402


def matmul_gflops(sizes: tuple[int, ...] = (1024, 2048, 3072), reps: int = 5, dtype=torch.float32) -> float:
    """The best median GFLOP/s of a square matmul over a few sizes (a conservative, i.e. high, peak)."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        for _ in range(2):
            a @ b
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        best = max(best, 2 * n**3 / statistics.median(times) / 1e9)
    return best


def step_flops(method, views) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        out = method(ViewBatch(views))
        out.loss.backward()
    method.zero_grad(set_to_none=True)
    return float(fc.get_total_flops())


def make(channels_last: bool, compile_: bool, args):
    torch.manual_seed(0)
    bb = build_backbone(args.backbone, width=args.width, cifar_stem=True)
    m = build_method(args.method, bb)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    views = m.make_views(32, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    fn = torch.compile(m) if compile_ else m
    return m, fn, views, opt


def run_steps(m, fn, views, opt, x, gen, steps: int, channels_last: bool, bf16: bool = False) -> tuple[float, float]:
    """(seconds per step, seconds of augmentation per step); ``bf16``: forward under CPU bf16 autocast."""
    aug_t = 0.0
    t0 = time.perf_counter()
    for _ in range(steps):
        ta = time.perf_counter()
        vs = views(x, gen)
        if channels_last:
            vs = [v.contiguous(memory_format=torch.channels_last) for v in vs]
        aug_t += time.perf_counter() - ta
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = fn(ViewBatch(vs))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps, aug_t / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="simclr")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--variants", default="eager,channels_last,compile,compile+channels_last",
                   help="comma-separated; a '+bf16' suffix adds CPU bf16 autocast, e.g. compile+channels_last+bf16")
    a = p.parse_args()
    if a.quick:
        a.steps, a.repeats = 5, 3
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (a.batch_size, 3, 32, 32), dtype=torch.uint8, generator=g)
    variants = {}
    for name in a.variants.split(","):
        cl, comp, bf = "channels_last" in name, "compile" in name, "bf16" in name
        m, fn, views, opt = make(cl, comp, a)
        run_steps(m, fn, views, opt, x, g, 2, cl, bf)  # warm-up / compilation
        variants[name] = (m, fn, views, opt, cl, bf)
    m0, _, v0, _, _, _ = next(iter(variants.values()))
    flops = step_flops(m0, v0(x, g))
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    peaks, bf_peaks = [], []
    for r in range(a.repeats):
        peaks.append(matmul_gflops())
        if any(v[5] for v in variants.values()):
            bf_peaks.append(matmul_gflops(dtype=torch.bfloat16))
        for name, (m, fn, views, opt, cl, bf) in variants.items():
            results[name].append(run_steps(m, fn, views, opt, x, g, a.steps, cl, bf))
    peak = statistics.median(peaks)
    print(f"fp32 matmul peak (median of {a.repeats}): {peak:.0f} GFLOP/s; one step = {flops / 1e9:.1f} GFLOP "
          f"({a.method}, {a.backbone} w{a.width}, batch {a.batch_size}, 2 views, threads {torch.get_num_threads()})")
    summary = {"peak_gflops": round(peak, 1), "step_gflop": round(flops / 1e9, 2), "variants": {}}
    if bf_peaks:  # bf16 variants are still shared against the fp32 peak: one yardstick for every row
        summary["bf16_peak_gflops"] = round(statistics.median(bf_peaks), 1)
        print(f"bf16 matmul peak (median of {a.repeats}): {summary['bf16_peak_gflops']:.0f} GFLOP/s "
              f"(CPU capability {torch.backends.cpu.get_cpu_capability()})")
    for name, rs in results.items():
        step_s = statistics.median(r[0] for r in rs)
        aug_s = statistics.median(r[1] for r in rs)
        ips = a.batch_size / step_s
        share = flops / step_s / 1e9 / peak
        summary["variants"][name] = {"images_per_s": round(ips, 1), "peak_share": round(share, 3),
                                     "aug_share": round(aug_s / step_s, 3)}
        print(f"{name:<24} {ips:7.1f} images/s  {100 * share:5.1f}% of matmul peak  "
              f"augmentation {100 * aug_s / step_s:4.1f}% of step")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
