"""Synchronised BatchNorm: batch statistics over the global batch, on any device.

With per-rank batches, plain BatchNorm normalises each rank's rows by that rank's statistics, so W processes
with batch B/W are *not* one process with batch B (and the per-sample loss then differs). SyncBatchNorm makes
them equal. ``torch.nn.SyncBatchNorm`` only runs on accelerators; :class:`GlobalBatchNorm` is the same
computation written with the differentiable all-reduce of :mod:`selfsup.components.gather`, so it also runs on
CPU with gloo. :func:`convert_sync_bn` uses torch's kernel on CUDA and this one elsewhere.

Statistics are two-pass (mean, then the mean squared deviation) in float32, as ``F.batch_norm`` does; the
running variance uses the unbiased global variance.
"""
from __future__ import annotations

import torch
from torch import nn

from .gather import all_reduce_sum_with_grad, world_size


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm{1,2,3}d whose training statistics span every rank (plain BatchNorm in one process or eval)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {input.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        count = torch.tensor(float(x.numel() // x.shape[1]), device=x.device) * world_size()
        mean = all_reduce_sum_with_grad(xf.sum(dims)) / count
        var = all_reduce_sum_with_grad((xf - mean.view(shape)).pow(2).sum(dims)) / count
        if self.track_running_stats:
            assert self.num_batches_tracked is not None and self.running_mean is not None
            assert self.running_var is not None
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * count / (count - 1).clamp_min(1), alpha=m)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_bn(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm in ``module`` (in place, parameters and buffers shared) by a synchronised one."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module)


def _convert(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, _convert(child))
    return out


def has_batch_norm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())
