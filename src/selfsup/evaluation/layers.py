"""Layer-wise linear probes: one cached-feature linear probe per named backbone stage (Misra & van der
Maaten 2020: Jigsaw's features peak mid-network, PIRL's keep rising). Stage outputs are average-pooled over space (or tokens) to (N, C_stage).

Shows where in the network the representation becomes linearly separable, and whether the pretext task
specialised the last layers (accuracy dropping at the end). ``layers.png`` plots trained vs random init.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..registry import EVALUATORS
from .linear import linear_probe
from .protocols import EvalContext


def plot_layers(result: dict[str, Any], path: Path) -> Path | None:
    """Top-1 per stage for the trained backbone and the random-init baseline; matplotlib imported here."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the viz extra is optional
        return None
    trained = result.get("layers")
    if not trained:
        return None
    stages = trained["params"]["stages"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, res, style in (("pretrained", trained, "o-"),
                              ("random init", (result.get("baseline") or {}).get("layers"), "s--")):
        if not res:
            continue
        m = [res["metrics"][f"top1@{s}"] for s in stages]
        ax.errorbar(range(len(stages)), [100 * v["mean"] for v in m], yerr=[100 * v["std"] for v in m],
                    fmt=style, capsize=3, label=label)
    ax.set_xticks(range(len(stages)), stages)
    ax.set_xlabel("backbone stage")
    ax.set_ylabel("linear probe top-1 (%)")
    proto = result.get("protocol", {})
    ax.set_title(f"Layer-wise linear probe: {proto.get('method', '?')} / {proto.get('backbone', '?')}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _finalize(result: dict[str, Any], run_dir: Path) -> None:
    path = plot_layers(result, Path(run_dir) / "layers.png")
    if path is not None:
        result["layers"]["plot"] = path.name


@EVALUATORS.register("layers", help="linear probe (cached, L-BFGS) on every named backbone stage, plus layers.png",
                     finalize=_finalize, options={"l2_grid": (1e-4, 1e-3, 1e-2)})
def layers_protocol(ctx: EvalContext) -> dict[str, Any]:
    stages = list(getattr(ctx.backbone, "stage_names", ()))
    if not stages:
        from ..errors import ConfigError

        raise ConfigError(f"protocol 'layers': backbone {type(ctx.backbone).__name__} names no stages")
    grid = tuple(float(v) for v in ctx.opt("l2_grid"))
    out: dict[str, Any] = {}
    n = 0
    for s in stages:
        ftr, ytr, fte, yte = ctx.features(stage=s)
        out[f"top1@{s}"] = linear_probe(ftr, ytr, fte, yte, l2_grid=grid, seed=ctx.seed,
                                        num_classes=ctx.num_classes)["top1"]
        n = int(ytr.numel())
    best = max(stages, key=lambda s: out[f"top1@{s}"])
    out["top1"] = out[f"top1@{best}"]
    out.update(labelled_images=n, summary=["top1"],
               params={"stages": stages, "top1_is": f"best stage ({best})", "solver": "lbfgs",
                       "l2_grid": list(grid), "pooling": "spatial/token mean"})
    return out
