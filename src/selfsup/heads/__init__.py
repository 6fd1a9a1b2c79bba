"""Heads: the MLP builder and its presets; special heads (DINO, prototypes, decoders) get their own files."""
from .mlp import mlp, projection_head

__all__ = ["mlp", "projection_head"]
