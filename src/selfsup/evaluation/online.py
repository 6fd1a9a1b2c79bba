"""The online kNN monitor (``train.knn_every``): a pretraining callback that logs kNN top-1 every K epochs.

At the end of every K-th epoch, rank 0 extracts features of labelled train and test subsets with the method's
evaluation backbone and logs ``{"step", "epoch", "knn_top1"}`` to ``metrics.jsonl`` (k = 20, Wu et al. 2018's
weighted vote: :func:`~selfsup.evaluation.knn.online_knn`). :func:`selfsup.api.pretrain` and the CLI attach it.
"""
from __future__ import annotations

import sys
from typing import Any

from ..engine.callbacks import Callback, RunView
from .knn import online_knn


class OnlineKnn(Callback):
    """kNN top-1 every ``every`` epochs (data without labels: nothing)."""

    options = ("train.knn_every",)

    def __init__(self, every: int) -> None:
        self.every = every

    def on_epoch_end(self, run: RunView, step: int) -> dict[str, Any] | None:
        spe = run.steps_per_epoch
        if not (self.every and run.is_main and run.data.has_labels and step % spe == 0
                and (step // spe) % self.every == 0):
            return None
        acc = online_knn(run.method.eval_backbone(), run.data, run.device)
        run.method.train()
        if not run.quiet:
            print(f"epoch {step // spe}: online kNN top-1 {acc:.3f}", file=sys.stderr)
        return {"step": step, "epoch": round(step / spe, 4), "knn_top1": acc}
