"""Shared parts that methods declare and the engine updates and checkpoints."""
from .base import SharedPart, StepContext, update_parts
from .ema import EMATeacher
from .queue import FeatureQueue
from .schedules import Constant, Cosine, LinearWarmup

__all__ = ["SharedPart", "StepContext", "update_parts", "EMATeacher", "FeatureQueue", "Constant", "Cosine",
           "LinearWarmup"]
