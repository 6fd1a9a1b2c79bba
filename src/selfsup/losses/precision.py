"""Losses compute in float32, whatever autocast the caller runs under.

Casting the inputs with ``.float()`` is not enough: under ``torch.autocast`` a matmul or einsum of float32 tensors
still runs in bf16 (autocast casts its inputs down), which puts 0.2–3.5 % of relative error into contrastive,
redundancy and distillation losses and their gradients. :func:`fp32_loss` wraps a loss so that its body runs with
autocast disabled on the inputs' device and with every bf16/fp16 tensor argument cast to float32 (float64 stays
float64, integer and bool tensors are untouched). The gradient flows back through the cast to the caller's dtype.
"""
from __future__ import annotations

import functools
from contextlib import ExitStack
from typing import Any, Callable, TypeVar

import torch

LossFn = TypeVar("LossFn", bound=Callable[..., Any])

_LOW = (torch.float16, torch.bfloat16)


def _to_fp32(x: Any) -> Any:
    if isinstance(x, torch.Tensor) and x.dtype in _LOW:
        return x.float()
    if isinstance(x, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in x):
        return type(x)(_to_fp32(v) for v in x)
    return x


def _device_types(values: tuple[Any, ...]) -> set[str]:
    types = {v.device.type for v in values if isinstance(v, torch.Tensor)}
    return types or {"cpu"}


def fp32_loss(fn: LossFn) -> LossFn:
    """Decorator: run ``fn`` in float32 with autocast off (see the module docstring). Marks it ``__fp32_loss__``."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with ExitStack() as stack:
            for device_type in _device_types(args + tuple(kwargs.values())):
                if torch.is_autocast_enabled(device_type):
                    stack.enter_context(torch.autocast(device_type, enabled=False))
            return fn(*(_to_fp32(a) for a in args), **{k: _to_fp32(v) for k, v in kwargs.items()})

    wrapper.__fp32_loss__ = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]
