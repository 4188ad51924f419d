"""Distillation objectives: one module per family, pure PyTorch (no Lightning)."""

from unidistill.objectives.adversarial import AdversarialDistillation
from unidistill.objectives.base import Batch, Context, LossOutput, Objective, Unsupported, make_context
from unidistill.objectives.causal import CausVid, DiffusionForcing, SelfForcing, TeacherForcing
from unidistill.objectives.consistency import ConsistencyDistillation, ConsistencyFunction
from unidistill.objectives.denoising import DenoisingObjective
from unidistill.objectives.dmd import (
    DMD2,
    DecoupledOptions,
    FakeScoreOptions,
    GanOptions,
    RegressionOptions,
    decoupled_dmd,
    f_divergence_weight,
)
from unidistill.objectives.fake_score import FakeScore, FeatureHead, build_fake_score
from unidistill.objectives.flow_map import FlowMapDistillation, FlowMapModel
from unidistill.objectives.phased import PhasedConsistencyDistillation
from unidistill.objectives.progressive import PhaseTeacher, ProgressiveDistillation
from unidistill.objectives.reflow import Reflow
from unidistill.objectives.scm import ContinuousConsistency, LogVarHead
from unidistill.objectives.sid import ScoreIdentityDistillation
from unidistill.objectives.trajectory import TrajectoryRegression

__all__ = [
    "AdversarialDistillation",
    "Batch",
    "CausVid",
    "ConsistencyDistillation",
    "ConsistencyFunction",
    "Context",
    "ContinuousConsistency",
    "DMD2",
    "DecoupledOptions",
    "FakeScoreOptions",
    "GanOptions",
    "RegressionOptions",
    "DenoisingObjective",
    "DiffusionForcing",
    "FakeScore",
    "FeatureHead",
    "FlowMapDistillation",
    "FlowMapModel",
    "LogVarHead",
    "LossOutput",
    "Objective",
    "PhaseTeacher",
    "PhasedConsistencyDistillation",
    "ProgressiveDistillation",
    "Reflow",
    "ScoreIdentityDistillation",
    "SelfForcing",
    "TeacherForcing",
    "TrajectoryRegression",
    "Unsupported",
    "build_fake_score",
    "decoupled_dmd",
    "f_divergence_weight",
    "make_context",
]
