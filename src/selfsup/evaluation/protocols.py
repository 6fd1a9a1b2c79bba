"""Registered evaluation protocols and the context they share.

A protocol is a function ``fn(ctx: EvalContext) -> dict`` registered in ``EVALUATORS`` with the options it
accepts and their defaults (``options={...}``). It returns, for ONE seed:

- float metrics (``"top1"`` and friends, in [0, 1]),
- ``"params"``: the hyper-parameters it actually used (so a number always says how it was produced),
- ``"labelled_images"``: how many labelled training images it saw,
- optionally ``"summary"``: the metric names to show in tables (default ``["top1"]``) and other JSON values.

The runner repeats a protocol over ``--seeds N`` seeds, aggregates mean ± std, and runs everything on the
trained backbone and on the same architecture at random init (the baseline). Registration meta:
``deterministic=True`` (the seed cannot change the result: run once), ``skip_baseline=True`` (the protocol
does not depend on the pretrained weights), ``finalize=fn(result, run_dir)`` (called once with the whole
``eval.json`` mapping, e.g. to draw a plot).

Options come from ``--set key=value`` (every requested protocol that declares ``key``) or
``--set protocol.key=value`` (that protocol only); unknown keys are errors naming the valid ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import parse_value
from ..data.base import ImageDataset
from ..errors import ConfigError
from ..registry import EVALUATORS
from .features import extract_features
from .knn import knn_accuracy
from .linear import linear_probe


@dataclass
class EvalContext:
    """What a protocol sees: the (frozen) backbone, labelled data, device, the seed of this repeat and options.

    ``role`` is "trained" or "baseline"; ``run_dir`` is where protocols may write files (label subsets, plots);
    ``epochs`` is the ``--epochs`` value for trained protocols (None: each protocol's default);
    ``pretrain_epochs`` is the run's pretraining budget (the default budget of the supervised reference).
    """

    backbone: torch.nn.Module
    data: ImageDataset
    device: torch.device
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None
    role: str = "trained"
    epochs: int | None = None
    fractions: tuple[float, ...] | None = None
    pretrain_epochs: int | None = None
    protocol: str = ""
    init_backbone: torch.nn.Module | None = None  # the same architecture at random init (supervised reference)
    selection: torch.Tensor | None = None  # semi: train-split rows of a selection file (instead of fractions)
    selection_name: str = ""
    _cache: dict[Any, Any] = field(default_factory=dict)

    def features(self, stage: str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(train_feats (N, D), train_labels (N,), test_feats (M, D), test_labels (M,)), computed once per stage."""
        key = ("feats", stage)
        if key not in self._cache:
            d = self.data
            assert d.test is not None  # evaluation data has a test split
            ftr, ytr = extract_features(self.backbone, d.train, d.mean, d.std, self.device, stage=stage)
            fte, yte = extract_features(self.backbone, d.test, d.mean, d.std, self.device, stage=stage)
            self._cache[key] = (ftr, ytr, fte, yte)
        return self._cache[key]

    @property
    def num_classes(self) -> int:
        assert self.data.test is not None  # evaluation data has a test split
        ytr, yte = self.data.train.labels, self.data.test.labels
        if ytr is None or yte is None:
            _, ytr, _, yte = self.features()
        return max(len(self.data.classes), int(max(ytr.max(), yte.max())) + 1)

    def opt(self, key: str, default: Any = None) -> Any:
        """Option ``key`` of the current protocol: ``--set protocol.key`` beats ``--set key`` beats the default
        declared at registration (``default`` overrides that declaration, e.g. for ``--epochs``)."""
        declared = EVALUATORS.entry(self.protocol).meta.get("options", {})
        if key not in declared:
            raise KeyError(f"protocol '{self.protocol}' reads undeclared option '{key}'")  # a bug, not user input
        for k in (f"{self.protocol}.{key}", key):
            if k in self.options:
                return _typed(self.options[k], declared[key], k)
        return declared[key] if default is None else default


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _typed(value: Any, default: Any, key: str) -> Any:
    """Coerce an option to the type of its declared default (strings from ``--set`` included)."""
    if isinstance(value, str):
        value = parse_value(value)
    if default is None:
        return value
    if value is None:
        raise ConfigError(f"eval option '{key}' needs a value like {default!r}, got null")
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                raise ValueError
            return bool(value)
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, (tuple, list)):
            items = tuple(value) if isinstance(value, (list, tuple)) else (value,)
            return tuple(_typed(v, default[0], key) for v in items) if default else items
        if isinstance(value, (list, tuple, dict)):
            raise TypeError
        return type(default)(value)
    except (TypeError, ValueError, OverflowError):
        kind = (f"{_KINDS.get(type(default[0]), type(default[0]).__name__)} or a list of them"
                if isinstance(default, (tuple, list)) and default else _KINDS.get(type(default), type(default).__name__))
        raise ConfigError(f"eval option '{key}' must be {kind}, got {value!r}") from None


