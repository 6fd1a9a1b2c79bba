"""The training loop: plain PyTorch, readable top to bottom.

``pretrain(cfg, out)`` resolves the config (engine/resolve.py: every default the method implies, before anything
is built), builds data, backbone, method, view pipeline and optimizer from it (engine/build.py), then runs
:func:`~selfsup.engine.step.train_step` per batch: views on the device → method → loss → backward → clip →
optimizer step → shared-part updates. It logs to ``metrics.jsonl`` (with the callbacks' values:
engine/callbacks.py), writes atomic checkpoints (the model, the optimizer and the :class:`TrainState`), resumes
exactly, stops on a non-finite loss naming the step (the last good checkpoint stays), honours a wall-clock
budget (engine/budget.py), and stops at a step boundary with a checkpoint on SIGTERM, SIGINT or the requeue
signal (engine/signals.py).
"""
from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..augment.pipeline import MultiViewPipeline
from ..components.base import StepContext
from ..components.sync_bn import convert_sync_bn, has_batch_norm
from ..config import RunConfig
from ..data import ImageDataset
from ..progress import phase
from . import distributed as D
from . import fsdp as L
from .budget import Budget, estimate_message
from .build import build_run, check_pretraining_data, load_data, method_class, method_name, resolve_device
from .callbacks import Callback, CollapseCallback, RunView
from .checkpoint import fsync_path, save_checkpoint
from .compile import SafeCompiled
from .feed import device_split, prefetch
from .init_weights import InitReport, check_init_file
from .lock import RunLock
from .logging import MetricsLogger
from .nonfinite import KIND, all_skipped_message, tensors_finite
from .optim import build_optimizer
from .resolve import batch_size_of, resolve_config
from .resume import (
    already_finished,
    check_free_space,
    check_resume_config,
    check_resume_data,
    find_resume_checkpoint,
    previous_result,
    record_resume,
    resume_mode,
)
from .rundir import checkpoint_path, prepare_run_dir, prune_checkpoints, truncate_metrics, write_config, write_json
from .schedules import WarmupCosine, run_schedule
from .signals import StopOnSignal, signal_stop
from .state import TrainState
from .step import Stepper, train_step


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
    # "done" | "max_steps" | "time_limit" | "interrupted" | "requeue" | "collapsed" | "finished" (nothing to do)
    stopped: str


@dataclass
class Run:
    """One launch of a run: its resolved config, its parts, its state, and what the loop logs."""

    cfg: RunConfig  # resolved (engine/resolve.py)
    run_dir: Path
    data: ImageDataset
    stepper: Stepper
    state: TrainState
    spe: int  # steps per epoch
    batch: int  # the global batch (train.batch_size, resolved)
    schedule: WarmupCosine
    logger: Any  # MetricsLogger on rank 0, NullLogger elsewhere
    callbacks: list[Callback]
    quiet: bool
    name: str = ""  # the method's registered name
    start_step: int = 0
    mid_step: bool = False  # a step is under way (a run cut there is not checkpointed)
    last_loss: float = float("nan")
    stopped_by: Callback | None = None
    finished: str | None = None  # resumed with nothing left to do: the line to print (files stay unchanged)
    skipped_before: int = 0  # steps skipped before this launch (a run whose every step is skipped is an error)
    window: list[float] = field(default_factory=lambda: [0.0, 0.0])  # [start time, images] of the speed window
    estimated: bool = False  # the time-limit estimate has been printed
    t_launch: float = 0.0  # perf_counter at this launch's first step (cumulative wall-clock in checkpoints)
    wall_before: float = 0.0  # wall-clock seconds of the launches before this one (from the checkpoint)
    train_split: Any = None  # what the loop reads: data.train, or its copy on the GPU (engine/feed.py)

    @property
    def dctx(self) -> D.DistContext:
        return self.stepper.dctx

    def last_step(self) -> int:
        t = self.cfg.train
        return min(self.state.total_steps, t.max_steps if t.max_steps is not None else self.state.total_steps)


