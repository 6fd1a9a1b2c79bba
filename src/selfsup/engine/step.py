"""One optimisation step: views on the device → forward under autocast → backward (accumulated over micro-batches)
→ gradient average over ranks → clip → non-finite check → optimizer step → shared-part updates. Under
``train.fsdp`` the parameters are shards whose gradients FSDP2 has averaged in backward (engine/fsdp.py).

:func:`train_step` is the whole step; :class:`Stepper` holds what does not change from step to step.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..augment.pipeline import MultiViewPipeline, Views
from ..components.base import StepContext, discard_staged, update_parts
from ..methods.base import Method, MethodOutput, ViewBatch
from . import distributed as D
from .fsdp import is_sharded, sharded_grad_norm
from .nonfinite import KIND, BufferSnapshot, bad_code, grad_norm
from .state import TrainState


@dataclass
class Stepper:
    """The fixed parts of a step. ``forward`` is the method or its compiled wrapper."""

    method: Method
    forward: Callable[..., Any]
    optimizer: torch.optim.Optimizer
    views: MultiViewPipeline
    device: torch.device
    dctx: D.DistContext
    micro: int  # images per forward pass on this rank
    accum: int = 1  # train.grad_accum_steps
    bf16: bool = False
    channels_last: bool = False
    grad_clip: float | None = None
    skip_non_finite: bool = False  # train.nan_policy == "skip"

    def __post_init__(self) -> None:
        self.params: list[torch.Tensor] = [p for p in self.method.parameters() if p.requires_grad]
        # train.fsdp: the parameters are shards and FSDP2 averages their gradients in backward (engine/fsdp.py)
        self.sharded = is_sharded(self.method)
        # nan_policy=skip: every buffer is copied before the step and put back if the step is skipped
        self.snapshot = BufferSnapshot(self.method) if self.skip_non_finite else None


def forward_backward(s: Stepper, x: torch.Tensor, idx: torch.Tensor, ctx: StepContext, aug_gen: torch.Generator,
                     labels: torch.Tensor | None = None) -> tuple[torch.Tensor, MethodOutput]:
    """Gradients of the batch's loss, accumulated over ``s.accum`` micro-batches; returns the (detached, fp32)
    loss and the last micro-batch's output. ``labels`` reach the method only when it declares ``needs_labels``."""
    labels = labels if s.method.needs_labels else None
    loss = torch.zeros((), device=s.device)
    for i in range(s.accum):  # gradient accumulation: micro-batches of `micro` images per rank
        part = slice(i * s.micro, (i + 1) * s.micro) if s.accum > 1 else slice(None)
        with torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=s.bf16):
            views = s.views(x[part], aug_gen)
            boxes = views.boxes if isinstance(views, Views) else None  # crop boxes, when the pipeline records them
            vs: list[torch.Tensor] = list(views)  # a plain list into the (possibly compiled) forward
            if s.channels_last:
                vs = [v.contiguous(memory_format=torch.channels_last) for v in vs]
            out = s.forward(ViewBatch(vs, idx[part], labels[part] if labels is not None else None, boxes), ctx)
        micro_loss = out.loss if s.accum == 1 else out.loss / s.accum
        micro_loss.backward()
        loss = loss + micro_loss.detach().float()
    return loss, out


def train_step(s: Stepper, state: TrainState, x: torch.Tensor, idx: torch.Tensor, ctx: StepContext,
               lr: float, labels: torch.Tensor | None = None) -> MethodOutput:
    """One step at learning rate ``lr`` (``state.step`` is the step being taken; the caller advances it);
    ``labels`` (B,) the batch's class labels, passed on to a method that declares ``needs_labels``."""
    for g in s.optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)  # layer-wise decay groups (Method.lr_scales) keep their ratio
    x, idx = x.to(s.device, non_blocking=True), idx.to(s.device)
    labels = labels.to(s.device) if labels is not None else None
    if s.snapshot is not None:
        s.snapshot.take()
    s.optimizer.zero_grad(set_to_none=True)
    loss, out = forward_backward(s, x, idx, ctx, state.aug_gen, labels)
    if s.sharded:  # gradients reduce-scattered (averaged) by FSDP2 in backward
        gnorm = sharded_grad_norm(s.params, s.grad_clip)
    else:
        D.average_gradients(s.params, s.dctx)
        gnorm = torch.nn.utils.clip_grad_norm_(s.params, s.grad_clip) if s.grad_clip else grad_norm(s.params)
    code = bad_code(loss, gnorm)  # 0, or what went non-finite (loss or gradient), on the device
    # the default policy ("stop") never syncs here; "skip" must know now (one host sync per step)
    if s.skip_non_finite and not bool(D.all_finite(code == 0, s.dctx)):
        # train.nan_policy=skip: this step leaves no trace (no update; BatchNorm statistics, queues, centres and
        # staged rows as before its forward), the run goes on with the next batch
        s.optimizer.zero_grad(set_to_none=True)
        assert s.snapshot is not None
        s.snapshot.restore()
        discard_staged(s.method)
        state.skipped += 1
        print(f"step {state.step}: non-finite {KIND.get(int(code), 'value on another rank')}, update skipped "
              "(train.nan_policy=skip)", file=sys.stderr)
        return out
    s.optimizer.step()
    update_parts(s.method, ctx)
    state.add_loss(loss)
    if not s.skip_non_finite:
        state.note_code(code)  # checked at log and checkpoint steps (TrainState.first_bad_step)
    return out
