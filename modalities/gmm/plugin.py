"""The ``gmm`` modality: D-dimensional vectors from an anisotropic Gaussian mixture.

Its teacher is either the exact analytic denoiser of the mixture (``teacher="analytic"``) or a trained
MLP (a safetensors file). Because the data distribution is known in closed form, every objective can be
measured exactly here: sliced Wasserstein and MMD to fresh mixture samples, and mode coverage.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from modalities.gmm.mixture import AnalyticDenoiserNet, GaussianMixture
from modalities.gmm.network import MLPDenoiserNet
from unidistill.batch import Batch
from unidistill.denoiser import Denoiser, freeze
from unidistill.metrics import mmd_rbf, sliced_wasserstein
from unidistill.modality import Modality
from unidistill.paths import PATHS, Path, check_prediction_type
from unidistill.weights import load_safetensors


class GmmModality(Modality):
    """Vector latents ``[B, dim]``; conditions are class labels ``[B]`` (``-1`` = null)."""

    name = "gmm"
    regression_metric = ("sliced_wasserstein", True)

    def __init__(
        self,
        mixture: GaussianMixture | None = None,
        path: str = "rectified_flow",
        prediction: str = "flow",
        teacher: str = "analytic",
        student_init: str | None = None,
        hidden: int = 256,
        depth: int = 4,
        conditional: bool = True,
        time_scale: float = 1000.0,
        guidance_scale: float = 1000.0,
    ) -> None:
        self.mixture = mixture or GaussianMixture()
        if path not in PATHS:
            raise ValueError(f"unknown path {path!r}; valid: {', '.join(PATHS)}")
        self.path: Path = PATHS[path]()
        self.prediction = check_prediction_type(prediction)
        self.teacher_source, self.student_init = teacher, student_init
        self.hidden, self.depth, self.conditional = hidden, depth, conditional
        self.time_scale, self.guidance_scale = time_scale, guidance_scale

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.mixture.dim,)

    def new_network(self) -> MLPDenoiserNet:
        classes = self.mixture.num_classes if self.conditional else 0
        return MLPDenoiserNet(self.mixture.dim, self.hidden, self.depth, classes, time_scale=self.time_scale,
                             guidance_scale=self.guidance_scale)

    def new_denoiser(self) -> Denoiser:
        return Denoiser(self.new_network(), self.path, self.prediction)

    def load_teacher(self) -> Denoiser:
        if self.teacher_source == "analytic":
            return freeze(Denoiser(AnalyticDenoiserNet(self.mixture, self.path), self.path, "x0"))
        den = self.new_denoiser()
        load_safetensors(den.network, self.teacher_source, "teacher",
                         card={"path": repr(self.path), "prediction": self.prediction})
        return freeze(den)

    def build_student(self, teacher: Denoiser, guidance_conditioned: bool = False) -> Denoiser:
        if not isinstance(teacher.network, AnalyticDenoiserNet):
            return super().build_student(teacher, guidance_conditioned)
        student = self.new_denoiser()
        self.load_student_init(student.network, {"path": repr(self.path), "prediction": self.prediction})
        if guidance_conditioned:
            student.network.enable_guidance_conditioning()
        return student

    @classmethod
    def tiny(cls) -> GmmModality:
        """The exact analytic teacher on a 4-D, 4-component mixture and a 2-layer MLP student."""
        return cls(GaussianMixture(dim=4, num_components=4, num_classes=2, seed=0), hidden=32, depth=2)

    def example_batch(self, n: int, generator: torch.Generator) -> Batch:
        x, y = self.sample_data(n, generator)
        return Batch(x, y)

    def null_condition(self, cond: Any) -> Any:
        if cond is None:
            return None
        return torch.full_like(cond, -1)

    def sample_data(self, n: int, generator: torch.Generator, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x, y = self.mixture.sample(n, generator, labels)
        return x, (y if self.conditional else torch.full_like(y, -1))

    def metrics(self, samples: Tensor, cond: Any, reference: Tensor | None) -> dict[str, float]:
        samples = samples.detach().float().cpu()
        if reference is None:
            labels = None if cond is None or bool((cond < 0).all()) else cond.cpu()
            reference = self.mixture.sample(samples.shape[0], torch.Generator().manual_seed(12345), labels)[0]
        reference = reference.detach().float().cpu()
        out = {"sliced_wasserstein": sliced_wasserstein(samples, reference)}
        sub = slice(0, min(2048, samples.shape[0]))
        out["mmd"] = mmd_rbf(samples[sub], reference[sub])
        comp = self.mixture.assign(samples)
        counts = torch.bincount(comp, minlength=self.mixture.num_components).double()
        expected = samples.shape[0] * self.mixture.weights
        if cond is not None and not bool((cond < 0).all()):
            cls = cond.cpu()
            classes = self.mixture.classes
            expected = torch.stack(
                [((cls == classes[k]).sum().double() / (classes == classes[k]).sum())
                 for k in range(self.mixture.num_components)]
            )
        out["mode_coverage"] = float((counts >= 0.1 * expected).double().mean())
        return out
