"""Batched, on-device augmentation: primitives (ops), view pipelines and named presets."""
from .pipeline import MultiViewPipeline, ViewSpec, ViewTransform, eval_view
from .presets import build_pipeline

__all__ = ["MultiViewPipeline", "ViewSpec", "ViewTransform", "eval_view", "build_pipeline"]
