"""Does choosing what to label beat a random stratified subset? The semi protocol on selected images, measured.

    python benchmarks/selection_cifar10.py runs/bench-simclr --out runs/selection

Given a pretrained run (``benchmarks/pretrain_cifar10.py`` writes a SimCLR CIFAR-10 one), this embeds the train
split with the run's evaluated encoder (the frozen, pooled features the semi protocol fits its probe on, written
to ``OUT/embeddings.npz`` in the layout of ``selfsup embed``: ``embeddings``, ``ids`` = ``train/<row>``, ``labels``),
selects 1 % and 0.5 % of it with every strategy of ``selfsup select`` (the selection files are kept in ``OUT``),
and runs the semi protocol (``semi.mode=linear`` by default: the cached-feature L-BFGS probe, tested on the full
test split) on each selection and on a random stratified subset of the same fraction, over ``--seeds`` seeds.
Seed i is the selection's seed (k-means init, random draw; k-center is deterministic) and the probe's, and the
random stratified draw's for the baseline. Writes ``OUT/selection.md`` (mean ± std, the difference to random and
whether it is larger than both spreads) and ``OUT/selection.json``.

The features are computed once and the protocol is called with the selection's indices, as ``selfsup eval RUN
--protocol semi --selection FILE`` does; ``--check-cli`` also runs that command for the first selection and
reports whether it gives the same number (not with ``--subset``). ``--subset N`` keeps the first N train images (and N/2 test images):
a smoke test, not a measurement.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from selfsup.data import load_dataset
from selfsup.data.base import ImageDataset, InMemorySplit
from selfsup.data.ids import indices_of, read_selection
from selfsup.engine.build import resolve_device
from selfsup.engine.run_access import load_run_checkpoint, rebuild_method, saved_config
from selfsup.evaluation.protocols import EvalContext
from selfsup.evaluation.semi import semi_protocol
from selfsup.evaluation.transfer import adapt_channels
from selfsup.use.select import STRATEGIES, select

ROOT = Path(__file__).resolve().parents[1]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="pretrained run directory")
    p.add_argument("--data", help="labelled data (default: the run's own pretraining data)")
    p.add_argument("--fractions", default="0.01,0.005", help="label budgets as fractions of the train split")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--mode", default="linear", choices=["linear", "finetune"], help="semi.mode")
    p.add_argument("--epochs", type=int, help="semi.mode=finetune: epochs")
    p.add_argument("--subset", type=int, help="keep the first N train images (smoke tests)")
    p.add_argument("--device", default="auto")
    p.add_argument("--check-cli", action="store_true", help="also run selfsup eval --selection on one selection")
    p.add_argument("--out", default=str(ROOT / "runs" / "selection"))
    return p.parse_args()


def load(a: argparse.Namespace) -> tuple[torch.nn.Module, ImageDataset, str, int]:
    """The run's evaluated encoder, its labelled data (channels converted as eval does), data spec, run seed."""
    ckpt_path, ckpt = load_run_checkpoint(a.run)
    cfg = saved_config(ckpt, ckpt_path)
    encoder = rebuild_method(ckpt, ckpt_path).eval_backbone()
    spec = a.data or cfg.data.path
    ds = load_dataset(spec, int(ckpt["data"]["image_size"][0]) if ckpt.get("data") else cfg.data.image_size,
                      test_path=None if a.data else cfg.data.test_path)
    if a.subset:
        assert isinstance(ds.train, InMemorySplit) and isinstance(ds.test, InMemorySplit), "--subset: in-memory data"
        n_test = max(2, a.subset // 2)
        ds = ImageDataset(f"{ds.name}[:{a.subset}]", ds.train.subset(torch.arange(min(a.subset, ds.train.num_images))),
                          ds.test.subset(torch.arange(min(n_test, ds.test.num_images))), ds.classes)
    ds, _ = adapt_channels(ds, int(encoder.in_channels))
    return encoder, ds, spec, cfg.train.seed


def write_embeddings(ctx: EvalContext, out: Path) -> Path:
    ftr, ytr, _, _ = ctx.features()
    path = out / "embeddings.npz"
    np.savez(path, embeddings=ftr.numpy().astype(np.float32), ids=np.array([f"train/{i}" for i in range(len(ftr))]),
             labels=ytr.numpy())
    return path


def semi_top1(ctx: EvalContext, seed: int, *, selection: torch.Tensor | None = None, fraction: float | None = None,
              name: str = "") -> tuple[float, int]:
    ctx.seed, ctx.selection, ctx.selection_name = seed, selection, name
    ctx.fractions = (fraction,) if fraction is not None else None
    r = semi_protocol(ctx)
    return float(r["top1"]), int(next(iter(r["labelled_images"].values())))


def mean_std(v: list[float]) -> tuple[float, float]:
    return statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0


def verdict(m: float, s: float, rm: float, rs: float) -> str:
    d = m - rm
    if d <= 0:
        return "no: not better than random"
    return "yes" if d > max(s, rs) else "within the spread"


def table(results: dict, fractions: list[float], strategies: list[str]) -> str:
    lines = ["| strategy | " + " | ".join(f"{100 * f:g} % labels: top-1 | Δ vs random | beats random?"
                                         for f in fractions) + " |",
             "|---|" + "---|---|---|" * len(fractions)]
    rows = ["random stratified", *strategies]
    for s in rows:
        cells = []
        for f in fractions:
            r, base = results[str(f)][s], results[str(f)]["random stratified"]
            cell = f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f} (n={r['labels']})"
            if s == "random stratified":
                cells += [cell, "", ""]
            else:
                cells += [cell, f"{100 * (r['mean'] - base['mean']):+.1f}",
                          verdict(r["mean"], r["std"], base["mean"], base["std"])]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    a = parse()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    fractions = [float(f) for f in a.fractions.split(",")]
    strategies = [s for s in a.strategies.split(",") if s]
    t0 = time.perf_counter()
    encoder, ds, spec, run_seed = load(a)
    dev = resolve_device(a.device)
    options = {"semi.mode": a.mode, **({"semi.epochs": a.epochs} if a.epochs else {})}
    ctx = EvalContext(encoder.to(dev), ds, dev, options=options, protocol="semi", epochs=a.epochs)
    print(f"selection: embedding {ds.train.num_images} train images of {spec} with {a.run}", flush=True)
    emb = write_embeddings(ctx, out)
    n = ds.train.num_images
    results: dict = {}
    for f in fractions:
        budget = max(1, round(f * n))
        res: dict = {}
        tops = [semi_top1(ctx, run_seed + i, fraction=f) for i in range(a.seeds)]
        m, s = mean_std([t for t, _ in tops])
        res["random stratified"] = {"mean": m, "std": s, "values": [t for t, _ in tops], "labels": tops[0][1]}
        print(f"selection: {100 * f:g} % ({budget} labels) random stratified {100 * m:.1f} ± {100 * s:.1f}", flush=True)
        for strat in strategies:
            vals = []
            for i in range(a.seeds):
                file = out / f"select-{strat}-{f:g}-seed{i}.txt"
                ids = select(emb, budget, strat, file, seed=i, quiet=True)
                idx = indices_of(read_selection(file), ds.train, where=str(file), data=spec)
                assert len(idx) == len(ids) == budget
                vals.append(semi_top1(ctx, run_seed + i, selection=idx, name=str(file))[0])
            m, s = mean_std(vals)
            res[strat] = {"mean": m, "std": s, "values": vals, "labels": budget}
            print(f"selection: {100 * f:g} % {strat} {100 * m:.1f} ± {100 * s:.1f}", flush=True)
        results[str(f)] = res
    check = cli_check(a, out, fractions[0], strategies[0], results) if a.check_cli and not a.subset else None
    md = table(results, fractions, strategies)
    meta = {"run": str(a.run), "data": spec, "train_images": n, "test_images": ds.test.num_images if ds.test else 0,
            "mode": a.mode, "seeds": a.seeds, "subset": a.subset, "cli_check": check,
            "torch": torch.__version__, "device": str(dev), "machine": platform.machine(),
            "seconds": round(time.perf_counter() - t0, 1), "date": time.strftime("%Y-%m-%d %H:%M")}
    (out / "selection.json").write_text(json.dumps({"results": results, **meta}, indent=2) + "\n")
    note = (f"semi protocol (mode {a.mode}), {n} train images of {spec}, run {a.run}, {a.seeds} seeds, "
            f"mean ± std; {meta['device']}, {meta['seconds']} s")
    (out / "selection.md").write_text(md + "\n\n" + note + "\n")
    print(md + "\n\n" + note)


def cli_check(a: argparse.Namespace, out: Path, f: float, strat: str, results: dict) -> dict:
    """``selfsup eval RUN --protocol semi --selection FILE`` on the seed-0 selection: the same number?"""
    import shutil
    import tempfile

    from selfsup.evaluation.runner import evaluate_run

    file = out / f"select-{strat}-{f:g}-seed0.txt"
    with tempfile.TemporaryDirectory() as tmp:  # eval writes eval.json into the run: work on a copy
        run = Path(tmp) / "run"
        shutil.copytree(a.run, run)
        r = evaluate_run(run, ["semi"], eval_data=a.data, device=a.device, baseline=False, selection=file,
                         options={"semi.mode": a.mode}, quiet=True)
    got, want = r["semi"]["top1"], results[str(f)][strat]["values"][0]
    print(f"selection: selfsup eval --selection {file.name}: {100 * got:.2f} (here {100 * want:.2f})", flush=True)
    return {"file": file.name, "eval_top1": got, "benchmark_top1": want, "same": abs(got - want) < 1e-6}


if __name__ == "__main__":
    main()
