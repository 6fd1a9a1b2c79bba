"""Methods: one file per method, each registered by name. ``build_method(name, backbone)`` makes one."""
from .base import Method, MethodOutput, ViewBatch, build_method, register_method

__all__ = ["Method", "MethodOutput", "ViewBatch", "build_method", "register_method"]
