"""Detecting non-finite training signals: the loss and the gradients.

A finite loss can still give inf/NaN gradients (``sqrt`` at 0, a division by a collapsed std, an overflow in
a custom backward); one such update turns every weight into NaN. The trainer checks both, per step, on the
device (no host sync under ``nan_policy: stop``; ``skip`` must sync to decide whether to apply the update).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch

LOSS, GRADIENT = 1, 2  # codes of what went non-finite first
KIND = {LOSS: "loss", GRADIENT: "gradient"}


def grad_norm(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """Total L2 norm of the gradients (a 0-dim tensor; inf/NaN when any gradient is)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    total = getattr(torch.nn.utils, "get_total_norm", None)
    if total is not None:
        return total(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


def bad_code(loss: torch.Tensor, gnorm: torch.Tensor | None) -> torch.Tensor:
    """0 when all is finite, else :data:`LOSS` or :data:`GRADIENT` (a 0-dim long tensor, on the loss's device)."""
    code = torch.where(torch.isfinite(loss.detach()), 0, LOSS)
    if gnorm is not None:
        code = torch.where((code == 0) & ~torch.isfinite(gnorm.to(code.device)), GRADIENT, code)
    return code.long()


def tensors_finite(state: Mapping[str, Any]) -> bool:
    """Whether every floating-point tensor in a state dict is finite (one host sync)."""
    flags = [torch.isfinite(v).all() for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    return bool(torch.stack([f.to(flags[0].device) for f in flags]).all()) if flags else True


class BufferSnapshot:
    """Copies of a module's buffers taken before a step, put back when the step is skipped (``nan_policy: skip``).

    A skipped step drops the optimizer update, so the parameters stay as they were; but its forward already ran in
    train mode and may have written buffers: BatchNorm running statistics (inf/NaN after a non-finite batch),
    ``num_batches_tracked``, and any state a method updates inside its forward. Restoring every buffer makes the
    skipped step leave no trace. Shared parts (queues, EMA teachers, centres, memory banks) are updated after the
    optimizer step, which a skipped step never reaches; their buffers are restored all the same.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.saved: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def take(self) -> None:
        """Copy every buffer (in place into the copies of the previous step: no allocation per step)."""
        live = dict(self.module.named_buffers())
        for name in [n for n in self.saved if n not in live]:
            del self.saved[name]
        for name, b in live.items():
            c = self.saved.get(name)
            if c is None or c.shape != b.shape or c.dtype != b.dtype or c.device != b.device:
                self.saved[name] = b.detach().clone()
            else:
                c.copy_(b)

    @torch.no_grad()
    def restore(self) -> None:
        """Put every buffer back, by name (also a buffer the step replaced by another tensor)."""
        live = dict(self.module.named_buffers())
        for name, c in self.saved.items():
            b = live.get(name)
            if b is not None and b.shape == c.shape and b.dtype == c.dtype:
                b.copy_(c)
            else:
                owner, _, leaf = name.rpartition(".")
                self.module.get_submodule(owner)._buffers[leaf] = c.clone()


def all_skipped_message(steps_run: int, skipped: int, method: str) -> str | None:
    """The error for a run whose every step was skipped (the model was never updated), else None."""
    if steps_run <= 0 or skipped < steps_run:
        return None
    return (f"every step was non-finite ({skipped} of {steps_run} skipped under train.nan_policy=skip, method "
            f"{method}): the model was never updated; check the data for inf/NaN pixels, lower optim.lr, or set "
            "train.grad_clip")
