"""EMA (momentum) teacher: ``θ_t ← m·θ_t + (1 − m)·θ_s`` after every optimizer step (MoCo, BYOL, DINO)."""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from .base import SharedPart, StepContext


class EMATeacher(SharedPart):
    """A frozen copy of ``student`` updated by the engine with momentum ``schedule(progress)``.

    The teacher's parameters never receive gradients; its buffers (BN statistics) are copied from the student.
    The student is held by reference, not as a submodule, so its weights are not saved twice.
    """
    last_momentum: torch.Tensor

    def __init__(self, student: nn.Module, momentum: float | Callable[[float], float] = 0.996) -> None:
        super().__init__()
        if isinstance(momentum, (int, float)) and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
        self.teacher = copy.deepcopy(student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self._student = [student]  # a list hides it from nn.Module registration
        self._momentum = momentum
        self.register_buffer("last_momentum", torch.tensor(float(momentum) if isinstance(momentum, (int, float)) else 0.0))

    def momentum(self, progress: float) -> float:
        m = self._momentum(progress) if callable(self._momentum) else float(self._momentum)
        if not 0.0 <= m <= 1.0:
            raise ValueError(f"EMA momentum must be in [0, 1], got {m}")
        return m

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            return self.teacher(*args, **kwargs)

    @torch.no_grad()
    def update(self, momentum: float) -> None:
        """θ_t ← m·θ_t + (1 − m)·θ_s for parameters; buffers are copied."""
        student = self._student[0]
        t_params: list[torch.Tensor] = [p for p in self.teacher.parameters()]
        s_params: list[torch.Tensor] = [p.detach() for p in student.parameters()]
        torch._foreach_mul_(t_params, momentum)
        torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)
        for bt, bs in zip(self.teacher.buffers(), student.buffers()):
            bt.copy_(bs)
        self.last_momentum.fill_(momentum)

    def after_step(self, ctx: StepContext) -> None:
        self.update(self.momentum(ctx.progress))

    def train(self, mode: bool = True) -> "EMATeacher":
        super().train(mode)
        self.teacher.train(mode)
        return self
