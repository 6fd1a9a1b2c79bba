"""The last layer of the DINO head (weight-normalised) and SwAV's prototypes (renormalised after each step).

:class:`WeightNormLinear` (DINO): each output unit ``k`` has a direction ``v_k``; the layer computes
``g_k · <x, v_k / ||v_k||>`` (Salimans & Kingma 2016), the gradient flowing through the normalisation.

:class:`Prototypes` (SwAV) is a plain linear layer whose rows are put back on the unit sphere after every
optimizer step (:meth:`Prototypes.normalize_`, which the SwAV method's part calls from the engine's ``after_step``;
the authors' ``main_swav.py`` does the same at the start of each iteration):
the forward computes ``<x, c_k>`` with the stored unit rows, so the gradient is that of the plain dot product. The
values equal a weight-normalised layer's, the gradients do not: through the normalisation only the component
orthogonal to ``c_k`` remains, divided by ``||v_k||``, which at a small initialisation (std 0.02) makes the
prototypes rotate many times faster than the paper's under plain SGD.

Both papers freeze this layer for the first epoch: ``forward(x, frozen=True)`` uses detached weights so no
gradient reaches them (and optimizers skip a parameter whose ``grad`` is None, weight decay included).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


class WeightNormLinear(nn.Module):
    """``in_dim → out_dim`` without bias, rows of the weight normalised; ``learn_gain`` adds a per-row gain."""

    def __init__(self, in_dim: int, out_dim: int, *, learn_gain: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.trunc_normal_(self.weight, std=0.02)
        self.gain = nn.Parameter(torch.ones(out_dim)) if learn_gain else None

    @property
    def out_dim(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: torch.Tensor, *, frozen: bool = False) -> torch.Tensor:
        """x: (B, in_dim) → (B, out_dim). ``frozen``: no gradient reaches this layer's parameters."""
        w = self.weight.detach() if frozen else self.weight
        w = F.normalize(w, dim=1)
        if self.gain is not None:
            g = self.gain.detach() if frozen else self.gain
            w = w * g[:, None]
        return F.linear(x, w.to(x.dtype))


class Prototypes(nn.Module):
    """SwAV's K prototypes (Caron et al. 2020): ``weight`` (K, dim), unit rows; scores (B, K) = ``x · weightᵀ``,
    the cosine to each prototype for an L2-normalised ``x``. Rows are normalised at construction; the owner calls
    :meth:`normalize_` after every optimizer step."""

    UNIT_TOLERANCE = 1e-4  # rows further from norm 1 on load come from a checkpoint that did not renormalise

    def __init__(self, dim: int, count: int) -> None:
        if count < 2:
            raise ConfigError(f"method.n_prototypes must be >= 2, got {count}")
        super().__init__()
        self.weight = nn.Parameter(torch.empty(count, dim))
        nn.init.trunc_normal_(self.weight, std=0.02)
        self.normalize_()

    @property
    def out_dim(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: torch.Tensor, *, frozen: bool = False) -> torch.Tensor:
        """x: (B, dim) → (B, K) with the stored rows (no normalisation here, so none in the gradient).
        ``frozen``: no gradient reaches the prototypes."""
        w = self.weight.detach() if frozen else self.weight
        return F.linear(x, w.to(x.dtype))

    @torch.no_grad()
    def normalize_(self) -> None:
        """Put every row back on the unit sphere, in place."""
        self.weight.copy_(F.normalize(self.weight, dim=1))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        norms = self.weight.detach().norm(dim=1)
        if not bool(((norms - 1).abs() <= self.UNIT_TOLERANCE).all()):
            self.normalize_()  # an older checkpoint (normalised in the forward); unit rows are kept bit for bit
