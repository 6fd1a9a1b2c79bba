"""Evaluation: cached frozen features, kNN, linear probe, and a runner that always adds the random-init baseline."""
from .features import extract_features
from .knn import knn_accuracy, knn_predict
from .linear import linear_probe

__all__ = ["extract_features", "knn_accuracy", "knn_predict", "linear_probe", "evaluate_run"]


def evaluate_run(*args, **kwargs):
    from .runner import evaluate_run as _run

    return _run(*args, **kwargs)
