"""Evaluate a run: rebuild its model from the saved config, load the checkpoint, run protocols on it and on
the random-init baseline over ``seeds`` repeats, print both side by side and write ``eval.json``.

``eval.json`` holds, per protocol (and the same under ``"baseline"``)::

    {"protocol": "knn", "top1": mean, "top1_std": std, "metrics": {name: {"mean", "std", "values"}},
     "params": {...}, "labelled_images": N, "seeds": [...], "repeats": R, "seconds": s, "summary": [...]}

and under ``"protocol"`` what was evaluated (checkpoint, data, channel conversion, seeds, time per protocol).
"""
from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from ..config import RunConfig
from ..data import DataError, ImageDataset, load_dataset
from ..data.ids import indices_of, read_selection
from ..engine.build import Built, build_run, resolve_device
from ..engine.checkpoint import load_method_state
from ..engine.run_access import check_writable, load_run_checkpoint, saved_config
from ..engine.rundir import RunDirError, write_json
from ..errors import ConfigError
from ..progress import phase
from ..registry import EVALUATORS
from .protocols import EvalContext, check_options
from .transfer import load_eval_data

DEFAULT_PROTOCOLS = ("knn", "linear")
MAX_SEEDS = 1000  # repeats per protocol: more is a typo, not a study


def aggregate(name: str, runs: list[dict[str, Any]], seeds: list[int], seconds: float) -> dict[str, Any]:
    """Mean ± std (sample std, 0 for one repeat) of every float metric over the per-seed results."""
    first = runs[0]
    metrics = {}
    for k, v in first.items():
        if isinstance(v, float) and not isinstance(v, bool):
            vals = [float(r[k]) for r in runs]
            metrics[k] = {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                          "values": vals}
    out: dict[str, Any] = {"protocol": name}
    if "top1" in metrics:
        out["top1"], out["top1_std"] = metrics["top1"]["mean"], metrics["top1"]["std"]
    out.update({k: m["mean"] for k, m in metrics.items() if k not in out})  # e.g. knn.top1_k1 at the top level
    out.update(metrics=metrics, params=first.get("params", {}), labelled_images=first.get("labelled_images"),
               seeds=seeds, repeats=len(runs), seconds=round(seconds, 2), summary=first.get("summary", ["top1"]))
    for k, v in first.items():  # other JSON values (subset files, ...)
        if k not in out and k not in metrics and k not in ("params", "labelled_images", "summary"):
            out[k] = v if len(runs) == 1 else [r.get(k) for r in runs]
    if len(runs) > 1 and any(r.get("params") != first.get("params") for r in runs[1:]):
        out["params_per_seed"] = [r.get("params", {}) for r in runs]  # e.g. a different L2 chosen per seed
    return out


def run_protocols(ctx: EvalContext, protocols: list[str] | tuple[str, ...], seeds: list[int]) -> dict[str, Any]:
    """Run every protocol on ``ctx`` (repeated over ``seeds`` unless it is deterministic); aggregated results."""
    results = {}
    for name in protocols:
        entry = EVALUATORS.entry(name)
        if ctx.role == "baseline" and entry.meta.get("skip_baseline"):
            continue
        reps = seeds[:1] if entry.meta.get("deterministic") else seeds
        t0 = time.perf_counter()
        runs = []
        for s in reps:
            ctx.seed, ctx.protocol = s, name
            runs.append(entry.obj(ctx))
        results[name] = aggregate(name, runs, reps, time.perf_counter() - t0)
        if entry.meta.get("deterministic") and len(seeds) > 1:
            results[name]["note"] = "deterministic: repeats would be identical, run once"
    return results


def _checkpoint_channels(state: dict[str, torch.Tensor]) -> int | None:
    """Input channels of the pretrained backbone: the first 4-D backbone weight (stem conv / patch embedding)."""
    for k, v in state.items():
        if k.startswith("backbone.") and getattr(v, "ndim", 0) == 4:
            return int(v.shape[1])
    return None


