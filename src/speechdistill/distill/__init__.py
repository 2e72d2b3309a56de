"""Distillation: a method is a composition (teacher, student, corruption, target mapping, loss
terms, structure, schedule) written as a :class:`DistillConfig`; :class:`DistillTask` runs it in
the one trainer. Entry point: ``python -m speechdistill.bin.distill_train``.
"""
from .config import (CorruptionConfig, DistillConfig, EnhancementConfig, MaskingConfig, PruningConfig, TargetMapping,
                     head_key, parse_layer_groups)
from .model import DistillModel
from .task import DistillTask

__all__ = ["CorruptionConfig", "DistillConfig", "DistillModel", "DistillTask", "EnhancementConfig", "MaskingConfig",
           "PruningConfig", "TargetMapping", "head_key", "parse_layer_groups"]
