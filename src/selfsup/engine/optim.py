"""Optimizers: SGD, AdamW and LARS, with parameter groups that keep weight decay off norms and biases."""
from __future__ import annotations

import torch
from torch import nn

from ..config import OptimConfig
from ..errors import ConfigError
from ..methods.base import Method

OPTIMIZERS = ("sgd", "adamw", "lars")


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) as used by SimCLR/BYOL: SGD momentum with a layer-wise trust ratio.

    For each parameter p with gradient g (weight decay wd added to g first): ``q = η·||p|| / ||g||``
    (1 where either norm is 0) scales the update. Groups with ``lars_exclude=True`` (norms, biases) skip
    both the trust ratio and weight decay.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
                        lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if not group["lars_exclude"]:
                    if group["weight_decay"]:
                        g = g.add(p, alpha=group["weight_decay"])
                    p_norm, g_norm = _norm(p), _norm(g)
                    q = torch.where((p_norm > 0) & (g_norm > 0),
                                    group["trust_coefficient"] * p_norm / g_norm, torch.ones_like(p_norm))
                    g = g.mul(q)
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = torch.clone(g).detach()
                else:
                    buf.mul_(group["momentum"]).add_(g)
                p.add_(buf, alpha=-group["lr"])
        return loss


def _norm(t: torch.Tensor) -> torch.Tensor:
    """||t||₂ as a plain 0-dim tensor; for FSDP2's sharded parameters (DTensors, engine/fsdp.py) the norm over
    every rank's shard (one all-reduce), so the trust ratio is the unsharded one."""
    n = torch.linalg.vector_norm(t)
    full = getattr(n, "full_tensor", None)  # a DTensor's norm is a partial value until reduced
    return full() if full is not None else n


def param_groups(model: nn.Module, weight_decay: float, exclude_norm_bias: bool = True,
                 lr_scales: dict[str, float] | None = None) -> list[dict]:
    """Two groups: weights with decay, and norms/biases (1-D parameters) without decay or LARS adaptation.

    ``lr_scales`` (parameter name → lr multiplier, :meth:`~selfsup.methods.base.Method.lr_scales`): each of the
    two groups is split by scale, and a group whose scale is not 1 carries ``lr_scale`` (the step multiplies the
    scheduled lr by it). Without scales the groups are exactly the two above.
    """
    if lr_scales:
        return _scaled_groups(model, weight_decay, exclude_norm_bias, lr_scales)
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if exclude_norm_bias and p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lars_exclude": True})
    return groups


def _scaled_groups(model: nn.Module, weight_decay: float, exclude_norm_bias: bool,
                   lr_scales: dict[str, float]) -> list[dict]:
    """:func:`param_groups` split by lr scale: decayed groups first, each kind by decreasing scale."""
    by_key: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = exclude_norm_bias and p.ndim <= 1
        by_key.setdefault((no_decay, float(lr_scales.get(name, 1.0))), []).append(p)
    groups = []
    for no_decay, scale in sorted(by_key, key=lambda k: (k[0], -k[1])):
        g: dict = {"params": by_key[(no_decay, scale)], "weight_decay": 0.0 if no_decay else weight_decay}
        if no_decay:
            g["lars_exclude"] = True
        if scale != 1.0:
            g["lr_scale"] = scale
        groups.append(g)
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float, weight_decay: float,
                    device: torch.device) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg.name``; ``lr`` and ``weight_decay`` are already resolved. A method's
    :meth:`~selfsup.methods.base.Method.lr_scales` give groups of their own, at ``lr · lr_scale``."""
    scales = model.lr_scales() if isinstance(model, Method) else None
    groups = param_groups(model, weight_decay, cfg.exclude_norm_bias, scales)
    for g in groups:
        if "lr_scale" in g:
            g["lr"] = lr * g["lr_scale"]
    fused = cfg.fused if cfg.fused is not None else device.type == "cuda"
    if cfg.name == "sgd":
        for g in groups:
            g.pop("lars_exclude", None)
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=False,
                               **({"fused": True} if fused else {}))
    if cfg.name == "adamw":
        for g in groups:
            g.pop("lars_exclude", None)
        return torch.optim.AdamW(groups, lr=lr, betas=(cfg.betas[0], cfg.betas[1]), **({"fused": True} if fused else {}))
    if cfg.name == "lars":
        return LARS(groups, lr=lr, momentum=cfg.momentum)
    raise ConfigError(f"unknown optimizer 'optim.name={cfg.name}'; known: {', '.join(OPTIMIZERS)}")
