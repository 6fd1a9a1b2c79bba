"""One layer-wise probe figure across runs (Misra & van der Maaten 2020's PIRL vs Jigsaw): top-1 of a linear probe per backbone
stage for every run, with the random-init baseline, so pretext and contrastive curves share one axis.

    python benchmarks/layerwise.py runs/b10-rotation runs/b10-jigsaw \
        --values simclr=stem:36.0,layer1:36.8,layer2:44.5,layer3:50.5,layer4:53.4 \
        --out docs/figures/layerwise.png

Each RUN needs ``eval.json`` with a ``layers`` result (``selfsup eval RUN --protocol layers``). ``--values`` adds a
curve from numbers measured earlier (e.g. a table in docs/benchmarks.md) when its run directory is gone; the
figure's legend marks such curves. Also writes ``<out>.md``: the same numbers as a Markdown table.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def _curve(res: dict, stages: list[str]) -> list[float]:
    return [100 * res["metrics"][f"top1@{s}"]["mean"] for s in stages]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", help="run directories with eval.json holding a 'layers' result")
    p.add_argument("--values", action="append", default=[], metavar="NAME=STAGE:TOP1,...",
                   help="a curve from earlier measurements, top-1 in percent")
    p.add_argument("--out", required=True, help="PNG path")
    a = p.parse_args()

    curves: dict[str, dict[str, float]] = {}
    baseline: dict[str, float] | None = None
    for run in a.runs:
        path = Path(run) / "eval.json"
        if not path.is_file():
            raise SystemExit(f"{path}: missing; run `selfsup eval {run} --protocol layers` first")
        ev = json.loads(path.read_text())
        if "layers" not in ev:
            raise SystemExit(f"{path}: no 'layers' result; run `selfsup eval {run} --protocol layers`")
        stages = ev["layers"]["params"]["stages"]
        name = ev.get("protocol", {}).get("method") or Path(run).name
        if name in curves:  # two runs of one method: tell them apart by directory
            name = f"{name} ({Path(run).name})"
        curves[name] = dict(zip(stages, _curve(ev["layers"], stages)))
        base = (ev.get("baseline") or {}).get("layers")
        if base is not None and baseline is None:
            baseline = dict(zip(stages, _curve(base, stages)))
    for spec in a.values:
        name, _, pairs = spec.partition("=")
        try:
            curves[f"{name} (earlier run)"] = {s: float(v) for s, v in (kv.split(":") for kv in pairs.split(","))}
        except ValueError:
            raise SystemExit(f"--values {spec!r}: expected NAME=STAGE:TOP1,STAGE:TOP1,...") from None
    if not curves:
        raise SystemExit("nothing to plot: give run directories or --values")

    stages = list(next(iter(curves.values())))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, c in curves.items():
        ax.plot(range(len(stages)), [c.get(s, float("nan")) for s in stages], "o-", label=name)
    if baseline:
        ax.plot(range(len(stages)), [baseline.get(s, float("nan")) for s in stages], "k--", alpha=0.6,
                label="random init")
    ax.set_xticks(range(len(stages)), stages)
    ax.set_xlabel("backbone stage")
    ax.set_ylabel("linear probe top-1 (%)")
    ax.set_title("Layer-wise linear probe, CIFAR-10 (10-minute pretraining)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)

    rows = ["| run | " + " | ".join(stages) + " |", "|---|" + "---|" * len(stages)]
    for name, c in list(curves.items()) + ([("random init", baseline)] if baseline else []):
        rows.append(f"| {name} | " + " | ".join(f"{c[s]:.1f}" if s in c else "" for s in stages) + " |")
    out.with_suffix(".md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