def check_options(protocols: list[str] | tuple[str, ...], options: dict[str, Any]) -> None:
    """Reject option keys that no requested protocol reads, before any work is done."""
    for key in options:
        proto, _, name = key.rpartition(".")
        if proto:
            if proto not in protocols:
                raise ConfigError(f"eval option '{key}': protocol '{proto}' is not requested "
                                  f"(requested: {', '.join(protocols)})")
            valid = EVALUATORS.entry(proto).meta.get("options", {})
            if name not in valid:
                raise ConfigError(f"unknown eval option '{key}'; '{proto}' options: {', '.join(valid) or '(none)'}")
        elif not any(key in EVALUATORS.entry(p).meta.get("options", {}) for p in protocols):
            known = sorted({k for p in protocols for k in EVALUATORS.entry(p).meta.get("options", {})})
            raise ConfigError(f"unknown eval option '{key}' for protocols {', '.join(protocols)}; "
                              f"options: {', '.join(known) or '(none)'}")
        for p in ([proto] if proto else protocols):  # the value's type, before any work
            declared = EVALUATORS.entry(p).meta.get("options", {})
            if (name or key) in declared:
                _typed(options[key], declared[name or key], key)


def parse_option_args(items: list[str] | None) -> dict[str, Any]:
    """``["k=20", "finetune.lr_head=0.1"]`` → ``{"k": 20, "finetune.lr_head": 0.1}``."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, _, text = item.partition("=")
        if not key.strip():
            raise ConfigError(f"--set expects key=value, got '{item}' (no key)")
        out[key.strip()] = parse_value(text)
    return out


@EVALUATORS.register("knn", help="weighted kNN on frozen features, cosine, tau 0.07: k=20 (top1), k=1, k=200",
                     deterministic=True, options={"k": (20, 1, 200), "temperature": 0.07})
def knn_protocol(ctx: EvalContext) -> dict[str, Any]:
    ftr, ytr, fte, yte = ctx.features()
    ks = [int(k) for k in ctx.opt("k")]
    if not ks or min(ks) < 1:
        raise ConfigError(f"eval option 'knn.k' must be positive integers, got {ks}")
    t = ctx.opt("temperature")
    if t <= 0:
        raise ConfigError(f"eval option 'knn.temperature' must be > 0, got {t}")
    out: dict[str, Any] = {}
    for i, k in enumerate(ks):
        acc = knn_accuracy(ftr, ytr, fte, yte, k=k, temperature=t, num_classes=ctx.num_classes)
        out["top1" if i == 0 else f"top1_k{k}"] = acc
    out.update(params={"k": ks, "top1_is_k": ks[0], "temperature": t, "metric": "cosine", "vote": "exp(sim/tau)",
                       "features": "frozen, pooled, no augmentation"},
               labelled_images=int(ytr.numel()))
    return out


@EVALUATORS.register("linear", help="logistic regression on cached frozen features (L-BFGS, L2 chosen on 10% of train)",
                     options={"l2_grid": (1e-5, 1e-4, 1e-3, 1e-2)})
def linear_protocol(ctx: EvalContext) -> dict[str, Any]:
    ftr, ytr, fte, yte = ctx.features()
    grid = tuple(float(v) for v in ctx.opt("l2_grid"))
    r = linear_probe(ftr, ytr, fte, yte, l2_grid=grid, seed=ctx.seed, num_classes=ctx.num_classes)
    return {"top1": r["top1"], "labelled_images": int(ytr.numel()),
            "params": {"variant": "fast (cached features)", "solver": "lbfgs", "l2": r["l2"], "l2_grid": list(grid),
                       "val_top1": r["val_top1"], "augmentation": "none (cached features)"}}
