"""The training loop: plain PyTorch, readable top to bottom.

``pretrain(cfg, out)`` builds data, backbone, method, view pipeline and optimizer from a :class:`RunConfig`,
then runs: views on the device → method → loss → backward → clip → optimizer step → shared-part updates.
It logs to ``metrics.jsonl``, writes atomic checkpoints, resumes exactly (model, optimizer, step, RNG), stops
on a non-finite loss naming the step (the last good checkpoint stays), and honours a wall-clock budget.
"""
from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..augment.pipeline import MultiViewPipeline
from ..backbones.base import build_backbone
from ..components.base import StepContext, update_parts
from ..config import ConfigError, RunConfig, method_config, to_plain
from ..data import ImageDataset, load_dataset
from ..methods.base import Method, ViewBatch, build_method
from ..registry import METHODS
from .checkpoint import save_checkpoint
from .logging import MetricsLogger
from .monitors import CollapseMonitor, CollapseWarning
from .optim import build_optimizer
from .rundir import (checkpoint_path, latest_checkpoint, prepare_run_dir, prune_checkpoints, truncate_metrics,
                     write_config, write_json)
from .schedules import warmup_cosine


class TrainingError(RuntimeError):
    """Training stopped for a reason the user must see (non-finite loss, ...); the message says which step."""


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    epochs: float
    images_per_s: float
    wall_s: float
    final_loss: float
    stopped: str  # "done" | "max_steps" | "time_limit" | "interrupted" | "collapsed"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name}: CUDA is not available on this machine")
    return dev


@dataclass
class Built:
    """Everything a run needs, built from a config (also used by evaluation to rebuild a run's model)."""

    cfg: RunConfig
    data: ImageDataset
    method: Method
    views: MultiViewPipeline
    device: torch.device


def build_run(cfg: RunConfig, data: ImageDataset | None = None, device: torch.device | None = None) -> Built:
    """Dataset, backbone and method from ``cfg``, with the method's weights initialised from ``cfg.train.seed``."""
    data = data or load_dataset(cfg.data.path, cfg.data.image_size, test_path=cfg.data.test_path,
                                workers=cfg.data.workers)
    device = device or resolve_device(cfg.train.device)
    size = data.image_size[0]
    torch.manual_seed(cfg.train.seed)
    in_channels = METHODS.get(cfg.method["name"]).backbone_in_channels(data.channels)
    backbone = build_backbone(cfg.backbone.name, in_channels=in_channels, width=cfg.backbone.width,
                              cifar_stem=cfg.backbone.cifar_stem, image_size=size,
                              patch_size=cfg.backbone.patch_size)
    method = build_method(cfg.method["name"], backbone, method_config(cfg), num_train=data.train.num_images)
    views = method.make_views(size, data.mean, data.std, cfg.augment)
    return Built(cfg, data, method.to(device), views, device)


