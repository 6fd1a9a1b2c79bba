"""Detecting non-finite training signals: the loss and the gradients.

A finite loss can still give inf/NaN gradients (``sqrt`` at 0, a division by a collapsed std, an overflow in
a custom backward); one such update turns every weight into NaN. The trainer checks both, per step, on the
device (no host sync under ``nan_policy: stop``; ``skip`` must sync to decide whether to apply the update).
"""
from __future__ import annotations

from typing import Iterable

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
