"""Protocols that train with labels through images: augmented linear probe, fine-tuning, supervised reference.

- ``linear-aug``: the standard linear evaluation (frozen backbone, random resized crop + flip, SGD, cosine),
  slower than the cached ``linear`` but what papers report.
- ``finetune``: the whole network with labels; separate learning rates for the backbone and the new linear
  head; optional layer-wise decay (``layer_decay < 1``; the ViT helper when available).
- ``supervised``: the same architecture from random init, trained with labels for the pretraining budget (the
  run's epochs unless ``--epochs``/``supervised.epochs`` says otherwise) so users see the gap to supervision.
  It does not depend on the pretrained weights, so it runs once (no separate baseline).

Each works on a copy of the backbone: the evaluated model is never modified.
"""
from __future__ import annotations

import copy
from typing import Any, cast

from torch import nn

from ..registry import EVALUATORS
from .protocols import EvalContext
from .trainloop import train_classifier

_COMMON = {"batch_size": 256, "weight_decay": 0.0, "crop_scale_min": 0.08, "augment": True}


def _budget(ctx: EvalContext, default_key: str = "epochs") -> int:
    epochs = ctx.opt(default_key, ctx.epochs)
    if epochs < 1:
        from ..errors import ConfigError

        raise ConfigError(f"eval option '{ctx.protocol}.epochs' must be >= 1, got {epochs}")
    return epochs


def run_trained(ctx: EvalContext, backbone: nn.Module, *, train=None, lr_backbone: float | None, epochs: int,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train a fresh linear head (and the backbone when ``lr_backbone`` is set) on ``train`` (default: the full
    train split); test on the full test split. Returns the protocol's result for one seed."""
    import torch

    d = ctx.data
    train = train if train is not None else d.train
    torch.manual_seed(ctx.seed)
    head = nn.Linear(cast(int, backbone.num_features), ctx.num_classes)  # a Backbone's (or any encoder's) width
    p = {k: ctx.opt(k) for k in ("lr_head", "batch_size", "weight_decay", "crop_scale_min", "augment")}
    layer_decay = ctx.opt("layer_decay") if lr_backbone is not None and "layer_decay" in _declared(ctx) else 1.0
    assert d.test is not None  # evaluation data has a test split
    r = train_classifier(backbone, head, train, d.test, d.mean, d.std, ctx.device, epochs=epochs,
                         lr_head=p["lr_head"], lr_backbone=lr_backbone, batch_size=p["batch_size"],
                         weight_decay=p["weight_decay"], augment=p["augment"], crop_scale_min=p["crop_scale_min"],
                         layer_decay=layer_decay, seed=ctx.seed)
    params = {**p, "epochs": epochs, "lr_backbone": lr_backbone, "optimizer": "sgd nesterov 0.9, cosine",
              "augmentation": (f"random resized crop (scale {p['crop_scale_min']}-1) + flip" if p["augment"]
                               else "none"), "train_loss": round(r["train_loss"], 4), "steps": r["steps"],
              **(extra or {})}
    if lr_backbone is not None:
        params.update(layer_decay=layer_decay, layer_decay_rule=r["layer_decay_rule"])
    return {"top1": r["top1"], "labelled_images": int(train.num_images), "params": params}


def _declared(ctx: EvalContext) -> dict[str, Any]:
    return EVALUATORS.entry(ctx.protocol).meta.get("options", {})


@EVALUATORS.register("linear-aug", help="standard linear probe: frozen backbone, crop+flip, SGD, cosine (--epochs)",
                     options={"epochs": 30, "lr_head": 0.1, **_COMMON})
def linear_aug_protocol(ctx: EvalContext) -> dict[str, Any]:
    r = run_trained(ctx, copy.deepcopy(ctx.backbone), lr_backbone=None, epochs=_budget(ctx))
    r["params"]["variant"] = "augmented (frozen backbone, images through the network every epoch)"
    return r


@EVALUATORS.register("finetune", help="whole network with labels: backbone lr, head lr, optional layer-wise decay",
                     options={"epochs": 30, "lr_head": 0.1, "lr_backbone": 0.01, "layer_decay": 1.0,
                              **{**_COMMON, "weight_decay": 5e-4}})
def finetune_protocol(ctx: EvalContext) -> dict[str, Any]:
    return run_trained(ctx, copy.deepcopy(ctx.backbone), lr_backbone=ctx.opt("lr_backbone"), epochs=_budget(ctx))


@EVALUATORS.register("supervised", help="reference: same backbone from random init trained with labels "
                     "(default budget: the run's pretraining epochs)", skip_baseline=True,
                     options={"epochs": 0, "lr_head": 0.1, "lr_backbone": 0.1, **{**_COMMON, "weight_decay": 5e-4}})
def supervised_protocol(ctx: EvalContext) -> dict[str, Any]:
    import torch

    epochs = ctx.opt("epochs", ctx.epochs) or ctx.pretrain_epochs or 10
    if ctx.init_backbone is not None:  # the baseline's random init: same architecture, same init code
        backbone, init = copy.deepcopy(ctx.init_backbone), "random (the baseline's init)"
    else:
        backbone, init = copy.deepcopy(ctx.backbone), "random (reset_parameters)"
        torch.manual_seed(ctx.seed)
        for m in backbone.modules():
            if m is not backbone and hasattr(m, "reset_parameters"):
                m.reset_parameters()  # type: ignore[operator]  # nn.Module.__getattr__ types it Tensor | Module
    return run_trained(ctx, backbone, lr_backbone=ctx.opt("lr_backbone"), epochs=int(epochs),
                       extra={"init": init, "budget": "pretraining epochs"
                              if not (ctx.opt("epochs") or ctx.epochs) else "given epochs"})