def _rng_state(aug_gen: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "aug": aug_gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], aug_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    aug_gen.set_state(state["aug"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def pretrain(cfg: RunConfig, out: str | Path, *, resume: bool = False, overwrite: bool = False,
             data: ImageDataset | None = None, quiet: bool = False,
             views: MultiViewPipeline | None = None) -> TrainResult:
    """Pretrain ``cfg``'s method and write the run to ``out``. See the module docstring.

    ``views`` replaces the method's own view pipeline (studies that vary the augmentations)."""
    run_dir = prepare_run_dir(out, resume=resume, overwrite=overwrite)
    t = cfg.train
    if t.nan_policy not in ("stop", "skip"):
        raise ConfigError(f"train.nan_policy must be 'stop' or 'skip', got '{t.nan_policy}'")
    b = build_run(cfg, data)
    method, device, ds = b.method, b.device, b.data
    views = views if views is not None else b.views
    n = ds.train.num_images
    if t.batch_size < 2:
        raise ConfigError(f"train.batch_size must be >= 2, got {t.batch_size}")
    if t.batch_size > n:
        raise ConfigError(f"train.batch_size ({t.batch_size}) is larger than the dataset ({n} images in {cfg.data.path})")
    spe = ds.train.num_batches(t.batch_size, drop_last=True)
    total_steps = max(1, t.epochs * spe)

    opt_name = cfg.optim.name or method.default_optimizer
    cfg.optim.name = opt_name
    lr = cfg.optim.lr if cfg.optim.lr is not None else method.base_lr * t.batch_size / 256
    wd = cfg.optim.weight_decay if cfg.optim.weight_decay is not None else method.default_weight_decay
    optimizer = build_optimizer(method, cfg.optim, lr, wd, device)
    warmup = int(round(cfg.optim.warmup_epochs * spe))

    channels_last = t.channels_last if t.channels_last is not None else getattr(method.backbone, "prefers_channels_last", False)
    if channels_last:
        method.to(memory_format=torch.channels_last)
    bf16 = t.precision == "bf16" or (t.precision == "auto" and device.type == "cuda")
    if t.precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"train.precision must be auto, fp32 or bf16, got '{t.precision}'")

    aug_gen = torch.Generator(device=device)
    aug_gen.manual_seed(t.seed + 1)
    start_step = 0
    resolved = cfg.to_dict()
    if resume:
        ckpt_file, ckpt = latest_checkpoint(run_dir)
        method.load_state_dict(ckpt["method"])
        optimizer.load_state_dict(ckpt["optimizer"])
        _set_rng_state(ckpt["rng"], aug_gen)
        start_step = int(ckpt["step"])
        total_steps = int(ckpt["total_steps"])
        truncate_metrics(run_dir, start_step)
        if not quiet:
            print(f"resuming {run_dir} from {ckpt_file.name} (step {start_step}/{total_steps})", file=sys.stderr)
    write_config(run_dir, resolved)
    def schedule(total: int) -> list[float]:
        # warm-up never takes more than a fifth of a run (short budgets still get their cosine decay)
        return warmup_cosine(lr, total, min(warmup, total // 5), lr * cfg.optim.min_lr_ratio)

    lrs = schedule(total_steps)

    step_fn = method
    if t.compile:
        try:
            step_fn = torch.compile(method)
        except Exception as e:  # platforms without a compiler backend
            print(f"torch.compile unavailable ({type(e).__name__}: {e}); running eager", file=sys.stderr)

    def save(step: int) -> None:
        save_checkpoint({
            "method": method.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
            "total_steps": total_steps, "epoch": step / spe, "rng": _rng_state(aug_gen), "config": resolved,
            "method_name": cfg.method["name"],
        }, checkpoint_path(run_dir, step))
        prune_checkpoints(run_dir, keep=2)

    def stop_if_non_finite() -> None:
        bad = int(first_bad)  # one host sync, only at log and checkpoint steps
        if bad >= 0 and t.nan_policy == "stop":
            raise TrainingError(
                f"non-finite loss at step {bad} (method {cfg.method['name']}, lr {lrs[bad]:.3g}); "
                f"stopped, the last good checkpoint in {run_dir / 'checkpoints'} is kept; "
                "try a lower optim.lr or train.grad_clip")

    logger = MetricsLogger(run_dir, total_steps=total_steps, quiet=quiet)
    method.train()
    step = start_step
    loss_sum = torch.zeros((), device=device)
    loss_count = 0
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    last_loss = float("nan")
    stopped = "done"
    t_start = time.perf_counter()
    t_window, imgs_window = t_start, 0
    calibrated = t.time_limit_min is None
    t_calib = t_start
    max_steps = t.max_steps if t.max_steps is not None else total_steps
    monitor, collapse = CollapseMonitor(), None  # collapse monitors, measured at log steps only
    try:
        while step < min(total_steps, max_steps) and stopped == "done":
            epoch = step // spe
            gen = torch.Generator().manual_seed(t.seed * 100_003 + epoch)
            for x, idx, _ in ds.train.batches(t.batch_size, shuffle=True, generator=gen, drop_last=True,
                                             start_batch=step % spe):
                for g in optimizer.param_groups:
                    g["lr"] = lrs[step]
                ctx = StepContext(step=step, total_steps=total_steps, epoch=epoch, steps_per_epoch=spe)
                x = x.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    vs = views(x, aug_gen)
                    if channels_last:
                        vs = [v.contiguous(memory_format=torch.channels_last) for v in vs]
                    out = step_fn(ViewBatch(vs, idx.to(device)), ctx)
                loss = out.loss
                finite = torch.isfinite(loss.detach())
                optimizer.zero_grad(set_to_none=True)
                if t.nan_policy == "skip" and not bool(finite):
                    print(f"step {step}: non-finite loss, update skipped", file=sys.stderr)
                else:
                    loss.backward()
                    if t.grad_clip:
                        torch.nn.utils.clip_grad_norm_(method.parameters(), t.grad_clip)
                    optimizer.step()
                    update_parts(method, ctx)
                first_bad = torch.where((first_bad < 0) & ~finite, torch.tensor(step, device=device), first_bad)
                loss_sum += loss.detach().float()
                loss_count += 1
                step += 1
                imgs_window += x.shape[0]
                time_up = t.time_limit_min is not None and time.perf_counter() - t_start > t.time_limit_min * 60
                end_of_run = step >= min(total_steps, max_steps) or time_up
                if step % t.log_every == 0 or end_of_run:
                    stop_if_non_finite()
                    now = time.perf_counter()
                    last_loss = float(loss_sum) / max(1, loss_count)
                    rec = {"step": step, "epoch": round(step / spe, 4), "loss": last_loss, "lr": lrs[step - 1],
                           "images_per_s": imgs_window / max(now - t_window, 1e-9), "time_s": now - t_start}
                    rec.update({k: float(v) for k, v in out.logs.items()})
                    rec.update(monitor.measure(out.embedding, getattr(out, "probs", None)))
                    for alert in monitor.check(rec):
                        warnings.warn(f"step {step}: possible collapse: {alert}", CollapseWarning, stacklevel=2)
                        collapse = collapse or alert
                    logger.log(rec)
                    logger.progress(rec)
                    loss_sum.zero_()
                    loss_count, t_window, imgs_window = 0, now, 0
                    if t.stop_on_collapse and monitor.active:
                        stopped = "collapsed"
                        break
                if step - start_step == 5:
                    t_calib = time.perf_counter()  # after compilation and first-step allocations
                if not calibrated and step - start_step >= 25:
                    # wall-clock budget: size the schedule from the measured speed (the warm-up is unchanged)
                    calibrated = True
                    rate = (step - start_step - 5) / (time.perf_counter() - t_calib)
                    budget = t.time_limit_min * 60 - (time.perf_counter() - t_start)
                    total_steps = min(total_steps, step + max(1, int(budget * rate)))
                    lrs = schedule(total_steps)
                    logger.total_steps = total_steps
                if t.checkpoint_every and step % t.checkpoint_every == 0 and not end_of_run:
                    stop_if_non_finite()  # never let a checkpoint after a NaN replace the good ones
                    save(step)
                if time_up:
                    stopped = "time_limit"
                    break
                if end_of_run:
                    if step < total_steps:
                        stopped = "max_steps"
                    break
            if t.knn_every and ds.has_labels and (step % spe == 0) and (step // spe) % t.knn_every == 0:
                from ..evaluation.knn import online_knn

                acc = online_knn(method.eval_backbone(), ds, device)
                method.train()
                logger.log({"step": step, "epoch": round(step / spe, 4), "knn_top1": acc})
                if not quiet:
                    print(f"epoch {step // spe}: online kNN top-1 {acc:.3f}", file=sys.stderr)
    except KeyboardInterrupt:
        stopped = "interrupted"
    finally:
        logger.close()
    if int(first_bad) < 0 or t.nan_policy == "skip":  # skipped steps did not touch the weights
        save(step)
    if stopped == "collapsed" and not quiet:
        print(f"stopped at step {step} (--stop-on-collapse): {collapse}; the last checkpoint is kept in "
              f"{run_dir / 'checkpoints'}", file=sys.stderr)
    wall = time.perf_counter() - t_start
    result = TrainResult(run_dir, step, step / spe, (step - start_step) * t.batch_size / max(wall, 1e-9), wall,
                         last_loss, stopped)
    write_json(run_dir / "run.json", {
        "method": cfg.method["name"], "backbone": cfg.backbone.name, "width": cfg.backbone.width,
        "data": cfg.data.path, "steps": step, "total_steps": total_steps, "epochs": round(step / spe, 3),
        "images_per_s": round(result.images_per_s, 1), "wall_s": round(wall, 1), "final_loss": last_loss,
        "stopped": stopped, "device": str(device),
        "lr": lr, "weight_decay": wd, "optimizer": opt_name, **({"collapse": collapse} if collapse else {}),
    })
    return result