def evaluate_run(run_dir: str | Path, protocols: list[str] | tuple[str, ...] = DEFAULT_PROTOCOLS, *,
                 eval_data: str | None = None, eval_test: str | None = None, device: str = "auto",
                 baseline: bool = True,
                 options: dict[str, Any] | None = None, seeds: int = 1, epochs: int | None = None,
                 fractions: list[float] | tuple[float, ...] | None = None, quiet: bool = False,
                 selection: str | Path | None = None) -> dict[str, Any]:
    """Evaluate the newest checkpoint of ``run_dir``; returns and writes the ``eval.json`` mapping.

    ``seeds``: repeats per protocol (seeds run_seed … run_seed+N-1); ``epochs``: budget of trained protocols;
    ``fractions``: label fractions of ``semi``; ``selection``: a selection file (``selfsup select``) whose images
    ``semi`` trains on instead; ``options``: ``{"key" or "protocol.key": value}``. ``eval_data`` (with
    ``eval_test``: its test split) evaluates on other labelled data, e.g. labelled ``train/`` and ``val/`` folders
    for a run pretrained on unlabelled photos. Every argument, the run directory and the checkpoint are checked
    before any work.
    """
    _check_arguments(seeds, epochs, fractions)
    if eval_test is not None and eval_data is None:
        raise ConfigError(f"--eval-test {eval_test} needs --eval-train (the labelled data the protocols train on)")
    protocols = list(dict.fromkeys(protocols))
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"run directory not found: {run_dir}")
    for p in protocols:
        EVALUATORS.get(p)  # unknown protocol → error listing the known ones, before any work
    opts = dict(options or {})
    check_options(protocols, opts)
    check_writable(run_dir / "eval.json", "the evaluation results")
    chosen = _read_selection(selection, protocols, fractions)
    ckpt_path, ckpt = load_run_checkpoint(run_dir)
    cfg = saved_config(ckpt, ckpt_path)
    dev = _device(device)
    t0 = time.perf_counter()
    phase(f"evaluating {run_dir} ({ckpt_path.name}): loading data "
          f"{eval_data or cfg.data.path}" + (f" and {eval_test}" if eval_test else ""), quiet)
    built, data, data_info = _build_for_eval(run_dir, cfg, ckpt, eval_data, dev, eval_test)
    seed_list = [cfg.train.seed + i for i in range(seeds)]
    sel = None if chosen is None else indices_of(chosen, data.train, where=str(selection),
                                                 data=eval_data or cfg.data.path)
    common: dict[str, Any] = dict(seed=cfg.train.seed, options=opts, run_dir=run_dir, epochs=epochs, selection=sel,
                                  selection_name=str(selection or ""),
                                  fractions=tuple(fractions) if fractions else None, pretrain_epochs=cfg.train.epochs)
    init_backbone = copy.deepcopy(built.method.eval_backbone())
    random_backbone = copy.deepcopy(init_backbone) if baseline else None
    load_method_state(built.method, ckpt["method"], ckpt_path)  # before any protocol runs: a misfit fails at once
    result: dict[str, Any] = {}
    times: dict[str, Any] = {}
    if random_backbone is not None:
        phase(f"evaluating the random-init baseline: {', '.join(protocols)}", quiet)
        bctx = EvalContext(random_backbone, data, dev, role="baseline", **common)
        result["baseline"] = run_protocols(bctx, protocols, seed_list)
        times["baseline"] = {p: r["seconds"] for p, r in result["baseline"].items()}
    phase(f"evaluating the pretrained backbone: {', '.join(protocols)}", quiet)
    tctx = EvalContext(built.method.eval_backbone(), data, dev, role="trained", init_backbone=init_backbone, **common)
    trained = run_protocols(tctx, protocols, seed_list)
    times["trained"] = {p: r["seconds"] for p, r in trained.items()}
    result = {**trained, **result}
    assert data.test is not None  # _build_for_eval required labelled train and test splits
    result["protocol"] = {
        "checkpoint": ckpt_path.name, "step": int(ckpt["step"]), "method": cfg.method.name,
        "backbone": cfg.backbone.name, "width": cfg.backbone.width, "pretrain_data": cfg.data.path,
        "eval_data": eval_data or cfg.data.path, **{k: v for k, v in data_info.items() if k != "data"},
        "transfer": eval_data is not None and eval_data != cfg.data.path,
        "train_images": data.train.num_images, "test_images": data.test.num_images,
        "seeds": seed_list, "epochs": epochs, "protocols": protocols,
        "baseline": "same architecture, random init (train.seed), same protocols" if baseline else "skipped",
        "seconds": times, "wall_s": round(time.perf_counter() - t0, 1),
    }
    _write_results(run_dir, result, protocols, ckpt_path.name)
    if not quiet:
        print(format_table(result, protocols), file=sys.stdout)
    return result


def _check_arguments(seeds: int, epochs: int | None, fractions: Sequence[float] | None) -> None:
    """One-line errors for the repeat count, the epoch budget and the label fractions."""
    if not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"--seeds must be >= 1 (the number of repeats per protocol), got {seeds}")
    if seeds > MAX_SEEDS:
        raise ConfigError(f"--seeds must be <= {MAX_SEEDS} (the number of repeats per protocol), got {seeds}")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {epochs}")
    for f in fractions or ():
        if not 0 < f <= 1:
            raise ConfigError(f"--fractions values must be in (0, 1], got {f}")


def _read_selection(selection: str | Path | None, protocols: list[str],
                    fractions: Sequence[float] | None) -> list[str] | None:
    """The ids of ``--selection`` (read before any work), which only the semi protocol uses."""
    if selection is None:
        return None
    if "semi" not in protocols:
        raise ConfigError("--selection is read by the semi protocol only: add --protocol semi")
    if fractions:
        raise ConfigError("--selection and --fractions both say which images semi trains on: give one")
    ids = read_selection(selection)
    if len(ids) < 2:
        raise ConfigError(f"{selection}: semi needs at least 2 selected images to fit a classifier, got {len(ids)}")
    return ids


