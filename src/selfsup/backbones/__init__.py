"""Backbones: one protocol (pooled features, named stages) for ResNets, ConvNets and ViTs."""
from .base import Backbone, BackboneSpec, build_backbone

__all__ = ["Backbone", "BackboneSpec", "build_backbone"]
