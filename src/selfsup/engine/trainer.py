"""The training loop: plain PyTorch, readable top to bottom.

``pretrain(cfg, out)`` builds data, backbone, method, view pipeline and optimizer from a :class:`RunConfig`,
then runs: views on the device → method → loss → backward → clip → optimizer step → shared-part updates.
It logs to ``metrics.jsonl``, writes atomic checkpoints, resumes exactly (model, optimizer, step, RNG), stops
on a non-finite loss naming the step (the last good checkpoint stays), and honours a wall-clock budget.
"""
from __future__ import annotations

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
from ..components.sync_bn import convert_sync_bn, has_batch_norm
from ..config import RunConfig
from ..data import ImageDataset, load_dataset
from ..errors import ConfigError
from ..methods.base import Method, ViewBatch, build_method
from . import distributed as D
from .checkpoint import save_checkpoint
from .compile import SafeCompiled
from .logging import MetricsLogger
from .monitors import CollapseMonitor, CollapseWarning
from .nonfinite import KIND, bad_code, grad_norm
from .optim import build_optimizer
from .resume import check_free_space, find_resume_checkpoint, resume_mode
from .rundir import checkpoint_path, prepare_run_dir, prune_checkpoints, truncate_metrics, write_config, write_json
from .schedules import warmup_cosine
from .signals import StopOnSignal


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
    in_channels = cfg.method.method_class.backbone_in_channels(data.channels)
    backbone = build_backbone(cfg.backbone.name, in_channels=in_channels, width=cfg.backbone.width,
                              cifar_stem=cfg.backbone.cifar_stem, image_size=size,
                              patch_size=cfg.backbone.patch_size)
    method = build_method(cfg.method, backbone, num_train=data.train.num_images)
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


def pretrain(cfg: RunConfig, out: str | Path, *, resume: bool | str = False, overwrite: bool = False,
             data: ImageDataset | None = None, quiet: bool = False,
             views: MultiViewPipeline | None = None) -> TrainResult:
    """Pretrain ``cfg``'s method and write the run to ``out``. See the module docstring.

    ``resume`` True or ``"auto"``: continue from the newest readable checkpoint in ``out`` (fresh when none).
    ``views`` replaces the method's own view pipeline (studies that vary the augmentations).
    Under ``torchrun`` every rank runs this function (engine/distributed.py: data shards, gradient average,
    rank-0 writes); ``train.batch_size`` is the global batch.
    """
    resume = resume_mode(resume)
    t = cfg.train
    dctx, dist_device = D.init_distributed(t.device, t.dist_timeout_min)
    try:
        return _pretrain(cfg, out, resume, overwrite, data, quiet or not dctx.is_main, dctx, dist_device, views)
    finally:
        D.shutdown()


