"""Distillation objectives: one module per family, pure PyTorch (no Lightning)."""

from unidistill.objectives.base import Batch, Context, LossOutput, Objective, run_iteration
from unidistill.objectives.consistency import ConsistencyDistillation, ConsistencyFunction
from unidistill.objectives.denoising import DenoisingObjective

__all__ = [
    "Batch",
    "ConsistencyDistillation",
    "ConsistencyFunction",
    "Context",
    "DenoisingObjective",
    "LossOutput",
    "Objective",
    "run_iteration",
]
