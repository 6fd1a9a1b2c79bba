"""Losses: small pure functions, documented with shapes and their paper. One argument order: (predictions, targets)."""
from .contrastive import info_nce, nt_xent

__all__ = ["info_nce", "nt_xent"]
