"""The composed entry point for pretraining: the engine's loop plus the callbacks the config asks for.

:func:`selfsup.engine.trainer.pretrain` is the loop; it knows nothing of evaluation. This function is what the
CLI, the studies and the benchmarks call: it adds the online kNN monitor (:class:`~selfsup.evaluation.online.
OnlineKnn`) when ``train.knn_every`` > 0, then runs the loop. Call it from Python as you would the engine's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .config import RunConfig
from .engine.callbacks import Callback
from .engine.trainer import TrainResult
from .engine.trainer import pretrain as engine_pretrain


def default_callbacks(cfg: RunConfig) -> list[Callback]:
    """The callbacks ``cfg`` asks for beyond the engine's own (the collapse monitors)."""
    from .evaluation.online import OnlineKnn

    return [OnlineKnn(cfg.train.knn_every)] if cfg.train.knn_every else []


def pretrain(cfg: RunConfig, out: str | Path, *, callbacks: Sequence[Callback] = (), **kwargs: Any) -> TrainResult:
    """:func:`selfsup.engine.trainer.pretrain` (same arguments) with :func:`default_callbacks` added."""
    return engine_pretrain(cfg, out, callbacks=[*default_callbacks(cfg), *callbacks], **kwargs)
