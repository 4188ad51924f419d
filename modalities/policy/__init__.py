"""Robot diffusion-policy modality: action-chunk latents, observation conditioning, receding-horizon execution
and gymnasium evaluation."""

from modalities.policy.baseline import MeanRegression
from modalities.policy.data import PolicyDataModule
from modalities.policy.demos import Episode, NpzDemos, WindowDataset, load_demos, save_demos
from modalities.policy.evaluation import (
    EvalResult,
    control_rate,
    control_rates,
    evaluate,
    rollout,
    save_gif,
    wilson_interval,
)
from modalities.policy.executor import DiffusionPlanner, RecedingHorizonExecutor
from modalities.policy.networks import ConditionalUnet1D, PolicyNetwork, TimestepAdapter, TransformerDenoiser
from modalities.policy.normalizer import Normalizer
from modalities.policy.plugin import PolicyModality

__all__ = [
    "ConditionalUnet1D",
    "DiffusionPlanner",
    "Episode",
    "EvalResult",
    "MeanRegression",
    "Normalizer",
    "NpzDemos",
    "PolicyDataModule",
    "PolicyModality",
    "PolicyNetwork",
    "RecedingHorizonExecutor",
    "TimestepAdapter",
    "TransformerDenoiser",
    "WindowDataset",
    "control_rate",
    "control_rates",
    "evaluate",
    "load_demos",
    "rollout",
    "save_demos",
    "save_gif",
    "wilson_interval",
]
