"""One MLP builder for every projector and predictor (heads are data, not classes)."""
from __future__ import annotations

from typing import Sequence

from torch import nn


def mlp(dims: Sequence[int], *, norm: str | None = "bn", last_norm: str | None = None, bias: bool | None = None,
        act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear layers ``dims[0] → dims[1] → … → dims[-1]``; norm + activation between them.

    ``norm``: "bn" (BatchNorm1d), "ln" (LayerNorm) or None after every hidden layer; ``last_norm`` after the last
    layer (SimCLR v2 and Barlow Twins use a non-affine BN there). Biases are dropped before a BatchNorm.
    Example: SimCLR's head is ``mlp([512, 2048, 128])``; a linear head is ``mlp([512, 128])``.
    """
    if len(dims) < 2:
        raise ValueError(f"an MLP needs at least input and output sizes, got {list(dims)}")
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        last = i == len(dims) - 2
        this_norm = last_norm if last else norm
        use_bias = bias if bias is not None else this_norm != "bn"
        layers.append(nn.Linear(dims[i], dims[i + 1], bias=use_bias))
        if this_norm == "bn":
            layers.append(nn.BatchNorm1d(dims[i + 1], affine=not last))
        elif this_norm == "ln":
            layers.append(nn.LayerNorm(dims[i + 1]))
        elif this_norm is not None:
            raise ValueError(f"unknown norm '{this_norm}'; use 'bn', 'ln' or None")
        if not last:
            layers.append(act(inplace=True) if act is nn.ReLU else act())
    return nn.Sequential(*layers)


def projection_head(in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2, *, norm: str | None = "bn",
                    last_norm: str | None = None) -> nn.Sequential:
    """``layers`` linear layers (1 = linear projection) with hidden width ``hidden_dim``."""
    if layers < 1:
        raise ValueError(f"a projection head needs >= 1 layer, got {layers}")
    return mlp([in_dim] + [hidden_dim] * (layers - 1) + [out_dim], norm=norm, last_norm=last_norm)