def _device(name: str) -> torch.device:
    try:
        return resolve_device(name)
    except RuntimeError as e:  # torch's own words for an unknown device string
        raise ConfigError(f"--device '{name}' is not a device (auto, cpu, cuda, cuda:N): "
                          f"{str(e).splitlines()[0][:120]}") from None


def _build_for_eval(run_dir: Path, cfg: RunConfig, ckpt: dict[str, Any], eval_data: str | None,
                    dev: torch.device, eval_test: str | None = None) -> tuple[Built, ImageDataset, dict[str, Any]]:
    """The run's model (untrained weights) and the labelled data it is evaluated on, with how it was converted."""
    data_info: dict[str, Any] = {"data": cfg.data.path, "channel_conversion": "none"}
    if eval_data is None:
        data = load_dataset(cfg.data.path, cfg.data.image_size, test_path=cfg.data.test_path)
        if not data.has_labels:
            raise DataError(f"{cfg.data.path}: evaluation needs labelled train and test splits "
                            "(pass --eval-train DIR --eval-test DIR, or --eval-data, with labelled data)")
        built = build_run(cfg, data, dev)
    else:
        run_data: ImageDataset | None
        try:  # the pretraining data fixes the model's input size, channels and any per-image buffers
            run_data = load_dataset(cfg.data.path, cfg.data.image_size, test_path=cfg.data.test_path)
        except DataError:
            run_data = None
        channels = run_data.channels if run_data else _checkpoint_channels(ckpt["method"])
        size = run_data.image_size[0] if run_data else cfg.data.image_size
        if channels is None:
            raise DataError(f"{run_dir}: cannot tell the backbone's input channels (pretraining data "
                            f"{cfg.data.path} not found)")
        data, data_info = load_eval_data(eval_data, size, channels, test_path=eval_test)
        if eval_test is not None:
            data_info["eval_test"] = eval_test
        built = build_run(cfg, run_data or data, dev)
    if data.channels != built.method.eval_backbone().in_channels:  # cannot happen after conversion; guard anyway
        raise DataError(f"eval data has {data.channels} channels but the backbone expects "
                        f"{built.method.eval_backbone().in_channels}")
    return built, data, data_info


def _write_results(run_dir: Path, result: dict[str, Any], protocols: list[str], checkpoint: str) -> None:
    """Protocols' plots beside ``eval.json``, then ``eval.json`` (keeping other protocols' earlier results)."""
    kept = _merge_previous(run_dir / "eval.json", result, checkpoint)
    if kept:
        result["protocol"]["kept_from_previous_eval"] = kept
    try:
        for p in protocols:
            fin = EVALUATORS.entry(p).meta.get("finalize")
            if fin is not None and p in result:
                fin(result, run_dir)
        write_json(run_dir / "eval.json", result)
    except OSError as e:
        raise RunDirError(f"cannot write the evaluation results {run_dir / 'eval.json'}: {e.strerror or e}") from None


def _merge_previous(path: Path, result: dict[str, Any], checkpoint: str) -> list[str]:
    """Keep protocols of an earlier ``eval.json`` of the same checkpoint that this call did not re-run (so
    slow protocols can be run in separate calls); returns their names."""
    import json

    try:
        prev = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(prev, dict) or prev.get("protocol", {}).get("checkpoint") != checkpoint:
        return []
    kept = [p for p, r in prev.items() if p not in ("protocol", "baseline") and p not in result and isinstance(r, dict)]
    for p in kept:
        result[p] = prev[p]
        if p in prev.get("baseline", {}) and "baseline" in result:
            result["baseline"].setdefault(p, prev["baseline"][p])
    return kept


def _pct(m: dict[str, Any] | None) -> str:
    if m is None:
        return "-"
    return f"{100 * m['mean']:.1f}" + (f" ± {100 * m['std']:.1f}" if m.get("std") else "")


def format_table(result: dict[str, Any], protocols) -> str:
    """Plain-text table: protocol, metric, trained, random init, gain, labelled images, seconds."""
    head = f"{'protocol':<11}{'metric':<17}{'trained %':>14}{'random-init %':>15}{'gain':>7}{'labels':>9}{'s':>7}"
    rows = [head]
    for p in protocols:
        r = result.get(p)
        if r is None:
            continue
        base = (result.get("baseline") or {}).get(p)
        for metric, m in r["metrics"].items():
            b = (base or {}).get("metrics", {}).get(metric)
            gain = f"{100 * (m['mean'] - b['mean']):+.1f}" if b else ""
            labels = r.get("labelled_images")
            if isinstance(labels, dict):
                labels = labels.get(metric, "")
            rows.append(f"{p:<11}{metric:<17}{_pct(m):>14}{_pct(b):>15}{gain:>7}{labels if labels is not None else '':>9}"
                        f"{r['seconds']:>7.1f}")
    return "\n".join(rows)