def pretrain(cfg: RunConfig, out: str | Path, *, resume: bool | str = False, overwrite: bool = False,
             data: ImageDataset | None = None, quiet: bool = False, views: MultiViewPipeline | None = None,
             callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Pretrain ``cfg``'s method and write the run to ``out``. See the module docstring.

    ``resume`` True or ``"auto"``: continue from the newest readable checkpoint in ``out`` (fresh when none).
    ``views`` replaces the method's own view pipeline (studies that vary the augmentations). ``callbacks`` are
    called at log steps and epoch ends after the collapse monitors (:func:`selfsup.api.pretrain` adds the online
    kNN monitor of ``train.knn_every``). Under ``torchrun`` every rank runs this function
    (engine/distributed.py: data shards, gradient average, rank-0 writes); ``train.batch_size`` is the global batch.
    ``cfg`` itself is not changed.
    """
    resume = resume_mode(resume)
    cbs = [CollapseCallback(stop=cfg.train.stop_on_collapse), *callbacks]
    if cfg.train.knn_every and not any("train.knn_every" in cb.options for cb in cbs):
        warnings.warn("train.knn_every is set but no callback implements it; selfsup.api.pretrain (and the CLI) "
                      "attach the online kNN monitor", stacklevel=2)
    dctx, dist_device = D.init_distributed(cfg.train.device, cfg.train.dist_timeout_min)
    lock = RunLock(out)  # RUN/.lock: taken by rank 0 in prepare_run_dir, held until the run ends (engine/lock.py)
    try:
        run = _setup(cfg, out, resume, overwrite, data, quiet or not dctx.is_main, dctx, dist_device, views, cbs,
                     lock)
        return _already_finished(run) if run.finished else _train(run)
    finally:
        lock.release()
        D.shutdown()


def _setup(cfg: RunConfig, out: str | Path, resume: bool, overwrite: bool, data: ImageDataset | None, quiet: bool,
           dctx: D.DistContext, dist_device: torch.device | None, views: MultiViewPipeline | None,
           callbacks: list[Callback], lock: RunLock | None = None) -> Run:
    """Run directory, resolved config, model, optimizer, state (restored when resuming) and config.yaml."""
    if not resume:
        check_init_file(cfg.backbone.init)  # before the run directory is made
    run_dir = D.rank0_call(dctx, lambda: prepare_run_dir(out, resume=resume, overwrite=overwrite, lock=lock))
    if data is None:
        phase(f"loading data {cfg.data.path}", quiet)
        data = load_data(cfg)
    device = dist_device or resolve_device(cfg.train.device)
    cfg = resolve_config(cfg, method_class(cfg), data, device)
    check_pretraining_data(cfg, data)
    t, o, batch = cfg.train, cfg.optim, batch_size_of(cfg)
    phase(f"building {cfg.method.name} ({cfg.backbone.name} width {cfg.backbone.width:g}) on {device}: "
          f"{data.train.num_images} images of {data.image_size[0]} px, batch {batch}", quiet)
    found = find_resume_checkpoint(run_dir) if resume else None
    b = build_run(cfg, data, device, init=found is None)  # backbone.init: a fresh start only, never over a checkpoint
    method = b.method
    if b.init is not None:
        _report_init(run_dir, b.init, dctx, quiet)
    micro = D.check_batch(batch, dctx, t.grad_accum_steps, has_batch_norm(method))
    if dctx.enabled:
        if t.sync_bn:
            convert_sync_bn(method, device)
        D.broadcast_module(method, dctx)
    D.rank0_call(dctx, lambda: check_free_space(run_dir, method))
    if t.channels_last:
        method.to(memory_format=torch.channels_last)
    L.prepare_model(method, t, cfg.backbone.name, device, dctx, quiet)  # activation checkpointing, FSDP2
    spe = data.train.num_batches(batch, drop_last=True)
    assert o.lr is not None and o.weight_decay is not None  # resolved
    optimizer = build_optimizer(method, L.optim_section(o, method), o.lr, o.weight_decay, device)
    aug_gen = torch.Generator(device=device)
    aug_gen.manual_seed(t.seed + 1 + dctx.rank)  # one augmentation stream per rank (rank 0: the 1-process one)
    state = TrainState(device, aug_gen, total_steps=max(1, t.epochs * spe))
    finished = _restore(run_dir, resume, found, cfg, data, method, optimizer, state, dctx, quiet)
    if dctx.is_main and state.step == 0:  # a resumed run keeps its config.yaml (resumes.jsonl: what changed)
        write_config(run_dir, cfg.to_dict())
    forward: Any = method
    if t.compile:  # falls back to eager, with one logged line, if compiling fails (also at the first call)
        phase("compiling the method (torch.compile: the first steps are slow)", quiet)
        forward = SafeCompiled(method, log=lambda m: D.note(dctx, m))
    stepper = Stepper(method, forward, optimizer, views if views is not None else b.views, device, dctx, micro,
                      accum=t.grad_accum_steps, bf16=t.precision == "bf16", channels_last=bool(t.channels_last),
                      grad_clip=t.grad_clip, skip_non_finite=t.nan_policy == "skip")
    end = min(state.total_steps, t.max_steps) if t.max_steps is not None else state.total_steps  # the bar's end
    logger = MetricsLogger(run_dir, total_steps=end, quiet=quiet) if dctx.is_main else D.NullLogger()
    return Run(cfg, run_dir, data, stepper, state, spe, batch, _schedule(cfg, spe, state.total_steps), logger,
               callbacks, quiet, name=method_name(cfg), start_step=state.step, finished=finished,
               skipped_before=state.skipped, wall_before=state.wall_before,
               train_split=device_split(data.train, device, cfg.data.device_cache, cfg.data.decode))


def _report_init(run_dir: Path, report: InitReport, dctx: D.DistContext, quiet: bool) -> None:
    """What ``backbone.init`` loaded: one line (a warning when a key did not match), all of it in init.json."""
    if not dctx.is_main:
        return
    write_json(run_dir / "init.json", report.to_dict())
    if not report.complete:
        warnings.warn(report.summary(), stacklevel=3)
    elif not quiet:
        print(report.summary(), file=sys.stderr)


def _restore(run_dir: Path, resume: bool, found: tuple[Path, dict[str, Any]] | None, cfg: RunConfig,
             data: ImageDataset, method: torch.nn.Module, optimizer: torch.optim.Optimizer, state: TrainState,
             dctx: D.DistContext, quiet: bool) -> str | None:
    """Load the newest checkpoint (``found``, when resuming) into the model, the optimizer and ``state``, after
    checking that it was trained with this config and data (engine/resume.py). Returns the line to print when
    the run has nothing left to do (its files stay unchanged)."""
    if resume and found is None:
        if dctx.is_main:
            truncate_metrics(run_dir, 0)
        if not quiet:
            print(f"no checkpoint in {run_dir} yet: starting fresh", file=sys.stderr)
    if found is None:
        return None
    ckpt_file, ckpt = found
    changes = check_resume_config(ckpt.get("config"), cfg.to_dict(), ckpt_file)  # before any state loads
    check_resume_data(ckpt.get("data"), data.channels, data.image_size, data.train.num_images, ckpt_file,
                      _fingerprint(data.train).get("fingerprint"))
    # weights of another model: one line naming the file; under FSDP each rank keeps its shard (engine/fsdp.py)
    L.load_full_state(method, optimizer, ckpt["method"], ckpt["optimizer"], ckpt_file)
    msg = state.load_state_dict(ckpt, dctx, cfg.train.seed)
    done = already_finished(run_dir, state.step, state.total_steps, cfg.train.max_steps)
    if done:
        return done
    if msg and not quiet:
        print(msg, file=sys.stderr)
    if dctx.is_main:
        truncate_metrics(run_dir, state.step)
        record_resume(run_dir, state.step, ckpt_file, changes)
        if not (run_dir / "config.yaml").exists():
            write_config(run_dir, ckpt["config"])
    if not quiet:
        print(f"resuming {run_dir} from {ckpt_file.name} (step {state.step}/{state.total_steps})", file=sys.stderr)
    return None


def _already_finished(run: Run) -> TrainResult:
    """A resumed run with nothing left to do: say so and leave every file as it was."""
    if not run.quiet:
        print(run.finished, file=sys.stderr)
    speed, final_loss = previous_result(run.run_dir)
    step = run.state.step
    return TrainResult(run.run_dir, step, step / run.spe, speed, 0.0, final_loss, "finished")


def _train(run: Run) -> TrainResult:
    """The loop, then the final checkpoint and run.json."""
    t, s, dctx = run.cfg.train, run.state, run.dctx
    view = RunView(run.stepper.method, run.data, run.stepper.device, run.spe, dctx.is_main, run.quiet)
    stop = StopOnSignal(t.requeue_signal).install()  # SIGTERM/SIGINT/requeue: finish the step, save, exit
    budget = Budget(t.time_limit_min, run.start_step, dctx)
    run.window = [budget.t_start, 0]
    run.t_launch = budget.t_start
    limit = f", time limit {t.time_limit_min:g} min (the schedule is sized after 3 steps)" if t.time_limit_min else ""
    phase(f"training from step {s.step}: {run.last_step() - s.step} steps of {s.total_steps} ({run.spe} per epoch)"
          f"{limit}", run.quiet)
    stopped = "done"
    run.stepper.method.train()
    try:
        while s.step < run.last_step() and stopped == "done":
            epoch = s.step // run.spe
            gen = torch.Generator().manual_seed(t.seed * 100_003 + epoch)
            batches = D.rank_batches(run.train_split, run.batch, dctx, generator=gen, start_batch=s.step % run.spe)
            for x, idx, y in prefetch(batches, run.stepper.device):
                run.mid_step = True
                ctx = StepContext(step=s.step, total_steps=s.total_steps, epoch=epoch, steps_per_epoch=run.spe)
                out = train_step(run.stepper, s, x, idx, ctx, run.schedule(s.step), y)
                s.step += 1
                run.mid_step = False
                run.logger.tick(s.step)
                run.window[1] += x.shape[0] * dctx.world
                time_up = budget.time_up()
                end_of_run = s.step >= run.last_step() or time_up
                if (s.step % t.log_every == 0 or end_of_run) and _log_step(run, out, budget):
                    stopped = run.stopped_by.stop_kind if run.stopped_by else "stopped"
                    break
                if (total := budget.resize(s.step, s.total_steps)) is not None:
                    _set_total_steps(run, total, budget)
                if t.checkpoint_every and s.step % t.checkpoint_every == 0 and not end_of_run:
                    _stop_if_non_finite(run)  # never let a checkpoint after a NaN replace the good ones
                    _save(run)
                if (kind := signal_stop(stop, dctx, end_of_run)) is not None:
                    stopped = kind
                    break
                if time_up:
                    stopped = "time_limit"
                    break
                if end_of_run:
                    if s.step < s.total_steps:
                        stopped = "max_steps"
                    break
            for cb in run.callbacks:
                if (rec := cb.on_epoch_end(view, s.step)) is not None:
                    run.logger.log(rec)
    except KeyboardInterrupt:
        stopped = "interrupted"
    finally:
        run.logger.close()
        stop.restore()
    all_skipped = all_skipped_message(s.step - run.start_step, s.skipped - run.skipped_before, run.name)
    if all_skipped:
        raise TrainingError(all_skipped)
    if s.first_bad_step(dctx) < 0 and not run.mid_step:  # a step cut half-way is not saved
        _save(run)
    return _finish(run, stopped, stop.received, budget.elapsed())


def _log_step(run: Run, out: Any, budget: Budget) -> bool:
    """Write the step's record (loss window, lr, speed, method logs, callbacks' values); True: a callback stops."""
    s, t, dctx = run.state, run.cfg.train, run.dctx
    _stop_if_non_finite(run)
    now = time.perf_counter()
    run.last_loss = s.window_loss(dctx)
    rec = {"step": s.step, "epoch": round(s.step / run.spe, 4), "loss": run.last_loss,
           "lr": run.schedule(s.step - 1), "images_per_s": run.window[1] / max(now - run.window[0], 1e-9),
           "time_s": now - budget.t_start}
    rec.update({k: float(v) for k, v in out.logs.items()})
    if s.skipped:
        rec["skipped_steps"] = s.skipped
    for cb in run.callbacks:
        cb.on_log(s.step, rec, out)
    run.logger.log(rec)
    run.logger.progress(rec)
    if s.step % t.log_every == 0 or s.step >= s.total_steps:  # a max_steps stop leaves the window open
        s.reset_window()  # (its partial sum is checkpointed, so a resume logs the same average)
        run.window = [now, 0]
    stoppers = [cb for cb in run.callbacks if cb.can_stop]
    if not stoppers:
        return False
    first = D.broadcast_value(dctx, next((i for i, cb in enumerate(stoppers) if cb.stop_requested), -1))
    run.stopped_by = stoppers[first] if first >= 0 else None
    return run.stopped_by is not None


def _set_total_steps(run: Run, total: int, budget: Budget | None = None) -> None:
    """The budget's new length of the run: the schedule (warm-up at most a fifth of it) and the progress bar
    follow; the first sizing prints the estimate, and warns when the budget is too short to learn anything."""
    run.state.total_steps = total
    run.schedule = _schedule(run.cfg, run.spe, total)
    run.logger.set_total(run.last_step())
    if budget is None or run.estimated or run.cfg.train.time_limit_min is None or not run.dctx.is_main:
        return
    run.estimated = True
    line, warning = estimate_message(run.cfg.train.time_limit_min, total, run.spe,
                                     budget.rate * run.batch, run.schedule.warmup_steps,
                                     capped=total == budget.cap)
    run.logger.note(line)
    if warning:
        warnings.warn(warning, stacklevel=2)


def _schedule(cfg: RunConfig, spe: int, total_steps: int) -> WarmupCosine:
    o = cfg.optim
    assert o.lr is not None  # resolved
    return run_schedule(o.lr, total_steps, int(round(o.warmup_epochs * spe)), o.min_lr_ratio)


def _stop_if_non_finite(run: Run) -> None:
    """Raise :class:`TrainingError` naming the first non-finite step (one host sync; log and checkpoint steps)."""
    bad = run.state.first_bad_step(run.dctx)
    if bad >= 0:  # (never set under nan_policy=skip)
        what = KIND.get(int(run.state.first_kind), "loss or gradient (on another rank)")
        raise TrainingError(
            f"non-finite {what} at step {bad} (method {run.name}, lr {run.schedule(bad):.3g}); "
            f"stopped, the last good checkpoint in {run.run_dir / 'checkpoints'} is kept; "
            "try a lower optim.lr or train.grad_clip, or train.nan_policy=skip")


def _save(run: Run) -> None:
    """Checkpoint the model, the optimizer and the state (every rank calls it: the RNG gather is collective, and
    so is gathering FSDP's shards into full tensors)."""
    state = run.state.state_dict(run.dctx)
    state["log"]["wall_s_total"] = round(run.wall_before + time.perf_counter() - run.t_launch, 3)
    weights, optim = L.full_state_dicts(run.stepper.method, run.stepper.optimizer)
    if not run.dctx.is_main:
        return
    ds = run.data
    fsync_path(run.run_dir / "metrics.jsonl")  # the log up to this step is as durable as the checkpoint
    save_checkpoint({
        "method": weights, "optimizer": optim, **state,
        "epoch": run.state.step / run.spe, "config": run.cfg.to_dict(), "method_name": run.name,
        "data": {"channels": ds.channels, "image_size": list(ds.image_size), "num_train": ds.train.num_images,
                 "mean": list(ds.mean), "std": list(ds.std), **_fingerprint(ds.train)},
    }, checkpoint_path(run.run_dir, run.state.step))
    if run.cfg.train.keep_checkpoints:  # 0 keeps every one; a finite one always stays
        prune_checkpoints(run.run_dir, keep=run.cfg.train.keep_checkpoints, newest_finite=tensors_finite(weights))


def _fingerprint(split: Any) -> dict[str, str]:
    """``{"fingerprint": ...}`` for data whose order a resume depends on beyond its size (a shard folder)."""
    fp = getattr(split, "fingerprint", None)
    return {"fingerprint": fp} if isinstance(fp, str) else {}


def _launches(run_dir: Path) -> int:
    """How many launches trained this run: the first one and one per line of ``resumes.jsonl``."""
    try:
        return 1 + sum(1 for ln in (run_dir / "resumes.jsonl").read_text().splitlines() if ln.strip())
    except OSError:
        return 1


def _finish(run: Run, stopped: str, signal: str | None, wall: float) -> TrainResult:
    """The closing message, the result, and run.json (rank 0)."""
    step, cfg, ckpts = run.state.step, run.cfg, run.run_dir / "checkpoints"
    if stopped in ("interrupted", "requeue") and not run.quiet:
        saved = "checkpoint saved" if not run.mid_step else "interrupted mid-step, the last checkpoint is kept"
        then = (" for a requeue; the requeued job continues with --resume" if stopped == "requeue"
                else "; continue with --resume")
        print(f"{signal or 'KeyboardInterrupt'} at step {step}: {saved} in {ckpts}{then}", file=sys.stderr)
    if run.stopped_by is not None and not run.quiet:
        print(f"stopped at step {step} {run.stopped_by.stop_message()}; the last checkpoint is kept in {ckpts}",
              file=sys.stderr)
    result = TrainResult(run.run_dir, step, step / run.spe,
                         (step - run.start_step) * run.batch / max(wall, 1e-9), wall, run.last_loss,
                         stopped)
    if not run.dctx.is_main:
        return result
    extra = {k: v for cb in run.callbacks for k, v in cb.summary().items()}
    write_json(run.run_dir / "run.json", {
        "method": run.name, "backbone": cfg.backbone.name, "width": cfg.backbone.width,
        "data": cfg.data.path, "steps": step, "total_steps": run.state.total_steps, "epochs": round(step / run.spe, 3),
        "images_per_s": round(result.images_per_s, 1), "wall_s": round(wall, 1),
        "wall_s_total": round(run.wall_before + wall, 1), "launches": _launches(run.run_dir),
        "final_loss": run.last_loss,
        "stopped": stopped, "signal": signal, "device": str(run.stepper.device), "world_size": run.dctx.world,
        "fsdp": run.stepper.sharded,
        "lr": cfg.optim.lr, "weight_decay": cfg.optim.weight_decay, "optimizer": cfg.optim.name, **extra,
    })
    return result
