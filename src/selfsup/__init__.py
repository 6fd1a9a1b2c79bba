"""selfsup: self-supervised visual representation learning.

Importing the package registers every built-in method, backbone, dataset and evaluator.
``selfsup.load_encoder(path)`` (:func:`selfsup.use.encoder.load_encoder`) is imported on first use, so that
``import selfsup`` (and ``selfsup --help``) stays light.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_encoder"]


def __getattr__(name: str) -> Any:
    if name == "load_encoder":
        from .use.encoder import load_encoder

        return load_encoder
    raise AttributeError(f"module 'selfsup' has no attribute '{name}'")