def _pretrain(cfg: RunConfig, out: str | Path, resume: bool, overwrite: bool, data: ImageDataset | None,
              quiet: bool, dctx: D.DistContext, dist_device: torch.device | None,
              views: MultiViewPipeline | None = None) -> TrainResult:
    t = cfg.train
    run_dir = D.rank0_call(dctx, lambda: prepare_run_dir(out, resume=resume, overwrite=overwrite))
    b = build_run(cfg, data, dist_device)
    method, device, ds = b.method, b.device, b.data
    views = views if views is not None else b.views
    n = ds.train.num_images
    micro = D.check_batch(t.batch_size, dctx, t.grad_accum_steps, has_batch_norm(method))
    sync_bn = t.sync_bn if t.sync_bn is not None else method.needs_sync_bn
    if dctx.enabled:
        if sync_bn:
            convert_sync_bn(method, device)
        D.broadcast_module(method, dctx)
    if t.batch_size > n:
        raise ConfigError(f"train.batch_size ({t.batch_size}) is larger than the dataset ({n} images in {cfg.data.path})")
    spe = ds.train.num_batches(t.batch_size, drop_last=True)
    total_steps = max(1, t.epochs * spe)

    opt_name = cfg.optim.name or method.default_optimizer
    cfg.optim.name = opt_name
    lr = cfg.optim.lr if cfg.optim.lr is not None else method.base_lr * t.batch_size / 256
    wd = cfg.optim.weight_decay if cfg.optim.weight_decay is not None else method.default_weight_decay
    optimizer = build_optimizer(method, cfg.optim, lr, wd, device)
    D.rank0_call(dctx, lambda: check_free_space(run_dir, method))
    warmup = int(round(cfg.optim.warmup_epochs * spe))

    channels_last = t.channels_last if t.channels_last is not None else getattr(method.backbone, "prefers_channels_last", False)
    if channels_last:
        method.to(memory_format=torch.channels_last)
    bf16 = t.precision == "bf16" or (t.precision == "auto" and device.type == "cuda")

    aug_gen = torch.Generator(device=device)
    aug_gen.manual_seed(t.seed + 1 + dctx.rank)  # one augmentation stream per rank (rank 0: the 1-process one)
    start_step = 0
    resolved = cfg.to_dict()
    found = find_resume_checkpoint(run_dir) if resume else None
    log_state: dict[str, Any] = {}
    if resume and found is None:
        if dctx.is_main:
            truncate_metrics(run_dir, 0)
        if not quiet:
            print(f"no checkpoint in {run_dir} yet: starting fresh", file=sys.stderr)
    if found is not None:
        ckpt_file, ckpt = found
        log_state = ckpt.get("log", {})
        method.load_state_dict(ckpt["method"])
        optimizer.load_state_dict(ckpt["optimizer"])
        _set_rng_state(ckpt["rng"], aug_gen)
        start_step = int(ckpt["step"])
        total_steps = int(ckpt["total_steps"])
        if dctx.enabled or "aug_ranks" in ckpt["rng"]:
            msg = D.restore_generator(aug_gen, ckpt["rng"].get("aug_ranks"), dctx, t.seed, start_step)
            if msg and not quiet:
                print(msg, file=sys.stderr)
        if dctx.is_main:
            truncate_metrics(run_dir, start_step)
        if not quiet:
            print(f"resuming {run_dir} from {ckpt_file.name} (step {start_step}/{total_steps})", file=sys.stderr)
    if dctx.is_main:
        write_config(run_dir, resolved)
    def schedule(total: int) -> list[float]:
        # warm-up never takes more than a fifth of a run (short budgets still get their cosine decay)
        return warmup_cosine(lr, total, min(warmup, total // 5), lr * cfg.optim.min_lr_ratio)

    lrs = schedule(total_steps)

    step_fn = method
    if t.compile:  # falls back to eager, with one logged line, if compiling fails (also at the first call)
        step_fn = SafeCompiled(method, log=lambda m: D.note(dctx, m))

    def save(step: int) -> None:
        rng = _rng_state(aug_gen)
        aug_states = D.gather_generator_states(aug_gen, dctx)  # collective: every rank calls save()
        if not dctx.is_main:
            return
        if dctx.enabled:
            rng["aug_ranks"] = aug_states
        save_checkpoint({
            "method": method.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
            "total_steps": total_steps, "epoch": step / spe, "rng": rng, "config": resolved,
            "method_name": cfg.method.name,
            # the open log window, so a resumed run logs the same averaged losses as an uninterrupted one
            "log": {"loss_sum": float(loss_sum), "loss_count": loss_count, "skipped": skipped},
            "data": {"channels": ds.channels, "image_size": list(ds.image_size), "num_train": n,
                     "mean": list(ds.mean), "std": list(ds.std)},
        }, checkpoint_path(run_dir, step))
        prune_checkpoints(run_dir, keep=2)

    def stop_if_non_finite() -> None:
        bad = D.reduce_first_bad(first_bad, dctx)  # one host sync, only at log and checkpoint steps
        if bad >= 0:  # (never set under nan_policy=skip)
            what = KIND.get(int(first_kind), "loss or gradient (on another rank)")
            raise TrainingError(
                f"non-finite {what} at step {bad} (method {cfg.method.name}, lr {lrs[bad]:.3g}); "
                f"stopped, the last good checkpoint in {run_dir / 'checkpoints'} is kept; "
                "try a lower optim.lr or train.grad_clip, or train.nan_policy=skip")

    logger = MetricsLogger(run_dir, total_steps=total_steps, quiet=quiet) if dctx.is_main else D.NullLogger()
    params = [p for p in method.parameters() if p.requires_grad]
    accum = t.grad_accum_steps
    method.train()
    step = start_step
    loss_sum = torch.full((), float(log_state.get("loss_sum", 0.0)), device=device)
    loss_count, skipped = int(log_state.get("loss_count", 0)), int(log_state.get("skipped", 0))
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    first_kind = torch.zeros((), dtype=torch.long, device=device)
    skip = t.nan_policy == "skip"
    mid_step = False
    stop = StopOnSignal().install()  # SIGTERM/SIGINT: finish the step, checkpoint, exit; restored below
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
            for x, idx, _ in D.rank_batches(ds.train, t.batch_size, dctx, generator=gen, start_batch=step % spe):
                mid_step = True
                for g in optimizer.param_groups:
                    g["lr"] = lrs[step]
                ctx = StepContext(step=step, total_steps=total_steps, epoch=epoch, steps_per_epoch=spe)
                x = x.to(device, non_blocking=True)
                idx = idx.to(device)
                optimizer.zero_grad(set_to_none=True)
                loss = torch.zeros((), device=device)
                for i in range(accum):  # gradient accumulation: micro-batches of `micro` images per rank
                    part = slice(i * micro, (i + 1) * micro) if accum > 1 else slice(None)
                    xi, ii = x[part], idx[part]
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                        vs = views(xi, aug_gen)
                        if channels_last:
                            vs = [v.contiguous(memory_format=torch.channels_last) for v in vs]
                        out = step_fn(ViewBatch(vs, ii), ctx)
                    micro_loss = out.loss if accum == 1 else out.loss / accum
                    micro_loss.backward()
                    loss = loss + micro_loss.detach().float()
                D.average_gradients(params, dctx)
                if t.grad_clip:
                    gnorm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
                else:
                    gnorm = grad_norm(params)
                code = bad_code(loss, gnorm)  # 0, or what went non-finite (loss or gradient), on the device
                # the default policy ("stop") never syncs here; "skip" must know now (one host sync per step)
                if skip and not bool(D.all_finite(code == 0, dctx)):
                    optimizer.zero_grad(set_to_none=True)
                    skipped += 1
                    print(f"step {step}: non-finite {KIND.get(int(code), 'value on another rank')}, update skipped "
                          "(train.nan_policy=skip)", file=sys.stderr)
                else:
                    optimizer.step()
                    update_parts(method, ctx)
                    loss_sum += loss
                    loss_count += 1
                if not skip:
                    new_bad = (first_bad < 0) & (code > 0)
                    first_kind = torch.where(new_bad, code, first_kind)
                    first_bad.masked_fill_(new_bad, step)  # no host sync, no host→device copy
                step += 1
                mid_step = False
                imgs_window += x.shape[0] * dctx.world
                time_up = t.time_limit_min is not None and time.perf_counter() - t_start > t.time_limit_min * 60
                if dctx.enabled and t.time_limit_min is not None:
                    time_up = D.broadcast_value(dctx, time_up)  # rank 0's clock decides for all
                end_of_run = step >= min(total_steps, max_steps) or time_up
                if step % t.log_every == 0 or end_of_run:
                    stop_if_non_finite()
                    now = time.perf_counter()
                    last_loss = float(D.mean_over_ranks(loss_sum, dctx)) / loss_count if loss_count else float("nan")
                    rec = {"step": step, "epoch": round(step / spe, 4), "loss": last_loss, "lr": lrs[step - 1],
                           "images_per_s": imgs_window / max(now - t_window, 1e-9), "time_s": now - t_start}
                    rec.update({k: float(v) for k, v in out.logs.items()})
                    if skipped:
                        rec["skipped_steps"] = skipped
                    rec.update(monitor.measure(out.embedding, getattr(out, "probs", None)))
                    for alert in monitor.check(rec):
                        warnings.warn(f"step {step}: possible collapse: {alert}", CollapseWarning, stacklevel=2)
                        collapse = collapse or alert
                    logger.log(rec)
                    logger.progress(rec)
                    if step % t.log_every == 0 or step >= total_steps:  # a max_steps stop leaves the window open
                        loss_sum.zero_()  # (its partial sum is checkpointed, so a resume logs the same average)
                        loss_count, t_window, imgs_window = 0, now, 0
                    if t.stop_on_collapse and D.broadcast_value(dctx, monitor.active):
                        stopped = "collapsed"
                        break
                if step - start_step == 5:
                    t_calib = time.perf_counter()  # after compilation and first-step allocations
                if not calibrated and step - start_step >= 25:
                    # wall-clock budget: size the schedule from the measured speed (the warm-up is unchanged)
                    calibrated = True
                    rate = (step - start_step - 5) / (time.perf_counter() - t_calib)
                    budget = t.time_limit_min * 60 - (time.perf_counter() - t_start)
                    total_steps = D.broadcast_value(dctx, min(total_steps, step + max(1, int(budget * rate))))
                    lrs = schedule(total_steps)
                    logger.total_steps = total_steps
                if t.checkpoint_every and step % t.checkpoint_every == 0 and not end_of_run:
                    stop_if_non_finite()  # never let a checkpoint after a NaN replace the good ones
                    save(step)
                if D.broadcast_value(dctx, bool(stop.received)) if dctx.enabled else stop.received:
                    stopped = "interrupted"
                    break
                if time_up:
                    stopped = "time_limit"
                    break
                if end_of_run:
                    if step < total_steps:
                        stopped = "max_steps"
                    break
            if (t.knn_every and dctx.is_main and ds.has_labels and (step % spe == 0)
                    and (step // spe) % t.knn_every == 0):
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
        stop.restore()
    if D.reduce_first_bad(first_bad, dctx) < 0 and not mid_step:  # a step cut half-way is not saved
        save(step)
    if stopped == "interrupted" and not quiet:
        how = stop.received or "KeyboardInterrupt"
        saved = "checkpoint saved" if not mid_step else "interrupted mid-step, the last checkpoint is kept"
        print(f"{how} at step {step}: {saved} in {run_dir / 'checkpoints'}; continue with --resume",
              file=sys.stderr)
    if stopped == "collapsed" and not quiet:
        print(f"stopped at step {step} (--stop-on-collapse): {collapse}; the last checkpoint is kept in "
              f"{run_dir / 'checkpoints'}", file=sys.stderr)
    wall = time.perf_counter() - t_start
    result = TrainResult(run_dir, step, step / spe, (step - start_step) * t.batch_size / max(wall, 1e-9), wall,
                         last_loss, stopped)
    if not dctx.is_main:
        return result
    write_json(run_dir / "run.json", {
        "method": cfg.method.name, "backbone": cfg.backbone.name, "width": cfg.backbone.width,
        "data": cfg.data.path, "steps": step, "total_steps": total_steps, "epochs": round(step / spe, 3),
        "images_per_s": round(result.images_per_s, 1), "wall_s": round(wall, 1), "final_loss": last_loss,
        "stopped": stopped, "signal": stop.received, "device": str(device), "world_size": dctx.world,
        "lr": lr, "weight_decay": wd, "optimizer": opt_name, **({"collapse": collapse} if collapse else {}),
    })
    return result
